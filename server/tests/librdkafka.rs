//! The real broker binary driven by librdkafka (the `rdkafka` crate, bundled librdkafka):
//! a client we did not write, over real sockets.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Broker;
use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(20);

fn producer(broker: &Broker, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &broker.addr)
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "1");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("producer")
}

fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .expect("admin client")
}

fn consumer(broker: &Broker) -> BaseConsumer {
    // librdkafka's consumer needs a group id even for manual assignment; with no
    // commits and no subscription it never joins the group.
    ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "librdkafka-tests")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

fn create_topic(broker: &Broker, name: &str, partitions: i32) {
    let results = block_on(admin(broker).create_topics(
        &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
    ))
    .expect("create_topics");
    assert_eq!(results[0], Ok(name.to_owned()));
}

/// Sends and waits for the acknowledgement; returns (partition, offset).
fn send(p: &FutureProducer, record: FutureRecord<'_, [u8], [u8]>) -> (i32, i64) {
    let delivery = block_on(p.send(record, TIMEOUT))
        .map_err(|(e, _)| e)
        .expect("delivered");
    (delivery.partition, delivery.offset)
}

/// Reads every partition of `topic` from the beginning until `count` messages arrived.
fn consume_all(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    count: usize,
) -> Vec<rdkafka::message::OwnedMessage> {
    let c = consumer(broker);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        if let Some(msg) = c.poll(Duration::from_millis(200)) {
            out.push(msg.expect("consume").detach());
        }
    }
    assert_eq!(out.len(), count, "consumed {} of {count}", out.len());
    out
}

#[test]
fn given_broker_when_metadata_requested_should_list_itself_and_auto_create_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let p = producer(&broker, &[]);
    let md = p
        .client()
        .fetch_metadata(Some("auto-created"), TIMEOUT)
        .expect("metadata");
    assert_eq!(md.brokers().len(), 1);
    assert_eq!(
        format!("{}:{}", md.brokers()[0].host(), md.brokers()[0].port()),
        broker.addr
    );
    let topic = &md.topics()[0];
    assert_eq!(topic.name(), "auto-created");
    assert_eq!(topic.partitions().len(), 1);
    assert_eq!(topic.partitions()[0].leader(), 0);
}

#[test]
fn given_admin_client_when_creating_and_deleting_topics_should_report_kafka_errors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let admin = admin(&broker);
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    create_topic(&broker, "orders", 4);
    let again = block_on(admin.create_topics(
        &[NewTopic::new("orders", 4, TopicReplication::Fixed(1))],
        &opts,
    ))
    .unwrap();
    assert_eq!(
        again[0],
        Err(("orders".into(), RDKafkaErrorCode::TopicAlreadyExists))
    );
    let bad = block_on(admin.create_topics(
        &[
            NewTopic::new("bad/name", 1, TopicReplication::Fixed(1)),
            NewTopic::new("replicated", 1, TopicReplication::Fixed(3)),
            NewTopic::new("shredded", 1, TopicReplication::Fixed(1)).set("cleanup.policy", "shred"),
        ],
        &opts,
    ))
    .unwrap();
    assert_eq!(
        bad[0],
        Err(("bad/name".into(), RDKafkaErrorCode::InvalidTopic))
    );
    assert_eq!(
        bad[1],
        Err((
            "replicated".into(),
            RDKafkaErrorCode::InvalidReplicationFactor
        ))
    );
    assert_eq!(
        bad[2],
        Err(("shredded".into(), RDKafkaErrorCode::InvalidConfig))
    );

    let md = admin
        .inner()
        .fetch_metadata(Some("orders"), TIMEOUT)
        .unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 4);
    assert!(dir.path().join("orders-3").is_dir());

    let deleted = block_on(admin.delete_topics(&["orders", "never-was"], &opts)).unwrap();
    assert_eq!(deleted[0], Ok("orders".into()));
    assert_eq!(
        deleted[1],
        Err((
            "never-was".into(),
            RDKafkaErrorCode::UnknownTopicOrPartition
        ))
    );
    assert!(!dir.path().join("orders-3").exists());
}

#[test]
fn given_acks_0_1_and_all_when_producing_should_store_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    create_topic(&broker, "acks", 1);
    let watcher = consumer(&broker);
    for (round, acks) in ["0", "1", "all"].iter().enumerate() {
        let p = producer(&broker, &[("acks", acks)]);
        for i in 0..100 {
            let value = format!("acks={acks} #{i}");
            let rec = FutureRecord::<[u8], [u8]>::to("acks").payload(value.as_bytes());
            block_on(p.send(rec, TIMEOUT))
                .map_err(|(e, _)| e)
                .expect("sent");
        }
        p.flush(TIMEOUT).expect("flush");
        // acks=0 deliveries mean "sent", not "stored": wait for the log end before the
        // next producer, whose messages would otherwise race these.
        let want = (round as i64 + 1) * 100;
        let deadline = Instant::now() + TIMEOUT;
        while watcher
            .fetch_watermarks("acks", 0, TIMEOUT)
            .expect("watermarks")
            .1
            < want
        {
            assert!(Instant::now() < deadline, "the log never reached {want}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let msgs = consume_all(&broker, "acks", 1, 300);
    let values: Vec<String> = msgs
        .iter()
        .map(|m| String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
        .collect();
    for (i, acks) in ["0", "1", "all"].iter().enumerate() {
        for j in 0..100 {
            assert_eq!(values[i * 100 + j], format!("acks={acks} #{j}"));
        }
    }
}

/// acks=0 batches for partitions that another core owns travel there in bulk (many per
/// cross-core command); each partition must still get its batches in request order.
#[test]
fn given_acks_0_to_partitions_on_other_cores_when_producing_should_keep_order_and_lose_nothing() {
    const PARTITIONS: i32 = 8;
    const PER_PARTITION: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(dir.path(), &[("BROKER_CORES", "4")]);
    create_topic(&broker, "spread", PARTITIONS);
    // One message per request, so a partition's messages arrive as thousands of batches.
    let p = producer(
        &broker,
        &[
            ("acks", "0"),
            ("linger.ms", "0"),
            ("batch.num.messages", "1"),
        ],
    );
    let values: Vec<(i32, String)> = (0..PER_PARTITION)
        .flat_map(|i| (0..PARTITIONS).map(move |part| (part, format!("{part}:{i}"))))
        .collect();
    let futures: Vec<_> = values
        .iter()
        .map(|(part, v)| {
            p.send(
                FutureRecord::<[u8], [u8]>::to("spread")
                    .partition(*part)
                    .payload(v.as_bytes()),
                TIMEOUT,
            )
        })
        .collect();
    for f in futures {
        block_on(f).map_err(|(e, _)| e).expect("sent");
    }
    p.flush(TIMEOUT).expect("flush");
    let watcher = consumer(&broker);
    let want = PER_PARTITION as i64 * i64::from(PARTITIONS);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let stored: i64 = (0..PARTITIONS)
            .map(|part| {
                watcher
                    .fetch_watermarks("spread", part, TIMEOUT)
                    .expect("watermarks")
                    .1
            })
            .sum();
        if stored >= want {
            assert_eq!(stored, want, "more messages stored than sent");
            break;
        }
        assert!(Instant::now() < deadline, "only {stored} of {want} stored");
        std::thread::sleep(Duration::from_millis(10));
    }
    let msgs = consume_all(&broker, "spread", PARTITIONS, want as usize);
    let mut next = vec![0usize; PARTITIONS as usize];
    for m in &msgs {
        let part = m.partition();
        let value = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
        let i = next[part as usize];
        assert_eq!(
            value,
            format!("{part}:{i}"),
            "partition {part} out of order"
        );
        next[part as usize] += 1;
    }
    assert!(next.iter().all(|&n| n == PER_PARTITION), "{next:?}");
}

#[test]
fn given_each_compression_codec_when_producing_should_consume_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        create_topic(&broker, &topic, 1);
        let p = producer(&broker, &[("compression.type", codec), ("linger.ms", "20")]);
        let values: Vec<String> = (0..200)
            .map(|i| format!("{codec} value {i} {}", "z".repeat(i % 50)))
            .collect();
        let futures: Vec<_> = values
            .iter()
            .map(|v| {
                p.send(
                    FutureRecord::<[u8], [u8]>::to(&topic).payload(v.as_bytes()),
                    TIMEOUT,
                )
            })
            .collect();
        for f in futures {
            block_on(f).map_err(|(e, _)| e).expect("sent");
        }
        let got = consume_all(&broker, &topic, 1, 200);
        for (m, v) in got.iter().zip(&values) {
            assert_eq!(m.payload(), Some(v.as_bytes()), "codec {codec}");
        }
        // The batches on disk are stored as produced: compressed (librdkafka sends a batch
        // uncompressed when compression would not shrink it).
        let log = std::fs::read(
            dir.path()
                .join(format!("{topic}-0/00000000000000000000.log")),
        )
        .unwrap();
        let expected = match codec {
            "gzip" => 1,
            "snappy" => 2,
            "lz4" => 3,
            _ => 4,
        };
        let mut codecs = Vec::new();
        let mut at = 0usize;
        while at + 61 <= log.len() {
            codecs.push(i16::from_be_bytes([log[at + 21], log[at + 22]]) & 7);
            at += i32::from_be_bytes([log[at + 8], log[at + 9], log[at + 10], log[at + 11]])
                as usize
                + 12;
        }
        // (librdkafka enables LZ4 only for brokers that advertise FindCoordinator.)
        assert!(
            codecs.contains(&expected),
            "codec {codec} not stored: {codecs:?}"
        );
        assert!(
            codecs.iter().all(|c| *c == expected || *c == 0),
            "{codecs:?}"
        );
    }
}

#[test]
fn given_headers_keys_and_timestamps_should_round_trip_and_keys_keep_their_partition() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    create_topic(&broker, "keyed", 6);
    let p = producer(&broker, &[]);
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let base_ts = 1_700_000_000_000i64;
    for round in 0..5 {
        for k in 0..12 {
            let key = format!("key-{k}");
            let value = format!("{key} round {round}");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "round",
                    value: Some(&round.to_string()),
                })
                .insert(Header {
                    key: "empty",
                    value: None::<&[u8]>,
                });
            let rec = FutureRecord::to("keyed")
                .key(key.as_bytes())
                .payload(value.as_bytes())
                .headers(headers)
                .timestamp(base_ts + round * 1000 + k);
            let (partition, _) = send(&p, rec);
            let first = *partition_of.entry(key.clone()).or_insert(partition);
            assert_eq!(first, partition, "{key} moved partition");
        }
    }
    let distinct: std::collections::HashSet<i32> = partition_of.values().copied().collect();
    assert!(distinct.len() > 1, "keys should spread over partitions");
    let msgs = consume_all(&broker, "keyed", 6, 60);
    for m in &msgs {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        assert_eq!(m.partition(), partition_of[&key]);
        let headers = m.headers().expect("headers");
        assert_eq!(headers.count(), 2);
        let round: i64 = std::str::from_utf8(headers.get(0).value.unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(headers.get(1).value, None);
        let k: i64 = key.trim_start_matches("key-").parse().unwrap();
        assert_eq!(m.timestamp().to_millis(), Some(base_ts + round * 1000 + k));
    }
}

#[test]
fn given_messages_across_partitions_when_consumed_from_beginning_should_keep_per_partition_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    create_topic(&broker, "ordered", 3);
    let p = producer(&broker, &[("linger.ms", "5")]);
    let values: Vec<String> = (0..3000).map(|i| i.to_string()).collect();
    let futures: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let rec = FutureRecord::<[u8], [u8]>::to("ordered")
                .partition(i as i32 % 3)
                .payload(value.as_bytes());
            p.send(rec, TIMEOUT)
        })
        .collect();
    for f in futures {
        block_on(f).map_err(|(e, _)| e).expect("sent");
    }
    let msgs = consume_all(&broker, "ordered", 3, 3000);
    let mut last: HashMap<i32, (i64, i64)> = HashMap::new();
    for m in &msgs {
        let n: i64 = std::str::from_utf8(m.payload().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(n % 3, i64::from(m.partition()));
        if let Some((prev_n, prev_offset)) = last.get(&m.partition()) {
            assert!(
                n > *prev_n && m.offset() == prev_offset + 1,
                "order broken in partition {}",
                m.partition()
            );
        }
        last.insert(m.partition(), (n, m.offset()));
    }
}

#[test]
fn given_log_when_listing_offsets_should_answer_earliest_latest_and_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    create_topic(&broker, "timed", 1);
    let p = producer(&broker, &[]);
    let base = 1_700_000_000_000i64;
    for i in 0..50 {
        let value = i.to_string();
        send(
            &p,
            FutureRecord::to("timed")
                .payload(value.as_bytes())
                .timestamp(base + i * 10),
        );
    }
    let c = consumer(&broker);
    assert_eq!(c.fetch_watermarks("timed", 0, TIMEOUT).unwrap(), (0, 50));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("timed", 0, Offset::Offset(base + 205))
        .unwrap();
    let found = c.offsets_for_times(tpl, TIMEOUT).unwrap();
    assert_eq!(
        found.find_partition("timed", 0).unwrap().offset(),
        Offset::Offset(21)
    );
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("timed", 0, Offset::Offset(base + 10_000))
        .unwrap();
    let found = c.offsets_for_times(tpl, TIMEOUT).unwrap();
    assert_eq!(
        found.find_partition("timed", 0).unwrap().offset(),
        Offset::End
    );
}

#[test]
fn given_900_kib_message_should_round_trip_and_oversized_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    create_topic(&broker, "big", 1);
    let p = producer(
        &broker,
        &[
            ("message.max.bytes", "5000000"),
            ("compression.type", "none"),
        ],
    );
    let big: Vec<u8> = (0..900 * 1024).map(|i| (i % 251) as u8).collect();
    send(&p, FutureRecord::to("big").payload(&big[..]));
    let huge = vec![7u8; 2 * 1024 * 1024];
    let err = block_on(p.send(
        FutureRecord::<[u8], [u8]>::to("big").payload(&huge[..]),
        TIMEOUT,
    ))
    .map(|_| ())
    .map_err(|(e, _)| e)
    .unwrap_err();
    assert_eq!(
        err,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    );
    let msgs = consume_all(&broker, "big", 1, 1);
    assert_eq!(msgs[0].payload(), Some(&big[..]));
}

fn produce_acked(broker: &Broker, topic: &str, count: usize) -> Vec<String> {
    let p = producer(broker, &[("acks", "all"), ("linger.ms", "2")]);
    let values: Vec<String> = (0..count).map(|i| format!("{topic} {i}")).collect();
    let futures: Vec<_> = values
        .iter()
        .map(|v| {
            p.send(
                FutureRecord::<[u8], [u8]>::to(topic).payload(v.as_bytes()),
                TIMEOUT,
            )
        })
        .collect();
    for f in futures {
        block_on(f).map_err(|(e, _)| e).expect("acknowledged");
    }
    values
}

/// Produces with acks=all, stops the broker (SIGTERM, or SIGKILL when `kill`), restarts
/// it, and checks that every acknowledged message is there.
fn restart_keeps_acknowledged(topic: &str, kill: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    create_topic(&broker, topic, 2);
    let values = produce_acked(&broker, topic, 2000);
    if kill {
        broker.kill9();
    } else {
        broker.stop();
    }
    let marker = dir.path().join(format!("{topic}-0/clean-shutdown"));
    assert_eq!(
        marker.exists(),
        !kill,
        "clean-shutdown marker after {}",
        if kill { "SIGKILL" } else { "SIGTERM" }
    );
    broker.restart();
    let msgs = consume_all(&broker, topic, 2, values.len());
    let mut got: Vec<String> = msgs
        .iter()
        .map(|m| String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
        .collect();
    got.sort();
    let mut want = values;
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn given_clean_restart_between_produce_and_consume_should_lose_nothing() {
    restart_keeps_acknowledged("restart", false);
}

#[test]
fn given_kill_9_between_produce_and_consume_should_keep_every_acknowledged_message() {
    restart_keeps_acknowledged("crash", true);
}

#[test]
fn given_hostile_bytes_on_raw_sockets_should_close_them_and_keep_serving() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let hostile: Vec<Vec<u8>> = vec![
        i32::MAX.to_be_bytes().to_vec(), // absurd frame length
        (-5i32).to_be_bytes().to_vec(),  // negative length
        [
            &12i32.to_be_bytes()[..],
            &[0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
        ]
        .concat(), // unknown api key
        [
            &12i32.to_be_bytes()[..],
            &[0, 3, 0x7f, 0x7f, 0, 0, 0, 1, 0, 0, 0, 0],
        ]
        .concat(), // unsupported version
        [
            &10i32.to_be_bytes()[..],
            &[0, 0, 0, 7, 0, 0, 0, 1, 0xff, 0xff],
        ]
        .concat(), // malformed produce body
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect(), // noise
        [&100i32.to_be_bytes()[..], &[0, 1, 0, 4]].concat(), // truncated frame, then close
        // Metadata v1 claiming two billion topics: must not allocate for them.
        [
            &14i32.to_be_bytes()[..],
            &[0, 3, 0, 1, 0, 0, 0, 9, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
        ]
        .concat(),
        // Produce v3 claiming a billion topics after a valid prefix.
        [
            &22i32.to_be_bytes()[..],
            &[
                0, 0, 0, 3, 0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30, 0x40, 0, 0,
                0,
            ],
        ]
        .concat(),
    ];
    for bytes in hostile {
        let mut s = std::net::TcpStream::connect(&broker.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        // The broker closes the connection: read ends (EOF or reset), it does not hang.
        let _ = s.read_to_end(&mut sink);
    }
    // No request made the broker reserve memory for counts it was only told about: its
    // peak virtual size stays far below what the claimed arrays would need (tens of GiB).
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kib < 8 * 1024 * 1024, "VmPeak {peak_kib} kB");
    // Everyone else is still served.
    create_topic(&broker, "after-hostile", 1);
    let p = producer(&broker, &[]);
    send(
        &p,
        FutureRecord::to("after-hostile").payload(&b"still here"[..]),
    );
    let msgs = consume_all(&broker, "after-hostile", 1, 1);
    assert_eq!(msgs[0].payload(), Some(&b"still here"[..]));
}

#[test]
fn given_topic_configs_when_created_should_apply_them_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    // A segment smaller than the broker's message.max.bytes: a common setting that must
    // neither fail nor keep the broker from starting again.
    let topic = NewTopic::new("small-segments", 1, TopicReplication::Fixed(1))
        .set("segment.bytes", "1048576")
        .set("retention.ms", "-1");
    let created = block_on(admin(&broker).create_topics(&[topic], &opts)).unwrap();
    assert_eq!(created[0], Ok("small-segments".to_owned()));
    let p = producer(&broker, &[("linger.ms", "5")]);
    let value = vec![b'v'; 100 * 1024];
    for _ in 0..30 {
        send(&p, FutureRecord::to("small-segments").payload(&value[..]));
    }
    let segments = std::fs::read_dir(dir.path().join("small-segments-0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count();
    assert!(segments >= 3, "segment.bytes applied: {segments} segments");
    broker.stop();
    broker.restart();
    assert_eq!(consume_all(&broker, "small-segments", 1, 30).len(), 30);
}

#[test]
fn given_idle_connection_should_be_closed_after_the_idle_limit() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(dir.path(), &[("BROKER_CONNECTIONS_MAX_IDLE_MS", "300")]);
    for partial in [&[][..], &[0, 0, 0, 20, 0, 3][..]] {
        let mut s = std::net::TcpStream::connect(&broker.addr).unwrap();
        std::io::Write::write_all(&mut s, partial).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without a response");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "closed by the idle limit"
        );
    }
}
