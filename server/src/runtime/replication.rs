//! Replication on one core: each core makes its partitions' replication state follow the
//! committed metadata (leader or follower, epoch, ISR), runs the leader's side (follower
//! progress from their fetches, the high watermark, ISR changes proposed to the
//! controller) and the follower's (truncation by leader epoch, appends of the leader's
//! batches; the fetching itself is `fetcher.rs`).
//!
//! Everything here runs on the core that owns the partition; the only cross-thread
//! traffic is the controller proposal for an ISR change.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::{BrokerId, Command};
use engine::{AppendWait, FlushPolicy, Partition, TopicPartition};

use crate::kafka::protocol::error_code;
use crate::runtime::partition_table::Role;
use crate::runtime::replica::{Replica, Transition};
use crate::runtime::shard::{PartitionError, Reader, Shard};

/// How often a core checks its leaders' ISRs for followers that fell behind or caught up.
const ISR_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// A follower partition as the fetcher sees it when it builds a request.
#[derive(Debug, Clone)]
pub struct FollowerView {
    pub tp: TopicPartition,
    pub leader_epoch: i32,
    pub needs_truncation: bool,
    pub log_end: i64,
    pub log_start: i64,
}

/// What a reader may read of a partition here (see `Shard::check_read`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadLimit {
    pub high_watermark: i64,
    /// The offset the read stops before.
    pub upto: i64,
    /// `(epoch, end offset)` where the reader's log diverged from this one: nothing is
    /// read, and the reader truncates to there.
    pub diverging: Option<(i32, i64)>,
}

/// Kafka's divergence check for a fetch at `offset` whose previous batch had
/// `last_fetched_epoch` (-1: not given): where that epoch ends here, when it ends before
/// `offset` or this log never had it.
fn diverging_epoch(
    log: &Partition,
    offset: i64,
    last_fetched_epoch: i32,
) -> Result<Option<(i32, i64)>, PartitionError> {
    if last_fetched_epoch < 0 {
        return Ok(None);
    }
    // Below the log start there is nothing to compare with: out of range first, as Kafka.
    let log_start = log.offsets().log_start_offset;
    if offset < log_start {
        return Err(PartitionError::OffsetOutOfRange { log_start });
    }
    let (epoch, end) = log.end_offset_for_epoch(last_fetched_epoch);
    if epoch < 0 || end < 0 {
        // No epoch at or below the reader's here: its position is not in this log.
        let offsets = log.offsets();
        return Err(PartitionError::OffsetOutOfRange {
            log_start: offsets.log_start_offset,
        });
    }
    Ok((epoch < last_fetched_epoch || end < offset).then_some((epoch, end)))
}

impl Shard {
    pub(crate) fn replica(
        &self,
        tp: &TopicPartition,
    ) -> Result<Rc<std::cell::RefCell<Replica>>, PartitionError> {
        self.partitions
            .borrow()
            .get(tp)
            .map(|p| Rc::clone(&p.replica))
            .ok_or(PartitionError::UnknownTopicOrPartition)
    }

    /// Whether `reader` may read `tp` here from `offset`, and up to where: consumers below
    /// the high watermark, followers to the log end (their fetch offset is recorded as
    /// their progress, which may move the high watermark).
    ///
    /// A reader that names the epoch of the last batch it fetched (Fetch v12+) and whose
    /// log has diverged from this one is told where that epoch ends here instead, and
    /// truncates (KIP-595's divergence check, as Kafka's leader answers any fetcher); a
    /// follower's progress is then not recorded.
    pub(crate) fn check_read(
        &self,
        tp: &TopicPartition,
        log: &Partition,
        offset: i64,
        reader: Reader,
    ) -> Result<ReadLimit, PartitionError> {
        let (replica, event) = {
            let partitions = self.partitions.borrow();
            let p = partitions
                .get(tp)
                .ok_or(PartitionError::UnknownTopicOrPartition)?;
            (Rc::clone(&p.replica), std::sync::Arc::clone(&p.data_event))
        };
        let mut r = replica.borrow_mut();
        match reader {
            Reader::Consumer {
                current_leader_epoch,
                last_fetched_epoch,
            } => {
                r.check_leader(current_leader_epoch)
                    .map_err(PartitionError::NotServedHere)?;
                let diverging = diverging_epoch(log, offset, last_fetched_epoch)?;
                Ok(ReadLimit {
                    high_watermark: r.high_watermark,
                    upto: r.high_watermark,
                    diverging,
                })
            }
            Reader::Follower {
                id,
                current_leader_epoch,
                last_fetched_epoch,
                peer,
            } => {
                r.check_leader(current_leader_epoch)
                    .map_err(PartitionError::NotServedHere)?;
                // Only a replica's own fetch at the leader's epoch (Fetch v9+) counts as
                // its progress. Its own: from the address it registered where that can be
                // told (brokers connect from their listen address), so that a client that
                // claims a replica's id cannot move the high watermark; Kafka answers an
                // unknown replica the same way.
                if !r.replicas.contains(&id)
                    || id == self.shared.node_id()
                    || current_leader_epoch < 0
                    || !self.partition_table().replica_peer_allowed(id, peer)
                {
                    return Err(PartitionError::NotServedHere(
                        error_code::NOT_LEADER_OR_FOLLOWER,
                    ));
                }
                let offsets = log.offsets();
                let end = offsets.log_end_offset;
                let diverging = diverging_epoch(log, offset, last_fetched_epoch)?;
                if diverging.is_some() {
                    return Ok(ReadLimit {
                        high_watermark: r.high_watermark,
                        upto: end,
                        diverging,
                    });
                }
                if offset > end {
                    return Err(PartitionError::OffsetOutOfRange {
                        log_start: offsets.log_start_offset,
                    });
                }
                r.follower_fetched(id, offset, end, Instant::now());
                if r.advance_high_watermark(end) {
                    event.notify(usize::MAX);
                }
                Ok(ReadLimit {
                    high_watermark: r.high_watermark,
                    upto: end,
                    diverging: None,
                })
            }
        }
    }

    /// OffsetForLeaderEpoch, answered by the leader from its leader-epoch cache.
    pub(crate) fn local_epoch_end(
        &self,
        tp: &TopicPartition,
        current_leader_epoch: i32,
        leader_epoch: i32,
    ) -> Result<(i32, i64), PartitionError> {
        let (log, _) = self.local(tp)?;
        let epoch = {
            let replica = self.replica(tp)?;
            let r = replica.borrow();
            r.check_leader(current_leader_epoch)
                .map_err(PartitionError::NotServedHere)?;
            r.leader_epoch
        };
        // Until the new leader has recorded where its epoch starts, its answer could send
        // a follower to truncate too far: the follower retries.
        if log.latest_epoch().is_none_or(|latest| latest < epoch) {
            return Err(PartitionError::NotServedHere(
                error_code::LEADER_NOT_AVAILABLE,
            ));
        }
        Ok(log.end_offset_for_epoch(leader_epoch))
    }

    /// Makes every partition open on this core follow the committed metadata: roles,
    /// epochs, ISR; starts the fetchers its followers need.
    pub async fn reconcile(self: &Rc<Self>) {
        // A restarted broker's view starts from a snapshot and may be behind: it leads or
        // follows nothing until it holds its own (new) registration, so that it never acts
        // on an epoch that has moved on.
        if !self.shared.controller.caught_up() {
            return;
        }
        let metadata = self.shared.controller.view().current();
        let min_isr = usize::try_from(self.shared.config.min_insync_replicas).unwrap_or(1);
        let now = Instant::now();
        let mut new_epochs = Vec::new();
        let mut leaders = std::collections::BTreeSet::new();
        for (tp, p) in self.partitions.borrow().iter() {
            let Some(topic) = metadata.topics.get(tp.topic()) else {
                continue;
            };
            let Some(record) = usize::try_from(tp.partition())
                .ok()
                .and_then(|i| topic.partitions.get(i))
            else {
                continue;
            };
            let log_end = p.log.offsets().log_end_offset;
            let mut r = p.replica.borrow_mut();
            let transition = r.apply_record(record, topic.topic_id, min_isr, log_end, now);
            match transition {
                Transition::BecameLeader => {
                    tracing::info!(
                        partition = %tp.dir_name(),
                        epoch = r.leader_epoch,
                        isr = ?r.isr,
                        log_end,
                        "leading"
                    );
                    new_epochs.push((p.log.clone(), r.leader_epoch));
                }
                Transition::BecameFollower => tracing::info!(
                    partition = %tp.dir_name(),
                    epoch = r.leader_epoch,
                    leader = r.leader,
                    log_end,
                    "following"
                ),
                Transition::Stopped | Transition::Unchanged => {}
            }
            if r.role == Role::Leader && r.advance_high_watermark(log_end) {
                p.data_event.notify(usize::MAX);
            }
            if r.role == Role::Follower {
                leaders.insert(r.leader);
            }
        }
        // A new leader records its epoch's start at its log end (Kafka does the same):
        // a follower asking about an epoch this leader never wrote then learns where the
        // next epoch begins, and truncates there.
        for (log, epoch) in new_epochs {
            if let Err(e) = log.assign_leader_epoch(epoch).await {
                tracing::error!(error = %e, epoch, "cannot record the new leader epoch");
            }
        }
        for leader in leaders {
            self.ensure_fetcher(leader);
        }
    }

    /// Proposes the ISR changes this core's leaders need (followers that fell behind for
    /// `replica_lag_time_max_ms` leave, caught-up ones join), one pending per partition.
    pub fn maintain_isr(self: &Rc<Self>) {
        let lag_max = Duration::from_millis(self.shared.config.replica_lag_time_max_ms);
        let now = Instant::now();
        let mut proposals = Vec::new();
        for (tp, p) in self.partitions.borrow().iter() {
            let mut r = p.replica.borrow_mut();
            if let Some(isr) = r.isr_change(now, lag_max) {
                tracing::info!(
                    partition = %tp.dir_name(),
                    from = ?r.isr,
                    to = ?isr,
                    "proposing an ISR change"
                );
                proposals.push((
                    tp.clone(),
                    Rc::clone(&p.replica),
                    Command::AlterPartition {
                        topic: tp.topic().to_owned(),
                        topic_id: r.topic_id,
                        partition: tp.partition(),
                        leader: self.shared.node_id(),
                        leader_epoch: r.leader_epoch,
                        partition_epoch: r.partition_epoch,
                        isr,
                    },
                ));
            }
        }
        for (tp, replica, command) in proposals {
            let isr = match &command {
                Command::AlterPartition { isr, .. } => isr.clone(),
                _ => Vec::new(),
            };
            let proposal = self.shared.controller.propose(command);
            compio::runtime::spawn(async move {
                match proposal.await {
                    Ok(_) => {}
                    // Refused for good: nothing was committed, propose afresh. A stale
                    // partition epoch means the record moved on (the new record clears the
                    // pending change when it is applied here).
                    Err(cluster::ControllerError::Refused(
                        e @ cluster::MetadataError::InvalidIsr { .. },
                    )) => {
                        tracing::info!(partition = %tp.dir_name(), error = %e, "ISR change refused");
                        replica.borrow_mut().isr_change_refused(&isr);
                    }
                    // It may still commit: it stays pending and goes again later.
                    Err(e) => {
                        tracing::info!(partition = %tp.dir_name(), error = %e, "ISR change not committed yet")
                    }
                }
            })
            .detach();
        }
    }

    /// This core's partitions that follow `leader`, for the fetcher's next request.
    pub fn follower_partitions(&self, leader: BrokerId) -> Vec<FollowerView> {
        self.partitions
            .borrow()
            .iter()
            .filter_map(|(tp, p)| {
                let r = p.replica.borrow();
                if r.role != Role::Follower || r.leader != leader {
                    return None;
                }
                let offsets = p.log.offsets();
                Some(FollowerView {
                    tp: tp.clone(),
                    leader_epoch: r.leader_epoch,
                    needs_truncation: r.needs_truncation,
                    log_end: offsets.log_end_offset,
                    log_start: offsets.log_start_offset,
                })
            })
            .collect()
    }

    /// Whether the follower state a fetch was built from still holds.
    fn still_following(
        &self,
        view: &FollowerView,
    ) -> Option<(Partition, Rc<std::cell::RefCell<Replica>>)> {
        let partitions = self.partitions.borrow();
        let p = partitions.get(&view.tp)?;
        let r = p.replica.borrow();
        let same = r.role == Role::Follower && r.leader_epoch == view.leader_epoch;
        (same && r.needs_truncation == view.needs_truncation)
            .then(|| (p.log.clone(), Rc::clone(&p.replica)))
    }

    /// Appends what the leader sent (its batches, offsets and epochs kept). Under
    /// `flush = per-append` it returns once they are synced, so the next fetch offset
    /// reports only synced data.
    pub async fn follower_append(
        &self,
        view: &FollowerView,
        records: Bytes,
        leader_high_watermark: i64,
    ) -> Result<(), PartitionError> {
        let Some((log, replica)) = self.still_following(view) else {
            return Ok(());
        };
        if view.needs_truncation || log.offsets().log_end_offset != view.log_end {
            return Ok(());
        }
        let wait = if self.shared.config.log_config().flush_policy == FlushPolicy::EveryAppend {
            AppendWait::Durable
        } else {
            AppendWait::Written
        };
        let appended = match log.append_replica(records, wait).await {
            Ok(appended) => appended,
            Err(engine::LogError::ReplicaOffsetMismatch { expected, got }) => {
                tracing::warn!(partition = %view.tp.dir_name(), expected, got, "leader's batches do not follow this log: truncating by epoch");
                replica.borrow_mut().needs_truncation = true;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        replica
            .borrow_mut()
            .follower_high_watermark(leader_high_watermark, appended.log_end_offset);
        Ok(())
    }

    /// The follower's state after the leader answered OffsetForLeaderEpoch: truncate to
    /// `offset` (where the two logs agree) and start fetching from there.
    pub async fn follower_truncate(
        &self,
        view: &FollowerView,
        offset: i64,
    ) -> Result<(), PartitionError> {
        let Some((log, _)) = self.still_following(view) else {
            return Ok(());
        };
        let before = log.offsets().log_end_offset;
        // Always through the writer, even when nothing seems to be beyond `offset`: a
        // write queued earlier (a produce taken as leader, an append from the previous
        // leader's fetch) lands first and is cut too.
        let report = log.truncate_to(offset).await?;
        if report.bytes_removed > 0 {
            tracing::info!(
                partition = %view.tp.dir_name(),
                epoch = view.leader_epoch,
                from = before,
                to = report.log_end_offset,
                bytes = report.bytes_removed,
                "truncated to where this log and the leader's agree"
            );
        }
        // What this follower reports from now on must be on disk (a restart may have left
        // unsynced bytes in the page cache).
        if self.shared.config.log_config().flush_policy == FlushPolicy::EveryAppend {
            log.flush().await?;
        }
        // Only if the epoch did not move meanwhile: a newer one needs its own truncation.
        if let Some((log, replica)) = self.still_following(view) {
            replica.borrow_mut().truncated(log.offsets().log_end_offset);
        }
        Ok(())
    }

    /// The follower's state after the leader answered its fetch with OFFSET_OUT_OF_RANGE
    /// and a log start above this log's end (see `out_of_range`): the leader deleted what
    /// this replica would fetch next, so it empties its log and starts at `log_start`.
    pub async fn follower_start_at(
        &self,
        view: &FollowerView,
        log_start: i64,
    ) -> Result<(), PartitionError> {
        let Some((log, _)) = self.still_following(view) else {
            return Ok(());
        };
        if view.needs_truncation || log.offsets().log_end_offset != view.log_end {
            return Ok(());
        }
        let report = log.truncate_fully_and_start_at(log_start).await?;
        tracing::warn!(
            partition = %view.tp.dir_name(),
            epoch = view.leader_epoch,
            from = view.log_end,
            to = log_start,
            bytes = report.bytes_removed,
            segments = report.segments_deleted,
            "log ends below the leader's log start: emptied it to start again there"
        );
        if let Some((_, replica)) = self.still_following(view) {
            replica.borrow_mut().started_at(log_start);
        }
        Ok(())
    }

    /// Marks a follower partition for truncation before its next fetch.
    pub fn follower_needs_truncation(&self, tp: &TopicPartition) {
        if let Ok(replica) = self.replica(tp) {
            replica.borrow_mut().needs_truncation = true;
        }
    }

    fn ensure_fetcher(self: &Rc<Self>, leader: BrokerId) {
        if self.shared.stopping() || !self.fetchers.borrow_mut().insert(leader) {
            return;
        }
        compio::runtime::spawn(crate::runtime::fetcher::run(Rc::clone(self), leader)).detach();
    }
}

/// Where a follower's log agrees with its leader's, from the follower's leader-epoch
/// entries (`(epoch, start offset)`, ascending), its log end, and the leader's answer
/// `(epoch, end offset)` for the epoch the follower asked about. Returns the offset to
/// truncate to, or the (lower) epoch to ask about next (KIP-279's rounds).
pub fn divergence(
    entries: &[(i32, i64)],
    log_end: i64,
    asked: i32,
    leader_answer: (i32, i64),
) -> Divergence {
    let (leader_epoch, leader_end) = leader_answer;
    // Our end for an epoch: where our next epoch starts, or our log end.
    let our_end = |epoch: i32| {
        entries
            .iter()
            .find(|(e, _)| *e > epoch)
            .map_or(log_end, |(_, start)| *start)
    };
    if leader_epoch < 0 || leader_end < 0 {
        return Divergence::Unknown;
    }
    if leader_epoch == asked {
        return Divergence::TruncateTo(leader_end.min(our_end(asked)).min(log_end));
    }
    // The leader's largest epoch at or below ours is lower: ask again about our largest
    // epoch at or below that one.
    match entries.iter().rev().find(|(e, _)| *e <= leader_epoch) {
        Some((e, _)) if *e == leader_epoch => {
            Divergence::TruncateTo(leader_end.min(our_end(*e)).min(log_end))
        }
        Some((e, _)) => Divergence::Ask(*e),
        // Everything we hold is of epochs the leader never had.
        None => Divergence::TruncateTo(entries.first().map_or(0, |(_, start)| *start).min(log_end)),
    }
}

/// What a follower does when its leader answers a fetch with OFFSET_OUT_OF_RANGE, from
/// its own log end and the leader's log start in the answer (-1 when not given), as
/// Kafka's `handleOutOfRangeError`: below the leader's log start (retention deleted what
/// it would fetch next) it empties its log and starts there; otherwise it is past the
/// leader's log end and truncates by epoch.
pub fn out_of_range(log_end: i64, leader_log_start: i64) -> OutOfRange {
    if leader_log_start > log_end {
        OutOfRange::StartAt(leader_log_start)
    } else {
        OutOfRange::TruncateByEpoch
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfRange {
    StartAt(i64),
    TruncateByEpoch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divergence {
    TruncateTo(i64),
    Ask(i32),
    /// The leader has no epochs at or below the one asked about.
    Unknown,
}

/// Per core: follows metadata changes into replication state and checks ISRs, until
/// shutdown.
pub async fn replication_loop(shard: Rc<Shard>) {
    let view = std::sync::Arc::clone(shard.shared.controller.view());
    let seen = std::cell::Cell::new(0);
    rounds(
        &shard.replication_kick,
        ISR_CHECK_INTERVAL,
        || view.changed_since(seen.get()),
        shard.shared.stopped(),
        || async {
            seen.set(view.version());
            shard.reconcile().await;
            shard.maintain_isr();
        },
    )
    .await;
}

/// Runs `round` each time `kick` is notified, `changed()` resolves or `interval` passes,
/// until `stop` resolves. `changed` is asked for a fresh future before every wait, so that
/// it can compare against what the last round saw.
///
/// A kick listener is alive at every moment, rounds included: the one for the next wait
/// is made before each round starts. A kick that comes while a round runs (a partition
/// opened on this core after the round looked at its partitions) then starts the next
/// round at once. `event_listener` drops a notification that finds no listener: when the
/// loop listened only while it waited, such a kick was lost and the partition waited for
/// the interval (250 ms) to lead; acks=0 appends to it meanwhile were refused.
async fn rounds<C, R>(
    kick: &event_listener::Event,
    interval: Duration,
    mut changed: impl FnMut() -> C,
    stop: impl std::future::Future<Output = ()>,
    mut round: impl FnMut() -> R,
) where
    C: std::future::Future<Output = ()>,
    R: std::future::Future<Output = ()>,
{
    use futures_util::future::{Either, select};
    let mut stop = std::pin::pin!(stop);
    let mut kicked = kick.listen();
    loop {
        let changed = std::pin::pin!(changed());
        let tick = std::pin::pin!(compio::time::sleep(interval));
        let woken = select(changed, &mut kicked);
        // Stop first: with it and a wake-up both ready, no round more runs.
        if let Either::Left(_) = select(stop.as_mut(), select(woken, tick)).await {
            return;
        }
        kicked = kick.listen();
        round().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_same_epoch_should_truncate_to_the_lower_end() {
        let ours = [(0, 0), (2, 50)];
        assert_eq!(
            divergence(&ours, 80, 2, (2, 70)),
            Divergence::TruncateTo(70)
        );
        assert_eq!(
            divergence(&ours, 60, 2, (2, 70)),
            Divergence::TruncateTo(60)
        );
    }

    #[test]
    fn given_leader_never_had_our_epoch_should_truncate_where_its_next_epoch_starts() {
        // KIP-101's case: we wrote at epoch 2 as a leader nobody followed; the leader
        // went from epoch 1 straight to 3, starting at 40.
        let ours = [(0, 0), (1, 20), (2, 40)];
        assert_eq!(
            divergence(&ours, 55, 2, (1, 40)),
            Divergence::TruncateTo(40)
        );
    }

    #[test]
    fn given_leader_floor_epoch_we_lack_should_ask_about_our_lower_epoch() {
        let ours = [(0, 0), (2, 30)];
        assert_eq!(divergence(&ours, 60, 2, (1, 45)), Divergence::Ask(0));
        // Next round: the leader's epoch 0 ends at 25 (its epoch 1 starts there).
        assert_eq!(
            divergence(&ours, 60, 0, (0, 25)),
            Divergence::TruncateTo(25)
        );
    }

    #[test]
    fn given_log_end_below_the_leaders_log_start_should_start_again_there() {
        assert_eq!(out_of_range(100, 500), OutOfRange::StartAt(500));
        assert_eq!(out_of_range(0, 1), OutOfRange::StartAt(1));
    }

    #[test]
    fn given_log_end_past_the_leaders_range_should_truncate_by_epoch() {
        // At or above the leader's log start, the leader's log end is what we passed.
        assert_eq!(out_of_range(500, 500), OutOfRange::TruncateByEpoch);
        assert_eq!(out_of_range(900, 500), OutOfRange::TruncateByEpoch);
        // A leader that does not say where its log starts: never empty the log on a guess.
        assert_eq!(out_of_range(100, -1), OutOfRange::TruncateByEpoch);
    }

    #[test]
    fn given_no_common_epoch_should_truncate_everything() {
        let ours = [(5, 10)];
        assert_eq!(
            divergence(&ours, 30, 5, (3, 12)),
            Divergence::TruncateTo(10)
        );
        assert_eq!(divergence(&ours, 30, 5, (-1, -1)), Divergence::Unknown);
    }

    #[test]
    fn given_a_kick_while_a_round_runs_should_start_the_next_round_without_waiting_for_the_interval()
     {
        let rt = compio::runtime::Runtime::new().expect("a test runtime");
        rt.block_on(async {
            let kick = event_listener::Event::new();
            let done = event_listener::Event::new();
            let runs = std::cell::Cell::new(0u32);
            let first = std::cell::Cell::new(true);
            let ran = rounds(
                &kick,
                Duration::from_secs(3600),
                // Metadata has moved once, before the loop started: that wakes round 1.
                || {
                    let moved = first.replace(false);
                    async move {
                        if !moved {
                            std::future::pending::<()>().await;
                        }
                    }
                },
                async {
                    let listener = done.listen();
                    if runs.get() < 2 {
                        listener.await;
                    }
                },
                || async {
                    runs.set(runs.get() + 1);
                    if runs.get() == 1 {
                        // A partition opens on this core while round 1 runs, after it has
                        // looked at the partitions.
                        compio::time::sleep(Duration::from_millis(1)).await;
                        kick.notify(usize::MAX);
                        compio::time::sleep(Duration::from_millis(1)).await;
                    } else {
                        done.notify(usize::MAX);
                    }
                },
            );
            let bounded = compio::time::timeout(Duration::from_secs(30), ran).await;
            assert!(
                bounded.is_ok(),
                "round 2 waited for the interval: the kick during round 1 was lost (rounds run: {})",
                runs.get()
            );
            assert_eq!(runs.get(), 2);
        });
    }
}
