//! Replica agreement below the high watermark, byte for byte: each replica's partition
//! directory is read as it lies on disk (`{base_offset:020}.log` segments of RecordBatch
//! v2 batches back to back), and the batches below the high watermark must be the same
//! bytes on every replica (offsets, leader epochs, CRCs, records). Segment boundaries may
//! differ between replicas (each rolls its own), so the batch streams are compared, not
//! the files.

use std::path::Path;

/// RecordBatch v2 header fields this checker reads (Kafka's layout).
const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const LAST_OFFSET_DELTA_AT: usize = 23;
/// The header's size: the smallest batch there is.
const BATCH_HEADER_BYTES: usize = 61;
/// `batchLength` counts the bytes after itself.
const LOG_OVERHEAD_BYTES: usize = 12;

/// One batch as a replica stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub bytes: Vec<u8>,
}

impl Batch {
    pub fn leader_epoch(&self) -> i32 {
        be_i32(&self.bytes, LEADER_EPOCH_AT)
    }
}

fn be_i32(bytes: &[u8], at: usize) -> i32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(b)
}

fn be_i64(bytes: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(b)
}

/// The whole batches of one segment file's bytes, in file order. A torn tail (a batch
/// cut short, as a write in progress or a kill leaves it) ends the segment; a length
/// that cannot be a batch is an error.
pub fn parse_segment(bytes: &[u8]) -> Result<Vec<Batch>, String> {
    let mut batches = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= LOG_OVERHEAD_BYTES {
        let length = be_i32(bytes, at + BATCH_LENGTH_AT);
        let total = usize::try_from(length)
            .ok()
            .map(|l| l + LOG_OVERHEAD_BYTES)
            .filter(|t| *t >= BATCH_HEADER_BYTES)
            .ok_or_else(|| format!("batch length {length} at byte {at}"))?;
        if bytes.len() - at < total {
            break;
        }
        let bytes = bytes[at..at + total].to_vec();
        let base_offset = be_i64(&bytes, BASE_OFFSET_AT);
        let last_offset = base_offset + i64::from(be_i32(&bytes, LAST_OFFSET_DELTA_AT));
        batches.push(Batch {
            base_offset,
            last_offset,
            bytes,
        });
        at += total;
    }
    Ok(batches)
}

/// Every whole batch of a partition directory, segment after segment (by base offset,
/// which the file names carry zero-padded, so by name).
pub fn read_partition(dir: &Path) -> Result<Vec<Batch>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut segments: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let mut batches = Vec::new();
    for segment in segments {
        let bytes = std::fs::read(&segment).map_err(|e| format!("{}: {e}", segment.display()))?;
        batches.extend(parse_segment(&bytes).map_err(|e| format!("{}: {e}", segment.display()))?);
    }
    Ok(batches)
}

/// Checks that every replica (node id, its batches) holds the same batches below
/// `high_watermark`, contiguous from the first replica's first offset up to it. The
/// error names the first offset where they part and how.
pub fn compare(replicas: &[(i32, Vec<Batch>)], high_watermark: i64) -> Result<(), String> {
    let Some((_, first)) = replicas.first() else {
        return Ok(());
    };
    let start = first.first().map_or(0, |b| b.base_offset);
    let mut below: Vec<(i32, Vec<&Batch>)> = Vec::new();
    for (node, batches) in replicas {
        let kept: Vec<&Batch> = batches
            .iter()
            .take_while(|b| b.base_offset < high_watermark)
            .collect();
        let mut next = start;
        for b in &kept {
            if b.base_offset != next {
                return Err(format!(
                    "replica {node}: batch at offset {} where {next} was due (a gap or an overlap) below the high watermark {high_watermark}",
                    b.base_offset
                ));
            }
            next = b.last_offset + 1;
        }
        if next < high_watermark {
            return Err(format!(
                "replica {node} holds offsets up to {} only, below the high watermark {high_watermark}",
                next - 1
            ));
        }
        below.push((*node, kept));
    }
    let (node_a, a) = &below[0];
    for (node_b, b) in &below[1..] {
        for (x, y) in a.iter().zip(b.iter()) {
            if x.bytes != y.bytes {
                let at = x
                    .bytes
                    .iter()
                    .zip(&y.bytes)
                    .position(|(p, q)| p != q)
                    .unwrap_or(x.bytes.len().min(y.bytes.len()));
                return Err(format!(
                    "replicas {node_a} and {node_b} differ in the batch at offset {} (byte {at} of it; leader epochs {} and {}; lengths {} and {}), below the high watermark {high_watermark}",
                    x.base_offset,
                    x.leader_epoch(),
                    y.leader_epoch(),
                    x.bytes.len(),
                    y.bytes.len()
                ));
            }
        }
        if a.len() != b.len() {
            return Err(format!(
                "replicas {node_a} and {node_b} hold {} and {} batches below the high watermark {high_watermark}",
                a.len(),
                b.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch-shaped run of bytes: header fields set, `fill` for the rest.
    fn batch(base_offset: i64, records: i32, epoch: i32, fill: u8) -> Vec<u8> {
        let mut b = vec![fill; BATCH_HEADER_BYTES + 10];
        let length = i32::try_from(b.len() - LOG_OVERHEAD_BYTES).expect("small");
        b[0..8].copy_from_slice(&base_offset.to_be_bytes());
        b[8..12].copy_from_slice(&length.to_be_bytes());
        b[12..16].copy_from_slice(&epoch.to_be_bytes());
        b[23..27].copy_from_slice(&(records - 1).to_be_bytes());
        b
    }

    fn parsed(segments: &[Vec<u8>]) -> Vec<Batch> {
        segments
            .iter()
            .flat_map(|s| parse_segment(s).expect("parses"))
            .collect()
    }

    #[test]
    fn given_a_torn_tail_should_keep_the_whole_batches_only() {
        let mut bytes = batch(0, 2, 0, 1);
        bytes.extend(batch(2, 3, 0, 2));
        let whole = bytes.len();
        bytes.extend(&batch(5, 1, 0, 3)[..30]);
        let batches = parse_segment(&bytes).expect("parses");
        assert_eq!(batches.len(), 2);
        assert_eq!((batches[1].base_offset, batches[1].last_offset), (2, 4));
        assert_eq!(batches.iter().map(|b| b.bytes.len()).sum::<usize>(), whole);
    }

    #[test]
    fn given_a_nonsense_length_should_refuse_the_segment() {
        let mut bytes = batch(0, 1, 0, 1);
        bytes[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(parse_segment(&bytes).is_err());
    }

    #[test]
    fn given_the_same_batches_in_different_segments_should_agree() {
        let (a, b, c) = (batch(0, 2, 0, 1), batch(2, 2, 1, 2), batch(4, 1, 1, 3));
        let one = parsed(&[[a.clone(), b.clone(), c.clone()].concat()]);
        let two = parsed(&[a.clone(), [b.clone(), c.clone()].concat()]);
        // Beyond the high watermark (5) replica 3 may differ or lack batches.
        let three = parsed(&[[a, b, c, batch(5, 1, 2, 9)].concat()]);
        compare(&[(1, one), (2, two), (3, three)], 5).expect("agree");
    }

    #[test]
    fn given_different_bytes_below_the_high_watermark_should_report_divergence() {
        let one = parsed(&[[batch(0, 2, 0, 1), batch(2, 2, 1, 2)].concat()]);
        let two = parsed(&[[batch(0, 2, 0, 1), batch(2, 2, 1, 7)].concat()]);
        let e = compare(&[(1, one.clone()), (2, two.clone())], 4).expect_err("diverge");
        assert!(e.contains("offset 2"), "{e}");
        // Only beyond the high watermark: not a divergence.
        compare(&[(1, one), (2, two)], 2).expect("agree below 2");
    }

    #[test]
    fn given_another_leader_epoch_below_the_high_watermark_should_report_divergence() {
        let one = parsed(&[batch(0, 2, 3, 1)]);
        let two = parsed(&[batch(0, 2, 4, 1)]);
        let e = compare(&[(1, one), (2, two)], 2).expect_err("diverge");
        assert!(e.contains("leader epochs 3 and 4"), "{e}");
    }

    #[test]
    fn given_a_replica_short_of_the_high_watermark_or_with_a_gap_should_report_it() {
        let full = parsed(&[[batch(0, 2, 0, 1), batch(2, 2, 0, 2)].concat()]);
        let short = parsed(&[batch(0, 2, 0, 1)]);
        let gap = parsed(&[[batch(0, 2, 0, 1), batch(3, 1, 0, 2)].concat()]);
        let e = compare(&[(1, full.clone()), (2, short)], 4).expect_err("short");
        assert!(e.contains("replica 2 holds offsets up to 1"), "{e}");
        let e = compare(&[(1, full), (2, gap)], 4).expect_err("gap");
        assert!(e.contains("batch at offset 3 where 2 was due"), "{e}");
    }
}
