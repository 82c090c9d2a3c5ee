//! Produce (v3-10; v0-2 are advertised for librdkafka's sake and refused at the front
//! door). Each partition's batch goes to the core that owns it; acks=1 answers once
//! written, acks=all once durable under the flush policy, acks=0 not at all. From v10 a
//! partition refused with NOT_LEADER_OR_FOLLOWER names its current leader and that
//! broker's endpoint (KIP-951), so the producer retries there without a metadata round.

use std::rc::Rc;

use engine::{AppendWait, TopicPartition};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};

use super::{Request, str_bytes};
use crate::control::groups::offsets_topic::OFFSETS_TOPIC;
use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{DecodeError, error_code};
use crate::runtime::shard::{PartitionError, Shard};

/// For a produce request that names no timeout.
const DEFAULT_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

struct Outcome {
    code: i16,
    base_offset: i64,
    log_start_offset: i64,
    message: Option<String>,
}

impl Outcome {
    fn error(code: i16, message: Option<String>) -> Self {
        Self {
            code,
            base_offset: -1,
            log_start_offset: -1,
            message,
        }
    }
}

pub async fn handle(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: ProduceRequest = request.decode("Produce request")?;
    let acks_ok = matches!(req.acks, -1..=1);
    let wait = if req.acks == -1 {
        AppendWait::Durable
    } else {
        AppendWait::Written
    };

    let mut pending = Vec::new();
    for topic in &req.topic_data {
        let name = topic.name.0.to_string();
        for pd in &topic.partition_data {
            let outcome = if !acks_ok {
                Err(Outcome::error(error_code::INVALID_REQUIRED_ACKS, None))
            } else {
                check_partition(shard, &name, pd.index, pd.records.as_deref())
            };
            pending.push((name.clone(), pd.index, outcome, pd.records.clone()));
        }
    }
    if req.acks == 0 {
        // Nobody waits for an answer: queue the appends in order and go on reading.
        // A refusal closes the connection, as Kafka closes it.
        for (name, index, checked, records) in pending {
            match (checked, records) {
                (Ok(tp), Some(records)) => {
                    shard
                        .append_unacknowledged(tp, records, &request.unacked_refusals)
                        .await
                }
                (checked, _) => {
                    let (code, message) = checked.err().map_or(
                        (error_code::INVALID_RECORD, Some("no records".to_string())),
                        |o| (o.code, o.message),
                    );
                    tracing::debug!(topic = %name, partition = index, code, "acks=0 produce refused");
                    let why = message.as_deref().unwrap_or("refused");
                    request.unacked_refusals.note_code(&name, index, code, &why);
                }
            }
        }
        return Ok(None);
    }
    // acks=all waits for the ISR at most the request's timeout (its append stays written).
    let ack_timeout = if req.timeout_ms > 0 {
        std::time::Duration::from_millis(req.timeout_ms as u64)
    } else {
        DEFAULT_ACK_TIMEOUT
    };
    let appends = pending.into_iter().map(|(name, index, checked, records)| async move {
        let outcome = match (checked, records) {
            (Err(outcome), _) => outcome,
            (Ok(tp), Some(records)) => match compio::time::timeout(
                ack_timeout,
                shard.append(tp, records, wait),
            )
            .await
            .unwrap_or(Err(PartitionError::Replication {
                code: error_code::REQUEST_TIMED_OUT,
                reason: "not replicated to the ISR within the request's timeout",
            })) {
                Ok(info) => Outcome {
                    code: error_code::NONE,
                    base_offset: info.base_offset,
                    log_start_offset: info.log_start_offset,
                    message: None,
                },
                Err(e) => {
                    tracing::debug!(topic = %name, partition = index, error = %e, "produce refused");
                    Outcome::error(e.code(), Some(e.to_string()))
                }
            },
            (Ok(_), None) => Outcome::error(error_code::INVALID_RECORD, Some("no records".into())),
        };
        (name, index, outcome)
    });
    let results = futures_util::future::join_all(appends).await;
    let mut topics: Vec<TopicProduceResponse> = Vec::new();
    let mut leaders = std::collections::BTreeSet::new();
    for (name, index, outcome) in results {
        let mut partition = PartitionProduceResponse::default()
            .with_index(index)
            .with_error_code(outcome.code)
            .with_base_offset(outcome.base_offset);
        // Fields the version does not carry must stay at their defaults.
        if request.version >= 5 {
            partition = partition.with_log_start_offset(outcome.log_start_offset);
        }
        if request.version >= 8 {
            partition = partition.with_error_message(outcome.message.as_deref().map(str_bytes));
        }
        if request.version >= LEADER_HINTS && outcome.code == error_code::NOT_LEADER_OR_FOLLOWER {
            let route = shard.partition_table().route(&name, index);
            if let Some(route) = route.filter(|r| r.leader >= 0) {
                leaders.insert(route.leader);
                partition = partition.with_current_leader(
                    LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(route.leader))
                        .with_leader_epoch(route.leader_epoch),
                );
            }
        }
        match topics.iter_mut().find(|t| t.name.0.as_str() == name) {
            Some(t) => t.partition_responses.push(partition),
            None => topics.push(
                TopicProduceResponse::default()
                    .with_name(kafka_protocol::messages::TopicName(str_bytes(&name)))
                    .with_partition_responses(vec![partition]),
            ),
        }
    }
    let table = shard.partition_table();
    let node_endpoints = leaders
        .into_iter()
        .filter_map(|id| {
            let (host, port) = table.endpoint(id)?;
            Some(
                NodeEndpoint::default()
                    .with_node_id(BrokerId(id))
                    .with_host(str_bytes(host))
                    .with_port(port),
            )
        })
        .collect();
    drop(table);
    request.respond(
        &ProduceResponse::default()
            .with_responses(topics)
            .with_node_endpoints(node_endpoints),
    )
}

/// The first version whose NOT_LEADER_OR_FOLLOWER names the new leader (KIP-951).
const LEADER_HINTS: i16 = 10;

/// Checks what can be checked before the batch travels to its core: the partition
/// exists and this broker leads it, the records are one batch, and not larger than
/// `message_max_bytes`.
fn check_partition(
    shard: &Shard,
    topic: &str,
    partition: i32,
    records: Option<&[u8]>,
) -> Result<TopicPartition, Outcome> {
    if topic == OFFSETS_TOPIC {
        return Err(Outcome::error(
            error_code::INVALID_TOPIC_EXCEPTION,
            Some(format!("Cannot append to internal topic {topic}")),
        ));
    }
    shard
        .partition_table()
        .check_leader(shard.shared.node_id(), topic, partition)
        .map_err(|code| Outcome::error(code, None))?;
    let tp = TopicPartition::new(topic, partition)
        .map_err(|e| Outcome::error(error_code::INVALID_TOPIC_EXCEPTION, Some(e.to_string())))?;
    check_records(
        records.unwrap_or_default(),
        shard.config().message_max_bytes,
    )
    .map_err(|r| Outcome::error(r.code, Some(r.message)))?;
    Ok(tp)
}

/// Why one partition's records were refused before they reached the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: i16,
    pub message: String,
}

/// The checks on one partition's records that need no broker state: at most
/// `message_max_bytes`, exactly one batch, neither control nor transactional. The engine
/// validates the batch itself (`engine::batch::validate`) when it appends.
pub fn check_records(records: &[u8], message_max_bytes: usize) -> Result<(), Refused> {
    if records.len() > message_max_bytes {
        let e = PartitionError::MessageTooLarge(format!(
            "batch of {} bytes exceeds message.max.bytes {message_max_bytes}",
            records.len()
        ));
        return Err(Refused {
            code: e.code(),
            message: e.to_string(),
        });
    }
    if let Ok(header) = engine::BatchHeader::parse(records) {
        if header.declared_total_bytes() < records.len() as i64 {
            return Err(Refused {
                code: error_code::INVALID_RECORD,
                message: "produce requests must carry exactly one record batch per partition"
                    .into(),
            });
        }
        if header.is_control() || header.is_transactional() {
            // Control records are the broker's to write; transactions are not supported.
            return Err(Refused {
                code: error_code::INVALID_RECORD,
                message: "control and transactional batches are not accepted".into(),
            });
        }
    }
    Ok(())
}
