//! Batches encoded by an independent encoder (the `kafka-protocol` crate), with every
//! compression codec, are stored byte for byte and decode back to the same records.

mod common;

use common::*;
use engine::{AppendWait, LogConfig, Partition};
use kafka_protocol::records::Compression;

fn records_for(round: usize) -> Vec<kafka_protocol::records::Record> {
    (0..25)
        .map(|i| {
            let key = format!("key-{}", i % 5);
            let value = format!("round {round} value {i} {}", "x".repeat(i * 7));
            let r = record(
                Some(key.as_bytes()),
                value.as_bytes(),
                1_700_000_000_000 + i as i64,
            );
            if i % 3 == 0 {
                with_header(r, "trace", format!("h{i}").as_bytes())
            } else {
                r
            }
        })
        .collect()
}

#[test]
fn given_batches_from_independent_encoder_when_appended_should_read_back_identical_and_decode() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        let codecs = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        let mut expected_bytes = Vec::new();
        let mut expected_records = Vec::new();
        let mut next = 0i64;
        for (round, codec) in codecs.into_iter().enumerate() {
            let records = records_for(round);
            let produced = encode(&records, codec);
            let info = p
                .append(produced.clone(), AppendWait::Written)
                .await
                .unwrap();
            assert_eq!(info.base_offset, next);
            assert_eq!(info.last_offset, next + 24);
            // Stored exactly as produced, but for the base offset the log assigned.
            let stored = p.read(next, 1).await.unwrap();
            assert_eq!(stored, with_base_offset(&produced, next), "codec {codec:?}");
            assert_eq!(&stored[8..], &produced[8..]);
            for (i, mut r) in records.into_iter().enumerate() {
                r.offset = next + i as i64;
                expected_records.push(r);
            }
            expected_bytes.extend_from_slice(&stored);
            next += 25;
        }
        let everything = read_everything(&p).await;
        assert_eq!(everything, expected_bytes);
        let decoded = decode_all(&everything);
        assert_eq!(decoded.len(), expected_records.len());
        for (got, want) in decoded.iter().zip(&expected_records) {
            assert_eq!(got.offset, want.offset);
            assert_eq!(got.key, want.key);
            assert_eq!(got.value, want.value);
            assert_eq!(got.timestamp, want.timestamp);
            assert_eq!(got.headers, want.headers);
        }
        // A compressed batch is found by timestamp at its base offset (never decompressed).
        let found = p
            .offset_for_timestamp(1_700_000_000_005)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.offset, 5, "uncompressed batch: exact record");
    });
}
