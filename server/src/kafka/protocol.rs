//! The Kafka protocol surface: which APIs and versions we serve, error codes, request
//! framing, and response encoding. Bodies are decoded and encoded by the `kafka-protocol`
//! crate, except the Fetch response, written by hand in `fetch_response.rs`.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

/// Kafka error codes the broker answers with.
pub mod error_code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 76;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const PREFERRED_LEADER_NOT_AVAILABLE: i16 = 80;
    pub const ELIGIBLE_LEADERS_NOT_AVAILABLE: i16 = 83;
    pub const ELECTION_NOT_NEEDED: i16 = 84;
}

/// The APIs we advertise, with version ranges (BRIEF §3). Only what works is listed.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    // v0-2 are advertised so that librdkafka enables compression (librdkafka#4956), but
    // not accepted (`PRODUCE_VERSION_MIN_ACCEPTED`): the codec cannot decode them, so such
    // a request closes its connection, as any unsupported version does.
    // v10: NOT_LEADER_OR_FOLLOWER names the new leader (KIP-951).
    (ApiKey::Produce, 0, 10),
    // Flexible from v12; topics by id from v13; KIP-951 leader hints from v16.
    (ApiKey::Fetch, 4, 18),
    // v7 max timestamp, v8 earliest local, v9 latest tiered, v10 timeout. (v11 adds no
    // field, only the earliest-pending-upload spec; the codec stops at v10.)
    (ApiKey::ListOffsets, 1, 10),
    // Topic ids from v10 (and lookups by id); v13 adds a top-level error code.
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 3),
    // v5 flexible, returns the topic's partitions, replication factor and configs; v7
    // its id.
    (ApiKey::CreateTopics, 2, 7),
    // v6 names topics by name or id.
    (ApiKey::DeleteTopics, 1, 6),
    // Grows a topic (kafka-topics --alter --partitions); v2 flexible.
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    // The log directory, its replicas' sizes; v2 flexible, v4 the file system's bytes.
    (ApiKey::DescribeLogDirs, 1, 4),
    // One log directory: a replica "moves" only to where it is; v2 flexible.
    (ApiKey::AlterReplicaLogDirs, 1, 2),
    // v3 flexible; v4 batches keys (KIP-699).
    (ApiKey::FindCoordinator, 0, 4),
    // Static membership (group.instance.id): JoinGroup v5, SyncGroup/Heartbeat v3,
    // LeaveGroup v3 (members by instance id), OffsetCommit v7. Flexible from JoinGroup
    // v6, SyncGroup v4, Heartbeat v4, LeaveGroup v4; JoinGroup v9 skips a static leader's
    // assignment (KIP-814); SyncGroup v5 checks the protocol type and name.
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    // ListGroups v4 filters by state, v5 by type; both flexible, as DescribeGroups v5.
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    // v2 flexible.
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::InitProducerId, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::ElectLeaders, 0, 2),
    // v1 endpoint type, v2 fenced brokers on request.
    (ApiKey::DescribeCluster, 0, 2),
    // The controller quorum's Raft state (kafka-metadata-quorum); v1 times, v2 nodes.
    (ApiKey::DescribeQuorum, 0, 2),
    // Metadata's topic part, paged by partitions (KIP-966); what Kafka's admin client
    // describes topics with.
    (ApiKey::DescribeTopicPartitions, 0, 0),
    // What DescribeConfigs can describe (KIP-1142); v0 lists client-metrics resources.
    (ApiKey::ListConfigResources, 0, 1),
];

/// The lowest Produce version we accept (record batch v2 needs 3; the `kafka-protocol`
/// crate decodes nothing older).
pub const PRODUCE_VERSION_MIN_ACCEPTED: i16 = 3;

/// Whether requests of `key` at `version` are taken: advertised, and not one of the
/// Produce versions advertised only for librdkafka's sake.
pub fn accepted(key: ApiKey, version: i16) -> bool {
    supported_range(key).is_some_and(|(min, max)| (min..=max).contains(&version))
        && !(key == ApiKey::Produce && version < PRODUCE_VERSION_MIN_ACCEPTED)
}

pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

/// Size of api_key + api_version + correlation_id: the least a request can hold.
pub const REQUEST_PREFIX_BYTES: usize = 8;

/// The fixed start of every request, readable before anything else is trusted.
#[derive(Debug, Clone, Copy)]
pub struct RequestPrefix {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl RequestPrefix {
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let b = frame.get(..REQUEST_PREFIX_BYTES)?;
        Some(Self {
            api_key: i16::from_be_bytes([b[0], b[1]]),
            api_version: i16::from_be_bytes([b[2], b[3]]),
            correlation_id: i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
}

/// Largest frame of any request but Produce: metadata, fetch and admin requests are small,
/// and their decoded form is tens of times their wire size.
pub const NON_PRODUCE_REQUEST_BYTES_MAX: usize = 1024 * 1024;

/// Why the front door refused a frame. Each closes that connection and nothing else.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} out of bounds")]
    FrameLength(i64),
    #[error("unknown api key {0}")]
    UnknownApi(i16),
    #[error("unsupported version {version} of {key:?}")]
    UnsupportedVersion { key: ApiKey, version: i16 },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Checks a frame's length prefix against `max` (`socket.request.max.bytes`) before
/// anything is read or allocated; returns the frame length.
pub fn check_frame_length(len: i32, max: usize) -> Result<usize, FrameError> {
    let len = i64::from(len);
    if len < REQUEST_PREFIX_BYTES as i64 || len > max as i64 {
        return Err(FrameError::FrameLength(len));
    }
    Ok(len as usize)
}

/// Once the API key (the frame's first two bytes) is read: only Produce may use more than
/// [`NON_PRODUCE_REQUEST_BYTES_MAX`].
pub fn check_frame_length_for_api(len: usize, api_key: i16) -> Result<(), FrameError> {
    if api_key != ApiKey::Produce as i16 && len > NON_PRODUCE_REQUEST_BYTES_MAX {
        return Err(FrameError::FrameLength(len as i64));
    }
    Ok(())
}

/// A request whose API, version, header and body all decoded.
#[derive(Debug)]
pub struct DecodedRequest {
    pub key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestBody,
}

/// What the front door makes of one frame, before any handler runs.
#[derive(Debug)]
pub enum Frame {
    Request(DecodedRequest),
    /// An ApiVersions request of a version we do not speak: Kafka answers it with v0 and
    /// the list, so the client can pick a version both sides speak.
    ApiVersionsUnsupported {
        correlation_id: i32,
    },
}

/// Decodes one request frame (the bytes after the length prefix): API key and version
/// against [`SUPPORTED_APIS`], the request header, the array counts against the bytes
/// present (`request_bounds`), then the whole body. Pure: the connection and the fuzz
/// target call exactly this.
pub fn decode_frame(frame: Vec<u8>) -> Result<Frame, FrameError> {
    let prefix = RequestPrefix::parse(&frame).ok_or(FrameError::FrameLength(frame.len() as i64))?;
    let key =
        ApiKey::try_from(prefix.api_key).map_err(|_| FrameError::UnknownApi(prefix.api_key))?;
    let version = prefix.api_version;
    if !accepted(key, version) {
        if key == ApiKey::ApiVersions {
            return Ok(Frame::ApiVersionsUnsupported {
                correlation_id: prefix.correlation_id,
            });
        }
        return Err(FrameError::UnsupportedVersion { key, version });
    }
    let mut buf = Bytes::from(frame);
    let header =
        RequestHeader::decode(&mut buf, key.request_header_version(version)).map_err(|e| {
            DecodeError::Malformed {
                what: "request header",
                reason: e.to_string(),
            }
        })?;
    // Array counts are checked against the bytes present before the codec trusts them.
    crate::kafka::request_bounds::check(key, version, &buf).map_err(|reason| {
        DecodeError::Malformed {
            what: "request body",
            reason: reason.to_owned(),
        }
    })?;
    let body = RequestBody::decode(key, version, &mut buf)?;
    Ok(Frame::Request(DecodedRequest {
        key,
        version,
        header,
        body,
    }))
}

fn decode_body<T: Decodable>(
    body: &mut Bytes,
    version: i16,
    what: &'static str,
) -> Result<T, DecodeError> {
    T::decode(body, version).map_err(|e| DecodeError::Malformed {
        what,
        reason: e.to_string(),
    })
}

/// A request body type that [`RequestBody`] carries; handlers take theirs out by type.
pub trait FromBody: Sized {
    fn from_body(body: RequestBody) -> Option<Self>;
}

macro_rules! request_bodies {
    ($($key:ident => $ty:ident,)*) => {
        /// A decoded request body, one variant per API in [`SUPPORTED_APIS`].
        #[derive(Debug)]
        pub enum RequestBody {
            $($key(Box<kafka_protocol::messages::$ty>),)*
        }

        impl RequestBody {
            fn decode(key: ApiKey, version: i16, body: &mut Bytes) -> Result<Self, DecodeError> {
                match key {
                    $(ApiKey::$key => Ok(Self::$key(Box::new(decode_body(
                        body,
                        version,
                        concat!(stringify!($key), " request"),
                    )?))),)*
                    other => Err(DecodeError::Malformed {
                        what: "request",
                        reason: format!("{other:?} is not served"),
                    }),
                }
            }
        }

        $(impl FromBody for kafka_protocol::messages::$ty {
            fn from_body(body: RequestBody) -> Option<Self> {
                match body {
                    RequestBody::$key(b) => Some(*b),
                    _ => None,
                }
            }
        })*
    };
}

request_bodies! {
    Produce => ProduceRequest,
    Fetch => FetchRequest,
    ListOffsets => ListOffsetsRequest,
    Metadata => MetadataRequest,
    ApiVersions => ApiVersionsRequest,
    CreateTopics => CreateTopicsRequest,
    DeleteTopics => DeleteTopicsRequest,
    DescribeConfigs => DescribeConfigsRequest,
    FindCoordinator => FindCoordinatorRequest,
    JoinGroup => JoinGroupRequest,
    SyncGroup => SyncGroupRequest,
    Heartbeat => HeartbeatRequest,
    LeaveGroup => LeaveGroupRequest,
    OffsetCommit => OffsetCommitRequest,
    OffsetFetch => OffsetFetchRequest,
    ListGroups => ListGroupsRequest,
    DescribeGroups => DescribeGroupsRequest,
    InitProducerId => InitProducerIdRequest,
    OffsetForLeaderEpoch => OffsetForLeaderEpochRequest,
    ElectLeaders => ElectLeadersRequest,
    DescribeCluster => DescribeClusterRequest,
    DeleteGroups => DeleteGroupsRequest,
    DescribeTopicPartitions => DescribeTopicPartitionsRequest,
    ListConfigResources => ListConfigResourcesRequest,
    CreatePartitions => CreatePartitionsRequest,
    DescribeLogDirs => DescribeLogDirsRequest,
    AlterReplicaLogDirs => AlterReplicaLogDirsRequest,
    DescribeQuorum => DescribeQuorumRequest,
}

/// Encodes a whole response frame: length, header, body.
pub fn encode_response<T: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Vec<u8>, DecodeError> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0); // length, patched below
    encode_response_header(&mut buf, key, version, correlation_id)?;
    body.encode(&mut buf, version)
        .map_err(|e| DecodeError::Malformed {
            what: "response",
            reason: e.to_string(),
        })?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.to_vec())
}

pub fn encode_response_header(
    buf: &mut BytesMut,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
) -> Result<(), DecodeError> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(buf, key.response_header_version(version))
        .map_err(|e| DecodeError::Malformed {
            what: "response header",
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(key: i16, version: i16, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&key.to_be_bytes());
        f.extend_from_slice(&version.to_be_bytes());
        f.extend_from_slice(&7i32.to_be_bytes());
        f.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
        f.extend_from_slice(body);
        f
    }

    /// Every request frame captured from librdkafka, kcat and kafka-python (and those
    /// re-encoded at the versions they did not use) for the fuzz seeds is taken whole.
    #[test]
    fn captured_client_frames_decode() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus-seeds/front_door"
        );
        let mut seen = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let mut rest = &bytes[..];
            while let Some(len) = rest.first_chunk::<4>() {
                let len = check_frame_length(i32::from_be_bytes(*len), 1 << 20).unwrap();
                let f = rest[4..4 + len].to_vec();
                rest = &rest[4 + len..];
                match decode_frame(f) {
                    Ok(Frame::Request(r)) => {
                        seen.insert((r.key as i16, r.version));
                    }
                    Ok(Frame::ApiVersionsUnsupported { .. }) => {}
                    Err(e) => panic!("{}: {e}", path.display()),
                }
            }
        }
        for &(key, min, max) in SUPPORTED_APIS {
            for version in min..=max {
                if accepted(key, version) {
                    assert!(
                        seen.contains(&(key as i16, version)),
                        "no seed for {key:?} v{version}"
                    );
                }
            }
        }
    }

    /// Produce v0-2 are advertised (librdkafka's compression gates) but the codec cannot
    /// decode them: they were let through to fail in the codec, while the handler claimed
    /// to refuse them per partition. Now the front door names them unsupported.
    #[test]
    fn advertised_only_produce_versions_are_unsupported() {
        for version in 0..PRODUCE_VERSION_MIN_ACCEPTED {
            let body = [0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
            assert!(matches!(
                decode_frame(frame(0, version, &body)),
                Err(FrameError::UnsupportedVersion { key: ApiKey::Produce, version: v }) if v == version
            ));
        }
        // v3: null transactional id, acks 1, timeout 0, no topics.
        let v3 = [0xff, 0xff, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            decode_frame(frame(0, 3, &v3)),
            Ok(Frame::Request(DecodedRequest {
                key: ApiKey::Produce,
                version: 3,
                ..
            }))
        ));
    }

    #[test]
    fn frame_lengths_are_checked_before_any_read() {
        assert!(check_frame_length(-1, 1 << 20).is_err());
        assert!(check_frame_length(7, 1 << 20).is_err());
        assert_eq!(check_frame_length(8, 1 << 20).unwrap(), 8);
        assert!(check_frame_length((1 << 20) + 1, 1 << 20).is_err());
        assert!(check_frame_length_for_api(NON_PRODUCE_REQUEST_BYTES_MAX + 1, 0).is_ok());
        assert!(check_frame_length_for_api(NON_PRODUCE_REQUEST_BYTES_MAX + 1, 3).is_err());
        assert!(check_frame_length_for_api(NON_PRODUCE_REQUEST_BYTES_MAX, 3).is_ok());
    }
}
