//! Log compaction: Kafka's `cleanup.policy=compact`. The cleaner keeps the latest record
//! of every key in the sealed segments and drops the older ones; tombstones (null values)
//! go too once they are older than the delete retention. No offset moves and none is
//! reused: a cleaned batch keeps its base offset and last offset delta (its records keep
//! their offset deltas), a batch left with no record is dropped (a gap in the offsets,
//! which readers and followers step over, as in Kafka) unless it must stay as an empty
//! batch:
//! - the last batch of each segment, so that segments stay contiguous (the next segment
//!   starts where this one ends; recovery checks that);
//! - a producer's last batch among those cleaned, so that its sequence numbers survive a
//!   rebuild of the producer state from the log.
//!
//! How a clean goes, all on the partition's core:
//! 1. One pass over the dirty segments (those no clean has seen since the log opened)
//!    builds the map key -> latest offset, bounded by `map_bytes_max` (the dirty
//!    segments past what fits wait for the next clean). Keys of the clean part are not
//!    in it: each is there once already, and a later write of it is in the dirty part.
//! 2. From the first segment to the last one mapped, one group of adjacent segments at a
//!    time (as many as fit in `segment_bytes` once cleaned), the records that stay are
//!    written to `{base}.{n}.log.cleaned`, which is synced.
//! 3. The partition's writer checks that the group's segments are still the ones read (a
//!    truncation or retention in between abandons the clean), renames the file
//!    `{base}.{end}.swap` and syncs the directory: from here a crash finishes the swap
//!    at the next open (`finish_swaps`). It unlinks the old segments, renames the swap
//!    file to `{base}.log`, rebuilds its indexes and puts it in their place; retention
//!    waits meanwhile. Readers holding the old files keep reading them.
//!
//! A tombstone goes once the delete horizon of its batch has passed (KIP-534): the first
//! clean that keeps it sets the batch's horizon to now + `delete.retention.ms` (the
//! base timestamp holds it, the records' timestamp deltas are counted from it again).
//! So a tombstone never goes in the pass that removes the value it deletes, and its age
//! is the broker's clock, never a producer's timestamp.
//!
//! Compressed batches are cleaned the same way: their records are decompressed (at most
//! `RECORDS_DECOMPRESSED_BYTES_MAX` bytes) and what stays is compressed again with the
//! same codec. A batch whose records cannot be read is kept whole, its keys left out.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use compio::fs::File;
use compio::io::AsyncWriteAtExt;

use crate::batch::{self, BATCH_HEADER_BYTES, BatchHeader, Compression};
use crate::codec;
use crate::error::{LogError, Result};
use crate::segment::{self, BatchScanner, SegmentFiles};

/// Suffix of a cleaned segment being written (deleted by recovery).
pub(crate) const CLEANED_SUFFIX: &str = ".log.cleaned";
/// Suffix of a cleaned segment ready to replace its group (finished by recovery).
pub(crate) const SWAP_SUFFIX: &str = ".swap";
/// Bytes of cleaned batches gathered before each write.
const WRITE_CHUNK_BYTES: usize = 1024 * 1024;
/// What one key costs in the map besides its bytes (hash entry, allocation).
const MAP_ENTRY_OVERHEAD_BYTES: usize = 64;

/// What a clean may do.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Only segments that end at or below this offset are cleaned: the high watermark
    /// (a replica never cleans what a new leader could still truncate).
    pub below: i64,
    /// Now, in ms since the epoch.
    pub now_ms: i64,
    /// How long tombstones stay after the first clean that keeps them (Kafka's
    /// `delete.retention.ms`).
    pub delete_retention_ms: i64,
    /// Memory for the key map (keys' bytes plus a fixed cost per key).
    pub map_bytes_max: usize,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            below: i64::MAX,
            now_ms: crate::now_ms(),
            delete_retention_ms: 24 * 3600 * 1000,
            map_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// What a clean did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompactReport {
    /// Segments replaced, and the cleaned segments that replaced them.
    pub segments_cleaned: usize,
    pub segments_written: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Records dropped because a later record has the same key.
    pub records_removed: u64,
    /// Tombstones dropped after the delete retention.
    pub tombstones_removed: u64,
    /// Records without a key (a compacted topic refuses them; these came before the
    /// topic was compacted): removed, as Kafka's cleaner does.
    pub keyless_removed: u64,
    /// Offset up to which the log is now clean.
    pub clean_up_to: i64,
    /// True when a truncation or retention changed the segments during the clean and
    /// a group was left as it was.
    pub abandoned: bool,
}

/// A sealed segment as the clean read it.
#[derive(Clone)]
pub(crate) struct SealedSegment {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size: u64,
    pub files: Rc<SegmentFiles>,
}

/// The latest offset of each key in the dirty segments read.
struct OffsetMap {
    latest: HashMap<Vec<u8>, i64>,
    bytes: usize,
}

/// What the cleaner is given: the sealed segments below the limit (oldest first), the
/// offset from which they are dirty, each producer's last batch (producer id -> base
/// offset, from the partition's producer state), and the segment size.
pub(crate) struct CleanInput {
    pub segments: Vec<SealedSegment>,
    pub first_dirty: i64,
    pub producer_last_batches: HashMap<i64, i64>,
    pub segment_bytes: u64,
    pub batch_bytes_max: usize,
    /// The log's truncation count when the clean started (see `LogState::truncations`).
    pub truncations: u64,
}

/// The swap file name of a cleaned group `[base, end)`.
pub(crate) fn swap_file_name(base: i64, end: i64) -> String {
    format!(
        "{}.{}{SWAP_SUFFIX}",
        segment::file_stem(base),
        segment::file_stem(end)
    )
}

/// Parses `{base:020}.{end:020}.swap` into `(base, end)`.
pub(crate) fn parse_swap_file_name(name: &str) -> Option<(i64, i64)> {
    let stem = name.strip_suffix(SWAP_SUFFIX)?;
    let (base, end) = stem.split_once('.')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(base) || !digits(end) {
        return None;
    }
    let (base, end) = (base.parse().ok()?, end.parse().ok()?);
    (base < end).then_some((base, end))
}

pub(crate) fn is_cleaned_file(name: &str) -> bool {
    name.ends_with(CLEANED_SUFFIX)
}

/// Finishes the swaps a crash interrupted (after the rename to the swap name): the
/// segments of `[base, end)` go and the swap file becomes `{base}.log`. Run before the
/// segments are listed. Returns the bases of the segments it made, whose indexes the
/// caller rebuilds (none are left for them).
pub(crate) fn finish_swaps(dir: &Path) -> Result<Vec<i64>> {
    let mut swaps = Vec::new();
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(range) = parse_swap_file_name(name) {
            swaps.push((range, entry.path()));
        } else if is_cleaned_file(name) {
            // A clean that had not reached its swap: the old segments are whole.
            let _ = std::fs::remove_file(entry.path());
        } else if let Some(base) = segment::parse_log_file_name(name) {
            bases.push(base);
        }
    }
    let mut finished = Vec::new();
    for &((base, end), ref path) in &swaps {
        // The segment after the group is never part of it and is still there when the
        // swap is current; without it the swap is stale (its range is gone) and goes.
        if !bases.contains(&end) {
            tracing::warn!(dir = %dir.display(), base, end, "discarding a compaction swap whose next segment is gone");
            let _ = std::fs::remove_file(path);
            continue;
        }
        tracing::warn!(dir = %dir.display(), base, end, "finishing an interrupted compaction swap");
        for &old in bases.iter().filter(|&&b| b >= base && b < end) {
            segment::remove_files(dir, old)?;
        }
        // Its old indexes went with it (a segment at `base` is always in the group).
        segment::remove_files(dir, base)?;
        let log = dir.join(format!(
            "{}{}",
            segment::file_stem(base),
            segment::LOG_SUFFIX
        ));
        std::fs::rename(path, &log).map_err(|e| LogError::io(&log, e))?;
        finished.push(base);
    }
    Ok(finished)
}

/// Step 1: the key map of `segments` (the dirty ones), in order, as far as
/// `map_bytes_max` allows (at least the first segment). Returns the map and how many
/// segments it covers whole.
async fn build_map(segments: &[SealedSegment], map_bytes_max: usize) -> Result<(OffsetMap, usize)> {
    let mut map = OffsetMap {
        latest: HashMap::new(),
        bytes: 0,
    };
    let mut covered = 0;
    'segments: for seg in segments {
        let path = seg.files.log_path();
        let mut scanner = BatchScanner::new(&seg.files.log, seg.size);
        let mut pos = 0u64;
        while let Some((header, bytes)) = scanner.written_batch_at(pos, path).await? {
            if covered > 0 && map.bytes > map_bytes_max {
                // This segment waits for the next clean. The keys already taken from it
                // are real later writes, so the earlier records they replace may go.
                break 'segments;
            }
            pos += bytes.len() as u64;
            if header.is_control() {
                continue;
            }
            // A compressed batch that cannot be read is kept whole (`filter_batch` finds
            // the same): its keys stay out of the map.
            let Ok(inflated) = batch::records_of(&header, bytes) else {
                continue;
            };
            let Some(records) = readable_records(&header, &inflated) else {
                continue;
            };
            for record in records {
                let Some(key) = record.key else { continue };
                let offset = header.base_offset + record.offset_delta;
                match map.latest.get_mut(key) {
                    Some(latest) => *latest = offset,
                    None => {
                        map.bytes += key.len() + MAP_ENTRY_OVERHEAD_BYTES;
                        map.latest.insert(key.to_vec(), offset);
                    }
                }
            }
        }
        covered += 1;
    }
    Ok((map, covered))
}

/// The records of a batch (`records`: its body, inflated when compressed) as the
/// cleaner reads them, in one pass. `None` when they do not frame or their offset
/// deltas are out of order or outside the batch (a producer's compressed records are not
/// checked when they are appended): the cleaner keeps such a batch whole and leaves its
/// keys alone, as it does one that does not inflate within the bound.
fn readable_records<'r>(
    header: &BatchHeader,
    records: &'r [u8],
) -> Option<Vec<batch::RawRecord<'r>>> {
    let mut out = Vec::new();
    let mut previous = -1i64;
    for record in batch::raw_records(records, header.record_count) {
        let record = record.ok()?;
        if record.offset_delta <= previous
            || record.offset_delta > i64::from(header.last_offset_delta)
        {
            return None;
        }
        previous = record.offset_delta;
        out.push(record);
    }
    (out.len() == header.record_count as usize).then_some(out)
}

/// What filtering one batch left of it.
enum Kept {
    /// Every record stays: the batch is copied as it is.
    Whole,
    /// Some records stay (or none, for a batch that must stay empty): a rebuilt batch.
    Rebuilt(Vec<u8>),
    /// Nothing stays.
    Dropped,
}

#[derive(Default, Clone)]
struct Removed {
    records: u64,
    tombstones: u64,
    keyless: u64,
}

impl Removed {
    fn add(&mut self, other: &Removed) {
        self.records += other.records;
        self.tombstones += other.tombstones;
        self.keyless += other.keyless;
    }
}

/// The records of one batch that stay. A tombstone goes once its batch's delete horizon
/// (KIP-534) has passed; a batch that keeps a tombstone and has none gets one, `now +
/// delete.retention.ms`: so a tombstone never goes in the pass that removes the value it
/// deletes, and the clock is the broker's, never the producer's timestamp. `guard`
/// gathers the keys whose older records a batch kept whole still holds: their
/// tombstones stay in this pass, or the older value would be the latest again.
fn filter_batch(
    header: &BatchHeader,
    bytes: &[u8],
    plan: &Plan<'_>,
    must_stay: bool,
    guard: &mut HashSet<Vec<u8>>,
    removed: &mut Removed,
) -> Result<Kept> {
    if header.is_control() {
        return Ok(Kept::Whole);
    }
    if header.record_count == 0 {
        // Kept empty by an earlier clean; it goes once nothing needs it.
        return Ok(if must_stay {
            Kept::Whole
        } else {
            Kept::Dropped
        });
    }
    let codec = header.compression()?;
    let Ok(inflated) = batch::records_of(header, bytes) else {
        return Ok(Kept::Whole);
    };
    let Some(records) = readable_records(header, &inflated) else {
        return Ok(Kept::Whole);
    };
    let horizon = header.delete_horizon();
    let tombstones_expire = horizon.is_some_and(|h| h <= plan.now_ms);
    let mut kept: Vec<batch::RawRecord<'_>> = Vec::new();
    let mut dropped_keys: Vec<&[u8]> = Vec::new();
    let mut here = Removed::default();
    for record in records {
        let offset = header.base_offset + record.offset_delta;
        let stays = match record.key {
            None => {
                here.keyless += 1;
                false
            }
            Some(key) => {
                let latest = plan.map.latest.get(key).is_none_or(|&l| l <= offset);
                if !latest {
                    here.records += 1;
                    dropped_keys.push(key);
                    false
                } else if record.tombstone && tombstones_expire && !guard.contains(key) {
                    here.tombstones += 1;
                    false
                } else {
                    true
                }
            }
        };
        if stays {
            kept.push(record);
        }
    }
    let dropped = here.records + here.tombstones + here.keyless > 0;
    let new_horizon = (horizon.is_none() && kept.iter().any(|r| r.tombstone))
        .then(|| plan.now_ms.saturating_add(plan.delete_retention_ms));
    let outcome = if !dropped && new_horizon.is_none() {
        Kept::Whole
    } else if kept.is_empty() && !must_stay {
        Kept::Dropped
    } else {
        let count = kept.len() as i32;
        let retimed: Vec<Vec<u8>> = match new_horizon {
            Some(h) => kept
                .iter()
                .map(|r| batch::retime(r, header.base_timestamp, h))
                .collect(),
            None => Vec::new(),
        };
        let parts: Vec<&[u8]> = match new_horizon {
            Some(_) => retimed.iter().map(Vec::as_slice).collect(),
            None => kept.iter().map(|r| r.bytes).collect(),
        };
        let rebuilt = if codec == Compression::None {
            batch::rebuild_with(bytes, &parts, count, new_horizon)
        } else {
            let body = codec::compress(codec, &parts.concat(), &bytes[BATCH_HEADER_BYTES..])?;
            batch::rebuild_with(bytes, &[&body], count, new_horizon)
        };
        // A rebuilt batch may take more bytes than it had: compressed again by another
        // encoder (a producer's higher level), or with timestamp deltas counted from a
        // horizon. Up to what a segment and a follower take, it is written; past it the
        // batch stays whole, and the tombstones of the records it still holds stay in
        // this pass (see ARCHITECTURE.md).
        if rebuilt.len() > plan.batch_bytes_max {
            guard.extend(dropped_keys.iter().map(|k| k.to_vec()));
            return Ok(Kept::Whole);
        }
        Kept::Rebuilt(rebuilt)
    };
    removed.add(&here);
    Ok(outcome)
}

/// A cleaned group written and synced (step 2), for the writer to swap in (step 3).
pub(crate) struct CleanedGroup {
    pub replaced: Vec<SealedSegment>,
    pub cleaned_path: PathBuf,
    pub bytes_after: u64,
    /// The log's truncation count when the clean started: a truncation since then
    /// abandons it (the map may hold offsets that are gone).
    pub truncations: u64,
}

/// What decides which records stay.
struct Plan<'a> {
    map: &'a OffsetMap,
    producer_last_batches: &'a HashMap<i64, i64>,
    now_ms: i64,
    delete_retention_ms: i64,
    /// Largest batch a rebuilt one may be (what a segment and a follower take).
    batch_bytes_max: usize,
}

/// A name no other clean uses (a cleaner of a closed partition may still be writing its
/// own until it notices).
fn cleaned_file_name(base: i64) -> String {
    static CLEANS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CLEANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{}.{}-{n}{CLEANED_SUFFIX}",
        segment::file_stem(base),
        crate::now_ms()
    )
}

/// Step 2 for the next group: writes what stays of `segments[0..n]` to a cleaned file,
/// where `n` is as many segments as fit (their cleaned bytes within `segment_bytes`,
/// their offsets within a segment's relative range, at least one), and syncs it.
/// Returns `n`, and `None` for a single segment in which nothing would change.
async fn write_next_group(
    dir: &Path,
    segments: &[SealedSegment],
    segment_bytes: u64,
    plan: &Plan<'_>,
    guard: &mut HashSet<Vec<u8>>,
    removed: &mut Removed,
) -> Result<(usize, Option<CleanedGroup>)> {
    let base = segments[0].base_offset;
    let cleaned_path = dir.join(cleaned_file_name(base));
    let file = File::create(&cleaned_path)
        .await
        .map_err(|e| LogError::io(&cleaned_path, e))?;
    let mut written = 0u64;
    let mut changed = false;
    let mut taken = 0;
    for seg in segments {
        if taken > 0 && seg.next_offset - base > i64::from(u32::MAX) {
            break;
        }
        let mark = (written, changed, removed.clone());
        let seg_changed = write_segment(
            &file,
            &cleaned_path,
            seg,
            plan,
            guard,
            removed,
            &mut written,
        )
        .await?;
        if taken > 0 && written > segment_bytes {
            // It does not fit: it starts the next group instead.
            file.set_len(mark.0)
                .await
                .map_err(|e| LogError::io(&cleaned_path, e))?;
            (written, changed, *removed) = mark;
            break;
        }
        changed |= seg_changed;
        taken += 1;
    }
    // Several segments merged into one are a change even when no record goes.
    if !changed && taken == 1 {
        drop(file);
        let _ = compio::fs::remove_file(&cleaned_path).await;
        return Ok((1, None));
    }
    file.sync_all()
        .await
        .map_err(|e| LogError::io(&cleaned_path, e))?;
    drop(file);
    Ok((
        taken,
        Some(CleanedGroup {
            replaced: segments[..taken].to_vec(),
            cleaned_path,
            bytes_after: written,
            truncations: 0,
        }),
    ))
}

/// Appends what stays of one segment to the cleaned file at `*written`; returns whether
/// anything was left out. The segment's last batch stays (empty if need be), so that a
/// group always ends where its last segment did.
async fn write_segment(
    file: &File,
    path: &Path,
    seg: &SealedSegment,
    plan: &Plan<'_>,
    guard: &mut HashSet<Vec<u8>>,
    removed: &mut Removed,
    written: &mut u64,
) -> Result<bool> {
    let mut out: Vec<u8> = Vec::with_capacity(WRITE_CHUNK_BYTES);
    let mut changed = false;
    let log_path = seg.files.log_path();
    let mut scanner = BatchScanner::new(&seg.files.log, seg.size);
    let mut pos = 0u64;
    while let Some((header, bytes)) = scanner.written_batch_at(pos, log_path).await? {
        pos += bytes.len() as u64;
        let last_of_segment = header.last_offset() + 1 == seg.next_offset;
        let producers_last = header.producer_id >= 0
            && plan.producer_last_batches.get(&header.producer_id) == Some(&header.base_offset);
        let must_stay = last_of_segment || producers_last;
        match filter_batch(&header, bytes, plan, must_stay, guard, removed)? {
            Kept::Whole => out.extend_from_slice(bytes),
            Kept::Rebuilt(b) => {
                changed = true;
                out.extend_from_slice(&b);
            }
            Kept::Dropped => changed = true,
        }
        if out.len() >= WRITE_CHUNK_BYTES {
            *written += flush_chunk(file, path, &mut out, *written).await?;
        }
    }
    *written += flush_chunk(file, path, &mut out, *written).await?;
    Ok(changed)
}

async fn flush_chunk(file: &File, path: &Path, out: &mut Vec<u8>, at: u64) -> Result<u64> {
    if out.is_empty() {
        return Ok(0);
    }
    let chunk = std::mem::replace(out, Vec::with_capacity(WRITE_CHUNK_BYTES));
    let len = chunk.len() as u64;
    let mut f = file;
    f.write_all_at(chunk, at)
        .await
        .0
        .map_err(|e| LogError::io(path, e))?;
    Ok(len)
}

/// The cleaner: builds the map of the dirty segments, then writes each group that
/// changes, from the first segment to the last one mapped, and hands it to `install`
/// (the writer's step 3), which says whether it could swap it in. `still_open` is asked
/// before each group: a closed partition's clean stops. Runs beside the writer.
pub(crate) async fn clean<F, Fut>(
    dir: &Path,
    input: CleanInput,
    options: CompactOptions,
    still_open: impl Fn() -> bool,
    mut install: F,
) -> Result<CompactReport>
where
    F: FnMut(CleanedGroup) -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let mut report = CompactReport {
        clean_up_to: input.first_dirty,
        ..CompactReport::default()
    };
    let Some(dirty) = input
        .segments
        .iter()
        .position(|s| s.base_offset >= input.first_dirty)
    else {
        return Ok(report); // nothing new since the last clean
    };
    let (map, covered) = build_map(&input.segments[dirty..], options.map_bytes_max).await?;
    let mut segments = input.segments;
    segments.truncate(dirty + covered);
    let segments = segments;
    let plan = Plan {
        map: &map,
        producer_last_batches: &input.producer_last_batches,
        now_ms: options.now_ms,
        delete_retention_ms: options.delete_retention_ms,
        batch_bytes_max: input.batch_bytes_max,
    };
    let mut guard = HashSet::new();
    let mut removed = Removed::default();
    let mut next = 0;
    while next < segments.len() {
        if !still_open() {
            return Err(LogError::Closed);
        }
        let rest = &segments[next..];
        let removed_before = removed.clone();
        let (taken, cleaned) = write_next_group(
            dir,
            rest,
            input.segment_bytes,
            &plan,
            &mut guard,
            &mut removed,
        )
        .await?;
        let group = &rest[..taken];
        next += taken;
        let end = group[taken - 1].next_offset;
        let Some(cleaned) = cleaned else {
            report.clean_up_to = report.clean_up_to.max(end);
            continue;
        };
        let bytes_before: u64 = group.iter().map(|s| s.size).sum();
        let bytes_after = cleaned.bytes_after;
        let cleaned_path = cleaned.cleaned_path.clone();
        let cleaned = CleanedGroup {
            truncations: input.truncations,
            ..cleaned
        };
        let installed = install(cleaned).await;
        if !matches!(installed, Ok(true)) {
            // The segments changed under the clean (or the writer is gone): leave them,
            // and nothing after them.
            let _ = compio::fs::remove_file(&cleaned_path).await;
            installed?;
            removed = removed_before;
            report.abandoned = true;
            break;
        }
        report.segments_cleaned += taken;
        report.segments_written += 1;
        report.bytes_before += bytes_before;
        report.bytes_after += bytes_after;
        report.clean_up_to = report.clean_up_to.max(end);
    }
    report.records_removed = removed.records;
    report.tombstones_removed = removed.tombstones;
    report.keyless_removed = removed.keyless;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_names_round_trip_and_refuse_others() {
        let name = swap_file_name(42, 1000);
        assert_eq!(name, "00000000000000000042.00000000000000001000.swap");
        assert_eq!(parse_swap_file_name(&name), Some((42, 1000)));
        assert_eq!(parse_swap_file_name("00000000000000000042.log"), None);
        assert_eq!(parse_swap_file_name("42.1000.swap"), None);
        assert_eq!(
            parse_swap_file_name("00000000000000001000.00000000000000000042.swap"),
            None
        );
    }
}
