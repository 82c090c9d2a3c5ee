//! Group membership APIs: FindCoordinator (0-4), JoinGroup (0-9), SyncGroup (0-5),
//! Heartbeat (0-4), LeaveGroup (0-5), ListGroups (0-5), DescribeGroups (0-5),
//! DeleteGroups (0-2); from
//! FindCoordinator v3, JoinGroup v6, SyncGroup v4, Heartbeat v4, LeaveGroup v4, ListGroups
//! v3 and DescribeGroups v5 on, the flexible encodings (KIP-482). Every broker
//! coordinates the groups its clients ask it about (groups move to a replicated offsets
//! topic with the cluster groups work).

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

use super::{Request, str_bytes};
use crate::control::groups::coordinator::{JoinArgs, JoinOutcome, Reply, SyncOutcome};
use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{DecodeError, error_code};
use crate::runtime::shard::Shard;

/// This broker coordinates every group it is asked about. v4+ asks for a batch of keys
/// (KIP-699) and is answered per key.
pub fn find_coordinator(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    let req: FindCoordinatorRequest = request.decode("FindCoordinator request")?;
    let config = shard.config();
    let node = BrokerId(shard.shared.node_id());
    let host = str_bytes(&config.advertised_host());
    let port = config.advertised_port();
    let response = if request.version >= 4 {
        FindCoordinatorResponse::default().with_coordinators(
            req.coordinator_keys
                .iter()
                .map(|key| {
                    Coordinator::default()
                        .with_key(key.clone())
                        .with_node_id(node)
                        .with_host(host.clone())
                        .with_port(port)
                })
                .collect(),
        )
    } else {
        FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(host)
            .with_port(port)
    };
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
        client_host: format!("/{}", request.peer),
        requires_known_member_id: request.version >= 4,
        supports_skip_assignment: request.version >= 9,
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
        Reply::Later(rx) => rx.await.unwrap_or(SyncOutcome {
            error_code: error_code::REBALANCE_IN_PROGRESS,
            ..SyncOutcome::default()
        }),
    };
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
    let code = shard.shared.groups().heartbeat(
        req.group_id.0.as_str(),
        req.generation_id,
        (
            req.member_id.as_str(),
            req.group_instance_id.as_ref().map(|i| i.as_str()),
        ),
        Instant::now(),
    );
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
    let codes = shard
        .shared
        .groups()
        .leave(req.group_id.0.as_str(), &members, Instant::now());
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

/// DeleteGroups: an empty group (no members) is forgotten with its committed offsets;
/// one with members is refused (NON_EMPTY_GROUP), an unknown one is GROUP_ID_NOT_FOUND.
pub fn delete_groups(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    use kafka_protocol::messages::DeleteGroupsRequest;
    use kafka_protocol::messages::delete_groups_response::{
        DeletableGroupResult, DeleteGroupsResponse,
    };
    let req: DeleteGroupsRequest = request.decode("DeleteGroups request")?;
    let results = req
        .groups_names
        .iter()
        .map(|id| {
            let group = id.0.as_str();
            // Membership first, then the offsets, under the coordinator's lock: no member
            // can join between the check and the deletion (no path holds the offsets lock
            // while it takes the coordinator's).
            let mut coordinator = shard.shared.groups();
            let code = match coordinator.delete(group) {
                Err(code) => code,
                Ok(had_members_state) => match shard.shared.offsets().forget_group(group) {
                    Ok(had_offsets) if had_offsets || had_members_state => error_code::NONE,
                    Ok(_) => error_code::GROUP_ID_NOT_FOUND,
                    Err(e) => {
                        tracing::error!(group, error = %e, "cannot forget a deleted group's offsets");
                        error_code::KAFKA_STORAGE_ERROR
                    }
                },
            };
            drop(coordinator);
            if code == error_code::NONE {
                tracing::info!(group, "deleted group");
            }
            DeletableGroupResult::default()
                .with_group_id(id.clone())
                .with_error_code(code)
        })
        .collect();
    request.respond(&DeleteGroupsResponse::default().with_results(results))
}
