//! A full disk, for real: the broker's data directory on a small tmpfs this test mounts
//! (root only; without root the test says it is skipped and passes). An acks=all producer
//! fills it until the broker answers KAFKA_STORAGE_ERROR (56); then every acknowledged
//! message must read back, every partition must still be readable, Metadata must report
//! the failed partition, the metrics must show it, and after the filesystem grows and the
//! broker restarts, everything acknowledged is there and writes work again.

mod common;
mod wire;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Broker, Tmpfs};
use futures_executor::block_on;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use wire::Scrape;

const TIMEOUT: Duration = Duration::from_secs(30);
const TOPIC: &str = "full";
/// The partition the producer fills the disk through.
const FILLED: i32 = 0;
/// A partition written before the disk filled, and only read after.
const OTHER: i32 = 1;
const VALUE_BYTES: usize = 16 * 1024;

fn consumer(broker: &Broker) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "storage-full-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Sends `count` values to `partition` (acks=all, no retries), each acknowledged before
/// the next window; returns the acknowledged (offset, value) and the first refusal.
fn fill(
    producer: &FutureProducer,
    partition: i32,
    count: usize,
    first: usize,
) -> (Vec<(i64, Vec<u8>)>, Option<RDKafkaErrorCode>) {
    let mut acked = Vec::new();
    for window in (first..first + count).collect::<Vec<_>>().chunks(8) {
        let sends: Vec<_> = window
            .iter()
            .map(|i| {
                let mut value = format!("message {i} ").into_bytes();
                value.resize(VALUE_BYTES, b'a' + (*i % 26) as u8);
                let send = producer
                    .send_result(
                        FutureRecord::<(), _>::to(TOPIC)
                            .partition(partition)
                            .payload(&value),
                    )
                    .map_err(|(e, _)| e)
                    .expect("queue a message");
                (send, value)
            })
            .collect();
        let mut refused = None;
        for (send, value) in sends {
            match block_on(send).expect("delivery report") {
                Ok(delivered) => acked.push((delivered.offset, value)),
                Err((KafkaError::MessageProduction(code), _)) => refused = refused.or(Some(code)),
                Err((e, _)) => panic!("unexpected produce error: {e}"),
            }
        }
        if refused.is_some() {
            return (acked, refused);
        }
    }
    (acked, None)
}

/// Reads `partition` from the beginning up to `end`, returning (offset, value).
fn read_all(broker: &Broker, partition: i32, end: i64) -> Vec<(i64, Vec<u8>)> {
    let c = consumer(broker);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, partition, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while got.last().map_or(0, |(o, _)| o + 1) < end {
        assert!(
            Instant::now() < deadline,
            "partition {partition}: read {} messages, up to {:?}, of {end}",
            got.len(),
            got.last().map(|(o, _)| *o)
        );
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap_or_else(|e| panic!("reading partition {partition}: {e}"));
            got.push((m.offset(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    got
}

fn assert_all_there(broker: &Broker, partition: i32, acked: &[(i64, Vec<u8>)]) {
    let end = acked.last().map_or(0, |(o, _)| o + 1);
    let read = read_all(broker, partition, end);
    for (offset, value) in acked {
        let found = read.iter().find(|(o, _)| o == offset);
        assert!(
            found.is_some_and(|(_, v)| v == value),
            "acknowledged message at {partition}/{offset} is missing or differs"
        );
    }
}

fn partition_error(broker: &Broker, partition: i32) -> Option<RDKafkaRespErr> {
    let md = consumer(broker)
        .fetch_metadata(Some(TOPIC), TIMEOUT)
        .expect("metadata while the disk is full");
    let topic = md.topics().iter().find(|t| t.name() == TOPIC).unwrap();
    topic
        .partitions()
        .iter()
        .find(|p| p.id() == partition)
        .unwrap()
        .error()
}

#[test]
fn given_a_full_filesystem_when_producing_acks_all_should_answer_storage_error_and_keep_what_was_acknowledged()
 {
    let Some(tmpfs) = Tmpfs::mount(6) else {
        return;
    };
    let data: PathBuf = tmpfs.path().join("data");
    let metrics = format!("127.0.0.1:{}", wire::free_port());
    let mut broker = Broker::start_with(
        &data,
        &[
            ("BROKER_METRICS_LISTEN", &metrics),
            ("BROKER_LOG_SEGMENT_BYTES", "2097152"),
        ],
    );
    wire::create_topic(&broker.addr, TOPIC, 2);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("acks", "all")
        .set("message.send.max.retries", "0")
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();

    let (other_acked, refused) = fill(&producer, OTHER, 16, 0);
    assert_eq!(refused, None, "the disk is not full yet");
    // 6 MiB of tmpfs holds fewer than 400 messages of 16 KiB: the refusal comes first.
    let (acked, refused) = fill(&producer, FILLED, 1000, 1000);
    assert_eq!(
        refused,
        Some(RDKafkaErrorCode::KafkaStorageError),
        "the full disk is answered KAFKA_STORAGE_ERROR after {} acknowledged messages",
        acked.len()
    );
    assert!(acked.len() > 100, "{} acknowledged", acked.len());
    // And it stays refused: the partition is failed until restart.
    let (more, refused) = fill(&producer, FILLED, 1, 5000);
    assert!(more.is_empty());
    assert_eq!(refused, Some(RDKafkaErrorCode::KafkaStorageError));

    // The broker goes on: metadata reports the failed partition, both partitions read.
    assert_eq!(
        partition_error(&broker, FILLED),
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR)
    );
    assert_eq!(partition_error(&broker, OTHER), None);
    assert_all_there(&broker, FILLED, &acked);
    assert_all_there(&broker, OTHER, &other_acked);
    let scrape = Scrape::take(&metrics);
    let filled = FILLED.to_string();
    let labels = [("topic", TOPIC), ("partition", filled.as_str())];
    assert_eq!(scrape.get("broker_partition_storage_failed", &labels), 1.0);
    assert!(scrape.get("broker_partition_storage_errors_total", &labels) >= 2.0);
    let other = OTHER.to_string();
    assert_eq!(
        scrape.get(
            "broker_partition_storage_failed",
            &[("topic", TOPIC), ("partition", other.as_str())]
        ),
        0.0
    );

    // Recovery, as the README says: make room, restart.
    broker.stop();
    tmpfs.resize(24);
    broker.restart();
    assert_eq!(partition_error(&broker, FILLED), None);
    assert_all_there(&broker, FILLED, &acked);
    assert_all_there(&broker, OTHER, &other_acked);
    let (after, refused) = fill(&producer, FILLED, 8, 9000);
    assert_eq!(refused, None, "writes work again after the restart");
    let last_acked = acked.last().map_or(-1, |(o, _)| *o);
    assert!(
        after.iter().all(|(o, _)| *o > last_acked),
        "new messages follow the acknowledged ones"
    );
    drop(producer);
    drop(broker);
}
