//! Compacted topics (`cleanup.policy=compact`) through clients we did not write:
//! librdkafka creates the topic, produces many writes over few keys and reads the
//! compacted log from offset 0; kafka-python reads it too (it steps over the offsets a
//! clean removed). A keyless record is refused with Kafka's error, and a restart (clean
//! or kill -9) keeps the compacted log as it was.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Broker, bounded, require_python_clients};
use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(20);
const TOPIC: &str = "changelog";

/// Writes and keys of the first test: `COMPACTION_WRITES` and `COMPACTION_KEYS` when set
/// (the 1M-write measurement in `results/`), 20,000 over 100 otherwise.
fn writes() -> usize {
    env_or("COMPACTION_WRITES", 20_000)
}

fn keys() -> usize {
    env_or("COMPACTION_KEYS", 100)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Produces writes `range` (value `value-{i}` to key `key-{i % keys}`) and records the
/// acknowledged offset of each key's latest.
fn produce(
    p: &FutureProducer,
    range: std::ops::Range<usize>,
    latest: &mut HashMap<String, (i64, Option<String>)>,
) {
    let mut pending = Vec::new();
    for i in range {
        let key = format!("key-{}", i % keys());
        let value = format!("value-{i}");
        let record = FutureRecord::to(TOPIC)
            .key(key.as_bytes())
            .payload(value.as_bytes());
        let delivery = p.send_result(record).map_err(|(e, _)| e).expect("queued");
        pending.push((key, value, delivery));
        if pending.len() >= 50_000 {
            ack(&mut pending, latest);
        }
    }
    ack(&mut pending, latest);
}

type Pending = (String, String, rdkafka::producer::DeliveryFuture);

fn ack(pending: &mut Vec<Pending>, latest: &mut HashMap<String, (i64, Option<String>)>) {
    for (key, value, delivery) in pending.drain(..) {
        let offset = block_on(delivery)
            .expect("delivery")
            .map_err(|(e, _)| e)
            .expect("acked")
            .offset;
        latest.insert(key, (offset, Some(value)));
    }
}

fn create_topic(broker: &Broker) {
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let topic = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "65536")
        .set("min.cleanable.dirty.ratio", "0.01");
    let created = block_on(admin(broker).create_topics(&[topic], &opts)).unwrap();
    assert_eq!(created[0], Ok(TOPIC.to_owned()));
}

/// A broker whose cleaner looks every 200 ms.
fn start(dir: &std::path::Path) -> Broker {
    Broker::start_with(dir, &[("BROKER_LOG_CLEANER_BACKOFF_MS", "200")])
}

fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .expect("admin client")
}

fn producer(broker: &Broker) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "5")
        // Batches well below the topic's small segments.
        .set("batch.size", "16384")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// Every record of the topic from offset 0 to the end, as (offset, key, value).
fn read_all(broker: &Broker) -> Vec<(i64, String, Option<String>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "compaction-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push((
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
            )),
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    panic!("did not reach the end in time ({} read)", out.len());
}

fn log_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join(format!("{TOPIC}-0")))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count()
}

/// What kafka-python reads from offset 0: one line per record, `offset key value`.
fn read_with_kafka_python(broker: &Broker) -> Vec<(i64, String, String)> {
    let script = r#"
import sys
from kafka import KafkaConsumer, TopicPartition
c = KafkaConsumer(bootstrap_servers=sys.argv[1], enable_auto_commit=False, consumer_timeout_ms=5000)
tp = TopicPartition(sys.argv[2], 0)
c.assign([tp])
c.seek_to_beginning(tp)
end = c.end_offsets([tp])[tp]
while c.position(tp) < end:
    for batch in c.poll(timeout_ms=1000).values():
        for m in batch:
            print(m.offset, m.key.decode(), m.value.decode() if m.value is not None else "-")
"#;
    let out = bounded(&require_python_clients(), Duration::from_secs(120))
        .arg("-c")
        .arg(script)
        .arg(&broker.addr)
        .arg(TOPIC)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "kafka-python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let offset = parts.next().unwrap().parse().unwrap();
            (
                offset,
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn given_a_compacted_topic_with_many_writes_over_few_keys_should_keep_the_latest_of_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start(dir.path());
    create_topic(&broker);
    let p = producer(&broker);
    let mut latest: HashMap<String, (i64, Option<String>)> = HashMap::new();
    produce(&p, 0..writes(), &mut latest);
    // Ten keys deleted: their tombstones stay (a day of `delete.retention.ms`), in
    // batches the cleaner gives a delete horizon (KIP-534) that both clients must read.
    for k in 0..10 {
        let key = format!("key-{k}");
        let delivery = block_on(p.send(
            FutureRecord::<[u8], [u8]>::to(TOPIC).key(key.as_bytes()),
            TIMEOUT,
        ))
        .map_err(|(e, _)| e)
        .expect("tombstone acked");
        latest.insert(key, (delivery.offset, None));
    }
    // Then enough writes of one more key for the tombstones to leave the active segment.
    let mut pending = Vec::new();
    for i in 0..5_000 {
        let value = format!("filler-{i}");
        let record = FutureRecord::to(TOPIC)
            .key("filler".as_bytes())
            .payload(value.as_bytes());
        let delivery = p.send_result(record).map_err(|(e, _)| e).expect("queued");
        pending.push(("filler".to_owned(), value, delivery));
    }
    ack(&mut pending, &mut latest);
    // A record without a key is refused, compressed or not, and nothing of it is
    // written.
    for codec in ["none", "lz4"] {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &broker.addr)
            .set("message.timeout.ms", "20000")
            .set("compression.type", codec)
            .create()
            .expect("producer");
        let keyless = block_on(p.send(
            FutureRecord::<[u8], [u8]>::to(TOPIC).payload(b"no key"),
            TIMEOUT,
        ));
        match keyless {
            Err((KafkaError::MessageProduction(code), _)) => {
                assert_eq!(code, RDKafkaErrorCode::InvalidRecord, "{codec}: {code:?}")
            }
            other => panic!("{codec}: a keyless record was not refused: {other:?}"),
        }
    }

    // The cleaner runs every 200 ms; wait until the sealed segments are clean.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = read_all(&broker);
    while records.len() > keys() * 40 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        records = read_all(&broker);
    }
    check(&records, &latest);
    assert!(
        records.len() < keys() * 40,
        "{} records left of {} (the active segment holds at most ~{})",
        records.len(),
        writes(),
        65536 / 40
    );
    eprintln!(
        "{} writes over {} keys: {} records and {} segment files left",
        writes(),
        keys(),
        records.len(),
        log_files(dir.path())
    );
    // The cleaned segments merge: what is left fits in one, beside the active one.
    assert!(
        log_files(dir.path()) <= 3,
        "{} segments",
        log_files(dir.path())
    );

    let python = read_with_kafka_python(&broker);
    let librdkafka: Vec<(i64, String, String)> = records
        .iter()
        .map(|(o, k, v)| (*o, k.clone(), v.clone().unwrap_or_else(|| "-".into())))
        .collect();
    assert_eq!(
        python, librdkafka,
        "kafka-python reads what librdkafka reads"
    );

    // The compacted log survives a clean restart and a kill -9 unchanged.
    broker.stop();
    broker.restart();
    assert_eq!(read_all(&broker), records);
    broker.kill9();
    broker.restart();
    assert_eq!(read_all(&broker), records);
}

/// Offsets go up, every record is what was written at its offset, and the latest value
/// of every key is there at its offset.
fn check(
    records: &[(i64, String, Option<String>)],
    latest: &HashMap<String, (i64, Option<String>)>,
) {
    let mut last = -1;
    for (offset, key, value) in records {
        assert!(*offset > last, "offset {offset} after {last}");
        last = *offset;
        // Tombstones (null values) came after the writes, at offsets of their own.
        let Some(value) = value.as_deref().filter(|_| key != "filler") else {
            continue;
        };
        let i: i64 = value.strip_prefix("value-").unwrap().parse().unwrap();
        assert_eq!((*offset, key), (i, &format!("key-{}", i as usize % keys())));
    }
    let by_offset: HashMap<i64, &(i64, String, Option<String>)> =
        records.iter().map(|r| (r.0, r)).collect();
    for (key, (offset, value)) in latest {
        let found = by_offset
            .get(offset)
            .unwrap_or_else(|| panic!("latest {key} at {offset} is missing"));
        assert_eq!((&found.1, &found.2), (key, value));
    }
}

/// kill -9 while the cleaner runs (every 200 ms, over a log that grows between rounds):
/// after each restart the latest acknowledged value of every key is there, and every
/// record is what was written at its offset.
#[test]
fn given_kill_9_while_cleaning_should_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start(dir.path());
    create_topic(&broker);
    let mut latest: HashMap<String, (i64, Option<String>)> = HashMap::new();
    let mut next = 0;
    for round in 0..6 {
        let p = producer(&broker);
        produce(&p, next..next + 8_000, &mut latest);
        next += 8_000;
        drop(p);
        // Into the cleaner's next run, at a different point each round.
        std::thread::sleep(Duration::from_millis(150 + 70 * round));
        broker.kill9();
        broker.restart();
        let records = read_all(&broker);
        check(&records, &latest);
    }
}
