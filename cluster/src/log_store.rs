//! The controller's durable Raft log and vote.
//!
//! openraft is told an append is persisted only after our `fdatasync` returned, and a vote
//! only after it was written and synced: Raft's safety rests on both surviving a crash.
//!
//! Files, in the controller's directory:
//! - `raft.log`: records back to back, each `[length u32 LE][crc32c u32 LE][entry JSON]`.
//!   At open, every record is checked; the first short or damaged one and everything after
//!   it is cut off (a torn tail: its append was never acknowledged, the sync did not
//!   return). Entries must follow one another by index; a gap is corruption and refuses
//!   to start.
//! - `vote`, `purged`: small `[crc32c u32 LE][JSON]` files replaced atomically (temporary
//!   file, fsync, rename, fsync of the directory).
//! - `committed`: the same, but not synced: a stale value after a crash is only a lower
//!   commit index, which openraft re-learns from the leader.
//!
//! A purge (after a snapshot) records the purged log id first, then rewrites `raft.log`
//! with the remaining entries; a crash between the two leaves entries that are skipped at
//! the next open.
//!
//! Hand-written because what openraft's examples use (RocksDB, sled) would bring a whole
//! storage engine for a log of a few thousand small entries, and the RocksDB examples do
//! not sync the write-ahead log before acknowledging.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TypeConfig;
use crate::limits::RAFT_RECORD_BYTES_MAX;

const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";
const COMMITTED_FILE: &str = "committed";
const RECORD_HEADER_BYTES: usize = 8;

type NodeId = u64;

/// Why the controller's storage cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The Raft log and vote. Cloned handles share one state (openraft reads through a clone
/// while it appends through the original).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    file: File,
    /// Bytes of valid records in `raft.log`.
    len: u64,
    /// Every entry after `last_purged`, with its record's position in the file.
    entries: BTreeMap<u64, (Entry<TypeConfig>, u64)>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, cutting off a torn tail.
    pub fn open(dir: &Path) -> Result<Self, LogStoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LogStoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let vote = read_small::<Vote<NodeId>>(dir, VOTE_FILE)?;
        let last_purged = read_small::<LogId<NodeId>>(dir, PURGED_FILE)?;
        // Not synced when written: damage there only loses a hint.
        let committed = read_small::<LogId<NodeId>>(dir, COMMITTED_FILE).unwrap_or(None);
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path))?;
        let (entries, valid) = decode_records(&bytes, last_purged.as_ref(), &path)?;
        if valid < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                kept = valid,
                cut = bytes.len() - valid,
                "controller log: cutting off a torn or damaged tail"
            );
            file.set_len(valid as u64).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_owned(),
                file,
                len: valid as u64,
                entries,
                last_purged,
                vote,
                committed,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last log id, for tests and the startup line.
    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        let inner = self.lock();
        inner.last_log_id()
    }
}

impl Inner {
    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .values()
            .next_back()
            .map(|(e, _)| *e.get_log_id())
            .or(self.last_purged)
    }

    fn append(&mut self, entries: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        let mut buffer = Vec::new();
        let mut positions = Vec::with_capacity(entries.len());
        for entry in &entries {
            positions.push(self.len + buffer.len() as u64);
            encode_record(&mut buffer, entry)?;
        }
        let written = self
            .file
            .write_all_at(&buffer, self.len)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Leave no half-written records behind the valid ones.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += buffer.len() as u64;
        for (entry, at) in entries.into_iter().zip(positions) {
            self.entries.insert(entry.get_log_id().index, (entry, at));
        }
        Ok(())
    }

    fn truncate(&mut self, from_index: u64) -> io::Result<()> {
        let Some((_, at)) = self.entries.get(&from_index) else {
            return Ok(());
        };
        let at = *at;
        self.file.set_len(at)?;
        self.file.sync_data()?;
        self.len = at;
        self.entries.split_off(&from_index);
        Ok(())
    }

    fn purge(&mut self, upto: LogId<NodeId>) -> io::Result<()> {
        write_small(&self.dir, PURGED_FILE, &upto, true)?;
        self.last_purged = Some(upto);
        let kept = self.entries.split_off(&(upto.index + 1));
        let mut buffer = Vec::new();
        let mut entries = BTreeMap::new();
        for (index, (entry, _)) in kept {
            let at = buffer.len() as u64;
            encode_record(&mut buffer, &entry)?;
            entries.insert(index, (entry, at));
        }
        let path = self.dir.join(LOG_FILE);
        replace_file(&self.dir, LOG_FILE, &buffer, true)?;
        self.file = OpenOptions::new().read(true).write(true).open(path)?;
        self.len = buffer.len() as u64;
        self.entries = entries;
        Ok(())
    }
}

fn encode_record<T: Serialize>(out: &mut Vec<u8>, value: &T) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    if body.len() > RAFT_RECORD_BYTES_MAX {
        return Err(io::Error::other(format!(
            "a controller log entry of {} bytes is over {RAFT_RECORD_BYTES_MAX}",
            body.len()
        )));
    }
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

type DecodedLog = (BTreeMap<u64, (Entry<TypeConfig>, u64)>, usize);

/// The entries of a log file's bytes and how many leading bytes are valid records.
fn decode_records(
    bytes: &[u8],
    last_purged: Option<&LogId<NodeId>>,
    path: &Path,
) -> Result<DecodedLog, LogStoreError> {
    let mut entries = BTreeMap::new();
    let mut at = 0usize;
    let mut previous: Option<u64> = None;
    while bytes.len() - at >= RECORD_HEADER_BYTES {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let length = word(at) as usize;
        let crc = word(at + 4);
        if length > RAFT_RECORD_BYTES_MAX || bytes.len() - at - RECORD_HEADER_BYTES < length {
            break;
        }
        let body = &bytes[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + length];
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice::<Entry<TypeConfig>>(body) else {
            break;
        };
        let index = entry.get_log_id().index;
        if let Some(prev) = previous
            && index != prev + 1
        {
            return Err(LogStoreError::Corrupt {
                path: path.to_owned(),
                reason: format!("entry {index} follows entry {prev}"),
            });
        }
        previous = Some(index);
        if last_purged.is_none_or(|p| index > p.index) {
            entries.insert(index, (entry, at as u64));
        }
        at += RECORD_HEADER_BYTES + length;
    }
    Ok((entries, at))
}

/// Replaces `dir/name` atomically; with `sync`, the new content and the rename are durable
/// when this returns.
fn replace_file(dir: &Path, name: &str, bytes: &[u8], sync: bool) -> io::Result<()> {
    let temp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&temp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&temp, dir.join(name))?;
    if sync {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub(crate) fn write_small<T: Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
    sync: bool,
) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut bytes = crc32c::crc32c(&body).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    replace_file(dir, name, &bytes, sync)
}

pub(crate) fn read_small<T: DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, LogStoreError> {
    let path = dir.join(name);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LogStoreError::Io { path, source }),
    };
    let corrupt = |reason: String| LogStoreError::Corrupt {
        path: path.clone(),
        reason,
    };
    if bytes.len() < 4 {
        return Err(corrupt("shorter than its checksum".into()));
    }
    let (crc, body) = bytes.split_at(4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

fn write_error(e: io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner
            .entries
            .range(range)
            .map(|(_, (e, _))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        write_small(&inner.dir, VOTE_FILE, vote, true)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        if let Some(c) = committed {
            write_small(&inner.dir, COMMITTED_FILE, &c, false).map_err(write_error)?;
        }
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let result = self.lock().append(entries);
        match result {
            Ok(()) => {
                // Written and fdatasync'd: only now may openraft count it as persisted.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let kind = e.kind();
                callback.log_io_completed(Err(io::Error::new(kind, e.to_string())));
                Err(write_error(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock().truncate(log_id.index).map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock().purge(log_id).map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn append(store: &LogStore, entries: Vec<Entry<TypeConfig>>) {
        store.lock().append(entries).unwrap();
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        store.lock().entries.keys().copied().collect()
    }

    #[test]
    fn given_appended_entries_when_reopened_should_read_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        append(&store, (1..=5).map(|i| entry(1, i)).collect());
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), vec![1, 2, 3, 4, 5]);
        assert_eq!(store.last_log_id().map(|l| l.index), Some(5));
    }

    #[test]
    fn given_torn_tail_when_reopened_should_cut_it_and_keep_appending() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        append(&store, (1..=3).map(|i| entry(1, i)).collect());
        drop(store);
        let path = dir.path().join(LOG_FILE);
        let full = std::fs::read(&path).unwrap();
        for cut in [1usize, 5, 9] {
            std::fs::write(&path, &full[..full.len() - cut]).unwrap();
            let store = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&store), vec![1, 2], "cut {cut} bytes");
            append(&store, vec![entry(2, 3)]);
            drop(store);
            let store = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&store), vec![1, 2, 3]);
            assert_eq!(store.lock().entries[&3].0.log_id.leader_id.term, 2);
            drop(store);
            std::fs::write(&path, &full).unwrap();
        }
        // A flipped byte in the middle record: that record and the rest are cut.
        let mut damaged = full.clone();
        let middle = full.len() / 2;
        damaged[middle] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        assert!(indexes(&store).len() < 3);
    }

    #[test]
    fn given_truncate_and_purge_when_reopened_should_keep_only_the_middle() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        append(&store, (1..=10).map(|i| entry(1, i)).collect());
        store.lock().truncate(8).unwrap();
        store.lock().purge(*entry(1, 3).get_log_id()).unwrap();
        append(&store, vec![entry(2, 8)]);
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), vec![4, 5, 6, 7, 8]);
        assert_eq!(store.lock().last_purged.map(|l| l.index), Some(3));
        assert_eq!(store.last_log_id().map(|l| l.index), Some(8));
    }

    #[test]
    fn given_a_gap_in_the_log_should_refuse_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &entry(1, 1)).unwrap();
        encode_record(&mut bytes, &entry(1, 3)).unwrap();
        std::fs::write(dir.path().join(LOG_FILE), bytes).unwrap();
        assert!(matches!(
            LogStore::open(dir.path()),
            Err(LogStoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn given_saved_vote_when_reopened_should_read_it_and_refuse_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let vote = Vote::new(7, 2);
        write_small(dir.path(), VOTE_FILE, &vote, true).unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.lock().vote, Some(vote));
        drop(store);
        let path = dir.path().join(VOTE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(LogStore::open(dir.path()).is_err());
    }
}
