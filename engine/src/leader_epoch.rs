//! The leader-epoch cache (Kafka's `LeaderEpochFileCache`, KIP-101/KIP-279): for each
//! leader epoch the partition has seen, the offset of its first batch. A follower asks the
//! leader where an epoch ends (`end_offset_for`) and truncates its own log there before it
//! copies anything, so the logs of leader and follower never diverge.
//!
//! Persisted as `leader-epoch-checkpoint`, a small text file in Kafka's layout:
//! ```text
//! 0            <- version
//! 2            <- entry count
//! 0 0          <- epoch start_offset
//! 3 1200
//! ```
//! The file is a cache of the batch headers: a missing or damaged one is rebuilt from them.

use crate::limits::{LEADER_EPOCH_ENTRIES_MAX, LEADER_EPOCH_FILE_BYTES_MAX};

/// Kafka's `UNDEFINED_EPOCH` / `UNDEFINED_EPOCH_OFFSET`, and the `partitionLeaderEpoch` of a
/// batch no leader stamped (`NO_PARTITION_LEADER_EPOCH`).
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

const FILE_VERSION: &str = "0";

/// One leader epoch and the offset of its first batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

/// Entries strictly increasing in both epoch and start offset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Notes that a batch of `epoch` starts at `start_offset`. Only an epoch above the
    /// latest one starts an entry (batches of older or unstamped epochs change nothing);
    /// entries at or past `start_offset` are dropped first, as Kafka's `assign` does.
    /// Returns whether the cache changed (and must be persisted).
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || start_offset < 0 || self.latest_epoch().is_some_and(|l| epoch <= l) {
            return false;
        }
        self.entries.retain(|e| e.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        if self.entries.len() > LEADER_EPOCH_ENTRIES_MAX {
            // Bounded: the oldest epoch is forgotten. A follower asking for it is answered
            // as one asking for an epoch older than any known (Kafka's own behaviour once
            // retention moved the log start past it).
            self.entries.remove(0);
        }
        true
    }

    /// Drops every entry starting at or after `end_offset` (the log was truncated there).
    /// Returns whether anything was dropped.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let keep = self
            .entries
            .partition_point(|e| e.start_offset < end_offset);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// Kafka's `LeaderEpochFileCache.endOffsetFor`: the largest epoch at or below
    /// `requested` and the offset where the epoch after it starts (the log end for the
    /// latest epoch). `(-1, -1)` when the epoch is undefined, the cache is empty, or
    /// `requested` is past every known epoch.
    pub fn end_offset_for(&self, requested: i32, log_end_offset: i64) -> (i32, i64) {
        let undefined = (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        let Some(latest) = self.latest_epoch() else {
            return undefined;
        };
        if requested == UNDEFINED_EPOCH {
            return undefined;
        }
        if requested == latest {
            return (latest, log_end_offset);
        }
        let higher = self.entries.partition_point(|e| e.epoch <= requested);
        let Some(higher_entry) = self.entries.get(higher) else {
            return undefined;
        };
        match higher.checked_sub(1).map(|floor| self.entries[floor]) {
            None => (requested, higher_entry.start_offset),
            Some(floor) => (floor.epoch, higher_entry.start_offset),
        }
    }

    /// The checkpoint file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{FILE_VERSION}\n{}\n", self.entries.len());
        for e in &self.entries {
            out.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        out.into_bytes()
    }

    /// Parses a checkpoint file, refusing anything that is not exactly what `encode`
    /// writes for a valid cache.
    pub fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        if bytes.len() > LEADER_EPOCH_FILE_BYTES_MAX {
            return Err("file larger than any cache");
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8")?;
        let body = text.strip_suffix('\n').ok_or("last line unterminated")?;
        let mut lines = body.split('\n');
        if lines.next() != Some(FILE_VERSION) {
            return Err("unknown version");
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or("bad entry count")?;
        if count > LEADER_EPOCH_ENTRIES_MAX {
            return Err("more entries than the cache holds");
        }
        let mut cache = Self::default();
        for line in lines.by_ref().take(count) {
            let (epoch, start) = line.split_once(' ').ok_or("bad entry line")?;
            let entry = EpochEntry {
                epoch: epoch.parse().map_err(|_| "bad epoch")?,
                start_offset: start.parse().map_err(|_| "bad start offset")?,
            };
            if entry.epoch < 0 || entry.start_offset < 0 {
                return Err("negative entry");
            }
            if cache.entries.last().is_some_and(|last| {
                entry.epoch <= last.epoch || entry.start_offset <= last.start_offset
            }) {
                return Err("entries out of order");
            }
            cache.entries.push(entry);
        }
        if cache.entries.len() != count || lines.next().is_some() {
            return Err("entry count does not match the entries");
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache::default();
        for &(epoch, start) in entries {
            assert!(c.assign(epoch, start));
        }
        c
    }

    #[test]
    fn given_empty_cache_when_asked_for_any_epoch_should_answer_undefined() {
        let c = LeaderEpochCache::default();
        assert_eq!(c.end_offset_for(0, 10), (-1, -1));
        assert_eq!(c.end_offset_for(-1, 10), (-1, -1));
        assert_eq!(c.latest_epoch(), None);
    }

    #[test]
    fn given_entries_when_asked_for_end_offsets_should_follow_kafka_end_offset_for() {
        let c = cache(&[(1, 0), (3, 100), (5, 200)]);
        // Undefined epoch.
        assert_eq!(c.end_offset_for(-1, 300), (-1, -1));
        // The latest epoch ends at the log end.
        assert_eq!(c.end_offset_for(5, 300), (5, 300));
        // An epoch past every known one: nothing higher.
        assert_eq!(c.end_offset_for(6, 300), (-1, -1));
        // Below every known epoch: no floor, the first epoch's start.
        assert_eq!(c.end_offset_for(0, 300), (0, 0));
        // A known epoch: where the next one starts.
        assert_eq!(c.end_offset_for(1, 300), (1, 100));
        assert_eq!(c.end_offset_for(3, 300), (3, 200));
        // An unknown epoch between known ones: the floor epoch, the next one's start.
        assert_eq!(c.end_offset_for(2, 300), (1, 100));
        assert_eq!(c.end_offset_for(4, 300), (3, 200));
    }

    #[test]
    fn given_assignments_should_keep_entries_increasing_and_ignore_older_epochs() {
        let mut c = cache(&[(0, 0), (2, 10)]);
        assert!(!c.assign(2, 20), "same epoch again");
        assert!(!c.assign(1, 30), "older epoch");
        assert!(!c.assign(-1, 40), "unstamped batch");
        // A new epoch starting at or before existing entries replaces them.
        assert!(c.assign(4, 10));
        assert_eq!(
            c.entries(),
            &[
                EpochEntry {
                    epoch: 0,
                    start_offset: 0
                },
                EpochEntry {
                    epoch: 4,
                    start_offset: 10
                }
            ]
        );
        assert!(c.truncate_from_end(10));
        assert!(!c.truncate_from_end(10));
        assert_eq!(c.latest_epoch(), Some(0));
    }

    #[test]
    fn given_cache_when_encoded_should_decode_back_and_refuse_damage() {
        let c = cache(&[(0, 0), (3, 1200), (7, 5000)]);
        let bytes = c.encode();
        assert_eq!(bytes, b"0\n3\n0 0\n3 1200\n7 5000\n");
        assert_eq!(LeaderEpochCache::decode(&bytes).unwrap(), c);
        assert_eq!(
            LeaderEpochCache::decode(b"0\n0\n").unwrap(),
            LeaderEpochCache::default()
        );
        for damaged in [
            &b""[..],
            b"1\n0\n",
            b"0\n2\n0 0\n",
            b"0\n1\n0 0\n3 4\n",
            b"0\n2\n3 0\n1 5\n",
            b"0\n2\n0 5\n1 5\n",
            b"0\n1\n0 0",
            b"0\n1\n0 x\n",
            b"0\n1\n-2 0\n",
            b"0\n99999999999\n",
            b"0\n1\n\xff 0\n",
        ] {
            assert!(
                LeaderEpochCache::decode(damaged).is_err(),
                "{:?}",
                String::from_utf8_lossy(damaged)
            );
        }
    }
}
