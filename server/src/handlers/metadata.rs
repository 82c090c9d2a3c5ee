//! Metadata: this single broker, and the topics asked for (all when none are named),
//! creating unknown ones when auto-creation is on and the client allows it. A partition
//! whose storage failed carries KAFKA_STORAGE_ERROR and lists the broker among its
//! offline replicas (v5+), as Kafka reports a replica on a failed log directory; its
//! leader stays this broker, which still serves its reads after a failed write.

use std::rc::Rc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, TopicName};

use super::{Request, str_bytes};
use crate::fetch_response::Piece;
use crate::protocol::{DecodeError, error_code};
use crate::shard::Shard;
use crate::storage_health::StorageHealth;
use crate::topics::{TopicError, TopicMeta};

pub const BROKER_ID: i32 = 0;

pub async fn handle(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: MetadataRequest = request.decode("Metadata request")?;
    let config = shard.config();
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let names: Option<Vec<String>> = match req.topics {
        None => None,
        Some(list) if list.is_empty() && request.version == 0 => None,
        Some(list) => Some(
            list.iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                .collect(),
        ),
    };
    let allow_create =
        config.auto_create_topics && (request.version < 4 || req.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match names {
        None => {
            for meta in shard.shared.registry.list() {
                topics.push(topic_entry(
                    &meta.name,
                    Ok(meta.clone()),
                    &shard.shared.storage,
                ));
            }
        }
        Some(names) => {
            for name in names {
                let found = match shard.shared.registry.get(&name) {
                    Some(meta) => Ok(meta),
                    None if allow_create => auto_create(shard, &name).await,
                    None => Err(error_code::UNKNOWN_TOPIC_OR_PARTITION),
                };
                topics.push(topic_entry(&name, found, &shard.shared.storage));
            }
        }
    }
    let v = request.version;
    let topics = topics
        .into_iter()
        .map(|t| without_fields_newer_than(t, v))
        .collect();
    let mut response = MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(BROKER_ID))
                .with_host(str_bytes(&config.advertised_host()))
                .with_port(config.advertised_port()),
        ])
        .with_topics(topics);
    if v >= 1 {
        response = response.with_controller_id(BrokerId(BROKER_ID));
    }
    if v >= 2 {
        response = response.with_cluster_id(Some(str_bytes(&shard.shared.cluster_id)));
    }
    request.respond(&response)
}

async fn auto_create(shard: &Rc<Shard>, name: &str) -> Result<TopicMeta, i16> {
    let meta = TopicMeta {
        name: name.to_owned(),
        partitions: shard.config().num_partitions,
        configs: Default::default(),
    };
    let meta = match shard.shared.registry.create(meta) {
        Ok(meta) => meta,
        Err(TopicError::AlreadyExists(_)) => {
            return shard
                .shared
                .registry
                .get(name)
                .ok_or(error_code::UNKNOWN_TOPIC_OR_PARTITION);
        }
        Err(TopicError::InvalidName(_)) => return Err(error_code::INVALID_TOPIC_EXCEPTION),
        Err(e @ TopicError::Storage(_)) => {
            tracing::error!(topic = name, error = %e, "auto-create failed: storage");
            return Err(error_code::KAFKA_STORAGE_ERROR);
        }
        Err(e) => {
            tracing::warn!(topic = name, error = %e, "auto-create failed");
            return Err(error_code::UNKNOWN_SERVER_ERROR);
        }
    };
    tracing::info!(
        topic = name,
        partitions = meta.partitions,
        "auto-created topic"
    );
    match shard.open_topic_everywhere(&meta).await {
        Ok(()) => Ok(meta),
        Err(e) => {
            tracing::error!(topic = name, error = %e, "opening auto-created topic failed");
            Err(error_code::UNKNOWN_SERVER_ERROR)
        }
    }
}

/// Fields a version does not carry must stay at their defaults: offline replicas exist
/// from v5 on, the leader epoch from v7 on.
fn without_fields_newer_than(
    mut topic: MetadataResponseTopic,
    version: i16,
) -> MetadataResponseTopic {
    for p in &mut topic.partitions {
        if version < 5 {
            p.offline_replicas.clear();
        }
        if version < 7 {
            p.leader_epoch = -1;
        }
    }
    topic
}

fn topic_entry(
    name: &str,
    found: Result<TopicMeta, i16>,
    storage: &StorageHealth,
) -> MetadataResponseTopic {
    let topic = MetadataResponseTopic::default().with_name(Some(TopicName(str_bytes(name))));
    match found {
        Err(code) => topic.with_error_code(code),
        Ok(meta) => {
            let failed = storage.failed_in(&meta.name);
            topic.with_partitions(
                (0..meta.partitions)
                    .map(|p| {
                        let partition = MetadataResponsePartition::default()
                            .with_partition_index(p)
                            .with_leader_id(BrokerId(BROKER_ID))
                            .with_leader_epoch(0)
                            .with_replica_nodes(vec![BrokerId(BROKER_ID)])
                            .with_isr_nodes(vec![BrokerId(BROKER_ID)]);
                        if failed.contains_key(&p) {
                            partition
                                .with_error_code(error_code::KAFKA_STORAGE_ERROR)
                                .with_offline_replicas(vec![BrokerId(BROKER_ID)])
                        } else {
                            partition
                        }
                    })
                    .collect(),
            )
        }
    }
}
