//! Shared helpers: a compio runtime per test, and record batches built by an encoder we
//! did not write (the `kafka-protocol` crate).
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use engine::{LogConfig, Partition};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

pub fn run<F: Future>(future: F) -> F::Output {
    compio::runtime::Runtime::new()
        .expect("compio runtime")
        .block_on(future)
}

pub fn record(key: Option<&[u8]>, value: &[u8], timestamp: i64) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: key.map(Bytes::copy_from_slice),
        value: Some(Bytes::copy_from_slice(value)),
        headers: IndexMap::new(),
    }
}

pub fn with_header(mut r: Record, name: &str, value: &[u8]) -> Record {
    r.headers.insert(
        StrBytes::from_string(name.to_owned()),
        Some(Bytes::copy_from_slice(value)),
    );
    r
}

/// Encodes `records` (offsets 0..n, as a producer sends them) into one v2 batch.
pub fn encode(records: &[Record], compression: Compression) -> Vec<u8> {
    let mut records = records.to_vec();
    for (i, r) in records.iter_mut().enumerate() {
        r.offset = i as i64;
        // The encoder starts a new batch whenever offset - sequence changes; without a
        // producer id this keeps one batch whose base sequence is -1 (none).
        r.sequence = i as i32 - 1;
    }
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode batch");
    buf.to_vec()
}

/// A batch of `count` small records with timestamps starting at `ts`.
pub fn batch(count: usize, value_bytes: usize, ts: i64) -> Vec<u8> {
    let records: Vec<Record> = (0..count)
        .map(|i| {
            record(
                None,
                &vec![b'a' + (i % 26) as u8; value_bytes],
                ts + i as i64,
            )
        })
        .collect();
    encode(&records, Compression::None)
}

pub fn decode_all(bytes: &[u8]) -> Vec<Record> {
    let mut buf = Bytes::copy_from_slice(bytes);
    RecordBatchDecoder::decode_all(&mut buf)
        .expect("decode batches")
        .into_iter()
        .flat_map(|set| set.records)
        .collect()
}

/// Splits a read into batches by their length fields.
pub fn split_batches(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= 12 {
        let len = i32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize + 12;
        if len > bytes.len() {
            break;
        }
        out.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    out
}

/// `bytes` with its base offset field set to `offset`.
pub fn with_base_offset(bytes: &[u8], offset: i64) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[..8].copy_from_slice(&offset.to_be_bytes());
    b
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        batch_bytes_max: 2048,
        ..LogConfig::default()
    }
}

/// Reads every batch from offset 0 to the log end.
pub async fn read_everything(p: &Partition) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = p.offsets().log_start_offset;
    while offset < p.offsets().log_end_offset {
        let bytes = p.read(offset, 1 << 20).await.expect("read");
        let batches = split_batches(&bytes);
        let last = batches.last().expect("at least one batch");
        let count = i32::from_be_bytes([last[23], last[24], last[25], last[26]]) as i64 + 1;
        let base = i64::from_be_bytes(last[..8].try_into().expect("8 bytes"));
        offset = base + count;
        out.extend_from_slice(&bytes);
    }
    out
}

/// A batch from an idempotent producer: `count` records with sequences from `first_seq`.
pub fn idempotent_batch(producer_id: i64, epoch: i16, first_seq: i32, count: usize) -> Vec<u8> {
    let mut records: Vec<Record> = (0..count)
        .map(|i| {
            record(
                None,
                format!("p{producer_id} s{}", first_seq + i as i32).as_bytes(),
                1000 + i as i64,
            )
        })
        .collect();
    for (i, r) in records.iter_mut().enumerate() {
        r.producer_id = producer_id;
        r.producer_epoch = epoch;
        r.offset = i as i64;
        r.sequence = first_seq + i as i32;
    }
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode batch");
    buf.to_vec()
}

/// The files in `dir` whose names end with `suffix`, sorted.
pub fn files_with(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    v.sort();
    v
}
