//! The classic Kafka group coordinator: a state machine per group (empty, preparing
//! rebalance, completing rebalance, stable, dead), member ids, generations, protocol
//! selection, session and rebalance timeouts. The group leader client computes the
//! assignment; the coordinator only relays it.
//!
//! Static membership (KIP-345): a member that names a `group.instance.id` is known by it.
//! It joins without the MEMBER_ID_REQUIRED round; when it comes back under a new member
//! id (a restarted process) within its session timeout, it takes the old id's place and
//! assignment, and a stable group whose member metadata did not change does not
//! rebalance. The id it replaced is fenced (FENCED_INSTANCE_ID), and so is any request
//! naming the instance with another member id.
//!
//! This is control-plane state, shared by all cores behind one mutex (never taken on the
//! produce or fetch path). Join and Sync answers that must wait are handed back as
//! oneshot receivers, awaited after the lock is released.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use crate::kafka::protocol::error_code;

/// Bounds on the session timeout a member may ask for (Kafka's
/// group.min/max.session.timeout.ms, with a lower floor for tests).
pub const SESSION_TIMEOUT_MS_MIN: i32 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;
/// Most members one group may hold (Kafka's group.max.size is unbounded by default).
pub const GROUP_MEMBERS_MAX: usize = 1_000;
/// Most groups the coordinator tracks.
pub const GROUPS_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct JoinOutcome {
    pub error_code: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: (member id, group instance id, metadata).
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// A static leader back in a stable group: the assignment stands, the leader need not
    /// compute one (JoinGroup v9's `skip_assignment`, KIP-814).
    pub skip_assignment: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    pub error_code: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

/// An answer now, or one to await once the lock is released.
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

pub struct JoinArgs {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub client_id: String,
    pub client_host: String,
    /// v4+ clients get MEMBER_ID_REQUIRED on their first join.
    pub requires_known_member_id: bool,
    /// v9+ clients can be told to skip the assignment (KIP-814).
    pub supports_skip_assignment: bool,
}

struct Member {
    seq: u64,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
}

impl Member {
    /// The member's metadata for the group's chosen protocol.
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }
}

pub struct Group {
    id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until when they may rejoin.
    pending: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
}

impl Group {
    fn new(id: String) -> Self {
        Self {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
        }
    }
}

/// A group's state as `__consumer_offsets` keeps it (Kafka's `GroupMetadataValue`):
/// written when a generation becomes stable and when the group empties, read by the
/// next coordinator so that its members carry on without a rebalance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupSnapshot {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// When the snapshot was taken (ms since the epoch).
    pub state_timestamp: i64,
    pub members: Vec<MemberSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberSnapshot {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

fn snapshot_of(group: &Group) -> GroupSnapshot {
    let protocol = group.protocol.clone().unwrap_or_default();
    GroupSnapshot {
        protocol_type: group.protocol_type.clone().unwrap_or_default(),
        generation: group.generation,
        protocol: group.protocol.clone(),
        leader: group.leader.clone(),
        state_timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        members: group
            .members
            .iter()
            .map(|(id, m)| MemberSnapshot {
                member_id: id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                rebalance_timeout_ms: i32::try_from(m.rebalance_timeout.as_millis())
                    .unwrap_or(i32::MAX),
                session_timeout_ms: i32::try_from(m.session_timeout.as_millis())
                    .unwrap_or(i32::MAX),
                subscription: m.metadata_for(&protocol),
                assignment: m.assignment.clone(),
            })
            .collect(),
    }
}

/// A group as DescribeGroups shows it.
pub struct GroupView {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

pub struct Coordinator {
    groups: HashMap<String, Group>,
    next_member: u64,
    /// Random, drawn at each start and part of every member id: ids never repeat across
    /// restarts, so a request from before a crash (a commit the client retries) cannot
    /// pass for a member of this incarnation, whose generations start again at 1.
    incarnation: u64,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self {
            groups: HashMap::new(),
            next_member: 0,
            incarnation: incarnation_nonce(),
        }
    }
}

/// 64 random bits from the kernel; the clock and the pid if getrandom is unavailable.
fn incarnation_nonce() -> u64 {
    let mut bytes = [0u8; 8];
    match rustix::rand::getrandom(&mut bytes[..], rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_le_bytes(bytes),
        _ => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 40)
        }
    }
}

impl Coordinator {
    pub fn join(&mut self, args: JoinArgs, now: Instant) -> Reply<JoinOutcome> {
        let fail = |code: i16, member_id: &str| {
            Reply::Now(JoinOutcome {
                error_code: code,
                generation_id: -1,
                member_id: member_id.to_owned(),
                ..JoinOutcome::default()
            })
        };
        if args.group_id.is_empty() {
            return fail(error_code::INVALID_GROUP_ID, &args.member_id);
        }
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&args.session_timeout_ms) {
            return fail(error_code::INVALID_SESSION_TIMEOUT, &args.member_id);
        }
        if args.protocols.is_empty() || args.protocol_type.is_empty() {
            return fail(error_code::INCONSISTENT_GROUP_PROTOCOL, &args.member_id);
        }
        let exists = self.groups.contains_key(&args.group_id);
        if !exists && !args.member_id.is_empty() {
            return fail(error_code::UNKNOWN_MEMBER_ID, &args.member_id);
        }
        if !exists && self.groups.len() >= GROUPS_MAX {
            return fail(error_code::GROUP_MAX_SIZE_REACHED, &args.member_id);
        }
        self.next_member += 1;
        let seq = self.next_member;
        let incarnation = self.incarnation;
        let group = self
            .groups
            .entry(args.group_id.clone())
            .or_insert_with(|| Group::new(args.group_id.clone()));
        if group.state == GroupState::Empty {
            // A group that emptied may be reused by another kind of client.
            group.protocol_type = None;
        }
        if group
            .protocol_type
            .as_deref()
            .is_some_and(|t| t != args.protocol_type)
        {
            return fail(error_code::INCONSISTENT_GROUP_PROTOCOL, &args.member_id);
        }
        // A newcomer must share a protocol with every current member; only it is refused.
        let is_member = group.members.contains_key(&args.member_id);
        if !is_member
            && !group.members.is_empty()
            && !args.protocols.iter().any(|(name, _)| {
                group
                    .members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
        {
            return fail(error_code::INCONSISTENT_GROUP_PROTOCOL, &args.member_id);
        }
        let instance = args.group_instance_id.clone().filter(|i| !i.is_empty());
        let holder = instance
            .as_deref()
            .and_then(|i| static_member(group, i))
            .map(str::to_owned);
        let mut member_id = args.member_id.clone();
        match (&instance, holder) {
            (Some(_), Some(old)) if member_id.is_empty() => {
                // A static member back under a new id (a restarted process).
                let new_id = format!("{}-{incarnation:016x}-{seq:x}", client_or_member(&args));
                return replace_static_member(group, &old, new_id, args, now);
            }
            (Some(_), Some(old)) if old != member_id => {
                return fail(error_code::FENCED_INSTANCE_ID, &member_id);
            }
            (Some(_), None) if !member_id.is_empty() => {
                return fail(error_code::UNKNOWN_MEMBER_ID, &member_id);
            }
            _ => {}
        }
        if member_id.is_empty() {
            member_id = format!("{}-{incarnation:016x}-{seq:x}", client_or_member(&args));
            // Static members skip the MEMBER_ID_REQUIRED round, as in Kafka.
            if args.requires_known_member_id && instance.is_none() {
                if group.pending.len() >= GROUP_MEMBERS_MAX {
                    return fail(error_code::GROUP_MAX_SIZE_REACHED, "");
                }
                let deadline = now + Duration::from_millis(args.session_timeout_ms as u64);
                group.pending.insert(member_id.clone(), deadline);
                return fail(error_code::MEMBER_ID_REQUIRED, &member_id);
            }
        } else if !is_member && !group.pending.contains_key(&member_id) {
            return fail(error_code::UNKNOWN_MEMBER_ID, &member_id);
        }
        group.pending.remove(&member_id);
        if !group.members.contains_key(&member_id) && group.members.len() >= GROUP_MEMBERS_MAX {
            return fail(error_code::GROUP_MAX_SIZE_REACHED, &member_id);
        }
        let (tx, rx) = oneshot::channel();
        let rebalance_ms = if args.rebalance_timeout_ms > 0 {
            args.rebalance_timeout_ms
        } else {
            args.session_timeout_ms
        };
        let member = group
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                seq,
                group_instance_id: args.group_instance_id.clone(),
                client_id: args.client_id.clone(),
                client_host: args.client_host.clone(),
                session_timeout: Duration::ZERO,
                rebalance_timeout: Duration::ZERO,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                last_seen: now,
                join_waiter: None,
                sync_waiter: None,
            });
        member.session_timeout = Duration::from_millis(args.session_timeout_ms as u64);
        member.rebalance_timeout =
            Duration::from_millis(rebalance_ms.clamp(1, SESSION_TIMEOUT_MS_MAX) as u64);
        member.protocols = args.protocols;
        member.last_seen = now;
        member.join_waiter = Some(tx);
        if group.protocol_type.is_none() {
            group.protocol_type = Some(args.protocol_type);
        }
        tracing::debug!(group = %group.id, member = %member_id, state = group.state.name(), "member joins");
        if group.state != GroupState::PreparingRebalance {
            prepare_rebalance(group, now);
        }
        maybe_complete_join(group, now, false);
        Reply::Later(rx)
    }

    /// `protocol`: the protocol type and name SyncGroup v5+ names (checked against the
    /// group's after membership and generation, as Kafka's `validateSyncGroup`).
    pub fn sync(
        &mut self,
        group_id: &str,
        generation: i32,
        member: (&str, Option<&str>),
        protocol: (Option<&str>, Option<&str>),
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Reply<SyncOutcome> {
        let (member_id, instance) = member;
        let fail = |code| {
            Reply::Now(SyncOutcome {
                error_code: code,
                ..SyncOutcome::default()
            })
        };
        let Some(group) = self.groups.get_mut(group_id) else {
            return fail(error_code::UNKNOWN_MEMBER_ID);
        };
        if let Some(code) = static_check(group, instance, member_id) {
            return fail(code);
        }
        let Some(member) = group.members.get_mut(member_id) else {
            return fail(error_code::UNKNOWN_MEMBER_ID);
        };
        member.last_seen = now;
        if generation != group.generation {
            return fail(error_code::ILLEGAL_GENERATION);
        }
        let differs = |named: Option<&str>, ours: &Option<String>| {
            named.is_some_and(|n| ours.as_deref().is_some_and(|o| o != n))
        };
        if differs(protocol.0, &group.protocol_type) || differs(protocol.1, &group.protocol) {
            return fail(error_code::INCONSISTENT_GROUP_PROTOCOL);
        }
        match group.state {
            GroupState::PreparingRebalance => fail(error_code::REBALANCE_IN_PROGRESS),
            GroupState::Empty | GroupState::Dead => fail(error_code::UNKNOWN_MEMBER_ID),
            GroupState::Stable => Reply::Now(SyncOutcome {
                error_code: error_code::NONE,
                protocol_type: group.protocol_type.clone(),
                protocol_name: group.protocol.clone(),
                assignment: member.assignment.clone(),
            }),
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                member.sync_waiter = Some(tx);
                if group.leader.as_deref() == Some(member_id) {
                    tracing::debug!(group = %group.id, generation, leader = member_id, "leader sent the assignment");
                    for (id, assignment) in assignments {
                        if let Some(m) = group.members.get_mut(&id) {
                            m.assignment = assignment;
                        }
                    }
                    group.state = GroupState::Stable;
                    for m in group.members.values_mut() {
                        if let Some(waiter) = m.sync_waiter.take() {
                            let _ = waiter.send(SyncOutcome {
                                error_code: error_code::NONE,
                                protocol_type: group.protocol_type.clone(),
                                protocol_name: group.protocol.clone(),
                                assignment: m.assignment.clone(),
                            });
                        }
                    }
                }
                Reply::Later(rx)
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        group_id: &str,
        generation: i32,
        member: (&str, Option<&str>),
        now: Instant,
    ) -> i16 {
        match self.current_member(group_id, generation, member, now) {
            Err(code) => code,
            Ok(GroupState::PreparingRebalance) => error_code::REBALANCE_IN_PROGRESS,
            Ok(_) => error_code::NONE,
        }
    }

    /// Checks that `member_id` belongs to the group's current generation, refreshing its
    /// session; returns the group's state.
    fn current_member(
        &mut self,
        group_id: &str,
        generation: i32,
        member: (&str, Option<&str>),
        now: Instant,
    ) -> Result<GroupState, i16> {
        let (member_id, instance) = member;
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(error_code::UNKNOWN_MEMBER_ID)?;
        if let Some(code) = static_check(group, instance, member_id) {
            return Err(code);
        }
        let member = group
            .members
            .get_mut(member_id)
            .ok_or(error_code::UNKNOWN_MEMBER_ID)?;
        member.last_seen = now;
        if generation != group.generation {
            return Err(error_code::ILLEGAL_GENERATION);
        }
        Ok(group.state)
    }

    /// Removes members, each named by its member id, its group instance id, or both (an
    /// instance id held under another member id is fenced); returns an error code each.
    pub fn leave(
        &mut self,
        group_id: &str,
        members: &[(String, Option<String>)],
        now: Instant,
    ) -> Vec<i16> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return vec![error_code::UNKNOWN_MEMBER_ID; members.len()];
        };
        let mut out = Vec::with_capacity(members.len());
        let mut removed = false;
        for (member_id, instance) in members {
            let instance = instance.as_deref().filter(|i| !i.is_empty());
            let id = match instance.map(|i| static_member(group, i).map(str::to_owned)) {
                None => member_id.clone(),
                Some(None) => {
                    out.push(error_code::UNKNOWN_MEMBER_ID);
                    continue;
                }
                Some(Some(holder)) if !member_id.is_empty() && holder != *member_id => {
                    out.push(error_code::FENCED_INSTANCE_ID);
                    continue;
                }
                Some(Some(holder)) => holder,
            };
            if let Some(mut gone) = group.members.remove(&id) {
                answer_waiting(&mut gone, &id, error_code::UNKNOWN_MEMBER_ID);
                tracing::debug!(group = %group.id, member = %id, "member leaves");
                removed = true;
                out.push(error_code::NONE);
            } else {
                out.push(error_code::UNKNOWN_MEMBER_ID);
            }
        }
        if removed {
            member_left(group, now);
        }
        out
    }

    /// Whether an offset commit from this member and generation may proceed.
    pub fn check_commit(
        &mut self,
        group_id: &str,
        generation: i32,
        member: (&str, Option<&str>),
        now: Instant,
    ) -> i16 {
        let member_id = member.0;
        if generation < 0 && member_id.is_empty() {
            // A standalone consumer (no group membership) commits freely, as in Kafka.
            return match self.groups.get(group_id) {
                Some(g) if !g.members.is_empty() => error_code::UNKNOWN_MEMBER_ID,
                _ => error_code::NONE,
            };
        }
        // As in Kafka: members commit what they processed while the group prepares a
        // rebalance (before rejoining); between join and sync, commits must wait.
        match self.current_member(group_id, generation, member, now) {
            Err(code) => code,
            Ok(GroupState::CompletingRebalance) => error_code::REBALANCE_IN_PROGRESS,
            Ok(_) => error_code::NONE,
        }
    }

    /// Expires members whose session ran out and completes rebalances whose deadline
    /// passed. Called every `TICK` by one core.
    /// Returns the groups whose last member's session expired (their empty state, to
    /// keep in `__consumer_offsets`).
    pub fn tick(&mut self, now: Instant) -> Vec<(String, GroupSnapshot)> {
        self.tick_where(now, |_| true)
    }

    /// As `tick`, for the groups `which` names only (each core ticks the groups whose
    /// `__consumer_offsets` partition it owns).
    pub fn tick_where(
        &mut self,
        now: Instant,
        which: impl Fn(&str) -> bool,
    ) -> Vec<(String, GroupSnapshot)> {
        let mut emptied = Vec::new();
        for group in self.groups.values_mut().filter(|g| which(&g.id)) {
            let had_members = !group.members.is_empty();
            group.pending.retain(|_, deadline| *deadline > now);
            // Members waiting in JoinGroup or SyncGroup cannot heartbeat meanwhile.
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.join_waiter.is_none()
                        && m.sync_waiter.is_none()
                        && now.saturating_duration_since(m.last_seen) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !expired.is_empty() {
                for id in &expired {
                    tracing::info!(group = %group.id, member = %id, "member session expired");
                    group.members.remove(id);
                }
                member_left(group, now);
            }
            if group.state == GroupState::PreparingRebalance
                && group.rebalance_deadline.is_some_and(|d| now >= d)
            {
                maybe_complete_join(group, now, true);
            }
            if had_members && group.members.is_empty() {
                emptied.push((group.id.clone(), snapshot_of(group)));
            }
        }
        // Empty groups are forgotten (their committed offsets live in the offset store).
        self.groups.retain(|id, g| {
            !(which(id)
                && g.state == GroupState::Empty
                && g.members.is_empty()
                && g.pending.is_empty())
        });
        emptied
    }

    /// DeleteGroups for the membership side: refused while the group has members
    /// (NON_EMPTY_GROUP); otherwise forgotten. Whether the group was known here.
    pub fn delete(&mut self, group_id: &str) -> Result<bool, i16> {
        match self.groups.get(group_id) {
            None => Ok(false),
            Some(g) if !g.members.is_empty() || !g.pending.is_empty() => {
                Err(crate::kafka::protocol::error_code::NON_EMPTY_GROUP)
            }
            Some(_) => {
                self.groups.remove(group_id);
                Ok(true)
            }
        }
    }

    /// The state to keep in `__consumer_offsets` of a stable group, or of an empty one;
    /// `None` for a group in a rebalance (its next stable generation is written) or unknown.
    pub fn snapshot(&self, group_id: &str) -> Option<GroupSnapshot> {
        let g = self.groups.get(group_id)?;
        matches!(g.state, GroupState::Stable | GroupState::Empty).then(|| snapshot_of(g))
    }

    /// A group a new coordinator read from `__consumer_offsets`: a stable one comes back
    /// stable, with its members, generation and assignments (each member's session
    /// starts now); an empty one leaves nothing to restore. A group already known here is
    /// left alone.
    pub fn restore(&mut self, group_id: &str, snapshot: GroupSnapshot, now: Instant) {
        if snapshot.members.is_empty()
            || self.groups.contains_key(group_id)
            || self.groups.len() >= GROUPS_MAX
        {
            return;
        }
        let mut group = Group::new(group_id.to_owned());
        group.state = GroupState::Stable;
        group.generation = snapshot.generation;
        group.protocol_type = Some(snapshot.protocol_type);
        group.protocol = snapshot.protocol.clone();
        group.leader = snapshot.leader;
        let protocol = snapshot.protocol.unwrap_or_default();
        for m in snapshot.members.into_iter().take(GROUP_MEMBERS_MAX) {
            self.next_member += 1;
            let clamp = |ms: i32| {
                Duration::from_millis(
                    ms.clamp(SESSION_TIMEOUT_MS_MIN, SESSION_TIMEOUT_MS_MAX) as u64
                )
            };
            group.members.insert(
                m.member_id,
                Member {
                    seq: self.next_member,
                    group_instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: clamp(m.session_timeout_ms),
                    rebalance_timeout: clamp(m.rebalance_timeout_ms),
                    protocols: vec![(protocol.clone(), m.subscription)],
                    assignment: m.assignment,
                    last_seen: now,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        tracing::info!(
            group = group_id,
            generation = group.generation,
            members = group.members.len(),
            "restored a stable group from __consumer_offsets"
        );
        self.groups.insert(group_id.to_owned(), group);
    }

    /// Drops the groups `which` names (their coordination moved away): members waiting
    /// in JoinGroup or SyncGroup are answered NOT_COORDINATOR by their handlers. How many.
    pub fn forget_where(&mut self, which: impl Fn(&str) -> bool) -> usize {
        let before = self.groups.len();
        self.groups.retain(|id, _| !which(id));
        before - self.groups.len()
    }

    /// Whether the group has members (or members about to join).
    pub fn has_members(&self, group_id: &str) -> bool {
        self.groups
            .get(group_id)
            .is_some_and(|g| !g.members.is_empty() || !g.pending.is_empty())
    }

    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        let mut out: Vec<_> = self
            .groups
            .iter()
            .map(|(id, g)| {
                (
                    id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state,
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupView> {
        let g = self.groups.get(group_id)?;
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(GroupView {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| {
                    let metadata = m.metadata_for(&protocol);
                    (
                        id.clone(),
                        m.group_instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        metadata,
                        m.assignment.clone(),
                    )
                })
                .collect(),
        })
    }
}

/// Answers a member's waiting JoinGroup and SyncGroup with `code`: UNKNOWN_MEMBER_ID when
/// it was removed, FENCED_INSTANCE_ID when a newer incarnation took its place.
fn answer_waiting(member: &mut Member, id: &str, code: i16) {
    if let Some(waiter) = member.join_waiter.take() {
        let _ = waiter.send(JoinOutcome {
            error_code: code,
            generation_id: -1,
            member_id: id.to_owned(),
            ..JoinOutcome::default()
        });
    }
    if let Some(waiter) = member.sync_waiter.take() {
        let _ = waiter.send(SyncOutcome {
            error_code: code,
            ..SyncOutcome::default()
        });
    }
}

fn client_or_member(args: &JoinArgs) -> &str {
    if args.client_id.is_empty() {
        "member"
    } else {
        &args.client_id
    }
}

/// The member id that holds the group instance id `instance`.
fn static_member<'g>(group: &'g Group, instance: &str) -> Option<&'g str> {
    group
        .members
        .iter()
        .find(|(_, m)| m.group_instance_id.as_deref() == Some(instance))
        .map(|(id, _)| id.as_str())
}

/// A request naming the group instance id `instance` with `member_id`: UNKNOWN_MEMBER_ID
/// if no member holds that instance, FENCED_INSTANCE_ID if another member id holds it
/// now (an older incarnation of a static member), as Kafka's `validateExistingMember`.
fn static_check(group: &Group, instance: Option<&str>, member_id: &str) -> Option<i16> {
    let instance = instance.filter(|i| !i.is_empty())?;
    match static_member(group, instance) {
        None => Some(error_code::UNKNOWN_MEMBER_ID),
        Some(holder) if holder != member_id => Some(error_code::FENCED_INSTANCE_ID),
        Some(_) => None,
    }
}

/// A static member rejoining under `new_id`: it takes the place of `old_id` (whose
/// waiting requests are fenced) with its assignment. A stable group whose member kept
/// its metadata answers at once, at the same generation, without a rebalance; otherwise
/// the group rebalances (in CompletingRebalance too, as Kafka does: the leader may be
/// assigning to the old id).
fn replace_static_member(
    group: &mut Group,
    old_id: &str,
    new_id: String,
    args: JoinArgs,
    now: Instant,
) -> Reply<JoinOutcome> {
    let Some(mut member) = group.members.remove(old_id) else {
        return Reply::Now(JoinOutcome {
            error_code: error_code::UNKNOWN_MEMBER_ID,
            generation_id: -1,
            ..JoinOutcome::default()
        });
    };
    answer_waiting(&mut member, old_id, error_code::FENCED_INSTANCE_ID);
    member.protocols = args.protocols;
    member.client_id = args.client_id;
    member.client_host = args.client_host;
    member.session_timeout = Duration::from_millis(args.session_timeout_ms as u64);
    if args.rebalance_timeout_ms > 0 {
        member.rebalance_timeout = Duration::from_millis(
            args.rebalance_timeout_ms.clamp(1, SESSION_TIMEOUT_MS_MAX) as u64,
        );
    }
    member.last_seen = now;
    let leader_before = group.leader.clone().unwrap_or_default();
    if group.leader.as_deref() == Some(old_id) {
        group.leader = Some(new_id.clone());
    }
    group.members.insert(new_id.clone(), member);
    tracing::info!(
        group = %group.id,
        old = %old_id,
        new = %new_id,
        state = group.state.name(),
        protocol = ?group.protocol,
        next = ?select_protocol(group),
        "static member rejoins"
    );
    // As Kafka: only a change of the group's selected protocol rebalances a stable group
    // (not the metadata bytes: Java clients put their owned partitions in them).
    if group.state == GroupState::Stable && select_protocol(group) == group.protocol {
        let protocol = group.protocol.clone().unwrap_or_default();
        let leader = group.leader.clone().unwrap_or_default();
        if leader == new_id && !args.supports_skip_assignment {
            // A leader that cannot be told to skip the assignment (JoinGroup v5-8) is not
            // told it leads: it would compute an assignment the stable group ignores. As
            // Kafka, it gets no members and the leader id from before its return.
            return Reply::Now(JoinOutcome {
                error_code: error_code::NONE,
                generation_id: group.generation,
                protocol_type: group.protocol_type.clone(),
                protocol_name: group.protocol.clone(),
                leader: leader_before,
                member_id: new_id,
                members: Vec::new(),
                skip_assignment: false,
            });
        }
        let members = if leader == new_id {
            group
                .members
                .iter()
                .map(|(id, m)| {
                    (
                        id.clone(),
                        m.group_instance_id.clone(),
                        m.metadata_for(&protocol),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        return Reply::Now(JoinOutcome {
            error_code: error_code::NONE,
            generation_id: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol.clone(),
            skip_assignment: leader == new_id,
            leader,
            member_id: new_id,
            members,
        });
    }
    let (tx, rx) = oneshot::channel();
    if let Some(member) = group.members.get_mut(&new_id) {
        member.join_waiter = Some(tx);
    }
    if group.state != GroupState::PreparingRebalance {
        prepare_rebalance(group, now);
    }
    maybe_complete_join(group, now, false);
    Reply::Later(rx)
}

/// The group's protocol: the first protocol of the oldest member that every member
/// supports.
fn select_protocol(group: &Group) -> Option<String> {
    let oldest = group.members.values().min_by_key(|m| m.seq)?;
    oldest
        .protocols
        .iter()
        .map(|(name, _)| name)
        .find(|name| {
            group
                .members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
        })
        .cloned()
}

fn prepare_rebalance(group: &mut Group, now: Instant) {
    // Members waiting for their assignment must rejoin instead.
    for m in group.members.values_mut() {
        if let Some(waiter) = m.sync_waiter.take() {
            let _ = waiter.send(SyncOutcome {
                error_code: error_code::REBALANCE_IN_PROGRESS,
                ..SyncOutcome::default()
            });
        }
    }
    let timeout = group
        .members
        .values()
        .map(|m| m.rebalance_timeout)
        .max()
        .unwrap_or(Duration::ZERO);
    tracing::debug!(group = %group.id, members = group.members.len(), ?timeout, "preparing a rebalance");
    group.state = GroupState::PreparingRebalance;
    group.rebalance_deadline = Some(now + timeout);
}

fn member_left(group: &mut Group, now: Instant) {
    if group.members.is_empty() {
        group.state = GroupState::Empty;
        group.leader = None;
        group.protocol = None;
        group.rebalance_deadline = None;
        group.generation += 1;
        return;
    }
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => prepare_rebalance(group, now),
        GroupState::PreparingRebalance => maybe_complete_join(group, now, false),
        GroupState::Empty | GroupState::Dead => {}
    }
}

/// Completes the join phase when every member has rejoined, or, at the deadline, with the
/// members that did (the others are removed).
fn maybe_complete_join(group: &mut Group, now: Instant, deadline_passed: bool) {
    let all_joined = group.members.values().all(|m| m.join_waiter.is_some());
    if !all_joined && !deadline_passed {
        return;
    }
    // At the deadline, dynamic members that did not rejoin are removed; static ones stay
    // until their session expires (KIP-345: a restarting static member keeps its place).
    group
        .members
        .retain(|_, m| m.join_waiter.is_some() || m.group_instance_id.is_some());
    if group.members.values().all(|m| m.join_waiter.is_none()) {
        group.members.clear();
        member_left(group, now);
        return;
    }
    let Some(protocol) = select_protocol(group) else {
        for m in group.members.values_mut() {
            if let Some(waiter) = m.join_waiter.take() {
                let _ = waiter.send(JoinOutcome {
                    error_code: error_code::INCONSISTENT_GROUP_PROTOCOL,
                    generation_id: -1,
                    ..JoinOutcome::default()
                });
            }
        }
        group.members.clear();
        member_left(group, now);
        return;
    };
    group.generation += 1;
    group.protocol = Some(protocol.clone());
    let leader = match &group.leader {
        Some(l) if group.members.contains_key(l) => l.clone(),
        _ => group
            .members
            .iter()
            .min_by_key(|(_, m)| m.seq)
            .map(|(id, _)| id.clone())
            .unwrap_or_default(),
    };
    tracing::info!(
        group = %group.id,
        generation = group.generation,
        members = group.members.len(),
        %leader,
        "rebalance: join phase complete"
    );
    group.leader = Some(leader.clone());
    group.state = GroupState::CompletingRebalance;
    group.rebalance_deadline = None;
    let roster: Vec<(String, Option<String>, Bytes)> = group
        .members
        .iter()
        .map(|(id, m)| {
            let metadata = m.metadata_for(&protocol);
            (id.clone(), m.group_instance_id.clone(), metadata)
        })
        .collect();
    for (id, m) in group.members.iter_mut() {
        m.assignment = Bytes::new();
        if let Some(waiter) = m.join_waiter.take() {
            m.last_seen = now;
            let _ = waiter.send(JoinOutcome {
                error_code: error_code::NONE,
                generation_id: group.generation,
                protocol_type: group.protocol_type.clone(),
                protocol_name: Some(protocol.clone()),
                leader: leader.clone(),
                member_id: id.clone(),
                members: if *id == leader {
                    roster.clone()
                } else {
                    Vec::new()
                },
                skip_assignment: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(group: &str, member: &str) -> JoinArgs {
        JoinArgs {
            group_id: group.into(),
            member_id: member.into(),
            group_instance_id: None,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            requires_known_member_id: true,
            supports_skip_assignment: true,
        }
    }

    fn now_of(reply: Reply<JoinOutcome>) -> JoinOutcome {
        match reply {
            Reply::Now(o) => o,
            Reply::Later(mut rx) => rx.try_recv().ok().flatten().expect("answered"),
        }
    }

    #[test]
    fn given_a_stable_group_restored_by_another_coordinator_should_carry_on_without_a_rebalance() {
        let mut old = Coordinator::default();
        let t = Instant::now();
        let first = now_of(old.join(args("g", ""), t));
        let joined = now_of(old.join(args("g", &first.member_id), t));
        let member = joined.member_id.clone();
        let _ = old.sync(
            "g",
            1,
            (&member, None),
            (None, None),
            vec![(member.clone(), Bytes::from_static(b"a"))],
            t,
        );
        let state = old.snapshot("g").expect("a stable group has a snapshot");
        assert_eq!(state.members.len(), 1);
        assert_eq!(state.members[0].assignment, Bytes::from_static(b"a"));

        // The next coordinator (another incarnation) restores it: the member's heartbeat
        // and commit at its generation pass, and a rejoin with unchanged metadata gets
        // its assignment back at the same generation.
        let mut new = Coordinator::default();
        let later = t + Duration::from_secs(1);
        new.restore("g", state.clone(), later);
        assert_eq!(
            new.heartbeat("g", 1, (&member, None), later),
            error_code::NONE
        );
        assert_eq!(
            new.check_commit("g", 1, (&member, None), later),
            error_code::NONE
        );
        assert_eq!(new.describe("g").map(|v| v.state), Some(GroupState::Stable));
        // A stale generation is still refused, and the session runs from the restore.
        assert_eq!(
            new.heartbeat("g", 0, (&member, None), later),
            error_code::ILLEGAL_GENERATION
        );
        let emptied = new.tick(later + Duration::from_secs(11));
        assert!(
            new.describe("g").is_none(),
            "its session expired: the group emptied"
        );
        assert_eq!(emptied.len(), 1);
        assert!(emptied[0].1.members.is_empty(), "kept as empty from now on");
        // An empty snapshot restores nothing; a known group is left alone.
        let mut other = Coordinator::default();
        other.restore("g", GroupSnapshot::default(), later);
        assert!(other.describe("g").is_none());
    }

    #[test]
    fn given_a_tick_for_some_groups_should_expire_members_of_those_only() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        for g in ["a", "b"] {
            let first = now_of(c.join(args(g, ""), t));
            now_of(c.join(args(g, &first.member_id), t));
        }
        let later = t + Duration::from_secs(11);
        let emptied = c.tick_where(later, |g| g == "a");
        assert_eq!(emptied.len(), 1);
        assert_eq!(emptied[0].0, "a");
        assert!(c.describe("a").is_none());
        assert!(c.describe("b").is_some(), "b's core has not ticked yet");
        assert_eq!(c.tick_where(later, |g| g == "b").len(), 1);
    }

    #[test]
    fn first_join_requires_member_id_then_completes_alone() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        let first = now_of(c.join(args("g", ""), t));
        assert_eq!(first.error_code, error_code::MEMBER_ID_REQUIRED);
        let joined = now_of(c.join(args("g", &first.member_id), t));
        assert_eq!((joined.error_code, joined.generation_id), (0, 1));
        assert_eq!(joined.leader, first.member_id);
        assert_eq!(joined.members.len(), 1);
        match c.sync(
            "g",
            1,
            (&first.member_id, None),
            (None, None),
            vec![(first.member_id.clone(), Bytes::from_static(b"a"))],
            t,
        ) {
            Reply::Later(mut rx) => assert_eq!(
                rx.try_recv().unwrap().unwrap().assignment,
                Bytes::from_static(b"a")
            ),
            Reply::Now(o) => panic!("{}", o.error_code),
        }
        assert_eq!(c.heartbeat("g", 1, (&first.member_id, None), t), 0);
        assert_eq!(
            c.heartbeat("g", 0, (&first.member_id, None), t),
            error_code::ILLEGAL_GENERATION
        );
        assert_eq!(
            c.heartbeat("g", 1, ("nobody", None), t),
            error_code::UNKNOWN_MEMBER_ID
        );
    }

    #[test]
    fn member_ids_do_not_repeat_across_restarts() {
        // A restart is a new coordinator: same joins, same generation, other member id,
        // so a commit retried from before the crash is refused.
        let t = Instant::now();
        let join_once = |c: &mut Coordinator| {
            let first = now_of(c.join(args("g", ""), t));
            now_of(c.join(args("g", &first.member_id), t))
        };
        let (mut before, mut after) = (Coordinator::default(), Coordinator::default());
        let old = join_once(&mut before);
        let new = join_once(&mut after);
        assert_eq!(old.generation_id, new.generation_id);
        assert_ne!(old.member_id, new.member_id);
        assert_eq!(
            after.check_commit("g", old.generation_id, (&old.member_id, None), t),
            error_code::UNKNOWN_MEMBER_ID
        );
    }

    #[test]
    fn second_member_triggers_rebalance_and_expired_member_is_removed() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        let a = now_of(c.join(args("g", ""), t)).member_id;
        now_of(c.join(args("g", &a), t));
        let _ = c.sync("g", 1, (&a, None), (None, None), vec![], t);
        let b = now_of(c.join(args("g", ""), t)).member_id;
        let b_join = c.join(args("g", &b), t);
        assert_eq!(
            c.heartbeat("g", 1, (&a, None), t),
            error_code::REBALANCE_IN_PROGRESS
        );
        let a_join = now_of(c.join(args("g", &a), t));
        assert_eq!(a_join.generation_id, 2);
        assert_eq!(now_of(b_join).generation_id, 2);
        // b stops heartbeating: after its session timeout it is removed and a rebalances.
        let _ = c.sync("g", 2, (&a, None), (None, None), vec![], t);
        assert_eq!(
            c.heartbeat("g", 2, (&a, None), t + Duration::from_secs(9)),
            0
        );
        c.tick(t + Duration::from_secs(11));
        assert_eq!(
            c.heartbeat("g", 2, (&a, None), t + Duration::from_secs(11)),
            error_code::REBALANCE_IN_PROGRESS
        );
        assert_eq!(c.describe("g").unwrap().members.len(), 1);
    }

    #[test]
    fn incompatible_newcomer_is_refused_alone_and_commits_follow_kafka() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        let a = now_of(c.join(args("g", ""), t)).member_id;
        now_of(c.join(args("g", &a), t));
        // Between join and sync, commits wait.
        assert_eq!(
            c.check_commit("g", 1, (&a, None), t),
            error_code::REBALANCE_IN_PROGRESS
        );
        let _ = c.sync("g", 1, (&a, None), (None, None), vec![], t);
        assert_eq!(c.check_commit("g", 1, (&a, None), t), error_code::NONE);
        let mut other = args("g", "");
        other.protocols = vec![("cooperative-sticky".into(), Bytes::new())];
        let b = now_of(c.join(other, t));
        assert_eq!(b.error_code, error_code::INCONSISTENT_GROUP_PROTOCOL);
        assert_eq!(
            c.heartbeat("g", 1, (&a, None), t),
            error_code::NONE,
            "the group is untouched"
        );
        // A member rejoining for a rebalance may still commit what it processed.
        let c2 = now_of(c.join(args("g", ""), t)).member_id;
        let _pending = c.join(args("g", &c2), t);
        assert_eq!(c.check_commit("g", 1, (&a, None), t), error_code::NONE);
        // Unknown member ids on unknown groups are refused without creating the group.
        assert_eq!(
            now_of(c.join(args("nope", "ghost"), t)).error_code,
            error_code::UNKNOWN_MEMBER_ID
        );
        assert!(c.describe("nope").is_none());
    }

    fn static_args(group: &str, member: &str, instance: &str) -> JoinArgs {
        JoinArgs {
            group_instance_id: Some(instance.into()),
            ..args(group, member)
        }
    }

    /// Two static members form a stable group; one restarts (a new member id for the same
    /// instance) within its session timeout: it gets its place and assignment back at the
    /// same generation, the other sees no rebalance, and the old id is fenced.
    #[test]
    fn static_member_restarted_keeps_its_assignment_without_a_rebalance() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        let a_join = c.join(static_args("g", "", "a"), t);
        let a = match &a_join {
            Reply::Later(_) => None,
            Reply::Now(o) => Some(o.error_code),
        };
        assert_eq!(a, None, "a static member joins without MEMBER_ID_REQUIRED");
        let a = now_of(a_join).member_id;
        let _ = c.sync("g", 1, (&a, Some("a")), (None, None), vec![], t);
        let b_join = c.join(static_args("g", "", "b"), t);
        let a_again = now_of(c.join(static_args("g", &a, "a"), t));
        let b = now_of(b_join).member_id;
        assert_eq!(a_again.generation_id, 2);
        assert_eq!(a_again.leader, a);
        let assignments = vec![
            (a.clone(), Bytes::from_static(b"p0")),
            (b.clone(), Bytes::from_static(b"p1")),
        ];
        let _ = c.sync("g", 2, (&b, Some("b")), (None, None), vec![], t);
        let _ = c.sync("g", 2, (&a, Some("a")), (None, None), assignments, t);
        assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);

        // b restarts: a new process, the same instance id, no member id.
        let b2 = now_of(c.join(static_args("g", "", "b"), t));
        assert_eq!(b2.error_code, error_code::NONE);
        assert_eq!(b2.generation_id, 2, "no new generation");
        assert_ne!(b2.member_id, b);
        assert_eq!(c.heartbeat("g", 2, (&a, Some("a")), t), error_code::NONE);
        match c.sync("g", 2, (&b2.member_id, Some("b")), (None, None), vec![], t) {
            Reply::Now(o) => assert_eq!(o.assignment, Bytes::from_static(b"p1")),
            Reply::Later(_) => panic!("a stable group answers at once"),
        }
        // The old incarnation is fenced wherever it shows up.
        assert_eq!(
            c.heartbeat("g", 2, (&b, Some("b")), t),
            error_code::FENCED_INSTANCE_ID
        );
        assert_eq!(
            c.check_commit("g", 2, (&b, Some("b")), t),
            error_code::FENCED_INSTANCE_ID
        );
        assert_eq!(
            now_of(c.join(static_args("g", &b, "b"), t)).error_code,
            error_code::FENCED_INSTANCE_ID
        );
        assert_eq!(
            c.leave("g", &[(b.clone(), Some("b".into()))], t),
            vec![error_code::FENCED_INSTANCE_ID]
        );
        assert_eq!(c.describe("g").unwrap().members.len(), 2);
        // Leaving by instance id alone (as the admin client's removeMembers does).
        assert_eq!(
            c.leave("g", &[(String::new(), Some("b".into()))], t),
            vec![error_code::NONE]
        );
        assert_eq!(
            c.heartbeat("g", 2, (&a, Some("a")), t),
            error_code::REBALANCE_IN_PROGRESS
        );
    }

    /// A static member back with other metadata bytes under the same protocol does not
    /// rebalance the group (Java clients put their owned partitions there); back with a
    /// protocol that changes the group's choice, it does. Its session expires like
    /// anyone's.
    #[test]
    fn static_member_rebalances_only_if_the_groups_protocol_changes() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        let a = now_of(c.join(static_args("g", "", "a"), t)).member_id;
        let _ = c.sync("g", 1, (&a, None), (None, None), vec![], t);
        let mut new_bytes = static_args("g", "", "a");
        new_bytes.protocols = vec![("range".into(), Bytes::from_static(b"owned: p0"))];
        let a1 = now_of(c.join(new_bytes, t));
        assert_eq!(a1.generation_id, 1, "no rebalance");
        let mut changed = static_args("g", "", "a");
        changed.protocols = vec![
            ("cooperative-sticky".into(), Bytes::new()),
            ("range".into(), Bytes::new()),
        ];
        let a2 = now_of(c.join(changed, t));
        assert_eq!(a2.generation_id, 2, "a rebalance");
        assert_eq!(a2.protocol_name.as_deref(), Some("cooperative-sticky"));
        assert_eq!(a2.leader, a2.member_id);
        let _ = c.sync("g", 2, (&a2.member_id, None), (None, None), vec![], t);
        c.tick(t + Duration::from_secs(11));
        assert!(c.describe("g").is_none(), "expired, the group emptied");
    }

    /// The group's leader restarting as a static member: no rebalance either; it gets the
    /// member list back (it is the leader) at the same generation.
    #[test]
    fn static_leader_restarted_gets_the_members_without_a_rebalance() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        let two = |instance: &str| {
            let mut a = static_args("g", "", instance);
            a.protocols = vec![
                ("range".into(), Bytes::from_static(b"x")),
                ("cooperative-sticky".into(), Bytes::from_static(b"y")),
            ];
            a
        };
        let a = now_of(c.join(two("a"), t)).member_id;
        let _ = c.sync("g", 1, (&a, Some("a")), (None, None), vec![], t);
        let b_join = c.join(two("b"), t);
        let mut a_again = two("a");
        a_again.member_id = a.clone();
        assert_eq!(now_of(c.join(a_again, t)).generation_id, 2);
        let b = now_of(b_join).member_id;
        let _ = c.sync("g", 2, (&b, Some("b")), (None, None), vec![], t);
        let _ = c.sync("g", 2, (&a, Some("a")), (None, None), vec![], t);
        assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
        let a2 = now_of(c.join(two("a"), t));
        assert_eq!((a2.error_code, a2.generation_id), (0, 2));
        assert_eq!(a2.leader, a2.member_id);
        assert_eq!(a2.members.len(), 2);
        assert_eq!(c.heartbeat("g", 2, (&b, Some("b")), t), error_code::NONE);
    }

    /// The fixes from review: a v5-8 static leader back in a stable group is not told it
    /// leads; a static member that did not rejoin by the deadline stays; a member removed
    /// while waiting is answered UNKNOWN_MEMBER_ID; an instance id nobody holds is
    /// UNKNOWN_MEMBER_ID; SyncGroup's protocol check comes after the generation's.
    #[test]
    fn static_members_follow_kafka_in_the_corner_cases() {
        let mut c = Coordinator::default();
        let t = Instant::now();
        let a = now_of(c.join(static_args("g", "", "a"), t)).member_id;
        let _ = c.sync("g", 1, (&a, Some("a")), (None, None), vec![], t);
        // a leads; it restarts with JoinGroup v5.
        let mut old_version = static_args("g", "", "a");
        old_version.supports_skip_assignment = false;
        old_version.session_timeout_ms = 30_000;
        let a2 = now_of(c.join(old_version, t));
        assert_eq!(a2.generation_id, 1);
        assert_eq!(a2.leader, a, "told the leader id from before its return");
        assert!(a2.members.is_empty() && !a2.skip_assignment);
        assert_eq!(
            c.heartbeat("g", 1, (&a2.member_id, Some("nobody")), t),
            error_code::UNKNOWN_MEMBER_ID
        );
        assert!(matches!(
            c.sync(
                "g",
                0,
                (&a2.member_id, Some("a")),
                (None, Some("other")),
                vec![],
                t
            ),
            Reply::Now(SyncOutcome {
                error_code: error_code::ILLEGAL_GENERATION,
                ..
            })
        ));
        assert!(matches!(
            c.sync(
                "g",
                1,
                (&a2.member_id, Some("a")),
                (None, Some("other")),
                vec![],
                t
            ),
            Reply::Now(SyncOutcome {
                error_code: error_code::INCONSISTENT_GROUP_PROTOCOL,
                ..
            })
        ));
        // A dynamic member joins: a rebalance that a2 (static) never rejoins.
        let d = now_of(c.join(args("g", ""), t)).member_id;
        let d_join = c.join(args("g", &d), t);
        c.tick(t + Duration::from_secs(11));
        let d_joined = now_of(d_join);
        assert_eq!(d_joined.generation_id, 2);
        assert_eq!(
            c.describe("g").unwrap().members.len(),
            2,
            "the static member stays past the rebalance deadline"
        );
        // d waits in a new join; removing it answers that join.
        let _ = c.sync("g", 2, (&d, None), (None, None), vec![], t);
        let pending = c.join(args("g", &d), t + Duration::from_secs(11));
        assert_eq!(
            c.leave("g", &[(d.clone(), None)], t + Duration::from_secs(11)),
            vec![error_code::NONE]
        );
        assert_eq!(now_of(pending).error_code, error_code::UNKNOWN_MEMBER_ID);
    }
}
