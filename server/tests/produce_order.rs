//! A connection's produce requests land in the order it sent them, whatever their acks,
//! including for partitions that another core owns (acks=0 appends for those travel in
//! bulk, and an acknowledged append must not overtake the ones still queued). An acks=0
//! append that a partition refuses closes its connection, as Kafka does, whichever core
//! refused it.

mod common;
mod wire;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use common::Broker;
use kafka_protocol::messages::{ApiKey, ProduceResponse};
use wire::{Scrape, wait_until};

const PARTITIONS: usize = 8;
const ACKS_0_REQUESTS: usize = 3_000;

#[test]
fn given_acks_1_right_after_many_acks_0_on_one_connection_should_land_after_all_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(dir.path(), &[("BROKER_CORES", "4")]);
    wire::create_topic(&broker.addr, "mixed", PARTITIONS as i32);
    let batches: Vec<Bytes> = (0..PARTITIONS).map(|_| wire::batch(1, 100)).collect();
    let acks_0 = wire::produce_frame_acks("mixed", &batches, 0);
    let mut pipelined = Vec::with_capacity(acks_0.len() * ACKS_0_REQUESTS);
    for _ in 0..ACKS_0_REQUESTS {
        pipelined.extend_from_slice(&acks_0);
    }
    pipelined.extend_from_slice(&wire::produce_frame("mixed", &batches));
    let mut s = TcpStream::connect(&broker.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&pipelined).unwrap();
    let response: ProduceResponse = wire::decode(
        ApiKey::Produce,
        7,
        wire::read_response(&mut s).expect("the acks=1 answer"),
    );
    let partitions = &response.responses[0].partition_responses;
    assert_eq!(partitions.len(), PARTITIONS);
    for p in partitions {
        assert_eq!(p.error_code, 0, "partition {}", p.index);
        assert_eq!(
            p.base_offset, ACKS_0_REQUESTS as i64,
            "partition {}: the acks=1 batch landed among the acks=0 ones sent before it",
            p.index
        );
    }
}

/// Starts a broker on 4 cores with metrics on a free port; returns it and the metrics
/// address.
fn broker_with_metrics(dir: &std::path::Path) -> (Broker, String) {
    let metrics = format!("127.0.0.1:{}", wire::free_port());
    let env = [
        ("BROKER_CORES", "4"),
        ("BROKER_METRICS_LISTEN", metrics.as_str()),
    ];
    (Broker::start_with(dir, &env), metrics)
}

/// A Produce v7 frame carrying one batch to one partition.
fn produce_to(topic: &str, partition: i32, batch: Bytes, acks: i16) -> Vec<u8> {
    wire::produce_frame_to(topic, [(partition, batch)], acks)
}

fn refused_closes(metrics: &str) -> f64 {
    Scrape::take(metrics).get(
        "broker_connections_closed_total",
        &[("reason", "produce_refused")],
    )
}

/// The base offset an acks=1 append of one good batch gets now: the records the
/// partition holds.
fn held(addr: &str, topic: &str, partition: i32) -> i64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&produce_to(topic, partition, wire::batch(1, 100), 1))
        .unwrap();
    let response: ProduceResponse =
        wire::decode(ApiKey::Produce, 7, wire::read_response(&mut s).unwrap());
    let p = &response.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0, "{topic}-{partition}");
    p.base_offset
}

#[test]
fn given_an_acks_0_produce_to_a_partition_that_does_not_exist_should_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics) = broker_with_metrics(dir.path());
    wire::create_topic(&broker.addr, "one", 1);
    let mut s = TcpStream::connect(&broker.addr).unwrap();
    assert!(wire::answered(&mut s), "a fresh connection is served");
    // Partition 0 takes its batch; partition 1 does not exist.
    let batches = [wire::batch(1, 100), wire::batch(1, 100)];
    s.write_all(&wire::produce_frame_acks("one", &batches, 0))
        .unwrap();
    assert!(
        !wire::answered(&mut s),
        "the connection stayed open after its acks=0 append was refused"
    );
    assert_eq!(refused_closes(&metrics), 1.0);
    // Everyone else is served, and the partition that exists took its batch.
    let mut other = TcpStream::connect(&broker.addr).unwrap();
    assert!(wire::answered(&mut other));
    assert_eq!(held(&broker.addr, "one", 0), 1);
}

#[test]
fn given_acks_0_batches_that_their_core_refuses_should_close_the_connection_whichever_core_it_is() {
    const PARTITIONS: i32 = 8;
    const CORES: i32 = 4;
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics) = broker_with_metrics(dir.path());
    wire::create_topic(&broker.addr, "crc", PARTITIONS);
    // Its CRC no longer matches: only the owning core's append finds out, after the
    // request was taken, with nothing to answer. Connections are dealt to the cores in
    // turn, so `CORES` connections in a row to one partition cover the owning core (the
    // append made where the connection is) and the other cores (forwarded to the owner).
    let mut corrupt = wire::batch(1, 100).to_vec();
    corrupt[17] ^= 0xff;
    let corrupt = Bytes::from(corrupt);
    let mut closed = 0;
    for partition in 0..PARTITIONS {
        for _ in 0..CORES {
            let mut s = TcpStream::connect(&broker.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&produce_to("crc", partition, corrupt.clone(), 0))
                .unwrap();
            // Closed without waiting for another request: the read ends (EOF or reset)
            // rather than timing out.
            let mut byte = [0u8; 1];
            match s.read(&mut byte) {
                Ok(0) => {}
                Ok(_) => panic!("partition {partition}: an answer to an acks=0 request"),
                Err(e) => assert!(
                    !wire::timed_out(&e),
                    "partition {partition}: still open 10 s after its acks=0 append was refused"
                ),
            }
            closed += 1;
        }
    }
    let all_counted = wait_until(Duration::from_secs(10), || {
        refused_closes(&metrics) == f64::from(closed)
    });
    assert!(
        all_counted.is_some(),
        "closes counted: {} of {closed}",
        refused_closes(&metrics)
    );
    for partition in 0..PARTITIONS {
        assert_eq!(
            held(&broker.addr, "crc", partition),
            0,
            "partition {partition}"
        );
    }
}
