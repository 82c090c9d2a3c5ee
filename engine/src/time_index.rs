//! Sparse time index: (largest timestamp so far in the segment, offset relative to the
//! segment base of the batch that brought it). Entries grow strictly in both fields, so
//! every batch before an entry's offset has timestamps at or below the entry's.
//!
//! Like the offset index, the `.timeindex` file is a checked cache rebuilt by recovery.

use crate::limits::{INDEX_ENTRIES_MAX, TIME_INDEX_ENTRY_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

#[derive(Debug, Default, Clone)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
    persisted: usize,
}

impl TimeIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// Adds an entry if it raises the timestamp and moves the offset forward.
    pub fn push(&mut self, entry: TimeEntry) -> bool {
        if self.entries.len() >= INDEX_ENTRIES_MAX {
            return false;
        }
        if let Some(last) = self.entries.last()
            && (entry.timestamp <= last.timestamp || entry.relative_offset <= last.relative_offset)
        {
            return false;
        }
        self.entries.push(entry);
        true
    }

    /// Relative offset from which a scan for the first timestamp >= `target` may start:
    /// the last entry whose timestamp is below `target` (all batches up to it are older).
    pub fn scan_start(&self, target: i64) -> u32 {
        let i = self.entries.partition_point(|e| e.timestamp < target);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].relative_offset
        }
    }

    pub fn take_unpersisted(&mut self) -> Vec<u8> {
        let fresh = &self.entries[self.persisted..];
        let mut out = Vec::with_capacity(fresh.len() * TIME_INDEX_ENTRY_BYTES);
        for e in fresh {
            out.extend_from_slice(&e.timestamp.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        self.persisted = self.entries.len();
        out
    }

    /// Entries added since the file was last written.
    pub fn unpersisted(&self) -> usize {
        self.entries.len() - self.persisted
    }

    pub fn persisted_bytes(&self) -> u64 {
        (self.persisted * TIME_INDEX_ENTRY_BYTES) as u64
    }

    /// Decodes a time index file; `relative_offset_end` bounds the offsets it may name.
    pub fn decode(bytes: &[u8], relative_offset_end: u64) -> Result<Self, &'static str> {
        if !bytes.len().is_multiple_of(TIME_INDEX_ENTRY_BYTES) {
            return Err("length is not a whole number of entries");
        }
        if bytes.len() / TIME_INDEX_ENTRY_BYTES > INDEX_ENTRIES_MAX {
            return Err("more entries than any segment can need");
        }
        let mut index = Self::default();
        for chunk in bytes.chunks_exact(TIME_INDEX_ENTRY_BYTES) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&chunk[..8]);
            let entry = TimeEntry {
                timestamp: i64::from_be_bytes(ts),
                relative_offset: u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]),
            };
            if u64::from(entry.relative_offset) >= relative_offset_end {
                return Err("entry names an offset past the end of the segment");
            }
            if !index.push(entry) {
                return Err("entries out of order");
            }
        }
        index.persisted = index.entries.len();
        Ok(index)
    }

    pub fn truncate_to_relative_offset(&mut self, relative_offset_end: u64) {
        let keep = self
            .entries
            .partition_point(|e| u64::from(e.relative_offset) < relative_offset_end);
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(keep);
    }

    pub fn mark_unpersisted(&mut self) {
        self.persisted = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(timestamp: i64, relative_offset: u32) -> TimeEntry {
        TimeEntry {
            timestamp,
            relative_offset,
        }
    }

    #[test]
    fn scan_start_is_last_entry_below_target() {
        let mut ix = TimeIndex::default();
        for (t, o) in [(100, 0), (200, 10), (300, 20)] {
            assert!(ix.push(e(t, o)));
        }
        assert_eq!(ix.scan_start(50), 0);
        assert_eq!(ix.scan_start(100), 0);
        assert_eq!(ix.scan_start(101), 0);
        assert_eq!(ix.scan_start(250), 10);
        assert_eq!(ix.scan_start(1000), 20);
    }

    #[test]
    fn push_keeps_only_rising_timestamps() {
        let mut ix = TimeIndex::default();
        assert!(ix.push(e(100, 0)));
        assert!(!ix.push(e(90, 5)));
        assert!(!ix.push(e(100, 6)));
        assert!(ix.push(e(101, 7)));
    }

    #[test]
    fn decode_round_trip_and_bounds() {
        let mut ix = TimeIndex::default();
        ix.push(e(1, 1));
        ix.push(e(2, 5));
        let bytes = ix.take_unpersisted();
        assert_eq!(TimeIndex::decode(&bytes, 6).unwrap().len(), 2);
        assert!(TimeIndex::decode(&bytes, 5).is_err());
        assert!(TimeIndex::decode(&bytes[..5], 6).is_err());
    }
}
