//! One module per Kafka API group. Each takes a decoded request and returns the response
//! frame as pieces (or nothing, for Produce with acks=0).

use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::StrBytes;

use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{self, DecodeError, FromBody, RequestBody};
use crate::runtime::shard::{Shard, UnackedRefusals};

pub mod admin;
pub mod api_versions;
pub mod elect_leaders;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod offsets;
pub mod produce;
pub mod producer_ids;

pub struct Request {
    pub key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: String,
    /// The address the connection comes from (Kafka's client host is `/` and this).
    pub peer: std::net::IpAddr,
    /// Decoded by `protocol::decode_frame` before dispatch; the handler takes it once.
    pub body: Option<RequestBody>,
    /// The connection's refused acks=0 appends (it closes as soon as one is noted).
    pub unacked_refusals: Arc<UnackedRefusals>,
}

impl Request {
    /// The request body, decoded by `protocol::decode_frame` at the front door.
    pub fn decode<T: FromBody>(&mut self, what: &'static str) -> Result<T, DecodeError> {
        self.body
            .take()
            .and_then(T::from_body)
            .ok_or_else(|| DecodeError::Malformed {
                what,
                reason: "the decoded body is of another API".to_owned(),
            })
    }

    pub fn respond<T: kafka_protocol::protocol::Encodable>(
        &self,
        body: &T,
    ) -> Result<Option<Vec<Piece>>, DecodeError> {
        let frame = protocol::encode_response(self.key, self.version, self.correlation_id, body)?;
        Ok(Some(vec![Piece::Bytes(frame)]))
    }
}

pub async fn handle(
    shard: &Rc<Shard>,
    request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    tracing::trace!(api = ?request.key, version = request.version, client = %request.client_id, "request");
    match request.key {
        ApiKey::ApiVersions => api_versions::handle(request),
        ApiKey::Metadata => metadata::handle(shard, request).await,
        ApiKey::DescribeTopicPartitions => metadata::describe_topic_partitions(shard, request),
        ApiKey::Produce => produce::handle(shard, request).await,
        ApiKey::Fetch => fetch::handle(shard, request).await,
        ApiKey::ListOffsets => list_offsets::handle(shard, request).await,
        ApiKey::CreateTopics => admin::create_topics(shard, request).await,
        ApiKey::DeleteTopics => admin::delete_topics(shard, request).await,
        ApiKey::CreatePartitions => admin::create_partitions(shard, request).await,
        ApiKey::DescribeConfigs => admin::describe_configs(shard, request),
        ApiKey::DescribeLogDirs => admin::describe_log_dirs(shard, request),
        ApiKey::AlterReplicaLogDirs => admin::alter_replica_log_dirs(shard, request),
        ApiKey::FindCoordinator => groups::find_coordinator(shard, request).await,
        ApiKey::JoinGroup => groups::join_group(shard, request).await,
        ApiKey::SyncGroup => groups::sync_group(shard, request).await,
        ApiKey::Heartbeat => groups::heartbeat(shard, request),
        ApiKey::LeaveGroup => groups::leave_group(shard, request),
        ApiKey::OffsetCommit => offsets::offset_commit(shard, request).await,
        ApiKey::OffsetFetch => offsets::offset_fetch(shard, request),
        ApiKey::ListGroups => groups::list_groups(shard, request),
        ApiKey::DescribeGroups => groups::describe_groups(shard, request),
        ApiKey::DeleteGroups => groups::delete_groups(shard, request).await,
        ApiKey::InitProducerId => producer_ids::init_producer_id(shard, request).await,
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch::handle(shard, request).await,
        ApiKey::ElectLeaders => elect_leaders::handle(shard, request).await,
        ApiKey::DescribeCluster => admin::describe_cluster(shard, request),
        ApiKey::DescribeQuorum => admin::describe_quorum(shard, request).await,
        ApiKey::ListConfigResources => admin::list_config_resources(shard, request),
        // Never reached: the connection refuses APIs outside `SUPPORTED_APIS`.
        other => Err(DecodeError::Malformed {
            what: "request",
            reason: format!("{other:?} is not served"),
        }),
    }
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}
