//! Metadata: the live brokers and the topics asked for (all when none are named), from the
//! committed cluster metadata, creating unknown ones through the controller when
//! auto-creation is on and the client allows it. A partition whose storage failed on this
//! broker carries KAFKA_STORAGE_ERROR and lists this broker among its offline replicas
//! (v5+), as Kafka reports a replica on a failed log directory; its leader stays this
//! broker, which still serves its reads after a failed write.

use std::rc::Rc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, TopicName};

use super::{Request, str_bytes};
use crate::control::groups::offsets_topic::OFFSETS_TOPIC;
use crate::control::topics::TopicMeta;
use crate::kafka::fetch_response::Piece;
use crate::kafka::handlers::admin::create_committed;
use crate::kafka::protocol::{DecodeError, error_code};
use crate::runtime::shard::Shard;
use crate::runtime::storage_health::StorageHealth;
use cluster::{Metadata, NO_LEADER, TopicRecord};

pub async fn handle(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: MetadataRequest = request.decode("Metadata request")?;
    let config = shard.config();
    // v0: an empty list means all topics; v1+: null means all, empty means none. From
    // v10 on a topic may be named by its id instead (name null).
    let names: Option<Vec<Result<String, u128>>> = match req.topics {
        None => None,
        Some(list) if list.is_empty() && request.version == 0 => None,
        Some(list) => Some(
            list.iter()
                .filter_map(|t| match &t.name {
                    Some(name) => Some(Ok(name.0.to_string())),
                    None if !t.topic_id.is_nil() => Some(Err(t.topic_id.as_u128())),
                    None => None,
                })
                .collect(),
        ),
    };
    let allow_create =
        config.auto_create_topics && (request.version < 4 || req.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match names {
        None => {
            let metadata = shard.shared.controller.view().current();
            for topic in metadata.topics.values() {
                topics.push(topic_entry(
                    &topic.name,
                    Ok(topic),
                    &metadata,
                    &shard.shared.storage,
                    shard.shared.node_id(),
                ));
            }
        }
        Some(names) => {
            for name in names {
                let name = match name {
                    Ok(name) => name,
                    Err(topic_id) => {
                        let metadata = shard.shared.controller.view().current();
                        match metadata.topics.values().find(|t| t.topic_id == topic_id) {
                            Some(topic) => topic.name.clone(),
                            None => {
                                topics.push(
                                    MetadataResponseTopic::default()
                                        .with_topic_id(uuid::Uuid::from_u128(topic_id))
                                        .with_error_code(error_code::UNKNOWN_TOPIC_ID),
                                );
                                continue;
                            }
                        }
                    }
                };
                let mut metadata = shard.shared.controller.view().current();
                let found = match metadata.topics.contains_key(&name) {
                    true => Ok(()),
                    false if allow_create => {
                        let created = auto_create(shard, &name).await;
                        metadata = shard.shared.controller.view().current();
                        created
                    }
                    false => Err(error_code::UNKNOWN_TOPIC_OR_PARTITION),
                };
                let found = found.and_then(|()| {
                    metadata
                        .topics
                        .get(&name)
                        .ok_or(error_code::UNKNOWN_TOPIC_OR_PARTITION)
                });
                topics.push(topic_entry(
                    &name,
                    found,
                    &metadata,
                    &shard.shared.storage,
                    shard.shared.node_id(),
                ));
            }
        }
    }
    let v = request.version;
    let topics = topics
        .into_iter()
        .map(|t| without_fields_newer_than(t, v))
        .collect();
    let metadata = shard.shared.controller.view().current();
    let brokers = metadata
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(str_bytes(&b.host))
                .with_port(b.port)
        })
        .collect();
    let mut response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics);
    if v >= 1 {
        let controller = shard.shared.controller.view().controller().unwrap_or(-1);
        response = response.with_controller_id(BrokerId(controller));
    }
    if v >= 2 {
        response = response.with_cluster_id(Some(str_bytes(&shard.shared.cluster_id)));
    }
    request.respond(&response)
}

/// Creates a topic the client asked about, through the controller, with the broker's
/// default partitions and replication factor.
async fn auto_create(shard: &Rc<Shard>, name: &str) -> Result<(), i16> {
    if name == OFFSETS_TOPIC {
        // Made with its own settings (compacted, its partition count), as on the first
        // FindCoordinator.
        return crate::control::groups::hosting::ensure_topic(shard)
            .await
            .map(|_| ())
            .map_err(|_| error_code::LEADER_NOT_AVAILABLE);
    }
    let config = shard.config();
    let meta = TopicMeta {
        name: name.to_owned(),
        partitions: config.num_partitions,
        configs: Default::default(),
        topic_id: 0,
    };
    match create_committed(shard, meta, config.default_replication_factor, None, false).await {
        Ok(_) => {
            tracing::info!(topic = name, "auto-created topic");
            Ok(())
        }
        // Created meanwhile by another client: answer with it.
        Err((error_code::TOPIC_ALREADY_EXISTS, _)) => Ok(()),
        Err((code, message)) => {
            tracing::warn!(topic = name, code, %message, "auto-create failed");
            Err(code)
        }
    }
}

/// Fields a version does not carry must stay at their defaults: offline replicas exist
/// from v5 on, the leader epoch from v7 on, topic ids from v10 on.
fn without_fields_newer_than(
    mut topic: MetadataResponseTopic,
    version: i16,
) -> MetadataResponseTopic {
    if version < 10 {
        topic.topic_id = uuid::Uuid::nil();
    }
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
    found: Result<&TopicRecord, i16>,
    metadata: &Metadata,
    storage: &StorageHealth,
    me: i32,
) -> MetadataResponseTopic {
    let topic = MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(name))))
        .with_is_internal(name == OFFSETS_TOPIC);
    let live = |id: &i32| metadata.brokers.get(id).is_some_and(|b| !b.fenced);
    let ids = |list: &[i32]| list.iter().map(|id| BrokerId(*id)).collect::<Vec<_>>();
    match found {
        Err(code) => topic.with_error_code(code),
        Ok(record) => {
            let failed_here = storage.failed_in(name);
            topic
                .with_topic_id(uuid::Uuid::from_u128(record.topic_id))
                .with_partitions(
                    record
                        .partitions
                        .iter()
                        .enumerate()
                        .map(|(index, p)| {
                            let index = i32::try_from(index).unwrap_or(i32::MAX);
                            let storage_failed = failed_here.contains_key(&index);
                            let offline: Vec<i32> = p
                                .replicas
                                .iter()
                                .copied()
                                .filter(|id| !live(id) || (*id == me && storage_failed))
                                .collect();
                            let code = if p.leader == NO_LEADER {
                                error_code::LEADER_NOT_AVAILABLE
                            } else if p.leader == me && storage_failed {
                                error_code::KAFKA_STORAGE_ERROR
                            } else {
                                error_code::NONE
                            };
                            MetadataResponsePartition::default()
                                .with_error_code(code)
                                .with_partition_index(index)
                                .with_leader_id(BrokerId(p.leader))
                                .with_leader_epoch(p.leader_epoch)
                                .with_replica_nodes(ids(&p.replicas))
                                .with_isr_nodes(ids(&p.isr))
                                .with_offline_replicas(ids(&offline))
                        })
                        .collect(),
                )
        }
    }
}

/// The most partitions one DescribeTopicPartitions response carries (Kafka's
/// `max.request.partition.size.limit` default); a smaller limit in the request wins.
const DESCRIBE_PARTITIONS_MAX: usize = 2000;

/// DescribeTopicPartitions (API 75): the topics asked for (all, by name, when none are
/// named), from the cursor on, with at most the partition limit; `next_cursor` says where
/// the next page starts. Topics are never created here.
pub fn describe_topic_partitions(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    use kafka_protocol::messages::DescribeTopicPartitionsRequest;
    use kafka_protocol::messages::describe_topic_partitions_response::{
        Cursor, DescribeTopicPartitionsResponse, DescribeTopicPartitionsResponsePartition,
        DescribeTopicPartitionsResponseTopic,
    };
    let req: DescribeTopicPartitionsRequest = request.decode("DescribeTopicPartitions request")?;
    let metadata = shard.shared.controller.view().current();
    let mut names: Vec<String> = if req.topics.is_empty() {
        metadata.topics.keys().cloned().collect()
    } else {
        req.topics.iter().map(|t| t.name.0.to_string()).collect()
    };
    names.sort();
    names.dedup();
    let (start_topic, start_partition) = match &req.cursor {
        Some(c) => (Some(c.topic_name.0.to_string()), c.partition_index.max(0)),
        None => (None, 0),
    };
    let limit = usize::try_from(req.response_partition_limit)
        .unwrap_or(0)
        .clamp(1, DESCRIBE_PARTITIONS_MAX);
    let me = shard.shared.node_id();
    let mut left = limit;
    let mut topics = Vec::new();
    let mut next_cursor = None;
    for name in names {
        if start_topic.as_ref().is_some_and(|start| name < *start) {
            continue;
        }
        let first = if start_topic.as_deref() == Some(name.as_str()) {
            start_partition
        } else {
            0
        };
        if left == 0 {
            next_cursor = Some(
                Cursor::default()
                    .with_topic_name(TopicName(str_bytes(&name)))
                    .with_partition_index(first),
            );
            break;
        }
        let found = metadata
            .topics
            .get(&name)
            .ok_or(error_code::UNKNOWN_TOPIC_OR_PARTITION);
        let entry = topic_entry(&name, found, &metadata, &shard.shared.storage, me);
        let mut topic = DescribeTopicPartitionsResponseTopic::default()
            .with_error_code(entry.error_code)
            .with_name(Some(TopicName(str_bytes(&name))))
            .with_topic_id(entry.topic_id)
            .with_is_internal(name == OFFSETS_TOPIC);
        let mut partitions = Vec::new();
        for p in entry
            .partitions
            .into_iter()
            .filter(|p| p.partition_index >= first)
        {
            if left == 0 {
                next_cursor = Some(
                    Cursor::default()
                        .with_topic_name(TopicName(str_bytes(&name)))
                        .with_partition_index(p.partition_index),
                );
                break;
            }
            left -= 1;
            partitions.push(
                DescribeTopicPartitionsResponsePartition::default()
                    .with_error_code(p.error_code)
                    .with_partition_index(p.partition_index)
                    .with_leader_id(p.leader_id)
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(p.replica_nodes)
                    .with_isr_nodes(p.isr_nodes)
                    // No eligible leader replicas (KIP-966's ELR) are kept: empty, as
                    // Kafka answers with ELR off (its tools read these as lists).
                    .with_eligible_leader_replicas(Some(Vec::new()))
                    .with_last_known_elr(Some(Vec::new()))
                    .with_offline_replicas(p.offline_replicas),
            );
        }
        topic = topic.with_partitions(partitions);
        topics.push(topic);
        if next_cursor.is_some() {
            break;
        }
    }
    request.respond(
        &DescribeTopicPartitionsResponse::default()
            .with_topics(topics)
            .with_next_cursor(next_cursor),
    )
}
