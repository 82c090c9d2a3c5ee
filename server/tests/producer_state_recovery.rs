//! Producer state survives `kill -9`: a batch retried after the broker crashed and came
//! back is recognised as a duplicate (same offsets, written once), and a sequence gap is
//! still refused. Spoken at the protocol level with the `kafka-protocol` crate's encoder,
//! so the test controls exactly which sequence numbers are sent.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::{Bytes, BytesMut};
use common::Broker;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

fn call<Q: Encodable, R: Decodable>(
    stream: &mut TcpStream,
    key: ApiKey,
    version: i16,
    request: &Q,
) -> R {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("raw-test")))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    stream.write_all(&(buf.len() as i32).to_be_bytes()).unwrap();
    stream.write_all(&buf).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut frame = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut frame).unwrap();
    let mut frame = Bytes::from(frame);
    ResponseHeader::decode(&mut frame, key.response_header_version(version)).unwrap();
    R::decode(&mut frame, version).unwrap()
}

fn batch(producer_id: i64, first_seq: i32, count: i32) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: first_seq + i,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("seq {}", first_seq + i))),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

/// Produces one batch with acks=all; returns (error code, base offset).
fn produce(stream: &mut TcpStream, records: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("pid-state")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ]);
    let response: ProduceResponse = call(stream, ApiKey::Produce, 7, &request);
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

#[test]
fn given_broker_killed_when_producer_retries_should_dedupe_from_recovered_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let mut s = TcpStream::connect(&broker.addr).unwrap();
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            kafka_protocol::messages::create_topics_request::CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("pid-state")))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ]);
    let _: kafka_protocol::messages::CreateTopicsResponse =
        call(&mut s, ApiKey::CreateTopics, 4, &create);
    let init: InitProducerIdResponse = call(
        &mut s,
        ApiKey::InitProducerId,
        1,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000),
    );
    assert_eq!(init.error_code, 0);
    let pid = init.producer_id.0;

    let mut firsts = Vec::new();
    for b in 0..5 {
        let (code, base) = produce(&mut s, batch(pid, b * 10, 10));
        assert_eq!(code, 0);
        firsts.push(base);
    }
    broker.kill9();
    broker.restart();
    let mut s = TcpStream::connect(&broker.addr).unwrap();
    // The last batch again, as a producer retrying after a lost response would send it.
    assert_eq!(
        produce(&mut s, batch(pid, 40, 10)),
        (0, firsts[4]),
        "duplicate answered with its first offset"
    );
    // A gap is refused with OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    assert_eq!(produce(&mut s, batch(pid, 60, 10)).0, 45);
    // The next batch in sequence is appended after the 50 records, which were written once.
    assert_eq!(produce(&mut s, batch(pid, 50, 10)), (0, 50));
    // A new producer id is never one handed out before the crash.
    let again: InitProducerIdResponse = call(
        &mut s,
        ApiKey::InitProducerId,
        1,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000),
    );
    assert_ne!(again.producer_id.0, pid);
}
