//! CreateTopics (v2-7), DeleteTopics (v1-6), CreatePartitions (v0-3), DescribeConfigs
//! (v1-4), DescribeCluster (v0-2), ListConfigResources (v0-1), DescribeLogDirs (v1-4),
//! AlterReplicaLogDirs (v1-2) and DescribeQuorum (v0-2).

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteTopicsRequest, DescribeClusterRequest,
    DescribeConfigsRequest, TopicName,
};

use super::{Request, str_bytes};
use crate::control::groups::offsets_topic::OFFSETS_TOPIC;
use crate::control::metadata_follower::{controller_error, wait_applied};
use crate::control::topics::{TOPIC_CONFIG_KEYS, TopicError, TopicMeta, check_config};
use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{DecodeError, error_code};
use crate::runtime::shard::Shard;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// `config_source` values of DescribeConfigs v1+.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

pub async fn create_topics(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: CreateTopicsRequest = request.decode("CreateTopics request")?;
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in &req.topics {
        let name = topic.name.0.to_string();
        let outcome = create_one(shard, topic, req.validate_only).await;
        let result = CreatableTopicResult::default().with_name(TopicName(str_bytes(&name)));
        results.push(match outcome {
            // The partitions, replication factor and configs the topic got come back
            // from v5 on; its id from v7 on (none for validate_only).
            Ok((meta, rf)) if request.version >= 5 => {
                let configs = topic_configs(shard, &meta)
                    .into_iter()
                    .map(|(name, value, source)| {
                        CreatableTopicConfigs::default()
                            .with_name(str_bytes(&name))
                            .with_value(Some(str_bytes(&value)))
                            .with_config_source(source)
                    })
                    .collect();
                let mut result = result
                    .with_num_partitions(meta.partitions)
                    .with_replication_factor(rf)
                    .with_configs(Some(configs));
                if request.version >= 7 && !req.validate_only {
                    let metadata = shard.shared.controller.view().current();
                    if let Some(topic) = metadata.topics.get(&name) {
                        result = result.with_topic_id(uuid::Uuid::from_u128(topic.topic_id));
                    }
                }
                result
            }
            Ok(_) => result,
            Err((code, message)) => {
                tracing::debug!(topic = %name, code, %message, "create topic refused");
                result
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&message)))
            }
        });
    }
    request.respond(&CreateTopicsResponse::default().with_topics(results))
}

async fn create_one(
    shard: &Rc<Shard>,
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
    validate_only: bool,
) -> Result<(TopicMeta, i16), (i16, String)> {
    if topic.name.0.as_str() == OFFSETS_TOPIC {
        // Made by the broker itself, compacted, on the first FindCoordinator: one made by
        // hand with other settings (a delete policy) would lose committed offsets.
        return Err((
            error_code::INVALID_REQUEST,
            "__consumer_offsets is internal: the brokers create it".into(),
        ));
    }
    let config = shard.config();
    let (meta, rf) = requested_topic(
        topic,
        config.num_partitions,
        config.default_replication_factor,
    )?;
    let assignments = manual_assignments(topic)?;
    if let Some(lists) = &assignments {
        bound_assignments(shard, lists, lists.len())?;
    }
    create_committed(shard, meta, rf, assignments, validate_only).await
}

/// Bounds replica lists a client assigned before they reach the controller's log:
/// `expected` lists, each no longer than the live brokers and all as long as the first.
/// (The controller checks the rest; a command too large for its log is refused there.)
fn bound_assignments(
    shard: &Shard,
    lists: &[Vec<i32>],
    expected: usize,
) -> Result<(), (i16, String)> {
    let live = shard
        .shared
        .controller
        .view()
        .current()
        .live_brokers()
        .len();
    let rf = lists.first().map_or(0, Vec::len);
    if lists.len() != expected || rf == 0 || rf > live || lists.iter().any(|l| l.len() != rf) {
        return Err((
            error_code::INVALID_REPLICA_ASSIGNMENT,
            format!(
                "{} replica lists for {expected} partitions: each needs the same number of \
                 replicas, at least one and at most the {live} live brokers",
                lists.len()
            ),
        ));
    }
    Ok(())
}

/// The replicas a CreateTopics entry assigns by hand (`--replica-assignment`): one list
/// per partition, the partitions numbered 0..n; `None` when it assigns none.
fn manual_assignments(
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<Option<Vec<Vec<i32>>>, (i16, String)> {
    if topic.assignments.is_empty() {
        return Ok(None);
    }
    let mut lists: Vec<Option<Vec<i32>>> = vec![None; topic.assignments.len()];
    for a in &topic.assignments {
        let slot = usize::try_from(a.partition_index)
            .ok()
            .and_then(|i| lists.get_mut(i))
            .filter(|slot| slot.is_none())
            .ok_or_else(|| {
                (
                    error_code::INVALID_REPLICA_ASSIGNMENT,
                    "assigned partitions must be numbered 0..n, each once".to_owned(),
                )
            })?;
        *slot = Some(a.broker_ids.iter().map(|b| b.0).collect());
    }
    Ok(Some(lists.into_iter().flatten().collect()))
}

/// Checks a new topic, has the controller commit it, and waits until it is applied here.
/// CreateTopics and auto-creation both come this way.
pub async fn create_committed(
    shard: &Rc<Shard>,
    meta: TopicMeta,
    replication_factor: i16,
    assignments: Option<Vec<Vec<i32>>>,
    validate_only: bool,
) -> Result<(TopicMeta, i16), (i16, String)> {
    crate::control::topics::validate(&meta).map_err(|e| {
        let code = match e {
            TopicError::InvalidName(_) => error_code::INVALID_TOPIC_EXCEPTION,
            TopicError::InvalidPartitions(_) => error_code::INVALID_PARTITIONS,
            TopicError::InvalidConfig { .. } => error_code::INVALID_CONFIG,
            TopicError::AlreadyExists(_) => error_code::TOPIC_ALREADY_EXISTS,
            TopicError::Storage(_) => error_code::KAFKA_STORAGE_ERROR,
        };
        (code, e.to_string())
    })?;
    let name = meta.name.clone();
    let command = cluster::Command::CreateTopic {
        name: name.clone(),
        partitions: meta.partitions,
        replication_factor,
        configs: meta.configs.clone(),
        assignments,
    };
    if validate_only {
        // The controller's own checks against the committed metadata.
        return shard
            .shared
            .controller
            .view()
            .current()
            .check(&command)
            .map(|()| (meta, replication_factor))
            .map_err(|e| controller_error(&cluster::ControllerError::Refused(e)));
    }
    shard
        .shared
        .controller
        .propose(command)
        .await
        .map_err(|e| controller_error(&e))?;
    wait_applied(shard, &name, true).await.map_err(|code| {
        (
            code,
            format!("topic {name} was created but is not open here yet"),
        )
    })?;
    tracing::info!(
        topic = %name,
        partitions = meta.partitions,
        replication_factor,
        "created topic"
    );
    Ok((meta, replication_factor))
}

/// The topic a CreateTopics entry asks for, and its replication factor, checked as far
/// as no cluster state is needed: each config; `default_partitions` and
/// `default_replication_factor` stand for -1 (as Kafka's CreateTopics v4+). With a
/// manual assignment both must be -1, and the assignment gives them. The controller
/// checks the replication factor (or the assignment) against the live brokers;
/// `topics::validate` checks the name and the partition count.
pub fn requested_topic(
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
    default_partitions: i32,
    default_replication_factor: i16,
) -> Result<(TopicMeta, i16), (i16, String)> {
    if !topic.assignments.is_empty() {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return Err((
                error_code::INVALID_REQUEST,
                "a replica assignment comes without a partition count or replication factor".into(),
            ));
        }
        let partitions = i32::try_from(topic.assignments.len()).unwrap_or(i32::MAX);
        let rf = topic
            .assignments
            .first()
            .map_or(0, |a| i16::try_from(a.broker_ids.len()).unwrap_or(i16::MAX));
        return Ok((
            TopicMeta {
                name: topic.name.0.to_string(),
                partitions,
                configs: topic_configs_of(topic)?,
                topic_id: 0,
            },
            rf,
        ));
    }
    let replication_factor = match topic.replication_factor {
        -1 => default_replication_factor,
        rf if rf >= 1 => rf,
        rf => {
            return Err((
                error_code::INVALID_REPLICATION_FACTOR,
                format!("replication factor {rf} must be at least 1 (or -1 for the default)"),
            ));
        }
    };
    let partitions = if topic.num_partitions == -1 {
        default_partitions
    } else {
        topic.num_partitions
    };
    Ok((
        TopicMeta {
            name: topic.name.0.to_string(),
            partitions,
            configs: topic_configs_of(topic)?,
            topic_id: 0,
        },
        replication_factor,
    ))
}

/// A CreateTopics entry's configs, each checked.
fn topic_configs_of(
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<BTreeMap<String, String>, (i16, String)> {
    let mut configs = BTreeMap::new();
    for c in &topic.configs {
        let key = c.name.to_string();
        let value = c.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
        check_config(&key, &value).map_err(|e| (error_code::INVALID_CONFIG, e.to_string()))?;
        configs.insert(key, value);
    }
    Ok(configs)
}

/// CreatePartitions: grows each topic to its new count through the controller, which
/// places the new partitions' replicas as a new topic's (or as assigned); waits until
/// this broker applied it. `validate_only` runs the controller's checks on a copy.
pub async fn create_partitions(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    use kafka_protocol::messages::CreatePartitionsRequest;
    use kafka_protocol::messages::create_partitions_response::{
        CreatePartitionsResponse, CreatePartitionsTopicResult,
    };
    let req: CreatePartitionsRequest = request.decode("CreatePartitions request")?;
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in &req.topics {
        let name = topic.name.0.to_string();
        let assignments = topic.assignments.as_ref().map(|lists| {
            lists
                .iter()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect()
        });
        let outcome = grow_topic(shard, &name, topic.count, assignments, req.validate_only).await;
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        results.push(match outcome {
            Ok(()) => result,
            Err((code, message)) => {
                tracing::debug!(topic = %name, code, %message, "create partitions refused");
                result
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&message)))
            }
        });
    }
    request.respond(&CreatePartitionsResponse::default().with_results(results))
}

async fn grow_topic(
    shard: &Rc<Shard>,
    name: &str,
    count: i32,
    assignments: Option<Vec<Vec<i32>>>,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    let metadata = shard.shared.controller.view().current();
    if name == OFFSETS_TOPIC {
        // Every group's partition would move, and its committed offsets with it.
        return Err((
            error_code::INVALID_REQUEST,
            "__consumer_offsets cannot grow: groups would lose their committed offsets".into(),
        ));
    }
    let topic = metadata.topics.get(name).ok_or_else(|| {
        (
            error_code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("unknown topic {name}"),
        )
    })?;
    let have = topic.partitions.len();
    if usize::try_from(count).unwrap_or(0) <= have {
        return Err((
            error_code::INVALID_PARTITIONS,
            format!("topic {name} has {have} partitions; the new count {count} must be larger"),
        ));
    }
    if let Some(lists) = &assignments {
        let new = usize::try_from(count).unwrap_or(0) - have;
        bound_assignments(shard, lists, new)?;
    }
    let command = cluster::Command::CreatePartitions {
        topic: name.to_owned(),
        topic_id: topic.topic_id,
        count,
        assignments,
    };
    if validate_only {
        // The controller's own checks against the committed metadata.
        return metadata
            .check(&command)
            .map_err(|e| controller_error(&cluster::ControllerError::Refused(e)));
    }
    drop(metadata);
    shard
        .shared
        .controller
        .propose(command)
        .await
        .map_err(|e| controller_error(&e))?;
    let wanted = usize::try_from(count).unwrap_or(usize::MAX);
    crate::control::metadata_follower::wait_applied_until(shard, name, |m| {
        m.topics
            .get(name)
            .is_some_and(|t| t.partitions.len() >= wanted)
    })
    .await
    .map_err(|code| {
        (
            code,
            format!("topic {name} grew but its new partitions are not open here yet"),
        )
    })?;
    tracing::info!(topic = name, from = have, to = count, "created partitions");
    Ok(())
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: DeleteTopicsRequest = request.decode("DeleteTopics request")?;
    // v6 names topics by name or by id (`topics`); earlier versions by name.
    let wanted: Vec<(Option<String>, u128)> = if request.version >= 6 {
        req.topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().map(|n| n.0.to_string()),
                    t.topic_id.as_u128(),
                )
            })
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), 0))
            .collect()
    };
    let mut results = Vec::with_capacity(wanted.len());
    for (name, topic_id) in wanted {
        let metadata = shard.shared.controller.view().current();
        let by_id = name.is_none();
        let (topic, topic_id) = match (name, topic_id) {
            // Both a name and an id: Kafka refuses the entry.
            (Some(name), id) if id != 0 => {
                results.push(
                    DeletableTopicResult::default()
                        .with_name(Some(TopicName(str_bytes(&name))))
                        .with_topic_id(uuid::Uuid::from_u128(id))
                        .with_error_code(error_code::INVALID_REQUEST)
                        .with_error_message(Some(str_bytes(
                            "a topic is named either by name or by id",
                        ))),
                );
                continue;
            }
            (Some(name), _) => {
                let id = metadata.topics.get(&name).map_or(0, |t| t.topic_id);
                (name, id)
            }
            (None, id) => match metadata
                .topics
                .values()
                .find(|t| t.topic_id == id && id != 0)
            {
                Some(t) => (t.name.clone(), id),
                None => {
                    results.push(
                        DeletableTopicResult::default()
                            .with_name(None)
                            .with_topic_id(uuid::Uuid::from_u128(id))
                            .with_error_code(error_code::UNKNOWN_TOPIC_ID)
                            .with_error_message(if request.version >= 5 {
                                Some(str_bytes("no topic has this id"))
                            } else {
                                None
                            }),
                    );
                    continue;
                }
            },
        };
        drop(metadata);
        let mut result =
            DeletableTopicResult::default().with_name(Some(TopicName(str_bytes(&topic))));
        if request.version >= 6 {
            result = result.with_topic_id(uuid::Uuid::from_u128(topic_id));
        }
        if topic == OFFSETS_TOPIC {
            // Kafka refuses to delete its internal topics: every group's offsets are there.
            results.push(
                result
                    .with_error_code(error_code::INVALID_REQUEST)
                    .with_error_message(Some(str_bytes(
                        "__consumer_offsets is internal and cannot be deleted",
                    ))),
            );
            continue;
        }
        let proposed = shard
            .shared
            .controller
            .propose(cluster::Command::DeleteTopic {
                name: topic.clone(),
                // Named by id: only that incarnation (not one created again meanwhile).
                topic_id: by_id.then_some(topic_id),
            })
            .await;
        let (code, message) = match proposed {
            Ok(_) => match wait_applied(shard, &topic, false).await {
                Ok(()) => (error_code::NONE, None),
                Err(code) => (code, Some(format!("topic {topic} is not deleted here yet"))),
            },
            Err(e) => {
                let (code, message) = controller_error(&e);
                tracing::debug!(%topic, code, %message, "delete topic refused");
                (code, Some(message))
            }
        };
        // An error message exists from v5 on.
        let message = message.filter(|_| request.version >= 5);
        results.push(
            result
                .with_error_code(code)
                .with_error_message(message.as_deref().map(str_bytes)),
        );
    }
    request.respond(&DeleteTopicsResponse::default().with_responses(results))
}

pub fn describe_configs(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: DescribeConfigsRequest = request.decode("DescribeConfigs request")?;
    let mut results = Vec::with_capacity(req.resources.len());
    for resource in &req.resources {
        let name = resource.resource_name.to_string();
        let wanted = |key: &str| {
            resource
                .configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
        };
        let result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let entries = match resource.resource_type {
            RESOURCE_TOPIC => match shard.shared.registry.get(&name) {
                Some(meta) => Ok(topic_configs(shard, &meta)),
                None => Err((
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("unknown topic {name}"),
                )),
            },
            RESOURCE_BROKER => Ok(broker_configs(shard)),
            other => Err((
                error_code::INVALID_REQUEST,
                format!("resource type {other} is not supported"),
            )),
        };
        results.push(match entries {
            Ok(entries) => result.with_configs(
                entries
                    .into_iter()
                    .filter(|(key, _, _)| wanted(key))
                    .map(|(key, value, source)| {
                        let entry = DescribeConfigsResourceResult::default()
                            .with_name(str_bytes(&key))
                            .with_value(Some(str_bytes(&value)))
                            .with_read_only(resource.resource_type == RESOURCE_BROKER)
                            .with_config_source(source);
                        // The value's type exists from v3 on.
                        if request.version >= 3 {
                            entry.with_config_type(config_type(&key))
                        } else {
                            entry
                        }
                    })
                    .collect(),
            ),
            Err((code, message)) => result
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&message))),
        });
    }
    request.respond(&DescribeConfigsResponse::default().with_results(results))
}

/// Kafka's `ConfigType` codes (DescribeConfigs v3+).
mod config_type {
    pub const BOOLEAN: i8 = 1;
    pub const STRING: i8 = 2;
    pub const INT: i8 = 3;
    pub const LONG: i8 = 5;
    pub const DOUBLE: i8 = 6;
    pub const LIST: i8 = 7;
}

/// The type of a config we report, as Kafka declares it.
fn config_type(key: &str) -> i8 {
    match key {
        "min.cleanable.dirty.ratio" => config_type::DOUBLE,
        "retention.ms"
        | "retention.bytes"
        | "delete.retention.ms"
        | "segment.ms"
        | "log.retention.ms"
        | "log.retention.bytes"
        | "replica.lag.time.max.ms" => config_type::LONG,
        "segment.bytes"
        | "max.message.bytes"
        | "min.insync.replicas"
        | "broker.id"
        | "node.id"
        | "message.max.bytes"
        | "socket.request.max.bytes"
        | "num.partitions"
        | "default.replication.factor"
        | "log.segment.bytes" => config_type::INT,
        "cleanup.policy" | "listeners" | "advertised.listeners" | "log.dirs" => config_type::LIST,
        "auto.create.topics.enable" => config_type::BOOLEAN,
        _ => config_type::STRING,
    }
}

/// (name, value, source) of a topic's configs: its overrides, else the broker's values.
fn topic_configs(shard: &Shard, meta: &TopicMeta) -> Vec<(String, String, i8)> {
    let c = shard.config();
    let defaults: BTreeMap<&str, String> = BTreeMap::from([
        ("cleanup.policy", "delete".to_owned()),
        (
            "delete.retention.ms",
            crate::control::topics::DELETE_RETENTION_MS_DEFAULT.to_string(),
        ),
        (
            "min.cleanable.dirty.ratio",
            crate::control::topics::MIN_CLEANABLE_DIRTY_RATIO_DEFAULT.to_string(),
        ),
        ("retention.ms", c.log_retention_ms.to_string()),
        ("retention.bytes", c.log_retention_bytes.to_string()),
        ("segment.bytes", c.log_segment_bytes.to_string()),
        ("segment.ms", c.log_segment_ms.to_string()),
        ("max.message.bytes", c.message_max_bytes.to_string()),
    ]);
    let mut out: Vec<(String, String, i8)> = TOPIC_CONFIG_KEYS
        .iter()
        .map(|key| match meta.configs.get(*key) {
            Some(v) => (key.to_string(), v.clone(), SOURCE_TOPIC),
            None => (
                key.to_string(),
                defaults.get(key).cloned().unwrap_or_default(),
                SOURCE_DEFAULT,
            ),
        })
        .collect();
    out.push((
        "min.insync.replicas".into(),
        c.min_insync_replicas.to_string(),
        SOURCE_DEFAULT,
    ));
    out.push((
        "message.timestamp.type".into(),
        "CreateTime".into(),
        SOURCE_DEFAULT,
    ));
    out.push(("compression.type".into(), "producer".into(), SOURCE_DEFAULT));
    out
}

fn broker_configs(shard: &Shard) -> Vec<(String, String, i8)> {
    let c = shard.config();
    let listener = format!(
        "PLAINTEXT://{}:{}",
        c.advertised_host(),
        c.advertised_port()
    );
    [
        ("broker.id", c.node_id.to_string()),
        ("node.id", c.node_id.to_string()),
        ("advertised.listeners", listener),
        ("listeners", format!("PLAINTEXT://{}", c.listen)),
        ("log.dirs", c.data_dir.display().to_string()),
        ("message.max.bytes", c.message_max_bytes.to_string()),
        (
            "socket.request.max.bytes",
            c.socket_request_max_bytes.to_string(),
        ),
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
        ),
        ("num.partitions", c.num_partitions.to_string()),
        (
            "default.replication.factor",
            c.default_replication_factor.to_string(),
        ),
        ("min.insync.replicas", c.min_insync_replicas.to_string()),
        (
            "replica.lag.time.max.ms",
            c.replica_lag_time_max_ms.to_string(),
        ),
        ("log.segment.bytes", c.log_segment_bytes.to_string()),
        ("log.retention.ms", c.log_retention_ms.to_string()),
        ("log.retention.bytes", c.log_retention_bytes.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v, SOURCE_STATIC_BROKER))
    .collect()
}

/// `endpoint_type` of DescribeCluster v1+: this listener serves brokers' clients.
const ENDPOINT_BROKERS: i8 = 1;
/// Kafka's MISMATCHED_ENDPOINT_TYPE: a request for controllers sent to a broker listener.
const MISMATCHED_ENDPOINT_TYPE: i16 = 114;
/// The cluster operations (Kafka's `AclOperation` codes, one bit each) a client may run
/// here: all of them, as no authorizer is configured.
const CLUSTER_OPERATIONS: i32 = 1 << 5 // CREATE
    | 1 << 7 // ALTER
    | 1 << 8 // DESCRIBE
    | 1 << 9 // CLUSTER_ACTION
    | 1 << 10 // DESCRIBE_CONFIGS
    | 1 << 11 // ALTER_CONFIGS
    | 1 << 12; // IDEMPOTENT_WRITE

/// DescribeCluster (API 60, v0-2): the cluster id, the controller and the registered
/// brokers from the committed metadata; fenced ones only when asked for (v2).
pub fn describe_cluster(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: DescribeClusterRequest = request.decode("DescribeCluster request")?;
    let v = request.version;
    let mut response = DescribeClusterResponse::default();
    if v >= 1 {
        response = response.with_endpoint_type(ENDPOINT_BROKERS);
        if req.endpoint_type != ENDPOINT_BROKERS {
            return request.respond(
                &response
                    .with_error_code(MISMATCHED_ENDPOINT_TYPE)
                    .with_error_message(Some(str_bytes(
                        "this listener serves brokers; there is no separate controller listener",
                    ))),
            );
        }
    }
    let metadata = shard.shared.controller.view().current();
    let include_fenced = v >= 2 && req.include_fenced_brokers;
    let brokers = metadata
        .brokers
        .values()
        .filter(|b| include_fenced || !b.fenced)
        .map(|b| {
            let broker = DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(str_bytes(&b.host))
                .with_port(b.port);
            if v >= 2 {
                broker.with_is_fenced(b.fenced)
            } else {
                broker
            }
        })
        .collect();
    let controller = shard.shared.controller.view().controller().unwrap_or(-1);
    response = response
        .with_cluster_id(str_bytes(&shard.shared.cluster_id))
        .with_controller_id(BrokerId(controller))
        .with_brokers(brokers);
    if req.include_cluster_authorized_operations {
        response = response.with_cluster_authorized_operations(CLUSTER_OPERATIONS);
    }
    request.respond(&response)
}

/// ListConfigResources (API 74, KIP-1142): the resources DescribeConfigs can describe.
/// v0 (formerly ListClientMetricsResources) lists client-metrics subscriptions, of which
/// there are none here; v1 lists the types asked for (all when none are): every topic
/// and every registered broker. Broker loggers, client metrics and group configs do not
/// exist here, so asking for them lists nothing.
pub fn list_config_resources(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    use kafka_protocol::messages::ListConfigResourcesRequest;
    use kafka_protocol::messages::list_config_resources_response::{
        ConfigResource, ListConfigResourcesResponse,
    };
    /// Kafka's `ConfigResource.Type` codes of v1.
    const KNOWN_TYPES: &[i8] = &[RESOURCE_TOPIC, RESOURCE_BROKER, 8, 16, 32];
    let req: ListConfigResourcesRequest = request.decode("ListConfigResources request")?;
    let response = ListConfigResourcesResponse::default();
    if request.version == 0 {
        return request.respond(&response);
    }
    if let Some(unknown) = req.resource_types.iter().find(|t| !KNOWN_TYPES.contains(t)) {
        tracing::debug!(resource_type = unknown, "unknown config resource type");
        return request.respond(&response.with_error_code(error_code::INVALID_REQUEST));
    }
    let wanted = |t: i8| req.resource_types.is_empty() || req.resource_types.contains(&t);
    let metadata = shard.shared.controller.view().current();
    let mut resources = Vec::new();
    if wanted(RESOURCE_TOPIC) {
        resources.extend(metadata.topics.keys().map(|name| {
            ConfigResource::default()
                .with_resource_name(str_bytes(name))
                .with_resource_type(RESOURCE_TOPIC)
        }));
    }
    if wanted(RESOURCE_BROKER) {
        resources.extend(metadata.brokers.keys().map(|id| {
            ConfigResource::default()
                .with_resource_name(str_bytes(&id.to_string()))
                .with_resource_type(RESOURCE_BROKER)
        }));
    }
    request.respond(&response.with_config_resources(resources))
}

/// DescribeLogDirs (API 35): this broker's one log directory, the replicas it holds there
/// (all, or those asked for) with their sizes on disk, and (v4) the file system's total
/// and usable bytes. A replica's offset lag is that of a current log in Kafka: its high
/// watermark past its log end, never above 0 (there are no future logs: no JBOD moves).
pub fn describe_log_dirs(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    use kafka_protocol::messages::DescribeLogDirsRequest;
    use kafka_protocol::messages::describe_log_dirs_response::{
        DescribeLogDirsPartition, DescribeLogDirsResponse, DescribeLogDirsResult,
        DescribeLogDirsTopic,
    };
    let req: DescribeLogDirsRequest = request.decode("DescribeLogDirs request")?;
    let data_dir = &shard.config().data_dir;
    let me = shard.shared.node_id();
    let metadata = shard.shared.controller.view().current();
    // Per topic, the partitions asked about (None: every one held here).
    let wanted: Option<BTreeMap<String, std::collections::BTreeSet<i32>>> =
        req.topics.as_ref().map(|topics| {
            topics
                .iter()
                .map(|t| {
                    (
                        t.topic.0.to_string(),
                        t.partitions.iter().copied().collect(),
                    )
                })
                .collect()
        });
    let mut topics = Vec::new();
    for topic in metadata.topics.values() {
        let asked = match &wanted {
            None => None,
            Some(w) => match w.get(&topic.name) {
                Some(partitions) => Some(partitions),
                None => continue,
            },
        };
        let partitions: Vec<DescribeLogDirsPartition> = topic
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.replicas.contains(&me))
            .filter_map(|(index, _)| i32::try_from(index).ok())
            .filter(|index| asked.is_none_or(|a| a.contains(index)))
            .filter_map(|index| {
                let tp = engine::TopicPartition::new(&topic.name, index).ok()?;
                Some(
                    DescribeLogDirsPartition::default()
                        .with_partition_index(index)
                        .with_partition_size(log_bytes(&tp.dir_in(data_dir)))
                        .with_offset_lag(0)
                        .with_is_future_key(false),
                )
            })
            .collect();
        if !partitions.is_empty() {
            topics.push(
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(str_bytes(&topic.name)))
                    .with_partitions(partitions),
            );
        }
    }
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.clone());
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(&dir.display().to_string()))
        .with_topics(topics);
    if request.version >= 4 {
        let (total, usable) = match rustix::fs::statvfs(&dir) {
            Ok(st) => (
                st.f_blocks.saturating_mul(st.f_frsize),
                st.f_bavail.saturating_mul(st.f_frsize),
            ),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "statvfs of the log directory");
                (0, 0)
            }
        };
        result = result
            .with_total_bytes(i64::try_from(total).unwrap_or(i64::MAX))
            .with_usable_bytes(i64::try_from(usable).unwrap_or(i64::MAX));
    }
    request.respond(&DescribeLogDirsResponse::default().with_results(vec![result]))
}

/// Bytes of a partition's segment files (`*.log`), as Kafka sizes a log; 0 when it has
/// none here yet.
fn log_bytes(dir: &std::path::Path) -> i64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let bytes: u64 = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Kafka's LOG_DIR_NOT_FOUND.
const LOG_DIR_NOT_FOUND: i16 = 57;

/// AlterReplicaLogDirs (API 34): a broker here has one log directory, so a replica can
/// only be "moved" to where it is (answered NONE, a no-op, as Kafka answers a move to a
/// replica's current directory); any other path is LOG_DIR_NOT_FOUND.
pub fn alter_replica_log_dirs(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    use kafka_protocol::messages::AlterReplicaLogDirsRequest;
    use kafka_protocol::messages::alter_replica_log_dirs_response::{
        AlterReplicaLogDirPartitionResult, AlterReplicaLogDirTopicResult,
        AlterReplicaLogDirsResponse,
    };
    let req: AlterReplicaLogDirsRequest = request.decode("AlterReplicaLogDirs request")?;
    let data_dir = &shard.config().data_dir;
    let ours = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.clone());
    let mut results = Vec::new();
    for dir in &req.dirs {
        let target = std::path::Path::new(dir.path.as_str());
        let same = std::fs::canonicalize(target).is_ok_and(|t| t == ours);
        let code = if same {
            error_code::NONE
        } else {
            LOG_DIR_NOT_FOUND
        };
        for topic in &dir.topics {
            results.push(
                AlterReplicaLogDirTopicResult::default()
                    .with_topic_name(topic.name.clone())
                    .with_partitions(
                        topic
                            .partitions
                            .iter()
                            .map(|p| {
                                AlterReplicaLogDirPartitionResult::default()
                                    .with_partition_index(*p)
                                    .with_error_code(code)
                            })
                            .collect(),
                    ),
            );
        }
    }
    request.respond(&AlterReplicaLogDirsResponse::default().with_results(results))
}

/// The controller quorum's log, as Kafka names it in DescribeQuorum.
const METADATA_TOPIC: &str = "__cluster_metadata";

/// DescribeQuorum (API 55): the controller quorum's Raft state from the active controller
/// (asked through this node's controller, which forwards it, as Kafka's brokers forward
/// it): leader, epoch (Raft's term), high watermark, and per voter how far it holds the
/// log and when it last moved and was caught up. Every voter is a broker here (combined
/// mode), so there are no observers. v2 lists the voters' controller endpoints.
pub async fn describe_quorum(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    use kafka_protocol::messages::DescribeQuorumRequest;
    use kafka_protocol::messages::describe_quorum_response::{
        DescribeQuorumResponse, Listener, Node, PartitionData, ReplicaState, TopicData,
    };
    let req: DescribeQuorumRequest = request.decode("DescribeQuorum request")?;
    let v = request.version;
    let asks_metadata_log = req.topics.len() == 1
        && req.topics[0].topic_name.0.as_str() == METADATA_TOPIC
        && req.topics[0].partitions.len() == 1
        && req.topics[0].partitions[0].partition_index == 0;
    let answer = |partition: PartitionData| {
        DescribeQuorumResponse::default().with_topics(vec![
            TopicData::default()
                .with_topic_name(TopicName(str_bytes(METADATA_TOPIC)))
                .with_partitions(vec![partition.with_partition_index(0)]),
        ])
    };
    if !asks_metadata_log {
        return request.respond(&answer(
            PartitionData::default().with_error_code(error_code::UNKNOWN_TOPIC_OR_PARTITION),
        ));
    }
    let state = match shard.shared.controller.describe_quorum().await {
        Ok(state) => state,
        Err(e) => {
            let partition =
                PartitionData::default().with_error_code(error_code::NOT_LEADER_OR_FOLLOWER);
            let partition = if v >= 2 {
                partition.with_error_message(Some(str_bytes(&e.to_string())))
            } else {
                partition
            };
            return request.respond(&answer(partition));
        }
    };
    let voters = state
        .voters
        .iter()
        .map(|voter| {
            let r = ReplicaState::default()
                .with_replica_id(BrokerId(voter.id))
                .with_log_end_offset(voter.log_end_offset);
            if v >= 1 {
                r.with_last_fetch_timestamp(voter.last_fetch_ms)
                    .with_last_caught_up_timestamp(voter.last_caught_up_ms)
            } else {
                r
            }
        })
        .collect();
    let mut response = answer(
        PartitionData::default()
            .with_leader_id(BrokerId(state.leader_id))
            .with_leader_epoch(state.leader_epoch)
            .with_high_watermark(state.high_watermark)
            .with_current_voters(voters),
    );
    if v >= 2 {
        let endpoints = shard
            .config()
            .controller_quorum_voters
            .as_deref()
            .and_then(|text| cluster::parse_voters(text).ok())
            .unwrap_or_default();
        response = response.with_nodes(
            state
                .voters
                .iter()
                .map(|voter| {
                    let listeners = endpoints
                        .iter()
                        .filter(|e| e.id == voter.id)
                        .map(|e| {
                            Listener::default()
                                .with_name(str_bytes("CONTROLLER"))
                                .with_host(str_bytes(&e.addr.ip().to_string()))
                                .with_port(e.addr.port())
                        })
                        .collect();
                    Node::default()
                        .with_node_id(BrokerId(voter.id))
                        .with_listeners(listeners)
                })
                .collect(),
        );
    }
    request.respond(&response)
}
