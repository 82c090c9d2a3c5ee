//! Kafka-protocol brokers through a lean client of ours, on the `kafka-protocol` crate's
//! codecs: requests framed by hand on blocking sockets, produce requests pipelined, one
//! fetch kept in flight ahead of decoding.
//!
//! Why it exists: against our broker, librdkafka was measured as the limit (at batch 50
//! the client used 96% of a core while the broker used 55%; draining a backlog, 137%
//! against 15%), so `paper` reports both clients, each as its own target.
//!
//! What it does not do: it talks to the one broker that leads every partition of the
//! topic (enough for a single-node broker; it refuses topics spread over brokers), it
//! never retries, it joins no consumer group, and it reads only uncompressed batches
//! (loadgen writes no others). Any error code in a response fails the run. Response
//! frames are capped at 64 MiB, but inside one the codec still sizes its vectors from
//! the broker's array counts (as ARCHITECTURE.md notes for requests): the broker under
//! test is trusted that far.

use std::collections::VecDeque;
use std::fmt::Display;
use std::io::{BufReader, ErrorKind, Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::{BufMut as _, Bytes, BytesMut};
use kafka_protocol::error::{ParseResponseErrorCode as _, ResponseError};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    FetchRequest, FetchResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetCommitResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::kafka::{Flavour, port_of};
use crate::target::{
    Consumer, ConsumerSpec, Dest, Mode, Producer, ProducerSpec, Target, wait_until,
};

// Versions: the highest non-flexible ones, all accepted by our broker and by Kafka 4.
const PRODUCE_VERSION: i16 = 8;
const FETCH_VERSION: i16 = 11;
const METADATA_VERSION: i16 = 8;
const CREATE_TOPICS_VERSION: i16 = 4;
const DELETE_TOPICS_VERSION: i16 = 3;
const LIST_OFFSETS_VERSION: i16 = 5;
const INIT_PRODUCER_ID_VERSION: i16 = 1;
const OFFSET_COMMIT_VERSION: i16 = 7;

const CLIENT_ID: &str = "loadgen-lean";
/// Largest response frame read from the wire; checked before allocating.
const RESPONSE_BYTES_MAX: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A read or write that makes no progress for this long fails the run.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// Produce requests awaiting their response (durable mode), as Kafka's
/// `max.in.flight.requests.per.connection` for idempotent producers.
const IN_FLIGHT_REQUESTS_MAX: usize = 5;
/// Queued request bytes written in one go, unless the linger time runs out first.
const WRITE_COALESCE_BYTES: usize = 64 << 10;
const READ_BUFFER_BYTES: usize = 64 << 10;
/// What the producer's value buffer grows by when it runs out.
const VALUES_ARENA_BYTES: usize = 1 << 20;
const FETCH_BYTES_MAX: i32 = 16 << 20;
const FETCH_PARTITION_BYTES_MAX: i32 = 8 << 20;
const FETCH_WAIT_MS: i32 = 100;
/// RecordBatch v2: the header before the records, and the smallest record (seven
/// one-byte varints and attributes).
const BATCH_HEADER_BYTES: usize = 61;
const RECORD_BYTES_MIN: usize = 7;
/// Fetches in a row that may return data without a whole batch before the run fails.
const STALLED_FETCHES_MAX: u32 = 100;

/// Durable mode's acks from loadgen's `--kafka-acks`: "all" or "-1" (idempotent, as by
/// default) or "1" (the leader's write, not idempotent).
pub fn durable_acks(acks: Option<&str>) -> anyhow::Result<i16> {
    match acks {
        None | Some("all" | "-1") => Ok(-1),
        Some("1") => Ok(1),
        Some(other) => anyhow::bail!("kafka-lean takes --kafka-acks all, -1 or 1, not {other}"),
    }
}

/// Our broker, driven through the lean client.
pub const OURS: Flavour = Flavour {
    name: "kafka-lean",
    how_to_start: crate::kafka::OURS.how_to_start,
};

/// Apache Kafka itself (`scripts/kafka.sh`), driven through the lean client.
pub const APACHE: Flavour = Flavour {
    name: "apache-kafka-lean",
    how_to_start: crate::kafka::APACHE.how_to_start,
};

pub struct KafkaLean {
    flavour: Flavour,
    bootstrap: String,
    /// Replicas of the topics it creates.
    replication_factor: i16,
    /// Durable mode's acks: -1 (all, idempotent, the default) or 1 (not idempotent).
    durable_acks: i16,
    /// One connection for topic setup, metadata and watermarks, opened on first use.
    admin: Mutex<Option<Conn>>,
}

impl KafkaLean {
    pub fn new(flavour: Flavour, bootstrap: String) -> Self {
        Self {
            flavour,
            bootstrap,
            replication_factor: 1,
            durable_acks: -1,
            admin: Mutex::new(None),
        }
    }

    /// Topics created with `replication_factor` replicas; durable-mode producers with
    /// `durable_acks` (see [`durable_acks`]). The paper mode keeps acks=0.
    pub fn with_replication(mut self, replication_factor: i16, durable_acks: i16) -> Self {
        self.replication_factor = replication_factor.max(1);
        self.durable_acks = durable_acks;
        self
    }

    /// Runs `f` on the admin connection; a failed call drops it (the next one reconnects).
    fn with_admin<R>(&self, f: impl FnOnce(&mut Conn) -> anyhow::Result<R>) -> anyhow::Result<R> {
        let mut guard = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let conn = match guard.as_mut() {
            Some(conn) => conn,
            None => guard.insert(Conn::connect(first_address(&self.bootstrap))?),
        };
        let result = f(conn);
        if result.is_err() {
            *guard = None;
        }
        result
    }

    fn topic_metadata(&self, topic: &str) -> anyhow::Result<MetadataResponse> {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
            ]))
            .with_allow_auto_topic_creation(false);
        self.with_admin(|c| c.call(ApiKey::Metadata, METADATA_VERSION, &request))
    }

    /// The address of the one broker leading every partition of `dest`.
    fn leader(&self, dest: &Dest) -> anyhow::Result<String> {
        let md = self.topic_metadata(&dest.name)?;
        let topic = md
            .topics
            .first()
            .with_context(|| format!("metadata for {} lists no topic", dest.name))?;
        check_code(
            topic.error_code,
            None,
            format_args!("metadata for {}", dest.name),
        )?;
        let mut leaders: Vec<i32> = topic.partitions.iter().map(|p| p.leader_id.0).collect();
        leaders.sort_unstable();
        leaders.dedup();
        let [leader] = leaders[..] else {
            bail!(
                "kafka-lean talks to one broker, but the partitions of {} are led by brokers {leaders:?}",
                dest.name
            );
        };
        let broker = md
            .brokers
            .iter()
            .find(|b| b.node_id.0 == leader)
            .with_context(|| format!("leader {leader} of {} is not in the metadata", dest.name))?;
        Ok(format!("{}:{}", broker.host.as_str(), broker.port))
    }
}

impl Target for KafkaLean {
    fn name(&self) -> &'static str {
        self.flavour.name
    }

    fn client(&self) -> String {
        "lean (kafka-protocol 0.18.x)".to_string()
    }

    fn address(&self) -> String {
        self.bootstrap.clone()
    }

    fn port(&self) -> u16 {
        port_of(&self.bootstrap).unwrap_or(9092)
    }

    fn check(&self) -> anyhow::Result<()> {
        let request = MetadataRequest::default()
            .with_topics(Some(Vec::new()))
            .with_allow_auto_topic_creation(false);
        let md: MetadataResponse = self
            .with_admin(|c| c.call(ApiKey::Metadata, METADATA_VERSION, &request))
            .with_context(|| format!("no Kafka broker answered at {}", self.bootstrap))?;
        if md.brokers.is_empty() {
            bail!("the broker at {} lists no brokers", self.bootstrap);
        }
        Ok(())
    }

    fn prepare(&self, dest: &Dest) -> anyhow::Result<()> {
        let partitions = i32::try_from(dest.partitions).context("partition count")?;
        let request = CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic_name(&dest.name))
                    .with_num_partitions(partitions)
                    .with_replication_factor(self.replication_factor),
            ])
            .with_timeout_ms(millis(ADMIN_TIMEOUT));
        let response: CreateTopicsResponse =
            self.with_admin(|c| c.call(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, &request))?;
        for t in &response.topics {
            check_code(
                t.error_code,
                t.error_message.as_ref(),
                format_args!("creating topic {}", t.name.0.as_str()),
            )?;
        }
        let what = format!("every partition of topic {} has a leader", dest.name);
        wait_until(ADMIN_TIMEOUT, &what, || {
            let md = self.topic_metadata(&dest.name)?;
            Ok(md.topics.first().is_some_and(|t| {
                t.error_code == 0
                    && t.partitions.len() == dest.partitions as usize
                    && t.partitions.iter().all(|p| p.leader_id.0 >= 0)
            }))
        })
    }

    fn producer(&self, dest: &Dest, spec: ProducerSpec) -> anyhow::Result<Box<dyn Producer>> {
        let mut conn = Conn::connect(&self.leader(dest)?)?;
        let acks = match spec.mode {
            Mode::Paper => 0,
            Mode::Durable => self.durable_acks,
        };
        let (producer_id, producer_epoch) = match acks {
            0 | 1 => (-1, -1),
            _ => {
                let request = InitProducerIdRequest::default()
                    .with_transactional_id(None)
                    .with_transaction_timeout_ms(60_000);
                // A broker that has just started may still be loading the state that hands
                // out producer ids (Apache Kafka answers COORDINATOR_LOAD_IN_PROGRESS or
                // COORDINATOR_NOT_AVAILABLE): asked again, as Kafka's clients do.
                let deadline = Instant::now() + ADMIN_TIMEOUT;
                loop {
                    let r: InitProducerIdResponse =
                        conn.call(ApiKey::InitProducerId, INIT_PRODUCER_ID_VERSION, &request)?;
                    let loading = matches!(
                        r.error_code.err(),
                        Some(
                            ResponseError::CoordinatorLoadInProgress
                                | ResponseError::CoordinatorNotAvailable
                        )
                    );
                    if loading && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    check_code(r.error_code, None, "InitProducerId")?;
                    break (r.producer_id.0, r.producer_epoch);
                }
            }
        };
        Ok(Box::new(LeanProducer {
            conn,
            topic: topic_name(&dest.name),
            mode: spec.mode,
            acks,
            batch: spec.batch.max(1),
            linger: Duration::from_millis(spec.linger_ms),
            producer_id,
            producer_epoch,
            next_sequence: vec![0; dest.partitions as usize],
            pending: vec![Vec::new(); dest.partitions as usize],
            pending_count: 0,
            values: BytesMut::new(),
            records_buf: BytesMut::new(),
            unflushed_since: None,
            in_flight: VecDeque::new(),
            sent: 0,
            acknowledged: 0,
        }))
    }

    fn consumer(&self, dest: &Dest, spec: ConsumerSpec) -> anyhow::Result<Box<dyn Consumer>> {
        let mut conn = Conn::connect(&self.leader(dest)?)?;
        let earliest = list_offsets(&mut conn, &dest.name, &spec.partitions, -2)?;
        Ok(Box::new(LeanConsumer {
            conn,
            topic: topic_name(&dest.name),
            mode: spec.mode,
            group: format!("loadgen-lean-{}-{}", dest.name, spec.id),
            positions: spec.partitions.iter().copied().zip(earliest).collect(),
            in_flight: None,
            stalled: 0,
        }))
    }

    fn backlog(&self, dest: &Dest) -> anyhow::Result<Option<u64>> {
        let partitions: Vec<u32> = (0..dest.partitions).collect();
        let (low, high) = self.with_admin(|c| {
            Ok((
                list_offsets(c, &dest.name, &partitions, -2)?,
                list_offsets(c, &dest.name, &partitions, -1)?,
            ))
        })?;
        Ok(Some(
            low.iter()
                .zip(&high)
                .map(|(l, h)| (h - l).max(0) as u64)
                .sum(),
        ))
    }

    fn cleanup(&self, dest: &Dest) -> anyhow::Result<()> {
        let request = DeleteTopicsRequest::default()
            .with_topic_names(vec![topic_name(&dest.name)])
            .with_timeout_ms(millis(ADMIN_TIMEOUT));
        let response: DeleteTopicsResponse =
            self.with_admin(|c| c.call(ApiKey::DeleteTopics, DELETE_TOPICS_VERSION, &request))?;
        for t in &response.responses {
            check_code(
                t.error_code,
                t.error_message.as_ref(),
                format_args!("deleting topic {}", dest.name),
            )?;
        }
        Ok(())
    }

    fn how_to_start(&self) -> &'static str {
        self.flavour.how_to_start
    }
}

/// One connection: requests framed into a write buffer, responses read in order.
pub(crate) struct Conn {
    addr: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    wbuf: BytesMut,
    rbuf: BytesMut,
    next_correlation_id: i32,
}

impl Conn {
    pub(crate) fn connect(addr: &str) -> anyhow::Result<Self> {
        let mut last_error = None;
        let addrs = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some(stream) = stream else {
            return Err(match last_error {
                Some(e) => anyhow::Error::new(e).context(format!("connecting to {addr}")),
                None => anyhow::anyhow!("{addr} resolves to no address"),
            });
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Self {
            addr: addr.to_string(),
            reader: BufReader::with_capacity(READ_BUFFER_BYTES, stream),
            writer,
            wbuf: BytesMut::with_capacity(WRITE_COALESCE_BYTES * 2),
            rbuf: BytesMut::new(),
            next_correlation_id: 1,
        })
    }

    /// Frames a request into the write buffer (not sent yet); returns its correlation id.
    fn queue<Q: Encodable>(&mut self, key: ApiKey, version: i16, body: &Q) -> anyhow::Result<i32> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let start = self.wbuf.len();
        let encoded = (|| {
            self.wbuf.put_i32(0);
            RequestHeader::default()
                .with_request_api_key(key as i16)
                .with_request_api_version(version)
                .with_correlation_id(correlation_id)
                .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
                .encode(&mut self.wbuf, key.request_header_version(version))?;
            body.encode(&mut self.wbuf, version)?;
            let len = i32::try_from(self.wbuf.len() - start - 4)?;
            self.wbuf[start..start + 4].copy_from_slice(&len.to_be_bytes());
            anyhow::Ok(())
        })();
        if let Err(e) = encoded {
            self.wbuf.truncate(start);
            return Err(e.context(format!("encoding a {key:?} v{version} request")));
        }
        Ok(correlation_id)
    }

    fn queued_bytes(&self) -> usize {
        self.wbuf.len()
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if !self.wbuf.is_empty() {
            self.writer
                .write_all(&self.wbuf)
                .map_err(|e| io_error(e, &self.addr, "writing to"))?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads the next response frame, which must answer `correlation_id`.
    fn recv<R: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        correlation_id: i32,
    ) -> anyhow::Result<R> {
        let mut len = [0u8; 4];
        self.reader
            .read_exact(&mut len)
            .map_err(|e| io_error(e, &self.addr, "reading from"))?;
        let len = i32::from_be_bytes(len);
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| (4..=RESPONSE_BYTES_MAX).contains(&n))
            .with_context(|| {
                format!(
                    "{} sent a {key:?} response of {len} bytes (at most {RESPONSE_BYTES_MAX})",
                    self.addr
                )
            })?;
        self.rbuf.clear();
        self.rbuf.resize(len, 0);
        self.reader
            .read_exact(&mut self.rbuf)
            .map_err(|e| io_error(e, &self.addr, "reading from"))?;
        let mut frame = self.rbuf.split().freeze();
        let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
            .with_context(|| format!("decoding a {key:?} response header"))?;
        if header.correlation_id != correlation_id {
            bail!(
                "{} answered correlation id {} where {correlation_id} ({key:?}) was next",
                self.addr,
                header.correlation_id
            );
        }
        R::decode(&mut frame, version)
            .with_context(|| format!("decoding a {key:?} v{version} response from {}", self.addr))
    }

    /// One request and its response.
    pub(crate) fn call<Q: Encodable, R: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        body: &Q,
    ) -> anyhow::Result<R> {
        let id = self.queue(key, version, body)?;
        self.flush()?;
        self.recv(key, version, id)
    }
}

/// Errors a group request is retried on after finding the coordinator again: loading,
/// not available, not the coordinator.
const COORDINATOR_RETRIABLE: [i16; 3] = [14, 15, 16];
/// How long a group request is retried while its coordinator moves or loads.
const COORDINATOR_WAIT: Duration = Duration::from_secs(30);

/// The address of `group`'s coordinator, as `via` answers FindCoordinator (v2), retried
/// while the answer is an error (the coordinator's topic being created, or moving).
pub(crate) fn find_coordinator(via: &str, group: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut conn = Conn::connect(via)?;
    loop {
        let r: FindCoordinatorResponse = conn.call(
            ApiKey::FindCoordinator,
            2,
            &FindCoordinatorRequest::default()
                .with_key(StrBytes::from_string(group.to_owned()))
                .with_key_type(0),
        )?;
        if r.error_code == 0 {
            return Ok(format!("{}:{}", r.host.as_str(), r.port));
        }
        if started.elapsed() > COORDINATOR_WAIT || !COORDINATOR_RETRIABLE.contains(&r.error_code) {
            bail!(
                "{via} names no coordinator for group {group}: error {}",
                r.error_code
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An OffsetCommit sent to the group's coordinator (found through `via`), retried while
/// the coordinator loads or moves; the response's per-partition codes are the caller's.
pub(crate) fn commit_at_coordinator(
    via: &str,
    group: &str,
    request: &OffsetCommitRequest,
) -> anyhow::Result<OffsetCommitResponse> {
    let started = Instant::now();
    loop {
        let mut conn = Conn::connect(&find_coordinator(via, group)?)?;
        let response: OffsetCommitResponse =
            conn.call(ApiKey::OffsetCommit, OFFSET_COMMIT_VERSION, request)?;
        let retry = response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| COORDINATOR_RETRIABLE.contains(&p.error_code));
        if !retry || started.elapsed() > COORDINATOR_WAIT {
            return Ok(response);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn io_error(e: std::io::Error, addr: &str, doing: &str) -> anyhow::Error {
    match e.kind() {
        ErrorKind::UnexpectedEof => anyhow::anyhow!("the broker at {addr} closed the connection"),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            anyhow::anyhow!("{doing} the broker at {addr}: no progress in {IO_TIMEOUT:?}")
        }
        _ => anyhow::Error::new(e).context(format!("{doing} the broker at {addr}")),
    }
}

/// A Kafka error code as an error that names it, its number and what was being done.
fn check_code(code: i16, message: Option<&StrBytes>, what: impl Display) -> anyhow::Result<()> {
    match code.err() {
        None => Ok(()),
        Some(e) => match message {
            Some(m) if !m.is_empty() => bail!("{what}: {e} (error code {code}): {}", m.as_str()),
            _ => bail!("{what}: {e} (error code {code})"),
        },
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn first_address(bootstrap: &str) -> &str {
    bootstrap.split(',').next().unwrap_or(bootstrap).trim()
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The offset of each of `partitions` at `timestamp` (-1 latest, -2 earliest), in order.
fn list_offsets(
    conn: &mut Conn,
    topic: &str,
    partitions: &[u32],
    timestamp: i64,
) -> anyhow::Result<Vec<i64>> {
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p as i32)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                ),
        ]);
    let response: ListOffsetsResponse =
        conn.call(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request)?;
    partitions
        .iter()
        .map(|&p| {
            let answer = response
                .topics
                .iter()
                .filter(|t| t.name.0.as_str() == topic)
                .flat_map(|t| &t.partitions)
                .find(|a| a.partition_index == p as i32)
                .with_context(|| format!("ListOffsets did not answer for {topic}/{p}"))?;
            check_code(
                answer.error_code,
                None,
                format_args!("ListOffsets {topic}/{p}"),
            )?;
            Ok(answer.offset)
        })
        .collect()
}

struct LeanProducer {
    conn: Conn,
    topic: TopicName,
    mode: Mode,
    /// 0 in paper mode; -1 (idempotent) or 1 in durable mode.
    acks: i16,
    batch: usize,
    linger: Duration,
    producer_id: i64,
    producer_epoch: i16,
    /// Base sequence of the next batch, per partition (idempotent producer).
    next_sequence: Vec<i32>,
    /// Records of the request being built, per partition.
    pending: Vec<Vec<Record>>,
    pending_count: usize,
    /// The pending records' values, one after another: each record holds a slice of it,
    /// so a message costs no allocation of its own (a fresh 1 KiB allocation per message
    /// grew and trimmed the heap at every batch and cost more CPU than the encoding).
    values: BytesMut,
    records_buf: BytesMut,
    /// When the oldest request still in the write buffer was queued.
    unflushed_since: Option<Instant>,
    /// Durable mode: (correlation id, messages, partitions) of each unanswered request.
    in_flight: VecDeque<(i32, u64, usize)>,
    sent: u64,
    acknowledged: u64,
}

impl LeanProducer {
    fn acks(&self) -> i16 {
        self.acks
    }

    /// The pending records of each partition as one record batch each.
    fn encode_batches(&mut self) -> anyhow::Result<Vec<PartitionProduceData>> {
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        let idempotent = self.acks == -1;
        let mut data = Vec::new();
        for (p, records) in self.pending.iter_mut().enumerate() {
            if records.is_empty() {
                continue;
            }
            let base_sequence = if idempotent {
                let base = self.next_sequence[p];
                let count = i32::try_from(records.len())?;
                self.next_sequence[p] = base.checked_add(count).with_context(|| {
                    format!(
                        "more than {} messages from one producer to partition {p}",
                        i32::MAX
                    )
                })?;
                base
            } else {
                -1
            };
            // The encoder derives the batch's base sequence from each record's
            // (offset, sequence) pair, so they advance together.
            for (i, r) in records.iter_mut().enumerate() {
                r.offset = i as i64;
                r.sequence = base_sequence.wrapping_add(i as i32);
            }
            RecordBatchEncoder::encode(&mut self.records_buf, records.iter(), &options)
                .context("encoding a record batch")?;
            records.clear();
            data.push(
                PartitionProduceData::default()
                    .with_index(p as i32)
                    .with_records(Some(self.records_buf.split().freeze())),
            );
        }
        Ok(data)
    }

    /// Reads the oldest outstanding response; any error code fails the run.
    fn read_ack(&mut self) -> anyhow::Result<()> {
        let Some((id, messages, partitions)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let response: ProduceResponse = self.conn.recv(ApiKey::Produce, PRODUCE_VERSION, id)?;
        let mut answered = 0;
        for t in &response.responses {
            for p in &t.partition_responses {
                check_code(
                    p.error_code,
                    p.error_message.as_ref(),
                    format_args!("producing to {}/{}", t.name.0.as_str(), p.index),
                )?;
                answered += 1;
            }
        }
        if answered != partitions {
            bail!("a produce response answered {answered} partitions of {partitions}");
        }
        self.acknowledged += messages;
        Ok(())
    }
}

impl Producer for LeanProducer {
    fn send(&mut self, partition: u32, payload: &[u8]) -> anyhow::Result<()> {
        let records = self
            .pending
            .get_mut(partition as usize)
            .with_context(|| format!("partition {partition} is not in the topic"))?;
        if self.values.capacity() - self.values.len() < payload.len() {
            // Reclaims the whole buffer once the records of the last batches are gone.
            self.values.reserve(VALUES_ARENA_BYTES.max(payload.len()));
        }
        self.values.extend_from_slice(payload);
        let value = self.values.split().freeze();
        records.push(Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: 0,
            timestamp: now_millis(),
            key: None,
            value: Some(value),
            headers: IndexMap::new(),
        });
        self.pending_count += 1;
        if self.pending_count >= self.batch {
            self.end_batch()?;
        }
        Ok(())
    }

    /// Frames the pending messages as one produce request and writes it out, unless
    /// paper mode may still coalesce it with the next ones: requests are written when
    /// 64 KiB are queued or the oldest has waited `linger` (at once with linger 0).
    /// Durable mode writes each request at once and keeps at most 5 unanswered.
    fn end_batch(&mut self) -> anyhow::Result<()> {
        if self.pending_count == 0 {
            return Ok(());
        }
        if self.mode == Mode::Durable {
            while self.in_flight.len() >= IN_FLIGHT_REQUESTS_MAX {
                self.read_ack()?;
            }
        }
        let partition_data = self.encode_batches()?;
        let partitions = partition_data.len();
        let request = ProduceRequest::default()
            .with_transactional_id(None)
            .with_acks(self.acks())
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(self.topic.clone())
                    .with_partition_data(partition_data),
            ]);
        let id = self
            .conn
            .queue(ApiKey::Produce, PRODUCE_VERSION, &request)?;
        let messages = self.pending_count as u64;
        self.pending_count = 0;
        self.sent += messages;
        let queued_at = *self.unflushed_since.get_or_insert_with(Instant::now);
        match self.mode {
            Mode::Durable => {
                self.in_flight.push_back((id, messages, partitions));
                self.conn.flush()?;
                self.unflushed_since = None;
            }
            Mode::Paper => {
                if self.linger.is_zero()
                    || self.conn.queued_bytes() >= WRITE_COALESCE_BYTES
                    || queued_at.elapsed() >= self.linger
                {
                    self.conn.flush()?;
                    self.unflushed_since = None;
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<u64> {
        self.end_batch()?;
        self.conn.flush()?;
        self.unflushed_since = None;
        match self.mode {
            Mode::Durable => {
                while !self.in_flight.is_empty() {
                    self.read_ack()?;
                }
                Ok(self.acknowledged)
            }
            Mode::Paper => {
                // acks=0 has no answers; a broker answers a connection's requests in
                // order, so an answer to this one means it has read every produce before.
                let request = MetadataRequest::default()
                    .with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(self.topic.clone())),
                    ]))
                    .with_allow_auto_topic_creation(false);
                let _: MetadataResponse = self
                    .conn
                    .call(ApiKey::Metadata, METADATA_VERSION, &request)
                    .context("the round trip after the last acks=0 produce")?;
                Ok(self.sent)
            }
        }
    }
}

struct LeanConsumer {
    conn: Conn,
    topic: TopicName,
    mode: Mode,
    group: String,
    /// (partition, next offset to hand out).
    positions: Vec<(u32, i64)>,
    /// Correlation id of the fetch sent ahead, if any.
    in_flight: Option<i32>,
    /// Fetches in a row that returned data but no whole batch.
    stalled: u32,
}

impl LeanConsumer {
    fn send_fetch(&mut self) -> anyhow::Result<()> {
        let partitions = self
            .positions
            .iter()
            .map(|&(p, offset)| {
                FetchPartition::default()
                    .with_partition(p as i32)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(FETCH_PARTITION_BYTES_MAX)
            })
            .collect();
        let request = FetchRequest::default()
            .with_max_wait_ms(FETCH_WAIT_MS)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_BYTES_MAX)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(self.topic.clone())
                    .with_partitions(partitions),
            ]);
        let id = self.conn.queue(ApiKey::Fetch, FETCH_VERSION, &request)?;
        self.conn.flush()?;
        self.in_flight = Some(id);
        Ok(())
    }

    fn receive_fetch(&mut self) -> anyhow::Result<Option<FetchResponse>> {
        match self.in_flight.take() {
            Some(id) => Ok(Some(self.conn.recv(ApiKey::Fetch, FETCH_VERSION, id)?)),
            None => Ok(None),
        }
    }
}

impl Consumer for LeanConsumer {
    /// Takes the fetch sent ahead, sends the next one at once (its offsets come from the
    /// batch headers), then decodes the records. The fetch waits at most 100 ms on the
    /// broker, which bounds a poll of an idle topic.
    fn poll(
        &mut self,
        _timeout: Duration,
        on_message: &mut dyn FnMut(&[u8]),
    ) -> anyhow::Result<usize> {
        if self.in_flight.is_none() {
            self.send_fetch()?;
        }
        let Some(response) = self.receive_fetch()? else {
            return Ok(0);
        };
        check_code(response.error_code, None, "fetch")?;
        // (first offset wanted, whole batches) per partition that returned data.
        let mut work = Vec::new();
        let (mut returned_data, mut progress) = (false, false);
        for topic in response.responses {
            for data in topic.partitions {
                let p = data.partition_index;
                check_code(
                    data.error_code,
                    None,
                    format_args!("fetching {}/{p}", topic.topic.0.as_str()),
                )?;
                let Some(records) = data.records.filter(|r| !r.is_empty()) else {
                    continue;
                };
                let position = self
                    .positions
                    .iter_mut()
                    .find(|(q, _)| *q as i32 == p)
                    .with_context(|| format!("a fetch answered partition {p}, not asked for"))?;
                let (batches, next) = whole_batches(&records, position.1)
                    .with_context(|| format!("partition {p} at offset {}", position.1))?;
                returned_data = true;
                progress |= !batches.is_empty();
                work.push((position.1, batches));
                position.1 = next;
            }
        }
        // Kafka returns the first partition's first batch whole, but may cut a later
        // partition's data mid-batch, even its first one (KIP-74): that partition is simply
        // fetched again. A broker that never returns a whole batch would loop; stop it.
        if returned_data && !progress {
            self.stalled += 1;
            if self.stalled > STALLED_FETCHES_MAX {
                bail!("{STALLED_FETCHES_MAX} fetches in a row returned no whole record batch");
            }
        } else {
            self.stalled = 0;
        }
        self.send_fetch()?;
        let mut n = 0;
        for (from, batches) in work {
            for mut batch in batches {
                let set =
                    RecordBatchDecoder::decode(&mut batch).context("decoding a record batch")?;
                for r in set
                    .records
                    .iter()
                    .filter(|r| r.offset >= from && !r.control)
                {
                    on_message(r.value.as_deref().unwrap_or_default());
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn close(&mut self) -> anyhow::Result<()> {
        // The fetch sent ahead is read and dropped: its records were never handed out.
        self.receive_fetch()?;
        if self.mode == Mode::Durable && !self.positions.is_empty() {
            let request = OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![
                    OffsetCommitRequestTopic::default()
                        .with_name(self.topic.clone())
                        .with_partitions(
                            self.positions
                                .iter()
                                .map(|&(p, offset)| {
                                    OffsetCommitRequestPartition::default()
                                        .with_partition_index(p as i32)
                                        .with_committed_offset(offset)
                                })
                                .collect(),
                        ),
                ]);
            let response = commit_at_coordinator(&self.conn.addr.clone(), &self.group, &request)?;
            for t in &response.topics {
                for p in &t.partitions {
                    check_code(
                        p.error_code,
                        None,
                        format_args!(
                            "committing {}/{} for group {}",
                            t.name.0.as_str(),
                            p.partition_index,
                            self.group
                        ),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Splits fetched records into whole batches (a fetch may end mid-batch, or hold only part
/// of one) and returns the offset after the last whole one (`from` when there is none). Each batch's header is checked (length, magic,
/// no compression, a record count its bytes can hold) before the decoder sizes its record
/// list from it; counts inside a record (headers) are left to the decoder.
fn whole_batches(records: &Bytes, from: i64) -> anyhow::Result<(Vec<Bytes>, i64)> {
    let mut batches = Vec::new();
    let mut next = from;
    let mut at = 0;
    while records.len() - at >= BATCH_HEADER_BYTES {
        let b = &records[at..];
        let field = |range: std::ops::Range<usize>| -> [u8; 8] {
            let mut out = [0u8; 8];
            out[8 - range.len()..].copy_from_slice(&b[range]);
            out
        };
        let base_offset = i64::from_be_bytes(field(0..8));
        let length = u64::from_be_bytes(field(8..12)) as u32 as i32;
        let magic = b[16] as i8;
        let attributes = u64::from_be_bytes(field(21..23)) as u16;
        let last_offset_delta = u64::from_be_bytes(field(23..27)) as u32 as i32;
        let count = u64::from_be_bytes(field(57..61)) as u32 as i32;
        let total = usize::try_from(length)
            .ok()
            .filter(|&l| l >= BATCH_HEADER_BYTES - 12)
            .map(|l| l + 12)
            .with_context(|| format!("a record batch claims {length} bytes"))?;
        if total > b.len() {
            break; // the fetch ended mid-batch: the rest comes with the next one
        }
        if magic != 2 {
            bail!("record batch magic {magic}, expected 2");
        }
        if attributes & 0x7 != 0 {
            bail!("a compressed record batch (attributes {attributes:#x}): loadgen writes none");
        }
        let room = (total - BATCH_HEADER_BYTES) / RECORD_BYTES_MIN;
        if count < 0 || count as usize > room || last_offset_delta < 0 {
            bail!(
                "a record batch of {total} bytes claims {count} records, last offset delta {last_offset_delta}"
            );
        }
        batches.push(records.slice(at..at + total));
        // Never backwards: a batch wholly before `from` hands nothing out.
        next = base_offset
            .checked_add(i64::from(last_offset_delta) + 1)
            .context("record batch offsets overflow")?
            .max(next);
        at += total;
    }
    Ok((batches, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, values: &[&[u8]]) -> Bytes {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                sequence: -1 + i as i32,
                timestamp: 1,
                key: None,
                value: Some(Bytes::copy_from_slice(v)),
                headers: IndexMap::new(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, records.iter(), &options).unwrap();
        buf.freeze()
    }

    #[test]
    fn given_records_with_one_sequence_run_when_encoded_should_make_one_batch() {
        let one = batch(0, &[b"a", b"b", b"c"]);
        let (batches, next) = whole_batches(&one, 0).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(next, 3);
    }

    #[test]
    fn given_a_fetch_ending_mid_batch_should_stop_after_the_last_whole_batch() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&batch(10, &[b"x", b"y"]));
        let second = batch(12, &[b"z"]);
        wire.extend_from_slice(&second[..second.len() - 5]);
        let (batches, next) = whole_batches(&wire.freeze(), 10).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(next, 12, "continues at the last decoded offset + 1");
    }

    #[test]
    fn given_only_a_partial_batch_should_stay_at_the_same_offset() {
        let one = batch(7, &[b"abc"]);
        let (batches, next) = whole_batches(&one.slice(..one.len() - 1), 7).unwrap();
        assert!(batches.is_empty());
        assert_eq!(next, 7);
    }

    #[test]
    fn given_a_record_count_the_bytes_cannot_hold_should_refuse_before_decoding() {
        let mut bytes = BytesMut::from(&batch(0, &[b"abc"])[..]);
        bytes[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let err = whole_batches(&bytes.freeze(), 0).unwrap_err();
        assert!(err.to_string().contains("claims"), "{err}");
    }

    #[test]
    fn error_codes_become_named_errors() {
        let err = check_code(36, None, "creating topic t").unwrap_err();
        assert_eq!(
            err.to_string(),
            "creating topic t: TopicAlreadyExists (error code 36)"
        );
        assert!(check_code(0, None, "fine").is_ok());
    }
}
