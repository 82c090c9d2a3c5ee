//! Opening a partition directory: find the segments, trust what a clean shutdown or the
//! recovery checkpoint vouches for, re-validate the rest batch by batch, truncate at the
//! first byte that fails, and rebuild indexes that do not check out.
//!
//! Cases handled (each has a test in `tests/recovery.rs` or the property test):
//! - torn tail: a batch header or body cut short by a crash -> truncated;
//! - corrupt batch mid-segment (CRC, length, magic, framing) -> truncated there, and every
//!   later segment deleted (its offsets would no longer follow);
//! - offsets that do not follow the previous batch -> treated as corruption;
//! - missing, truncated or garbage `.index`/`.timeindex` -> rebuilt from the log;
//! - missing or damaged checkpoint -> everything is re-validated;
//! - leftover temp files from an interrupted checkpoint write -> removed;
//! - missing or damaged `leader-epoch-checkpoint` -> rebuilt from the batch headers;
//!   entries past the recovered log end (written before a batch that never landed, or
//!   left by an interrupted truncation) -> dropped; batches the scan reads with a newer
//!   epoch than the file knows -> added;
//! - a `start-at` file (an interrupted `truncate_fully_and_start_at`) -> the job is
//!   finished: every segment deleted, one empty segment at its offset, no epochs, no
//!   producers; a damaged one is removed and the log opens as found.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::batch::BatchHeader;
use crate::checkpoint;
use crate::config::{LogConfig, RecoveryScope};
use crate::error::{LogError, Result};
use crate::leader_epoch::LeaderEpochCache;
use crate::limits::SEGMENTS_PER_PARTITION_MAX;
use crate::offset_index::OffsetIndex;
use crate::partition::LogState;
use crate::producer_state::ProducerStates;
use crate::segment::{self, Segment, SegmentSpan};
use crate::time_index::TimeIndex;

/// What `open` found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub clean_shutdown: bool,
    pub segments: usize,
    /// Segments whose batches were re-validated (CRC and all).
    pub segments_validated: usize,
    pub batches_validated: u64,
    pub bytes_validated: u64,
    /// Bytes cut from a torn or corrupt tail, including deleted later segments.
    pub bytes_truncated: u64,
    pub segments_deleted: usize,
    pub indexes_rebuilt: usize,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub duration: Duration,
}

pub(crate) async fn open_log(dir: &Path, config: LogConfig) -> Result<(LogState, RecoveryReport)> {
    let started = Instant::now();
    compio::fs::create_dir_all(dir)
        .await
        .map_err(|e| LogError::io(dir, e))?;
    match checkpoint::read_start_at(dir).await? {
        Some(Some(offset)) => finish_start_at(dir, offset).await?,
        Some(None) => {
            // Without the offset the job cannot be finished: the log opens as far as it
            // got (old segments deleted oldest first, the new one after a gap is cut).
            tracing::warn!(dir = %dir.display(), "start-at file is damaged; recovering the log as found");
            checkpoint::remove_start_at(dir).await?;
        }
        None => {}
    }
    // A compaction swap a crash interrupted is finished first; the segments it makes
    // have no indexes yet and are re-validated below, which rebuilds them.
    let swapped = crate::compact::finish_swaps(dir)?;
    if !swapped.is_empty() {
        checkpoint::sync_dir(dir).await?;
    }
    let clean = checkpoint::clean_marker_exists(dir);
    let checkpoint = checkpoint::read_checkpoint(dir).await;
    let bases = list_segments(dir)?;
    let mut report = RecoveryReport {
        clean_shutdown: clean,
        ..RecoveryReport::default()
    };
    let interval = config.index_interval_bytes;
    let full = config.recovery_scope == RecoveryScope::Full;
    // Producer state: the snapshot, then every batch from its offset on that the scan
    // below reads (a snapshot is written at every roll and close, so the batches after it
    // are in segments that recovery reads anyway).
    let (snapshot_offset, mut producers) = match checkpoint::read_producer_snapshot(dir).await {
        Some((offset, body)) => match ProducerStates::decode(&body) {
            Some(states) => (offset, states),
            None => (0, ProducerStates::default()),
        },
        None => (0, ProducerStates::default()),
    };
    // Leader epochs: the file, brought forward by the batches the scan reads.
    let loaded_epochs = load_epochs(dir).await;
    let mut epochs = loaded_epochs.clone();
    let mut on_batch = |h: &BatchHeader| {
        if h.base_offset >= snapshot_offset {
            producers.record(h);
        }
        if let Some(epochs) = epochs.as_mut() {
            epochs.assign(h.partition_leader_epoch, h.base_offset);
        }
    };

    let mut segments: VecDeque<Segment> = VecDeque::with_capacity(bases.len());
    let mut cut_at: Option<usize> = None;
    // Segments read without the checkpoint's word for them: what was read may be only in
    // the page cache (a crash of the process, not of the machine), and a later checkpoint
    // will vouch for them, so they are synced before the log opens. One flag per entry
    // of `segments`.
    let mut validated: Vec<bool> = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        let mut seg = Segment::open_files(dir, base, false).await?;
        if let Some(prev) = segments.back()
            && prev.next_offset != base
        {
            tracing::warn!(path = %seg.log_path().display(), expected = prev.next_offset, "segment does not follow the previous one");
            // The cleanup below deletes this segment and every later one.
            cut_at = Some(i);
            break;
        }
        let next_base = bases.get(i + 1).copied();
        let vouched = !full
            && !swapped.contains(&base)
            && (clean || next_base.is_some_and(|next| next <= checkpoint));
        let file_len = seg.file_len().await?;
        let intact = if vouched {
            load_trusted(&mut seg, file_len, interval, next_base, &mut on_batch).await?
        } else {
            false
        };
        let valid = if intact {
            true
        } else {
            validate(
                &mut seg,
                file_len,
                interval,
                next_base,
                &mut report,
                &mut on_batch,
            )
            .await?
        };
        validated.push(!intact);
        // Only the active (last) segment keeps its recent batches.
        if let Some(sealed) = segments.back_mut() {
            sealed.clear_recent();
        }
        segments.push_back(seg);
        if !valid {
            cut_at = Some(i + 1);
            break;
        }
    }
    if let Some(cut) = cut_at {
        for &base in &bases[cut..] {
            let seg = Segment::open_files(dir, base, false).await?;
            report.bytes_truncated += seg.file_len().await?;
            report.segments_deleted += 1;
            seg.files.unlink_now()?;
            tracing::warn!(path = %seg.log_path().display(), "deleted segment after a corrupt one");
        }
        checkpoint::sync_dir(dir).await?;
    }
    for (seg, _) in segments.iter().zip(&validated).filter(|(_, v)| **v) {
        seg.files.sync_log().await?;
        seg.files.sync_indexes().await?;
    }
    if segments.is_empty() {
        segments.push_back(Segment::open_files(dir, 0, true).await?);
        checkpoint::sync_dir(dir).await?;
    }
    checkpoint::remove_clean_marker(dir).await?;

    let log_end = segments[segments.len() - 1].next_offset;
    // Nothing truncated away may still be remembered as written.
    producers.truncate(log_end);
    let epochs = match epochs {
        Some(mut epochs) => {
            epochs.truncate_from_end(log_end);
            epochs
        }
        None => rebuild_epochs(&segments).await,
    };
    if loaded_epochs.as_ref() != Some(&epochs) {
        checkpoint::write_leader_epochs(dir, epochs.encode()).await?;
    }
    let durable = if clean {
        log_end
    } else {
        checkpoint.min(log_end)
    };
    report.segments = segments.len();
    report.log_start_offset = segments[0].base_offset;
    report.log_end_offset = log_end;
    report.duration = started.elapsed();
    if report.segments_validated > 0 || report.bytes_truncated > 0 {
        tracing::info!(dir = %dir.display(), ?report, "recovered partition log");
    }
    let state = LogState {
        dir: dir.to_path_buf(),
        config,
        segments,
        durable_offset: durable,
        failed: None,
        failure_observer: None,
        closed: false,
        stats: Default::default(),
        producers,
        epochs,
        sync_observer: None,
        write_observer: None,
        starting_over: false,
        compacting: false,
        installing: false,
        truncations: 0,
        clean_up_to: report.log_start_offset,
    };
    Ok((state, report))
}

/// Finishes an interrupted `truncate_fully_and_start_at`: whatever it had done, the log
/// becomes one empty segment at `offset`, with no leader epochs and no producers.
async fn finish_start_at(dir: &Path, offset: i64) -> Result<()> {
    tracing::warn!(dir = %dir.display(), offset, "finishing an interrupted start of the log at a new offset");
    for base in list_segments(dir)? {
        segment::remove_files(dir, base)?;
    }
    drop(Segment::open_files(dir, offset, true).await?);
    checkpoint::sync_dir(dir).await?;
    checkpoint::write_leader_epochs(dir, LeaderEpochCache::default().encode()).await?;
    checkpoint::write_producer_snapshot(dir, offset, ProducerStates::default().encode()).await?;
    checkpoint::write_checkpoint(dir, offset).await?;
    checkpoint::remove_start_at(dir).await
}

/// The leader-epoch cache as its file has it; `None` when missing or damaged.
async fn load_epochs(dir: &Path) -> Option<LeaderEpochCache> {
    let bytes = checkpoint::read_leader_epochs(dir).await?;
    match LeaderEpochCache::decode(&bytes) {
        Ok(epochs) => Some(epochs),
        Err(reason) => {
            tracing::warn!(dir = %dir.display(), reason, "leader-epoch checkpoint is damaged; rebuilding it from the log");
            None
        }
    }
}

/// The leader-epoch cache from the batch headers of every segment. A segment that does
/// not frame where recovery trusted it ends the rebuild with what was found so far: the
/// file is a cache, and it must not keep the log from opening.
async fn rebuild_epochs(segments: &VecDeque<Segment>) -> LeaderEpochCache {
    let spans: Vec<SegmentSpan> = segments
        .iter()
        .map(|s| SegmentSpan {
            files: std::rc::Rc::clone(&s.files),
            size: s.size,
            start: 0,
        })
        .collect();
    let mut epochs = LeaderEpochCache::default();
    let scanned = segment::for_each_header(&spans, i64::MAX, &mut |h| {
        epochs.assign(h.partition_leader_epoch, h.base_offset);
    })
    .await;
    if let Err(e) = scanned {
        tracing::warn!(error = %e, "leader-epoch rebuild stopped early");
    }
    epochs
}

/// Base offsets of the segment files in `dir`, sorted; removes leftover temp files.
fn list_segments(dir: &Path) -> Result<Vec<i64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if checkpoint::is_temp_file(name) {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if let Some(base) = segment::parse_log_file_name(name) {
            if bases.len() >= SEGMENTS_PER_PARTITION_MAX {
                return Err(LogError::TooManySegments {
                    path: dir.to_path_buf(),
                    max: SEGMENTS_PER_PARTITION_MAX,
                });
            }
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Loads a segment the checkpoint or a clean shutdown vouches for: its indexes from disk
/// (sanity-checked), then a framing-only walk from the last index entry to the end.
/// Returns false when anything fails to check out; the caller then re-validates it.
async fn load_trusted(
    seg: &mut Segment,
    file_len: u64,
    interval: u64,
    sealed_end: Option<i64>,
    on_batch: &mut dyn FnMut(&BatchHeader),
) -> Result<bool> {
    let (index_bytes, time_bytes) = seg.read_index_files().await?;
    let Ok(offset_index) = OffsetIndex::decode(&index_bytes, file_len) else {
        return Ok(false);
    };
    let start = offset_index.last().map(|e| (e.relative_offset, e.position));
    // The time index may only name offsets the offset index reaches or the tail holds;
    // it is checked against the segment's end once the tail is walked.
    let Ok(time_index) = TimeIndex::decode(&time_bytes, u64::from(u32::MAX)) else {
        return Ok(false);
    };
    let (from_offset, from_pos) = match start {
        Some((rel, pos)) => (seg.base_offset + i64::from(rel), u64::from(pos)),
        None => (seg.base_offset, 0),
    };
    seg.offset_index = offset_index;
    seg.time_index = time_index;
    seg.next_offset = from_offset;
    seg.size = from_pos;
    seg.clear_recent();
    seg.max_timestamp = seg.time_index.last().map_or(-1, |e| e.timestamp);
    seg.bytes_since_index = 0;
    let outcome = seg
        .scan_from(from_pos, false, interval, sealed_end, on_batch)
        .await?;
    let relative_end = (seg.next_offset - seg.base_offset) as u64;
    let time_ok = seg
        .time_index
        .last()
        .is_none_or(|e| u64::from(e.relative_offset) < relative_end);
    if outcome.stopped.is_some()
        || outcome.valid_bytes != file_len
        || (start.is_some() && outcome.batches == 0)
        || !time_ok
    {
        tracing::warn!(path = %seg.log_path().display(), reason = outcome.stopped.unwrap_or("index disagrees with log"), "trusted segment did not check out; re-validating it");
        return Ok(false);
    }
    Ok(true)
}

/// Re-validates every batch of the segment, rebuilding its indexes, and truncates at the
/// first failure. Returns false when it truncated (later segments must go).
async fn validate(
    seg: &mut Segment,
    file_len: u64,
    interval: u64,
    sealed_end: Option<i64>,
    report: &mut RecoveryReport,
    on_batch: &mut dyn FnMut(&BatchHeader),
) -> Result<bool> {
    seg.offset_index = OffsetIndex::default();
    seg.time_index = TimeIndex::default();
    seg.next_offset = seg.base_offset;
    seg.size = 0;
    seg.clear_recent();
    seg.max_timestamp = -1;
    seg.bytes_since_index = 0;
    seg.first_batch_ms = None;
    let outcome = seg
        .scan_from(0, true, interval, sealed_end, on_batch)
        .await?;
    report.segments_validated += 1;
    report.batches_validated += outcome.batches;
    report.bytes_validated += outcome.valid_bytes;
    report.indexes_rebuilt += 1;
    let truncated = outcome.valid_bytes < file_len;
    if truncated {
        tracing::warn!(
            path = %seg.log_path().display(),
            valid_bytes = outcome.valid_bytes,
            file_bytes = file_len,
            reason = outcome.stopped.unwrap_or("unknown"),
            "truncating segment at the first invalid byte"
        );
        seg.files.truncate_log(outcome.valid_bytes).await?;
        seg.files.sync_log().await?;
        report.bytes_truncated += file_len - outcome.valid_bytes;
    }
    seg.rewrite_indexes().await?;
    Ok(!truncated)
}
