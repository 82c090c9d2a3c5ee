//! Committed offsets: OffsetCommit (2-7) and OffsetFetch (1-5), served by the group's
//! coordinator from `__consumer_offsets` (`control::groups::hosting`).

use std::rc::Rc;
use std::time::Instant;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetFetchRequest, TopicName};

use super::groups::coordinating;
use super::{Request, str_bytes};
use crate::control::groups::hosting;
use crate::control::groups::offsets::{Committed, OFFSET_METADATA_BYTES_MAX};
use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{DecodeError, error_code};
use crate::runtime::shard::Shard;

/// OffsetCommit: checked against the group's generation, then written to the group's
/// `__consumer_offsets` partition and answered once the ISR has it.
pub async fn offset_commit(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: OffsetCommitRequest = request.decode("OffsetCommit request")?;
    let group = req.group_id.0.to_string();
    let coordinated = coordinating(shard, &group);
    let check = match coordinated {
        Err(code) => code,
        Ok(_) => shard.shared.groups().check_commit(
            &group,
            req.generation_id_or_member_epoch,
            (
                req.member_id.as_str(),
                req.group_instance_id.as_ref().map(|i| i.as_str()),
            ),
            Instant::now(),
        ),
    };
    let mut commits = Vec::new();
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in &req.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let metadata = p.committed_metadata.as_ref().map(|m| m.to_string());
            let known = shard
                .shared
                .registry
                .get(topic.name.0.as_str())
                .is_some_and(|m| (0..m.partitions).contains(&p.partition_index));
            let code = if check != error_code::NONE {
                check
            } else if !known {
                error_code::UNKNOWN_TOPIC_OR_PARTITION
            } else if metadata
                .as_ref()
                .is_some_and(|m| m.len() > OFFSET_METADATA_BYTES_MAX)
            {
                error_code::OFFSET_METADATA_TOO_LARGE
            } else {
                commits.push((
                    topic.name.0.to_string(),
                    p.partition_index,
                    Committed {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                    },
                ));
                error_code::NONE
            };
            partitions.push(
                OffsetCommitResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(code),
            );
        }
        topics.push(
            OffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    if let (false, Ok((p, epoch))) = (commits.is_empty(), coordinated) {
        let now = hosting::now_ms();
        let records = commits
            .into_iter()
            .map(|(topic, partition, c)| ((group.clone(), topic, partition), Some((c, now))))
            .collect();
        if let Err(code) = hosting::write(shard, p, epoch, records).await {
            tracing::debug!(%group, code, "offset commit not stored");
            for t in &mut topics {
                for p in &mut t.partitions {
                    if p.error_code == error_code::NONE {
                        p.error_code = code;
                    }
                }
            }
        }
    }
    request.respond(&OffsetCommitResponse::default().with_topics(topics))
}

pub fn offset_fetch(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: OffsetFetchRequest = request.decode("OffsetFetch request")?;
    let group = req.group_id.0.to_string();
    if let Err(code) = coordinating(shard, &group) {
        // v2+ says it once; v1 only per partition.
        let topics = req
            .topics
            .iter()
            .flatten()
            .map(|t| {
                OffsetFetchResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|&p| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(-1)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        let response = OffsetFetchResponse::default().with_topics(topics);
        return request.respond(&if request.version >= 2 {
            response.with_error_code(code)
        } else {
            response
        });
    }
    let store = shard.shared.offsets();
    let wanted: Vec<(String, Vec<i32>)> = match &req.topics {
        Some(topics) => topics
            .iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect(),
        None => {
            let mut by_topic: Vec<(String, Vec<i32>)> = Vec::new();
            for (t, p, _) in store.group_partitions(&group) {
                match by_topic.iter_mut().find(|(name, _)| *name == t) {
                    Some((_, ps)) => ps.push(p),
                    None => by_topic.push((t, vec![p])),
                }
            }
            by_topic
        }
    };
    let topics = wanted
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|p| {
                    let found = store.fetch(&group, &name, p);
                    let r = OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(found.map_or(-1, |c| c.offset))
                        .with_metadata(Some(str_bytes(
                            found.and_then(|c| c.metadata.as_deref()).unwrap_or(""),
                        )));
                    if request.version >= 5 {
                        r.with_committed_leader_epoch(found.map_or(-1, |c| c.leader_epoch))
                    } else {
                        r
                    }
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partitions(partitions)
        })
        .collect();
    drop(store);
    request.respond(&OffsetFetchResponse::default().with_topics(topics))
}
