//! What replication needs from the partition log: leader epochs stamped and cached
//! (KIP-101/KIP-279), follower appends of a leader's batches, truncation, and reads below
//! the high watermark.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use engine::{AppendWait, BatchError, FlushPolicy, LogConfig, LogError, Partition, ReadSlice};
use proptest::prelude::*;

fn epoch_of(batch: &[u8]) -> i32 {
    i32::from_be_bytes([batch[12], batch[13], batch[14], batch[15]])
}

fn base_of(batch: &[u8]) -> i64 {
    i64::from_be_bytes(batch[..8].try_into().unwrap())
}

/// `bytes` as stored at `offset` by a leader of `epoch`.
fn stored(bytes: &[u8], offset: i64, epoch: i32) -> Vec<u8> {
    let mut b = with_base_offset(bytes, offset);
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    b
}

fn segment_config() -> LogConfig {
    LogConfig {
        // Test timestamps are near 1970: age-based rolls would add segments.
        segment_age_max: None,
        ..small_config()
    }
}

/// Appends, as a leader, `count` batches of `records` records for each `(epoch, count)`.
async fn lead(p: &Partition, epochs: &[(i32, usize)], records: usize) {
    for &(epoch, count) in epochs {
        for i in 0..count {
            p.append_with_epoch(batch(records, 40, i as i64), AppendWait::Written, epoch)
                .await
                .unwrap();
        }
    }
}

/// The bytes of a read's file ranges, as a sendfile would send them.
fn range_bytes(slice: &ReadSlice) -> Vec<u8> {
    let mut out = Vec::new();
    for r in &slice.ranges {
        let file = std::fs::read(r.files.log_path()).unwrap();
        out.extend_from_slice(&file[r.position as usize..(r.position + r.len) as usize]);
    }
    out
}

/// Copies `leader` into `follower` from the follower's log end, `chunk` bytes per
/// "fetch" (cut mid-batch, as Kafka's fetch responses are).
async fn replicate(leader: &Partition, follower: &Partition, chunk: u64) {
    loop {
        let from = follower.offsets().log_end_offset;
        if from == leader.offsets().log_end_offset {
            return;
        }
        let slice = leader.read_ranges(from, chunk).await.unwrap();
        let records = range_bytes(&slice);
        let written = follower
            .append_replica(records, AppendWait::Written)
            .await
            .unwrap();
        assert!(written.batches > 0, "every fetch holds at least one batch");
        assert_eq!(written.first_offset, from);
    }
}

#[test]
fn given_stamped_appends_should_store_the_epoch_and_start_an_entry_per_new_epoch() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(p.latest_epoch(), None);
        assert_eq!(p.end_offset_for_epoch(0), (-1, -1));
        lead(&p, &[(0, 2), (3, 2), (7, 1)], 2).await;
        assert_eq!(p.epoch_entries(), vec![(0, 0), (3, 4), (7, 8)]);
        assert_eq!(p.latest_epoch(), Some(7));
        // An older epoch and an unstamped append change nothing.
        p.append_with_epoch(batch(1, 5, 0), AppendWait::Written, 2)
            .await
            .unwrap();
        let plain = batch(1, 5, 0);
        p.append(plain.clone(), AppendWait::Written).await.unwrap();
        assert_eq!(p.epoch_entries(), vec![(0, 0), (3, 4), (7, 8)]);
        let batches = split_batches(&read_everything(&p).await);
        let epochs: Vec<i32> = batches.iter().map(|b| epoch_of(b)).collect();
        assert_eq!(epochs, vec![0, 0, 3, 3, 7, 2, -1]);
        assert_eq!(batches[6], with_base_offset(&plain, 11));

        // Each branch of Kafka's endOffsetFor.
        assert_eq!(p.end_offset_for_epoch(-1), (-1, -1), "undefined");
        assert_eq!(p.end_offset_for_epoch(7), (7, 12), "latest: the log end");
        assert_eq!(p.end_offset_for_epoch(8), (-1, -1), "past every epoch");
        assert_eq!(p.end_offset_for_epoch(0), (0, 4), "known epoch");
        assert_eq!(
            p.end_offset_for_epoch(5),
            (3, 8),
            "unknown: the floor epoch"
        );
    });
}

#[test]
fn given_a_new_leader_when_it_assigns_its_epoch_should_answer_an_unwritten_epoch_with_its_start() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        lead(&p, &[(0, 2), (1, 1)], 2).await;
        // Leader at epoch 3 before writing anything: a follower that wrote at epoch 2
        // (as a leader nobody followed) learns that epoch 1 ends where 3 starts.
        p.assign_leader_epoch(3).await.unwrap();
        assert_eq!(p.epoch_entries(), vec![(0, 0), (1, 4), (3, 6)]);
        assert_eq!(p.end_offset_for_epoch(2), (1, 6));
        // Older or equal epochs change nothing; writes at epoch 3 keep its start.
        p.assign_leader_epoch(3).await.unwrap();
        p.assign_leader_epoch(2).await.unwrap();
        lead(&p, &[(3, 1)], 2).await;
        assert_eq!(p.epoch_entries(), vec![(0, 0), (1, 4), (3, 6)]);
        p.close().await.unwrap();
        drop(p);
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(p.epoch_entries(), vec![(0, 0), (1, 4), (3, 6)]);
    });
}

#[test]
fn given_no_epoch_below_the_first_when_asked_should_answer_the_first_start() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        p.append(batch(2, 5, 0), AppendWait::Written).await.unwrap();
        lead(&p, &[(4, 1)], 1).await;
        assert_eq!(p.epoch_entries(), vec![(4, 2)]);
        assert_eq!(p.end_offset_for_epoch(1), (1, 2));
    });
}

#[test]
fn given_epochs_when_reopened_clean_or_after_a_crash_should_keep_them() {
    for crash in [false, true] {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
            lead(&p, &[(0, 10), (1, 10), (4, 10)], 2).await;
            assert!(p.segment_count() > 1);
            let entries = p.epoch_entries();
            let before = read_everything(&p).await;
            if !crash {
                p.close().await.unwrap();
            }
            drop(p);
            let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
            assert_eq!(p.epoch_entries(), entries, "crash: {crash}");
            assert_eq!(read_everything(&p).await, before);
            lead(&p, &[(6, 1)], 1).await;
            assert_eq!(p.epoch_entries().last(), Some(&(6, 60)));
        });
    }
}

#[test]
fn given_damaged_or_missing_epoch_file_when_reopened_should_rebuild_it_from_headers() {
    for damage in [&b"0\n9\n1 1\n"[..], b"\xff\x00garbage", b""] {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
            lead(&p, &[(0, 5), (2, 5), (3, 20)], 2).await;
            let entries = p.epoch_entries();
            p.close().await.unwrap();
            drop(p);
            let file = dir.path().join("leader-epoch-checkpoint");
            if damage.is_empty() {
                std::fs::remove_file(&file).unwrap();
            } else {
                std::fs::write(&file, damage).unwrap();
            }
            let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
            assert_eq!(p.epoch_entries(), entries);
            // The rebuilt cache was written back.
            assert_eq!(
                std::fs::read_to_string(&file).unwrap(),
                "0\n3\n0 0\n2 10\n3 20\n"
            );
        });
    }
}

#[test]
fn given_epoch_file_ahead_of_the_log_when_reopened_should_drop_entries_past_the_end() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        lead(&p, &[(0, 2), (1, 2)], 1).await;
        drop(p);
        // As if the entry of epoch 5 was persisted but its batch never landed.
        std::fs::write(
            dir.path().join("leader-epoch-checkpoint"),
            "0\n3\n0 0\n1 2\n5 4\n",
        )
        .unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(p.epoch_entries(), vec![(0, 0), (1, 2)]);
    });
}

#[test]
fn given_epoch_file_behind_the_scanned_tail_when_reopened_should_add_the_new_epochs() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        lead(&p, &[(0, 2), (1, 2), (2, 2)], 1).await;
        drop(p); // unclean: the active segment is re-validated
        std::fs::write(dir.path().join("leader-epoch-checkpoint"), "0\n1\n0 0\n").unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(p.epoch_entries(), vec![(0, 0), (1, 2), (2, 4)]);
    });
}

#[test]
fn given_leader_batches_when_replicated_in_cut_fetches_should_keep_offsets_and_epochs() {
    for crash in [false, true] {
        run(async {
            let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (leader, _) = Partition::open(ld.path(), segment_config()).await.unwrap();
            let (follower, _) = Partition::open(fd.path(), segment_config()).await.unwrap();
            lead(&leader, &[(0, 20), (2, 25), (3, 15)], 3).await;
            // Fetches of 1000 bytes end mid-batch; the follower rolls its own segments.
            replicate(&leader, &follower, 1000).await;
            let expected = read_everything(&leader).await;
            assert_eq!(read_everything(&follower).await, expected);
            assert_eq!(follower.epoch_entries(), leader.epoch_entries());
            assert!(follower.segment_count() > 1);
            assert_eq!(follower.offsets().log_end_offset, 180);
            if !crash {
                follower.close().await.unwrap();
            }
            drop(follower);
            let (follower, _) = Partition::open(fd.path(), segment_config()).await.unwrap();
            assert_eq!(read_everything(&follower).await, expected, "crash: {crash}");
            assert_eq!(follower.epoch_entries(), leader.epoch_entries());
        });
    }
}

#[test]
fn given_many_batches_in_one_fetch_should_write_them_together_across_a_roll() {
    run(async {
        let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (leader, _) = Partition::open(ld.path(), segment_config()).await.unwrap();
        let (follower, _) = Partition::open(fd.path(), segment_config()).await.unwrap();
        lead(&leader, &[(1, 30)], 5).await;
        let all = read_everything(&leader).await;
        assert!(leader.segment_count() > 1);
        let cut = &all[..all.len() - 30]; // the last batch partial
        let writes = follower.stats().writes;
        let info = follower
            .append_replica(cut.to_vec(), AppendWait::Written)
            .await
            .unwrap();
        assert_eq!((info.first_offset, info.batches), (0, 29));
        assert_eq!(info.log_end_offset, 145);
        assert_eq!(
            info.bytes,
            (all.len() - split_batches(&all)[29].len()) as u64
        );
        assert_eq!(follower.segment_count(), leader.segment_count());
        // One write per segment, not one per batch.
        assert_eq!(
            follower.stats().writes - writes,
            follower.segment_count() as u64
        );
        let rest = follower
            .append_replica(all[info.bytes as usize..].to_vec(), AppendWait::Written)
            .await
            .unwrap();
        assert_eq!((rest.first_offset, rest.batches), (145, 1));
        assert_eq!(read_everything(&follower).await, all);
    });
}

#[test]
fn given_batches_before_the_log_end_when_replicated_should_refuse_and_write_nothing() {
    run(async {
        let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (leader, _) = Partition::open(ld.path(), LogConfig::default())
            .await
            .unwrap();
        let (follower, _) = Partition::open(fd.path(), LogConfig::default())
            .await
            .unwrap();
        lead(&leader, &[(0, 6)], 2).await;
        let batches = split_batches(&read_everything(&leader).await);
        follower
            .append_replica(batches[..2].concat(), AppendWait::Written)
            .await
            .unwrap();
        let before = read_everything(&follower).await;
        // Gaps are offsets compaction removed from the leader's log (accepted, as Kafka
        // does: see `given_gaps_from_a_compacted_leader_when_replicated_…`); a batch
        // before the log end, or before the end of the one ahead of it, is not.
        let cases = [
            ("overlap", batches[1..].concat(), 4, 2),
            (
                "overlap inside",
                [&batches[2][..], &batches[2][..]].concat(),
                6,
                4,
            ),
        ];
        for (what, records, expected, got) in cases {
            let err = follower
                .append_replica(records, AppendWait::Written)
                .await
                .unwrap_err();
            assert!(
                matches!(err, LogError::ReplicaOffsetMismatch { expected: e, got: g } if e == expected && g == got),
                "{what}: {err}"
            );
        }
        let mut corrupt = batches[3].clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let err = follower
            .append_replica(
                [&batches[2][..], &corrupt[..]].concat(),
                AppendWait::Written,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, LogError::InvalidBatch(BatchError::CrcMismatch { .. })),
            "{err}"
        );
        let mut absurd = batches[2].clone();
        absurd[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        let err = follower
            .append_replica(absurd, AppendWait::Written)
            .await
            .unwrap_err();
        assert!(
            matches!(err, LogError::InvalidBatch(BatchError::TooLarge { .. })),
            "{err}"
        );
        assert_eq!(read_everything(&follower).await, before);
        assert_eq!(follower.offsets().log_end_offset, 4);
    });
}

#[test]
fn given_empty_or_partial_fetch_when_replicated_should_answer_the_current_offsets() {
    run(async {
        let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (leader, _) = Partition::open(ld.path(), LogConfig::default())
            .await
            .unwrap();
        let (follower, _) = Partition::open(fd.path(), LogConfig::default())
            .await
            .unwrap();
        lead(&leader, &[(0, 1)], 2).await;
        let one = read_everything(&leader).await;
        for records in [
            Vec::new(),
            one[..10].to_vec(),
            one[..one.len() - 1].to_vec(),
        ] {
            let info = follower
                .append_replica(records, AppendWait::Durable)
                .await
                .unwrap();
            assert_eq!(
                (info.first_offset, info.log_end_offset, info.batches),
                (-1, 0, 0)
            );
        }
    });
}

#[test]
fn given_durable_replica_append_under_every_append_should_answer_once_synced() {
    run(async {
        let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let config = LogConfig {
            flush_policy: FlushPolicy::EveryAppend,
            ..LogConfig::default()
        };
        let (leader, _) = Partition::open(ld.path(), config.clone()).await.unwrap();
        let (follower, _) = Partition::open(fd.path(), config).await.unwrap();
        lead(&leader, &[(0, 3)], 2).await;
        let syncs = follower.stats().syncs;
        let info = follower
            .append_replica(read_everything(&leader).await, AppendWait::Durable)
            .await
            .unwrap();
        assert_eq!((info.log_end_offset, info.durable_offset), (6, 6));
        assert_eq!(follower.stats().syncs, syncs + 1);
        assert_eq!(follower.stable_offset(), 6);
        // A written-only append is not counted stable until synced.
        follower
            .append_replica(Vec::new(), AppendWait::Written)
            .await
            .unwrap();
        lead(&leader, &[(0, 1)], 1).await;
        let more = leader.read(6, 1 << 20).await.unwrap();
        let info = follower
            .append_replica(more, AppendWait::Written)
            .await
            .unwrap();
        assert_eq!((info.log_end_offset, info.durable_offset), (7, 6));
        assert_eq!(follower.stable_offset(), 6);
        follower.flush().await.unwrap();
        assert_eq!(follower.stable_offset(), 7);
    });
}

#[test]
fn given_never_flush_policy_should_count_the_log_end_as_stable() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        lead(&p, &[(0, 2)], 2).await;
        assert_eq!(p.offsets().durable_offset, 0);
        assert_eq!(p.stable_offset(), 4);
    });
}

#[test]
fn given_replicated_idempotent_batch_when_produced_again_should_be_a_duplicate() {
    run(async {
        let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (leader, _) = Partition::open(ld.path(), LogConfig::default())
            .await
            .unwrap();
        let (follower, _) = Partition::open(fd.path(), LogConfig::default())
            .await
            .unwrap();
        lead(&leader, &[(0, 1)], 2).await;
        let retried = idempotent_batch(77, 0, 0, 3);
        leader
            .append_with_epoch(retried.clone(), AppendWait::Written, 0)
            .await
            .unwrap();
        replicate(&leader, &follower, 1 << 20).await;
        // The follower becomes leader: the producer's retry is answered, not written.
        let again = follower
            .append_with_epoch(retried, AppendWait::Written, 1)
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!((again.base_offset, again.last_offset), (2, 4));
        let next = follower
            .append_with_epoch(idempotent_batch(77, 0, 3, 1), AppendWait::Written, 1)
            .await
            .unwrap();
        assert_eq!((next.base_offset, next.duplicate), (5, false));
    });
}

#[test]
fn given_cut_inside_the_active_segment_when_truncated_should_end_at_the_batch_start() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        lead(&p, &[(0, 10)], 3).await;
        let batches = split_batches(&read_everything(&p).await);
        let report = p.truncate_to(13).await.unwrap();
        assert_eq!(report.log_end_offset, 12, "13 is inside the batch at 12");
        assert_eq!(report.segments_deleted, 0);
        let removed: usize = batches[4..].iter().map(Vec::len).sum();
        assert_eq!(report.bytes_removed, removed as u64);
        assert_eq!(read_everything(&p).await, batches[..4].concat());
        assert_eq!(p.offsets().log_end_offset, 12);
        // No-op at or past the end.
        let again = p.truncate_to(12).await.unwrap();
        assert_eq!((again.log_end_offset, again.bytes_removed), (12, 0));
        let info = p.append(batch(1, 5, 0), AppendWait::Written).await.unwrap();
        assert_eq!(info.base_offset, 12);
        assert_eq!(
            p.read(12, 1).await.unwrap(),
            with_base_offset(&batch(1, 5, 0), 12)
        );
    });
}

#[test]
fn given_cut_in_an_older_segment_when_truncated_should_delete_later_ones_and_reopen() {
    for crash in [false, true] {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
            // Batches of four offsets: epoch 1 starts at 120.
            lead(&p, &[(0, 30), (1, 50)], 4).await;
            let segments = p.segment_count();
            assert!(segments >= 5, "{segments}");
            let batches = split_batches(&read_everything(&p).await);
            let report = p.truncate_to(130).await.unwrap();
            assert_eq!(report.log_end_offset, 128);
            assert!(report.segments_deleted >= 2, "{report:?}");
            assert_eq!(p.segment_count(), segments - report.segments_deleted);
            assert_eq!(p.epoch_entries(), vec![(0, 0), (1, 120)]);
            assert_eq!(read_everything(&p).await, batches[..32].concat());
            let logs = std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "log")
                })
                .count();
            assert_eq!(logs, p.segment_count(), "deleted segments left no files");
            // Appends continue at the cut and roll into fresh segments again.
            let mut model = batches[..32].to_vec();
            for i in 0..30 {
                let b = batch(2, 40, i);
                let info = p
                    .append_with_epoch(b.clone(), AppendWait::Written, 2)
                    .await
                    .unwrap();
                assert_eq!(info.base_offset, 128 + 2 * i);
                model.push(stored(&b, info.base_offset, 2));
            }
            assert_eq!(read_everything(&p).await, model.concat());
            if !crash {
                p.close().await.unwrap();
            }
            drop(p);
            let (p, report) = Partition::open(dir.path(), segment_config()).await.unwrap();
            assert_eq!(report.log_end_offset, 188, "crash: {crash}");
            assert_eq!(read_everything(&p).await, model.concat());
            assert_eq!(p.epoch_entries(), vec![(0, 0), (1, 120), (2, 128)]);
        });
    }
}

#[test]
fn given_truncation_right_after_the_cut_when_crashed_should_reopen_at_the_new_end() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
        lead(&p, &[(0, 30), (1, 30)], 2).await;
        let batches = split_batches(&read_everything(&p).await);
        p.truncate_to(30).await.unwrap();
        drop(p);
        let (p, report) = Partition::open(dir.path(), segment_config()).await.unwrap();
        assert_eq!(report.log_end_offset, 30);
        assert_eq!(read_everything(&p).await, batches[..15].concat());
        assert_eq!(p.epoch_entries(), vec![(0, 0)]);
        assert_eq!(p.end_offset_for_epoch(0), (0, 30));
    });
}

#[test]
fn given_offset_at_or_below_the_log_start_when_truncated_should_empty_the_log() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
        lead(&p, &[(3, 40)], 2).await;
        let report = p.truncate_to(-5).await.unwrap();
        assert_eq!(report.log_end_offset, 0);
        assert_eq!(p.segment_count(), 1);
        assert_eq!(p.size_bytes(), 0);
        assert_eq!(p.epoch_entries(), vec![]);
        assert_eq!(p.latest_epoch(), None);
        let info = p.append(batch(1, 5, 0), AppendWait::Written).await.unwrap();
        assert_eq!(info.base_offset, 0);
        drop(p);
        let (p, report) = Partition::open(dir.path(), segment_config()).await.unwrap();
        assert_eq!(report.log_end_offset, 1);
        assert_eq!(
            read_everything(&p).await,
            with_base_offset(&batch(1, 5, 0), 0)
        );
    });
}

#[test]
fn given_truncated_idempotent_batch_when_produced_again_should_append_it_as_new() {
    for reopen in [false, true] {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
            let mut seq = 0;
            for _ in 0..80 {
                p.append(idempotent_batch(9, 0, seq, 2), AppendWait::Written)
                    .await
                    .unwrap();
                seq += 2;
            }
            assert!(p.segment_count() > 1, "a producer snapshot was written");
            // Cut the last two batches (sequences 156..159) away.
            p.truncate_to(156).await.unwrap();
            let p = if reopen {
                p.close().await.unwrap();
                drop(p);
                Partition::open(dir.path(), segment_config())
                    .await
                    .unwrap()
                    .0
            } else {
                p
            };
            let kept = p
                .append(idempotent_batch(9, 0, 154, 2), AppendWait::Written)
                .await
                .unwrap();
            assert!(kept.duplicate, "a batch below the cut is still known");
            assert_eq!(kept.base_offset, 154);
            let again = p
                .append(idempotent_batch(9, 0, 156, 2), AppendWait::Written)
                .await
                .unwrap();
            assert!(!again.duplicate, "reopen: {reopen}");
            assert_eq!(again.base_offset, 156);
        });
    }
}

#[test]
fn given_truncation_into_an_older_segment_should_roll_producer_state_back_exactly() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
        // Producer 5 bumps its epoch after offset 20: a plain forget-what-is-past-the-cut
        // would lose its epoch-0 batches along with the epoch-1 ones.
        let mut seq = 0;
        for _ in 0..10 {
            p.append(idempotent_batch(5, 0, seq, 2), AppendWait::Written)
                .await
                .unwrap();
            seq += 2;
        }
        for s in 0..20 {
            p.append(idempotent_batch(5, 1, s * 2, 2), AppendWait::Written)
                .await
                .unwrap();
        }
        p.truncate_to(20).await.unwrap();
        let retry = p
            .append(idempotent_batch(5, 0, 18, 2), AppendWait::Written)
            .await
            .unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.base_offset, 18);
        let next = p
            .append(idempotent_batch(5, 0, 20, 2), AppendWait::Written)
            .await
            .unwrap();
        assert_eq!((next.base_offset, next.duplicate), (20, false));
    });
}

#[test]
fn given_durable_append_waiting_beyond_the_cut_when_truncated_should_answer_an_error() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush_policy: FlushPolicy::Interval(Duration::from_secs(3600)),
            ..LogConfig::default()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        p.append(batch(2, 5, 0), AppendWait::Written).await.unwrap();
        let (waiting, truncated) = futures_util::future::join(
            p.append(batch(2, 5, 0), AppendWait::Durable),
            p.truncate_to(2),
        )
        .await;
        assert!(
            matches!(
                waiting,
                Err(LogError::TruncatedAway {
                    last_offset: 3,
                    log_end: 2
                })
            ),
            "{waiting:?}"
        );
        assert_eq!(truncated.unwrap().log_end_offset, 2);
        // Everything left was synced by the truncation.
        assert_eq!(p.offsets().durable_offset, 2);
    });
}

#[test]
fn given_high_watermark_when_reading_upto_should_stop_at_the_batch_boundary() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        lead(&p, &[(0, 5)], 2).await;
        let batches = split_batches(&read_everything(&p).await);
        let slice = p.read_ranges_upto(0, 1 << 20, 6).await.unwrap();
        assert_eq!(range_bytes(&slice), batches[..3].concat());
        assert_eq!(slice.end_offset, 6);
        // Inside a batch: stop at its start.
        let slice = p.read_ranges_upto(2, 1 << 20, 7).await.unwrap();
        assert_eq!(range_bytes(&slice), batches[1..3].concat());
        assert_eq!(slice.end_offset, 6);
        // At or past the limit but within the log: nothing, and no error.
        for (offset, upto) in [(6, 6), (7, 6), (10, 6), (7, 7)] {
            let slice = p.read_ranges_upto(offset, 1 << 20, upto).await.unwrap();
            assert!(slice.ranges.is_empty(), "{offset} upto {upto}");
            assert_eq!(slice.end_offset, offset);
        }
        assert!(matches!(
            p.read_ranges_upto(11, 1 << 20, 6).await,
            Err(LogError::OffsetOutOfRange { requested: 11, .. })
        ));
        // A limit past the log end is the log end.
        let slice = p.read_ranges_upto(0, 1 << 20, 1000).await.unwrap();
        assert_eq!(range_bytes(&slice), batches.concat());
        assert_eq!(slice.end_offset, 10);
        // max_bytes still applies below the limit.
        let slice = p.read_ranges_upto(0, 1, 8).await.unwrap();
        assert_eq!(range_bytes(&slice), batches[0]);
    });
}

#[test]
fn given_high_watermark_in_a_later_segment_when_reading_upto_should_span_segments_and_stop() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
        lead(&p, &[(0, 100)], 2).await;
        let batches = split_batches(&read_everything(&p).await);
        let mut bases: Vec<i64> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".log").map(|stem| stem.parse().unwrap())
            })
            .collect();
        bases.sort_unstable();
        assert!(bases.len() >= 4, "{bases:?}");
        // Batches hold two offsets each, so every base offset is even.
        for (from, upto) in [
            (0, bases[2] + 3),        // into the third segment, inside a batch
            (bases[1] - 2, bases[3]), // a limit at a segment's first batch
            (3, bases[1] + 2),
            (bases[1], bases[1] + 1), // the limit is inside the first batch read
        ] {
            let cut = upto / 2 * 2;
            let slice = p.read_ranges_upto(from, 1 << 20, upto).await.unwrap();
            let first = (from / 2) as usize;
            let want = if from / 2 * 2 >= cut {
                Vec::new()
            } else {
                batches[first..(cut / 2) as usize].concat()
            };
            assert_eq!(range_bytes(&slice), want, "{from} upto {upto}");
            let end = if want.is_empty() { from } else { cut };
            assert_eq!(slice.end_offset, end, "{from} upto {upto}");
        }
    });
}

/// KIP-101: a follower that led epoch 0 and wrote batches nobody replicated comes back
/// after another replica led epoch 1. It asks the new leader where its latest epoch ends,
/// truncates there, fetches, and ends up with the leader's log, byte for byte.
#[test]
fn given_divergent_replica_when_truncated_by_the_leaders_epoch_end_should_match_the_leader() {
    run(async {
        let (ad, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, _) = Partition::open(ad.path(), segment_config()).await.unwrap();
        let (b, _) = Partition::open(bd.path(), segment_config()).await.unwrap();
        // A leads epoch 0; B replicates the first 24 batches only.
        lead(&a, &[(0, 40)], 2).await;
        while b.offsets().log_end_offset < 48 {
            let from = b.offsets().log_end_offset;
            let upto = a.read_ranges_upto(from, 700, 48).await.unwrap();
            b.append_replica(range_bytes(&upto), AppendWait::Written)
                .await
                .unwrap();
        }
        assert_eq!(b.offsets().log_end_offset, 48);
        // A crashes; B leads epochs 1 and 2.
        drop(a);
        lead(&b, &[(1, 10), (2, 10)], 3).await;
        let (a, _) = Partition::open(ad.path(), segment_config()).await.unwrap();
        assert_eq!(a.latest_epoch(), Some(0));
        let (epoch, end) = b.end_offset_for_epoch(a.latest_epoch().unwrap());
        assert_eq!((epoch, end), (0, 48));
        let report = a.truncate_to(end).await.unwrap();
        assert_eq!(report.log_end_offset, 48);
        replicate(&b, &a, 900).await;
        assert_eq!(read_everything(&a).await, read_everything(&b).await);
        assert_eq!(a.epoch_entries(), vec![(0, 0), (1, 48), (2, 78)]);
        assert_eq!(a.epoch_entries(), b.epoch_entries());
        drop(a);
        let (a, _) = Partition::open(ad.path(), segment_config()).await.unwrap();
        assert_eq!(read_everything(&a).await, read_everything(&b).await);
    });
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Op {
    /// Append batches of this many records, raising the epoch first when set.
    Append {
        records: usize,
        new_epoch: bool,
    },
    /// Truncate to this fraction of the log end.
    Truncate(f64),
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..4, proptest::bool::weighted(0.2))
            .prop_map(|(records, new_epoch)| Op::Append { records, new_epoch }),
        2 => (0.0f64..1.0).prop_map(Op::Truncate),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

/// The leader-epoch entries a log of `model` batches must have.
fn model_epochs(model: &[Vec<u8>]) -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = Vec::new();
    for b in model {
        let epoch = epoch_of(b);
        if epoch >= 0 && out.last().is_none_or(|&(e, _)| epoch > e) {
            out.push((epoch, base_of(b)));
        }
    }
    out
}

async fn check_against_model(p: &Partition, model: &[Vec<u8>]) {
    assert_eq!(split_batches(&read_everything(p).await), model);
    let end = model.last().map_or(0, |b| {
        base_of(b) + i64::from(i32::from_be_bytes([b[23], b[24], b[25], b[26]])) + 1
    });
    assert_eq!(p.offsets().log_end_offset, end);
    assert_eq!(p.epoch_entries(), model_epochs(model));
}

async fn run_model(dir: &Path, ops: Vec<Op>) {
    let config = segment_config();
    let (mut p, _) = Partition::open(dir, config.clone()).await.unwrap();
    let mut model: Vec<Vec<u8>> = Vec::new();
    let mut epoch = 0;
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append { records, new_epoch } => {
                epoch += i32::from(new_epoch);
                let b = batch(records, 60, i as i64);
                let info = p
                    .append_with_epoch(b.clone(), AppendWait::Written, epoch)
                    .await
                    .unwrap();
                model.push(stored(&b, info.base_offset, epoch));
            }
            Op::Truncate(fraction) => {
                let end = p.offsets().log_end_offset;
                let offset = (end as f64 * fraction) as i64;
                let report = p.truncate_to(offset).await.unwrap();
                model.retain(|b| {
                    let last =
                        base_of(b) + i64::from(i32::from_be_bytes([b[23], b[24], b[25], b[26]]));
                    last < offset
                });
                let model_end = model.last().map_or(0, |b| {
                    base_of(b) + i64::from(i32::from_be_bytes([b[23], b[24], b[25], b[26]])) + 1
                });
                assert_eq!(report.log_end_offset, model_end);
            }
            Op::Reopen { clean } => {
                if clean {
                    p.close().await.unwrap();
                }
                drop(p);
                p = Partition::open(dir, config.clone()).await.unwrap().0;
            }
        }
        check_against_model(&p, &model).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn given_random_appends_truncations_and_reopens_should_match_the_model(
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            run_model(dir.path(), ops).await;
        });
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A crash inside `truncate_to`, simulated by combining the files of the log before the
/// truncation with those it had written by each step. Every combination opens, serves a
/// whole log (the old one or the cut one), and its producer state and epochs match it.
#[test]
fn given_crash_at_each_step_of_a_truncation_when_reopened_should_serve_a_consistent_log() {
    run(async {
        let root = tempfile::tempdir().unwrap();
        let (before, after) = (root.path().join("before"), root.path().join("after"));
        let (p, _) = Partition::open(&before, segment_config()).await.unwrap();
        let mut seq = 0;
        for epoch in [0, 1] {
            for _ in 0..40 {
                p.append_with_epoch(idempotent_batch(3, 0, seq, 2), AppendWait::Written, epoch)
                    .await
                    .unwrap();
                seq += 2;
            }
        }
        let old_log = read_everything(&p).await;
        drop(p); // a crash before the truncation
        copy_dir(&before, &after);
        let (p, _) = Partition::open(&after, segment_config()).await.unwrap();
        let report = p.truncate_to(30).await.unwrap();
        assert!(report.segments_deleted > 0);
        let new_log = read_everything(&p).await;
        drop(p);
        let logs = |dir: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".log"))
                .collect();
            v.sort();
            v
        };
        let cut_segment = logs(&after).last().unwrap().clone();
        // Files the truncation writes, in the order it writes them.
        let steps: [&[&str]; 5] = [
            &["recovery-checkpoint"],
            &["recovery-checkpoint", "producer-snapshot"],
            &[
                "recovery-checkpoint",
                "producer-snapshot",
                cut_segment.as_str(),
            ],
            &[
                "recovery-checkpoint",
                "producer-snapshot",
                cut_segment.as_str(),
                "leader-epoch-checkpoint",
            ],
            &[
                "recovery-checkpoint",
                "producer-snapshot",
                cut_segment.as_str(),
                "leader-epoch-checkpoint",
                "-later segments",
            ],
        ];
        for (step, written) in steps.iter().enumerate() {
            let dir = root.path().join(format!("step{step}"));
            copy_dir(&before, &dir);
            for name in written.iter() {
                if *name == "-later segments" {
                    for log in logs(&before) {
                        if !logs(&after).contains(&log) {
                            std::fs::remove_file(dir.join(&log)).unwrap();
                        }
                    }
                } else {
                    std::fs::copy(after.join(name), dir.join(name)).unwrap();
                }
            }
            let (p, _) = Partition::open(&dir, segment_config()).await.unwrap();
            let served = read_everything(&p).await;
            let cut = step >= 2;
            assert_eq!(
                served,
                if cut {
                    new_log.clone()
                } else {
                    old_log.clone()
                },
                "step {step}"
            );
            // The producer state matches the log served: the last batch of the old log is
            // a duplicate only while it is still there.
            let retry = p
                .append(idempotent_batch(3, 0, 158, 2), AppendWait::Written)
                .await;
            if cut {
                assert!(
                    matches!(
                        retry,
                        Err(LogError::OutOfOrderSequence {
                            expected: 30,
                            got: 158
                        })
                    ),
                    "step {step}: {retry:?}"
                );
            } else {
                assert!(retry.unwrap().duplicate, "step {step}");
            }
            let expected_epochs = if cut {
                vec![(0, 0)]
            } else {
                vec![(0, 0), (1, 80)]
            };
            assert_eq!(p.epoch_entries(), expected_epochs, "step {step}");
        }
    });
}

/// Names of the segment log files in `dir`, sorted.
fn log_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    v.sort();
    v
}

/// A follower's log of idempotent batches over several segments and two epochs.
async fn idempotent_log(p: &Partition) {
    let mut seq = 0;
    for epoch in [0, 1] {
        for _ in 0..40 {
            p.append_with_epoch(idempotent_batch(3, 0, seq, 2), AppendWait::Written, epoch)
                .await
                .unwrap();
            seq += 2;
        }
    }
    assert!(p.segment_count() > 1);
}

/// What a log emptied to start at 500 must be, whatever happened before it was opened:
/// one empty segment there, no epochs, no producers; the leader's batches follow it.
async fn check_started_at_500(p: &Partition, dir: &Path, context: &str) {
    let offsets = p.offsets();
    assert_eq!(
        (offsets.log_start_offset, offsets.log_end_offset),
        (500, 500),
        "{context}"
    );
    assert_eq!(p.segment_count(), 1, "{context}");
    assert_eq!(p.size_bytes(), 0, "{context}");
    assert_eq!(
        log_files(dir),
        vec![format!("{:020}.log", 500)],
        "{context}"
    );
    assert_eq!(p.epoch_entries(), vec![], "{context}");
    assert_eq!(p.latest_epoch(), None, "{context}");
    assert!(!dir.join("start-at").exists(), "{context}");
    assert!(
        matches!(
            p.read(10, 1024).await,
            Err(LogError::OffsetOutOfRange { .. })
        ),
        "{context}"
    );
    // The leader's batches from its log start follow, with their epochs.
    let leader_batch = stored(&idempotent_batch(4, 0, 0, 2), 500, 7);
    let written = p
        .append_replica(leader_batch.clone(), AppendWait::Written)
        .await
        .unwrap();
    assert_eq!(written.first_offset, 500, "{context}");
    assert_eq!(p.epoch_entries(), vec![(7, 500)], "{context}");
    assert_eq!(read_everything(p).await, leader_batch, "{context}");
    // The old producer state went with the old batches: the old log's last batch is no
    // duplicate any more (its producer is unknown, so any sequence is taken).
    let retry = p
        .append(idempotent_batch(3, 0, 158, 2), AppendWait::Written)
        .await
        .unwrap();
    assert!(!retry.duplicate, "{context}");
    assert_eq!(retry.base_offset, 502, "{context}");
}

#[test]
fn given_log_below_the_leaders_start_when_started_at_it_should_be_empty_there_across_reopens() {
    for crash in [false, true] {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
            idempotent_log(&p).await;
            let before = p.offsets().log_end_offset;
            let segments = p.segment_count();
            let report = p.truncate_fully_and_start_at(500).await.unwrap();
            assert_eq!(report.log_end_offset, 500);
            assert_eq!(report.segments_deleted, segments);
            assert!(report.bytes_removed > 0);
            assert!(before < 500);
            check_started_at_500(&p, dir.path(), "before reopening").await;
            let model = read_everything(&p).await;
            if !crash {
                p.close().await.unwrap();
            }
            drop(p);
            let (p, report) = Partition::open(dir.path(), segment_config()).await.unwrap();
            assert_eq!(report.log_start_offset, 500, "crash: {crash}");
            assert_eq!(report.log_end_offset, 504, "crash: {crash}");
            assert_eq!(read_everything(&p).await, model, "crash: {crash}");
            assert_eq!(p.epoch_entries(), vec![(7, 500)], "crash: {crash}");
        });
    }
}

#[test]
fn given_offset_within_or_below_the_log_when_started_at_should_empty_it_or_refuse() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), segment_config()).await.unwrap();
        idempotent_log(&p).await;
        // At the base of a live segment: the new segment is a new file under that name.
        let bases = log_files(dir.path());
        let base: i64 = bases[1].trim_end_matches(".log").parse().unwrap();
        p.truncate_fully_and_start_at(base).await.unwrap();
        assert_eq!(p.offsets().log_start_offset, base);
        assert_eq!(p.offsets().log_end_offset, base);
        assert_eq!(p.size_bytes(), 0);
        assert_eq!(log_files(dir.path()), vec![bases[1].clone()]);
        assert_eq!(
            std::fs::metadata(dir.path().join(&bases[1])).unwrap().len(),
            0
        );
        // Below the log start: refused, nothing changes.
        let refused = p.truncate_fully_and_start_at(base - 1).await;
        assert!(
            matches!(refused, Err(LogError::OffsetOutOfRange { .. })),
            "{refused:?}"
        );
        assert_eq!(p.offsets().log_start_offset, base);
        drop(p);
        let (p, report) = Partition::open(dir.path(), segment_config()).await.unwrap();
        assert_eq!(
            (report.log_start_offset, report.log_end_offset),
            (base, base)
        );
        assert_eq!(p.epoch_entries(), vec![]);
    });
}

/// The start-at file as the engine writes it: the offset and the CRC-32C of its bytes.
fn start_at_file(offset: i64) -> Vec<u8> {
    let mut bytes = offset.to_be_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&offset.to_be_bytes()).to_be_bytes());
    bytes
}

/// A crash inside `truncate_fully_and_start_at`, simulated by combining the files of the
/// log before it with what it had done by each step: every combination opens as the new
/// empty log (the start-at file is there) with no epochs and no producers, never a mix.
#[test]
fn given_crash_at_each_step_of_starting_over_when_reopened_should_be_the_new_empty_log() {
    run(async {
        let root = tempfile::tempdir().unwrap();
        let (before, after) = (root.path().join("before"), root.path().join("after"));
        let (p, _) = Partition::open(&before, segment_config()).await.unwrap();
        idempotent_log(&p).await;
        let old_log = read_everything(&p).await;
        drop(p); // a crash before starting over
        copy_dir(&before, &after);
        let (p, _) = Partition::open(&after, segment_config()).await.unwrap();
        p.truncate_fully_and_start_at(500).await.unwrap();
        drop(p);
        let old_logs = log_files(&before);
        let new_segment = format!("{:020}", 500);
        let steps = [
            "start-at",
            "new segment",
            "oldest half deleted",
            "all old deleted",
            "epochs and snapshot",
            "checkpoint",
        ];
        for (step, name) in steps.iter().enumerate() {
            let dir = root.path().join(format!("step{step}"));
            copy_dir(&before, &dir);
            std::fs::write(dir.join("start-at"), start_at_file(500)).unwrap();
            if step >= 1 {
                for ext in ["log", "index", "timeindex"] {
                    let file = format!("{new_segment}.{ext}");
                    std::fs::copy(after.join(&file), dir.join(&file)).unwrap();
                }
            }
            let deleted = match step {
                0 | 1 => 0,
                2 => old_logs.len() / 2,
                _ => old_logs.len(),
            };
            for log in &old_logs[..deleted] {
                std::fs::remove_file(dir.join(log)).unwrap();
            }
            if step >= 4 {
                for file in ["leader-epoch-checkpoint", "producer-snapshot"] {
                    std::fs::copy(after.join(file), dir.join(file)).unwrap();
                }
            }
            if step >= 5 {
                std::fs::copy(
                    after.join("recovery-checkpoint"),
                    dir.join("recovery-checkpoint"),
                )
                .unwrap();
            }
            let (p, _) = Partition::open(&dir, segment_config()).await.unwrap();
            check_started_at_500(&p, &dir, name).await;
        }
        // A damaged start-at file cannot say where to start: the log opens as found.
        let dir = root.path().join("damaged");
        copy_dir(&before, &dir);
        std::fs::write(dir.join("start-at"), b"garbage").unwrap();
        let (p, _) = Partition::open(&dir, segment_config()).await.unwrap();
        assert_eq!(read_everything(&p).await, old_log);
        assert!(!dir.join("start-at").exists());
    });
}
