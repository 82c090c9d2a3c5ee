//! The Fetch response (v4-18), written by hand as a list of pieces: encoded bytes from
//! memory, and file ranges that go from the page cache to the socket by splice, so the
//! record bytes never enter user space. From v12 on it is flexible (KIP-482: compact
//! lengths, tagged fields), from v13 on topics are named by id, and v16 adds the new
//! leader's endpoint to partitions that moved (KIP-951). Its encoding is checked against
//! the `kafka-protocol` crate's by a property test below, for every version.

use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use engine::SegmentFiles;

/// A file the records come from: a local segment (held, so retention cannot unlink it
/// mid-send) or a descriptor duplicated by the core that owns the partition.
#[derive(Debug, Clone)]
pub enum SendFile {
    Local(Rc<SegmentFiles>),
    Owned(Rc<compio::fs::File>),
}

impl SendFile {
    pub fn file(&self) -> &compio::fs::File {
        match self {
            SendFile::Local(files) => files.log_file(),
            SendFile::Owned(file) => file,
        }
    }
}

/// One piece of a response on the wire.
#[derive(Debug, Clone)]
pub enum Piece {
    Bytes(Vec<u8>),
    File {
        file: SendFile,
        position: u64,
        len: u64,
    },
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of this piece that come from a file (records not in memory).
    pub fn file_len(&self) -> u64 {
        match self {
            Piece::Bytes(_) => 0,
            Piece::File { len, .. } => *len,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PartitionData {
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// v12+: `(epoch, end offset)` where the fetcher's log diverged from the leader's.
    pub diverging_epoch: Option<(i32, i64)>,
    /// v12+: `(leader id, leader epoch)` of a partition this broker no longer leads.
    pub current_leader: Option<(i32, i32)>,
    pub records: Vec<Piece>,
}

#[derive(Debug, Clone)]
pub struct TopicData {
    /// The name (up to v12) or the id (v13+) goes on the wire.
    pub name: String,
    pub topic_id: u128,
    pub partitions: Vec<PartitionData>,
}

/// A broker's address, sent with v16+ responses for the leaders named in
/// `current_leader` (KIP-951), so that the client need not refresh its metadata first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

/// The whole response body but the records, which the partitions carry.
#[derive(Debug, Clone)]
pub struct FetchResponse {
    pub error_code: i16,
    pub topics: Vec<TopicData>,
    pub node_endpoints: Vec<NodeEndpoint>,
}

pub const VERSION_MIN: i16 = 4;
pub const VERSION_MAX: i16 = 18;
/// The first flexible version.
const FLEXIBLE: i16 = 12;
/// The first version that names topics by id.
const TOPIC_IDS: i16 = 13;
/// The first version that carries node endpoints.
const NODE_ENDPOINTS: i16 = 16;

fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// An array or string length: i32 (or i16 for strings) before v12, compact (plus one)
/// after.
fn put_len(buf: &mut BytesMut, flexible: bool, len: usize) {
    if flexible {
        put_uvarint(buf, len as u64 + 1);
    } else {
        buf.put_i32(len as i32);
    }
}

fn put_string(buf: &mut BytesMut, flexible: bool, s: &str) {
    if flexible {
        put_uvarint(buf, s.len() as u64 + 1);
    } else {
        buf.put_i16(s.len() as i16);
    }
    buf.put_slice(s.as_bytes());
}

/// One tagged field: its tag, its size, its bytes.
fn put_tagged(buf: &mut BytesMut, tag: u64, field: &[u8]) {
    put_uvarint(buf, tag);
    put_uvarint(buf, field.len() as u64);
    buf.put_slice(field);
}

/// Builds a response out of pieces, keeping small fields in one buffer until a file
/// range interrupts it.
struct Writer {
    pieces: Vec<Piece>,
    buf: BytesMut,
    total: u64,
}

impl Writer {
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.total += self.buf.len() as u64;
            self.pieces.push(Piece::Bytes(self.buf.split().to_vec()));
        }
    }

    fn push(&mut self, piece: Piece) {
        match piece {
            Piece::Bytes(b) => self.buf.put_slice(&b),
            file => {
                self.flush();
                self.total += file.len();
                self.pieces.push(file);
            }
        }
    }
}

/// Encodes a whole Fetch response frame (length prefix, header, body) for `version`
/// `VERSION_MIN..=VERSION_MAX`.
pub fn encode(version: i16, correlation_id: i32, response: FetchResponse) -> Vec<Piece> {
    debug_assert!((VERSION_MIN..=VERSION_MAX).contains(&version));
    let flexible = version >= FLEXIBLE;
    let mut w = Writer {
        pieces: Vec::new(),
        buf: BytesMut::with_capacity(256),
        total: 0,
    };
    w.buf.put_i32(0); // frame length, patched at the end
    w.buf.put_i32(correlation_id);
    if flexible {
        put_uvarint(&mut w.buf, 0); // response header v1: no tagged fields
    }
    w.buf.put_i32(0); // throttle_time_ms
    if version >= 7 {
        w.buf.put_i16(response.error_code);
        w.buf.put_i32(0); // session_id: no fetch sessions
    }
    put_len(&mut w.buf, flexible, response.topics.len());
    for topic in response.topics {
        if version >= TOPIC_IDS {
            w.buf.put_u128(topic.topic_id);
        } else {
            put_string(&mut w.buf, flexible, &topic.name);
        }
        put_len(&mut w.buf, flexible, topic.partitions.len());
        for p in topic.partitions {
            w.buf.put_i32(p.partition);
            w.buf.put_i16(p.error_code);
            w.buf.put_i64(p.high_watermark);
            w.buf.put_i64(p.last_stable_offset);
            if version >= 5 {
                w.buf.put_i64(p.log_start_offset);
            }
            // aborted_transactions: null (no transactions).
            if flexible {
                put_uvarint(&mut w.buf, 0);
            } else {
                w.buf.put_i32(-1);
            }
            if version >= 11 {
                w.buf.put_i32(-1); // preferred_read_replica
            }
            let records_len: u64 = p.records.iter().map(Piece::len).sum();
            if flexible {
                put_uvarint(&mut w.buf, records_len + 1);
            } else {
                w.buf.put_i32(records_len as i32);
            }
            for piece in p.records {
                w.push(piece);
            }
            if flexible {
                let tags = usize::from(p.diverging_epoch.is_some())
                    + usize::from(p.current_leader.is_some());
                put_uvarint(&mut w.buf, tags as u64);
                if let Some((epoch, end_offset)) = p.diverging_epoch {
                    let mut field = BytesMut::with_capacity(13);
                    field.put_i32(epoch);
                    field.put_i64(end_offset);
                    put_uvarint(&mut field, 0);
                    put_tagged(&mut w.buf, 0, &field);
                }
                if let Some((leader_id, leader_epoch)) = p.current_leader {
                    let mut field = BytesMut::with_capacity(9);
                    field.put_i32(leader_id);
                    field.put_i32(leader_epoch);
                    put_uvarint(&mut field, 0);
                    put_tagged(&mut w.buf, 1, &field);
                }
            }
        }
        if flexible {
            put_uvarint(&mut w.buf, 0); // the topic's tagged fields
        }
    }
    if flexible {
        if version >= NODE_ENDPOINTS && !response.node_endpoints.is_empty() {
            let mut field = BytesMut::new();
            put_len(&mut field, true, response.node_endpoints.len());
            for node in &response.node_endpoints {
                field.put_i32(node.node_id);
                put_string(&mut field, true, &node.host);
                field.put_i32(node.port);
                put_uvarint(&mut field, 0); // rack: null
                put_uvarint(&mut field, 0); // tagged fields
            }
            put_uvarint(&mut w.buf, 1);
            put_tagged(&mut w.buf, 0, &field);
        } else {
            put_uvarint(&mut w.buf, 0);
        }
    }
    w.flush();
    let frame_len = (w.total - 4) as i32;
    if let Some(Piece::Bytes(first)) = w.pieces.first_mut() {
        first[..4].copy_from_slice(&frame_len.to_be_bytes());
    }
    w.pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::messages::fetch_response::{
        EpochEndOffset, FetchResponse as CrateResponse, FetchableTopicResponse, LeaderIdAndEpoch,
        NodeEndpoint as CrateNode, PartitionData as CratePartition,
    };
    use kafka_protocol::messages::{BrokerId, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use proptest::prelude::*;

    fn flatten(pieces: &[Piece]) -> Vec<u8> {
        pieces
            .iter()
            .flat_map(|p| match p {
                Piece::Bytes(b) => b.clone(),
                Piece::File { .. } => unreachable!("tests use in-memory records"),
            })
            .collect()
    }

    fn crate_partition(p: &PartitionData) -> CratePartition {
        let mut c = CratePartition::default()
            .with_partition_index(p.partition)
            .with_error_code(p.error_code)
            .with_high_watermark(p.high_watermark)
            .with_last_stable_offset(p.last_stable_offset)
            .with_log_start_offset(p.log_start_offset)
            .with_aborted_transactions(None)
            .with_preferred_read_replica(BrokerId(-1))
            .with_records(Some(Bytes::from(flatten(&p.records))));
        if let Some((epoch, end_offset)) = p.diverging_epoch {
            c = c.with_diverging_epoch(
                EpochEndOffset::default()
                    .with_epoch(epoch)
                    .with_end_offset(end_offset),
            );
        }
        if let Some((id, epoch)) = p.current_leader {
            c = c.with_current_leader(
                LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(id))
                    .with_leader_epoch(epoch),
            );
        }
        c
    }

    fn crate_encoding(version: i16, correlation_id: i32, response: &FetchResponse) -> Vec<u8> {
        let body = CrateResponse::default()
            .with_error_code(response.error_code)
            .with_responses(
                response
                    .topics
                    .iter()
                    .map(|t| {
                        let topic = FetchableTopicResponse::default()
                            .with_partitions(t.partitions.iter().map(crate_partition).collect());
                        if version >= TOPIC_IDS {
                            topic.with_topic_id(uuid::Uuid::from_u128(t.topic_id))
                        } else {
                            topic.with_topic(TopicName(StrBytes::from_string(t.name.clone())))
                        }
                    })
                    .collect(),
            )
            .with_node_endpoints(
                response
                    .node_endpoints
                    .iter()
                    .map(|n| {
                        CrateNode::default()
                            .with_node_id(BrokerId(n.node_id))
                            .with_host(StrBytes::from_string(n.host.clone()))
                            .with_port(n.port)
                    })
                    .collect(),
            );
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut buf, if version >= FLEXIBLE { 1 } else { 0 })
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        buf.to_vec()
    }

    fn partition() -> impl Strategy<Value = PartitionData> {
        (
            any::<i32>(),
            any::<i16>(),
            any::<i64>(),
            any::<i64>(),
            proptest::option::of((0i32..1000, 0i64..i64::MAX)),
            proptest::option::of((0i32..1000, 0i32..1000)),
            // Up to 300 bytes in all: compact lengths of one and two bytes.
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..150), 0..3),
        )
            .prop_map(
                |(partition, error_code, hw, lso, diverging, leader, chunks)| PartitionData {
                    partition,
                    error_code,
                    high_watermark: hw,
                    last_stable_offset: hw,
                    log_start_offset: lso,
                    diverging_epoch: diverging,
                    current_leader: leader,
                    records: chunks.into_iter().map(Piece::Bytes).collect(),
                },
            )
    }

    fn node() -> impl Strategy<Value = NodeEndpoint> {
        (any::<i32>(), "[a-z0-9.-]{1,140}", any::<i32>()).prop_map(|(node_id, host, port)| {
            NodeEndpoint {
                node_id,
                host,
                port,
            }
        })
    }

    proptest! {
        #[test]
        fn hand_written_fetch_response_matches_the_crate(
            version in VERSION_MIN..=VERSION_MAX,
            correlation_id in any::<i32>(),
            error_code in any::<i16>(),
            topics in proptest::collection::vec(
                ("[a-z._-]{1,140}", 1u128.., proptest::collection::vec(partition(), 0..4)),
                0..4,
            ),
            node_endpoints in proptest::collection::vec(node(), 0..3),
        ) {
            let mut topics: Vec<TopicData> = topics
                .into_iter()
                .map(|(name, topic_id, partitions)| TopicData { name, topic_id, partitions })
                .collect();
            // Fields a version does not carry stay at their defaults.
            if version < FLEXIBLE {
                for p in topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                    p.diverging_epoch = None;
                    p.current_leader = None;
                }
            }
            let response = FetchResponse {
                // v4-6 have no top-level error code.
                error_code: if version >= 7 { error_code } else { 0 },
                topics,
                node_endpoints: if version >= NODE_ENDPOINTS { node_endpoints } else { Vec::new() },
            };
            let ours = flatten(&encode(version, correlation_id, response.clone()));
            prop_assert_eq!(ours, crate_encoding(version, correlation_id, &response));
        }
    }
}
