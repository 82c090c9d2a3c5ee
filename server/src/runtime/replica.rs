//! A partition's replication state on the core that owns it: Kafka's ISR model.
//!
//! The committed metadata says who leads, at which leader epoch, and who is in sync; this
//! state follows it (`apply_record`) and adds what only the leader knows: how far each
//! follower has written and synced (from the offsets its fetches ask for), the high
//! watermark, the produce requests waiting for it (acks=all), and the ISR change it has
//! proposed to the controller and not yet seen committed.
//!
//! Rules (each guards a lesson of Jepsen's 2013 Kafka analysis or KIP-101/279/966):
//! - The high watermark is the lowest offset every member of the ISR has; while an ISR
//!   change is pending it counts the members of both the old and the new ISR, so a leader
//!   cut off from the controller cannot shrink the ISR to itself and acknowledge alone.
//! - It does not move while the committed ISR is smaller than `min_insync_replicas`.
//! - Only fetches at the leader's own epoch count as follower progress.
//! - It never goes back on a leader (a new leader starts from what it knew as follower).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cluster::{BrokerId, NO_LEADER, PartitionRecord};
use futures_channel::oneshot;

use crate::kafka::protocol::error_code;
use crate::runtime::partition_table::Role;

/// How long a proposed ISR change may stay uncommitted before the leader sends the same
/// proposal again (never another one: the first may still commit).
const PENDING_ISR_RESEND: Duration = Duration::from_secs(5);

/// Most acks=all produce requests one partition keeps waiting for its high watermark
/// (each is bounded by its request timeout too).
pub const HW_WAITERS_MAX: usize = 10_000;

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The offset its last fetch asked for: everything below it is written (and, under
    /// `flush = per-append`, synced) on the follower. -1 until it fetches in this epoch.
    log_end: i64,
    /// The last time its log reached the leader's log end (Kafka's lastCaughtUpTime).
    last_caught_up: Instant,
    last_fetch: Instant,
    /// The leader's log end when it last fetched.
    leader_end_at_last_fetch: i64,
}

struct Waiter {
    /// Answered once the high watermark is past this offset.
    last_offset: i64,
    reply: oneshot::Sender<Result<(), i16>>,
}

/// How the state changed when the committed record was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    /// This broker now leads the partition at a new epoch.
    BecameLeader,
    /// This broker now follows the leader at a new epoch (truncate, then fetch).
    BecameFollower,
    /// Not a replica here (any more), or no leader now.
    Stopped,
}

pub struct Replica {
    me: BrokerId,
    pub topic_id: u128,
    pub role: Role,
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<BrokerId>,
    /// The committed ISR.
    pub isr: Vec<BrokerId>,
    /// An ISR this leader proposed and has not seen committed, with when.
    pending_isr: Option<(Vec<BrokerId>, Instant)>,
    pub high_watermark: i64,
    followers: HashMap<BrokerId, Progress>,
    /// `min_insync_replicas`, capped at the replication factor.
    pub min_isr: usize,
    waiters: Vec<Waiter>,
    /// A follower whose log must be truncated by leader epoch before its next fetch.
    pub needs_truncation: bool,
    /// The leader's log end when it took its epoch: a follower joins the ISR only once
    /// it has at least this much (it then holds everything of earlier epochs).
    epoch_start_offset: i64,
    /// Set once the committed record has been applied.
    pub known: bool,
}

impl Replica {
    pub fn new(me: BrokerId, min_insync_replicas: usize, high_watermark: i64) -> Self {
        Self {
            me,
            topic_id: 0,
            role: Role::None,
            leader: NO_LEADER,
            leader_epoch: -1,
            partition_epoch: -1,
            replicas: Vec::new(),
            isr: Vec::new(),
            pending_isr: None,
            high_watermark,
            followers: HashMap::new(),
            min_isr: min_insync_replicas.max(1),
            waiters: Vec::new(),
            needs_truncation: false,
            epoch_start_offset: 0,
            known: false,
        }
    }

    /// Follows the committed record. `log_end` is this replica's log end now.
    pub fn apply_record(
        &mut self,
        record: &PartitionRecord,
        topic_id: u128,
        min_insync_replicas: usize,
        log_end: i64,
        now: Instant,
    ) -> Transition {
        let role = if record.leader == self.me {
            Role::Leader
        } else if record.replicas.contains(&self.me) && record.leader != NO_LEADER {
            Role::Follower
        } else {
            Role::None
        };
        let epoch_moved = record.leader_epoch != self.leader_epoch || topic_id != self.topic_id;
        let role_moved = role != self.role;
        self.topic_id = topic_id;
        self.replicas.clone_from(&record.replicas);
        self.min_isr = min_insync_replicas.clamp(1, record.replicas.len().max(1));
        if record.partition_epoch != self.partition_epoch || epoch_moved {
            // A member that left the committed ISR must fetch afresh before it can join
            // again: what it reported before (perhaps as a process since restarted with
            // less data) says nothing about what it holds now (KIP-903).
            for b in self.isr.iter().filter(|b| !record.isr.contains(b)) {
                if let Some(p) = self.followers.get_mut(b) {
                    p.log_end = -1;
                    p.leader_end_at_last_fetch = -1;
                }
            }
            self.isr.clone_from(&record.isr);
            self.pending_isr = None;
        }
        self.partition_epoch = record.partition_epoch;
        self.leader = record.leader;
        self.known = true;
        if !epoch_moved && !role_moved {
            self.fail_waiters_below_min_isr();
            return Transition::Unchanged;
        }
        self.leader_epoch = record.leader_epoch;
        self.role = role;
        self.fail_waiters(error_code::NOT_LEADER_OR_FOLLOWER);
        self.followers.clear();
        match role {
            Role::Leader => {
                self.needs_truncation = false;
                self.epoch_start_offset = log_end;
                // Every follower gets a full lag window from now (Kafka does the same).
                for &b in record.replicas.iter().filter(|b| **b != self.me) {
                    self.followers.insert(
                        b,
                        Progress {
                            log_end: -1,
                            last_caught_up: now,
                            last_fetch: now,
                            leader_end_at_last_fetch: -1,
                        },
                    );
                }
                Transition::BecameLeader
            }
            Role::Follower => {
                self.needs_truncation = true;
                Transition::BecameFollower
            }
            Role::None => Transition::Stopped,
        }
    }

    /// Whether this replica may answer a leader's request at `current_leader_epoch`
    /// (-1: the client does not say), as a Kafka error code.
    pub fn check_leader(&self, current_leader_epoch: i32) -> Result<(), i16> {
        if self.role != Role::Leader {
            return Err(if self.leader == NO_LEADER {
                error_code::LEADER_NOT_AVAILABLE
            } else {
                error_code::NOT_LEADER_OR_FOLLOWER
            });
        }
        check_epoch(current_leader_epoch, self.leader_epoch)
    }

    /// The ISR the high watermark waits for: the committed one and, while a change is
    /// pending, the proposed one too.
    fn maximal_isr(&self) -> impl Iterator<Item = BrokerId> + '_ {
        let pending = self.pending_isr.iter().flat_map(|(isr, _)| isr.iter());
        self.isr
            .iter()
            .chain(pending.filter(|b| !self.isr.contains(b)))
            .copied()
    }

    /// Records a follower's fetch at `fetch_offset` (already checked to be at most the
    /// leader's log end `leader_end`).
    pub fn follower_fetched(
        &mut self,
        follower: BrokerId,
        fetch_offset: i64,
        leader_end: i64,
        now: Instant,
    ) {
        let Some(p) = self.followers.get_mut(&follower) else {
            return;
        };
        if fetch_offset >= leader_end {
            p.last_caught_up = now;
        } else if fetch_offset >= p.leader_end_at_last_fetch && p.leader_end_at_last_fetch >= 0 {
            p.last_caught_up = p.last_caught_up.max(p.last_fetch);
        }
        p.leader_end_at_last_fetch = leader_end;
        p.last_fetch = now;
        p.log_end = fetch_offset;
    }

    /// Moves the high watermark as far as the ISR allows; answers the waiters it passes.
    /// Returns whether it moved.
    pub fn advance_high_watermark(&mut self, leader_end: i64) -> bool {
        if self.role != Role::Leader || self.isr.len() < self.min_isr {
            return false;
        }
        let mut hw = leader_end;
        for b in self.maximal_isr() {
            if b == self.me {
                continue;
            }
            match self.followers.get(&b) {
                Some(p) if p.log_end >= 0 => hw = hw.min(p.log_end),
                _ => return false,
            }
        }
        if hw <= self.high_watermark {
            return false;
        }
        self.high_watermark = hw;
        let mut kept = Vec::with_capacity(self.waiters.len());
        for w in self.waiters.drain(..) {
            if w.last_offset < hw {
                let _ = w.reply.send(Ok(()));
            } else {
                kept.push(w);
            }
        }
        self.waiters = kept;
        true
    }

    /// A follower learns the leader's high watermark with each fetch.
    pub fn follower_high_watermark(&mut self, leader_hw: i64, log_end: i64) {
        self.high_watermark = self.high_watermark.max(leader_hw.min(log_end));
    }

    /// After truncation a follower's high watermark is at most its log end.
    pub fn truncated(&mut self, log_end: i64) {
        self.high_watermark = self.high_watermark.min(log_end);
        self.needs_truncation = false;
    }

    /// A follower that emptied its log to start again at its leader's log start: its high
    /// watermark is there (Kafka's `truncateFullyAndStartAt` does the same), never below
    /// the log start.
    pub fn started_at(&mut self, log_start: i64) {
        self.high_watermark = log_start;
    }

    /// Before an acks=all append: Kafka refuses it when the ISR is too small.
    pub fn check_enough_replicas(&self) -> Result<(), i16> {
        if self.isr.len() < self.min_isr {
            return Err(error_code::NOT_ENOUGH_REPLICAS);
        }
        Ok(())
    }

    /// Resolves once the high watermark passes `last_offset` (acks=all), or with the
    /// error that ends the wait. `epoch` is the leader epoch the batch was appended at: if
    /// leadership moved since (even away and back), the batch may have been truncated.
    pub fn wait_for(&mut self, last_offset: i64, epoch: i32) -> oneshot::Receiver<Result<(), i16>> {
        let (reply, answer) = oneshot::channel();
        if self.leader_epoch != epoch {
            let _ = reply.send(Err(error_code::NOT_LEADER_OR_FOLLOWER));
        } else if self.high_watermark > last_offset {
            let _ = reply.send(Ok(()));
        } else if self.role != Role::Leader {
            let _ = reply.send(Err(error_code::NOT_LEADER_OR_FOLLOWER));
        } else if self.isr.len() < self.min_isr {
            let _ = reply.send(Err(error_code::NOT_ENOUGH_REPLICAS_AFTER_APPEND));
        } else {
            self.waiters.retain(|w| !w.reply.is_canceled());
            if self.waiters.len() >= HW_WAITERS_MAX {
                let _ = reply.send(Err(error_code::REQUEST_TIMED_OUT));
            } else {
                self.waiters.push(Waiter { last_offset, reply });
            }
        }
        answer
    }

    fn fail_waiters(&mut self, code: i16) {
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Err(code));
        }
    }

    fn fail_waiters_below_min_isr(&mut self) {
        if self.isr.len() < self.min_isr {
            self.fail_waiters(error_code::NOT_ENOUGH_REPLICAS_AFTER_APPEND);
        }
    }

    /// The ISR change this leader should propose now, if any: members that have not
    /// caught up within `lag_max` leave; replicas that have caught up (to the high
    /// watermark and this epoch's start) join. Marks it pending. A pending change stays
    /// pending until the committed record moves (or the controller refuses it for good):
    /// after `PENDING_ISR_RESEND` the same proposal goes again, as the first may have
    /// committed without this leader hearing of it.
    pub fn isr_change(&mut self, now: Instant, lag_max: Duration) -> Option<Vec<BrokerId>> {
        if self.role != Role::Leader {
            return None;
        }
        if let Some((isr, since)) = &mut self.pending_isr {
            if now.duration_since(*since) < PENDING_ISR_RESEND {
                return None;
            }
            *since = now;
            return Some(isr.clone());
        }
        let mut isr: Vec<BrokerId> = self
            .isr
            .iter()
            .copied()
            .filter(|b| {
                *b == self.me
                    || self
                        .followers
                        .get(b)
                        .is_some_and(|p| now.duration_since(p.last_caught_up) <= lag_max)
            })
            .collect();
        for b in &self.replicas {
            if isr.contains(b) {
                continue;
            }
            let caught_up = self.followers.get(b).is_some_and(|p| {
                p.log_end >= self.high_watermark
                    && p.log_end >= self.epoch_start_offset
                    && now.duration_since(p.last_caught_up) <= lag_max
            });
            if caught_up {
                isr.push(*b);
            }
        }
        let mut a = isr.clone();
        let mut b = self.isr.clone();
        a.sort_unstable();
        b.sort_unstable();
        if a == b {
            return None;
        }
        self.pending_isr = Some((isr.clone(), now));
        Some(isr)
    }

    /// The controller refused the proposed change `isr` for good (not a timeout: one
    /// that may still commit keeps it pending): the leader may propose afresh.
    pub fn isr_change_refused(&mut self, isr: &[BrokerId]) {
        if self
            .pending_isr
            .as_ref()
            .is_some_and(|(pending, _)| pending == isr)
        {
            self.pending_isr = None;
        }
    }

    /// For metrics and tests: whether a proposed ISR change is pending.
    pub fn isr_change_pending(&self) -> bool {
        self.pending_isr.is_some()
    }
}

/// FENCED_LEADER_EPOCH when the requester knows an older epoch than ours,
/// UNKNOWN_LEADER_EPOCH when it knows a newer one (our metadata is behind).
pub fn check_epoch(requested: i32, ours: i32) -> Result<(), i16> {
    if requested < 0 || requested == ours {
        Ok(())
    } else if requested < ours {
        Err(error_code::FENCED_LEADER_EPOCH)
    } else {
        Err(error_code::UNKNOWN_LEADER_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(leader: BrokerId, epoch: i32, isr: Vec<BrokerId>) -> PartitionRecord {
        PartitionRecord {
            replicas: vec![0, 1, 2],
            isr,
            leader,
            leader_epoch: epoch,
            partition_epoch: epoch,
        }
    }

    fn leader(min_isr: usize) -> (Replica, Instant) {
        let now = Instant::now();
        let mut r = Replica::new(0, min_isr, 0);
        assert_eq!(
            r.apply_record(&record(0, 1, vec![0, 1, 2]), 7, min_isr, 0, now),
            Transition::BecameLeader
        );
        (r, now)
    }

    #[test]
    fn given_isr_of_three_should_take_the_lowest_follower_offset_as_high_watermark() {
        let (mut r, now) = leader(2);
        assert!(
            !r.advance_high_watermark(10),
            "followers not heard from yet"
        );
        r.follower_fetched(1, 10, 10, now);
        assert!(!r.advance_high_watermark(10));
        r.follower_fetched(2, 4, 10, now);
        assert!(r.advance_high_watermark(10));
        assert_eq!(r.high_watermark, 4);
        let mut w = r.wait_for(7, 1);
        assert!(w.try_recv().unwrap().is_none());
        r.follower_fetched(2, 10, 10, now);
        assert!(r.advance_high_watermark(10));
        assert_eq!(w.try_recv().unwrap(), Some(Ok(())));
    }

    #[test]
    fn given_isr_below_min_should_hold_the_high_watermark_and_refuse_acks_all() {
        let now = Instant::now();
        let mut r = Replica::new(0, 2, 0);
        r.apply_record(&record(0, 1, vec![0]), 7, 2, 0, now);
        assert_eq!(
            r.check_enough_replicas(),
            Err(error_code::NOT_ENOUGH_REPLICAS)
        );
        assert!(!r.advance_high_watermark(10));
        assert_eq!(r.high_watermark, 0);
        let mut w = r.wait_for(3, 1);
        assert_eq!(
            w.try_recv().unwrap(),
            Some(Err(error_code::NOT_ENOUGH_REPLICAS_AFTER_APPEND))
        );
    }

    #[test]
    fn given_pending_shrink_should_still_wait_for_the_member_being_removed() {
        let (mut r, now) = leader(1);
        r.follower_fetched(1, 5, 5, now);
        r.follower_fetched(2, 5, 5, now);
        r.advance_high_watermark(5);
        let later = now + Duration::from_secs(20);
        r.follower_fetched(1, 9, 9, later);
        let proposed = r.isr_change(later, Duration::from_secs(10)).unwrap();
        assert_eq!(proposed, vec![0, 1]);
        // Not committed yet: broker 2 still holds the high watermark back.
        assert!(!r.advance_high_watermark(9));
        assert_eq!(r.high_watermark, 5);
        // Committed: the leader applies the new record and the HW moves.
        let mut committed = record(0, 1, vec![0, 1]);
        committed.partition_epoch = 2;
        r.apply_record(&committed, 7, 1, 9, later);
        assert!(r.advance_high_watermark(9));
        assert_eq!(r.high_watermark, 9);
    }

    #[test]
    fn given_new_epoch_should_fail_waiters_and_fence_old_epoch_requests() {
        let (mut r, now) = leader(1);
        let mut w = r.wait_for(3, 1);
        r.apply_record(&record(1, 2, vec![0, 1, 2]), 7, 1, 10, now);
        assert_eq!(r.role, Role::Follower);
        assert!(r.needs_truncation);
        assert_eq!(
            w.try_recv().unwrap(),
            Some(Err(error_code::NOT_LEADER_OR_FOLLOWER))
        );
        assert_eq!(r.check_leader(-1), Err(error_code::NOT_LEADER_OR_FOLLOWER));
        assert_eq!(check_epoch(1, 2), Err(error_code::FENCED_LEADER_EPOCH));
        assert_eq!(check_epoch(3, 2), Err(error_code::UNKNOWN_LEADER_EPOCH));
        assert_eq!(check_epoch(-1, 2), Ok(()));
    }

    #[test]
    fn given_caught_up_follower_out_of_isr_should_propose_it_back() {
        let now = Instant::now();
        let mut r = Replica::new(0, 1, 0);
        r.apply_record(&record(0, 1, vec![0, 1]), 7, 1, 0, now);
        r.follower_fetched(1, 0, 0, now);
        r.advance_high_watermark(0);
        r.follower_fetched(2, 0, 0, now);
        assert_eq!(
            r.isr_change(now, Duration::from_secs(10)),
            Some(vec![0, 1, 2])
        );
        assert!(r.isr_change_pending());
        assert_eq!(r.isr_change(now, Duration::from_secs(10)), None);
        // Unanswered: the same proposal again later, never another one.
        let later = now + PENDING_ISR_RESEND;
        r.follower_fetched(1, 0, 0, later);
        assert_eq!(
            r.isr_change(later, Duration::from_secs(10)),
            Some(vec![0, 1, 2])
        );
        r.isr_change_refused(&[0, 1]);
        assert!(r.isr_change_pending(), "another proposal's refusal");
        r.isr_change_refused(&[0, 1, 2]);
        assert!(!r.isr_change_pending());
    }

    #[test]
    fn given_follower_removed_from_isr_should_need_a_fresh_fetch_to_rejoin() {
        let (mut r, now) = leader(1);
        r.follower_fetched(1, 5, 5, now);
        r.follower_fetched(2, 5, 5, now);
        r.advance_high_watermark(5);
        // Broker 2 is fenced (restarted): the controller removed it from the ISR.
        let mut shrunk = record(0, 1, vec![0, 1]);
        shrunk.partition_epoch = 2;
        r.apply_record(&shrunk, 7, 1, 5, now);
        assert_eq!(
            r.isr_change(now, Duration::from_secs(10)),
            None,
            "its old progress does not count"
        );
        r.follower_fetched(2, 5, 5, now);
        assert_eq!(
            r.isr_change(now, Duration::from_secs(10)),
            Some(vec![0, 1, 2])
        );
    }
}
