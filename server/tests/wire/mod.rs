//! Raw-socket helpers for the limits and metrics tests: Kafka frames encoded with the
//! `kafka-protocol` crate, connections from chosen loopback addresses, the broker's
//! resident memory, and scraping `/metrics`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// A whole request frame (length prefix included).
pub fn frame<Q: Encodable>(key: ApiKey, version: i16, correlation_id: i32, request: &Q) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("limits-test")))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

/// Reads one response frame (without its length prefix).
pub fn read_response(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut frame = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut frame)?;
    Ok(frame)
}

pub fn decode<R: Decodable>(key: ApiKey, version: i16, frame: Vec<u8>) -> R {
    let mut frame = Bytes::from(frame);
    ResponseHeader::decode(&mut frame, key.response_header_version(version)).unwrap();
    R::decode(&mut frame, version).unwrap()
}

pub fn call<Q: Encodable, R: Decodable>(
    stream: &mut TcpStream,
    key: ApiKey,
    version: i16,
    request: &Q,
) -> R {
    stream.write_all(&frame(key, version, 1, request)).unwrap();
    decode(key, version, read_response(stream).unwrap())
}

/// Asks FindCoordinator (v2) on `stream` until the group's coordinator answers and has
/// loaded its partition (the first ask creates `__consumer_offsets`), as a client does
/// before its first group request; returns the coordinator's node id. `stream` must be
/// connected to that coordinator (a single broker).
pub fn find_coordinator(stream: &mut TcpStream, group: &str) -> i32 {
    use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
    let started = Instant::now();
    loop {
        let r: FindCoordinatorResponse = call(
            stream,
            ApiKey::FindCoordinator,
            2,
            &FindCoordinatorRequest::default()
                .with_key(StrBytes::from_string(group.to_owned()))
                .with_key_type(0),
        );
        if r.error_code == 0 {
            // Then until it has loaded the group's partition (OffsetFetch stops
            // answering COORDINATOR_LOAD_IN_PROGRESS).
            let fetched: kafka_protocol::messages::OffsetFetchResponse = call(
                stream,
                ApiKey::OffsetFetch,
                2,
                &kafka_protocol::messages::OffsetFetchRequest::default()
                    .with_group_id(StrBytes::from_string(group.to_owned()).into())
                    .with_topics(None),
            );
            if fetched.error_code == 0 {
                return r.node_id.0;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no coordinator: {}",
            r.error_code
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// ApiVersions v0: the smallest request every broker answers.
pub fn api_versions_frame() -> Vec<u8> {
    frame(
        ApiKey::ApiVersions,
        0,
        1,
        &kafka_protocol::messages::ApiVersionsRequest::default(),
    )
}

/// True when the broker answers an ApiVersions request on `stream`, false when it closes
/// the connection instead; fails the test when it does neither within 10 s.
pub fn answered(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if stream.write_all(&api_versions_frame()).is_err() {
        return false;
    }
    match read_response(stream) {
        Ok(_) => true,
        Err(e) => {
            assert!(!timed_out(&e), "neither answered nor closed");
            false
        }
    }
}

/// True when a read failed by its timeout (not by the peer closing or resetting).
pub fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A connection to `addr` from the loopback address `from` (any of 127.0.0.0/8).
pub fn connect_from(from: &str, addr: &str) -> TcpStream {
    try_connect_with(from, addr, None).unwrap()
}

/// As `connect_from`, with the receive buffer set before the connection opens (so the
/// TCP window is small from the start).
pub fn connect_with(from: &str, addr: &str, recv_buffer: Option<usize>) -> TcpStream {
    try_connect_with(from, addr, recv_buffer).unwrap()
}

/// A connection that the broker may refuse: its reset can arrive before `connect`
/// returns, which then fails with ECONNRESET.
pub fn try_connect_with(
    from: &str,
    addr: &str,
    recv_buffer: Option<usize>,
) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes)?;
    }
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into())?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

/// True when a new connection from `from` is refused (reset at connect, or closed
/// instead of answered); false when it is served.
pub fn refused(from: &str, addr: &str) -> bool {
    match try_connect_with(from, addr, None) {
        Ok(mut s) => !answered(&mut s),
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
            true
        }
    }
}

pub fn create_topic(addr: &str, name: &str, partitions: i32) {
    let mut s = TcpStream::connect(addr).unwrap();
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_owned())))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ]);
    let response: CreateTopicsResponse = call(&mut s, ApiKey::CreateTopics, 4, &request);
    assert_eq!(response.topics[0].error_code, 0, "create {name}");
}

/// One uncompressed batch of `count` records of `value_bytes` each.
pub fn batch(count: usize, value_bytes: usize) -> Bytes {
    // Base sequence -1 (no idempotence); the encoder keeps a batch together only while
    // offset minus sequence is constant.
    encode_batch(-1, -1, -1, (0..count).map(|_| vec![b'x'; value_bytes]))
}

/// One plain (not idempotent) batch, one record per value.
pub fn values_batch(values: impl Iterator<Item = Vec<u8>>) -> Bytes {
    encode_batch(-1, -1, -1, values)
}

/// One idempotent batch: producer `pid` at epoch 0, first sequence `seq`, one record per
/// value.
pub fn idempotent_batch(pid: i64, seq: i32, values: impl Iterator<Item = Vec<u8>>) -> Bytes {
    encode_batch(pid, 0, seq, values)
}

/// One batch whose records carry these create timestamps.
pub fn timed_batch(timestamps: &[i64]) -> Bytes {
    encode_records(-1, -1, -1, timestamps.iter().map(|ts| (*ts, b"t".to_vec())))
}

fn encode_batch(
    pid: i64,
    producer_epoch: i16,
    seq: i32,
    values: impl Iterator<Item = Vec<u8>>,
) -> Bytes {
    encode_records(
        pid,
        producer_epoch,
        seq,
        values.map(|value| (1_700_000_000_000, value)),
    )
}

fn encode_records(
    pid: i64,
    producer_epoch: i16,
    seq: i32,
    records: impl Iterator<Item = (i64, Vec<u8>)>,
) -> Bytes {
    let records: Vec<Record> = records
        .enumerate()
        .map(|(i, (timestamp, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: seq + i as i32,
            timestamp,
            key: None,
            value: Some(Bytes::from(value)),
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

/// A Produce v7 frame (acks=1) carrying `batches[i]` to partition `i` of `topic`.
pub fn produce_frame(topic: &str, batches: &[Bytes]) -> Vec<u8> {
    produce_frame_acks(topic, batches, 1)
}

/// A Produce v7 frame with the given acks carrying `batches[i]` to partition `i`.
pub fn produce_frame_acks(topic: &str, batches: &[Bytes], acks: i16) -> Vec<u8> {
    produce_frame_to(
        topic,
        batches
            .iter()
            .enumerate()
            .map(|(i, b)| (i as i32, b.clone())),
        acks,
    )
}

/// A Produce v7 frame with the given acks carrying each (partition, batch) given.
pub fn produce_frame_to(
    topic: &str,
    batches: impl IntoIterator<Item = (i32, Bytes)>,
    acks: i16,
) -> Vec<u8> {
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(
                    batches
                        .into_iter()
                        .map(|(partition, batch)| {
                            PartitionProduceData::default()
                                .with_index(partition)
                                .with_records(Some(batch))
                        })
                        .collect(),
                ),
        ]);
    frame(ApiKey::Produce, 7, 1, &request)
}

/// The error codes of a Produce v7 response, per partition.
pub fn produce_errors(frame: Vec<u8>) -> Vec<i16> {
    let response: ProduceResponse = decode(ApiKey::Produce, 7, frame);
    response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
        .collect()
}

/// Produces one batch of `records` small records to partition 0 of `topic` on `stream`
/// with acks=1; returns (error code, base offset).
pub fn produce(stream: &mut TcpStream, topic: &str, records: usize) -> (i16, i64) {
    stream
        .write_all(&produce_frame(topic, &[batch(records, 100)]))
        .unwrap();
    let response: ProduceResponse = decode(ApiKey::Produce, 7, read_response(stream).unwrap());
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Fetches partition 0 of `topic` from offset 0 on `stream`; returns the high watermark
/// after checking that records came back.
pub fn fetch_high_watermark(stream: &mut TcpStream, topic: &str) -> i64 {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, FetchResponse};
    let request = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(0)
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
    stream
        .write_all(&frame(ApiKey::Fetch, 4, 1, &request))
        .unwrap();
    let response: FetchResponse = decode(ApiKey::Fetch, 4, read_response(stream).unwrap());
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
    p.high_watermark
}

/// The broker's resident memory, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[allow(unused_imports)]
pub use testkit::free_port;

/// GET `path` over HTTP/1.1; returns (status line, body).
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(body.len(), length, "Content-Length matches the body");
    (status, body.to_owned())
}

/// A scrape of `/metrics`, parsed: sample name with labels (as written) -> value.
pub struct Scrape {
    pub text: String,
}

impl Scrape {
    pub fn take(metrics_addr: &str) -> Self {
        let (status, text) = http_get(metrics_addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(text.ends_with("# EOF\n"), "complete OpenMetrics page");
        Self { text }
    }

    /// Per API, the versions clients sent (`broker_requests_total`), with their counts.
    pub fn versions_used(&self) -> std::collections::BTreeMap<String, Vec<(i16, u64)>> {
        let mut used: std::collections::BTreeMap<String, Vec<(i16, u64)>> = Default::default();
        for line in self.text.lines() {
            let Some(rest) = line.strip_prefix("broker_requests_total{api=\"") else {
                continue;
            };
            let Some((api, rest)) = rest.split_once("\",version=\"") else {
                continue;
            };
            let Some((version, count)) = rest.split_once("\"} ") else {
                continue;
            };
            let (Ok(version), Ok(count)) = (version.parse(), count.parse::<u64>()) else {
                continue;
            };
            if count > 0 {
                used.entry(api.to_owned())
                    .or_default()
                    .push((version, count));
            }
        }
        used
    }

    /// The value of the sample `name` whose labels include every `labels` pair.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.text.lines().find_map(|line| {
            if line.starts_with('#') {
                return None;
            }
            let (series, value) = line.rsplit_once(' ')?;
            let (sample, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if sample != name {
                return None;
            }
            let pairs: Vec<(String, String)> = label_text
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect();
            let all = labels
                .iter()
                .all(|(k, v)| pairs.iter().any(|(pk, pv)| pk == k && pv == v));
            if all { value.parse().ok() } else { None }
        })
    }

    /// As `value`, failing the test when the sample is missing.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{}", self.text))
    }
}

/// Polls `f` every 20 ms until it is true or `limit` passes; returns the time it took.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if f() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Raises this process's soft open-files limit to the hard one; returns the soft limit.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
    {
        limit.current = Some(hard);
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
