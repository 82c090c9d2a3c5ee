//! Behaviour of a partition log through its public API, on a real compio runtime and
//! real files.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use engine::{AppendWait, BatchError, FlushPolicy, LogConfig, LogError, Partition, WritePath};

#[test]
fn given_appends_when_read_back_should_get_assigned_offsets_and_same_bytes() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, report) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!((report.log_start_offset, report.log_end_offset), (0, 0));
        let a = batch(3, 10, 1000);
        let b = batch(2, 10, 2000);
        let ia = p.append(a.clone(), AppendWait::Written).await.unwrap();
        let ib = p.append(b.clone(), AppendWait::Written).await.unwrap();
        assert_eq!((ia.base_offset, ia.last_offset), (0, 2));
        assert_eq!((ib.base_offset, ib.last_offset), (3, 4));
        assert_eq!(p.offsets().log_end_offset, 5);

        let all = p.read(0, 1 << 20).await.unwrap();
        assert_eq!(
            all,
            [with_base_offset(&a, 0), with_base_offset(&b, 3)].concat()
        );
        // An offset inside a batch returns the whole batch that contains it.
        assert_eq!(p.read(4, 1).await.unwrap(), with_base_offset(&b, 3));
        assert!(p.read(5, 100).await.unwrap().is_empty());
        assert!(matches!(
            p.read(6, 100).await,
            Err(LogError::OffsetOutOfRange { requested: 6, .. })
        ));
    });
}

#[test]
fn given_invalid_batch_when_appended_should_refuse_and_leave_log_untouched() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        p.append(batch(1, 5, 0), AppendWait::Written).await.unwrap();
        let before = p.read(0, 1 << 20).await.unwrap();

        let mut corrupt = batch(1, 5, 0);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let err = p.append(corrupt, AppendWait::Written).await.unwrap_err();
        assert!(
            matches!(err, LogError::InvalidBatch(BatchError::CrcMismatch { .. })),
            "{err}"
        );

        let too_big = batch(1, 2 << 20, 0);
        let err = p.append(too_big, AppendWait::Written).await.unwrap_err();
        assert!(
            matches!(err, LogError::InvalidBatch(BatchError::TooLarge { .. })),
            "{err}"
        );

        let err = p
            .append(vec![0; 10], AppendWait::Written)
            .await
            .unwrap_err();
        assert!(
            matches!(err, LogError::InvalidBatch(BatchError::TooShort { .. })),
            "{err}"
        );

        assert_eq!(p.read(0, 1 << 20).await.unwrap(), before);
        assert_eq!(p.offsets().log_end_offset, 1);
    });
}

#[test]
fn given_small_segments_when_appending_should_roll_and_read_across_segments() {
    for write_path in [WritePath::IoUring, WritePath::Inline] {
        roll_and_read_across_segments(write_path);
    }
}

fn roll_and_read_across_segments(write_path: WritePath) {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            write_path,
            ..small_config()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..100 {
            let b = batch(2, 50, i * 10);
            let info = p.append(b.clone(), AppendWait::Written).await.unwrap();
            assert_eq!(info.base_offset, i * 2);
            expected.extend_from_slice(&with_base_offset(&b, i * 2));
        }
        assert!(p.segment_count() > 3, "segments: {}", p.segment_count());
        assert_eq!(read_everything(&p).await, expected);
        // Every offset is readable and starts at its own batch.
        for offset in 0..200 {
            let got = p.read(offset, 1).await.unwrap();
            let first = &split_batches(&got)[0];
            assert_eq!(
                i64::from_be_bytes(first[..8].try_into().unwrap()),
                offset - offset % 2
            );
        }
        // A read spanning segments returns several ranges.
        let slice = p.read_ranges(0, 1 << 20).await.unwrap();
        assert!(slice.ranges.len() > 1);
        assert_eq!(slice.offsets.log_end_offset, 200);
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(files.contains(&"00000000000000000000.log".to_owned()));
        assert!(
            files.iter().any(|f| f.ends_with(".index"))
                && files.iter().any(|f| f.ends_with(".timeindex"))
        );
    });
}

#[test]
fn given_timestamps_when_searching_should_find_first_record_at_or_after() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), small_config()).await.unwrap();
        for i in 0..50 {
            p.append(batch(4, 40, 10_000 + i * 100), AppendWait::Written)
                .await
                .unwrap();
        }
        let found = p.offset_for_timestamp(0).await.unwrap().unwrap();
        assert_eq!((found.offset, found.timestamp), (0, 10_000));
        let found = p
            .offset_for_timestamp(10_000 + 7 * 100 + 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((found.offset, found.timestamp), (7 * 4 + 2, 10_702));
        let found = p
            .offset_for_timestamp(10_000 + 7 * 100 + 50)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((found.offset, found.timestamp), (8 * 4, 10_800));
        assert_eq!(p.offset_for_timestamp(1_000_000).await.unwrap(), None);
    });
}

#[test]
fn given_concurrent_durable_appends_should_share_syncs() {
    for write_path in [WritePath::IoUring, WritePath::Inline] {
        concurrent_durable_appends_share_syncs(write_path);
    }
}

fn concurrent_durable_appends_share_syncs(write_path: WritePath) {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush_policy: FlushPolicy::EveryAppend,
            write_path,
            ..LogConfig::default()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let p = p.clone();
                compio::runtime::spawn(async move {
                    p.append(batch(1, 100, i), AppendWait::Durable).await
                })
            })
            .collect();
        let mut offsets = Vec::new();
        for t in tasks {
            let info = t.await.unwrap().unwrap();
            assert!(info.durable);
            offsets.push(info.base_offset);
        }
        offsets.sort();
        assert_eq!(offsets, (0..64).collect::<Vec<_>>());
        let stats = p.stats();
        assert_eq!(stats.batches, 64);
        assert!(
            stats.syncs < 64,
            "group commit should share syncs: {stats:?}"
        );
        assert_eq!(p.offsets().durable_offset, 64);
    });
}

#[test]
fn given_written_wait_under_every_append_policy_should_not_wait_for_sync() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush_policy: FlushPolicy::EveryAppend,
            ..LogConfig::default()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        let info = p
            .append(batch(1, 10, 0), AppendWait::Written)
            .await
            .unwrap();
        assert!(!info.durable);
        assert_eq!(p.stats().syncs, 0);
        assert_eq!(p.flush().await.unwrap(), 1);
        assert_eq!(p.stats().syncs, 1);
    });
}

#[test]
fn given_interval_policy_when_durable_append_should_resolve_at_next_tick() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush_policy: FlushPolicy::Interval(Duration::from_millis(50)),
            ..LogConfig::default()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        let info = p
            .append(batch(1, 10, 0), AppendWait::Durable)
            .await
            .unwrap();
        assert!(info.durable);
        assert_eq!(p.offsets().durable_offset, 1);
        assert_eq!(p.stats().syncs, 1);
    });
}

/// The interval's sync runs beside the appends: one made while it runs is not covered by
/// it, and must be answered only by a later one (never before its bytes are synced).
#[test]
fn given_interval_syncs_running_beside_appends_should_answer_durable_waiters_only_once_covered() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush_policy: FlushPolicy::Interval(Duration::from_millis(2)),
            ..LogConfig::default()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        // Each write: the log end it made readable, and how many syncs had started then.
        // Only a sync started after a batch was written covers it, and syncs end in the
        // order they start (one file here, one sync at a time).
        let writes: Rc<RefCell<Vec<(i64, u64)>>> = Rc::default();
        {
            let (writes, observed) = (Rc::clone(&writes), p.clone());
            p.set_write_observer(Rc::new(move || {
                let end = observed.offsets().log_end_offset;
                writes
                    .borrow_mut()
                    .push((end, observed.stats().sync_starts));
            }));
        }
        // Appends keep coming, each on its own task, so that some are written while a
        // sync runs.
        let mut tasks = Vec::new();
        for i in 0..400 {
            let p = p.clone();
            let writes = Rc::clone(&writes);
            tasks.push(compio::runtime::spawn(async move {
                let info = p
                    .append(batch(1, 100, i), AppendWait::Durable)
                    .await
                    .unwrap();
                assert!(info.durable);
                let durable = p.offsets().durable_offset;
                assert!(
                    durable > info.last_offset,
                    "answered at durable offset {durable}, before its offset {} was synced",
                    info.last_offset
                );
                let started_before = writes
                    .borrow()
                    .iter()
                    .find(|(end, _)| *end > info.last_offset)
                    .map(|(_, starts)| *starts)
                    .unwrap();
                assert!(
                    p.stats().syncs > started_before,
                    "offset {} answered by a sync that started before it was written",
                    info.last_offset
                );
            }));
            compio::time::sleep(Duration::from_micros(100)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(p.offsets().durable_offset, 400);
        assert!(p.stats().syncs > 1, "{:?}", p.stats());
    });
}

#[test]
fn given_retention_by_size_should_delete_oldest_segments_but_never_active() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_bytes: Some(4096),
            retention_age: None,
            ..small_config()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        for i in 0..100 {
            p.append(batch(2, 50, i), AppendWait::Written)
                .await
                .unwrap();
        }
        // The last roll's sealing holds its segment's files until it ends.
        p.flush().await.unwrap();
        let before = p.segment_count();
        let report = p.apply_retention(engine::now_ms());
        assert!(report.segments_deleted > 0);
        assert_eq!(p.segment_count(), before - report.segments_deleted);
        assert!(p.size_bytes() >= 4096);
        assert_eq!(p.offsets().log_start_offset, report.log_start_offset);
        assert!(matches!(
            p.read(0, 10).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert!(
            !p.read(report.log_start_offset, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(!dir.path().join("00000000000000000000.log").exists());
    });
}

#[test]
fn given_retention_by_time_when_reader_holds_segment_should_unlink_it_and_let_the_reader_read() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_age: Some(Duration::from_secs(60)),
            ..small_config()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        for i in 0..60 {
            p.append(batch(2, 50, 1_000 + i), AppendWait::Written)
                .await
                .unwrap();
        }
        p.flush().await.unwrap(); // the last roll's sealing holds its segment's files
        let held = p.read_ranges(0, 100).await.unwrap();
        let first = dir.path().join("00000000000000000000.log");
        let report = p.apply_retention(engine::now_ms());
        assert_eq!(
            report.segments_deleted,
            p.segment_count() + report.segments_deleted - 1
        );
        assert_eq!(p.segment_count(), 1, "only the active segment survives");
        // The name goes at once (a segment at the same base may come next); the reader
        // holding its files reads on.
        assert!(!first.exists());
        assert_eq!(first_base_offset(&held), 0);
        drop(held);
    });
}

#[test]
fn given_clean_close_when_reopened_should_skip_validation_and_continue_offsets() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), small_config()).await.unwrap();
        for i in 0..40 {
            p.append(batch(3, 30, i), AppendWait::Written)
                .await
                .unwrap();
        }
        let before = read_everything(&p).await;
        p.close().await.unwrap();
        assert!(matches!(
            p.append(batch(1, 1, 0), AppendWait::Written).await,
            Err(LogError::Closed)
        ));
        drop(p);

        let (p, report) = Partition::open(dir.path(), small_config()).await.unwrap();
        assert!(report.clean_shutdown);
        assert_eq!(report.segments_validated, 0);
        assert_eq!(report.log_end_offset, 120);
        assert_eq!(read_everything(&p).await, before);
        let info = p.append(batch(1, 1, 0), AppendWait::Written).await.unwrap();
        assert_eq!(info.base_offset, 120);
        // The marker is gone once open: a crash now must not look clean.
        drop(p);
        let (_, report) = Partition::open(dir.path(), small_config()).await.unwrap();
        assert!(!report.clean_shutdown);
        assert_eq!(report.log_end_offset, 121);
    });
}

#[test]
fn given_unclean_shutdown_when_reopened_should_validate_since_checkpoint() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Partition::open(dir.path(), small_config()).await.unwrap();
        for i in 0..40 {
            p.append(batch(3, 30, i), AppendWait::Written)
                .await
                .unwrap();
        }
        let segments = p.segment_count();
        p.flush().await.unwrap(); // the last roll's sealing has ended
        drop(p); // no close: as after a crash
        let (_, report) = Partition::open(dir.path(), small_config()).await.unwrap();
        assert!(!report.clean_shutdown);
        // Rolled segments were synced and checkpointed; only the active one is re-validated.
        assert_eq!(report.segments_validated, 1);
        assert_eq!(report.segments, segments);
        assert_eq!(report.log_end_offset, 120);
    });
}

#[test]
fn given_rolls_and_no_durable_appends_should_let_retention_delete_the_rolled_segments() {
    // Nothing but the sealing may hold a rolled segment's files: with no durable sync to
    // come (no waiters under EveryAppend, none at all under Never), a segment kept among
    // the writer's unsynced files was never unlinked, and its disk space never freed.
    for policy in [FlushPolicy::Never, FlushPolicy::EveryAppend] {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                flush_policy: policy,
                retention_bytes: Some(4096),
                ..small_config()
            };
            let (p, _) = Partition::open(dir.path(), config).await.unwrap();
            for i in 0..100 {
                p.append(batch(2, 50, i), AppendWait::Written)
                    .await
                    .unwrap();
            }
            // The last roll's sealing ends on its own (no flush).
            compio::time::sleep(Duration::from_millis(300)).await;
            let report = p.apply_retention(engine::now_ms());
            assert!(report.segments_deleted > 0, "{policy:?}");
            let logs = files_with(dir.path(), ".log").len();
            assert_eq!(
                logs,
                p.segment_count(),
                "{policy:?}: segments deleted by retention are still on disk"
            );
        });
    }
}

#[test]
fn given_appends_right_after_a_roll_when_dropped_before_its_sealing_ends_should_recover_them_all() {
    for policy in [
        FlushPolicy::Never,
        FlushPolicy::Interval(Duration::from_millis(5)),
        FlushPolicy::EveryAppend,
    ] {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                flush_policy: policy,
                ..small_config()
            };
            let (p, _) = Partition::open(dir.path(), config.clone()).await.unwrap();
            // After each roll, the next appends go in while it seals.
            for i in 0..120 {
                let wait = if i % 7 == 6 {
                    AppendWait::Durable
                } else {
                    AppendWait::Written
                };
                p.append(batch(3, 30, i), wait).await.unwrap();
            }
            let segments = p.segment_count();
            assert!(
                segments >= 4,
                "{segments} segments: the test needs several rolls"
            );
            let before = read_everything(&p).await;
            drop(p); // no close, no flush: the last roll's sealing may still run
            let (p, report) = Partition::open(dir.path(), config).await.unwrap();
            assert!(!report.clean_shutdown);
            assert!(
                (1..=2).contains(&report.segments_validated),
                "{policy:?}: {} segments validated; the checkpoint lags at most one roll",
                report.segments_validated
            );
            assert_eq!(report.log_end_offset, 360, "{policy:?}");
            assert_eq!(report.segments, segments, "{policy:?}");
            assert_eq!(read_everything(&p).await, before, "{policy:?}");
            p.close().await.unwrap();
        });
    }
}

#[test]
fn given_partition_when_deleted_should_remove_directory() {
    run(async {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("orders-0");
        let (p, _) = Partition::open(&dir, small_config()).await.unwrap();
        for i in 0..20 {
            p.append(batch(2, 50, i), AppendWait::Written)
                .await
                .unwrap();
        }
        let held = p.read_ranges(0, 100).await.unwrap();
        p.delete().await.unwrap();
        assert!(!dir.exists());
        // A reader holding ranges keeps reading from the open file.
        assert_eq!(first_base_offset(&held), 0);
        let (p, report) = Partition::open(&dir, small_config()).await.unwrap();
        assert_eq!(
            report.log_end_offset, 0,
            "a recreated partition starts empty"
        );
        // Deleted again at once, then the renamed directories are removed off the core.
        p.delete().await.unwrap();
        let left = || {
            std::fs::read_dir(root.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !left().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(left().is_empty(), "{:?} are still there", left());
        drop(held);
    });
}

#[test]
fn given_bad_config_when_opening_should_refuse() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 10,
            ..LogConfig::default()
        };
        assert!(matches!(
            Partition::open(dir.path(), config).await,
            Err(LogError::Config(_))
        ));
    });
}

#[test]
fn given_polling_fallback_driver_should_append_read_and_recover() {
    let mut proactor = compio::driver::ProactorBuilder::new();
    proactor.driver_type(compio::driver::DriverType::Poll);
    let rt = compio::runtime::Runtime::builder()
        .with_proactor(proactor)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        assert_eq!(engine::io_mode::current(), Some(engine::IoMode::Fallback));
        let (p, _) = Partition::open(dir.path(), small_config()).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..30 {
            let b = batch(2, 50, i);
            let info = p.append(b.clone(), AppendWait::Written).await.unwrap();
            expected.extend_from_slice(&with_base_offset(&b, info.base_offset));
        }
        assert_eq!(read_everything(&p).await, expected);
        drop(p);
        let (p, report) = Partition::open(dir.path(), small_config()).await.unwrap();
        assert!(!report.clean_shutdown);
        assert_eq!(read_everything(&p).await, expected);
    });
}

#[test]
fn given_segment_age_limit_when_appending_later_should_roll_by_age() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_age_max: Some(Duration::from_millis(30)),
            ..LogConfig::default()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        let now = engine::now_ms();
        p.append(batch(1, 10, now), AppendWait::Written)
            .await
            .unwrap();
        p.append(batch(1, 10, now), AppendWait::Written)
            .await
            .unwrap();
        assert_eq!(p.segment_count(), 1);
        compio::time::sleep(Duration::from_millis(60)).await;
        let info = p
            .append(batch(1, 10, engine::now_ms()), AppendWait::Written)
            .await
            .unwrap();
        assert_eq!(p.segment_count(), 2);
        assert!(
            dir.path()
                .join(format!("{:020}.log", info.base_offset))
                .exists()
        );
    });
}

#[test]
fn given_idempotent_producer_when_batches_retried_or_skipped_should_dedupe_and_refuse_gaps_across_restarts()
 {
    for crash in [false, true] {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                segment_age_max: None,
                ..small_config()
            };
            let (p, _) = Partition::open(dir.path(), config.clone()).await.unwrap();
            let mut next_seq = 0;
            let mut firsts = Vec::new();
            for _ in 0..40 {
                let info = p
                    .append(idempotent_batch(42, 0, next_seq, 3), AppendWait::Written)
                    .await
                    .unwrap();
                assert!(!info.duplicate);
                firsts.push((next_seq, info.base_offset));
                next_seq += 3;
            }
            assert!(p.segment_count() > 1, "rolled at least once (snapshots)");
            // A retry of the last batch is answered with its original offsets, not written.
            let end = p.offsets().log_end_offset;
            let (seq, base) = *firsts.last().unwrap();
            let again = p
                .append(idempotent_batch(42, 0, seq, 3), AppendWait::Written)
                .await
                .unwrap();
            assert!(again.duplicate);
            assert_eq!(again.base_offset, base);
            assert_eq!(p.offsets().log_end_offset, end);
            // A gap is refused.
            let gap = p
                .append(
                    idempotent_batch(42, 0, next_seq + 1, 1),
                    AppendWait::Written,
                )
                .await;
            assert!(
                matches!(gap, Err(LogError::OutOfOrderSequence { expected, got }) if expected == next_seq && got == next_seq + 1)
            );
            if crash {
                drop(p);
            } else {
                p.close().await.unwrap();
                drop(p);
            }
            let (p, _) = Partition::open(dir.path(), config).await.unwrap();
            let again = p
                .append(idempotent_batch(42, 0, seq, 3), AppendWait::Written)
                .await
                .unwrap();
            assert!(
                again.duplicate,
                "producer state survives the restart (crash: {crash})"
            );
            assert_eq!(again.base_offset, base);
            let next = p
                .append(idempotent_batch(42, 0, next_seq, 1), AppendWait::Written)
                .await
                .unwrap();
            assert_eq!(next.base_offset, end);
            let old_epoch = p
                .append(idempotent_batch(42, -1, 0, 1), AppendWait::Written)
                .await;
            assert!(matches!(
                old_epoch,
                Err(LogError::InvalidProducerEpoch { .. })
            ));
        });
    }
}

#[test]
fn given_reads_should_report_the_offset_after_the_last_whole_batch() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            index_interval_bytes: 64,
            ..LogConfig::default()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        // Batches of 3 records, each larger than the index interval: every batch after
        // the first is indexed, so the count is exact even when a read is cut.
        let mut sizes = Vec::new();
        for i in 0..10 {
            let b = batch(3, 100, i);
            sizes.push(b.len() as u64);
            p.append(b, AppendWait::Written).await.unwrap();
        }
        let whole = |n: usize| sizes[..n].iter().sum::<u64>();
        // Reaching the log end: exact.
        assert_eq!(p.read_ranges(0, 1 << 20).await.unwrap().end_offset, 30);
        assert_eq!(p.read_ranges(4, 1 << 20).await.unwrap().end_offset, 30);
        // At the log end: nothing read, end is the offset asked for.
        assert_eq!(p.read_ranges(30, 1 << 20).await.unwrap().end_offset, 30);
        // Cut inside the fifth batch: four whole batches, 12 offsets.
        let cut = p.read_ranges(0, whole(4) + 10).await.unwrap();
        assert_eq!(cut.total_bytes(), whole(4) + 10);
        assert_eq!(cut.end_offset, 12);
        // Cut exactly at a batch boundary.
        assert_eq!(p.read_ranges(0, whole(4)).await.unwrap().end_offset, 12);
        // Smaller than the first batch: the first batch is still whole.
        assert_eq!(p.read_ranges(7, 1).await.unwrap().end_offset, 9);
    });
}

#[test]
fn given_write_observer_should_see_each_write_readable_before_it_is_synced() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush_policy: FlushPolicy::EveryAppend,
            ..LogConfig::default()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let (sink, handle) = (std::rc::Rc::clone(&seen), p.clone());
        p.set_write_observer(std::rc::Rc::new(move || {
            let o = handle.offsets();
            sink.borrow_mut().push((o.log_end_offset, o.durable_offset));
        }));
        for i in 0..3 {
            p.append(batch(2, 10, i), AppendWait::Durable)
                .await
                .unwrap();
        }
        // Called once per write, with the batch readable and not yet synced.
        assert_eq!(*seen.borrow(), vec![(2, 0), (4, 2), (6, 4)]);
        assert_eq!(p.offsets().durable_offset, 6);
    });
}

#[test]
fn given_sync_observer_should_see_every_fdatasync_and_its_duration() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush_policy: FlushPolicy::EveryAppend,
            ..LogConfig::default()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = std::rc::Rc::clone(&seen);
        p.set_sync_observer(std::rc::Rc::new(move |d| sink.borrow_mut().push(d)));
        for i in 0..3 {
            p.append(batch(1, 10, i), AppendWait::Durable)
                .await
                .unwrap();
        }
        let stats = p.stats();
        assert_eq!(stats.syncs, 3);
        assert_eq!(seen.borrow().len(), 3);
        assert_eq!(seen.borrow().iter().sum::<Duration>(), stats.sync_time);
        assert!(stats.sync_time > Duration::ZERO);
    });
}

/// The newest batches of the active segment are found in memory, older ones by a header
/// scan from an index entry: both must find the batch holding any offset, and a read
/// limited below the log end must stop at the start of the batch holding its limit, across
/// a truncation into the recent batches and a roll.
#[test]
fn given_many_small_batches_reads_should_start_and_stop_at_the_batch_holding_an_offset() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 48 * 1024,
            batch_bytes_max: 1024,
            ..LogConfig::default()
        };
        let (p, _) = Partition::open(dir.path(), config).await.unwrap();
        // More batches than the 256 kept in memory, of 1 to 3 records.
        let mut batches: Vec<(i64, i64)> = Vec::new();
        let append = |i: usize| batch(1 + i % 3, 20, i as i64);
        for i in 0..700 {
            let info = p.append(append(i), AppendWait::Written).await.unwrap();
            batches.push((info.base_offset, info.last_offset));
        }
        assert!(p.segment_count() > 1, "rolled");
        check_batches_found(&p, &batches).await;

        // Cut inside the recent batches, then append again.
        let (cut, _) = batches[650];
        p.truncate_to(cut).await.unwrap();
        batches.truncate(650);
        for i in 650..800 {
            let info = p.append(append(i), AppendWait::Written).await.unwrap();
            batches.push((info.base_offset, info.last_offset));
        }
        check_batches_found(&p, &batches).await;
    });
}

async fn check_batches_found(p: &Partition, batches: &[(i64, i64)]) {
    let start = p.offsets().log_start_offset;
    for &(base, last) in batches {
        for offset in base..=last {
            let got = p.read(offset, 1).await.unwrap();
            let first = &split_batches(&got)[0];
            let first_base = i64::from_be_bytes(first[..8].try_into().unwrap());
            assert_eq!(first_base, base, "read at {offset}");
            // A limit inside (or at the start of) this batch stops the read before it.
            let slice = p.read_ranges_upto(start, 1 << 30, offset).await.unwrap();
            let expected_end = if base == start { start } else { base };
            assert_eq!(slice.end_offset, expected_end, "read up to {offset}");
        }
    }
}

/// The base offset of the first batch a held range's file starts with, read through the
/// open descriptor (its name may be gone).
fn first_base_offset(held: &engine::ReadSlice) -> i64 {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let fd = held.ranges[0].files.log_file().as_raw_fd();
    let file = std::fs::File::open(format!("/proc/self/fd/{fd}")).unwrap();
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, 0).unwrap();
    i64::from_be_bytes(buf)
}
