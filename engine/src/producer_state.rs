//! Idempotent producers: per producer id, the epoch and the last few batches' sequence
//! ranges and offsets. A retried batch is recognised and answered with its original
//! offsets instead of being written twice; a gap in sequences is refused.
//!
//! The state is rebuilt at open from a snapshot (written at every roll and at close) plus
//! the batches after it, which recovery reads anyway.

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;

/// Batches remembered per producer (Kafka keeps five, matching
/// `max.in.flight.requests.per.connection`).
pub const PRODUCER_BATCHES_CACHED: usize = 5;
/// Producers remembered per partition; the least recently used is forgotten beyond it.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

const CACHED_BATCH_BYTES: usize = 4 + 4 + 8 + 8;
const ENTRY_HEADER_BYTES: usize = 8 + 2 + 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CachedBatch {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Debug, Clone)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<CachedBatch>,
    last_used: u64,
}

/// What the sequence check decided for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not idempotent, or the next batch in sequence: append it.
    Append,
    /// Already in the log at these offsets: answer without writing.
    Duplicate { base_offset: i64, last_offset: i64 },
    /// The sequence does not follow the producer's last batch.
    OutOfOrder { expected: i32, got: i32 },
    /// The producer epoch is older than the one the partition has seen.
    FencedEpoch { current: i16, got: i16 },
}

#[derive(Debug, Default, Clone)]
pub struct ProducerStates {
    map: HashMap<i64, ProducerEntry>,
    clock: u64,
}

/// Sequence numbers wrap from i32::MAX to 0.
fn seq_after(seq: i32, n: i32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// The sequence numbers a batch took: one per offset, as Kafka counts them (the same as
/// one per record for a batch as produced; a compacted batch keeps its offsets, not all
/// its records).
fn range_of(h: &BatchHeader) -> (i32, i32) {
    (
        h.base_sequence,
        seq_after(h.base_sequence, h.last_offset_delta),
    )
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Each producer's last batch: producer id and the batch's base offset (the batches
    /// the cleaner must keep, if only empty, for their sequence numbers).
    pub fn last_batches(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.map
            .iter()
            .filter_map(|(&id, e)| e.batches.back().map(|b| (id, b.base_offset)))
    }

    pub fn check(&self, h: &BatchHeader) -> SequenceCheck {
        if h.producer_id < 0 {
            return SequenceCheck::Append;
        }
        let Some(entry) = self.map.get(&h.producer_id) else {
            // Unknown producer (new, or forgotten): accept, as Kafka does once a
            // producer's state has expired.
            return SequenceCheck::Append;
        };
        if h.producer_epoch < entry.epoch {
            return SequenceCheck::FencedEpoch {
                current: entry.epoch,
                got: h.producer_epoch,
            };
        }
        if h.producer_epoch > entry.epoch {
            return if h.base_sequence == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::OutOfOrder {
                    expected: 0,
                    got: h.base_sequence,
                }
            };
        }
        let (first, last) = range_of(h);
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
        {
            return SequenceCheck::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            };
        }
        let expected = entry.batches.back().map_or(0, |b| seq_after(b.last_seq, 1));
        if first == expected {
            SequenceCheck::Append
        } else {
            SequenceCheck::OutOfOrder {
                expected,
                got: first,
            }
        }
    }

    /// Remembers a batch now in the log (its base offset assigned).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 {
            return;
        }
        self.clock += 1;
        let clock = self.clock;
        let entry = self
            .map
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::with_capacity(PRODUCER_BATCHES_CACHED),
                last_used: clock,
            });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        // A batch seen again (recovery re-reading what it already replayed) is ignored.
        if entry
            .batches
            .back()
            .is_some_and(|b| b.base_offset >= h.base_offset)
        {
            return;
        }
        let (first_seq, last_seq) = range_of(h);
        entry.batches.push_back(CachedBatch {
            first_seq,
            last_seq,
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
        });
        while entry.batches.len() > PRODUCER_BATCHES_CACHED {
            entry.batches.pop_front();
        }
        entry.last_used = clock;
        if self.map.len() > PRODUCERS_PER_PARTITION_MAX
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(id, _)| *id)
        {
            self.map.remove(&oldest);
        }
    }

    /// Forgets batches at or past `offset` (after a truncation).
    pub fn truncate(&mut self, offset: i64) {
        for e in self.map.values_mut() {
            e.batches.retain(|b| b.base_offset < offset);
        }
        self.map.retain(|_, e| !e.batches.is_empty());
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.map.len() * (ENTRY_HEADER_BYTES + PRODUCER_BATCHES_CACHED * CACHED_BATCH_BYTES),
        );
        for (id, e) in &self.map {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        out
    }

    /// Decodes a snapshot body; `None` if it is malformed in any way.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut states = Self::default();
        let mut at = 0usize;
        while at < bytes.len() {
            let head = bytes.get(at..at + ENTRY_HEADER_BYTES)?;
            let id = i64::from_be_bytes(head[..8].try_into().ok()?);
            let epoch = i16::from_be_bytes([head[8], head[9]]);
            let n = head[10] as usize;
            if n > PRODUCER_BATCHES_CACHED || states.map.len() >= PRODUCERS_PER_PARTITION_MAX {
                return None;
            }
            at += ENTRY_HEADER_BYTES;
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                let b = bytes.get(at..at + CACHED_BATCH_BYTES)?;
                batches.push_back(CachedBatch {
                    first_seq: i32::from_be_bytes(b[0..4].try_into().ok()?),
                    last_seq: i32::from_be_bytes(b[4..8].try_into().ok()?),
                    base_offset: i64::from_be_bytes(b[8..16].try_into().ok()?),
                    last_offset: i64::from_be_bytes(b[16..24].try_into().ok()?),
                });
                at += CACHED_BATCH_BYTES;
            }
            states.map.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_used: 0,
                },
            );
        }
        Some(states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        count: i32,
        base_offset: i64,
    ) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence,
            record_count: count,
        }
    }

    #[test]
    fn duplicates_are_recognised_and_gaps_refused() {
        let mut s = ProducerStates::default();
        let first = header(7, 0, 0, 3, 100);
        assert_eq!(s.check(&first), SequenceCheck::Append);
        s.record(&first);
        assert_eq!(
            s.check(&first),
            SequenceCheck::Duplicate {
                base_offset: 100,
                last_offset: 102
            }
        );
        assert_eq!(s.check(&header(7, 0, 3, 2, 0)), SequenceCheck::Append);
        assert_eq!(
            s.check(&header(7, 0, 5, 1, 0)),
            SequenceCheck::OutOfOrder {
                expected: 3,
                got: 5
            }
        );
        assert_eq!(
            s.check(&header(7, -1, 3, 1, 0)),
            SequenceCheck::FencedEpoch {
                current: 0,
                got: -1
            }
        );
        assert_eq!(s.check(&header(7, 1, 0, 1, 0)), SequenceCheck::Append);
        assert_eq!(s.check(&header(-1, -1, -1, 1, 0)), SequenceCheck::Append);
    }

    #[test]
    fn sequences_wrap_and_snapshots_round_trip() {
        let mut s = ProducerStates::default();
        let near_end = header(9, 2, i32::MAX - 1, 4, 10);
        s.record(&near_end);
        assert_eq!(s.check(&header(9, 2, 2, 1, 0)), SequenceCheck::Append);
        let back = ProducerStates::decode(&s.encode()).unwrap();
        assert_eq!(
            back.check(&near_end),
            SequenceCheck::Duplicate {
                base_offset: 10,
                last_offset: 13
            }
        );
        assert!(ProducerStates::decode(&[1, 2, 3]).is_none());
    }
}
