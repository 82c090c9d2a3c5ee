//! The message body every driver sends, and the tracker that checks what came back.
//!
//! Each message starts with a 24-byte header: a magic, the producer's id, its sequence
//! number, and the moment it was meant to be sent (nanoseconds since the run's clock
//! started). The rest is filler up to the message size. Producers and consumers run in one
//! process, so the timestamps share one monotonic clock.

use std::sync::OnceLock;
use std::time::Instant;

/// `LOAD` in ASCII, little-endian.
const MAGIC: u32 = 0x4441_4f4c;
pub const HEADER_LEN: usize = 24;

/// The run's clock: every timestamp in a payload is measured from here.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub fn now_nanos() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub producer: u32,
    pub seq: u64,
    pub sent_nanos: u64,
}

/// A reusable message buffer of a fixed size.
pub struct Message {
    buf: Vec<u8>,
}

impl Message {
    /// `size` is clamped up to the header length.
    pub fn new(size: usize) -> Self {
        let mut buf = vec![0u8; size.max(HEADER_LEN)];
        for (i, b) in buf.iter_mut().enumerate().skip(HEADER_LEN) {
            *b = b'a' + (i % 26) as u8;
        }
        Self { buf }
    }

    pub fn stamp(&mut self, header: Header) -> &[u8] {
        self.buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&header.producer.to_le_bytes());
        self.buf[8..16].copy_from_slice(&header.seq.to_le_bytes());
        self.buf[16..24].copy_from_slice(&header.sent_nanos.to_le_bytes());
        &self.buf
    }
}

pub fn decode(payload: &[u8]) -> Option<Header> {
    let word = |range: std::ops::Range<usize>| payload.get(range);
    let magic = u32::from_le_bytes(word(0..4)?.try_into().ok()?);
    if magic != MAGIC {
        return None;
    }
    Some(Header {
        producer: u32::from_le_bytes(word(4..8)?.try_into().ok()?),
        seq: u64::from_le_bytes(word(8..16)?.try_into().ok()?),
        sent_nanos: u64::from_le_bytes(word(16..24)?.try_into().ok()?),
    })
}

/// Which (producer, seq) pairs arrived, how often, and in what order per producer.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: Vec<Vec<u64>>,
    last_seq: Vec<Option<u64>>,
    pub received: u64,
    pub bytes: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub malformed: u64,
    /// Messages that arrived with a lower sequence than an earlier one from the same
    /// producer. Expected with several partitions or queues; zero on one.
    pub reordered: u64,
}

/// The largest sequence number a tracker accepts (bounds its bitmaps to 16 MiB a producer).
pub const MAX_SEQ: u64 = 1 << 27;
const MAX_PRODUCERS: u32 = 4096;

impl Tracker {
    /// Records one payload; returns its header when it was one of ours.
    pub fn record(&mut self, payload: &[u8]) -> Option<Header> {
        self.received += 1;
        self.bytes += payload.len() as u64;
        let Some(h) = decode(payload).filter(|h| h.producer < MAX_PRODUCERS && h.seq < MAX_SEQ)
        else {
            self.malformed += 1;
            return None;
        };
        let p = h.producer as usize;
        if self.seen.len() <= p {
            self.seen.resize_with(p + 1, Vec::new);
            self.last_seq.resize(p + 1, None);
        }
        let bits = &mut self.seen[p];
        let word = (h.seq / 64) as usize;
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let mask = 1u64 << (h.seq % 64);
        if bits[word] & mask != 0 {
            self.duplicates += 1;
        } else {
            bits[word] |= mask;
            self.unique += 1;
        }
        if self.last_seq[p].is_some_and(|last| h.seq < last) {
            self.reordered += 1;
        }
        self.last_seq[p] = Some(h.seq);
        Some(h)
    }

    /// Folds another tracker (another consumer's) into this one.
    pub fn merge(&mut self, other: &Tracker) {
        for (p, bits) in other.seen.iter().enumerate() {
            if self.seen.len() <= p {
                self.seen.resize_with(p + 1, Vec::new);
                self.last_seq.resize(p + 1, None);
            }
            let mine = &mut self.seen[p];
            if mine.len() < bits.len() {
                mine.resize(bits.len(), 0);
            }
            for (a, b) in mine.iter_mut().zip(bits) {
                let both = *a & *b;
                self.duplicates += u64::from(both.count_ones());
                *a |= *b;
            }
        }
        self.received += other.received;
        self.bytes += other.bytes;
        self.duplicates += other.duplicates;
        self.malformed += other.malformed;
        self.reordered += other.reordered;
        self.unique = self
            .seen
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum();
    }

    /// How many of `expected` sequences (0..expected[p] for producer p) never arrived.
    pub fn missing(&self, expected: &[u64]) -> u64 {
        expected
            .iter()
            .enumerate()
            .map(|(p, &n)| {
                let got: u64 = self.seen.get(p).map_or(0, |bits| {
                    (0..n)
                        .filter(|s| {
                            bits.get((s / 64) as usize)
                                .is_some_and(|w| w & (1 << (s % 64)) != 0)
                        })
                        .count() as u64
                });
                n - got
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_filler_is_kept() {
        let mut m = Message::new(200);
        let h = Header {
            producer: 3,
            seq: 99,
            sent_nanos: 12345,
        };
        let bytes = m.stamp(h).to_vec();
        assert_eq!(bytes.len(), 200);
        assert_eq!(decode(&bytes), Some(h));
        assert!(decode(&bytes[..10]).is_none());
        assert!(decode(&[0u8; 24]).is_none());
    }

    #[test]
    fn tracker_counts_duplicates_missing_and_reorders() {
        let mut m = Message::new(32);
        let mut a = Tracker::default();
        for seq in [0, 1, 2, 2, 5, 4] {
            a.record(m.stamp(Header {
                producer: 0,
                seq,
                sent_nanos: 0,
            }));
        }
        a.record(b"not ours");
        assert_eq!(
            (a.received, a.unique, a.duplicates, a.malformed, a.reordered),
            (7, 5, 1, 1, 1)
        );
        assert_eq!(a.missing(&[6]), 1);

        let mut b = Tracker::default();
        for seq in [3, 5] {
            b.record(m.stamp(Header {
                producer: 0,
                seq,
                sent_nanos: 0,
            }));
        }
        b.record(m.stamp(Header {
            producer: 1,
            seq: 0,
            sent_nanos: 0,
        }));
        a.merge(&b);
        assert_eq!(a.unique, 7);
        assert_eq!(a.duplicates, 2);
        assert_eq!(a.missing(&[6, 1]), 0);
        assert_eq!(a.missing(&[7, 2]), 2);
    }
}
