//! Log compaction against a model: every write is remembered, and after every clean and
//! every reopen (clean or crashed) the log must serve only writes at their own offsets,
//! the latest write of every key, everything the cleaner may not touch, and nothing a
//! clean should have removed. Batches are decoded by a decoder we did not write.

mod common;

use std::path::Path;

use common::*;
use engine::{AppendWait, CompactOptions, LogConfig, Partition, RecoveryScope};
use kafka_protocol::records::{Compression, Record};
use proptest::prelude::*;

/// Timestamp of every test record: far in the past, as an old or replayed producer's
/// would be (tombstones age by the broker's clock regardless).
const OLD_TS: i64 = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Write {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        batch_bytes_max: 1024,
        segment_age_max: None,
        ..LogConfig::default()
    }
}

/// The codecs a producer may use; the cleaner reads and writes back each.
const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

fn keyed_batch_with(writes: &[Write], compression: Compression) -> Vec<u8> {
    let records: Vec<Record> = writes
        .iter()
        .map(|w| {
            let mut r = record(Some(&w.key), b"", OLD_TS);
            r.value = w.value.clone().map(bytes::Bytes::from);
            r
        })
        .collect();
    encode(&records, compression)
}

async fn append(p: &Partition, model: &mut Vec<Write>, writes: Vec<Write>) {
    append_with(p, model, writes, Compression::None).await
}

async fn append_with(
    p: &Partition,
    model: &mut Vec<Write>,
    writes: Vec<Write>,
    compression: Compression,
) {
    let info = p
        .append(keyed_batch_with(&writes, compression), AppendWait::Written)
        .await
        .unwrap();
    assert_eq!(info.base_offset, model.len() as i64);
    model.extend(writes);
}

fn write(key: u8, offset: usize, tombstone: bool) -> Write {
    Write {
        key: format!("key-{key}").into_bytes(),
        value: (!tombstone).then(|| format!("value-{offset}-of-{key}").into_bytes()),
    }
}

/// What the log serves: (offset, key, value) of every record, in order.
async fn served(p: &Partition) -> Vec<(i64, Write)> {
    decode_all(&read_everything(p).await)
        .into_iter()
        .map(|r| {
            (
                r.offset,
                Write {
                    key: r.key.map(|k| k.to_vec()).unwrap_or_default(),
                    value: r.value.map(|v| v.to_vec()),
                },
            )
        })
        .collect()
}

/// What the model allows the log to serve.
struct Expect {
    /// Offsets at or above this were never below a clean: all must be there.
    untouched_from: i64,
    /// Below this the last clean saw everything: no key may appear twice.
    deduplicated_below: i64,
    /// A clean with a zero delete retention ran: a latest tombstone may be gone.
    tombstones_may_go: bool,
}

async fn check(p: &Partition, model: &[Write], expect: &Expect) {
    assert_eq!(p.offsets().log_end_offset, model.len() as i64, "log end");
    // Every record keeps its timestamp, whatever delete horizon its batch was given.
    let records = decode_all(&read_everything(p).await);
    assert!(
        records.iter().all(|r| r.timestamp == OLD_TS),
        "a record's timestamp moved"
    );
    let got = served(p).await;
    let mut last = -1;
    for (offset, w) in &got {
        assert!(*offset > last, "offsets go up: {offset} after {last}");
        last = *offset;
        assert_eq!(&model[*offset as usize], w, "record at {offset}");
    }
    let present: std::collections::HashSet<i64> = got.iter().map(|(o, _)| *o).collect();
    // The latest write of every key is there (a tombstone may have expired).
    let mut latest = std::collections::HashMap::new();
    for (offset, w) in model.iter().enumerate() {
        latest.insert(w.key.clone(), offset as i64);
    }
    for (key, &offset) in &latest {
        let tombstone = model[offset as usize].value.is_none();
        assert!(
            present.contains(&offset) || (tombstone && expect.tombstones_may_go),
            "latest write of {} at {offset} is missing",
            String::from_utf8_lossy(key)
        );
    }
    for offset in expect.untouched_from..model.len() as i64 {
        assert!(present.contains(&offset), "untouched {offset} is missing");
    }
    for (offset, w) in &got {
        if *offset >= expect.deduplicated_below {
            continue;
        }
        let newer =
            (*offset + 1..expect.deduplicated_below).find(|&o| model[o as usize].key == w.key);
        assert!(
            newer.is_none(),
            "{offset} survived a clean though {newer:?} replaces it"
        );
    }
    // A read from any offset, gaps included, starts at the batch holding it or the next.
    let start = p.offsets().log_start_offset;
    for offset in start..model.len() as i64 {
        let bytes = p.read(offset, 1).await.unwrap();
        let first = &split_batches(&bytes)[0];
        let base = i64::from_be_bytes(first[..8].try_into().unwrap());
        let delta = i32::from_be_bytes(first[23..27].try_into().unwrap());
        assert!(
            base + i64::from(delta) >= offset,
            "read at {offset} starts before it"
        );
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(u8, bool)>, usize),
    Compact {
        below_percent: u8,
        zero_retention: bool,
    },
    Reopen {
        crash: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec((0u8..6, proptest::bool::weighted(0.15)), 1..6).prop_flat_map(|w| (Just(w), 0..CODECS.len())).prop_map(|(w, c)| Op::Append(w, c)),
        2 => (0u8..=100, any::<bool>()).prop_map(|(below_percent, zero_retention)| Op::Compact { below_percent, zero_retention }),
        1 => any::<bool>().prop_map(|crash| Op::Reopen { crash }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn given_random_writes_cleans_and_reopens_should_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let (mut p, _) = Partition::open(dir.path(), config()).await.unwrap();
            let mut model: Vec<Write> = Vec::new();
            let mut expect = Expect { untouched_from: 0, deduplicated_below: 0, tombstones_may_go: false };
            for op in ops {
                match op {
                    Op::Append(writes, codec) => {
                        let writes = writes.iter().enumerate().map(|(i, &(k, t))| write(k, model.len() + i, t)).collect();
                        append_with(&p, &mut model, writes, CODECS[codec]).await;
                    }
                    Op::Compact { below_percent, zero_retention } => {
                        let below = model.len() as i64 * i64::from(below_percent) / 100;
                        let options = CompactOptions {
                            below,
                            delete_retention_ms: if zero_retention { 0 } else { i64::MAX / 4 },
                            ..CompactOptions::default()
                        };
                        let report = p.compact(options).await.unwrap();
                        assert!(!report.abandoned);
                        expect.tombstones_may_go |= zero_retention;
                        expect.untouched_from = expect.untouched_from.max(report.clean_up_to);
                        expect.deduplicated_below = expect.deduplicated_below.max(report.clean_up_to);
                        check(&p, &model, &expect).await;
                    }
                    Op::Reopen { crash } => {
                        if crash { drop(p) } else { p.close().await.unwrap() }
                        let reopened = Partition::open(dir.path(), config()).await.unwrap();
                        p = reopened.0;
                        check(&p, &model, &expect).await;
                    }
                }
            }
            check(&p, &model, &expect).await;
            // Every byte on disk checks out when recovery re-validates everything.
            drop(p);
            let full = LogConfig { recovery_scope: RecoveryScope::Full, ..config() };
            let (p, report) = Partition::open(dir.path(), full).await.unwrap();
            assert_eq!(report.bytes_truncated, 0, "{report:?}");
            check(&p, &model, &expect).await;
        });
    }
}

#[test]
fn given_many_writes_over_few_keys_when_compacted_should_keep_about_one_record_per_key() {
    for codec in CODECS {
        many_writes_over_few_keys(codec);
    }
}

fn many_writes_over_few_keys(codec: Compression) {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), config()).await.unwrap();
        let mut model = Vec::new();
        for i in 0..400usize {
            let writes = (0..5)
                .map(|j| write(((i * 5 + j) % 10) as u8, i * 5 + j, false))
                .collect();
            append_with(&p, &mut model, writes, codec).await;
        }
        let segments = p.segment_count();
        let report = p.compact(CompactOptions::default()).await.unwrap();
        let kept = served(&p).await;
        // The active segment is never cleaned: its records all stay.
        let active_base = {
            let logs = files_with(dir.path(), ".log");
            let last = logs.last().unwrap().file_name().unwrap().to_str().unwrap();
            last[..20].parse::<i64>().unwrap()
        };
        let in_active = kept.iter().filter(|(o, _)| *o >= active_base).count();
        assert!(
            kept.len() - in_active <= 10,
            "{codec:?}: {} sealed records kept: {report:?}",
            kept.len() - in_active
        );
        assert!(
            report.records_removed >= 1990 - in_active as u64 - 10,
            "{report:?}"
        );
        assert!(
            p.segment_count() < segments,
            "{} segments, {segments} before",
            p.segment_count()
        );
        let expect = Expect {
            untouched_from: report.clean_up_to,
            deduplicated_below: report.clean_up_to,
            tombstones_may_go: false,
        };
        check(&p, &model, &expect).await;
        p.close().await.unwrap();
        let (p, _) = Partition::open(dir.path(), config()).await.unwrap();
        check(&p, &model, &expect).await;
    });
}

/// The on-disk states a crash can leave during a clean, rebuilt by hand from a finished
/// clean: the cleaned file written but not yet renamed (the old segments count), the
/// swap renamed (the cleaned segment counts), and the swap with some old segments
/// already unlinked (it still counts).
#[test]
fn given_a_crash_at_each_step_of_a_swap_when_reopened_should_serve_the_old_or_the_cleaned_log() {
    run(async {
        let original = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(original.path(), config()).await.unwrap();
        let mut model = Vec::new();
        for i in 0..60usize {
            let writes = (0..4)
                .map(|j| write(((i * 4 + j) % 3) as u8, i * 4 + j, false))
                .collect();
            append(&p, &mut model, writes).await;
        }
        p.close().await.unwrap();
        let before = list_logs(original.path());
        let cleaned = copy_dir(original.path());
        let (p, _) = Partition::open(cleaned.path(), config()).await.unwrap();
        let report = p.compact(CompactOptions::default()).await.unwrap();
        assert!(report.segments_cleaned >= 2, "{report:?}");
        let served_cleaned = served(&p).await;
        let served_original = {
            let (o, _) = Partition::open(copy_dir(original.path()).path(), config())
                .await
                .unwrap();
            served(&o).await
        };
        p.close().await.unwrap();
        let after = list_logs(cleaned.path());
        // The first cleaned group: its segment and the base of the next one.
        let base = after[0];
        let end = after[1];
        let replaced: Vec<i64> = before
            .iter()
            .copied()
            .filter(|&b| b >= base && b < end)
            .collect();
        assert!(
            replaced.len() >= 2,
            "a group of several segments: {replaced:?}"
        );
        let cleaned_log = std::fs::read(log_path(cleaned.path(), base)).unwrap();

        // Crash after the cleaned file was written: the old group serves.
        let d = copy_dir(original.path());
        std::fs::write(
            d.path().join(format!("{base:020}.log.cleaned")),
            &cleaned_log,
        )
        .unwrap();
        let (p, _) = Partition::open(d.path(), config()).await.unwrap();
        assert_eq!(served(&p).await, served_original);
        assert!(files_with(d.path(), ".cleaned").is_empty());
        drop(p);

        // Crash after the rename to the swap name, none or some old segments unlinked.
        for unlinked in [0, 1, replaced.len()] {
            let d = copy_dir(original.path());
            std::fs::write(
                d.path().join(format!("{base:020}.{end:020}.swap")),
                &cleaned_log,
            )
            .unwrap();
            for old in &replaced[..unlinked] {
                std::fs::remove_file(log_path(d.path(), *old)).unwrap();
            }
            let (p, report) = Partition::open(d.path(), config()).await.unwrap();
            let got = served(&p).await;
            let head: Vec<_> = got.iter().filter(|(o, _)| *o < end).cloned().collect();
            let want: Vec<_> = served_cleaned
                .iter()
                .filter(|(o, _)| *o < end)
                .cloned()
                .collect();
            assert_eq!(head, want, "{unlinked} unlinked: {report:?}");
            let tail: Vec<_> = got.iter().filter(|(o, _)| *o >= end).cloned().collect();
            let want: Vec<_> = served_original
                .iter()
                .filter(|(o, _)| *o >= end)
                .cloned()
                .collect();
            assert_eq!(tail, want);
            assert_eq!(p.offsets().log_end_offset, model.len() as i64);
            assert!(files_with(d.path(), ".swap").is_empty());
            drop(p);
        }
    });
}

fn log_path(dir: &Path, base: i64) -> std::path::PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn list_logs(dir: &Path) -> Vec<i64> {
    files_with(dir, ".log")
        .iter()
        .map(|p| {
            p.file_name().unwrap().to_str().unwrap()[..20]
                .parse()
                .unwrap()
        })
        .collect()
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

#[test]
fn given_a_compacted_leader_when_a_new_follower_replicates_from_the_start_should_copy_it_with_its_gaps()
 {
    run(async {
        let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (leader, _) = Partition::open(ld.path(), config()).await.unwrap();
        let mut model = Vec::new();
        for i in 0..100usize {
            let writes = (0..3)
                .map(|j| write(((i * 3 + j) % 4) as u8, i * 3 + j, false))
                .collect();
            append(&leader, &mut model, writes).await;
        }
        let report = leader.compact(CompactOptions::default()).await.unwrap();
        assert!(report.records_removed > 200, "{report:?}");
        let (follower, _) = Partition::open(fd.path(), config()).await.unwrap();
        while follower.offsets().log_end_offset < leader.offsets().log_end_offset {
            let slice = leader
                .read(follower.offsets().log_end_offset, 4096)
                .await
                .unwrap();
            follower
                .append_replica(slice, AppendWait::Written)
                .await
                .unwrap();
        }
        assert_eq!(served(&follower).await, served(&leader).await);
        assert_eq!(follower.offsets().log_end_offset, model.len() as i64);
        drop(follower);
        let (follower, report) = Partition::open(fd.path(), config()).await.unwrap();
        assert_eq!(report.bytes_truncated, 0);
        assert_eq!(served(&follower).await, served(&leader).await);
    });
}

// ---- Regressions found by review (each failed before its fix) ----

/// 100 batches of 3 writes over 4 keys, compacted.
async fn leader_compacted(dir: &Path) -> Partition {
    let (leader, _) = Partition::open(dir, config()).await.unwrap();
    let mut model = Vec::new();
    for i in 0..100usize {
        let writes = (0..3)
            .map(|j| write(((i * 3 + j) % 4) as u8, i * 3 + j, false))
            .collect();
        append(&leader, &mut model, writes).await;
    }
    let report = leader.compact(CompactOptions::default()).await.unwrap();
    assert!(report.records_removed > 200, "{report:?}");
    leader
}

/// Closes `p` (or drops it unclosed: a crash), reopens its directory, and checks that
/// it serves what it served before, to the same end.
async fn survives_reopen(p: Partition, dir: &Path, config: LogConfig, crash: bool) {
    let end = p.offsets().log_end_offset;
    let before = served(&p).await;
    if crash {
        drop(p)
    } else {
        p.close().await.unwrap()
    }
    let (p, report) = Partition::open(dir, config).await.unwrap();
    assert_eq!(p.offsets().log_end_offset, end, "crash {crash}: {report:?}");
    assert_eq!(served(&p).await, before, "crash {crash}");
}

/// A follower with large segments copies a compacted leader: the gaps land in its active
/// segment, which recovery must keep, after a clean close and after a crash.
#[test]
fn given_gaps_in_a_followers_active_segment_when_reopened_should_keep_them() {
    for crash in [false, true] {
        run(async {
            let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let leader = leader_compacted(ld.path()).await;
            let big = LogConfig {
                segment_bytes: 1 << 20,
                ..config()
            };
            let (follower, _) = Partition::open(fd.path(), big.clone()).await.unwrap();
            while follower.offsets().log_end_offset < leader.offsets().log_end_offset {
                let from = follower.offsets().log_end_offset;
                let slice = leader.read(from, 4096).await.unwrap();
                follower
                    .append_replica(slice, AppendWait::Written)
                    .await
                    .unwrap();
            }
            assert_eq!(follower.segment_count(), 1);
            survives_reopen(follower, fd.path(), big, crash).await;
        });
    }
}

/// A truncation into a cleaned segment makes it the active one, gaps and all.
#[test]
fn given_a_truncation_into_a_cleaned_segment_when_reopened_should_keep_what_is_left() {
    for crash in [false, true] {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let p = leader_compacted(dir.path()).await;
            let second = list_logs(dir.path())[1];
            p.truncate_to(second - 1).await.unwrap();
            survives_reopen(p, dir.path(), config(), crash).await;
        });
    }
}

/// Retention (`compact,delete`) runs while the writer swaps a cleaned group in: it must
/// neither take the wrong segments out nor delete the cleaned segment's files.
#[test]
fn given_retention_during_a_swap_should_keep_the_log_whole() {
    for old_keys_unique in [true, false] {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let cfg = LogConfig {
                retention_age: Some(std::time::Duration::from_secs(3600)),
                ..config()
            };
            let (p, _) = Partition::open(dir.path(), cfg.clone()).await.unwrap();
            let now = engine::now_ms();
            // The first segment: old timestamps (retention's to delete), its keys either
            // unique (nothing to clean in it) or the hot ones (cleaned with the rest).
            let mut i = 0usize;
            while p.segment_count() == 1 {
                let key = if old_keys_unique {
                    format!("unique-{i}")
                } else {
                    format!("k{}", i % 3)
                };
                let r = record(Some(key.as_bytes()), b"old", 1000);
                p.append(encode(&[r], Compression::None), AppendWait::Written)
                    .await
                    .unwrap();
                i += 1;
            }
            for i in 0..60usize {
                let recs: Vec<Record> = (0..3)
                    .map(|j| {
                        record(
                            Some(format!("k{j}").as_bytes()),
                            format!("v{i}-{j}").as_bytes(),
                            now,
                        )
                    })
                    .collect();
                p.append(encode(&recs, Compression::None), AppendWait::Written)
                    .await
                    .unwrap();
            }
            let end = p.offsets().log_end_offset;
            // Retention is called as soon as a swap file shows up, and again when it goes.
            let poller = {
                let p = p.clone();
                let d = dir.path().to_owned();
                async move {
                    let mut seen = false;
                    for _ in 0..200_000 {
                        let swap = std::fs::read_dir(&d)
                            .unwrap()
                            .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".swap"));
                        if swap || seen {
                            p.apply_retention(engine::now_ms());
                        }
                        if seen && !swap {
                            return;
                        }
                        seen |= swap;
                        compio::time::sleep(std::time::Duration::from_micros(1)).await;
                    }
                }
            };
            let (report, ()) =
                futures_util::future::join(p.compact(CompactOptions::default()), poller).await;
            report.unwrap();
            p.apply_retention(engine::now_ms());
            assert_eq!(p.offsets().log_end_offset, end);
            let latest = served(&p).await;
            for j in 0..3 {
                let key = format!("k{j}").into_bytes();
                let last = latest.iter().rev().find(|(_, w)| w.key == key).unwrap();
                assert_eq!(last.1.value.as_deref(), Some(format!("v59-{j}").as_bytes()));
            }
            let r = record(Some(b"k0"), b"after", now);
            let info = p
                .append(encode(&[r], Compression::None), AppendWait::Written)
                .await
                .unwrap();
            assert_eq!(info.base_offset, end, "no offset is reused");
            p.close().await.unwrap();
            let (p, _) = Partition::open(dir.path(), cfg).await.unwrap();
            assert_eq!(p.offsets().log_end_offset, end + 1);
            let mut again = served(&p).await;
            again.pop();
            assert_eq!(again, latest);
        });
    }
}

/// More distinct keys in the clean part than the map holds: the map is built from the
/// dirty part only, so the hot key written after them still gets cleaned.
#[test]
fn given_more_clean_keys_than_the_map_holds_should_still_clean_the_dirty_part() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), config()).await.unwrap();
        let mut model = Vec::new();
        let unique: Vec<Write> = (0..60)
            .map(|i| Write {
                key: format!("unique-{i:04}").into_bytes(),
                value: Some(b"x".to_vec()),
            })
            .collect();
        for w in unique {
            append(&p, &mut model, vec![w]).await;
        }
        let options = CompactOptions {
            map_bytes_max: 60 * 75 / 2,
            ..CompactOptions::default()
        };
        // The unique keys get cleaned (nothing to remove) and count as clean from now on.
        for _ in 0..3 {
            p.compact(options).await.unwrap();
        }
        for i in 0..200usize {
            let w = Write {
                key: b"hot".to_vec(),
                value: Some(format!("v{i}").into_bytes()),
            };
            append(&p, &mut model, vec![w]).await;
        }
        for _ in 0..4 {
            p.compact(options).await.unwrap();
        }
        let active = *list_logs(dir.path()).last().unwrap();
        let hot_sealed = served(&p)
            .await
            .iter()
            .filter(|(o, w)| w.key == b"hot" && *o < active)
            .count();
        assert!(
            hot_sealed <= 1,
            "{hot_sealed} hot records left in sealed segments"
        );
    });
}

/// A tombstone's age is the broker's (KIP-534's delete horizon, set by the first clean
/// that keeps it), never the producer's timestamp: an old or replayed one would expire it
/// at once, and a consumer that read the value would never see the delete. The records
/// keep their timestamps under the batch's new base timestamp.
#[test]
fn given_a_tombstone_with_an_old_producer_timestamp_should_keep_it_for_the_delete_retention() {
    for retention_ms in [3_600_000, 10] {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let (p, _) = Partition::open(dir.path(), config()).await.unwrap();
            let mut model = Vec::new();
            append(&p, &mut model, vec![write(1, 0, false)]).await;
            append(&p, &mut model, vec![write(1, 1, true)]).await; // OLD_TS: 1970
            while p.segment_count() < 3 {
                let n = model.len();
                append(&p, &mut model, vec![write(2, n, false)]).await;
            }
            let options = CompactOptions {
                delete_retention_ms: retention_ms,
                ..CompactOptions::default()
            };
            let report = p.compact(options).await.unwrap();
            assert_eq!(report.tombstones_removed, 0, "first clean: {report:?}");
            let kept = served(&p).await;
            assert!(
                kept.iter().any(|(o, w)| *o == 1 && w.value.is_none()),
                "the tombstone stays"
            );
            assert!(
                !kept.iter().any(|(o, _)| *o == 0),
                "the value it deletes goes"
            );
            let records = decode_all(&read_everything(&p).await);
            assert!(
                records.iter().all(|r| r.timestamp == OLD_TS),
                "timestamps kept"
            );
            // A later clean: the tombstone goes once its horizon has passed, not before.
            std::thread::sleep(std::time::Duration::from_millis(30));
            while p.segment_count() < 5 {
                let n = model.len();
                append(&p, &mut model, vec![write(2, n, false)]).await;
            }
            let later = CompactOptions {
                now_ms: engine::now_ms(),
                ..options
            };
            let report = p.compact(later).await.unwrap();
            let gone = u64::from(retention_ms < 30);
            assert_eq!(
                report.tombstones_removed, gone,
                "retention {retention_ms}: {report:?}"
            );
            p.close().await.unwrap();
            // What recovery re-validates checks out.
            let full = LogConfig {
                recovery_scope: RecoveryScope::Full,
                ..config()
            };
            let (p, report) = Partition::open(dir.path(), full).await.unwrap();
            assert_eq!(report.bytes_truncated, 0, "{report:?}");
            assert_eq!(p.offsets().log_end_offset, model.len() as i64);
        });
    }
}

#[test]
fn given_a_tombstone_in_a_dirty_segment_should_keep_it_in_the_pass_that_removes_its_value() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), config()).await.unwrap();
        let mut model = Vec::new();
        append(&p, &mut model, vec![write(1, 0, false)]).await;
        append(&p, &mut model, vec![write(1, 1, true)]).await;
        while p.segment_count() < 3 {
            let n = model.len();
            append(&p, &mut model, vec![write(2, n, false)]).await;
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        let opts = CompactOptions {
            delete_retention_ms: 10,
            ..CompactOptions::default()
        };
        p.compact(opts).await.unwrap();
        let kept = served(&p).await;
        let v = kept.iter().any(|(o, _)| *o == 0);
        let t = kept.iter().any(|(o, _)| *o == 1);
        eprintln!("value kept {v}, tombstone kept {t}");
        assert!(t || v, "both the value and its tombstone went in one pass");
    });
}

/// A follower's gapped last synced batch followed by a torn (zeroed) tail.
#[test]
fn given_a_batch_after_a_gap_before_a_torn_tail_when_reopened_should_keep_it() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let big = LogConfig {
            segment_bytes: 1 << 20,
            ..config()
        };
        let (f, _) = Partition::open(dir.path(), big.clone()).await.unwrap();
        let a = keyed_batch_with(&[write(1, 0, false)], Compression::None);
        let b = with_base_offset(
            &keyed_batch_with(&[write(2, 5, false)], Compression::None),
            5,
        );
        let mut both = a.clone();
        both.extend_from_slice(&b);
        let r = f.append_replica(both, AppendWait::Durable).await.unwrap();
        assert_eq!(r.log_end_offset, 6);
        assert_eq!(f.flush().await.unwrap(), 6);
        drop(f);
        // A later write torn by a crash: the file grew but its bytes are zeros.
        let log = log_path(dir.path(), 0);
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.extend_from_slice(&[0u8; 100]);
        std::fs::write(&log, bytes).unwrap();
        let (f, report) = Partition::open(dir.path(), big).await.unwrap();
        eprintln!("{report:?}");
        assert_eq!(f.offsets().log_end_offset, 6, "durable gapped batch lost");
    });
}

/// A batch compressed better than the cleaner does (zstd level 19): cleaned, it may come
/// out bigger. A deleted key must not be served again either way.
#[test]
fn given_a_recompressed_batch_that_grows_should_never_serve_a_deleted_key_again() {
    // With the topic's batch limit at the producer's batch or far above it: a follower
    // takes the bigger cleaned batch either way (up to a segment).
    for tight in [false, true] {
        deleted_key_stays_deleted(tight);
    }
}

fn deleted_key_stays_deleted(tight: bool) {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        // Batch X: V(k1) and a big W(k2), zstd level 19 (a producer's higher level).
        let mut seed = 12345u64;
        let words = [
            "alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa",
            "lambda", "mu",
        ];
        let mut w = String::new();
        while w.len() < 30_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            w.push_str(words[(seed >> 33) as usize % words.len()]);
            w.push_str(if (seed >> 20) & 7 == 0 { ".\n" } else { " " });
        }
        let recs = vec![
            record(Some(b"key-1"), b"V", OLD_TS),
            record(Some(b"key-2"), w.as_bytes(), OLD_TS),
        ];
        let plain = encode(&recs, Compression::None);
        let body = zstd::bulk::compress(&plain[61..], 19).unwrap();
        let mut x = plain[..61].to_vec();
        x.extend_from_slice(&body);
        let attrs = i16::from_be_bytes([x[21], x[22]]) | 4;
        x[21..23].copy_from_slice(&attrs.to_be_bytes());
        let len = (x.len() - 12) as i32;
        x[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&x[21..]);
        x[17..21].copy_from_slice(&crc.to_be_bytes());
        let cfg = LogConfig {
            segment_bytes: 64 * 1024,
            batch_bytes_max: if tight { x.len() } else { 64 * 1024 },
            index_interval_bytes: 128,
            segment_age_max: None,
            ..LogConfig::default()
        };
        let (p, _) = Partition::open(dir.path(), cfg).await.unwrap();
        p.append(x, AppendWait::Written).await.unwrap(); // offsets 0, 1
        let t = keyed_batch_with(&[write(1, 2, true)], Compression::None);
        p.append(t, AppendWait::Written).await.unwrap(); // offset 2: tombstone of key-1
        while p.segment_count() < 4 {
            let big = vec![b'x'; 2000];
            let b = encode(&[record(Some(b"key-3"), &big, OLD_TS)], Compression::None);
            p.append(b, AppendWait::Written).await.unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        let opts = CompactOptions {
            delete_retention_ms: 10,
            ..CompactOptions::default()
        };
        p.compact(opts).await.unwrap();
        let kept = served(&p).await;
        let latest_k1 = kept
            .iter()
            .rfind(|(_, w)| w.key == b"key-1")
            .map(|(o, w)| (*o, w.value.clone()));
        eprintln!("latest key-1 served: {latest_k1:?}");
        assert!(
            latest_k1.is_none() || latest_k1.as_ref().unwrap().1.is_none(),
            "tight {tight}: deleted key-1 is served again: {latest_k1:?}"
        );
    });
}

/// A reader holds a segment that retention let go of; the partition is deleted and made
/// again in the same directory; the reader lets go.
#[test]
fn given_a_partition_made_again_when_an_old_reader_lets_go_should_keep_the_new_files() {
    run(async {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t-0");
        let cfg = LogConfig {
            retention_bytes: Some(1),
            ..config()
        };
        let (p, _) = Partition::open(&dir, cfg.clone()).await.unwrap();
        let mut model = Vec::new();
        while p.segment_count() < 3 {
            let n = model.len();
            append(&p, &mut model, vec![write(1, n, false)]).await;
        }
        let held = p.read_ranges(0, 100).await.unwrap();
        let r = p.apply_retention(engine::now_ms());
        assert!(r.segments_deleted >= 1);
        p.delete().await.unwrap();
        let (q, _) = Partition::open(&dir, config()).await.unwrap();
        let mut m2 = Vec::new();
        append(&q, &mut m2, vec![write(7, 0, false)]).await;
        q.flush().await.unwrap();
        assert!(log_path(&dir, 0).exists());
        drop(held);
        assert!(
            log_path(&dir, 0).exists(),
            "the new partition's segment file was unlinked"
        );
    });
}

/// Cleans that rewrite a tombstone's batch do not make the tombstone younger: its delete
/// horizon is set once, by the first clean that keeps it.
#[test]
fn given_a_tombstones_segment_rewritten_by_later_cleans_should_still_age_from_its_write() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), config()).await.unwrap();
        let mut model = Vec::new();
        append(&p, &mut model, vec![write(1, 0, false)]).await;
        append(&p, &mut model, vec![write(1, 1, true)]).await;
        let fill = |p: &Partition, model: &mut Vec<Write>, segments: usize| {
            let p = p.clone();
            let mut writes = Vec::new();
            let start = model.len();
            async move {
                while p.segment_count() < segments {
                    let w = vec![write(2, start + writes.len(), false)];
                    p.append(keyed_batch_with(&w, Compression::None), AppendWait::Written)
                        .await
                        .unwrap();
                    writes.extend(w);
                }
                writes
            }
        };
        let w = fill(&p, &mut model, 3).await;
        model.extend(w);
        let retention = || CompactOptions {
            delete_retention_ms: 400,
            ..CompactOptions::default()
        };
        // Written at about 0 ms: each clean below rewrites the tombstone's segment (new
        // writes of key 2 replace the ones beside it).
        p.compact(retention()).await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(250));
        let w = fill(&p, &mut model, p.segment_count() + 2).await;
        model.extend(w);
        let second = p.compact(retention()).await.unwrap();
        assert_eq!(second.tombstones_removed, 0, "at 250 ms: {second:?}");
        std::thread::sleep(std::time::Duration::from_millis(250));
        let w = fill(&p, &mut model, p.segment_count() + 2).await;
        model.extend(w);
        let third = p.compact(retention()).await.unwrap();
        assert_eq!(third.tombstones_removed, 1, "at 500 ms: {third:?}");
    });
}
