//! The committed offsets file of brokers from before `__consumer_offsets`: an
//! append-only log of commit records (each with a CRC-32C), replayed at start (stopping
//! at the first torn or corrupt record). Brokers now keep committed offsets in the
//! replicated topic (`offsets_topic.rs`); a data directory that still has this file has
//! its groups moved into the topic as their partitions load (`hosting::load`), and the
//! file is renamed `offsets.log.migrated` once it is empty.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Kafka's offset.metadata.max.bytes.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Largest record the replay accepts: two names of at most 64 KiB plus metadata.
const RECORD_BYTES_MAX: usize = 2 * 65_536 + OFFSET_METADATA_BYTES_MAX + 64;
const LOG_FILE: &str = "offsets.log";
/// Past this many (group, topic, partition) entries the store warns: offsets do not
/// expire yet (Kafka's offsets.retention.minutes).
const COMMITTED_PARTITIONS_MAX: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

type Key = (String, String, i32);

pub struct OffsetStore {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<Key, Committed>,
    log_bytes: u64,
    /// Bytes the live entries take when encoded (kept up to date on every change).
    live_bytes: u64,
    /// Set when a write could not be undone; commits are refused from then on.
    failed: bool,
}

fn encoded_len(key: &Key, c: &Committed) -> u64 {
    (8 + 2
        + key.0.len()
        + 2
        + key.1.len()
        + 4
        + 8
        + 4
        + 4
        + c.metadata.as_ref().map_or(0, String::len)) as u64
}

fn encode(out: &mut Vec<u8>, key: &Key, c: &Committed) {
    let mut payload = Vec::with_capacity(64);
    for s in [&key.0, &key.1] {
        payload.extend_from_slice(&(s.len() as u16).to_be_bytes());
        payload.extend_from_slice(s.as_bytes());
    }
    payload.extend_from_slice(&key.2.to_be_bytes());
    payload.extend_from_slice(&c.offset.to_be_bytes());
    payload.extend_from_slice(&c.leader_epoch.to_be_bytes());
    match &c.metadata {
        None => payload.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(m) => {
            payload.extend_from_slice(&(m.len() as i32).to_be_bytes());
            payload.extend_from_slice(m.as_bytes());
        }
    }
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn string(&mut self, len: usize) -> Option<String> {
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    fn short_string(&mut self) -> Option<String> {
        let len = self.take(2)?;
        self.string(u16::from_be_bytes([len[0], len[1]]) as usize)
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn decode(payload: &[u8]) -> Option<(Key, Committed)> {
    let mut c = Cursor {
        bytes: payload,
        at: 0,
    };
    let group = c.short_string()?;
    let topic = c.short_string()?;
    let partition = c.i32()?;
    let offset = c.i64()?;
    let leader_epoch = c.i32()?;
    let meta_len = c.i32()?;
    let metadata = if meta_len < 0 {
        None
    } else {
        Some(c.string(meta_len as usize)?)
    };
    Some((
        (group, topic, partition),
        Committed {
            offset,
            leader_epoch,
            metadata,
        },
    ))
}

impl OffsetStore {
    /// The store of `dir` when its file exists and holds offsets; `None` otherwise.
    pub fn open_existing(dir: &Path) -> io::Result<Option<Self>> {
        if !dir.join(LOG_FILE).exists() {
            return Ok(None);
        }
        let store = Self::open(dir)?;
        if store.entries.is_empty() {
            store.retire()?;
            return Ok(None);
        }
        tracing::info!(
            groups = store.groups().len(),
            "committed offsets from before __consumer_offsets will move into it"
        );
        Ok(Some(store))
    }

    /// Renames the file `offsets.log.migrated` (kept for the operator, never read again).
    pub fn retire(&self) -> io::Result<()> {
        std::fs::rename(
            self.dir.join(LOG_FILE),
            self.dir.join(format!("{LOG_FILE}.migrated")),
        )?;
        File::open(&self.dir)?.sync_all()
    }

    /// Opens `{dir}/offsets.log`, replaying it; a torn or corrupt tail is cut off.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&path) {
            f.read_to_end(&mut bytes)?;
        }
        let mut entries = BTreeMap::new();
        let mut at = 0usize;
        while at + 8 <= bytes.len() {
            let len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
                as usize;
            let crc =
                u32::from_be_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
            if len > RECORD_BYTES_MAX || at + 8 + len > bytes.len() {
                break;
            }
            let payload = &bytes[at + 8..at + 8 + len];
            if crc32c::crc32c(payload) != crc {
                break;
            }
            let Some((key, committed)) = decode(payload) else {
                break;
            };
            entries.insert(key, committed);
            at += 8 + len;
        }
        if at < bytes.len() {
            tracing::warn!(path = %path.display(), valid = at, total = bytes.len(), "offsets log has a torn or corrupt tail; cutting it");
        }
        let live_bytes = entries.iter().map(|(k, c)| encoded_len(k, c)).sum();
        let mut store = Self {
            dir: dir.to_owned(),
            file: OpenOptions::new().create(true).append(true).open(&path)?,
            entries,
            log_bytes: at as u64,
            live_bytes,
            failed: false,
        };
        // The directory entries of a new store must be durable before any commit is.
        File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        // Rewrite when cut, or when the log is mostly superseded commits.
        if at < bytes.len() || store.log_bytes > 4 * store.live_bytes + (1 << 20) {
            store.compact()?;
        }
        Ok(store)
    }

    fn compact(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        for (k, c) in &self.entries {
            encode(&mut buf, k, c);
        }
        let temp = self.dir.join(format!("{LOG_FILE}.tmp"));
        let mut f = File::create(&temp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&temp, self.dir.join(LOG_FILE))?;
        // Switch to the new file before anything else can fail, so no later commit goes
        // to the unlinked old one.
        self.file = OpenOptions::new()
            .append(true)
            .open(self.dir.join(LOG_FILE))?;
        self.log_bytes = buf.len() as u64;
        File::open(&self.dir)?.sync_all()
    }

    /// Records the commits of one request durably (one write, one fdatasync).
    pub fn commit(
        &mut self,
        group: &str,
        commits: Vec<(String, i32, Committed)>,
    ) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("the offsets log failed earlier"));
        }
        let mut buf = Vec::new();
        for (topic, partition, c) in &commits {
            encode(&mut buf, &(group.to_owned(), topic.clone(), *partition), c);
        }
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data())
        {
            // Cut whatever part reached the file, so later commits do not land after junk
            // that replay would stop at; if even that fails, refuse commits from now on.
            if self
                .file
                .set_len(self.log_bytes)
                .and_then(|_| self.file.sync_data())
                .is_err()
            {
                self.failed = true;
            }
            return Err(e);
        }
        self.log_bytes += buf.len() as u64;
        for (topic, partition, c) in commits {
            let key = (group.to_owned(), topic, partition);
            self.live_bytes += encoded_len(&key, &c);
            if let Some(old) = self.entries.insert(key.clone(), c) {
                self.live_bytes -= encoded_len(&key, &old);
            }
        }
        if self.entries.len() > COMMITTED_PARTITIONS_MAX {
            tracing::warn!(
                entries = self.entries.len(),
                "many committed offsets kept; they never expire yet"
            );
        }
        if self.log_bytes > 4 * self.live_bytes + (64 << 20) {
            self.compact()?;
        }
        Ok(())
    }

    /// Drops every committed offset of a deleted topic (rewriting the log).
    pub fn forget_topic(&mut self, topic: &str) -> io::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|(_, t, _), _| t != topic);
        if self.entries.len() == before {
            return Ok(());
        }
        self.live_bytes = self.entries.iter().map(|(k, c)| encoded_len(k, c)).sum();
        self.compact()
    }

    /// Drops every committed offset of a deleted group (rewriting the log); whether it
    /// had any.
    pub fn forget_group(&mut self, group: &str) -> io::Result<bool> {
        let before = self.entries.len();
        self.entries.retain(|(g, _, _), _| g != group);
        if self.entries.len() == before {
            return Ok(false);
        }
        self.live_bytes = self.entries.iter().map(|(k, c)| encoded_len(k, c)).sum();
        self.compact()?;
        Ok(true)
    }

    pub fn fetch(&self, group: &str, topic: &str, partition: i32) -> Option<&Committed> {
        self.entries
            .get(&(group.to_owned(), topic.to_owned(), partition))
    }

    /// Every committed (topic, partition) of a group.
    pub fn group_partitions(&self, group: &str) -> Vec<(String, i32, Committed)> {
        self.entries
            .iter()
            .filter(|((g, _, _), _)| g == group)
            .map(|((_, t, p), c)| (t.clone(), *p, c.clone()))
            .collect()
    }

    /// Groups that have committed offsets.
    pub fn groups(&self) -> Vec<String> {
        let mut out: Vec<String> = self.entries.keys().map(|(g, _, _)| g.clone()).collect();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(offset: i64) -> Committed {
        Committed {
            offset,
            leader_epoch: 0,
            metadata: Some(format!("m{offset}")),
        }
    }

    #[test]
    fn commits_survive_reopen_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = OffsetStore::open(dir.path()).unwrap();
        s.commit("g", vec![("t".into(), 0, c(5)), ("t".into(), 1, c(7))])
            .unwrap();
        s.commit("g", vec![("t".into(), 0, c(9))]).unwrap();
        s.commit("h", vec![("t".into(), 0, c(1))]).unwrap();
        drop(s);
        // A torn last record (crash mid-write) is cut; earlier commits stay.
        let path = dir.path().join(LOG_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let s = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(s.fetch("g", "t", 0), Some(&c(9)));
        assert_eq!(s.fetch("g", "t", 1), Some(&c(7)));
        assert_eq!(s.fetch("h", "t", 0), None);
        assert_eq!(s.groups(), vec!["g".to_owned()]);
        assert_eq!(s.group_partitions("g").len(), 2);
        let mut s = s;
        s.forget_topic("t").unwrap();
        drop(s);
        assert!(OffsetStore::open(dir.path()).unwrap().groups().is_empty());
    }

    #[test]
    fn garbage_log_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), [0xffu8; 100]).unwrap();
        let s = OffsetStore::open(dir.path()).unwrap();
        assert!(s.groups().is_empty());
    }
}
