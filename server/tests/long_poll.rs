//! Long-polling fetches: a fetch with `min_bytes` unmet waits for an append and wakes as
//! soon as one lands on its partition (on another connection, possibly another core),
//! instead of returning at once or sleeping out its `max_wait_ms`.

mod common;
mod wire;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Broker;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

const MAX_WAIT_MS: i32 = 10_000;

/// Fetch v11 of partition 0 from offset 0, waiting up to `MAX_WAIT_MS` for one byte;
/// returns how long the answer took and whether it carried records.
fn long_fetch(addr: &str, topic: &str) -> (Duration, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let started = Instant::now();
    stream
        .write_all(&wire::frame(ApiKey::Fetch, 11, 1, &request))
        .unwrap();
    let response: FetchResponse =
        wire::decode(ApiKey::Fetch, 11, wire::read_response(&mut stream).unwrap());
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    (
        started.elapsed(),
        p.records.as_ref().is_some_and(|r| !r.is_empty()),
    )
}

#[test]
fn given_an_empty_partition_when_a_batch_is_appended_should_wake_the_waiting_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    wire::create_topic(&broker.addr, "waited", 1);
    let addr = broker.addr.clone();
    let fetcher = std::thread::spawn(move || long_fetch(&addr, "waited"));
    std::thread::sleep(Duration::from_millis(500));
    let mut producer = TcpStream::connect(&broker.addr).unwrap();
    assert_eq!(wire::produce(&mut producer, "waited", 5).0, 0);
    let (took, records) = fetcher.join().unwrap();
    assert!(records, "the fetch answered without the appended batch");
    assert!(
        took >= Duration::from_millis(400),
        "the fetch did not wait for data: answered in {took:?}"
    );
    assert!(
        took < Duration::from_millis(MAX_WAIT_MS as u64 / 2),
        "the append did not wake the fetch: answered in {took:?}"
    );
}
