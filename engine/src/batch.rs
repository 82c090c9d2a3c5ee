//! Kafka RecordBatch v2: header parsing, validation, and the two fields the broker patches.
//!
//! Layout (big-endian), as on the wire and on disk:
//! ```text
//!  0 baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8
//! 17 crc u32 (CRC-32C of bytes 21..end) | 21 attributes i16 | 23 lastOffsetDelta i32
//! 27 baseTimestamp i64 | 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16
//! 53 baseSequence i32 | 57 recordCount i32 | 61 records...
//! ```
//! `baseOffset` and `partitionLeaderEpoch` sit outside the CRC, so assigning offsets never
//! recomputes it.

use bytes::Bytes;

use crate::error::BatchError;

/// Bytes before the first record.
pub const BATCH_HEADER_BYTES: usize = 61;
/// `baseOffset` + `batchLength`: the bytes not counted by `batchLength`.
pub const LOG_OVERHEAD_BYTES: usize = 12;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;
/// KIP-534: the base timestamp holds the time after which the batch's tombstones may go
/// (set by the cleaner; the records' timestamp deltas count from it).
const DELETE_HORIZON_BIT: i16 = 0x40;

/// Smallest encoding of one record: length, attributes, timestamp delta, offset delta,
/// key length, value length and header count, one byte each.
const RECORD_BYTES_MIN: usize = 7;

/// Compression codec from the batch attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// The fixed-size header of a record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Reads the header fields; checks only that enough bytes are there.
    pub fn parse(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::TooShort {
                len: bytes.len(),
                min: BATCH_HEADER_BYTES,
            });
        }
        Ok(Self {
            base_offset: be_i64(bytes, BASE_OFFSET_AT),
            batch_length: be_i32(bytes, BATCH_LENGTH_AT),
            partition_leader_epoch: be_i32(bytes, LEADER_EPOCH_AT),
            magic: bytes[MAGIC_AT] as i8,
            crc: be_i32(bytes, CRC_AT) as u32,
            attributes: be_i16(bytes, ATTRIBUTES_AT),
            last_offset_delta: be_i32(bytes, LAST_OFFSET_DELTA_AT),
            base_timestamp: be_i64(bytes, BASE_TIMESTAMP_AT),
            max_timestamp: be_i64(bytes, MAX_TIMESTAMP_AT),
            producer_id: be_i64(bytes, PRODUCER_ID_AT),
            producer_epoch: be_i16(bytes, PRODUCER_EPOCH_AT),
            base_sequence: be_i32(bytes, BASE_SEQUENCE_AT),
            record_count: be_i32(bytes, RECORD_COUNT_AT),
        })
    }

    /// Whole batch size in bytes as the length field declares it (may be negative or
    /// absurd in damaged input: callers bound it before use).
    pub fn declared_total_bytes(&self) -> i64 {
        i64::from(self.batch_length) + LOG_OVERHEAD_BYTES as i64
    }

    /// Offset of the last record of the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// Number of offsets the batch occupies.
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        match (self.attributes & COMPRESSION_MASK) as u8 {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            codec => Err(BatchError::UnknownCompression { codec }),
        }
    }

    /// True when timestamps were set by the broker (LogAppendTime), false for CreateTime.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// The delete horizon (KIP-534), when a clean set one: tombstones in the batch may
    /// go once it has passed.
    pub fn delete_horizon(&self) -> Option<i64> {
        (self.attributes & DELETE_HORIZON_BIT != 0).then_some(self.base_timestamp)
    }
}

/// CRC-32C over `attributes..end`, the span the header's `crc` field covers.
/// The caller guarantees `bytes.len() >= BATCH_HEADER_BYTES`.
pub fn compute_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(&bytes[ATTRIBUTES_AT..])
}

/// Validates one complete batch as a producer sent it, or as recovery reads it back.
///
/// `bytes` must be exactly one batch. Checks, in order: size bounds, length field,
/// magic, CRC-32C, attributes, header fields against each other, and, for uncompressed
/// batches, that the records frame exactly the body with offset deltas 0, 1, 2...
pub fn validate(bytes: &[u8], batch_bytes_max: usize) -> Result<BatchHeader, BatchError> {
    validate_as(bytes, batch_bytes_max, Origin::Producer)
}

/// Where a batch comes from, which decides how its records may be laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// As a producer sends it: at least one record, offset deltas 0, 1, 2...
    Producer,
    /// As a log holds it, which may have been compacted (see `compact`): records removed
    /// from the batch keep their offsets unused, so the offset deltas only increase
    /// within `0..=last_offset_delta`, and a batch may keep no record at all (the last
    /// batch of a producer, kept for its sequence numbers, as Kafka's cleaner does).
    /// Recovery and replica appends read batches this way.
    Log,
}

/// `validate`, for batches of the given origin.
pub fn validate_as(
    bytes: &[u8],
    batch_bytes_max: usize,
    origin: Origin,
) -> Result<BatchHeader, BatchError> {
    if bytes.len() > batch_bytes_max {
        return Err(BatchError::TooLarge {
            len: bytes.len(),
            max: batch_bytes_max,
        });
    }
    let header = BatchHeader::parse(bytes)?;
    if header.declared_total_bytes() != bytes.len() as i64 {
        return Err(BatchError::LengthMismatch {
            declared: header.declared_total_bytes(),
            actual: bytes.len(),
        });
    }
    if header.magic != 2 {
        return Err(BatchError::UnsupportedMagic {
            magic: header.magic,
        });
    }
    let computed = compute_crc(bytes);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    validate_fields(&header, origin)?;
    if header.compression()? == Compression::None {
        validate_record_framing(bytes, header.record_count, origin)?;
    }
    Ok(header)
}

fn validate_fields(header: &BatchHeader, origin: Origin) -> Result<(), BatchError> {
    header.compression()?;
    // A producer's horizon would decide when the broker forgets its tombstones.
    if origin == Origin::Producer && header.delete_horizon().is_some() {
        return Err(BatchError::DeleteHorizonFromProducer {
            attributes: header.attributes,
        });
    }
    let count_ok = match origin {
        Origin::Producer => {
            header.record_count > 0 && i64::from(header.record_count) == header.offset_count()
        }
        Origin::Log => {
            header.record_count >= 0 && i64::from(header.record_count) <= header.offset_count()
        }
    };
    if !count_ok
        || header.record_count > crate::limits::BATCH_RECORDS_MAX
        || header.last_offset_delta < 0
    {
        return Err(BatchError::InconsistentCount {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    // A delete horizon (a cleaned batch's) is ahead of the records' own timestamps.
    let horizon = origin == Origin::Log && header.delete_horizon().is_some();
    if !header.is_log_append_time() && !horizon && header.max_timestamp < header.base_timestamp {
        return Err(BatchError::InconsistentTimestamps {
            base: header.base_timestamp,
            max: header.max_timestamp,
        });
    }
    if header.producer_id >= 0 && header.base_sequence < 0 {
        return Err(BatchError::InvalidSequence {
            producer_id: header.producer_id,
            base_sequence: header.base_sequence,
        });
    }
    Ok(())
}

/// Checks that `count` length-prefixed records tile the body exactly, each carrying its
/// index as its offset delta (from a producer) or a delta above the previous one and
/// within the batch (from a log).
fn validate_record_framing(bytes: &[u8], count: i32, origin: Origin) -> Result<(), BatchError> {
    let last_delta = i64::from(be_i32(bytes, LAST_OFFSET_DELTA_AT));
    let body = &bytes[BATCH_HEADER_BYTES..];
    // A count the body cannot possibly hold is refused before any loop runs over it.
    if (count as usize).saturating_mul(RECORD_BYTES_MIN) > body.len() {
        return Err(BatchError::MalformedRecord {
            index: 0,
            reason: "record count exceeds what the body can hold",
        });
    }
    let mut at = 0usize;
    let mut previous_delta = -1i64;
    for index in 0..count {
        let (len, used) = read_varint(&body[at..]).ok_or(BatchError::MalformedRecord {
            index,
            reason: "bad length varint",
        })?;
        let len = usize::try_from(len).map_err(|_| BatchError::MalformedRecord {
            index,
            reason: "negative record length",
        })?;
        at += used;
        if len < RECORD_BYTES_MIN - 1 || len > body.len() - at {
            return Err(BatchError::MalformedRecord {
                index,
                reason: "record length out of bounds",
            });
        }
        // Consumers read a record's offset as baseOffset + offsetDelta, and the timestamp
        // search answers with it: it must be the record's place in the batch.
        let delta = record_offset_delta(&body[at..at + len]);
        match origin {
            Origin::Producer if delta != Some(i64::from(index)) => {
                return Err(BatchError::MalformedRecord {
                    index,
                    reason: "record offset delta is not its index in the batch",
                });
            }
            Origin::Log if !delta.is_some_and(|d| d > previous_delta && d <= last_delta) => {
                return Err(BatchError::MalformedRecord {
                    index,
                    reason: "record offset delta out of order or outside the batch",
                });
            }
            _ => {}
        }
        previous_delta = delta.unwrap_or(previous_delta);
        at += len;
    }
    if at != body.len() {
        return Err(BatchError::TrailingBytes {
            end: BATCH_HEADER_BYTES + at,
            len: bytes.len(),
        });
    }
    Ok(())
}

/// The offset delta of one record (after its length): attributes (1 byte), timestampDelta
/// varlong, then offsetDelta varint.
fn record_offset_delta(record: &[u8]) -> Option<i64> {
    let (_, ts_used) = read_varlong(record.get(1..)?)?;
    let (offset_delta, _) = read_varint(record.get(1 + ts_used..)?)?;
    Some(offset_delta)
}

/// Decodes a zigzag varint (i32 range), returning the value and the bytes used.
pub(crate) fn read_varint(bytes: &[u8]) -> Option<(i64, usize)> {
    read_zigzag(bytes, 5)
}

/// Decodes a zigzag varlong, returning the value and the bytes used.
pub(crate) fn read_varlong(bytes: &[u8]) -> Option<(i64, usize)> {
    read_zigzag(bytes, 10)
}

fn read_zigzag(bytes: &[u8], max_len: usize) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, &b) in bytes.iter().take(max_len).enumerate() {
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            return Some((value, i + 1));
        }
    }
    None
}

/// Writes the broker-assigned base offset into a batch (outside the CRC).
pub fn set_base_offset(bytes: &mut [u8], base_offset: i64) {
    bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes the partition leader epoch into a batch (outside the CRC).
pub fn set_partition_leader_epoch(bytes: &mut [u8], epoch: i32) {
    bytes[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Bytes at the head of a batch that hold what the log stamps into it: the base offset,
/// the batch length and the partition leader epoch (all outside the CRC).
pub(crate) const STAMPED_HEAD_BYTES: usize = LEADER_EPOCH_AT + 4;

/// Splits a validated batch (at least `BATCH_HEADER_BYTES` long) into a copy of its head
/// with `base_offset` and `epoch` stamped in, and the untouched rest, which shares the
/// caller's buffer: written back to back they are the stamped batch, and only
/// `STAMPED_HEAD_BYTES` were copied.
pub(crate) fn stamp_head(batch: &Bytes, base_offset: i64, epoch: i32) -> (Bytes, Bytes) {
    let mut head = [0u8; STAMPED_HEAD_BYTES];
    head.copy_from_slice(&batch[..STAMPED_HEAD_BYTES]);
    set_base_offset(&mut head, base_offset);
    set_partition_leader_epoch(&mut head, epoch);
    (
        Bytes::copy_from_slice(&head),
        batch.slice(STAMPED_HEAD_BYTES..),
    )
}

/// Finds, in an uncompressed, validated batch, the offset and timestamp of the first
/// record whose timestamp is at least `target`. `None` when no record qualifies or the
/// batch is compressed (the caller then falls back to the batch's base offset).
pub fn first_record_at_or_after(bytes: &[u8], target: i64) -> Option<(i64, i64)> {
    let header = BatchHeader::parse(bytes).ok()?;
    if header.compression().ok()? != Compression::None {
        return None;
    }
    let body = bytes.get(BATCH_HEADER_BYTES..)?;
    let mut at = 0usize;
    for _ in 0..header.record_count {
        let (len, used) = read_varint(body.get(at..)?)?;
        let start = at + used;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        let record = body.get(start..end)?;
        // attributes (1 byte), then timestampDelta varlong, then offsetDelta varint.
        let (ts_delta, ts_used) = read_varlong(record.get(1..)?)?;
        let (offset_delta, _) = read_varint(record.get(1 + ts_used..)?)?;
        if !(0..=i64::from(header.last_offset_delta)).contains(&offset_delta) {
            // Never an offset outside the batch (validation refuses such records).
            return None;
        }
        let timestamp = header.base_timestamp.saturating_add(ts_delta);
        if timestamp >= target {
            return Some((header.base_offset.saturating_add(offset_delta), timestamp));
        }
        at = end;
    }
    None
}

/// One record of an uncompressed batch body, as the log holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawRecord<'a> {
    /// The whole record, its length prefix included: what a rebuilt batch copies.
    pub bytes: &'a [u8],
    pub timestamp_delta: i64,
    pub offset_delta: i64,
    /// `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// A null value: a tombstone.
    pub tombstone: bool,
}

/// The records of an uncompressed batch body (`bytes[BATCH_HEADER_BYTES..]`), `count` of
/// them. Each length is bounded by the body before use; a record that does not decode
/// ends the walk with an error.
pub(crate) fn raw_records(
    body: &[u8],
    count: i32,
) -> impl Iterator<Item = Result<RawRecord<'_>, BatchError>> + '_ {
    let mut at = 0usize;
    let mut index = 0i32;
    std::iter::from_fn(move || {
        if index >= count {
            return None;
        }
        let this = index;
        index += 1;
        let bad = |reason| BatchError::MalformedRecord {
            index: this,
            reason,
        };
        let record = (|| {
            let (len, used) = read_varint(body.get(at..)?)?;
            let start = at;
            let end = (at + used).checked_add(usize::try_from(len).ok()?)?;
            let rec = body.get(at + used..end)?;
            // attributes, timestampDelta, offsetDelta, key, value, headers.
            let mut p = 1usize;
            let (timestamp_delta, used) = read_varlong(rec.get(p..)?)?;
            p += used;
            let (offset_delta, used) = read_varint(rec.get(p..)?)?;
            p += used;
            let (key_len, used) = read_varint(rec.get(p..)?)?;
            p += used;
            let key = if key_len < 0 {
                None
            } else {
                let k = rec.get(p..p.checked_add(usize::try_from(key_len).ok()?)?)?;
                p += k.len();
                Some(k)
            };
            let (value_len, _) = read_varint(rec.get(p..)?)?;
            at = end;
            Some(RawRecord {
                bytes: &body[start..end],
                timestamp_delta,
                offset_delta,
                key,
                tombstone: value_len < 0,
            })
        })();
        match record {
            Some(r) => Some(Ok(r)),
            None => {
                index = count; // stop after the first bad record
                Some(Err(bad("record does not decode")))
            }
        }
    })
}

/// Whether a batch holds a record without a key, which a compacted topic refuses, as
/// Kafka does. A compressed batch is decompressed for it (at most
/// `RECORDS_DECOMPRESSED_BYTES_MAX` bytes); false for one that does not decompress within
/// that and for bytes that do not frame (validation refuses those).
pub fn has_keyless_record(bytes: &[u8]) -> bool {
    let Ok(header) = BatchHeader::parse(bytes) else {
        return false;
    };
    if header.is_control() || bytes.len() < BATCH_HEADER_BYTES {
        return false;
    }
    let Ok(records) = records_of(&header, bytes) else {
        return false;
    };
    raw_records(&records, header.record_count).any(|r| r.is_ok_and(|r| r.key.is_none()))
}

/// The records of a batch, uncompressed: the body itself, or its decompression (at
/// most `RECORDS_DECOMPRESSED_BYTES_MAX` bytes).
pub(crate) fn records_of<'a>(
    header: &BatchHeader,
    bytes: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, BatchError> {
    let body = &bytes[BATCH_HEADER_BYTES..];
    match header.compression()? {
        Compression::None => Ok(std::borrow::Cow::Borrowed(body)),
        codec => {
            crate::codec::decompress(codec, body, crate::limits::RECORDS_DECOMPRESSED_BYTES_MAX)
                .map(std::borrow::Cow::Owned)
        }
    }
}

/// `record` (length prefix included) with its timestamp delta counted from `new_base`
/// instead of `old_base`: the same absolute timestamp under a new base timestamp.
pub(crate) fn retime(record: &RawRecord<'_>, old_base: i64, new_base: i64) -> Vec<u8> {
    let (len, len_used) = read_varint(record.bytes).unwrap_or((0, 0));
    let rec = &record.bytes[len_used..len_used + len.max(0) as usize];
    let (_, ts_used) = read_varlong(&rec[1..]).unwrap_or((0, 0));
    let absolute = old_base.saturating_add(record.timestamp_delta);
    let mut body = Vec::with_capacity(rec.len() + 10);
    body.push(rec[0]);
    build_varlong(&mut body, absolute.saturating_sub(new_base));
    body.extend_from_slice(&rec[1 + ts_used..]);
    let mut out = Vec::with_capacity(body.len() + 5);
    build_varlong(&mut out, body.len() as i64);
    out.extend_from_slice(&body);
    out
}

/// Appends a zigzag varint/varlong.
fn build_varlong(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (raw & 0x7f) as u8;
        raw >>= 7;
        if raw == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A batch with `original`'s header and `records` (whole records, length prefixes
/// included, `count` of them; or one compressed body holding them) as its body: the
/// same base offset, last offset delta, attributes, producer fields and timestamps, a
/// new length, count and CRC. The batch keeps every offset it had, as Kafka's cleaner
/// keeps a cleaned batch's last offset.
/// With `horizon`, the delete horizon (KIP-534) is set: the base timestamp becomes it
/// and the horizon bit is set (the records must have been re-timed to it, `retime`).
pub(crate) fn rebuild_with(
    original: &[u8],
    records: &[&[u8]],
    count: i32,
    horizon: Option<i64>,
) -> Vec<u8> {
    let body: usize = records.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + body);
    out.extend_from_slice(&original[..BATCH_HEADER_BYTES]);
    if let Some(horizon) = horizon {
        let attributes = be_i16(&out, ATTRIBUTES_AT) | DELETE_HORIZON_BIT;
        out[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        out[BASE_TIMESTAMP_AT..BASE_TIMESTAMP_AT + 8].copy_from_slice(&horizon.to_be_bytes());
    }
    for r in records {
        out.extend_from_slice(r);
    }
    let length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
    out[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    out[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
    let crc = compute_crc(&out);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// A minimal encoder of uncompressed batches, for unit tests and benchmarks. Integration
/// tests use an independent encoder (the `kafka-protocol` crate) instead.
#[cfg(any(test, feature = "testing"))]
pub mod build {
    use super::*;

    /// Encodes a zigzag varint.
    pub fn put_varint(out: &mut Vec<u8>, value: i64) {
        super::build_varlong(out, value);
    }

    /// Builds a valid uncompressed batch of `values`, timestamps `base_ts + i`.
    pub fn build_batch(values: &[&[u8]], base_ts: i64) -> Vec<u8> {
        let mut records = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let mut rec = Vec::new();
            rec.push(0); // attributes
            put_varint(&mut rec, i as i64); // timestamp delta
            put_varint(&mut rec, i as i64); // offset delta
            put_varint(&mut rec, -1); // null key
            put_varint(&mut rec, value.len() as i64);
            rec.extend_from_slice(value);
            put_varint(&mut rec, 0); // no headers
            put_varint(&mut records, rec.len() as i64);
            records.extend_from_slice(&rec);
        }
        let count = values.len() as i32;
        let mut b = Vec::with_capacity(BATCH_HEADER_BYTES + records.len());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(
            &((BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES + records.len()) as i32).to_be_bytes(),
        );
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0; 4]); // crc, filled below
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(count - 1).to_be_bytes());
        b.extend_from_slice(&base_ts.to_be_bytes());
        b.extend_from_slice(&(base_ts + i64::from(count) - 1).to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&records);
        let crc = compute_crc(&b);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::build::{build_batch, put_varint};
    use super::*;

    fn refix_crc(b: &mut [u8]) {
        let crc = compute_crc(b);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }

    fn check(bytes: &[u8], expect: Result<(), BatchError>) {
        assert_eq!(validate(bytes, 1 << 20).map(|_| ()), expect);
    }

    #[test]
    fn given_a_batch_when_its_head_is_stamped_should_equal_the_batch_stamped_in_place() {
        let original = build_batch(&[b"a", b"bc", b"def"], 1000);
        let mut in_place = original.clone();
        set_base_offset(&mut in_place, 4242);
        set_partition_leader_epoch(&mut in_place, 7);
        let shared = Bytes::from(original.clone());
        let (head, rest) = stamp_head(&shared, 4242, 7);
        assert_eq!(head.len(), STAMPED_HEAD_BYTES);
        assert_eq!([&head[..], &rest[..]].concat(), in_place);
        // The rest shares the caller's buffer and the caller's bytes stay as they were.
        assert_eq!(rest.as_ptr(), shared[STAMPED_HEAD_BYTES..].as_ptr());
        assert_eq!(&shared[..], &original[..]);
        let h = validate(&in_place, 1 << 20).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch), (4242, 7));
    }

    #[test]
    fn given_valid_batch_when_validated_should_return_its_header() {
        let b = build_batch(&[b"a", b"bc", b"def"], 1000);
        let h = validate(&b, 1 << 20).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.max_timestamp, 1002);
        assert_eq!(h.compression().unwrap(), Compression::None);
    }

    #[test]
    fn given_damaged_batches_when_validated_should_name_the_fault() {
        let good = build_batch(&[b"hello"], 5);
        check(&good[..40], Err(BatchError::TooShort { len: 40, min: 61 }));
        check(
            &good[..good.len() - 1],
            Err(BatchError::LengthMismatch {
                declared: good.len() as i64,
                actual: good.len() - 1,
            }),
        );
        assert_eq!(
            validate(&good, 10).unwrap_err(),
            BatchError::TooLarge {
                len: good.len(),
                max: 10
            }
        );

        let mut magic = good.clone();
        magic[MAGIC_AT] = 1;
        check(&magic, Err(BatchError::UnsupportedMagic { magic: 1 }));

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert!(matches!(
            validate(&flipped, 1 << 20),
            Err(BatchError::CrcMismatch { .. })
        ));

        let mut codec = good.clone();
        codec[ATTRIBUTES_AT + 1] = 6;
        refix_crc(&mut codec);
        check(&codec, Err(BatchError::UnknownCompression { codec: 6 }));

        let mut count = good.clone();
        count[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&2i32.to_be_bytes());
        refix_crc(&mut count);
        check(
            &count,
            Err(BatchError::InconsistentCount {
                count: 2,
                last_offset_delta: 0,
            }),
        );

        let mut ts = good.clone();
        ts[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&1i64.to_be_bytes());
        refix_crc(&mut ts);
        check(
            &ts,
            Err(BatchError::InconsistentTimestamps { base: 5, max: 1 }),
        );

        let mut seq = good.clone();
        seq[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&7i64.to_be_bytes());
        refix_crc(&mut seq);
        check(
            &seq,
            Err(BatchError::InvalidSequence {
                producer_id: 7,
                base_sequence: -1,
            }),
        );
    }

    #[test]
    fn given_record_length_beyond_body_when_validated_should_refuse() {
        let mut b = build_batch(&[b"xyz"], 0);
        b[BATCH_HEADER_BYTES] = 0x7e; // record length varint = 63, past the end
        refix_crc(&mut b);
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::MalformedRecord { index: 0, .. })
        ));
    }

    #[test]
    fn given_huge_record_count_when_validated_should_refuse_without_looping() {
        for codec in [0u8, 1] {
            let mut b = build_batch(&[b"xyz"], 0);
            b[ATTRIBUTES_AT + 1] = codec;
            b[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
            b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
                .copy_from_slice(&(i32::MAX - 1).to_be_bytes());
            refix_crc(&mut b);
            assert!(
                matches!(
                    validate(&b, 1 << 20),
                    Err(BatchError::InconsistentCount { .. })
                ),
                "codec {codec}"
            );
        }
        // Within the cap, an uncompressed body still has to hold the records it claims.
        let mut b = build_batch(&[b"xyz"], 0);
        b[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&1000i32.to_be_bytes());
        b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&999i32.to_be_bytes());
        refix_crc(&mut b);
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::MalformedRecord { .. })
        ));
    }

    /// Found by the `batch_mutated` fuzz target (fuzz/regressions/batch_mutated/): a
    /// CRC-valid batch whose first record claims offset delta 29 in a two-record batch.
    /// It was accepted, and ListOffsets by timestamp then answered offset base + 29.
    #[test]
    fn given_record_offset_delta_outside_the_batch_when_validated_should_refuse() {
        let mut b = build_batch(&[b"[", b""], 1_700_000_000_000);
        // Byte 64: the first record's offsetDelta (after length, attributes, ts delta).
        assert_eq!(b[64], 0);
        b[64] ^= 0x3a; // zigzag 29
        refix_crc(&mut b);
        assert_eq!(
            validate(&b, 1 << 20),
            Err(BatchError::MalformedRecord {
                index: 0,
                reason: "record offset delta is not its index in the batch",
            })
        );
        // The search, which also runs on batches recovery trusted, never answers outside.
        set_base_offset(&mut b, 100);
        assert_eq!(first_record_at_or_after(&b, i64::MIN), None);

        // Swapped deltas (1, 0) are refused too, at the first record.
        let mut swapped = build_batch(&[b"a", b"b"], 0);
        let second = BATCH_HEADER_BYTES + 1 + usize::from(swapped[BATCH_HEADER_BYTES]) / 2;
        swapped[64] = 2; // zigzag 1
        swapped[second + 3] = 0; // zigzag 0
        refix_crc(&mut swapped);
        assert!(matches!(
            validate(&swapped, 1 << 20),
            Err(BatchError::MalformedRecord { index: 0, .. })
        ));
    }

    #[test]
    fn given_patched_offset_and_epoch_when_validated_should_keep_crc() {
        let mut b = build_batch(&[b"x", b"y"], 0);
        set_base_offset(&mut b, 42);
        set_partition_leader_epoch(&mut b, 3);
        let h = validate(&b, 1 << 20).unwrap();
        assert_eq!(
            (h.base_offset, h.partition_leader_epoch, h.last_offset()),
            (42, 3, 43)
        );
    }

    #[test]
    fn given_timestamp_when_searching_records_should_find_first_at_or_after() {
        let mut b = build_batch(&[b"a", b"b", b"c"], 100);
        set_base_offset(&mut b, 10);
        assert_eq!(first_record_at_or_after(&b, 0), Some((10, 100)));
        assert_eq!(first_record_at_or_after(&b, 101), Some((11, 101)));
        assert_eq!(first_record_at_or_after(&b, 102), Some((12, 102)));
        assert_eq!(first_record_at_or_after(&b, 103), None);
    }

    #[test]
    fn given_records_retimed_to_a_horizon_should_keep_their_timestamps() {
        // Records 0 and 2 of a 3-record batch, with long values (two-byte length
        // prefixes) and timestamps base, base + 1, base + 2.
        let big = vec![b'v'; 200];
        let original = build_batch(&[&big, b"x", &big], 1_000);
        let header = BatchHeader::parse(&original).unwrap();
        let records: Vec<RawRecord<'_>> =
            raw_records(&original[BATCH_HEADER_BYTES..], header.record_count)
                .map(Result::unwrap)
                .collect();
        let horizon = 1_700_000_000_000i64;
        let kept: Vec<Vec<u8>> = [&records[0], &records[2]]
            .iter()
            .map(|r| retime(r, header.base_timestamp, horizon))
            .collect();
        let parts: Vec<&[u8]> = kept.iter().map(Vec::as_slice).collect();
        let rebuilt = rebuild_with(&original, &parts, 2, Some(horizon));
        let h = validate_as(&rebuilt, 1 << 20, Origin::Log).unwrap();
        assert_eq!(h.delete_horizon(), Some(horizon));
        assert_eq!((h.record_count, h.last_offset_delta), (2, 2));
        let again: Vec<RawRecord<'_>> = raw_records(&rebuilt[BATCH_HEADER_BYTES..], 2)
            .map(Result::unwrap)
            .collect();
        let times: Vec<i64> = again.iter().map(|r| horizon + r.timestamp_delta).collect();
        assert_eq!(times, [1_000, 1_002]);
        assert_eq!(
            again.iter().map(|r| r.offset_delta).collect::<Vec<_>>(),
            [0, 2]
        );
        // The timestamp search reads the same times.
        assert_eq!(first_record_at_or_after(&rebuilt, 1_001), Some((2, 1_002)));
        // From a producer, the bit is refused.
        assert!(matches!(
            validate(&rebuilt, 1 << 20),
            Err(BatchError::DeleteHorizonFromProducer { .. })
        ));
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i32::MAX as i64,
            i32::MIN as i64,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(read_varlong(&out), Some((v, out.len())));
        }
        assert_eq!(read_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]), None);
    }
}
