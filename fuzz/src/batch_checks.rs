//! The record-batch validator (`engine::batch`): on any bytes it must answer without
//! panicking, and a batch it accepts must be one the rest of the engine can store, index
//! and search.

use engine::batch::{self, BATCH_HEADER_BYTES, BatchHeader, LOG_OVERHEAD_BYTES};
use engine::limits::{BATCH_BYTES_MAX, BATCH_RECORDS_MAX};

/// Byte offset of the CRC field and of the span it covers.
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const BATCH_LENGTH_AT: usize = 8;

/// Arbitrary bytes as one batch: what `Partition::append` and recovery call.
pub fn run_raw(data: &[u8]) {
    let target = data
        .get(27..35)
        .map_or(0, |b| i64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
    check_any(data, target);
}

/// The structured variant. Byte 0 holds flags, the rest is a batch (a real client's, from
/// the seeds, as libFuzzer mutated it):
/// - bit 2: build a valid uncompressed batch instead (`batch::build`) from the values in
///   the rest (split at 0xff, at most 64), then apply the mutations that follow the
///   second 0xfe byte as (u16 position, u8 xor) triples;
/// - bit 0: rewrite the length field to match; bit 1: recompute the CRC — so mutations
///   reach the checks behind the CRC instead of stopping at it.
pub fn run_mutated(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = if flags & 0b100 != 0 {
        built_and_mutated(rest)
    } else {
        rest.to_vec()
    };
    if bytes.len() >= BATCH_HEADER_BYTES {
        if flags & 0b001 != 0 {
            let len = (bytes.len() - LOG_OVERHEAD_BYTES) as i32;
            bytes[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
        }
        if flags & 0b010 != 0 {
            let crc = batch::compute_crc(&bytes);
            bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        }
    }
    let target = rest
        .get(..8)
        .map_or(0, |b| i64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
    check_any(&bytes, target);
}

fn built_and_mutated(rest: &[u8]) -> Vec<u8> {
    let (values_part, mutations) = match rest.iter().position(|&b| b == 0xfe) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let mut values: Vec<&[u8]> = values_part.split(|&b| b == 0xff).take(64).collect();
    if values.is_empty() {
        values.push(b"");
    }
    let base_ts = 1_700_000_000_000;
    let mut bytes = batch::build::build_batch(&values, base_ts);
    let header = batch::validate(&bytes, BATCH_BYTES_MAX);
    assert!(
        header.is_ok(),
        "batch::build made an invalid batch: {header:?}"
    );
    for m in mutations.chunks_exact(3) {
        let at = usize::from(u16::from_be_bytes([m[0], m[1]]));
        if let Some(b) = bytes.get_mut(at) {
            *b ^= m[2];
        }
    }
    bytes
}

/// Everything the engine does with bytes that claim to be a batch.
fn check_any(bytes: &[u8], target_timestamp: i64) {
    let parsed = BatchHeader::parse(bytes);
    if let Ok(h) = &parsed {
        let _ = h.compression();
        let _ = (h.declared_total_bytes(), h.last_offset(), h.offset_count());
    }
    // The timestamp search runs on validated batches only, but must not panic on any.
    let _ = batch::first_record_at_or_after(bytes, target_timestamp);
    match batch::validate(bytes, BATCH_BYTES_MAX) {
        Ok(header) => {
            assert_eq!(Ok(header), parsed, "validate and parse disagree");
            valid_batch_invariants(bytes, &header);
            // The validator must not depend on the size cap beyond the size itself.
            assert!(batch::validate(bytes, bytes.len()).is_ok());
            if bytes.len() > BATCH_HEADER_BYTES {
                assert!(batch::validate(bytes, bytes.len() - 1).is_err());
            }
        }
        Err(_) => {
            // A refused batch stays refused whatever offset or epoch is patched in: they
            // sit outside the CRC and no check may depend on them.
            if bytes.len() >= BATCH_HEADER_BYTES {
                let mut patched = bytes.to_vec();
                batch::set_base_offset(&mut patched, 1 << 40);
                batch::set_partition_leader_epoch(&mut patched, 7);
                assert!(batch::validate(&patched, BATCH_BYTES_MAX).is_err());
            }
        }
    }
}

/// What every accepted batch must satisfy for the log that stores it.
pub fn valid_batch_invariants(bytes: &[u8], header: &BatchHeader) {
    assert_eq!(header.declared_total_bytes(), bytes.len() as i64);
    assert!(bytes.len() >= BATCH_HEADER_BYTES && bytes.len() <= BATCH_BYTES_MAX);
    assert_eq!(header.magic, 2);
    assert_eq!(header.crc, crc32c::crc32c(&bytes[ATTRIBUTES_AT..]));
    assert!(header.compression().is_ok());
    assert!(header.record_count > 0 && header.record_count <= BATCH_RECORDS_MAX);
    assert_eq!(i64::from(header.record_count), header.offset_count());
    assert!(header.last_offset_delta >= 0);

    // The broker patches the base offset and epoch: the batch must stay valid, with the
    // offsets the log will index.
    let mut stored = bytes.to_vec();
    let base = 1_000_000_007;
    batch::set_base_offset(&mut stored, base);
    batch::set_partition_leader_epoch(&mut stored, 3);
    let restored = batch::validate(&stored, BATCH_BYTES_MAX);
    let Ok(restored) = restored else {
        panic!("patching offset and epoch broke a valid batch: {restored:?}");
    };
    assert_eq!(restored.base_offset, base);
    assert_eq!(
        restored.last_offset(),
        base + i64::from(header.last_offset_delta)
    );

    // ListOffsets by timestamp answers with an offset of this batch (or falls back to
    // its base offset): never one outside it.
    for target in [
        i64::MIN,
        header.base_timestamp,
        header.max_timestamp,
        i64::MAX,
    ] {
        if let Some((offset, _)) = batch::first_record_at_or_after(&stored, target) {
            assert!(
                (base..=restored.last_offset()).contains(&offset),
                "timestamp search answered offset {offset} outside the batch {base}..={}",
                restored.last_offset()
            );
        }
    }
}
