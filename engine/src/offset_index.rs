//! Sparse offset index: (offset relative to the segment base, byte position of the batch
//! that starts there), one entry every `index_interval_bytes` of log.
//!
//! Kept in memory for lookups and appended to the `.index` file beside the segment as
//! entries are added. The file is a cache: it is never trusted without a sanity check,
//! and recovery rebuilds it from the log.

use crate::limits::{INDEX_ENTRIES_MAX, OFFSET_INDEX_ENTRY_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Default, Clone)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
    /// Entries already written to the file.
    persisted: usize,
}

impl OffsetIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    /// Adds an entry; entries must grow strictly in both offset and position.
    /// Returns false (and adds nothing) if the index is full or the entry is out of order.
    pub fn push(&mut self, entry: OffsetEntry) -> bool {
        if self.entries.len() >= INDEX_ENTRIES_MAX {
            return false;
        }
        if let Some(last) = self.entries.last()
            && (entry.relative_offset <= last.relative_offset || entry.position <= last.position)
        {
            return false;
        }
        self.entries.push(entry);
        true
    }

    /// The entry with the greatest offset at or below `relative_offset`, or the start of
    /// the segment.
    pub fn floor(&self, relative_offset: u32) -> OffsetEntry {
        let i = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        if i == 0 {
            OffsetEntry {
                relative_offset: 0,
                position: 0,
            }
        } else {
            self.entries[i - 1]
        }
    }

    /// The relative offset of the last indexed batch that starts at or before `position`
    /// (0, the segment's first batch, when none does). Every batch before that one ends
    /// at or before `position`.
    pub fn floor_position(&self, position: u64) -> u32 {
        let i = self
            .entries
            .partition_point(|e| u64::from(e.position) <= position);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].relative_offset
        }
    }

    /// Entries not yet written to the file, encoded, and marks them written.
    pub fn take_unpersisted(&mut self) -> Vec<u8> {
        let fresh = &self.entries[self.persisted..];
        let mut out = Vec::with_capacity(fresh.len() * OFFSET_INDEX_ENTRY_BYTES);
        for e in fresh {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        self.persisted = self.entries.len();
        out
    }

    /// Bytes the persisted entries take in the file.
    /// Entries added since the file was last written.
    pub fn unpersisted(&self) -> usize {
        self.entries.len() - self.persisted
    }

    pub fn persisted_bytes(&self) -> u64 {
        (self.persisted * OFFSET_INDEX_ENTRY_BYTES) as u64
    }

    /// Decodes an index file, refusing anything inconsistent with a log of `log_bytes`.
    pub fn decode(bytes: &[u8], log_bytes: u64) -> Result<Self, &'static str> {
        if !bytes.len().is_multiple_of(OFFSET_INDEX_ENTRY_BYTES) {
            return Err("length is not a whole number of entries");
        }
        if bytes.len() / OFFSET_INDEX_ENTRY_BYTES > INDEX_ENTRIES_MAX {
            return Err("more entries than any segment can need");
        }
        let mut index = Self::default();
        for chunk in bytes.chunks_exact(OFFSET_INDEX_ENTRY_BYTES) {
            let entry = OffsetEntry {
                relative_offset: u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                position: u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            };
            if u64::from(entry.position) >= log_bytes {
                return Err("entry points past the end of the log");
            }
            if !index.push(entry) {
                return Err("entries out of order");
            }
        }
        index.persisted = index.entries.len();
        Ok(index)
    }

    /// Drops every entry at or past `position` (after a truncation of the log).
    pub fn truncate_to_position(&mut self, position: u64) {
        let keep = self
            .entries
            .partition_point(|e| u64::from(e.position) < position);
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(keep);
    }

    /// Marks the whole index as needing a rewrite of its file.
    pub fn mark_unpersisted(&mut self) {
        self.persisted = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(relative_offset: u32, position: u32) -> OffsetEntry {
        OffsetEntry {
            relative_offset,
            position,
        }
    }

    #[test]
    fn floor_finds_greatest_entry_at_or_below() {
        let mut ix = OffsetIndex::default();
        for (o, p) in [(10, 4096), (20, 8192), (30, 12288)] {
            assert!(ix.push(e(o, p)));
        }
        assert_eq!(ix.floor(0), e(0, 0));
        assert_eq!(ix.floor(9), e(0, 0));
        assert_eq!(ix.floor(10), e(10, 4096));
        assert_eq!(ix.floor(29), e(20, 8192));
        assert_eq!(ix.floor(u32::MAX), e(30, 12288));
    }

    #[test]
    fn push_refuses_out_of_order_entries() {
        let mut ix = OffsetIndex::default();
        assert!(ix.push(e(5, 100)));
        assert!(!ix.push(e(5, 200)));
        assert!(!ix.push(e(6, 100)));
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut ix = OffsetIndex::default();
        ix.push(e(1, 10));
        ix.push(e(2, 20));
        let bytes = ix.take_unpersisted();
        assert!(ix.take_unpersisted().is_empty());
        let back = OffsetIndex::decode(&bytes, 100).unwrap();
        assert_eq!(back.floor(2), e(2, 20));
        assert_eq!(back.persisted_bytes(), 16);
    }

    #[test]
    fn decode_refuses_garbage() {
        assert!(OffsetIndex::decode(&[1, 2, 3], 100).is_err());
        let mut bytes = Vec::new();
        for (o, p) in [(2u32, 20u32), (1, 30)] {
            bytes.extend_from_slice(&o.to_be_bytes());
            bytes.extend_from_slice(&p.to_be_bytes());
        }
        assert_eq!(
            OffsetIndex::decode(&bytes, 100).unwrap_err(),
            "entries out of order"
        );
        assert_eq!(
            OffsetIndex::decode(&bytes[..8], 20).unwrap_err(),
            "entry points past the end of the log"
        );
    }

    #[test]
    fn truncate_drops_entries_at_or_past_position() {
        let mut ix = OffsetIndex::default();
        ix.push(e(1, 10));
        ix.push(e(2, 20));
        ix.take_unpersisted();
        ix.truncate_to_position(20);
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.persisted_bytes(), 8);
    }
}
