//! Group APIs: FindCoordinator (0-2), JoinGroup (0-5), SyncGroup (0-3), Heartbeat (0-3),
//! LeaveGroup (0-3), OffsetCommit (2-7), OffsetFetch (1-5), ListGroups (0-2),
//! DescribeGroups (0-4). This single broker coordinates every group.

use std::rc::Rc;
use std::time::Instant;

use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest, SyncGroupResponse, TopicName,
};

use super::{Request, str_bytes};
use crate::fetch_response::Piece;
use crate::groups::coordinator::{JoinArgs, JoinOutcome, Reply, SyncOutcome};
use crate::groups::offsets::{Committed, OFFSET_METADATA_BYTES_MAX};
use crate::protocol::{DecodeError, error_code};
use crate::shard::Shard;

pub fn find_coordinator(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let _: FindCoordinatorRequest = request.decode("FindCoordinator request")?;
    let config = shard.config();
    let response = FindCoordinatorResponse::default()
        .with_node_id(BrokerId(shard.shared.node_id()))
        .with_host(str_bytes(&config.advertised_host()))
        .with_port(config.advertised_port());
    request.respond(&response)
}

pub async fn join_group(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: JoinGroupRequest = request.decode("JoinGroup request")?;
    let args = JoinArgs {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if request.version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        client_id: request.client_id.clone(),
        client_host: request.client_host.clone(),
        requires_known_member_id: request.version >= 4,
    };
    let reply = shard.shared.groups().join(args, Instant::now());
    let outcome = match reply {
        Reply::Now(o) => o,
        Reply::Later(rx) => rx.await.unwrap_or_else(|_| JoinOutcome {
            error_code: error_code::REBALANCE_IN_PROGRESS,
            generation_id: -1,
            ..JoinOutcome::default()
        }),
    };
    let mut response = JoinGroupResponse::default()
        .with_error_code(outcome.error_code)
        .with_generation_id(outcome.generation_id)
        .with_protocol_name(outcome.protocol_name.as_deref().map(str_bytes))
        .with_leader(str_bytes(&outcome.leader))
        .with_member_id(str_bytes(&outcome.member_id))
        .with_members(
            outcome
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    let m = JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&id))
                        .with_metadata(metadata);
                    if request.version >= 5 {
                        m.with_group_instance_id(instance.as_deref().map(str_bytes))
                    } else {
                        m
                    }
                })
                .collect(),
        );
    // protocol_name may be null only from v7 on (Java's reader refuses it earlier).
    response.protocol_name = response.protocol_name.or(Some(str_bytes("")));
    request.respond(&response)
}

pub async fn sync_group(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: SyncGroupRequest = request.decode("SyncGroup request")?;
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let reply = shard.shared.groups().sync(
        req.group_id.0.as_str(),
        req.generation_id,
        req.member_id.as_str(),
        assignments,
        Instant::now(),
    );
    let outcome = match reply {
        Reply::Now(o) => o,
        Reply::Later(rx) => rx.await.unwrap_or(SyncOutcome {
            error_code: error_code::REBALANCE_IN_PROGRESS,
            ..SyncOutcome::default()
        }),
    };
    request.respond(
        &SyncGroupResponse::default()
            .with_error_code(outcome.error_code)
            .with_assignment(outcome.assignment),
    )
}

pub fn heartbeat(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: HeartbeatRequest = request.decode("Heartbeat request")?;
    let code = shard.shared.groups().heartbeat(
        req.group_id.0.as_str(),
        req.generation_id,
        req.member_id.as_str(),
        Instant::now(),
    );
    request.respond(&HeartbeatResponse::default().with_error_code(code))
}

pub fn leave_group(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: LeaveGroupRequest = request.decode("LeaveGroup request")?;
    let ids: Vec<String> = if request.version >= 3 {
        req.members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect()
    } else {
        vec![req.member_id.to_string()]
    };
    let results = shard
        .shared
        .groups()
        .leave(req.group_id.0.as_str(), &ids, Instant::now());
    let response = if request.version >= 3 {
        LeaveGroupResponse::default().with_members(
            results
                .into_iter()
                .map(|(id, code)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(&id))
                        .with_error_code(code)
                })
                .collect(),
        )
    } else {
        LeaveGroupResponse::default()
            .with_error_code(results.first().map_or(error_code::NONE, |r| r.1))
    };
    request.respond(&response)
}

pub fn offset_commit(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: OffsetCommitRequest = request.decode("OffsetCommit request")?;
    let group = req.group_id.0.to_string();
    let check = shard.shared.groups().check_commit(
        &group,
        req.generation_id_or_member_epoch,
        req.member_id.as_str(),
        Instant::now(),
    );
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
    if !commits.is_empty()
        && let Err(e) = shard.shared.offsets().commit(&group, commits)
    {
        tracing::error!(%group, error = %e, "cannot store committed offsets");
        for t in &mut topics {
            for p in &mut t.partitions {
                if p.error_code == error_code::NONE {
                    p.error_code = error_code::COORDINATOR_NOT_AVAILABLE;
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

pub fn list_groups(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let _: ListGroupsRequest = request.decode("ListGroups request")?;
    let mut listed = shard.shared.groups().list();
    for g in shard.shared.offsets().groups() {
        if !listed.iter().any(|(id, _, _)| *id == g) {
            listed.push((
                g,
                "consumer".into(),
                crate::groups::coordinator::GroupState::Empty,
            ));
        }
    }
    let groups = listed
        .into_iter()
        .map(|(id, protocol_type, _)| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&id)))
                .with_protocol_type(str_bytes(&protocol_type))
        })
        .collect();
    request.respond(&ListGroupsResponse::default().with_groups(groups))
}

pub fn describe_groups(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: DescribeGroupsRequest = request.decode("DescribeGroups request")?;
    let has_offsets = shard.shared.offsets().groups();
    let coordinator = shard.shared.groups();
    let groups = req
        .groups
        .iter()
        .map(|id| {
            let described = DescribedGroup::default().with_group_id(id.clone());
            match coordinator.describe(id.0.as_str()) {
                // A group with committed offsets but no live members (after a restart, or
                // standalone committers) is Empty, not Dead, as in Kafka.
                None if has_offsets.contains(&id.0.to_string()) => described
                    .with_group_state(str_bytes("Empty"))
                    .with_protocol_type(str_bytes("consumer")),
                None => described.with_group_state(str_bytes("Dead")),
                Some(view) => described
                    .with_group_state(str_bytes(view.state.name()))
                    .with_protocol_type(str_bytes(&view.protocol_type))
                    .with_protocol_data(str_bytes(&view.protocol))
                    .with_members(
                        view.members
                            .into_iter()
                            .map(
                                |(member, instance, client_id, host, metadata, assignment)| {
                                    let m = DescribedGroupMember::default()
                                        .with_member_id(str_bytes(&member))
                                        .with_client_id(str_bytes(&client_id))
                                        .with_client_host(str_bytes(&host))
                                        .with_member_metadata(metadata)
                                        .with_member_assignment(assignment);
                                    if request.version >= 4 {
                                        m.with_group_instance_id(instance.as_deref().map(str_bytes))
                                    } else {
                                        m
                                    }
                                },
                            )
                            .collect(),
                    ),
            }
        })
        .collect();
    drop(coordinator);
    request.respond(&DescribeGroupsResponse::default().with_groups(groups))
}

/// InitProducerId (0-1): a fresh producer id, epoch 0, for idempotent producers.
/// Transactions are not supported: a transactional id is refused.
pub fn init_producer_id(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
    let req: InitProducerIdRequest = request.decode("InitProducerId request")?;
    let response = if req.transactional_id.is_some() {
        InitProducerIdResponse::default()
            .with_error_code(error_code::INVALID_REQUEST)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    } else {
        match shard.shared.producer_ids().allocate() {
            Ok(id) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(e) => {
                tracing::error!(error = %e, "cannot allocate a producer id");
                InitProducerIdResponse::default()
                    .with_error_code(error_code::COORDINATOR_NOT_AVAILABLE)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
            }
        }
    };
    request.respond(&response)
}
