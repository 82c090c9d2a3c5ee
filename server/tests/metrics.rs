//! The Prometheus endpoint of the real broker binary, scraped over HTTP during a run:
//! librdkafka produces and consumes known amounts, and the per-partition counters, the
//! request and flush histograms, the connection counts, the modes and the recovery
//! statistics must say exactly that.

mod common;
mod wire;

use std::io::Write;
use std::time::{Duration, Instant};

use common::Broker;
use futures_executor::block_on;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use wire::Scrape;

const TIMEOUT: Duration = Duration::from_secs(30);

fn log_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn given_traffic_when_scraped_should_count_exactly_what_was_produced_and_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", wire::free_port());
    // The consumer's group.id makes librdkafka find a coordinator, which creates
    // __consumer_offsets: one partition of it here, counted with the topic's two below.
    let mut broker = Broker::start_with(
        dir.path(),
        &[
            ("BROKER_METRICS_LISTEN", &metrics),
            ("BROKER_OFFSETS_TOPIC_NUM_PARTITIONS", "1"),
        ],
    );
    wire::create_topic(&broker.addr, "m", 2);

    // acks=all (librdkafka's default), so every write group is fdatasynced.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let sent = [300usize, 200];
    // In rounds of 50 per partition, each acknowledged before the next: several batches
    // per partition, so a count that stopped at the first batch would show.
    for round in 0..6 {
        let acks: Vec<_> = sent
            .iter()
            .enumerate()
            .filter(|(_, count)| round * 50 < **count)
            .flat_map(|(partition, _)| (0..50).map(move |i| (partition, round * 50 + i)))
            .map(|(partition, i)| {
                let value = format!("value {partition}-{i}");
                producer
                    .send_result(
                        FutureRecord::<(), _>::to("m")
                            .partition(partition as i32)
                            .payload(&value),
                    )
                    .map_err(|(e, _)| e)
                    .unwrap()
            })
            .collect();
        for ack in acks {
            block_on(ack).unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "metrics-test")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset("m", p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut received = 0;
    while received < 500 && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m.unwrap();
            received += 1;
        }
    }
    assert_eq!(received, 500);

    // Scraped while the clients are still connected.
    let s = Scrape::take(&metrics);
    for (partition, &count) in sent.iter().enumerate() {
        let labels = [("topic", "m"), ("partition", &*partition.to_string())];
        let on_disk = log_bytes(&dir.path().join(format!("m-{partition}")));
        assert_eq!(
            s.get("broker_partition_messages_in_total", &labels),
            count as f64
        );
        assert_eq!(
            s.get("broker_partition_bytes_in_total", &labels),
            on_disk as f64,
            "bytes in = the partition's log on disk"
        );
        assert_eq!(
            s.get("broker_partition_messages_out_total", &labels),
            count as f64
        );
        assert_eq!(
            s.get("broker_partition_bytes_out_total", &labels),
            on_disk as f64,
            "the consumer read the log once"
        );
    }
    for api in [
        "ApiVersions",
        "Metadata",
        "Produce",
        "Fetch",
        "CreateTopics",
    ] {
        let count = s.get("broker_request_duration_seconds_count", &[("api", api)]);
        assert!(count >= 1.0, "{api}: {count}");
        assert_eq!(
            s.get(
                "broker_request_duration_seconds_bucket",
                &[("api", api), ("le", "+Inf")]
            ),
            count
        );
        assert!(s.get("broker_request_duration_seconds_sum", &[("api", api)]) > 0.0);
    }
    assert_eq!(
        s.get(
            "broker_request_duration_seconds_count",
            &[("api", "JoinGroup")]
        ),
        0.0
    );
    assert!(s.get("broker_flush_duration_seconds_count", &[]) >= 1.0);
    assert!(s.get("broker_connections_open", &[]) >= 2.0);
    assert!(s.get("broker_connections_accepted_total", &[]) >= 3.0);
    assert_eq!(
        s.get("broker_io_mode", &[("mode", "io_uring")])
            + s.get("broker_io_mode", &[("mode", "fallback")]),
        1.0
    );
    assert_eq!(s.get("broker_write_path", &[("path", "adaptive")]), 1.0);
    assert_eq!(s.get("broker_recovery_partitions_total", &[]), 3.0);
    assert_eq!(s.get("broker_recovery_truncated_bytes_total", &[]), 0.0);
    assert_eq!(
        wire::http_get(&metrics, "/other").0,
        "HTTP/1.1 404 Not Found"
    );
    drop((producer, consumer));

    // A crash, and a torn tail of 100 bytes on partition 0: recovery cuts exactly that.
    broker.kill9();
    let log = std::fs::read_dir(dir.path().join("m-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(&[0xab; 100])
        .unwrap();
    broker.restart();
    let s = Scrape::take(&metrics);
    assert_eq!(s.get("broker_recovery_partitions_total", &[]), 3.0);
    assert_eq!(s.get("broker_recovery_unclean_partitions_total", &[]), 3.0);
    assert_eq!(s.get("broker_recovery_truncated_bytes_total", &[]), 100.0);
    assert!(s.get("broker_recovery_validated_bytes_total", &[]) > 0.0);
    assert!(s.get("broker_startup_seconds", &[]) > 0.0);
    // Counters start again from zero in a new process.
    assert_eq!(
        s.get(
            "broker_partition_messages_in_total",
            &[("topic", "m"), ("partition", "0")]
        ),
        0.0
    );
}
