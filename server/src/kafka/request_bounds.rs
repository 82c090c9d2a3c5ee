//! A pre-flight walk over a request body that checks every array count against the bytes
//! actually present, before the `kafka-protocol` crate decodes it.
//!
//! Why by hand: the crate's array decoder calls `Vec::with_capacity(count)` with the count
//! from the wire. A 12-byte request claiming two billion topics would make the broker try
//! to allocate hundreds of gigabytes and abort. No crate offers a bounded decoder, so this
//! walker follows the (non-flexible) request layouts of the APIs we serve and refuses any
//! count that the remaining bytes could not hold.

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
    /// An i32 count, then strings.
    StrArray,
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
    (5, F::I64),
    (ALL, F::I32),
];
const FETCH_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Array(FETCH_PARTITION))];
const FORGOTTEN_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::I32Array)];
const FETCH: &[(i16, F)] = &[
    (ALL, F::I32),
    (ALL, F::I32),
    (ALL, F::I32),
    (3, F::I32),
    (4, F::I8),
    (7, F::I32),
    (7, F::I32),
    (ALL, F::Array(FETCH_TOPIC)),
    (7, F::Array(FORGOTTEN_TOPIC)),
    (11, F::Str),
];

const LIST_OFFSETS_PARTITION: &[(i16, F)] = &[(ALL, F::I32), (4, F::I32), (ALL, F::I64)];
const LIST_OFFSETS_TOPIC: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Array(LIST_OFFSETS_PARTITION))];
const LIST_OFFSETS: &[(i16, F)] = &[
    (ALL, F::I32),
    (2, F::I8),
    (ALL, F::Array(LIST_OFFSETS_TOPIC)),
];

const METADATA_TOPIC: &[(i16, F)] = &[(ALL, F::Str)];
const METADATA: &[(i16, F)] = &[(ALL, F::Array(METADATA_TOPIC))];

const ASSIGNMENT: &[(i16, F)] = &[(ALL, F::I32), (ALL, F::I32Array)];
const CONFIG: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Str)];
const CREATABLE_TOPIC: &[(i16, F)] = &[
    (ALL, F::Str),
    (ALL, F::I32),
    (ALL, F::I16),
    (ALL, F::Array(ASSIGNMENT)),
    (ALL, F::Array(CONFIG)),
];
const CREATE_TOPICS: &[(i16, F)] = &[(ALL, F::Array(CREATABLE_TOPIC))];

const DELETE_TOPICS: &[(i16, F)] = &[(ALL, F::StrArray)];

const CONFIG_RESOURCE: &[(i16, F)] = &[(ALL, F::I8), (ALL, F::Str), (ALL, F::StrArray)];
const DESCRIBE_CONFIGS: &[(i16, F)] = &[(ALL, F::Array(CONFIG_RESOURCE))];

const PROTOCOL: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Bytes)];
const JOIN_GROUP: &[(i16, F)] = &[
    (ALL, F::Str),
    (ALL, F::I32),
    (1, F::I32),
    (ALL, F::Str),
    (5, F::Str),
    (ALL, F::Str),
    (ALL, F::Array(PROTOCOL)),
];
const SYNC_GROUP: &[(i16, F)] = &[
    (ALL, F::Str),
    (ALL, F::I32),
    (ALL, F::Str),
    (3, F::Str),
    (ALL, F::Array(PROTOCOL)),
];
const LEAVE_GROUP_V0: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Str)];
const MEMBER_IDENTITY: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Str)];
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
const OFFSET_FETCH: &[(i16, F)] = &[(ALL, F::Str), (ALL, F::Array(FETCH_OFFSETS_TOPIC))];
const DESCRIBE_GROUPS: &[(i16, F)] = &[(ALL, F::StrArray), (3, F::I8)];

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
        ApiKey::Produce => PRODUCE,
        ApiKey::Fetch => FETCH,
        ApiKey::ListOffsets => LIST_OFFSETS,
        ApiKey::Metadata => METADATA,
        ApiKey::CreateTopics => CREATE_TOPICS,
        ApiKey::DeleteTopics => DELETE_TOPICS,
        ApiKey::DescribeConfigs => DESCRIBE_CONFIGS,
        _ => return None,
    })
}

/// Fewest bytes one element of a layout takes on the wire.
fn min_bytes(layout: &[(i16, F)], version: i16) -> usize {
    layout
        .iter()
        .filter(|(since, _)| version >= *since)
        .map(|(_, f)| match f {
            F::I8 => 1,
            F::I16 | F::Str => 2,
            F::I32 | F::Bytes | F::Array(_) | F::I32Array | F::StrArray => 4,
            F::I64 => 8,
        })
        .sum::<usize>()
        .max(1)
}

struct Walker<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Array elements counted so far.
    elements: usize,
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

    /// Reads an array count and checks that `element_min` bytes each fit.
    fn count(&mut self, element_min: usize) -> Result<usize, &'static str> {
        let n = self.i32()?;
        if n < 0 {
            return if n == -1 {
                Ok(0)
            } else {
                Err("negative array count")
            };
        }
        let n = n as usize;
        if n.saturating_mul(element_min) > self.remaining() {
            return Err("array count exceeds the bytes present");
        }
        self.elements += n;
        if self.elements > REQUEST_ARRAY_ELEMENTS_MAX {
            return Err("too many array elements in one request");
        }
        Ok(n)
    }

    fn walk(&mut self, layout: &[(i16, F)], version: i16) -> Result<(), &'static str> {
        for (since, field) in layout {
            if version < *since {
                continue;
            }
            match field {
                F::I8 => drop(self.take(1)?),
                F::I16 => drop(self.take(2)?),
                F::I32 => drop(self.take(4)?),
                F::I64 => drop(self.take(8)?),
                F::Str => {
                    let len = self.i16()?;
                    if len > 0 {
                        self.take(len as usize)?;
                    }
                }
                F::Bytes => {
                    let len = self.i32()?;
                    if len > 0 {
                        self.take(len as usize)?;
                    }
                }
                F::Array(element) => {
                    let n = self.count(min_bytes(element, version))?;
                    for _ in 0..n {
                        self.walk(element, version)?;
                    }
                }
                F::I32Array => {
                    let n = self.count(4)?;
                    self.take(n * 4)?;
                }
                F::StrArray => {
                    let n = self.count(2)?;
                    for _ in 0..n {
                        self.walk(&[(ALL, F::Str)], version)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks the array counts of a request body (after its header) for `key` at `version`.
/// APIs without arrays in their non-flexible bodies pass through.
pub fn check(key: ApiKey, version: i16, body: &[u8]) -> Result<(), &'static str> {
    match layout(key, version) {
        Some(layout) => Walker {
            bytes: body,
            at: 0,
            elements: 0,
        }
        .walk(layout, version),
        None => Ok(()),
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
        let metadata = MetadataRequest::default().with_topics(None);
        for v in 1..=8 {
            assert_eq!(
                check(ApiKey::Metadata, v, &encoded(&metadata, v)),
                Ok(()),
                "metadata v{v}"
            );
        }
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
