//! A pre-flight walk over a request body that checks every array count against the bytes
//! actually present, before the `kafka-protocol` crate decodes it.
//!
//! Why by hand: the crate's array decoder calls `Vec::with_capacity(count)` with the count
//! from the wire. A 12-byte request claiming two billion topics would make the broker try
//! to allocate hundreds of gigabytes and abort. No crate offers a bounded decoder, so this
//! walker follows the request layouts of the APIs we serve, non-flexible and flexible
//! (KIP-482: compact lengths as unsigned varints, tagged fields after every struct), and
//! refuses any count that the remaining bytes could not hold.

use kafka_protocol::messages::ApiKey;

/// Array elements one request may hold, all arrays together. Counts checked against the
/// bytes present still let a 100 MiB Produce frame of 6-byte empty topics decode into a
/// 1.7 GB `Vec` (16 bytes decoded per byte on the wire); this caps what any request decodes
/// into at tens of MB. Real requests name at most a few thousand partitions.
pub const REQUEST_ARRAY_ELEMENTS_MAX: usize = 200_000;

/// One field of a request layout, with the first version that carries it.
#[derive(Clone, Copy)]
enum F {
    I8,
    I16,
    I32,
    I64,
    /// Nullable or not: an i16 length, then bytes.
    Str,
    /// Nullable or not: an i32 length, then bytes.
    Bytes,
    /// An i32 count (-1 = null), then elements of this layout.
    Array(&'static [(i16, F)]),
    /// An i32 count, then i32 elements.
    I32Array,
    /// A count, then i8 elements.
    I8Array,
    /// An i32 count, then strings.
    StrArray,
    /// 16 bytes (a topic id).
    Uuid,
    /// A field that versions after the given one no longer carry.
    Until(i16, &'static F),
    /// A nullable struct: an i8 (1 present, else null), then the struct.
    OptStruct(&'static [(i16, F)]),
    /// A struct.
    Struct(&'static [(i16, F)]),
    /// A tagged field the codec knows (flexible versions): not inline, but among the
    /// struct's tagged fields under this tag. The codec decodes a known tag by its type
    /// and ignores the size it was sent with, so the walk checks that the field fills
    /// exactly that size; otherwise the two would read the rest of the request out of
    /// step, and the codec could take a count the walk never saw.
    Tag(u32, &'static F),
}

const ALL: i16 = 0;

const PRODUCE_PARTITION: &[(i16, F)] = &[(ALL, F::I32), (ALL, F::Bytes)];
const PRODUCE_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Array(PRODUCE_PARTITION))];
const PRODUCE: &[(i16, F)] = &[
    (3, F::Str),
    (ALL, F::I16),
    (ALL, F::I32),
    (ALL, F::Array(PRODUCE_TOPIC)),
];

const FETCH_PARTITION: &[(i16, F)] = &[
    (ALL, F::I32),
    (9, F::I32),
    (ALL, F::I64),
    (12, F::I32),
    (5, F::I64),
    (ALL, F::I32),
    // replica_directory_id, high_watermark (tagged).
    (17, F::Tag(0, &F::Uuid)),
    (18, F::Tag(1, &F::I64)),
];
const REPLICA_STATE: &[(i16, F)] = &[(ALL, F::I32), (ALL, F::I64)];
// Topics by name up to v12, by id from v13.
const FETCH_TOPIC: &[(i16, F)] = &[
    (ALL, F::Until(12, &F::Str)),
    (13, F::Uuid),
    (ALL, F::Array(FETCH_PARTITION)),
];
const FORGOTTEN_TOPIC: &[(i16, F)] = &[
    (ALL, F::Until(12, &F::Str)),
    (13, F::Uuid),
    (ALL, F::I32Array),
];
// From v15 the replica id moves into a tagged field (KIP-903).
const FETCH: &[(i16, F)] = &[
    (ALL, F::Until(14, &F::I32)),
    (ALL, F::I32),
    (ALL, F::I32),
    (3, F::I32),
    (4, F::I8),
    (7, F::I32),
    (7, F::I32),
    (ALL, F::Array(FETCH_TOPIC)),
    (7, F::Array(FORGOTTEN_TOPIC)),
    (11, F::Str),
    // cluster_id, replica_state (tagged).
    (12, F::Tag(0, &F::Str)),
    (15, F::Tag(1, &F::Struct(REPLICA_STATE))),
];

const LIST_OFFSETS_PARTITION: &[(i16, F)] = &[(ALL, F::I32), (4, F::I32), (ALL, F::I64)];
const LIST_OFFSETS_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Array(LIST_OFFSETS_PARTITION))];
const LIST_OFFSETS: &[(i16, F)] = &[
    (ALL, F::I32),
    (2, F::I8),
    (ALL, F::Array(LIST_OFFSETS_TOPIC)),
    (10, F::I32),
];

const METADATA_TOPIC: &[(i16, F)] = &[(10, F::Uuid), (ALL, F::Str)];
// Every field is listed: in flexible versions the struct's tagged fields follow the last.
const METADATA: &[(i16, F)] = &[
    (ALL, F::Array(METADATA_TOPIC)),
    (4, F::I8),
    (8, F::Until(10, &F::I8)),
    (8, F::I8),
];

const ASSIGNMENT: &[(i16, F)] = &[(ALL, F::I32), (ALL, F::I32Array)];
const CONFIG: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Str)];
const CREATABLE_TOPIC: &[(i16, F)] = &[
    (ALL, F::Str),
    (ALL, F::I32),
    (ALL, F::I16),
    (ALL, F::Array(ASSIGNMENT)),
    (ALL, F::Array(CONFIG)),
];
const CREATE_TOPICS: &[(i16, F)] = &[
    (ALL, F::Array(CREATABLE_TOPIC)),
    (ALL, F::I32),
    (ALL, F::I8),
];

// v6 names topics by name or id in `topics`; earlier versions by name in `topic_names`.
const DELETE_TOPIC_STATE: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Uuid)];
const DELETE_TOPICS: &[(i16, F)] = &[
    (6, F::Array(DELETE_TOPIC_STATE)),
    (ALL, F::Until(5, &F::StrArray)),
    (ALL, F::I32),
];

const PARTITIONS_ASSIGNMENT: &[(i16, F)] = &[(ALL, F::I32Array)];
const PARTITIONS_TOPIC: &[(i16, F)] = &[
    (ALL, F::Str),
    (ALL, F::I32),
    (ALL, F::Array(PARTITIONS_ASSIGNMENT)),
];
const CREATE_PARTITIONS: &[(i16, F)] = &[
    (ALL, F::Array(PARTITIONS_TOPIC)),
    (ALL, F::I32),
    (ALL, F::I8),
];

const LOG_DIR_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::I32Array)];
const DESCRIBE_LOG_DIRS: &[(i16, F)] = &[(ALL, F::Array(LOG_DIR_TOPIC))];
const ALTER_LOG_DIR: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Array(LOG_DIR_TOPIC))];
const ALTER_REPLICA_LOG_DIRS: &[(i16, F)] = &[(ALL, F::Array(ALTER_LOG_DIR))];

const QUORUM_PARTITION: &[(i16, F)] = &[(ALL, F::I32)];
const QUORUM_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Array(QUORUM_PARTITION))];
const DESCRIBE_QUORUM: &[(i16, F)] = &[(ALL, F::Array(QUORUM_TOPIC))];

const DESCRIBE_CLUSTER: &[(i16, F)] = &[(ALL, F::I8), (1, F::I8), (2, F::I8)];

const CONFIG_RESOURCE: &[(i16, F)] = &[(ALL, F::I8), (ALL, F::Str), (ALL, F::StrArray)];
const DESCRIBE_CONFIGS: &[(i16, F)] = &[(ALL, F::Array(CONFIG_RESOURCE)), (1, F::I8), (3, F::I8)];

const PROTOCOL: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Bytes)];
const JOIN_GROUP: &[(i16, F)] = &[
    (ALL, F::Str),
    (ALL, F::I32),
    (1, F::I32),
    (ALL, F::Str),
    (5, F::Str),
    (ALL, F::Str),
    (ALL, F::Array(PROTOCOL)),
    (8, F::Str),
];
const SYNC_GROUP: &[(i16, F)] = &[
    (ALL, F::Str),
    (ALL, F::I32),
    (ALL, F::Str),
    (3, F::Str),
    (5, F::Str),
    (5, F::Str),
    (ALL, F::Array(PROTOCOL)),
];
const LEAVE_GROUP_V0: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Str)];
const MEMBER_IDENTITY: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Str), (5, F::Str)];
const LEAVE_GROUP_V3: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Array(MEMBER_IDENTITY))];
const COMMIT_PARTITION: &[(i16, F)] = &[(ALL, F::I32), (ALL, F::I64), (6, F::I32), (ALL, F::Str)];
const COMMIT_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Array(COMMIT_PARTITION))];
const OFFSET_COMMIT_V2: &[(i16, F)] = &[
    (ALL, F::Str),
    (ALL, F::I32),
    (ALL, F::Str),
    (ALL, F::I64),
    (ALL, F::Array(COMMIT_TOPIC)),
];
const OFFSET_COMMIT_V5: &[(i16, F)] = &[
    (ALL, F::Str),
    (ALL, F::I32),
    (ALL, F::Str),
    (7, F::Str),
    (ALL, F::Array(COMMIT_TOPIC)),
];
const FETCH_OFFSETS_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::I32Array)];
const OFFSET_FETCH: &[(i16, F)] = &[
    (ALL, F::Str),
    (ALL, F::Array(FETCH_OFFSETS_TOPIC)),
    (7, F::I8),
];
const DESCRIBE_GROUPS: &[(i16, F)] = &[(ALL, F::StrArray), (3, F::I8)];
const DELETE_GROUPS: &[(i16, F)] = &[(ALL, F::StrArray)];
// v1: the resource types, an array of i8.
const LIST_CONFIG_RESOURCES: &[(i16, F)] = &[(1, F::I8Array)];

const TOPIC_REQUEST: &[(i16, F)] = &[(ALL, F::Str)];
const CURSOR: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::I32)];
const DESCRIBE_TOPIC_PARTITIONS: &[(i16, F)] = &[
    (ALL, F::Array(TOPIC_REQUEST)),
    (ALL, F::I32),
    (ALL, F::OptStruct(CURSOR)),
];
const LIST_GROUPS: &[(i16, F)] = &[(4, F::StrArray), (5, F::StrArray)];
// v0-3: one key; v4 on: the key type, then a batch of keys (KIP-699).
const FIND_COORDINATOR_V4: &[(i16, F)] = &[(ALL, F::I8), (ALL, F::StrArray)];

const EPOCH_PARTITION: &[(i16, F)] = &[(ALL, F::I32), (ALL, F::I32), (ALL, F::I32)];
const EPOCH_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Array(EPOCH_PARTITION))];
const OFFSET_FOR_LEADER_EPOCH: &[(i16, F)] = &[(3, F::I32), (ALL, F::Array(EPOCH_TOPIC))];

const ELECT_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::I32Array)];
const ELECT_LEADERS: &[(i16, F)] = &[(1, F::I8), (ALL, F::Array(ELECT_TOPIC)), (ALL, F::I32)];

fn layout(key: ApiKey, version: i16) -> Option<&'static [(i16, F)]> {
    Some(match key {
        ApiKey::ElectLeaders => ELECT_LEADERS,
        ApiKey::OffsetForLeaderEpoch => OFFSET_FOR_LEADER_EPOCH,
        ApiKey::JoinGroup => JOIN_GROUP,
        ApiKey::SyncGroup => SYNC_GROUP,
        ApiKey::LeaveGroup if version >= 3 => LEAVE_GROUP_V3,
        ApiKey::LeaveGroup => LEAVE_GROUP_V0,
        ApiKey::OffsetCommit if version >= 5 => OFFSET_COMMIT_V5,
        ApiKey::OffsetCommit => OFFSET_COMMIT_V2,
        ApiKey::OffsetFetch => OFFSET_FETCH,
        ApiKey::DescribeGroups => DESCRIBE_GROUPS,
        ApiKey::DeleteGroups => DELETE_GROUPS,
        ApiKey::DescribeTopicPartitions => DESCRIBE_TOPIC_PARTITIONS,
        ApiKey::ListConfigResources => LIST_CONFIG_RESOURCES,
        ApiKey::ListGroups => LIST_GROUPS,
        ApiKey::FindCoordinator if version >= 4 => FIND_COORDINATOR_V4,
        ApiKey::Produce => PRODUCE,
        ApiKey::Fetch => FETCH,
        ApiKey::ListOffsets => LIST_OFFSETS,
        ApiKey::Metadata => METADATA,
        ApiKey::CreateTopics => CREATE_TOPICS,
        ApiKey::DeleteTopics => DELETE_TOPICS,
        ApiKey::DescribeConfigs => DESCRIBE_CONFIGS,
        ApiKey::DescribeCluster => DESCRIBE_CLUSTER,
        ApiKey::DescribeQuorum => DESCRIBE_QUORUM,
        ApiKey::DescribeLogDirs => DESCRIBE_LOG_DIRS,
        ApiKey::AlterReplicaLogDirs => ALTER_REPLICA_LOG_DIRS,
        ApiKey::CreatePartitions => CREATE_PARTITIONS,
        _ => return None,
    })
}

/// Fewest bytes one field takes on the wire.
fn field_min_bytes(field: &F, version: i16, flexible: bool) -> usize {
    match field {
        F::I8 => 1,
        // Compact lengths and counts are unsigned varints: one byte at least.
        F::Str | F::Bytes | F::Array(_) | F::I32Array | F::I8Array | F::StrArray if flexible => 1,
        F::I16 | F::Str => 2,
        F::I32 | F::Bytes | F::Array(_) | F::I32Array | F::I8Array | F::StrArray => 4,
        F::I64 => 8,
        F::Uuid => 16,
        F::OptStruct(_) => 1,
        F::Struct(layout) => min_bytes(layout, version, flexible),
        F::Tag(..) => 0,
        F::Until(last, inner) if version <= *last => field_min_bytes(inner, version, flexible),
        F::Until(..) => 0,
    }
}

/// Fewest bytes one element of a layout takes on the wire.
fn min_bytes(layout: &[(i16, F)], version: i16, flexible: bool) -> usize {
    let fields = layout
        .iter()
        .filter(|(since, _)| version >= *since)
        .map(|(_, f)| field_min_bytes(f, version, flexible))
        .sum::<usize>();
    // A flexible struct ends with its tagged fields: a count, one byte at least.
    (fields + usize::from(flexible)).max(1)
}

struct Walker<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Array elements (and tagged fields) counted so far.
    elements: usize,
    /// A flexible version (KIP-482): compact encodings and tagged fields.
    flexible: bool,
}

impl Walker<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&[u8], &'static str> {
        if n > self.remaining() {
            return Err("request ends early");
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn i16(&mut self) -> Result<i16, &'static str> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, &'static str> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An unsigned varint of at most 32 bits (compact lengths, counts, tags).
    fn uvarint(&mut self) -> Result<u32, &'static str> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.take(1)?[0];
            if i == 4 && b > 0x0f {
                return Err("varint longer than 32 bits");
            }
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 32 bits")
    }

    /// A string or bytes length: i16 or i32 (-1 = null), or compact (0 = null).
    fn length(&mut self, wide: bool) -> Result<usize, &'static str> {
        if self.flexible {
            return Ok((self.uvarint()? as usize).saturating_sub(1));
        }
        let len = if wide {
            self.i32()?
        } else {
            i32::from(self.i16()?)
        };
        Ok(usize::try_from(len).unwrap_or(0))
    }

    /// Reads an array count and checks that `element_min` bytes each fit.
    fn count(&mut self, element_min: usize) -> Result<usize, &'static str> {
        let n = if self.flexible {
            // Compact: the count plus one, 0 for null.
            (self.uvarint()? as usize).saturating_sub(1)
        } else {
            let n = self.i32()?;
            if n < 0 {
                return if n == -1 {
                    Ok(0)
                } else {
                    Err("negative array count")
                };
            }
            n as usize
        };
        if n.saturating_mul(element_min) > self.remaining() {
            return Err("array count exceeds the bytes present");
        }
        self.elements += n;
        if self.elements > REQUEST_ARRAY_ELEMENTS_MAX {
            return Err("too many array elements in one request");
        }
        Ok(n)
    }

    /// Tagged fields (flexible versions): a count, then each a tag, a size and that many
    /// bytes. The decoder keeps unknown ones as byte strings, bounded by what is present.
    fn tagged_fields(&mut self, layout: &[(i16, F)], version: i16) -> Result<(), &'static str> {
        // A plain count (not plus one), each field two bytes at least.
        let n = self.uvarint()? as usize;
        if n.saturating_mul(2) > self.remaining() {
            return Err("array count exceeds the bytes present");
        }
        self.elements += n;
        if self.elements > REQUEST_ARRAY_ELEMENTS_MAX {
            return Err("too many array elements in one request");
        }
        for _ in 0..n {
            let tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            let known = layout.iter().find_map(|(since, f)| match f {
                F::Tag(t, inner) if *t == tag && version >= *since => Some(*inner),
                _ => None,
            });
            let start = self.at;
            self.take(size)?;
            if let Some(inner) = known {
                let all = self.bytes;
                let mut field = Walker {
                    bytes: &all[start..start + size],
                    at: 0,
                    elements: self.elements,
                    flexible: self.flexible,
                };
                field.field(inner, version)?;
                if field.at != size {
                    return Err("a tagged field's size does not match its contents");
                }
                self.elements = field.elements;
            }
        }
        Ok(())
    }

    /// One struct of `layout`: its fields, then (flexible) its tagged fields.
    fn walk(&mut self, layout: &[(i16, F)], version: i16) -> Result<(), &'static str> {
        for (since, field) in layout {
            if version >= *since {
                self.field(field, version)?;
            }
        }
        if self.flexible {
            self.tagged_fields(layout, version)?;
        }
        Ok(())
    }

    fn field(&mut self, field: &F, version: i16) -> Result<(), &'static str> {
        match field {
            F::Until(last, inner) => {
                if version <= *last {
                    self.field(inner, version)?;
                }
            }
            F::Uuid => drop(self.take(16)?),
            F::OptStruct(layout) => {
                if self.take(1)?[0] == 1 {
                    self.walk(layout, version)?;
                }
            }
            F::Struct(layout) => self.walk(layout, version)?,
            // Walked among the tagged fields.
            F::Tag(..) => {}
            F::I8 => drop(self.take(1)?),
            F::I16 => drop(self.take(2)?),
            F::I32 => drop(self.take(4)?),
            F::I64 => drop(self.take(8)?),
            F::Str | F::Bytes => {
                let len = self.length(matches!(field, F::Bytes))?;
                self.take(len)?;
            }
            F::Array(element) => {
                let n = self.count(min_bytes(element, version, self.flexible))?;
                for _ in 0..n {
                    self.walk(element, version)?;
                }
            }
            F::I32Array => {
                let n = self.count(4)?;
                self.take(n * 4)?;
            }
            F::I8Array => {
                let n = self.count(1)?;
                self.take(n)?;
            }
            F::StrArray => {
                let n = self.count(if self.flexible { 1 } else { 2 })?;
                for _ in 0..n {
                    let len = self.length(false)?;
                    self.take(len)?;
                }
            }
        }
        Ok(())
    }
}

/// Checks the array counts of a request body (after its header) for `key` at `version`.
/// APIs without arrays in their bodies (Heartbeat, InitProducerId, FindCoordinator up to
/// v3, ApiVersions) pass through: their flexible versions' tagged fields are byte strings
/// the decoder bounds by what is present.
pub fn check(key: ApiKey, version: i16, body: &[u8]) -> Result<(), &'static str> {
    walked(key, version, body).map(|_| ())
}

/// The bytes of `body` the walk covered. A layout lists every field of its flexible
/// versions (their tagged fields come after the last), so there the walk covers the body.
fn walked(key: ApiKey, version: i16, body: &[u8]) -> Result<usize, &'static str> {
    match layout(key, version) {
        Some(layout) => {
            let mut walker = Walker {
                bytes: body,
                at: 0,
                elements: 0,
                flexible: key.request_header_version(version) >= 2,
            };
            walker.walk(layout, version)?;
            Ok(walker.at)
        }
        None => Ok(body.len()),
    }
}

// Responses a broker reads from another (a follower from its leader): the same walk, as
// the `kafka-protocol` decoder trusts response counts just as it trusts request counts.
const ABORTED_TXN: &[(i16, F)] = &[(ALL, F::I64), (ALL, F::I64)];
const FETCH_RESPONSE_PARTITION: &[(i16, F)] = &[
    (ALL, F::I32),
    (ALL, F::I16),
    (ALL, F::I64),
    (4, F::I64),
    (5, F::I64),
    (4, F::Array(ABORTED_TXN)),
    (11, F::I32),
    (ALL, F::Bytes),
];
const FETCH_RESPONSE_TOPIC: &[(i16, F)] =
    &[(ALL, F::Str), (ALL, F::Array(FETCH_RESPONSE_PARTITION))];
const FETCH_RESPONSE: &[(i16, F)] = &[
    (1, F::I32),
    (7, F::I16),
    (7, F::I32),
    (ALL, F::Array(FETCH_RESPONSE_TOPIC)),
];
const EPOCH_END_OFFSET: &[(i16, F)] = &[(ALL, F::I16), (ALL, F::I32), (1, F::I32), (ALL, F::I64)];
const EPOCH_RESPONSE_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Array(EPOCH_END_OFFSET))];
const OFFSET_FOR_LEADER_EPOCH_RESPONSE: &[(i16, F)] =
    &[(2, F::I32), (ALL, F::Array(EPOCH_RESPONSE_TOPIC))];

/// Checks the array counts of a response body (after its header) that this broker reads
/// as a client: Fetch (v4-11) and OffsetForLeaderEpoch (v2-3). Others are refused.
pub fn check_response(key: ApiKey, version: i16, body: &[u8]) -> Result<(), &'static str> {
    let layout = match key {
        ApiKey::Fetch if (4..=11).contains(&version) => FETCH_RESPONSE,
        ApiKey::OffsetForLeaderEpoch if (2..=3).contains(&version) => {
            OFFSET_FOR_LEADER_EPOCH_RESPONSE
        }
        _ => return Err("no bounded layout for this response"),
    };
    Walker {
        bytes: body,
        at: 0,
        elements: 0,
        flexible: false,
    }
    .walk(layout, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_walked_and_absurd_counts_refused() {
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        use kafka_protocol::messages::{FetchResponse, TopicName};
        let response = FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default()
                .with_topic(TopicName::default())
                .with_partitions(vec![
                    PartitionData::default().with_records(Some(
                        bytes::Bytes::from_static(b"abc")
                    ));
                    2
                ]),
        ]);
        for v in 4..=11 {
            assert_eq!(
                check_response(ApiKey::Fetch, v, &encoded(&response, v)),
                Ok(()),
                "v{v}"
            );
        }
        // throttle, error, session, then two billion topics.
        let mut absurd = vec![0u8; 10];
        absurd.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(check_response(ApiKey::Fetch, 11, &absurd).is_err());
    }
    use bytes::BytesMut;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, MetadataRequest, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn encoded<T: Encodable>(request: &T, version: i16) -> Vec<u8> {
        let mut buf = BytesMut::new();
        request.encode(&mut buf, version).unwrap();
        buf.to_vec()
    }

    #[test]
    fn real_requests_pass_for_every_version() {
        let fetch = FetchRequest::default().with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![FetchPartition::default(); 3]),
        ]);
        for v in 4..=11 {
            assert_eq!(
                check(ApiKey::Fetch, v, &encoded(&fetch, v)),
                Ok(()),
                "fetch v{v}"
            );
        }
        let metadata = MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(true);
        for v in 1..=9 {
            assert_eq!(
                check(ApiKey::Metadata, v, &encoded(&metadata, v)),
                Ok(()),
                "metadata v{v}"
            );
        }
    }

    /// The group APIs at every version we serve, flexible ones (compact encodings, tagged
    /// fields) included, with every array populated.
    #[test]
    fn group_requests_pass_for_every_version_flexible_ones_too() {
        use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
        use kafka_protocol::messages::leave_group_request::MemberIdentity;
        use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
        use kafka_protocol::messages::{
            DescribeGroupsRequest, GroupId, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
            SyncGroupRequest,
        };
        let s = StrBytes::from_static_str;
        let join = JoinGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s("m"))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(bytes::Bytes::from_static(b"meta"));
                2
            ]);
        let sync = SyncGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_assignments(vec![
                SyncGroupRequestAssignment::default()
                    .with_member_id(s("m"))
                    .with_assignment(bytes::Bytes::from_static(b"a"));
                2
            ]);
        let describe = DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g")); 3]);
        let list = ListGroupsRequest::default();
        for v in 0..=4 {
            use kafka_protocol::messages::FindCoordinatorRequest;
            let f = if v >= 4 {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g"); 3])
            } else {
                FindCoordinatorRequest::default().with_key(s("g"))
            };
            assert_eq!(
                check(ApiKey::FindCoordinator, v, &encoded(&f, v)),
                Ok(()),
                "find v{v}"
            );
        }
        for v in 0..=9 {
            let mut j = join.clone();
            if v >= 5 {
                j = j.with_group_instance_id(Some(s("i")));
            }
            if v >= 8 {
                j = j.with_reason(Some(s("why")));
            }
            assert_eq!(
                check(ApiKey::JoinGroup, v, &encoded(&j, v)),
                Ok(()),
                "join v{v}"
            );
        }
        for v in 0..=5 {
            let mut y = sync.clone();
            if v >= 5 {
                y = y
                    .with_protocol_type(Some(s("consumer")))
                    .with_protocol_name(Some(s("range")));
            }
            assert_eq!(
                check(ApiKey::SyncGroup, v, &encoded(&y, v)),
                Ok(()),
                "sync v{v}"
            );
            assert_eq!(
                check(ApiKey::DescribeGroups, v, &encoded(&describe, v)),
                Ok(()),
                "describe v{v}"
            );
            let l = if v >= 4 {
                list.clone()
                    .with_states_filter(vec![s("Stable"), s("Empty")])
                    .with_types_filter(if v >= 5 { vec![s("classic")] } else { vec![] })
            } else {
                list.clone()
            };
            assert_eq!(
                check(ApiKey::ListGroups, v, &encoded(&l, v)),
                Ok(()),
                "list v{v}"
            );
            let leave = if v >= 3 {
                LeaveGroupRequest::default().with_members(vec![
                    MemberIdentity::default()
                        .with_member_id(s("m"))
                        .with_group_instance_id(Some(s("i")))
                        .with_reason(if v >= 5 {
                            Some(s("bye"))
                        } else {
                            None
                        });
                    2
                ])
            } else {
                LeaveGroupRequest::default().with_member_id(s("m"))
            };
            assert_eq!(
                check(ApiKey::LeaveGroup, v, &encoded(&leave, v)),
                Ok(()),
                "leave v{v}"
            );
        }
    }

    #[test]
    fn absurd_compact_counts_and_tags_are_refused() {
        // DescribeGroups v5: a compact count of 2^28 groups in four bytes.
        assert_eq!(
            check(ApiKey::DescribeGroups, 5, &[0x80, 0x80, 0x80, 0x01]),
            Err("array count exceeds the bytes present")
        );
        // A varint that never ends within 32 bits.
        assert_eq!(
            check(ApiKey::DescribeGroups, 5, &[0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err("varint longer than 32 bits")
        );
        // ListGroups v4: empty states filter, then a million tagged fields in two bytes.
        assert_eq!(
            check(ApiKey::ListGroups, 4, &[0x01, 0xc0, 0x84, 0x3d]),
            Err("array count exceeds the bytes present")
        );
        // A tagged field whose size runs past the end.
        assert_eq!(
            check(ApiKey::ListGroups, 4, &[0x01, 0x01, 0x00, 0x7f]),
            Err("request ends early")
        );
    }

    /// The APIs served up to their first flexible version, there and below, with every
    /// array populated and every trailing field set (so that a flexible walk that stopped
    /// short would read a boolean as the tagged-field count and fail).
    #[test]
    fn flexible_versions_of_the_other_apis_pass() {
        use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
        use kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
        use kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::{
            DeleteTopicsRequest, DescribeConfigsRequest, GroupId, ListOffsetsRequest,
            MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, ProduceRequest,
        };
        fn s(text: &'static str) -> StrBytes {
            StrBytes::from_static_str(text)
        }
        fn name() -> TopicName {
            TopicName(s("t"))
        }
        type Encode = Box<dyn Fn(i16) -> Vec<u8>>;
        let cases: Vec<(ApiKey, std::ops::RangeInclusive<i16>, Encode)> = vec![
            (
                ApiKey::Produce,
                3..=10,
                Box::new(move |v| {
                    encoded(
                        &ProduceRequest::default()
                            .with_acks(-1)
                            .with_timeout_ms(5)
                            .with_topic_data(vec![
                                TopicProduceData::default()
                                    .with_name(name())
                                    .with_partition_data(vec![
                                            PartitionProduceData::default()
                                                .with_index(1)
                                                .with_records(Some(bytes::Bytes::from_static(
                                                    b"batch"
                                                )));
                                            2
                                        ]);
                                2
                            ]),
                        v,
                    )
                }),
            ),
            (
                ApiKey::Metadata,
                4..=13,
                Box::new(move |v| {
                    let topic = MetadataRequestTopic::default().with_name(Some(name()));
                    // From v10 a topic may be named by id instead.
                    let by_id = MetadataRequestTopic::default()
                        .with_name(None)
                        .with_topic_id(uuid::Uuid::from_u128(7));
                    encoded(
                        &MetadataRequest::default()
                            .with_topics(Some(if v >= 10 {
                                vec![topic, by_id]
                            } else {
                                vec![topic; 2]
                            }))
                            .with_allow_auto_topic_creation(false)
                            .with_include_cluster_authorized_operations((8..=10).contains(&v))
                            .with_include_topic_authorized_operations(v >= 8),
                        v,
                    )
                }),
            ),
            (
                ApiKey::Fetch,
                4..=18,
                Box::new(move |v| {
                    use kafka_protocol::messages::fetch_request::{
                        FetchPartition, FetchTopic, ForgottenTopic, ReplicaState,
                    };
                    let mut partition = FetchPartition::default()
                        .with_current_leader_epoch(if v >= 9 { 3 } else { -1 })
                        .with_fetch_offset(10)
                        .with_log_start_offset(if v >= 5 { 0 } else { -1 })
                        .with_partition_max_bytes(1 << 20);
                    if v >= 12 {
                        partition = partition.with_last_fetched_epoch(2);
                    }
                    if v >= 17 {
                        partition = partition.with_replica_directory_id(uuid::Uuid::from_u128(9));
                    }
                    if v >= 18 {
                        partition = partition.with_high_watermark(5);
                    }
                    let mut topic = FetchTopic::default().with_partitions(vec![partition; 2]);
                    let mut forgotten = ForgottenTopic::default().with_partitions(vec![0, 1]);
                    if v >= 13 {
                        topic = topic.with_topic_id(uuid::Uuid::from_u128(7));
                        forgotten = forgotten.with_topic_id(uuid::Uuid::from_u128(8));
                    } else {
                        topic = topic.with_topic(name());
                        forgotten = forgotten.with_topic(name());
                    }
                    let mut request = FetchRequest::default()
                        .with_max_wait_ms(500)
                        .with_min_bytes(1)
                        .with_max_bytes(1 << 20)
                        .with_isolation_level(1)
                        .with_topics(vec![topic; 2]);
                    if v >= 7 {
                        request = request
                            .with_session_id(1)
                            .with_session_epoch(2)
                            .with_forgotten_topics_data(vec![forgotten; 2]);
                    }
                    if v >= 11 {
                        request = request.with_rack_id(s("rack"));
                    }
                    if v >= 12 {
                        request = request.with_cluster_id(Some(s("cluster")));
                    }
                    if v >= 15 {
                        request = request.with_replica_state(
                            ReplicaState::default()
                                .with_replica_id(kafka_protocol::messages::BrokerId(2))
                                .with_replica_epoch(4),
                        );
                    } else {
                        request = request.with_replica_id(kafka_protocol::messages::BrokerId(2));
                    }
                    encoded(&request, v)
                }),
            ),
            (
                ApiKey::ListOffsets,
                1..=10,
                Box::new(move |v| {
                    encoded(
                        &ListOffsetsRequest::default()
                            .with_isolation_level(if v >= 2 { 1 } else { 0 })
                            .with_topics(vec![
                                ListOffsetsTopic::default()
                                    .with_name(name())
                                    .with_partitions(vec![
                        ListOffsetsPartition::default().with_timestamp(-1);
                        2
                    ]);
                                2
                            ]),
                        v,
                    )
                }),
            ),
            (
                ApiKey::DescribeConfigs,
                1..=4,
                Box::new(move |v| {
                    encoded(
                        &DescribeConfigsRequest::default()
                            .with_resources(vec![
                                DescribeConfigsResource::default()
                                    .with_resource_type(2)
                                    .with_resource_name(s("t"))
                                    .with_configuration_keys(Some(vec![
                                        s(
                                            "retention.ms"
                                        );
                                        2
                                    ]));
                                2
                            ])
                            .with_include_synonyms(false)
                            .with_include_documentation(v >= 3),
                        v,
                    )
                }),
            ),
            (
                ApiKey::OffsetCommit,
                2..=8,
                Box::new(move |v| {
                    encoded(
                        &OffsetCommitRequest::default()
                            .with_group_id(GroupId(s("g")))
                            .with_member_id(s("m"))
                            .with_group_instance_id(if v >= 7 { Some(s("i")) } else { None })
                            .with_topics(vec![
                                OffsetCommitRequestTopic::default()
                                    .with_name(name())
                                    .with_partitions(vec![
                            OffsetCommitRequestPartition::default()
                                .with_committed_offset(5)
                                .with_committed_metadata(Some(s("meta")));
                            2
                        ]);
                                2
                            ]),
                        v,
                    )
                }),
            ),
            (
                ApiKey::OffsetFetch,
                1..=7,
                Box::new(move |v| {
                    encoded(
                        &OffsetFetchRequest::default()
                            .with_group_id(GroupId(s("g")))
                            .with_topics(Some(vec![
                                OffsetFetchRequestTopic::default()
                                    .with_name(name())
                                    .with_partition_indexes(vec![0, 1]);
                                2
                            ]))
                            .with_require_stable(v >= 7),
                        v,
                    )
                }),
            ),
            (
                ApiKey::DeleteTopics,
                1..=6,
                Box::new(move |v| {
                    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
                    let request = DeleteTopicsRequest::default().with_timeout_ms(1000);
                    let request = if v >= 6 {
                        request.with_topics(vec![
                            DeleteTopicState::default().with_name(Some(name())),
                            DeleteTopicState::default()
                                .with_name(None)
                                .with_topic_id(uuid::Uuid::from_u128(7)),
                        ])
                    } else {
                        request.with_topic_names(vec![name(); 2])
                    };
                    encoded(&request, v)
                }),
            ),
            (
                ApiKey::CreateTopics,
                2..=7,
                Box::new(move |v| {
                    use kafka_protocol::messages::CreateTopicsRequest;
                    use kafka_protocol::messages::create_topics_request::{
                        CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
                    };
                    encoded(
                        &CreateTopicsRequest::default()
                            .with_topics(vec![
                                CreatableTopic::default()
                                    .with_name(name())
                                    .with_num_partitions(3)
                                    .with_replication_factor(1)
                                    .with_assignments(vec![
                                        CreatableReplicaAssignment::default()
                                            .with_broker_ids(vec![
                                                kafka_protocol::messages::BrokerId(1);
                                                2
                                            ]);
                                        2
                                    ])
                                    .with_configs(vec![
                                        CreatableTopicConfig::default()
                                            .with_name(s("retention.ms"))
                                            .with_value(Some(s(
                                                "1000"
                                            )));
                                        2
                                    ]);
                                2
                            ])
                            .with_timeout_ms(1000)
                            .with_validate_only(true),
                        v,
                    )
                }),
            ),
            (
                ApiKey::DescribeCluster,
                0..=2,
                Box::new(move |v| {
                    use kafka_protocol::messages::DescribeClusterRequest;
                    encoded(
                        &DescribeClusterRequest::default()
                            .with_include_cluster_authorized_operations(true)
                            .with_endpoint_type(1)
                            .with_include_fenced_brokers(v >= 2),
                        v,
                    )
                }),
            ),
            (
                ApiKey::OffsetForLeaderEpoch,
                2..=4,
                Box::new(move |v| {
                    use kafka_protocol::messages::OffsetForLeaderEpochRequest;
                    use kafka_protocol::messages::offset_for_leader_epoch_request::{
                        OffsetForLeaderPartition, OffsetForLeaderTopic,
                    };
                    encoded(
                        &OffsetForLeaderEpochRequest::default()
                            .with_replica_id(kafka_protocol::messages::BrokerId(if v >= 3 {
                                1
                            } else {
                                -2
                            }))
                            .with_topics(vec![
                                OffsetForLeaderTopic::default()
                                    .with_topic(name())
                                    .with_partitions(vec![
                                        OffsetForLeaderPartition::default()
                                            .with_current_leader_epoch(2)
                                            .with_leader_epoch(1);
                                        2
                                    ]);
                                2
                            ]),
                        v,
                    )
                }),
            ),
            (
                ApiKey::CreatePartitions,
                0..=3,
                Box::new(move |v| {
                    use kafka_protocol::messages::CreatePartitionsRequest;
                    use kafka_protocol::messages::create_partitions_request::{
                        CreatePartitionsAssignment, CreatePartitionsTopic,
                    };
                    encoded(
                        &CreatePartitionsRequest::default()
                            .with_topics(vec![
                                CreatePartitionsTopic::default()
                                    .with_name(name())
                                    .with_count(4)
                                    .with_assignments(Some(vec![
                                        CreatePartitionsAssignment::default()
                                            .with_broker_ids(vec![
                                                kafka_protocol::messages::BrokerId(1);
                                                2
                                            ]);
                                        2
                                    ]));
                                2
                            ])
                            .with_timeout_ms(1000)
                            .with_validate_only(true),
                        v,
                    )
                }),
            ),
            (
                ApiKey::AlterReplicaLogDirs,
                1..=2,
                Box::new(move |v| {
                    use kafka_protocol::messages::AlterReplicaLogDirsRequest;
                    use kafka_protocol::messages::alter_replica_log_dirs_request::{
                        AlterReplicaLogDir, AlterReplicaLogDirTopic,
                    };
                    encoded(
                        &AlterReplicaLogDirsRequest::default().with_dirs(vec![
                            AlterReplicaLogDir::default()
                                .with_path(s("/data"))
                                .with_topics(vec![
                                    AlterReplicaLogDirTopic::default()
                                        .with_name(name())
                                        .with_partitions(vec![0, 1]);
                                    2
                                ]);
                            2
                        ]),
                        v,
                    )
                }),
            ),
            (
                ApiKey::DescribeQuorum,
                0..=2,
                Box::new(move |v| {
                    use kafka_protocol::messages::DescribeQuorumRequest;
                    use kafka_protocol::messages::describe_quorum_request::{
                        PartitionData, TopicData,
                    };
                    encoded(
                        &DescribeQuorumRequest::default().with_topics(vec![
                            TopicData::default()
                                .with_topic_name(name())
                                .with_partitions(
                                    vec![PartitionData::default(); 2]
                                );
                            2
                        ]),
                        v,
                    )
                }),
            ),
            (
                ApiKey::DescribeLogDirs,
                1..=4,
                Box::new(move |v| {
                    use kafka_protocol::messages::DescribeLogDirsRequest;
                    use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
                    encoded(
                        &DescribeLogDirsRequest::default().with_topics(Some(vec![
                            DescribableLogDirTopic::default()
                                .with_topic(name())
                                .with_partitions(vec![0, 1]);
                            2
                        ])),
                        v,
                    )
                }),
            ),
            (
                ApiKey::DeleteGroups,
                0..=2,
                Box::new(move |v| {
                    use kafka_protocol::messages::DeleteGroupsRequest;
                    encoded(
                        &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g")); 2]),
                        v,
                    )
                }),
            ),
            (
                ApiKey::DescribeTopicPartitions,
                0..=0,
                Box::new(move |v| {
                    use kafka_protocol::messages::DescribeTopicPartitionsRequest;
                    use kafka_protocol::messages::describe_topic_partitions_request::{
                        Cursor, TopicRequest,
                    };
                    encoded(
                        &DescribeTopicPartitionsRequest::default()
                            .with_topics(vec![TopicRequest::default().with_name(name()); 2])
                            .with_response_partition_limit(10)
                            .with_cursor(Some(
                                Cursor::default()
                                    .with_topic_name(name())
                                    .with_partition_index(3),
                            )),
                        v,
                    )
                }),
            ),
            (
                ApiKey::ListConfigResources,
                0..=1,
                Box::new(move |v| {
                    use kafka_protocol::messages::ListConfigResourcesRequest;
                    let request = ListConfigResourcesRequest::default();
                    encoded(
                        &if v >= 1 {
                            request.with_resource_types(vec![2, 4])
                        } else {
                            request
                        },
                        v,
                    )
                }),
            ),
            (
                ApiKey::ElectLeaders,
                0..=2,
                Box::new(move |v| {
                    use kafka_protocol::messages::ElectLeadersRequest;
                    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
                    encoded(
                        &ElectLeadersRequest::default()
                            .with_election_type(0)
                            .with_topic_partitions(Some(vec![
                                TopicPartitions::default()
                                    .with_topic(name())
                                    .with_partitions(vec![0, 1]);
                                2
                            ]))
                            .with_timeout_ms(1000),
                        v,
                    )
                }),
            ),
        ];
        for (key, versions, encode) in cases {
            for v in versions {
                let body = encode(v);
                let covered = walked(key, v, &body);
                if key.request_header_version(v) >= 2 {
                    assert_eq!(covered, Ok(body.len()), "{key:?} v{v} walked whole");
                } else {
                    assert!(covered.is_ok(), "{key:?} v{v}: {covered:?}");
                }
            }
        }
    }

    /// A known tagged field (Fetch v17's replica directory id, 16 bytes) sent with a
    /// larger size: the codec reads 16 bytes and takes what follows as the rest of the
    /// request, so bytes hidden in the field could carry a count the walk never saw (a
    /// two-billion forgotten-topics count here). Refused; the exact size passes.
    #[test]
    fn known_tagged_fields_must_fill_exactly_their_size() {
        fn uvarint(b: &mut Vec<u8>, mut v: u32) {
            while v >= 0x80 {
                b.push((v as u8) | 0x80);
                v >>= 7;
            }
            b.push(v as u8);
        }
        let fetch_v17 = |tag_body: &[u8]| {
            let mut b = Vec::new();
            for v in [0i32, 1, 1 << 20] {
                b.extend_from_slice(&v.to_be_bytes()); // max wait, min bytes, max bytes
            }
            b.push(0); // isolation
            b.extend_from_slice(&0i32.to_be_bytes()); // session id
            b.extend_from_slice(&(-1i32).to_be_bytes()); // session epoch
            uvarint(&mut b, 2); // one topic
            b.extend_from_slice(&7u128.to_be_bytes()); // its id
            uvarint(&mut b, 2); // one partition
            b.extend_from_slice(&0i32.to_be_bytes()); // index
            b.extend_from_slice(&0i32.to_be_bytes()); // current leader epoch
            b.extend_from_slice(&0i64.to_be_bytes()); // fetch offset
            b.extend_from_slice(&(-1i32).to_be_bytes()); // last fetched epoch
            b.extend_from_slice(&0i64.to_be_bytes()); // log start
            b.extend_from_slice(&(1i32 << 20).to_be_bytes()); // partition max bytes
            uvarint(&mut b, 1); // one tagged field
            uvarint(&mut b, 0); // replica_directory_id
            uvarint(&mut b, tag_body.len() as u32);
            b.extend_from_slice(tag_body);
            b.push(0); // the topic's tagged fields
            uvarint(&mut b, 1); // no forgotten topics
            uvarint(&mut b, 0); // rack id: null
            b.push(0); // the request's tagged fields
            b
        };
        let uuid = [9u8; 16];
        assert_eq!(check(ApiKey::Fetch, 17, &fetch_v17(&uuid)), Ok(()));
        let mut hidden = uuid.to_vec();
        hidden.push(0); // what the codec would take for the topic's tagged fields
        uvarint(&mut hidden, 0x7fff_ffff); // and for the forgotten topics' count
        assert_eq!(
            check(ApiKey::Fetch, 17, &fetch_v17(&hidden)),
            Err("a tagged field's size does not match its contents")
        );
        // Shorter than the field: the codec would read past it.
        assert!(check(ApiKey::Fetch, 17, &fetch_v17(&uuid[..10])).is_err());
    }

    #[test]
    fn absurd_counts_are_refused_before_any_allocation() {
        // Metadata: two billion topics in four bytes.
        assert_eq!(
            check(ApiKey::Metadata, 1, &i32::MAX.to_be_bytes()),
            Err("array count exceeds the bytes present")
        );
        // Produce v3: null transactional id, acks, timeout, then a huge topic count.
        let mut produce = vec![0xff, 0xff, 0, 1, 0, 0, 0, 0];
        produce.extend_from_slice(&0x4000_0000i32.to_be_bytes());
        assert!(check(ApiKey::Produce, 3, &produce).is_err());
        // Metadata: more topics than one request may name, each an empty name.
        let n = REQUEST_ARRAY_ELEMENTS_MAX + 1;
        let mut metadata = (n as i32).to_be_bytes().to_vec();
        metadata.resize(4 + 2 * n, 0);
        assert_eq!(
            check(ApiKey::Metadata, 1, &metadata),
            Err("too many array elements in one request")
        );
        // DeleteTopics: negative count.
        assert_eq!(
            check(ApiKey::DeleteTopics, 1, &(-7i32).to_be_bytes()),
            Err("negative array count")
        );
    }

    /// Produce frames may be 100 MiB (`socket.request.max.bytes`). Found by measuring the
    /// fuzz harness's allocations (`FUZZ_REPORT_ALLOC=1`): an 8 MiB Produce v3 of 6-byte
    /// empty topics decoded into one 134 MB allocation; at 100 MiB, 1.7 GB per request.
    #[test]
    fn produce_frames_of_empty_topics_are_refused_past_the_element_cap() {
        let produce = |topics: usize| {
            let mut b = vec![0xff, 0xff, 0, 1, 0, 0, 0, 0];
            b.extend_from_slice(&(topics as i32).to_be_bytes());
            for _ in 0..topics {
                b.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // empty name, no partitions
            }
            b
        };
        assert_eq!(
            check(ApiKey::Produce, 3, &produce(REQUEST_ARRAY_ELEMENTS_MAX)),
            Ok(())
        );
        assert_eq!(
            check(ApiKey::Produce, 3, &produce(REQUEST_ARRAY_ELEMENTS_MAX + 1)),
            Err("too many array elements in one request")
        );
        // Topics and partitions count together: 1,000 topics of 200 partitions each.
        let mut b = vec![0xff, 0xff, 0, 1, 0, 0, 0, 0];
        b.extend_from_slice(&1000i32.to_be_bytes());
        for _ in 0..1000 {
            b.extend_from_slice(&[0, 1, b't']);
            b.extend_from_slice(&200i32.to_be_bytes());
            for p in 0..200i32 {
                b.extend_from_slice(&p.to_be_bytes());
                b.extend_from_slice(&(-1i32).to_be_bytes()); // null records
            }
        }
        assert_eq!(
            check(ApiKey::Produce, 3, &b),
            Err("too many array elements in one request")
        );
    }
}
