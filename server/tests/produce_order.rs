//! A connection's produce requests land in the order it sent them, whatever their acks,
//! including for partitions that another core owns (acks=0 appends for those travel in
//! bulk, and an acknowledged append must not overtake the ones still queued).

mod common;
mod wire;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use common::Broker;
use kafka_protocol::messages::{ApiKey, ProduceResponse};

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
