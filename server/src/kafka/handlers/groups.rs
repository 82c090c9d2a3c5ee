//! Group membership APIs: FindCoordinator (0-4), JoinGroup (0-9), SyncGroup (0-5),
//! Heartbeat (0-4), LeaveGroup (0-5), ListGroups (0-5), DescribeGroups (0-5),
//! DeleteGroups (0-2); from
//! FindCoordinator v3, JoinGroup v6, SyncGroup v4, Heartbeat v4, LeaveGroup v4, ListGroups
//! v3 and DescribeGroups v5 on, the flexible encodings (KIP-482). A group's coordinator
//! is the leader of its `__consumer_offsets` partition; other brokers answer its
//! requests NOT_COORDINATOR, and a new leader COORDINATOR_LOAD_IN_PROGRESS until it has
//! loaded the partition (`control::groups::hosting`).

use std::rc::Rc;
use std::time::Instant;

use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
    SyncGroupRequest, SyncGroupResponse,
};

use kafka_protocol::protocol::StrBytes;

use super::{Request, str_bytes};
use crate::control::groups::coordinator::{
    GroupSnapshot, JoinArgs, JoinOutcome, Reply, SyncOutcome,
};
use crate::control::groups::hosting;
use crate::control::groups::offsets_topic::{self, OFFSETS_TOPIC};
use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{DecodeError, error_code};
use crate::runtime::shard::Shard;

/// The group's coordinator: the leader of its `__consumer_offsets` partition (the
/// topic is created on the first ask). v4+ asks for a batch of keys (KIP-699) and is
/// answered per key. Transactional ids (key type 1) are answered with this broker, as
/// before (transactions are not served).
pub async fn find_coordinator(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: FindCoordinatorRequest = request.decode("FindCoordinator request")?;
    let keys: Vec<StrBytes> = if request.version >= 4 {
        req.coordinator_keys.clone()
    } else {
        vec![req.key.clone()]
    };
    let mut answers = Vec::with_capacity(keys.len());
    for key in keys {
        let found = if req.key_type == 1 {
            Ok(self_endpoint(shard))
        } else {
            coordinator_of(shard, key.as_str()).await
        };
        answers.push((key, found));
    }
    let response = if request.version >= 4 {
        FindCoordinatorResponse::default().with_coordinators(
            answers
                .into_iter()
                .map(|(key, found)| {
                    let c = Coordinator::default().with_key(key);
                    match found {
                        Ok((node, host, port)) => c
                            .with_node_id(BrokerId(node))
                            .with_host(str_bytes(&host))
                            .with_port(port),
                        Err(code) => c
                            .with_node_id(BrokerId(-1))
                            .with_host(str_bytes(""))
                            .with_port(-1)
                            .with_error_code(code),
                    }
                })
                .collect(),
        )
    } else {
        match answers
            .pop()
            .map_or(Err(error_code::INVALID_REQUEST), |(_, found)| found)
        {
            Ok((node, host, port)) => FindCoordinatorResponse::default()
                .with_node_id(BrokerId(node))
                .with_host(str_bytes(&host))
                .with_port(port),
            Err(code) => FindCoordinatorResponse::default()
                .with_error_code(code)
                .with_node_id(BrokerId(-1))
                .with_host(str_bytes(""))
                .with_port(-1),
        }
    };
    request.respond(&response)
}

fn self_endpoint(shard: &Shard) -> (i32, String, i32) {
    let config = shard.config();
    (
        shard.shared.node_id(),
        config.advertised_host(),
        config.advertised_port(),
    )
}

/// The leader of the group's `__consumer_offsets` partition and its endpoint.
async fn coordinator_of(shard: &Rc<Shard>, group: &str) -> Result<(i32, String, i32), i16> {
    let partitions = hosting::ensure_topic(shard).await?;
    let p = offsets_topic::partition_for(group, partitions);
    let table = shard.partition_table();
    let route = table
        .route(OFFSETS_TOPIC, p)
        .ok_or(error_code::COORDINATOR_NOT_AVAILABLE)?;
    if route.leader == shard.shared.node_id() {
        return Ok(self_endpoint(shard));
    }
    if route.leader < 0 {
        return Err(error_code::COORDINATOR_NOT_AVAILABLE);
    }
    let (host, port) = table
        .endpoint(route.leader)
        .ok_or(error_code::COORDINATOR_NOT_AVAILABLE)?;
    Ok((route.leader, host.to_owned(), port))
}

/// Writes the group's current state (or `fallback`) to `__consumer_offsets` in the
/// background, after this answer (best effort: see `hosting::persist_group`).
fn spawn_persist(shard: &Rc<Shard>, group: String, fallback: Option<GroupSnapshot>) {
    let shard = Rc::clone(shard);
    compio::runtime::spawn(async move {
        let _ =
            hosting::persist_group(&shard, group, hosting::GroupRecord::Current { fallback }).await;
    })
    .detach();
}

/// Whether this broker coordinates `group` now: it leads the group's
/// `__consumer_offsets` partition and has loaded it at that leader epoch. The partition
/// and its leader epoch, or why not: NOT_COORDINATOR (another broker leads it),
/// COORDINATOR_LOAD_IN_PROGRESS (it leads it, the load has not finished), or
/// COORDINATOR_NOT_AVAILABLE (no topic yet, or no leader).
pub fn coordinating(shard: &Shard, group: &str) -> Result<(i32, i32), i16> {
    let status = (|| {
        let partitions = shard
            .shared
            .registry
            .get(OFFSETS_TOPIC)
            .map(|m| m.partitions)
            .ok_or(error_code::COORDINATOR_NOT_AVAILABLE)?;
        let p = offsets_topic::partition_for(group, partitions);
        let route = shard
            .partition_table()
            .route(OFFSETS_TOPIC, p)
            .ok_or(error_code::COORDINATOR_NOT_AVAILABLE)?;
        if route.leader < 0 {
            return Err(error_code::COORDINATOR_NOT_AVAILABLE);
        }
        if route.leader != shard.shared.node_id() {
            return Err(error_code::NOT_COORDINATOR);
        }
        match shard.shared.offsets().status(group) {
            Ok((q, epoch)) if q == p && epoch == route.leader_epoch => Ok((p, epoch)),
            // Not hosted yet, loading, or hosted at another epoch than this core's table
            // says: the hosting loop catches up within its tick.
            _ => Err(error_code::COORDINATOR_LOAD_IN_PROGRESS),
        }
    })();
    if let Err(code) = status {
        tracing::debug!(group, code, "not coordinating the group here now");
    }
    status
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
        client_host: format!("/{}", request.peer),
        requires_known_member_id: request.version >= 4,
        supports_skip_assignment: request.version >= 9,
    };
    let group = args.group_id.clone();
    let refused = |code| JoinOutcome {
        error_code: code,
        generation_id: -1,
        member_id: req.member_id.to_string(),
        ..JoinOutcome::default()
    };
    let reply = match coordinating(shard, &group) {
        Err(code) => Reply::Now(refused(code)),
        // Its own statement: the coordinator's lock must be released before any await.
        Ok(_) => shard.shared.groups().join(args, Instant::now()),
    };
    if let Reply::Now(o) = &reply
        && o.error_code == error_code::NONE
    {
        // Answered at once without a rebalance (a static member back under a new member
        // id, KIP-345): the stable group changed, keep it.
        spawn_persist(shard, group.clone(), None);
    }
    let outcome = match reply {
        Reply::Now(o) => o,
        // The group was dropped while the member waited: coordination moved away.
        Reply::Later(rx) => rx.await.unwrap_or_else(|_| {
            refused(
                coordinating(shard, &group)
                    .err()
                    .unwrap_or(error_code::REBALANCE_IN_PROGRESS),
            )
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
    if request.version >= 7 {
        response.protocol_type = outcome.protocol_type.as_deref().map(str_bytes);
    }
    if request.version >= 9 {
        response.skip_assignment = outcome.skip_assignment;
    }
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
    if let Err(code) = coordinating(shard, req.group_id.0.as_str()) {
        return request.respond(&SyncGroupResponse::default().with_error_code(code));
    }
    let from_leader = !req.assignments.is_empty();
    let reply = shard.shared.groups().sync(
        req.group_id.0.as_str(),
        req.generation_id,
        (
            req.member_id.as_str(),
            req.group_instance_id.as_ref().map(|i| i.as_str()),
        ),
        (
            req.protocol_type.as_ref().map(|t| t.as_str()),
            req.protocol_name.as_ref().map(|n| n.as_str()),
        ),
        assignments,
        Instant::now(),
    );
    let outcome = match reply {
        Reply::Now(o) => o,
        Reply::Later(rx) => rx.await.unwrap_or_else(|_| SyncOutcome {
            error_code: coordinating(shard, req.group_id.0.as_str())
                .err()
                .unwrap_or(error_code::REBALANCE_IN_PROGRESS),
            ..SyncOutcome::default()
        }),
    };
    if from_leader && outcome.error_code == error_code::NONE {
        // The new generation is stable: keep it for the next coordinator.
        spawn_persist(shard, req.group_id.0.to_string(), None);
    }
    let mut response = SyncGroupResponse::default()
        .with_error_code(outcome.error_code)
        .with_assignment(outcome.assignment);
    if request.version >= 5 {
        response = response
            .with_protocol_type(outcome.protocol_type.as_deref().map(str_bytes))
            .with_protocol_name(outcome.protocol_name.as_deref().map(str_bytes));
    }
    request.respond(&response)
}

pub fn heartbeat(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: HeartbeatRequest = request.decode("Heartbeat request")?;
    let code = match coordinating(shard, req.group_id.0.as_str()) {
        // As Kafka: a heartbeat while the coordinator loads is not an error (the Java
        // client counts one as a failed heartbeat); the member rejoins after the load.
        Err(error_code::COORDINATOR_LOAD_IN_PROGRESS) => error_code::NONE,
        Err(code) => code,
        Ok(_) => shard.shared.groups().heartbeat(
            req.group_id.0.as_str(),
            req.generation_id,
            (
                req.member_id.as_str(),
                req.group_instance_id.as_ref().map(|i| i.as_str()),
            ),
            Instant::now(),
        ),
    };
    request.respond(&HeartbeatResponse::default().with_error_code(code))
}

pub fn leave_group(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: LeaveGroupRequest = request.decode("LeaveGroup request")?;
    let members: Vec<(String, Option<String>)> = if request.version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    if let Err(code) = coordinating(shard, req.group_id.0.as_str()) {
        return request.respond(&LeaveGroupResponse::default().with_error_code(code));
    }
    let codes = shard
        .shared
        .groups()
        .leave(req.group_id.0.as_str(), &members, Instant::now());
    // The last member gone: the group's kept state says so (no members to restore).
    let emptied = shard
        .shared
        .groups()
        .snapshot(req.group_id.0.as_str())
        .filter(|s| s.members.is_empty());
    if let Some(state) = emptied {
        spawn_persist(shard, req.group_id.0.to_string(), Some(state));
    }
    let response = if request.version >= 3 {
        LeaveGroupResponse::default().with_members(
            members
                .into_iter()
                .zip(codes)
                .map(|((id, instance), code)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(&id))
                        .with_group_instance_id(instance.as_deref().map(str_bytes))
                        .with_error_code(code)
                })
                .collect(),
        )
    } else {
        LeaveGroupResponse::default()
            .with_error_code(codes.first().copied().unwrap_or(error_code::NONE))
    };
    request.respond(&response)
}

pub fn list_groups(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: ListGroupsRequest = request.decode("ListGroups request")?;
    let mut listed = shard.shared.groups().list();
    for g in shard.shared.offsets().groups() {
        if !listed.iter().any(|(id, _, _)| *id == g) {
            listed.push((
                g,
                "consumer".into(),
                crate::control::groups::coordinator::GroupState::Empty,
            ));
        }
    }
    // v4 filters by state, v5 by group type; every group here is a classic one.
    let state_ok = |state: &str| {
        req.states_filter.is_empty()
            || req
                .states_filter
                .iter()
                .any(|s| s.as_str().eq_ignore_ascii_case(state))
    };
    let type_ok = req.types_filter.is_empty()
        || req
            .types_filter
            .iter()
            .any(|t| t.as_str().eq_ignore_ascii_case("classic"));
    let groups = listed
        .into_iter()
        .filter(|(_, _, state)| type_ok && state_ok(state.name()))
        .map(|(id, protocol_type, state)| {
            let mut g = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&id)))
                .with_protocol_type(str_bytes(&protocol_type));
            if request.version >= 4 {
                g = g.with_group_state(str_bytes(state.name()));
            }
            if request.version >= 5 {
                g = g.with_group_type(str_bytes("classic"));
            }
            g
        })
        .collect();
    request.respond(&ListGroupsResponse::default().with_groups(groups))
}

pub fn describe_groups(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: DescribeGroupsRequest = request.decode("DescribeGroups request")?;
    let refused: Vec<(String, i16)> = req
        .groups
        .iter()
        .filter_map(|id| {
            let code = coordinating(shard, id.0.as_str()).err()?;
            Some((id.0.to_string(), code))
        })
        .collect();
    let has_offsets = shard.shared.offsets().groups();
    let coordinator = shard.shared.groups();
    let groups = req
        .groups
        .iter()
        .map(|id| {
            let described = DescribedGroup::default().with_group_id(id.clone());
            if let Some(code) = refused
                .iter()
                .find(|(g, _)| g == id.0.as_str())
                .map(|(_, c)| *c)
            {
                return described.with_error_code(code);
            }
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

/// DeleteGroups: an empty group (no members) is forgotten and its committed offsets
/// deleted (tombstones in `__consumer_offsets`, acknowledged as a commit is); one with
/// members is refused (NON_EMPTY_GROUP), an unknown one is GROUP_ID_NOT_FOUND.
pub async fn delete_groups(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    use kafka_protocol::messages::DeleteGroupsRequest;
    use kafka_protocol::messages::delete_groups_response::{
        DeletableGroupResult, DeleteGroupsResponse,
    };
    let req: DeleteGroupsRequest = request.decode("DeleteGroups request")?;
    let mut results = Vec::with_capacity(req.groups_names.len());
    for id in &req.groups_names {
        let group = id.0.as_str();
        let code = match coordinating(shard, group) {
            Err(code) => code,
            Ok((p, _)) => {
                // Membership first: a member joining after this starts a new group.
                let membership = shard.shared.groups().delete(group);
                match membership {
                    Err(code) => code,
                    Ok(had_members_state) => {
                        let keys = shard.shared.offsets().keys_of_group(group);
                        let had_offsets = !keys.is_empty();
                        let had_state = shard.shared.offsets().has_group_state(p, group);
                        match hosting::delete_keys(shard, p, keys).await {
                            Ok(()) if had_state => match hosting::persist_group(
                                shard,
                                group.to_owned(),
                                hosting::GroupRecord::Delete,
                            )
                            .await
                            {
                                Ok(()) => error_code::NONE,
                                Err(code) => code,
                            },
                            Ok(()) if had_offsets || had_members_state => error_code::NONE,
                            Ok(()) => error_code::GROUP_ID_NOT_FOUND,
                            Err(code) => code,
                        }
                    }
                }
            }
        };
        if code == error_code::NONE {
            tracing::info!(group, "deleted group");
        }
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id.clone())
                .with_error_code(code),
        );
    }
    request.respond(&DeleteGroupsResponse::default().with_results(results))
}
