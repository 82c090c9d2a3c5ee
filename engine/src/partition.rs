//! A partition log: the handle the broker holds, the read paths, and the single writer
//! task that owns every write to the partition's files.
//!
//! A `Partition` lives on one core (it is `!Send`). Appends are validated by the caller,
//! then queued to the writer, which assigns offsets, coalesces queued batches into one
//! vectored write (one write in flight per partition, so writes land in order), updates
//! the in-memory indexes and, under `FlushPolicy::EveryAppend`, runs one fdatasync for the
//! whole group (group commit). Readers consult the in-memory state, which only ever
//! describes bytes whose write has completed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::{mpsc, oneshot};
use futures_util::{SinkExt, StreamExt};

use crate::batch::{self, BATCH_HEADER_BYTES, BatchHeader};
use crate::checkpoint;
use crate::compact::{self, CleanedGroup, CompactOptions, CompactReport, SealedSegment};
use crate::config::{FlushPolicy, LogConfig, WritePath};
use crate::error::{BatchError, FailedStep, LogError, Result, StorageFailure};
use crate::leader_epoch::{LeaderEpochCache, UNDEFINED_EPOCH};
use crate::limits::{
    APPEND_QUEUE_DEPTH_MAX, HEADER_SCAN_CHUNK_BYTES, INDEX_INTERVAL_BYTES_MIN,
    INDEX_PERSIST_ENTRIES_MIN, WRITE_GROUP_BATCHES_MAX, WRITE_GROUP_BYTES_MAX,
};
use crate::producer_state::{ProducerStates, SequenceCheck};
use crate::segment::{
    self, BatchScanner, PlacedBatch, Scanned, Segment, SegmentFile, SegmentFiles, SegmentSpan,
    for_each_header, read_at_most,
};
use crate::{now_ms, recovery};

pub use crate::recovery::RecoveryReport;

/// What an append waits for before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendWait {
    /// The bytes are in the page cache (Kafka `acks=1`).
    Written,
    /// The bytes are durable under the flush policy (Kafka `acks=all`, single node).
    Durable,
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_start_offset: i64,
    /// True when the batch was on disk before the append returned.
    pub durable: bool,
    /// True when this was a retry of a batch already in the log (idempotent producer):
    /// nothing was written and the offsets are the original ones.
    pub duplicate: bool,
}

/// The offsets a fetch or ListOffsets reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start_offset: i64,
    /// Offset after the last written batch; single node, so also the high watermark.
    pub log_end_offset: i64,
    /// Every offset below this is on disk.
    pub durable_offset: i64,
}

/// A contiguous span of one segment file, for a zero-copy send.
#[derive(Debug, Clone)]
pub struct FileRange {
    pub files: Rc<SegmentFiles>,
    pub position: u64,
    pub len: u64,
}

/// The answer to a read: file ranges starting at the batch that holds the offset.
#[derive(Debug, Clone)]
pub struct ReadSlice {
    pub ranges: Vec<FileRange>,
    pub offsets: LogOffsets,
    /// Offset after the last batch the ranges hold whole (for the broker's records-out
    /// count; the read itself never needs it). Exact when the ranges reach the end of the
    /// written log; when `max_bytes` cut the last range, it is the start of the last
    /// indexed batch before the cut, so up to one index interval of small batches short.
    /// Equal to the requested offset when `ranges` is empty.
    pub end_offset: i64,
}

impl ReadSlice {
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }
}

/// What a follower's `append_replica` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAppend {
    /// Base offset of the first batch written, -1 when nothing was.
    pub first_offset: i64,
    pub log_end_offset: i64,
    /// Every offset below this is on disk (as of the answer).
    pub durable_offset: i64,
    pub batches: usize,
    pub bytes: u64,
}

/// What `truncate_to` removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TruncateReport {
    pub log_end_offset: i64,
    pub bytes_removed: u64,
    pub segments_deleted: usize,
}

/// The first record at or after a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub offset: i64,
    pub timestamp: i64,
}

/// What a retention pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start_offset: i64,
}

/// Counters of the writer, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriterStats {
    /// Vectored writes issued to segment files.
    pub writes: u64,
    /// Batches appended.
    pub batches: u64,
    /// fdatasync calls on segment files (group commits, rolls, flushes) that ended.
    pub syncs: u64,
    /// Those that started (one more than `syncs` while one runs).
    pub sync_starts: u64,
    /// Time spent in those fdatasync calls.
    pub sync_time: Duration,
    pub rolls: u64,
}

/// Called on the partition's core after each fdatasync of a segment file, with how long
/// it took (the broker feeds its flush-latency histogram from it).
pub type SyncObserver = Rc<dyn Fn(Duration)>;

/// Called on the partition's core each time written batches become readable, before
/// they are synced (the broker wakes its followers' fetches from it, so that they copy a
/// batch while the leader's own fdatasync of it is still running).
pub type WriteObserver = Rc<dyn Fn()>;

/// Called on the partition's core when its storage fails, and again if a failed write is
/// followed by a failed sync (the broker reports the partition offline from it).
pub type FailureObserver = Rc<dyn Fn(&StorageFailure)>;

/// Segments a single read may span.
const READ_SEGMENTS_MAX: usize = 4;

/// In-memory state of a partition, shared by the handle and the writer on one core.
/// Never borrowed across an `.await`.
pub(crate) struct LogState {
    pub dir: PathBuf,
    pub config: LogConfig,
    /// Oldest first; the last one is active. Never empty.
    pub segments: VecDeque<Segment>,
    pub durable_offset: i64,
    /// Set once a write or sync fails; cleared only by opening the partition again.
    pub failed: Option<StorageFailure>,
    pub closed: bool,
    pub stats: WriterStats,
    pub producers: ProducerStates,
    /// Leader epochs and their start offsets, as persisted in `leader-epoch-checkpoint`.
    pub epochs: LeaderEpochCache,
    pub sync_observer: Option<SyncObserver>,
    pub write_observer: Option<WriteObserver>,
    pub failure_observer: Option<FailureObserver>,
    /// Set while `truncate_fully_and_start_at` swaps the log: retention leaves it alone.
    pub starting_over: bool,
    /// A clean is running (at most one at a time).
    pub compacting: bool,
    /// The writer is swapping a cleaned group in: retention waits. Left set when a swap
    /// failed past its commit point (the disk is ahead of memory until the next open).
    pub installing: bool,
    /// Truncations and new starts so far: a clean that saw another count is abandoned.
    pub truncations: u64,
    /// Offset below which the last clean left the log clean (in memory: after a reopen
    /// the whole log counts as dirty until the next clean).
    pub clean_up_to: i64,
}

impl LogState {
    pub fn active(&self) -> &Segment {
        // Invariant: `segments` is never empty (open creates one, retention keeps one).
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    pub fn offsets(&self) -> LogOffsets {
        LogOffsets {
            log_start_offset: self.segments[0].base_offset,
            log_end_offset: self.active().next_offset,
            durable_offset: self.durable_offset,
        }
    }

    /// Reads are refused once a sync has failed: the page cache may hold bytes the disk
    /// does not.
    fn check_readable(&self) -> Result<()> {
        match &self.failed {
            Some(failure) if !failure.readable() => Err(LogError::StorageFailed(failure.clone())),
            _ => Ok(()),
        }
    }

    /// Index of the segment holding `offset` (the last one whose base is at or below it).
    /// Segments are contiguous: compaction keeps each segment's last offset.
    fn segment_for(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }

    /// Where a header scan for the batch holding `offset` starts: the segment, its
    /// files and size, and the offset index floor of `offset` in it.
    fn span_for(&self, offset: i64) -> (usize, SegmentSpan) {
        let i = self.segment_for(offset);
        let seg = &self.segments[i];
        let start = if offset <= seg.base_offset {
            0
        } else {
            u64::from(seg.offset_index.floor(seg.relative(offset)).position)
        };
        let span = SegmentSpan {
            files: Rc::clone(&seg.files),
            size: seg.size,
            start,
        };
        (i, span)
    }
}

enum Command {
    Append(QueuedAppend),
    /// Whole, validated batches of a leader, offsets contiguous, written as they are.
    AppendReplica {
        records: Bytes,
        headers: Vec<BatchHeader>,
        wait: AppendWait,
        reply: oneshot::Sender<Result<ReplicaAppend>>,
    },
    Truncate {
        offset: i64,
        reply: oneshot::Sender<Result<TruncateReport>>,
    },
    StartAt {
        offset: i64,
        reply: oneshot::Sender<Result<TruncateReport>>,
    },
    AssignEpoch {
        epoch: i32,
        reply: oneshot::Sender<Result<()>>,
    },
    Flush {
        reply: oneshot::Sender<Result<i64>>,
    },
    InstallCleaned {
        group: CleanedGroup,
        reply: oneshot::Sender<Result<bool>>,
    },
    Close {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Handle to one partition log. Clones share the log; all live on one core.
#[derive(Clone)]
pub struct Partition {
    state: Rc<RefCell<LogState>>,
    commands: mpsc::Sender<Command>,
    batch_bytes_max: usize,
    /// Largest batch a replica append takes: what fits a segment (within the engine's
    /// bound), not the topic's `max.message.bytes`, since a clean may have compressed a
    /// batch again into a few more bytes than the producer's (Kafka's followers do not
    /// hold replicated batches to it either).
    replica_batch_bytes_max: usize,
}

impl Partition {
    /// Opens (or creates) the partition log in `dir`, recovering it if the last shutdown
    /// was not clean, and starts its writer on the current compio runtime.
    pub async fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<(Self, RecoveryReport)> {
        config.validate()?;
        crate::io_mode::warn_once_if_fallback();
        let batch_bytes_max = config.batch_bytes_max;
        let replica_batch_bytes_max = crate::limits::BATCH_BYTES_MAX
            .min(usize::try_from(config.segment_bytes).unwrap_or(usize::MAX));
        let (state, report) = recovery::open_log(dir.as_ref(), config).await?;
        let state = Rc::new(RefCell::new(state));
        let (commands, rx) = mpsc::channel(APPEND_QUEUE_DEPTH_MAX);
        let writer = Writer {
            state: Rc::clone(&state),
            durable_waiters: Vec::new(),
            unsynced: Vec::new(),
            last_sync: Instant::now(),
            sealing: None,
            flushing: None,
        };
        compio::runtime::spawn(writer.run(rx)).detach();
        Ok((
            Self {
                state,
                commands,
                batch_bytes_max,
                replica_batch_bytes_max,
            },
            report,
        ))
    }

    pub fn dir(&self) -> PathBuf {
        self.state.borrow().dir.clone()
    }

    pub fn offsets(&self) -> LogOffsets {
        self.state.borrow().offsets()
    }

    /// Validates `batch` and appends it, returning once it is written (or durable, as
    /// `wait` asks). An invalid batch is refused with the reason and the log is untouched.
    /// The batch is stored with no leader epoch (-1, what Kafka clients send), and the
    /// leader-epoch cache is left alone: a single node has no leader changes.
    pub async fn append(&self, batch: impl Into<Bytes>, wait: AppendWait) -> Result<AppendInfo> {
        self.append_with_epoch(batch, wait, UNDEFINED_EPOCH).await
    }

    /// As `append`, for a leader of `leader_epoch`: the writer stamps the epoch into the
    /// batch's `partitionLeaderEpoch` (outside the CRC) and, when it is above the cache's
    /// latest, starts a leader-epoch entry at the batch, persisted before the batch is
    /// acknowledged. A negative epoch stamps -1 and records nothing.
    pub async fn append_with_epoch(
        &self,
        batch: impl Into<Bytes>,
        wait: AppendWait,
        leader_epoch: i32,
    ) -> Result<AppendInfo> {
        let batch: Bytes = batch.into();
        let header = batch::validate(&batch, self.batch_bytes_max)?;
        let (reply, response) = oneshot::channel();
        self.send(Command::Append(QueuedAppend {
            bytes: batch,
            header,
            wait,
            leader_epoch: leader_epoch.max(UNDEFINED_EPOCH),
            reply,
        }))
        .await?;
        response.await.map_err(|_| LogError::Closed)?
    }

    /// A follower's append of the records field of the leader's Fetch response: whole
    /// RecordBatch v2 batches, then perhaps a partial batch (the leader cuts responses
    /// mid-batch), which is dropped. Every whole batch is validated and must follow the
    /// one before; the first must start at this log's end, or nothing is written and the
    /// answer is `ReplicaOffsetMismatch`. Offsets and leader epochs are kept as sent (the
    /// epoch cache follows them); producer sequences are not checked but remembered, so
    /// that this replica deduplicates retries once it leads. Segments roll as for
    /// `append`; `AppendWait::Durable` answers once the batches are synced under the
    /// flush policy.
    pub async fn append_replica(
        &self,
        records: impl Into<Bytes>,
        wait: AppendWait,
    ) -> Result<ReplicaAppend> {
        let records: Bytes = records.into();
        let (headers, whole_bytes) = split_replica_batches(&records, self.replica_batch_bytes_max)?;
        if headers.is_empty() {
            let offsets = self.offsets();
            return Ok(ReplicaAppend {
                first_offset: -1,
                log_end_offset: offsets.log_end_offset,
                durable_offset: offsets.durable_offset,
                batches: 0,
                bytes: 0,
            });
        }
        let mut records = records;
        records.truncate(whole_bytes);
        let (reply, response) = oneshot::channel();
        self.send(Command::AppendReplica {
            records,
            headers,
            wait,
            reply,
        })
        .await?;
        response.await.map_err(|_| LogError::Closed)?
    }

    /// Removes every batch at or after `offset` (a follower cutting its log back to where
    /// it agrees with the leader). The log end becomes the start of the batch holding
    /// `offset`; at or below the log start everything goes and the log start stays. Later
    /// segments are deleted, the one holding the cut becomes the active segment again,
    /// leader epochs from the cut on are forgotten, and the producer state is rebuilt as
    /// of the new end. Durable appends waiting beyond the cut are answered with
    /// `TruncatedAway`. Readers holding file ranges keep their open files, though a cut
    /// segment may now end before their range does. A no-op at or past the log end.
    pub async fn truncate_to(&self, offset: i64) -> Result<TruncateReport> {
        let (reply, response) = oneshot::channel();
        self.send(Command::Truncate { offset, reply }).await?;
        response.await.map_err(|_| LogError::Closed)?
    }

    /// Removes every segment and starts an empty log at `offset` (Kafka's
    /// `truncateFullyAndStartAt`): a follower whose log ends below its leader's log start
    /// (the leader's retention deleted what it would fetch next) starts again where the
    /// leader's log starts. Leader epochs and producer state are cleared with the batches;
    /// durable appends still waiting are answered with `TruncatedAway`. Crash-safe: a
    /// `start-at` file is written first and removed last, and recovery that finds it
    /// finishes the job, so a crash leaves either the old log or the new empty one. An
    /// offset below the log start is refused (`OffsetOutOfRange`): a segment retention let
    /// go of may still be unlinked under its name when its last reader drops it.
    pub async fn truncate_fully_and_start_at(&self, offset: i64) -> Result<TruncateReport> {
        let (reply, response) = oneshot::channel();
        self.send(Command::StartAt { offset, reply }).await?;
        response.await.map_err(|_| LogError::Closed)?
    }

    /// A replica that becomes leader at `epoch` records where the epoch starts (its log
    /// end) before it writes anything, as Kafka's leaders do: a follower asking about an
    /// epoch this leader never wrote in learns where the leader's next epoch begins. A
    /// no-op when `epoch` is not above the latest; the entry is dropped at the next open
    /// if nothing was written at it by then.
    pub async fn assign_leader_epoch(&self, epoch: i32) -> Result<()> {
        let (reply, response) = oneshot::channel();
        self.send(Command::AssignEpoch { epoch, reply }).await?;
        response.await.map_err(|_| LogError::Closed)?
    }

    async fn send(&self, command: Command) -> Result<()> {
        self.commands
            .clone()
            .send(command)
            .await
            .map_err(|_| LogError::Closed)
    }

    /// The offset below which data counts as written and synced, what a replica may
    /// report to its leader: the durable offset when the flush policy syncs, the log end
    /// under `FlushPolicy::Never` (which never syncs on the append path).
    pub fn stable_offset(&self) -> i64 {
        let st = self.state.borrow();
        match st.config.flush_policy {
            FlushPolicy::Never => st.active().next_offset,
            FlushPolicy::EveryAppend | FlushPolicy::Interval(_) => st.durable_offset,
        }
    }

    /// The latest leader epoch of the log, `None` before any stamped batch.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.state.borrow().epochs.latest_epoch()
    }

    /// Kafka's `OffsetForLeaderEpoch` answer for `requested`: the largest epoch at or
    /// below it and the offset where the next epoch starts (the log end for the latest
    /// epoch); `(-1, -1)` when undefined or unknown (see `LeaderEpochCache::end_offset_for`).
    pub fn end_offset_for_epoch(&self, requested: i32) -> (i32, i64) {
        let st = self.state.borrow();
        st.epochs.end_offset_for(requested, st.active().next_offset)
    }

    /// The leader-epoch cache's entries `(epoch, start_offset)`, for tests and diagnostics.
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.state
            .borrow()
            .epochs
            .entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    /// Forces everything written so far to disk, and finishes the sealing of the last
    /// rolled segment (its indexes and the recovery checkpoint); returns the durable
    /// offset.
    pub async fn flush(&self) -> Result<i64> {
        let (reply, response) = oneshot::channel();
        self.commands
            .clone()
            .send(Command::Flush { reply })
            .await
            .map_err(|_| LogError::Closed)?;
        response.await.map_err(|_| LogError::Closed)?
    }

    /// Finishes queued appends, syncs, and writes the clean-shutdown marker.
    pub async fn close(&self) -> Result<()> {
        let (reply, response) = oneshot::channel();
        if self
            .commands
            .clone()
            .send(Command::Close { reply })
            .await
            .is_err()
        {
            return Ok(()); // already closed
        }
        response.await.map_err(|_| LogError::Closed)?
    }

    /// Closes the log and removes its directory. Readers holding file ranges keep
    /// working: their open files outlive the names.
    pub async fn delete(self) -> Result<()> {
        self.close().await?;
        let dir = self.dir();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            return Err(LogError::NotAPartitionDir {
                path: dir.clone(),
                reason: "no directory name",
            });
        };
        // A name of its own: the reaper may still be removing an earlier deletion of
        // the same partition.
        static DELETIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = DELETIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tail = format!(".{}-{n}{}", now_ms(), crate::data_dir::DELETED_DIR_SUFFIX);
        // Within a file name's 255 bytes: the name's start is enough (names are ASCII).
        let keep = name.len().min(255 - tail.len());
        let doomed = dir.with_file_name(format!("{}{tail}", &name[..keep]));
        compio::fs::rename(&dir, &doomed)
            .await
            .map_err(|e| LogError::io(&dir, e))?;
        if let Some(parent) = dir.parent() {
            checkpoint::sync_dir(parent).await?;
        }
        for seg in &self.state.borrow().segments {
            seg.files.mark_unlinked();
        }
        crate::reaper::remove_dir_later(doomed.clone()).map_err(|e| LogError::io(&doomed, e))
    }

    /// File ranges covering up to `max_bytes` from the batch that contains `offset`. The
    /// first batch is always whole even when larger than `max_bytes`; the last range may
    /// end inside a batch, as Kafka's fetch does. Empty at the log end.
    pub async fn read_ranges(&self, offset: i64, max_bytes: u64) -> Result<ReadSlice> {
        self.read_ranges_upto(offset, max_bytes, i64::MAX).await
    }

    /// As `read_ranges`, but the ranges hold no byte of a batch at or after `upto` (a
    /// consumer reads only below the high watermark). When `upto` falls inside a batch
    /// they stop at that batch's start. Empty when `offset` is at or past that limit but
    /// within the log; `OffsetOutOfRange` past the log end as for `read_ranges`.
    pub async fn read_ranges_upto(
        &self,
        offset: i64,
        max_bytes: u64,
        upto: i64,
    ) -> Result<ReadSlice> {
        let empty = |offsets| ReadSlice {
            ranges: Vec::new(),
            offsets,
            end_offset: offset,
        };
        let (mut snapshots, start, first_found, offsets, limit) = {
            let st = self.state.borrow();
            st.check_readable()?;
            let offsets = st.offsets();
            if offset < offsets.log_start_offset || offset > offsets.log_end_offset {
                return Err(LogError::OffsetOutOfRange {
                    requested: offset,
                    log_start: offsets.log_start_offset,
                    log_end: offsets.log_end_offset,
                });
            }
            let upto = upto.min(offsets.log_end_offset);
            if offset >= upto {
                return Ok(empty(offsets));
            }
            let first = st.segment_for(offset);
            let seg = &st.segments[first];
            let start = u64::from(seg.offset_index.floor(seg.relative(offset)).position);
            // A reader at the tail finds its batch among the recent ones, with no read.
            let first_found = seg.recent_batch(offset);
            let snapshots: Vec<(Rc<SegmentFiles>, u64, i64)> = st
                .segments
                .iter()
                .skip(first)
                .take(READ_SEGMENTS_MAX)
                .map(|s| (Rc::clone(&s.files), s.size, s.next_offset))
                .collect();
            // Below the log end the read stops at the batch holding `upto`: found from
            // its segment's index floor by a short header scan, once the borrow is gone.
            let limit = (upto < offsets.log_end_offset).then(|| {
                let (i, span) = st.span_for(upto);
                let recent = st.segments[i].recent_batch(upto);
                (first, (i, span), recent)
            });
            (snapshots, start, first_found, offsets, limit)
        };
        if let Some((first, (limit_segment, span), recent)) = limit {
            let cut = match recent {
                Some(found) => found,
                None => find_batch(&span.files, span.size, span.start, upto).await?,
            };
            if cut.base_offset <= offset {
                return Ok(empty(offsets));
            }
            // Segments after the one holding the cut are dropped, that one ends there.
            let keep = limit_segment - first;
            snapshots.truncate(keep + 1);
            if let Some(last) = snapshots.get_mut(keep) {
                *last = (Rc::clone(&span.files), cut.position, cut.base_offset);
            }
        }
        let (files, first_size, first_next) = &snapshots[0];
        let found = match first_found {
            Some(found) => found,
            None => find_batch(files, *first_size, start, offset).await?,
        };
        let (position, first_len, first_last) = (found.position, found.total, found.last_offset);
        let mut ranges = Vec::new();
        let first_available = first_size - position;
        let first = first_available.min(max_bytes.max(first_len));
        if first == 0 {
            // `offset` and `upto` fall in one gap that compaction left: nothing between.
            return Ok(empty(offsets));
        }
        ranges.push(FileRange {
            files: Rc::clone(files),
            position,
            len: first,
        });
        // Where the ranges end, and the next offset of the segment the last one is in.
        let mut cut = (position + first, *first_size, *first_next);
        let mut budget = max_bytes.saturating_sub(first);
        for (files, size, next) in snapshots.iter().skip(1) {
            // Continue into the next segment only once this one is read to its end.
            if budget == 0 || first < first_available {
                break;
            }
            let len = (*size).min(budget);
            if len > 0 {
                ranges.push(FileRange {
                    files: Rc::clone(files),
                    position: 0,
                    len,
                });
                cut = (len, *size, *next);
            }
            budget -= len;
        }
        let end_offset = match ranges.last() {
            Some(_) if cut.0 >= cut.1 => cut.2,
            Some(last) => {
                let st = self.state.borrow();
                let indexed = st
                    .segments
                    .iter()
                    .find(|s| Rc::ptr_eq(&s.files, &last.files))
                    .map(|s| s.base_offset + i64::from(s.offset_index.floor_position(cut.0)));
                indexed.unwrap_or(0).max(first_last + 1)
            }
            None => offset,
        };
        Ok(ReadSlice {
            ranges,
            offsets,
            end_offset,
        })
    }

    /// Calls `observer` after each fdatasync of this partition's segment files.
    pub fn set_sync_observer(&self, observer: SyncObserver) {
        self.state.borrow_mut().sync_observer = Some(observer);
    }

    /// See [`WriteObserver`].
    pub fn set_write_observer(&self, observer: WriteObserver) {
        self.state.borrow_mut().write_observer = Some(observer);
    }

    /// Calls `observer` when this partition's storage fails (see `StorageFailure`).
    pub fn set_failure_observer(&self, observer: FailureObserver) {
        self.state.borrow_mut().failure_observer = Some(observer);
    }

    /// Why this partition's storage failed, if it did since it was opened.
    pub fn failure(&self) -> Option<StorageFailure> {
        self.state.borrow().failed.clone()
    }

    /// Copying read of whole batches from `offset`, up to `max_bytes` (at least one
    /// batch). For tests and tools; the broker sends `read_ranges` by zero-copy.
    pub async fn read(&self, offset: i64, max_bytes: u64) -> Result<Vec<u8>> {
        let slice = self.read_ranges(offset, max_bytes).await?;
        let mut out = Vec::with_capacity(slice.total_bytes() as usize);
        for range in &slice.ranges {
            let bytes = read_at_most(&range.files.log, range.position, range.len as usize)
                .await
                .map_err(|e| LogError::io(range.files.log_path(), e))?;
            out.extend_from_slice(&bytes);
        }
        out.truncate(whole_batches_len(&out));
        Ok(out)
    }

    /// The first record whose timestamp is at least `target`, or `None` past the newest.
    pub async fn offset_for_timestamp(&self, target: i64) -> Result<Option<TimestampOffset>> {
        let candidates: Vec<(Rc<SegmentFiles>, u64, u64)> = {
            let st = self.state.borrow();
            st.check_readable()?;
            let Some(first) = st.segments.iter().position(|s| s.max_timestamp >= target) else {
                return Ok(None);
            };
            st.segments
                .iter()
                .skip(first)
                .map(|s| {
                    let rel = s.time_index.scan_start(target);
                    let pos = u64::from(s.offset_index.floor(rel).position);
                    (Rc::clone(&s.files), s.size, pos)
                })
                .collect()
        };
        for (files, size, start) in candidates {
            let mut scanner = BatchScanner::new(&files.log, size);
            let mut pos = start;
            loop {
                let scanned = scanner
                    .batch_at(pos)
                    .await
                    .map_err(|e| LogError::io(files.log_path(), e))?;
                let Scanned::Batch { header, bytes } = scanned else {
                    break;
                };
                if header.max_timestamp >= target {
                    // Compressed batches are not decompressed: their base offset answers.
                    let (offset, timestamp) = batch::first_record_at_or_after(bytes, target)
                        .unwrap_or((header.base_offset, header.max_timestamp));
                    return Ok(Some(TimestampOffset { offset, timestamp }));
                }
                pos += bytes.len() as u64;
            }
        }
        Ok(None)
    }

    /// The first record carrying the log's largest timestamp (Kafka's MAX_TIMESTAMP
    /// lookup, ListOffsets v7+), or `None` when no record has a timestamp. In a
    /// compressed batch its base offset answers, as for `offset_for_timestamp`.
    pub async fn max_timestamp_offset(&self) -> Result<Option<TimestampOffset>> {
        let max = {
            let st = self.state.borrow();
            st.check_readable()?;
            st.segments
                .iter()
                .map(|s| s.max_timestamp)
                .max()
                .unwrap_or(-1)
        };
        if max < 0 {
            return Ok(None);
        }
        self.offset_for_timestamp(max).await
    }

    /// Deletes whole oldest segments past the retention limits; never the active one.
    /// Segments still held by readers are unlinked when the last reader lets go.
    pub fn apply_retention(&self, now_ms: i64) -> RetentionReport {
        let mut st = self.state.borrow_mut();
        let mut report = RetentionReport::default();
        // Not while the log starts over, nor while a cleaned group is swapped in (the
        // writer holds positions in `segments` across its awaits).
        if st.starting_over || st.installing {
            report.log_start_offset = st.segments[0].base_offset;
            return report;
        }
        let mut total: u64 = st.segments.iter().map(|s| s.size).sum();
        while st.segments.len() > 1 {
            let oldest = &st.segments[0];
            let by_size = st
                .config
                .retention_bytes
                .is_some_and(|limit| total - oldest.size >= limit);
            let newest_ms = if oldest.max_timestamp >= 0 {
                oldest.max_timestamp
            } else {
                oldest.first_batch_ms.unwrap_or(now_ms)
            };
            let by_age = st
                .config
                .retention_age
                .is_some_and(|age| now_ms.saturating_sub(newest_ms) > age.as_millis() as i64);
            if !by_size && !by_age {
                break;
            }
            let Some(gone) = st.segments.pop_front() else {
                break;
            };
            total -= gone.size;
            report.segments_deleted += 1;
            report.bytes_deleted += gone.size;
            if let Err(e) = gone.files.unlink_now() {
                tracing::warn!(error = %e, "could not delete segment files");
            }
            tracing::info!(path = %gone.files.log_path().display(), base_offset = gone.base_offset, "retention deleted segment");
        }
        report.log_start_offset = st.segments[0].base_offset;
        report
    }

    /// Compacts the sealed segments that end at or below `options.below` (see
    /// `compact.rs`): keeps the latest record of each key, drops older ones and expired
    /// tombstones, moves no offset. Runs on the calling task, beside the writer, which
    /// only swaps each cleaned group in; appends go on meanwhile. A second call while one
    /// runs does nothing.
    pub async fn compact(&self, options: CompactOptions) -> Result<CompactReport> {
        let (dir, input) = {
            let mut st = self.state.borrow_mut();
            st.check_readable()?;
            if st.closed {
                return Err(LogError::Closed);
            }
            if st.compacting {
                return Ok(CompactReport::default());
            }
            st.compacting = true;
            let sealed = st.segments.len() - 1;
            let segments: Vec<SealedSegment> = st
                .segments
                .iter()
                .take(sealed)
                .take_while(|s| s.next_offset <= options.below)
                .map(|s| SealedSegment {
                    base_offset: s.base_offset,
                    next_offset: s.next_offset,
                    size: s.size,
                    files: Rc::clone(&s.files),
                })
                .collect();
            let input = compact::CleanInput {
                segments,
                first_dirty: st.clean_up_to,
                producer_last_batches: st.producers.last_batches().collect(),
                segment_bytes: st.config.segment_bytes,
                batch_bytes_max: self.replica_batch_bytes_max,
                truncations: st.truncations,
            };
            (st.dir.clone(), input)
        };
        struct Running(Rc<RefCell<LogState>>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.borrow_mut().compacting = false;
            }
        }
        let _running = Running(Rc::clone(&self.state));
        let commands = self.commands.clone();
        let truncations = input.truncations;
        let state = Rc::clone(&self.state);
        let still_open = move || !state.borrow().closed;
        let report = compact::clean(&dir, input, options, still_open, |group| {
            let mut commands = commands.clone();
            async move {
                let (reply, response) = oneshot::channel();
                commands
                    .send(Command::InstallCleaned { group, reply })
                    .await
                    .map_err(|_| LogError::Closed)?;
                response.await.map_err(|_| LogError::Closed)?
            }
        })
        .await?;
        let mut st = self.state.borrow_mut();
        // After a truncation during the clean, what it saw is not what is there.
        if st.truncations == truncations {
            st.clean_up_to = st.clean_up_to.max(report.clean_up_to);
        }
        Ok(report)
    }

    /// Bytes of the sealed segments ending at or below `below` that no clean has seen
    /// since the log opened, and of all those segments: the cleaner's dirty ratio.
    pub fn dirty_bytes(&self, below: i64) -> (u64, u64) {
        let st = self.state.borrow();
        let sealed = st.segments.len() - 1;
        let mut dirty = 0;
        let mut total = 0;
        for s in st
            .segments
            .iter()
            .take(sealed)
            .take_while(|s| s.next_offset <= below)
        {
            total += s.size;
            if s.base_offset >= st.clean_up_to {
                dirty += s.size;
            }
        }
        (dirty, total)
    }

    pub fn stats(&self) -> WriterStats {
        self.state.borrow().stats
    }

    /// Number of segments, for tests and metrics.
    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    /// Total bytes of written batches across segments.
    pub fn size_bytes(&self) -> u64 {
        self.state.borrow().segments.iter().map(|s| s.size).sum()
    }
}

/// Scans batch headers from `start` for the batch whose last offset is at least `offset`,
/// through a small read window (one read covers an index floor's stretch of small
/// batches).
async fn find_batch(
    files: &SegmentFiles,
    size: u64,
    start: u64,
    offset: i64,
) -> Result<PlacedBatch> {
    let mut scanner = BatchScanner::with_chunk(&files.log, size, HEADER_SCAN_CHUNK_BYTES);
    let mut pos = start;
    loop {
        let Some(bytes) = scanner
            .header_at(pos)
            .await
            .map_err(|e| LogError::io(files.log_path(), e))?
        else {
            break;
        };
        let header = BatchHeader::parse(bytes)?;
        let total = header.declared_total_bytes().max(BATCH_HEADER_BYTES as i64) as u64;
        if header.last_offset_delta < 0
            || (header.base_offset > offset && pos == start && start > 0)
        {
            // The index pointed into the wrong batch: better an error than wrong bytes.
            break;
        }
        // A batch past `offset` after earlier ones (or first in its segment) holds the
        // next offsets after a gap that compaction left: it is the answer, as in Kafka.
        if header.last_offset() >= offset {
            return Ok(PlacedBatch {
                position: pos,
                total,
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
            });
        }
        pos += total;
    }
    Err(LogError::OffsetNotFound {
        offset,
        path: files.log_path().to_owned(),
        start,
    })
}

/// Length of the longest prefix of `bytes` made of whole batches (at least the first
/// batch's declared length when it is all there).
pub(crate) fn whole_batches_len(bytes: &[u8]) -> usize {
    let mut at = 0usize;
    while let Ok(header) = BatchHeader::parse(&bytes[at..]) {
        let total = header.declared_total_bytes();
        if total < BATCH_HEADER_BYTES as i64 || at as i64 + total > bytes.len() as i64 {
            break;
        }
        at += total as usize;
    }
    at
}

/// Splits the records field of a leader's Fetch response into its whole batches,
/// validating each and checking that each follows the one before. Returns their headers
/// and the length of the whole-batch prefix; a partial batch at the end is left out.
/// Lengths come from another broker: each is bounded before it is used.
fn split_replica_batches(
    records: &[u8],
    batch_bytes_max: usize,
) -> Result<(Vec<BatchHeader>, usize)> {
    let mut headers: Vec<BatchHeader> = Vec::new();
    let mut at = 0usize;
    while records.len() - at >= BATCH_HEADER_BYTES {
        let rest = &records[at..];
        let header = BatchHeader::parse(rest)?;
        let declared = header.declared_total_bytes();
        if declared < BATCH_HEADER_BYTES as i64 {
            return Err(BatchError::LengthMismatch {
                declared,
                actual: rest.len(),
            }
            .into());
        }
        if declared > batch_bytes_max as i64 {
            return Err(BatchError::TooLarge {
                len: declared as usize,
                max: batch_bytes_max,
            }
            .into());
        }
        let total = declared as usize;
        if total > rest.len() {
            break; // the partial batch a fetch response may end with
        }
        let header = batch::validate_as(&rest[..total], batch_bytes_max, batch::Origin::Log)?;
        let expected = headers
            .last()
            .map_or(header.base_offset, |h| h.last_offset() + 1);
        // A gap is offsets that compaction removed from the leader's log.
        if header.base_offset < expected {
            return Err(LogError::ReplicaOffsetMismatch {
                expected,
                got: header.base_offset,
            });
        }
        if header
            .base_offset
            .checked_add(header.offset_count())
            .is_none()
        {
            return Err(LogError::OffsetOverflow {
                offset: header.base_offset,
            });
        }
        headers.push(header);
        at += total;
    }
    Ok((headers, at))
}

/// Answers every producer of `placed` with `error` (replica batches are answered by
/// their caller).
fn refuse_placed(placed: Vec<Placed>, error: &LogError) {
    for p in placed {
        if let Some(reply) = p.reply {
            let _ = reply.send(Err(clone_error(error)));
        }
    }
}

/// The failure a refused write answers with (only storage failures reach here).
fn clone_error(error: &LogError) -> LogError {
    match error {
        LogError::StorageFailed(failure) => LogError::StorageFailed(failure.clone()),
        other => LogError::StorageFailed(StorageFailure::from_error(FailedStep::Write, other)),
    }
}

/// A producer append as the writer receives it.
struct QueuedAppend {
    /// The batch as the caller handed it over (a slice of the request frame, not a copy).
    bytes: Bytes,
    header: BatchHeader,
    wait: AppendWait,
    /// Stamped into the batch; -1 for none.
    leader_epoch: i32,
    reply: oneshot::Sender<Result<AppendInfo>>,
}

/// An answer held back until a sync covers `last_offset`.
struct DurableWaiter {
    last_offset: i64,
    answer: PendingAnswer,
}

enum PendingAnswer {
    Append {
        info: AppendInfo,
        reply: oneshot::Sender<Result<AppendInfo>>,
    },
    Replica {
        info: ReplicaAppend,
        reply: oneshot::Sender<Result<ReplicaAppend>>,
    },
}

impl DurableWaiter {
    /// Answers once everything below `durable_offset` is synced.
    fn succeed(self, durable_offset: i64) {
        match self.answer {
            PendingAnswer::Append { info, reply } => {
                let _ = reply.send(Ok(AppendInfo {
                    durable: true,
                    ..info
                }));
            }
            PendingAnswer::Replica { info, reply } => {
                let _ = reply.send(Ok(ReplicaAppend {
                    durable_offset,
                    ..info
                }));
            }
        }
    }

    fn fail(self, error: LogError) {
        match self.answer {
            PendingAnswer::Append { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            PendingAnswer::Replica { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// A batch placed in the current write group.
struct Placed {
    header: BatchHeader,
    total: u64,
    wait: AppendWait,
    /// The producer's reply; `None` for replica batches, answered as a whole by the caller.
    reply: Option<oneshot::Sender<Result<AppendInfo>>>,
}

/// The partition's single writer. Owns the order of writes and syncs.
struct Writer {
    state: Rc<RefCell<LogState>>,
    durable_waiters: Vec<DurableWaiter>,
    /// Segments written since the last sync.
    unsynced: Vec<Rc<SegmentFiles>>,
    last_sync: Instant,
    /// The last roll's sealing of the segment it closed (sync, indexes, recovery point),
    /// running beside the appends to the new segment; see `roll`.
    sealing: Option<compio::runtime::JoinHandle<Result<()>>>,
    /// Under `FlushPolicy::Interval`, the interval's sync, running beside the appends;
    /// see `start_flush`.
    flushing: Option<Flushing>,
}

/// An interval sync running on its own task: it syncs the segments written before it
/// started (after the sealing it found, if any), so everything below `target` is durable
/// once it succeeds.
struct Flushing {
    target: i64,
    task: compio::runtime::JoinHandle<Result<()>>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut deferred: Option<Command> = None;
        loop {
            let command = match deferred.take() {
                Some(c) => c,
                None => match self.next_command(&mut rx).await {
                    Some(c) => c,
                    None => break,
                },
            };
            match command {
                Command::Append(first) => {
                    let mut group_bytes = first.bytes.len();
                    let mut group = vec![first];
                    while group.len() < WRITE_GROUP_BATCHES_MAX
                        && group_bytes < WRITE_GROUP_BYTES_MAX
                    {
                        match rx.try_recv() {
                            Ok(Command::Append(next)) => {
                                group_bytes += next.bytes.len();
                                group.push(next);
                            }
                            Ok(other) => {
                                deferred = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_group(group).await;
                    self.sync_if_every_append().await;
                }
                Command::AppendReplica {
                    records,
                    headers,
                    wait,
                    reply,
                } => {
                    self.append_replica(records, headers, wait, reply).await;
                    self.sync_if_every_append().await;
                }
                Command::Truncate { offset, reply } => {
                    let result = self.truncate(offset).await;
                    self.dirty_from_active();
                    let _ = reply.send(result);
                }
                Command::StartAt { offset, reply } => {
                    self.state.borrow_mut().starting_over = true;
                    let result = self.start_at(offset).await;
                    self.state.borrow_mut().starting_over = false;
                    self.dirty_from_active();
                    let _ = reply.send(result);
                }
                Command::AssignEpoch { epoch, reply } => {
                    let _ = reply.send(self.assign_epoch(epoch).await);
                }
                Command::Flush { reply } => {
                    // A failed sealing has latched the partition's failure, read below.
                    let _ = self.settle_sealing().await;
                    self.sync_and_answer().await;
                    let st = self.state.borrow();
                    let result = match &st.failed {
                        Some(failure) => Err(LogError::StorageFailed(failure.clone())),
                        None => Ok(st.durable_offset),
                    };
                    let _ = reply.send(result);
                }
                Command::InstallCleaned { group, reply } => {
                    let _ = reply.send(self.install_cleaned(group).await);
                }
                Command::Close { reply } => {
                    let result = self.close().await;
                    let _ = reply.send(result);
                    break;
                }
            }
        }
        // Dropped without a close, the sealing stops with the writer (its JoinHandle
        // cancels it), as at a crash: the checkpoint stays where it was, and a reopen of
        // this directory does not race a sealing still writing it.
        self.state.borrow_mut().closed = true;
    }

    /// After a truncation the active segment may be one a clean saw: what is appended
    /// to it next is new, so the log counts as dirty from its base.
    fn dirty_from_active(&self) {
        let mut st = self.state.borrow_mut();
        let base = st.active().base_offset;
        st.clean_up_to = st.clean_up_to.min(base);
        st.truncations += 1;
    }

    fn policy(&self) -> FlushPolicy {
        self.state.borrow().config.flush_policy
    }

    /// Group commit: under `EveryAppend`, one sync for the durable appends just written.
    async fn sync_if_every_append(&mut self) {
        if self.policy() == FlushPolicy::EveryAppend && !self.durable_waiters.is_empty() {
            self.sync_and_answer().await;
        }
    }

    /// Waits for the next command; under an interval policy, starts the interval's sync
    /// when the interval passes with unsynced writes, and finishes it (durable offset,
    /// waiters) when it ends, while commands go on being served.
    async fn next_command(&mut self, rx: &mut mpsc::Receiver<Command>) -> Option<Command> {
        use futures_util::future::{Either, select};
        loop {
            if let Some(flushing) = self.flushing.as_mut() {
                match select(rx.next(), &mut flushing.task).await {
                    Either::Left((command, _)) => return command,
                    Either::Right((result, _)) => {
                        let target = flushing.target;
                        self.flushing = None;
                        let result = result.unwrap_or(Err(LogError::Closed));
                        self.finish_flush(target, result.is_ok());
                        continue;
                    }
                }
            }
            let FlushPolicy::Interval(every) = self.policy() else {
                return rx.next().await;
            };
            // Durable waiters may wait on a rolled segment's sealing alone.
            if self.unsynced.is_empty() && self.durable_waiters.is_empty() {
                return rx.next().await;
            }
            let deadline = self.last_sync + every;
            match compio::time::timeout_at(deadline, rx.next()).await {
                Ok(command) => return command,
                Err(_) => self.start_flush(),
            }
        }
    }

    /// Starts the interval's sync on a task of its own: appends go on while it runs (an
    /// fdatasync of a second's writes took milliseconds, and appends waiting behind it
    /// were most of the p99 at 10,000 msgs/s). It takes the segments written so far and
    /// the running sealing (which it waits for first), so one sync at a time still runs
    /// per file; everything that would sync or change files settles it first
    /// (`settle_sealing`).
    fn start_flush(&mut self) {
        let target = self.state.borrow().active().next_offset;
        let files = std::mem::take(&mut self.unsynced);
        let sealing = self.sealing.take();
        let state = Rc::clone(&self.state);
        let task = compio::runtime::spawn(async move {
            if let Some(sealing) = sealing {
                sealing.await.unwrap_or(Err(LogError::Closed))?;
            }
            for files in files {
                timed_sync(&state, &files).await?;
            }
            Ok(())
        });
        self.flushing = Some(Flushing { target, task });
    }

    /// A sync of everything below `target` ended (an interval's, or an inline one): the
    /// durable offset moves to its target if it succeeded and no sync failed anywhere (a
    /// failed one, also a sealing's, means the page cache may hold bytes the disk does
    /// not: nothing more is durable); the waiters it covers are answered, and the others
    /// wait for the next one, unless a failure means none will cover them.
    fn finish_flush(&mut self, target: i64, synced: bool) {
        self.last_sync = Instant::now();
        let unsynced_failure = self
            .state
            .borrow()
            .failed
            .as_ref()
            .is_some_and(|f| !f.readable());
        if synced && !unsynced_failure {
            let mut st = self.state.borrow_mut();
            st.durable_offset = st.durable_offset.max(target);
        }
        let durable = self.state.borrow().durable_offset;
        let failed = !synced || unsynced_failure;
        let waiters = std::mem::take(&mut self.durable_waiters);
        for w in waiters {
            if w.last_offset < durable {
                w.succeed(durable);
            } else if failed {
                w.fail(self.failed().unwrap_or(LogError::Closed));
            } else {
                self.durable_waiters.push(w);
            }
        }
    }

    /// Latches the partition's failure at `step` (see `fail_log`).
    fn fail(&self, step: FailedStep, error: &LogError) {
        fail_log(&self.state, step, error);
    }

    /// Waits for the last roll's sealing to finish: everything that moves the recovery
    /// point or changes sealed segments (truncation, a new start, close, the next roll)
    /// runs after it, so checkpoints are written in order.
    async fn settle_sealing(&mut self) -> Result<()> {
        // A running interval sync holds the sealing it found; it is finished here, so the
        // durable offset and its waiters are where they would be after an inline sync.
        if let Some(flushing) = self.flushing.take() {
            let result = flushing.task.await.unwrap_or(Err(LogError::Closed));
            self.finish_flush(flushing.target, result.is_ok());
            result?;
        }
        match self.sealing.take() {
            Some(task) => task.await.unwrap_or(Err(LogError::Closed)),
            None => Ok(()),
        }
    }

    fn failed(&self) -> Option<LogError> {
        self.state
            .borrow()
            .failed
            .clone()
            .map(LogError::StorageFailed)
    }

    async fn write_group(&mut self, group: Vec<QueuedAppend>) {
        // Two buffers per batch: its first bytes with the offset and epoch stamped in (a
        // 16-byte copy), then the rest as the caller's bytes, so the batch itself is never
        // copied on its way to the file.
        let mut bufs: Vec<Bytes> = Vec::with_capacity(2 * group.len());
        let mut placed: Vec<Placed> = Vec::with_capacity(group.len());
        let mut next_offset = self.state.borrow().active().next_offset;
        // Retries of batches placed in this very group are answered once those are written.
        let mut early_duplicates = Vec::new();
        for QueuedAppend {
            bytes,
            mut header,
            wait,
            leader_epoch,
            reply,
        } in group
        {
            if let Some(failed) = self.failed() {
                let _ = reply.send(Err(failed));
                continue;
            }
            // Idempotent producers: a retried batch is answered with its first offsets.
            let check = self.state.borrow().producers.check(&header);
            match check {
                SequenceCheck::Append => {}
                SequenceCheck::Duplicate {
                    base_offset,
                    last_offset,
                } => {
                    let written_end = self.state.borrow().active().next_offset;
                    if last_offset >= written_end {
                        early_duplicates.push((base_offset, last_offset, wait, reply));
                    } else {
                        self.answer_duplicate(base_offset, last_offset, wait, reply);
                    }
                    continue;
                }
                SequenceCheck::OutOfOrder { expected, got } => {
                    let _ = reply.send(Err(LogError::OutOfOrderSequence { expected, got }));
                    continue;
                }
                SequenceCheck::FencedEpoch { current, got } => {
                    let _ = reply.send(Err(LogError::InvalidProducerEpoch { current, got }));
                    continue;
                }
            }
            let total = bytes.len() as u64;
            match self
                .make_room(&mut bufs, &mut placed, total, header.offset_count())
                .await
            {
                Ok(false) => {}
                Ok(true) => next_offset = self.state.borrow().active().next_offset,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            }
            let Some(after) = next_offset.checked_add(header.offset_count()) else {
                let _ = reply.send(Err(LogError::OffsetOverflow {
                    offset: next_offset,
                }));
                continue;
            };
            let (stamped, rest) = batch::stamp_head(&bytes, next_offset, leader_epoch);
            header.base_offset = next_offset;
            header.partition_leader_epoch = leader_epoch;
            next_offset = after;
            self.state.borrow_mut().producers.record(&header);
            bufs.push(stamped);
            bufs.push(rest);
            placed.push(Placed {
                header,
                total,
                wait,
                reply: Some(reply),
            });
        }
        self.write_placed(bufs, placed).await;
        for (base_offset, last_offset, wait, reply) in early_duplicates {
            match self.failed() {
                Some(failed) => {
                    let _ = reply.send(Err(failed));
                }
                None => self.answer_duplicate(base_offset, last_offset, wait, reply),
            }
        }
    }

    fn answer_duplicate(
        &mut self,
        base_offset: i64,
        last_offset: i64,
        wait: AppendWait,
        reply: oneshot::Sender<Result<AppendInfo>>,
    ) {
        let (log_start_offset, durable_offset, policy) = {
            let st = self.state.borrow();
            (
                st.segments[0].base_offset,
                st.durable_offset,
                st.config.flush_policy,
            )
        };
        let info = AppendInfo {
            base_offset,
            last_offset,
            log_start_offset,
            durable: last_offset < durable_offset,
            duplicate: true,
        };
        if wait == AppendWait::Durable && !info.durable && policy != FlushPolicy::Never {
            self.durable_waiters.push(DurableWaiter {
                last_offset,
                answer: PendingAnswer::Append { info, reply },
            });
        } else {
            let _ = reply.send(Ok(info));
        }
    }

    /// Writes a leader's batches (validated, offsets contiguous) at the log end as they
    /// are, rolling segments as appends do, and answers once for all of them.
    async fn append_replica(
        &mut self,
        records: Bytes,
        headers: Vec<BatchHeader>,
        wait: AppendWait,
        reply: oneshot::Sender<Result<ReplicaAppend>>,
    ) {
        if let Some(failed) = self.failed() {
            let _ = reply.send(Err(failed));
            return;
        }
        let log_end = self.state.borrow().active().next_offset;
        let first_offset = headers.first().map_or(log_end, |h| h.base_offset);
        // Past the log end only across offsets a compacted leader log no longer holds.
        if first_offset < log_end {
            let _ = reply.send(Err(LogError::ReplicaOffsetMismatch {
                expected: log_end,
                got: first_offset,
            }));
            return;
        }
        let batches = headers.len();
        let bytes = records.len() as u64;
        // `pending` holds the bytes not yet written; its first `placed_bytes` are placed.
        let mut pending = records;
        let mut placed_bytes = 0usize;
        let mut placed: Vec<Placed> = Vec::with_capacity(headers.len());
        for header in headers {
            let total = header.declared_total_bytes() as u64;
            let end = placed.last().map_or_else(
                || self.state.borrow().active().next_offset,
                |p| p.header.last_offset() + 1,
            );
            let offsets = header.last_offset() + 1 - end;
            if self.needs_roll(&placed, total, offsets) {
                let rest = pending.split_off(placed_bytes);
                let mut bufs = vec![std::mem::replace(&mut pending, rest)];
                placed_bytes = 0;
                let made = self.make_room(&mut bufs, &mut placed, total, offsets).await;
                if let Err(e) = made {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
            self.state.borrow_mut().producers.record(&header);
            placed_bytes += total as usize;
            placed.push(Placed {
                header,
                total,
                wait: AppendWait::Written,
                reply: None,
            });
        }
        self.write_placed(vec![pending], placed).await;
        if let Some(failed) = self.failed() {
            let _ = reply.send(Err(failed));
            return;
        }
        let (info, policy) = {
            let st = self.state.borrow();
            let info = ReplicaAppend {
                first_offset,
                log_end_offset: st.active().next_offset,
                durable_offset: st.durable_offset,
                batches,
                bytes,
            };
            (info, st.config.flush_policy)
        };
        if wait == AppendWait::Durable
            && policy != FlushPolicy::Never
            && info.durable_offset < info.log_end_offset
        {
            self.durable_waiters.push(DurableWaiter {
                last_offset: info.log_end_offset - 1,
                answer: PendingAnswer::Replica { info, reply },
            });
        } else {
            let _ = reply.send(Ok(info));
        }
    }

    /// Starts an entry for `epoch` at the log end (see `Partition::assign_leader_epoch`).
    async fn assign_epoch(&self, epoch: i32) -> Result<()> {
        if let Some(failed) = self.failed() {
            return Err(failed);
        }
        let pending = {
            let mut st = self.state.borrow_mut();
            let end = st.active().next_offset;
            st.epochs
                .assign(epoch, end)
                .then(|| (st.dir.clone(), st.epochs.encode()))
        };
        match pending {
            Some((dir, bytes)) => checkpoint::write_leader_epochs(&dir, bytes).await,
            None => Ok(()),
        }
    }

    /// Starts leader-epoch entries for placed batches of a new epoch and persists the
    /// cache before the batches are written: the file is never behind an acknowledged
    /// batch (an entry ahead of the log is dropped at the next open).
    async fn persist_new_epochs(&self, placed: &[Placed]) -> Result<()> {
        let pending = {
            let mut st = self.state.borrow_mut();
            let mut changed = false;
            for p in placed {
                changed |= st
                    .epochs
                    .assign(p.header.partition_leader_epoch, p.header.base_offset);
            }
            changed.then(|| (st.dir.clone(), st.epochs.encode()))
        };
        let Some((dir, bytes)) = pending else {
            return Ok(());
        };
        let written = checkpoint::write_leader_epochs(&dir, bytes).await;
        if written.is_err() {
            // The batches will not be written: forget the epochs they would have started.
            let mut st = self.state.borrow_mut();
            let end = st.active().next_offset;
            st.epochs.truncate_from_end(end);
        }
        written
    }

    /// Cuts the log back to the start of the batch holding `offset` (see
    /// `Partition::truncate_to`). Everything that can fail without harm (finding the cut,
    /// the new segment state, the producer state) is worked out before anything changes.
    /// Then the steps run in an order where a crash between any two leaves a log that
    /// recovery opens, with producer state and epochs that match it: the recovery
    /// checkpoint moves down first (the cut segment and all after it are re-validated at
    /// open), the producer snapshot as of the new end follows, then memory, the cut file
    /// and its indexes, the deleted segments, the epoch file and the checkpoint at the new
    /// end.
    async fn truncate(&mut self, offset: i64) -> Result<TruncateReport> {
        self.settle_sealing().await?;
        if let Some(failed) = self.failed() {
            return Err(failed);
        }
        let (log_start, log_end, dir, interval) = {
            let st = self.state.borrow();
            let offsets = st.offsets();
            let interval = st.config.index_interval_bytes.max(INDEX_INTERVAL_BYTES_MIN);
            (
                offsets.log_start_offset,
                offsets.log_end_offset,
                st.dir.clone(),
                interval,
            )
        };
        if offset >= log_end {
            return Ok(TruncateReport {
                log_end_offset: log_end,
                ..TruncateReport::default()
            });
        }
        let (mut segment, cut_position) = {
            let (i, span) = self.state.borrow().span_for(offset.max(log_start));
            let segment = self.state.borrow().segments[i].clone();
            let position = if offset <= log_start {
                0
            } else {
                find_batch(&span.files, span.size, span.start, offset)
                    .await?
                    .position
            };
            (segment, position)
        };
        let old_size = segment.size;
        segment.cut_to(cut_position, interval).await?;
        let new_end = segment.next_offset;
        let producers = self.producers_as_of(new_end).await?;
        tracing::info!(
            dir = %dir.display(),
            requested = offset,
            log_end,
            new_end,
            "truncating partition log"
        );

        let durable = {
            let mut st = self.state.borrow_mut();
            st.durable_offset = st.durable_offset.min(new_end);
            st.durable_offset
        };
        let steps = async {
            checkpoint::write_checkpoint(&dir, durable).await?;
            checkpoint::write_producer_snapshot(&dir, new_end, producers.encode()).await
        };
        if let Err(e) = steps.await {
            self.fail(FailedStep::Write, &e);
            return Err(self.failed().unwrap_or(e));
        }

        // From here readers see the cut log; the bytes past the cut are still on disk.
        // Retention may have dropped old segments during the awaits above: the segment
        // holding the cut is found again by its base offset.
        let swapped = {
            let mut st = self.state.borrow_mut();
            let at = st
                .segments
                .iter()
                .position(|s| s.base_offset == segment.base_offset);
            at.map(|at| {
                let removed: Vec<Segment> = st.segments.drain(at + 1..).collect();
                st.segments[at] = segment;
                st.producers = producers;
                let epochs_changed = st.epochs.truncate_from_end(new_end);
                (removed, epochs_changed)
            })
        };
        let Some((removed, epochs_changed)) = swapped else {
            // Retention deleted the segment holding the cut: nothing was cut (the
            // checkpoint and snapshot written so far hold for the uncut log too).
            let offsets = self.state.borrow().offsets();
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                log_start: offsets.log_start_offset,
                log_end: offsets.log_end_offset,
            });
        };
        for w in std::mem::take(&mut self.durable_waiters) {
            if w.last_offset >= new_end {
                let last_offset = w.last_offset;
                w.fail(LogError::TruncatedAway {
                    last_offset,
                    log_end: new_end,
                });
            } else {
                self.durable_waiters.push(w);
            }
        }
        let report = TruncateReport {
            log_end_offset: new_end,
            bytes_removed: old_size - cut_position + removed.iter().map(|s| s.size).sum::<u64>(),
            segments_deleted: removed.len(),
        };
        let files = Rc::clone(&self.state.borrow().active().files);
        if let Err(e) = files.truncate_log(cut_position).await {
            self.fail(FailedStep::Write, &e);
            return Err(self.failed().unwrap_or(e));
        }
        if let Err(e) = self.rewrite_active_indexes().await {
            self.fail(FailedStep::Write, &e);
            return Err(self.failed().unwrap_or(e));
        }
        if let Err(e) = self.timed_sync(&files).await {
            return Err(self.failed().unwrap_or(e));
        }
        // Only the active segment is ever unsynced, and the new one was just synced.
        self.unsynced.clear();
        let steps = async {
            for seg in &removed {
                seg.files.unlink_now()?;
                tracing::info!(path = %seg.log_path().display(), base_offset = seg.base_offset, "truncation deleted segment");
            }
            checkpoint::sync_dir(&dir).await?;
            if epochs_changed {
                let bytes = self.state.borrow().epochs.encode();
                checkpoint::write_leader_epochs(&dir, bytes).await?;
            }
            checkpoint::write_checkpoint(&dir, new_end).await
        };
        if let Err(e) = steps.await {
            self.fail(FailedStep::Write, &e);
            return Err(self.failed().unwrap_or(e));
        }
        // Everything below the new end is synced: answer the waiters below the cut.
        self.sync_and_answer().await;
        Ok(report)
    }

    /// Empties the log and starts it again at `offset` (see
    /// `Partition::truncate_fully_and_start_at`). The `start-at` file goes first: from
    /// then on recovery finishes the job whatever else was done, so the order of the rest
    /// only has to leave files recovery can delete. The new segment is made, memory
    /// switches to it, the old segments go oldest first, then the epoch file, the producer
    /// snapshot and the checkpoint describe the new log, and the start-at file goes last.
    async fn start_at(&mut self, offset: i64) -> Result<TruncateReport> {
        self.settle_sealing().await?;
        if let Some(failed) = self.failed() {
            return Err(failed);
        }
        let (dir, offsets) = {
            let st = self.state.borrow();
            (st.dir.clone(), st.offsets())
        };
        if offset < offsets.log_start_offset {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                log_start: offsets.log_start_offset,
                log_end: offsets.log_end_offset,
            });
        }
        tracing::info!(
            dir = %dir.display(),
            log_start = offsets.log_start_offset,
            log_end = offsets.log_end_offset,
            new_start = offset,
            "emptying the partition log to start again at a new offset"
        );
        if let Err(e) = checkpoint::write_start_at(&dir, offset).await {
            // Nothing has changed yet, but a start-at file may be in place: only recovery
            // may decide what holds now.
            self.fail(FailedStep::Write, &e);
            return Err(self.failed().unwrap_or(e));
        }
        // A segment already at `offset` gives its names up first (its readers keep its
        // open files): the new segment must be a new file.
        let clash = {
            let st = self.state.borrow();
            st.segments
                .iter()
                .find(|s| s.base_offset == offset)
                .map(|s| Rc::clone(&s.files))
        };
        let made = async {
            if let Some(files) = &clash {
                files.unlink_now()?;
            }
            let segment = Segment::open_files(&dir, offset, true).await?;
            checkpoint::sync_dir(&dir).await?;
            Ok::<_, LogError>(segment)
        };
        let segment = match made.await {
            Ok(segment) => segment,
            Err(e) => {
                self.fail(FailedStep::Write, &e);
                return Err(self.failed().unwrap_or(e));
            }
        };
        // From here readers see the new, empty log.
        let removed: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            let removed = st.segments.drain(..).collect();
            st.segments.push_back(segment);
            st.producers = ProducerStates::default();
            st.epochs = LeaderEpochCache::default();
            st.durable_offset = offset;
            removed
        };
        for w in std::mem::take(&mut self.durable_waiters) {
            let last_offset = w.last_offset;
            w.fail(LogError::TruncatedAway {
                last_offset,
                log_end: offset,
            });
        }
        // The old segments' unsynced bytes no longer matter; the new one holds none.
        self.unsynced.clear();
        let report = TruncateReport {
            log_end_offset: offset,
            bytes_removed: removed.iter().map(|s| s.size).sum(),
            segments_deleted: removed.len(),
        };
        let steps = async {
            for seg in &removed {
                let unlinked_already = clash
                    .as_ref()
                    .is_some_and(|files| Rc::ptr_eq(files, &seg.files));
                if !unlinked_already {
                    seg.files.unlink_now()?;
                }
                tracing::info!(path = %seg.log_path().display(), base_offset = seg.base_offset, "starting over deleted segment");
            }
            checkpoint::sync_dir(&dir).await?;
            checkpoint::write_leader_epochs(&dir, LeaderEpochCache::default().encode()).await?;
            checkpoint::write_producer_snapshot(&dir, offset, ProducerStates::default().encode())
                .await?;
            checkpoint::write_checkpoint(&dir, offset).await?;
            checkpoint::remove_start_at(&dir).await
        };
        if let Err(e) = steps.await {
            self.fail(FailedStep::Write, &e);
            return Err(self.failed().unwrap_or(e));
        }
        Ok(report)
    }

    /// The producer state as of `end` (every batch below it, none at or after): the
    /// snapshot file's state when it is at or below `end`, else an empty one from the log
    /// start, brought forward by the batch headers from there to `end`. Exact, at the cost
    /// of reading the log from the snapshot (or the log start) on.
    async fn producers_as_of(&self, end: i64) -> Result<ProducerStates> {
        let (dir, log_start) = {
            let st = self.state.borrow();
            (st.dir.clone(), st.segments[0].base_offset)
        };
        let snapshot = checkpoint::read_producer_snapshot(&dir)
            .await
            .filter(|(at, _)| *at <= end)
            .and_then(|(at, body)| Some((at, ProducerStates::decode(&body)?)));
        let (from, mut states) = match snapshot {
            Some((at, states)) => (at.max(log_start), states),
            None => (log_start, ProducerStates::default()),
        };
        let spans: Vec<SegmentSpan> = {
            let st = self.state.borrow();
            let (first, span) = st.span_for(from);
            let later = st.segments.iter().skip(first + 1).map(|s| SegmentSpan {
                files: Rc::clone(&s.files),
                size: s.size,
                start: 0,
            });
            std::iter::once(span).chain(later).collect()
        };
        for_each_header(&spans, end, &mut |h| {
            if h.base_offset >= from {
                states.record(h);
            }
        })
        .await?;
        Ok(states)
    }

    /// Rewrites the active segment's index files from memory (after a truncation).
    async fn rewrite_active_indexes(&mut self) -> Result<()> {
        let (files, writes) = {
            let mut st = self.state.borrow_mut();
            let write_path = st.config.write_path;
            let active = st.active_mut();
            active.offset_index.mark_unpersisted();
            active.time_index.mark_unpersisted();
            (
                Rc::clone(&active.files),
                active.take_index_writes(write_path),
            )
        };
        files.truncate_indexes().await?;
        writes.write().await
    }

    /// Makes room in the active segment for a batch of `total` bytes and `offset_count`
    /// offsets: when it must roll first, writes the batches placed so far and rolls.
    /// Returns whether it rolled, or the failure that stopped it.
    async fn make_room(
        &mut self,
        bufs: &mut Vec<Bytes>,
        placed: &mut Vec<Placed>,
        total: u64,
        offset_count: i64,
    ) -> Result<bool> {
        if !self.needs_roll(placed, total, offset_count) {
            return Ok(false);
        }
        self.write_placed(std::mem::take(bufs), std::mem::take(placed))
            .await;
        if let Some(failed) = self.failed() {
            return Err(failed);
        }
        if let Err(e) = self.roll().await {
            self.fail(FailedStep::Write, &e);
            return Err(self.failed().unwrap_or(e));
        }
        Ok(true)
    }

    /// Whether the active segment must roll before a batch of `total` bytes that takes
    /// the `offset_count` offsets after the `placed` ones (a replica batch after a gap
    /// left by compaction counts the gap too) joins them.
    fn needs_roll(&self, placed: &[Placed], total: u64, offset_count: i64) -> bool {
        let st = self.state.borrow();
        let active = st.active();
        let pending_bytes: u64 = placed.iter().map(|p| p.total).sum();
        let pending_end = placed
            .last()
            .map_or(active.next_offset, |p| p.header.last_offset() + 1);
        if active.is_empty() && placed.is_empty() {
            return false;
        }
        let by_size = active.size + pending_bytes + total > st.config.segment_bytes;
        let relative_end = pending_end - active.base_offset + offset_count;
        let by_offsets = relative_end > i64::from(u32::MAX);
        let by_age = match (st.config.segment_age_max, active.first_batch_ms) {
            (Some(age), Some(first)) => now_ms().saturating_sub(first) > age.as_millis() as i64,
            _ => false,
        };
        by_size || by_offsets || by_age
    }

    /// Writes the placed batches at the end of the active segment in one vectored write,
    /// then publishes them to readers and answers the callers.
    async fn write_placed(&mut self, bufs: Vec<Bytes>, placed: Vec<Placed>) {
        if placed.is_empty() {
            return;
        }
        if let Some(failed) = self.failed() {
            refuse_placed(placed, &failed);
            return;
        }
        if let Err(e) = self.persist_new_epochs(&placed).await {
            self.fail(FailedStep::Write, &e);
            refuse_placed(placed, &self.failed().unwrap_or(e));
            return;
        }
        let (files, position) = {
            let st = self.state.borrow();
            (Rc::clone(&st.active().files), st.active().size)
        };
        let write_path = self.state.borrow().config.write_path;
        let written = files
            .write_all_at(SegmentFile::Log, bufs, position, write_path)
            .await;
        if let Err(error) = written {
            self.fail(FailedStep::Write, &error);
            // Nothing of the group was published, so readers never see its bytes. Best
            // effort: drop whatever part of it reached the file, so the segment ends at its
            // last whole batch (recovery at the next open truncates it anyway).
            if let Err(e) = files.truncate_log(position).await {
                tracing::warn!(error = %e, position, "cannot cut a failed write off the log");
            }
            let failure = StorageFailure::from_error(FailedStep::Write, &error);
            refuse_placed(placed, &LogError::StorageFailed(failure));
            return;
        }
        let mut answers = Vec::with_capacity(placed.len());
        {
            let mut st = self.state.borrow_mut();
            let interval = st.config.index_interval_bytes.max(INDEX_INTERVAL_BYTES_MIN);
            let log_start_offset = st.segments[0].base_offset;
            let never = st.config.flush_policy == FlushPolicy::Never;
            st.stats.writes += 1;
            st.stats.batches += placed.len() as u64;
            let active = st.active_mut();
            if active.first_batch_ms.is_none() {
                active.first_batch_ms = Some(now_ms());
            }
            let mut pos = position;
            for p in placed {
                active.note_batch(pos, &p.header, p.total, interval);
                pos += p.total;
                let info = AppendInfo {
                    base_offset: p.header.base_offset,
                    last_offset: p.header.last_offset(),
                    log_start_offset,
                    durable: false,
                    duplicate: false,
                };
                answers.push((p.wait, info, p.reply));
            }
            for (wait, info, reply) in answers {
                let Some(reply) = reply else { continue };
                if wait == AppendWait::Written || never {
                    let _ = reply.send(Ok(info));
                } else {
                    self.durable_waiters.push(DurableWaiter {
                        last_offset: info.last_offset,
                        answer: PendingAnswer::Append { info, reply },
                    });
                }
            }
        }
        let observer = self.state.borrow().write_observer.clone();
        if let Some(observer) = observer {
            observer();
        }
        if !self.unsynced.iter().any(|f| Rc::ptr_eq(f, &files)) {
            self.unsynced.push(Rc::clone(&files));
        }
        if let Err(e) = self.persist_active_indexes(false).await {
            self.fail(FailedStep::Write, &e);
        }
    }

    /// Writes the active segment's new index entries to its index files: always when
    /// `all`, otherwise once enough have gathered to be worth the syscalls. Entries not
    /// yet written are safe to lose: the active segment's indexes are rebuilt by
    /// recovery, and rolls and closes write everything first.
    async fn persist_active_indexes(&mut self, all: bool) -> Result<()> {
        let writes = {
            let mut st = self.state.borrow_mut();
            let write_path = st.config.write_path;
            let active = st.active_mut();
            if !all && active.unpersisted_index_entries() < INDEX_PERSIST_ENTRIES_MIN {
                return Ok(());
            }
            active.take_index_writes(write_path)
        };
        writes.write().await
    }

    /// fdatasyncs one segment's log file (see `timed_sync`).
    async fn timed_sync(&self, files: &SegmentFiles) -> Result<()> {
        timed_sync(&self.state, files).await
    }

    /// Syncs every segment written since the last sync, then answers durable waiters.
    /// The last roll's sealing is part of it: the segment it syncs is not among
    /// `unsynced`, and the durable offset moved here covers it.
    async fn sync_and_answer(&mut self) {
        let target = self.state.borrow().active().next_offset;
        let mut result = self.settle_sealing().await;
        if result.is_ok() {
            for files in std::mem::take(&mut self.unsynced) {
                if let Err(e) = self.timed_sync(&files).await {
                    result = Err(e);
                    break;
                }
            }
        }
        self.finish_flush(target, result.is_ok());
        // Every waiter was below `target` (truncations fail those they cut first): only a
        // failed sync leaves one uncovered, and it is never acknowledged.
        for w in std::mem::take(&mut self.durable_waiters) {
            w.fail(self.failed().unwrap_or(LogError::Closed));
        }
    }

    /// Starts a new active segment at the log end, and seals the old one beside the
    /// appends that follow (as Kafka flushes a rolled segment in the background): its
    /// fdatasync can take seconds when the page cache holds much of it, and appends to the
    /// new segment need not wait for it. The sealing syncs the old segment and its
    /// indexes, then writes the producer snapshot and the recovery checkpoint at the new
    /// base; until then a crash recovers from the previous checkpoint, validating both
    /// segments (and recovery syncs what it validated). A durable sync (`sync_and_answer`)
    /// waits for the sealing before it moves the durable offset.
    async fn roll(&mut self) -> Result<()> {
        self.settle_sealing().await?;
        self.persist_active_indexes(true).await?;
        let (sealed, dir, base) = {
            let st = self.state.borrow();
            (
                Rc::clone(&st.active().files),
                st.dir.clone(),
                st.active().next_offset,
            )
        };
        let segment = Segment::open_files(&dir, base, true).await?;
        checkpoint::sync_dir(&dir).await?;
        // The sealing syncs the old segment; a durable sync waits for the sealing. One
        // fdatasync per file at a time: two on one file could each miss the other's
        // writeback error.
        self.unsynced.retain(|f| !Rc::ptr_eq(f, &sealed));
        let snapshot = {
            let mut st = self.state.borrow_mut();
            let snapshot = st.producers.encode();
            // Only the active segment keeps its recent batches: memory per partition, not
            // per segment.
            if let Some(old) = st.segments.back_mut() {
                old.clear_recent();
            }
            st.segments.push_back(segment);
            st.stats.rolls += 1;
            snapshot
        };
        let state = Rc::clone(&self.state);
        self.sealing = Some(compio::runtime::spawn(async move {
            timed_sync(&state, &sealed).await?;
            let sealed_up = async {
                sealed.sync_indexes().await?;
                // The checkpoint must not vouch for anything after a failed sync.
                let failed = state.borrow().failed.clone();
                if let Some(failure) = failed.filter(|f| !f.readable()) {
                    return Err(LogError::StorageFailed(failure));
                }
                checkpoint::write_producer_snapshot(&dir, base, snapshot).await?;
                checkpoint::write_checkpoint(&dir, base).await
            };
            if let Err(e) = sealed_up.await {
                fail_log(&state, FailedStep::Write, &e);
                return Err(e);
            }
            let mut st = state.borrow_mut();
            st.durable_offset = st.durable_offset.max(base);
            tracing::debug!(dir = %dir.display(), base_offset = base, "sealed a rolled segment");
            Ok(())
        }));
        tracing::debug!(base_offset = base, "rolled segment");
        Ok(())
    }

    /// Step 3 of a clean (see `compact.rs`): puts the cleaned segment in place of its
    /// group if the group is still what the cleaner read. The check and the rename to
    /// the swap name happen here, in the writer, so that a swap file on disk always
    /// matches the segments it replaces. Once the swap file exists, a failure latches the
    /// partition: the disk is ahead of memory until the next open, whose recovery
    /// finishes the swap. Retention waits until the segments are in place.
    async fn install_cleaned(&mut self, group: CleanedGroup) -> Result<bool> {
        if let Some(failed) = self.failed() {
            return Err(failed);
        }
        self.settle_sealing().await?;
        if self.state.borrow().truncations != group.truncations {
            return Ok(false);
        }
        let Some((dir, interval)) = self.group_still_there(&group) else {
            return Ok(false);
        };
        let base = group.replaced[0].base_offset;
        let end = group.replaced[group.replaced.len() - 1].next_offset;
        self.state.borrow_mut().installing = true;
        let committed = std::cell::Cell::new(false);
        let steps = async {
            let swap_path = dir.join(compact::swap_file_name(base, end));
            compio::fs::rename(&group.cleaned_path, &swap_path)
                .await
                .map_err(|e| LogError::io(&swap_path, e))?;
            committed.set(true);
            checkpoint::sync_dir(&dir).await?;
            for old in &group.replaced {
                old.files.unlink_now()?;
            }
            // The indexes are written and synced while the log is still the swap file:
            // a crash before the rename below finishes the swap at the next open (and
            // rebuilds them), one after it finds them whole.
            let mut built = Segment::open_with_log(&dir, base, swap_path.clone(), false).await?;
            let file_len = built.file_len().await?;
            let outcome = built
                .scan_from(0, false, interval, Some(end), &mut |_| {})
                .await?;
            if let Some(reason) = outcome.stopped.filter(|_| outcome.valid_bytes < file_len) {
                return Err(LogError::CorruptSegment {
                    path: swap_path,
                    position: outcome.valid_bytes,
                    reason,
                });
            }
            built.clear_recent();
            built.rewrite_indexes().await?;
            built.files.sync_indexes().await?;
            // The unlinks and the new index names are durable before the log's rename.
            checkpoint::sync_dir(&dir).await?;
            let log_path = dir.join(format!(
                "{}{}",
                segment::file_stem(base),
                segment::LOG_SUFFIX
            ));
            compio::fs::rename(&swap_path, &log_path)
                .await
                .map_err(|e| LogError::io(&log_path, e))?;
            checkpoint::sync_dir(&dir).await?;
            // The same files under their names now, with what the scan found.
            let named = Segment::open_files(&dir, base, false).await?;
            Ok(Segment {
                files: named.files,
                ..built
            })
        };
        let result = steps.await;
        let mut st = self.state.borrow_mut();
        // Past the commit point a failure leaves retention stopped until the next open,
        // whose recovery finishes the swap: memory still lists the old group.
        st.installing = result.is_err() && committed.get();
        let seg = match result {
            Ok(seg) => seg,
            Err(e) => {
                drop(st);
                self.fail(FailedStep::Write, &e);
                return Err(e);
            }
        };
        // Found again: only the writer changes `segments` while `installing` is set,
        // but the position is not trusted across the awaits.
        let Some(start) = st
            .segments
            .iter()
            .position(|s| Rc::ptr_eq(&s.files, &group.replaced[0].files))
        else {
            drop(st);
            let e = LogError::CorruptSegment {
                path: dir,
                position: 0,
                reason: "a cleaned group left the log while it was swapped in",
            };
            self.fail(FailedStep::Write, &e);
            return Err(e);
        };
        let replaced: Vec<Segment> = st
            .segments
            .drain(start..start + group.replaced.len())
            .collect();
        st.segments.insert(start, seg);
        drop(st);
        // The old files close when the last reader lets go of them.
        drop(replaced);
        Ok(true)
    }

    /// The directory and index interval, when the group's segments are still in the log
    /// as the cleaner read them (same files, size and end), and none is the active one.
    fn group_still_there(&self, group: &CleanedGroup) -> Option<(PathBuf, u64)> {
        let st = self.state.borrow();
        let start = st
            .segments
            .iter()
            .position(|s| Rc::ptr_eq(&s.files, &group.replaced[0].files))?;
        if start + group.replaced.len() >= st.segments.len() {
            return None;
        }
        let same = group.replaced.iter().enumerate().all(|(k, old)| {
            let s = &st.segments[start + k];
            Rc::ptr_eq(&s.files, &old.files)
                && s.size == old.size
                && s.next_offset == old.next_offset
        });
        same.then(|| {
            (
                st.dir.clone(),
                st.config.index_interval_bytes.max(INDEX_INTERVAL_BYTES_MIN),
            )
        })
    }

    async fn close(&mut self) -> Result<()> {
        let sealed = self.settle_sealing().await;
        self.sync_and_answer().await;
        sealed?;
        if let Some(failed) = self.failed() {
            return Err(failed);
        }
        let (dir, end) = self.seal_active().await?;
        self.write_recovery_point(&dir, end).await?;
        checkpoint::write_clean_marker(&dir).await?;
        Ok(())
    }

    /// Writes the active segment's pending index entries and syncs its files. Returns the
    /// partition directory and the log end offset.
    async fn seal_active(&mut self) -> Result<(PathBuf, i64)> {
        let (files, dir, end) = {
            let st = self.state.borrow();
            (
                Rc::clone(&st.active().files),
                st.dir.clone(),
                st.active().next_offset,
            )
        };
        self.persist_active_indexes(true).await?;
        self.timed_sync(&files).await?;
        files.sync_indexes().await?;
        self.unsynced.retain(|f| !Rc::ptr_eq(f, &files));
        Ok((dir, end))
    }

    /// Everything below `offset` is on disk: record the producer state as of it and move
    /// the recovery checkpoint there.
    async fn write_recovery_point(&self, dir: &Path, offset: i64) -> Result<()> {
        let snapshot = self.state.borrow().producers.encode();
        checkpoint::write_producer_snapshot(dir, offset, snapshot).await?;
        checkpoint::write_checkpoint(dir, offset).await
    }
}

/// Pending writes of index entries, taken from a segment so no borrow spans the I/O.
pub(crate) struct IndexWrites {
    files: Rc<SegmentFiles>,
    index: (Vec<u8>, u64),
    time_index: (Vec<u8>, u64),
    write_path: WritePath,
}

impl IndexWrites {
    pub async fn write(self) -> Result<()> {
        for (which, (bytes, at)) in [
            (SegmentFile::Index, self.index),
            (SegmentFile::TimeIndex, self.time_index),
        ] {
            if !bytes.is_empty() {
                self.files
                    .write_all_at(which, vec![bytes], at, self.write_path)
                    .await?;
            }
        }
        Ok(())
    }
}

impl Segment {
    fn unpersisted_index_entries(&self) -> usize {
        self.offset_index.unpersisted() + self.time_index.unpersisted()
    }

    pub(crate) fn take_index_writes(&mut self, write_path: WritePath) -> IndexWrites {
        let index_at = self.offset_index.persisted_bytes();
        let index = self.offset_index.take_unpersisted();
        let time_at = self.time_index.persisted_bytes();
        let time_index = self.time_index.take_unpersisted();
        IndexWrites {
            files: Rc::clone(&self.files),
            index: (index, index_at),
            time_index: (time_index, time_at),
            write_path,
        }
    }
}

/// Latches the partition's failure at `step`. A failed sync after a failed write makes it
/// worse (unreadable), never the other way round.
fn fail_log(state: &RefCell<LogState>, step: FailedStep, error: &LogError) {
    let (failure, observer) = {
        let mut st = state.borrow_mut();
        let worse = match &st.failed {
            None => true,
            Some(earlier) => earlier.readable() && step == FailedStep::Sync,
        };
        if !worse {
            return;
        }
        let failure = StorageFailure::from_error(step, error);
        let partition = st.dir.file_name().map(|n| n.to_string_lossy().into_owned());
        tracing::error!(
            partition = partition.as_deref().unwrap_or_default(),
            step = %failure.step,
            path = %failure.path.display(),
            cause = %failure.cause,
            readable = failure.readable(),
            "partition storage failed: appends are refused with KAFKA_STORAGE_ERROR until \
             the broker restarts{}",
            if failure.readable() { "; reads go on" } else { ", and reads too" }
        );
        st.failed = Some(failure.clone());
        (failure, st.failure_observer.clone())
    };
    if let Some(observer) = observer {
        observer(&failure);
    }
}

/// fdatasyncs one segment's log file, counting and timing it for the stats and the sync
/// observer; a failure latches the partition's.
async fn timed_sync(state: &RefCell<LogState>, files: &SegmentFiles) -> Result<()> {
    state.borrow_mut().stats.sync_starts += 1;
    let started = Instant::now();
    let result = files.sync_log().await;
    let took = started.elapsed();
    let observer = {
        let mut st = state.borrow_mut();
        st.stats.syncs += 1;
        st.stats.sync_time += took;
        st.sync_observer.clone()
    };
    if let Some(observer) = observer {
        observer(took);
    }
    if let Err(e) = &result {
        fail_log(state, FailedStep::Sync, e);
    }
    result
}
