//! A connection whose Produce or Fetch requests keep naming partitions of one other core
//! moves to that core (`kafka::connection`, `Home`): what it sent keeps its order across
//! the move (acks=0 included), requests it had already pipelined are answered in order,
//! and the records read back with librdkafka are exactly the ones produced.

mod common;
mod wire;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Broker;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use wire::Scrape;

const TOPIC: &str = "moving";
/// Produce requests per connection: far more than the 32 in a row a move takes.
const REQUESTS: usize = 300;
/// Requests a producer writes at once: acks=0 ones, then one acks=1 it waits for. The
/// move comes in the middle of the first burst, with acks=0 appends of the old core
/// still on their way and the rest of the burst already read ahead.
const BURST: usize = 50;
/// Fetch requests each fetching connection pipelines at once.
const PIPELINED_FETCHES: i32 = 100;

fn produce_frame(value: String, acks: i16) -> Vec<u8> {
    let batch: Bytes = wire::values_batch(std::iter::once(value.into_bytes()));
    wire::produce_frame_acks(TOPIC, &[batch], acks)
}

fn fetch_frame(correlation_id: i32) -> Vec<u8> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    wire::frame(ApiKey::Fetch, 4, correlation_id, &request)
}

/// Every record of partition 0, read by librdkafka from the beginning.
fn read_all(addr: &str, expected: usize) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "moves-test")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut values = Vec::new();
    while values.len() < expected && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            values.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
        }
    }
    values
}

#[test]
fn given_connections_of_one_partition_on_both_cores_should_move_the_others_there_and_keep_every_order()
 {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", wire::free_port());
    let broker = Broker::start_with(
        dir.path(),
        &[("BROKER_CORES", "2"), ("BROKER_METRICS_LISTEN", &metrics)],
    );
    wire::create_topic(&broker.addr, TOPIC, 1);

    // Two connections accepted one after the other are served by the two cores, so one
    // of them starts on the core that does not own the partition. Each writes bursts of
    // acks=0 requests ending with an acks=1 one, in lockstep with the other.
    let mut producers: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&broker.addr).unwrap())
        .collect();
    for s in &producers {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    for start in (0..REQUESTS).step_by(BURST) {
        for (c, s) in producers.iter_mut().enumerate() {
            let end = (start + BURST).min(REQUESTS);
            let burst: Vec<u8> = (start..end)
                .flat_map(|i| {
                    let acks = if i + 1 == end { 1 } else { 0 };
                    produce_frame(format!("{c}-{i:05}"), acks)
                })
                .collect();
            s.write_all(&burst).unwrap();
            let errors = wire::produce_errors(wire::read_response(s).unwrap());
            assert_eq!(errors, vec![0], "connection {c}, burst at {start}");
        }
    }
    // A last acks=1 request on each: everything before it is written.
    for (c, s) in producers.iter_mut().enumerate() {
        s.write_all(&produce_frame(format!("{c}-{REQUESTS:05}"), 1))
            .unwrap();
        assert_eq!(
            wire::produce_errors(wire::read_response(s).unwrap()),
            vec![0]
        );
    }
    let moved = Scrape::take(&metrics).get("broker_connections_moved_total", &[]);
    assert!(moved >= 1.0, "a producer moved: {moved}");

    // Two fetching connections, each with its fetches pipelined: the one that moves
    // carries the requests it had read ahead, and every answer comes, in order.
    let mut fetchers: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&broker.addr).unwrap())
        .collect();
    for s in &mut fetchers {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let frames: Vec<u8> = (0..PIPELINED_FETCHES).flat_map(fetch_frame).collect();
        s.write_all(&frames).unwrap();
    }
    for (c, s) in fetchers.iter_mut().enumerate() {
        for expected in 0..PIPELINED_FETCHES {
            let mut frame = Bytes::from(wire::read_response(s).unwrap());
            let header = ResponseHeader::decode(&mut frame, 0).unwrap();
            assert_eq!(header.correlation_id, expected, "fetcher {c}");
            let response = FetchResponse::decode(&mut frame, 4).unwrap();
            let p = &response.responses[0].partitions[0];
            assert_eq!(p.error_code, 0);
            assert_eq!(p.high_watermark, 2 * (REQUESTS as i64 + 1));
            assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
        }
    }
    let moved_after = Scrape::take(&metrics).get("broker_connections_moved_total", &[]);
    assert!(moved_after > moved, "a fetcher moved too: {moved_after}");

    // Every record once, and each connection's in the order it sent them.
    let expected = 2 * (REQUESTS + 1);
    let values = read_all(&broker.addr, expected);
    assert_eq!(values.len(), expected);
    for c in 0..2 {
        let mine: Vec<&String> = values
            .iter()
            .filter(|v| v.starts_with(&format!("{c}-")))
            .collect();
        let want: Vec<String> = (0..=REQUESTS).map(|i| format!("{c}-{i:05}")).collect();
        assert_eq!(mine.len(), want.len(), "connection {c}'s records");
        if let Some(k) = mine.iter().zip(&want).position(|(got, want)| *got != want) {
            panic!(
                "connection {c}'s records out of order at position {k}: {:?} where {} was sent",
                &mine[k..(k + 3).min(mine.len())],
                want[k]
            );
        }
    }
}
