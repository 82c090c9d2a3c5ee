//! One segment of a partition log: `{base_offset:020}.log` with its `.index` and
//! `.timeindex`, the in-memory indexes, and the scan that recovery and lookups share.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use compio::fs::{File, OpenOptions};
use compio::io::{AsyncReadAt, AsyncWriteAtExt};

use crate::batch::{self, BATCH_HEADER_BYTES, BatchHeader};
use crate::config::WritePath;
use crate::error::{LogError, Result};
use crate::limits::{
    BATCH_BYTES_MAX, INLINE_WRITE_BYTES_MAX, RECENT_BATCHES_MAX, SCAN_CHUNK_BYTES,
};
use crate::offset_index::{OffsetEntry, OffsetIndex};
use crate::time_index::{TimeEntry, TimeIndex};

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";

pub(crate) fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

/// Removes the files of the segment at `base_offset` in `dir`, those that exist.
pub(crate) fn remove_files(dir: &Path, base_offset: i64) -> Result<()> {
    let stem = file_stem(base_offset);
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let path = dir.join(format!("{stem}{suffix}"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io(&path, e)),
        }
    }
    Ok(())
}

/// Parses `00000000000000000042.log` into 42; `None` for any other name.
pub(crate) fn parse_log_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(LOG_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The open files of a segment, shared with readers. When the segment is deleted
/// (retention, truncation, a clean, a deleted partition) its names go at once; a reader
/// still holding this keeps reading, and the files are freed (on the reaper) when the
/// last holder lets go.
#[derive(Debug)]
pub struct SegmentFiles {
    pub(crate) log: File,
    pub(crate) index: File,
    pub(crate) time_index: File,
    log_path: PathBuf,
    index_path: PathBuf,
    time_index_path: PathBuf,
    /// The names are gone (`unlink_now`): the last close frees the files.
    unlinked: Cell<bool>,
}

impl SegmentFiles {
    /// The segment's log file, for zero-copy reads (sendfile, splice).
    pub fn log_file(&self) -> &File {
        &self.log
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub(crate) async fn sync_log(&self) -> Result<()> {
        self.log
            .sync_data()
            .await
            .map_err(|e| LogError::io(&self.log_path, e))
    }

    pub(crate) async fn sync_indexes(&self) -> Result<()> {
        self.index
            .sync_data()
            .await
            .map_err(|e| LogError::io(&self.index_path, e))?;
        self.time_index
            .sync_data()
            .await
            .map_err(|e| LogError::io(&self.time_index_path, e))
    }

    /// Cuts the log file to `bytes` (dropping a torn or corrupt tail).
    pub(crate) async fn truncate_log(&self, bytes: u64) -> Result<()> {
        self.log
            .set_len(bytes)
            .await
            .map_err(|e| LogError::io(&self.log_path, e))
    }

    pub(crate) async fn truncate_indexes(&self) -> Result<()> {
        self.index
            .set_len(0)
            .await
            .map_err(|e| LogError::io(&self.index_path, e))?;
        self.time_index
            .set_len(0)
            .await
            .map_err(|e| LogError::io(&self.time_index_path, e))
    }

    /// Writes `bufs` back to back at `pos` of the log (`Log`), offset index or time index.
    pub(crate) async fn write_all_at<B>(
        &self,
        which: SegmentFile,
        bufs: Vec<B>,
        pos: u64,
        path: WritePath,
    ) -> Result<()>
    where
        B: compio::buf::IoBuf + AsRef<[u8]>,
    {
        let (file, name) = match which {
            SegmentFile::Log => (&self.log, &self.log_path),
            SegmentFile::Index => (&self.index, &self.index_path),
            SegmentFile::TimeIndex => (&self.time_index, &self.time_index_path),
        };
        let result = match path {
            WritePath::IoUring => {
                let mut f = file;
                f.write_vectored_all_at(bufs, pos).await.0
            }
            WritePath::Inline => pwritev_all(file, &bufs, pos),
            WritePath::Adaptive => {
                let bytes: usize = bufs.iter().map(|b| b.as_ref().len()).sum();
                if bytes <= INLINE_WRITE_BYTES_MAX {
                    pwritev_all(file, &bufs, pos)
                } else {
                    let mut f = file;
                    f.write_vectored_all_at(bufs, pos).await.0
                }
            }
        };
        result.map_err(|e| LogError::io(name, e))
    }

    /// The names are being removed by someone else (a deleted partition's directory):
    /// the last close frees the files, on the reaper.
    pub(crate) fn mark_unlinked(&self) {
        self.unlinked.set(true);
    }

    /// Removes the segment's file names now, not when the last reader lets go: a
    /// segment at the same base offset may be created next (after a truncation, a clean,
    /// or a partition deleted and created again), and a name removed later would be the
    /// new segment's. Readers holding these files keep reading them; the reaper frees
    /// them when the last one lets go.
    pub(crate) fn unlink_now(&self) -> Result<()> {
        self.unlinked.set(true);
        for path in [&self.log_path, &self.index_path, &self.time_index_path] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io(path, e)),
            }
        }
        Ok(())
    }
}

impl Drop for SegmentFiles {
    fn drop(&mut self) {
        if self.unlinked.get() {
            // Freeing the files is the reaper's: these closes only drop references.
            let fds = [&self.log, &self.index, &self.time_index]
                .into_iter()
                .filter_map(|f| rustix::io::dup(f).ok())
                .collect();
            crate::reaper::close_later(fds);
        }
    }
}

/// The three files of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentFile {
    Log,
    Index,
    TimeIndex,
}

/// `pwritev` until every byte of `bufs` is written at `pos`, on the calling thread.
fn pwritev_all<B: AsRef<[u8]>>(file: &File, bufs: &[B], mut pos: u64) -> io::Result<()> {
    let mut index = 0usize;
    let mut skip = 0usize;
    while index < bufs.len() {
        if skip == bufs[index].as_ref().len() {
            index += 1;
            skip = 0;
            continue;
        }
        let mut slices = Vec::with_capacity(bufs.len() - index);
        slices.push(io::IoSlice::new(&bufs[index].as_ref()[skip..]));
        slices.extend(
            bufs[index + 1..]
                .iter()
                .map(|b| io::IoSlice::new(b.as_ref())),
        );
        let written = match rustix::io::pwritev(file, &slices, pos) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        pos += written as u64;
        let mut left = written;
        while left > 0 {
            let remaining = bufs[index].as_ref().len() - skip;
            if left >= remaining {
                left -= remaining;
                index += 1;
                skip = 0;
            } else {
                skip += left;
                left = 0;
            }
        }
    }
    Ok(())
}

/// A segment and what the engine knows about it in memory.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub base_offset: i64,
    pub files: Rc<SegmentFiles>,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Bytes of whole, written batches. Readers never see past this.
    pub size: u64,
    /// Offset after the last batch.
    pub next_offset: i64,
    /// Largest batch max timestamp, -1 when there is none.
    pub max_timestamp: i64,
    pub bytes_since_index: u64,
    /// Wall-clock ms of the segment's first batch, for roll by age.
    pub first_batch_ms: Option<i64>,
    /// The newest batches, back to back up to `size` (at most `RECENT_BATCHES_MAX`).
    pub recent: VecDeque<PlacedBatch>,
}

/// Where one whole batch sits in its segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlacedBatch {
    pub position: u64,
    pub total: u64,
    pub base_offset: i64,
    pub last_offset: i64,
}

async fn open_rw(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .open(path)
        .await
        .map_err(|e| LogError::io(path, e))
}

impl Segment {
    /// Opens (creating if asked) the three files of the segment at `base_offset`.
    pub async fn open_files(dir: &Path, base_offset: i64, create: bool) -> Result<Self> {
        let log_path = dir.join(format!("{}{LOG_SUFFIX}", file_stem(base_offset)));
        Self::open_with_log(dir, base_offset, log_path, create).await
    }

    /// As `open_files`, with the log file at `log_path` (a cleaned segment's swap file,
    /// whose indexes are written before it takes its name).
    pub async fn open_with_log(
        dir: &Path,
        base_offset: i64,
        log_path: PathBuf,
        create: bool,
    ) -> Result<Self> {
        let stem = file_stem(base_offset);
        let index_path = dir.join(format!("{stem}{INDEX_SUFFIX}"));
        let time_index_path = dir.join(format!("{stem}{TIME_INDEX_SUFFIX}"));
        let log = open_rw(&log_path, create).await?;
        let index = open_rw(&index_path, true).await?;
        let time_index = open_rw(&time_index_path, true).await?;
        Ok(Self {
            base_offset,
            files: Rc::new(SegmentFiles {
                log,
                index,
                time_index,
                log_path,
                index_path,
                time_index_path,
                unlinked: Cell::new(false),
            }),
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            size: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            bytes_since_index: 0,
            first_batch_ms: None,
            recent: VecDeque::new(),
        })
    }

    /// The batch holding `offset` when it is among the recent ones (no file read).
    pub fn recent_batch(&self, offset: i64) -> Option<PlacedBatch> {
        let first = self.recent.front()?;
        if offset < first.base_offset {
            return None;
        }
        let i = self.recent.partition_point(|b| b.last_offset < offset);
        let found = *self.recent.get(i)?;
        // Only bytes this segment still holds (`recent` is cleared whenever `size` is
        // moved back, but a lookup must never hand out a range past the end).
        (found.base_offset <= offset && found.position + found.total <= self.size).then_some(found)
    }

    /// Forgets the recent batches (the segment's end was moved back).
    pub fn clear_recent(&mut self) {
        self.recent.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Offset relative to the segment base; callers roll before this could overflow.
    pub fn relative(&self, offset: i64) -> u32 {
        debug_assert!(offset >= self.base_offset);
        u32::try_from(offset - self.base_offset).unwrap_or(u32::MAX)
    }

    /// Records that a whole batch now sits at `position`: the one place that advances a
    /// segment, shared by the append path and by recovery.
    pub fn note_batch(
        &mut self,
        position: u64,
        header: &BatchHeader,
        total_bytes: u64,
        index_interval_bytes: u64,
    ) {
        debug_assert_eq!(position, self.size);
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
        }
        if position > 0 && self.bytes_since_index >= index_interval_bytes {
            let relative_offset = self.relative(header.base_offset);
            let pos = u32::try_from(position).unwrap_or(u32::MAX);
            if self.offset_index.push(OffsetEntry {
                relative_offset,
                position: pos,
            }) {
                self.time_index.push(TimeEntry {
                    timestamp: self.max_timestamp,
                    relative_offset,
                });
            }
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += total_bytes;
        self.size = position + total_bytes;
        self.next_offset = header.last_offset() + 1;
        if self
            .recent
            .back()
            .is_some_and(|b| b.position + b.total != position)
        {
            self.recent.clear();
        }
        if self.recent.len() >= RECENT_BATCHES_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(PlacedBatch {
            position,
            total: total_bytes,
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        });
    }

    /// Rewrites both index files from memory (after a rebuild or truncation).
    pub async fn rewrite_indexes(&mut self) -> Result<()> {
        self.files.truncate_indexes().await?;
        self.offset_index.mark_unpersisted();
        self.time_index.mark_unpersisted();
        // Recovery rewrites through io_uring: it runs once, before any append.
        self.take_index_writes(WritePath::IoUring).write().await
    }

    /// Cuts the in-memory segment to its first `position` bytes (a batch boundary):
    /// drops the index entries at or past it, then re-walks the batches from the last
    /// entry kept up to `position`, so that size, next offset, max timestamp and the
    /// index cursor describe exactly the bytes left. Reads the file but does not change
    /// it (the caller cuts it once the new state is in place).
    pub async fn cut_to(&mut self, position: u64, index_interval_bytes: u64) -> Result<()> {
        self.offset_index.truncate_to_position(position);
        let from = self.offset_index.last();
        // Time entries are taken only with offset entries: keep those up to `from`.
        self.time_index
            .truncate_to_relative_offset(from.map_or(0, |e| u64::from(e.relative_offset) + 1));
        let mut pos = from.map_or(0, |e| u64::from(e.position));
        self.next_offset = self.base_offset + from.map_or(0, |e| i64::from(e.relative_offset));
        self.size = pos;
        self.max_timestamp = self.time_index.last().map_or(-1, |e| e.timestamp);
        self.bytes_since_index = 0;
        self.clear_recent();
        if position == 0 {
            self.first_batch_ms = None;
        }
        let files = Rc::clone(&self.files);
        let mut scanner = BatchScanner::new(&files.log, position);
        loop {
            let scanned = scanner
                .batch_at(pos)
                .await
                .map_err(|e| LogError::io(files.log_path(), e))?;
            match scanned {
                Scanned::End => return Ok(()),
                Scanned::Invalid(reason) => {
                    return Err(LogError::CorruptSegment {
                        path: files.log_path().to_owned(),
                        position: pos,
                        reason,
                    });
                }
                Scanned::Batch { header, bytes } => {
                    let total = bytes.len() as u64;
                    self.note_batch(pos, &header, total, index_interval_bytes);
                    pos += total;
                }
            }
        }
    }

    pub async fn file_len(&self) -> Result<u64> {
        let meta = self
            .files
            .log
            .metadata()
            .await
            .map_err(|e| LogError::io(&self.files.log_path, e))?;
        Ok(meta.len())
    }

    pub fn log_path(&self) -> &Path {
        &self.files.log_path
    }

    pub async fn read_index_files(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let index = read_whole(&self.files.index, &self.files.index_path).await?;
        let time_index = read_whole(&self.files.time_index, &self.files.time_index_path).await?;
        Ok((index, time_index))
    }
}

/// Reads a whole index file, refusing one larger than any valid index.
async fn read_whole(file: &File, path: &Path) -> Result<Vec<u8>> {
    let len = file
        .metadata()
        .await
        .map_err(|e| LogError::io(path, e))?
        .len();
    let max = (crate::limits::INDEX_ENTRIES_MAX * crate::limits::TIME_INDEX_ENTRY_BYTES) as u64;
    if len > max {
        // Too large to be ours: hand back a length the decoder refuses.
        return Ok(vec![0; 1]);
    }
    read_at_most(file, 0, len as usize)
        .await
        .map_err(|e| LogError::io(path, e))
}

/// Reads up to `len` bytes at `pos`, fewer only at end of file.
pub(crate) async fn read_at_most(file: &File, pos: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let want = len - filled;
        let chunk = Vec::with_capacity(want);
        let compio::BufResult(res, chunk) = file.read_at(chunk, pos + filled as u64).await;
        let n = res?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// Walks the batches of one segment file through a read window, so recovery and
/// lookups touch each byte once. It bounds every length before reading.
pub(crate) struct BatchScanner<'a> {
    file: &'a File,
    /// Bytes of the file the scan may look at.
    end: u64,
    window_start: u64,
    window: Vec<u8>,
    /// Bytes read per step (at least what the caller asks for).
    chunk: usize,
}

/// What the scanner found at a position.
pub(crate) enum Scanned<'w> {
    /// A whole batch whose declared length fits within the bounds.
    Batch {
        header: BatchHeader,
        bytes: &'w [u8],
    },
    /// Clean end of the scanned range.
    End,
    /// Bytes that cannot be a batch start here: torn tail or corruption.
    Invalid(&'static str),
}

impl<'a> BatchScanner<'a> {
    pub fn new(file: &'a File, end: u64) -> Self {
        Self::with_chunk(file, end, SCAN_CHUNK_BYTES)
    }

    /// A scanner that reads `chunk` bytes per step: small for lookups that only need
    /// headers, large for walks that read every batch.
    pub fn with_chunk(file: &'a File, end: u64, chunk: usize) -> Self {
        Self {
            file,
            end,
            window_start: 0,
            window: Vec::new(),
            chunk,
        }
    }

    /// The header bytes of the batch starting at `pos`, or None when a whole header does
    /// not fit before the end. Reads nothing when the window already holds them.
    pub async fn header_at(&mut self, pos: u64) -> io::Result<Option<&[u8]>> {
        if !self.ensure(pos, BATCH_HEADER_BYTES).await? {
            return Ok(None);
        }
        let at = (pos - self.window_start) as usize;
        Ok(Some(&self.window[at..at + BATCH_HEADER_BYTES]))
    }

    async fn ensure(&mut self, pos: u64, len: usize) -> io::Result<bool> {
        let window_end = self.window_start + self.window.len() as u64;
        if pos >= self.window_start && pos + len as u64 <= window_end {
            return Ok(true);
        }
        let available = self.end.saturating_sub(pos);
        let want = (len.max(self.chunk) as u64).min(available) as usize;
        if want < len {
            return Ok(false);
        }
        self.window = read_at_most(self.file, pos, want).await?;
        self.window_start = pos;
        Ok(self.window.len() >= len)
    }

    /// The batch at `pos` of bytes the engine wrote and checked (`path` is the file's,
    /// for errors): `None` at the end, and an error, not a place to stop, for one that
    /// does not frame.
    pub async fn written_batch_at(
        &mut self,
        pos: u64,
        path: &Path,
    ) -> Result<Option<(BatchHeader, &[u8])>> {
        match self
            .batch_at(pos)
            .await
            .map_err(|e| LogError::io(path, e))?
        {
            Scanned::End => Ok(None),
            Scanned::Invalid(reason) => Err(LogError::CorruptSegment {
                path: path.to_owned(),
                position: pos,
                reason,
            }),
            Scanned::Batch { header, bytes } => Ok(Some((header, bytes))),
        }
    }

    /// The batch starting at `pos`; only its framing is checked here.
    pub async fn batch_at(&mut self, pos: u64) -> io::Result<Scanned<'_>> {
        if pos >= self.end {
            return Ok(Scanned::End);
        }
        if !self.ensure(pos, BATCH_HEADER_BYTES).await? {
            return Ok(Scanned::Invalid("torn batch header"));
        }
        let at = (pos - self.window_start) as usize;
        let header = match BatchHeader::parse(&self.window[at..]) {
            Ok(h) => h,
            Err(_) => return Ok(Scanned::Invalid("torn batch header")),
        };
        let total = header.declared_total_bytes();
        if total < BATCH_HEADER_BYTES as i64 || total > BATCH_BYTES_MAX as i64 {
            return Ok(Scanned::Invalid("batch length out of bounds"));
        }
        if header.magic != 2 {
            return Ok(Scanned::Invalid("bad magic"));
        }
        let total = total as usize;
        if !self.ensure(pos, total).await? {
            return Ok(Scanned::Invalid("torn batch"));
        }
        let at = (pos - self.window_start) as usize;
        Ok(Scanned::Batch {
            header,
            bytes: &self.window[at..at + total],
        })
    }
}

/// Whether `head` (at least a header's bytes) could start a batch: magic 2 and a length
/// within bounds.
fn frames_as_batch(head: &[u8]) -> bool {
    BatchHeader::parse(head).is_ok_and(|h| {
        let total = h.declared_total_bytes();
        h.magic == 2 && total >= BATCH_HEADER_BYTES as i64 && total <= BATCH_BYTES_MAX as i64
    })
}

/// A stretch of one segment to walk, copied out of the log state so that no borrow of it
/// spans the reads.
pub(crate) struct SegmentSpan {
    pub files: Rc<SegmentFiles>,
    /// Bytes of whole batches in the segment.
    pub size: u64,
    /// The batch boundary to start from (an index floor, or 0).
    pub start: u64,
}

/// Calls `f` with the header of every batch of `spans`, in order, up to the first batch at
/// or past `end_offset`. These are bytes the engine wrote and checked, so a batch that
/// does not frame is an error, not a place to stop.
pub(crate) async fn for_each_header(
    spans: &[SegmentSpan],
    end_offset: i64,
    f: &mut dyn FnMut(&BatchHeader),
) -> Result<()> {
    for span in spans {
        let mut scanner = BatchScanner::new(&span.files.log, span.size);
        let mut pos = span.start;
        while let Some((header, bytes)) =
            scanner.written_batch_at(pos, span.files.log_path()).await?
        {
            if header.base_offset >= end_offset {
                return Ok(());
            }
            f(&header);
            pos += bytes.len() as u64;
        }
    }
    Ok(())
}

/// Outcome of scanning a segment during open.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ScanOutcome {
    pub batches: u64,
    pub valid_bytes: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<&'static str>,
}

impl Segment {
    /// Re-reads the segment from `from` (a batch boundary the caller trusts, with the
    /// in-memory state already describing everything before it), re-validating every
    /// batch when `verify` is set, and advances the in-memory state batch by batch.
    /// Stops at the first batch that fails; the caller truncates there.
    ///
    /// `sealed_end` is the next segment's base for a sealed segment, `None` for the
    /// active one. Batches may leave gaps (compaction; a follower copying a compacted
    /// leader writes them into its active segment too), and a batch after a gap is taken
    /// only when what follows it agrees: the next batch starts after its end, or, as the
    /// last batch of a sealed segment, it ends within the segment. The base offset is
    /// outside the CRC, so a damaged one would otherwise pass for a gap (the active
    /// segment's last batch has nothing to be checked against, as in Kafka).
    pub async fn scan_from(
        &mut self,
        from: u64,
        verify: bool,
        index_interval_bytes: u64,
        sealed_end: Option<i64>,
        on_batch: &mut dyn FnMut(&BatchHeader),
    ) -> Result<ScanOutcome> {
        let file_len = self.file_len().await?;
        let files = Rc::clone(&self.files);
        let mut scanner = BatchScanner::new(&files.log, file_len);
        let mut outcome = ScanOutcome::default();
        let mut pos = from;
        loop {
            let scanned = scanner
                .batch_at(pos)
                .await
                .map_err(|e| LogError::io(self.log_path(), e))?;
            let (header, total) = match scanned {
                Scanned::End => break,
                Scanned::Invalid(why) => {
                    outcome.stopped = Some(why);
                    break;
                }
                Scanned::Batch { header, bytes } => {
                    if verify
                        && let Err(e) =
                            batch::validate_as(bytes, BATCH_BYTES_MAX, batch::Origin::Log)
                    {
                        tracing::debug!(position = pos, error = %e, "batch failed validation");
                        outcome.stopped = Some("batch failed validation");
                        break;
                    }
                    (header, bytes.len() as u64)
                }
            };
            let follows = header.base_offset == self.next_offset;
            let gap_agrees = if follows || header.base_offset < self.next_offset {
                follows
            } else {
                match scanner
                    .header_at(pos + total)
                    .await
                    .map_err(|e| LogError::io(self.log_path(), e))?
                {
                    // A batch follows: it must start after this one ends.
                    Some(next) if frames_as_batch(next) => BatchHeader::parse(next)
                        .is_ok_and(|next| next.base_offset > header.last_offset()),
                    // The last batch (what follows, if anything, is a torn or zeroed
                    // tail the scan stops at next): within the segment's range (the
                    // active one has no end to check against).
                    _ => sealed_end.is_none_or(|end| header.last_offset() < end),
                }
            };
            if !gap_agrees {
                outcome.stopped = Some("batch offset does not follow the previous batch");
                break;
            }
            if header.last_offset_delta < 0 || header.record_count < 0 {
                outcome.stopped = Some("batch header counts are inconsistent");
                break;
            }
            if header.last_offset() - self.base_offset > i64::from(u32::MAX) {
                outcome.stopped = Some("batch offset beyond the segment's range");
                break;
            }
            if self.first_batch_ms.is_none() {
                // Kafka ages a segment by its first batch's timestamp; a batch without
                // one is aged from now.
                let ts = header.max_timestamp;
                self.first_batch_ms = Some(if ts > 0 { ts } else { crate::now_ms() });
            }
            self.note_batch(pos, &header, total, index_interval_bytes);
            on_batch(&header);
            outcome.batches += 1;
            pos += total;
        }
        outcome.valid_bytes = pos;
        Ok(outcome)
    }
}
