//! Micro-benchmarks of the engine: append throughput by batch size and flush policy,
//! group commit under concurrent durable appends, appends beside interval syncs, index
//! lookups, batch validation, and how long deleting a partition holds its core.
//!
//! Run: `cargo bench -p benches` (set `BENCH_DIR` to measure a particular disk; the
//! default is the system temp directory).

use std::time::{Duration, Instant};

use compio::runtime::Runtime;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::batch::{self, build::build_batch};
use engine::offset_index::{OffsetEntry, OffsetIndex};
use engine::{AppendWait, FlushPolicy, LogConfig, Partition, WritePath};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// A valid uncompressed batch of about `bytes` bytes made of 1 KiB-ish records.
fn batch_of(bytes: usize) -> Vec<u8> {
    let record_bytes = bytes.min(KIB);
    let count = (bytes / record_bytes).max(1);
    let value = vec![0x5a_u8; record_bytes - 12];
    let values: Vec<&[u8]> = (0..count).map(|_| value.as_slice()).collect();
    build_batch(&values, 1_700_000_000_000)
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("BENCH_DIR must be writable"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

fn log_config(flush_policy: FlushPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 64 * MIB as u64,
        batch_bytes_max: 2 * MIB,
        flush_policy,
        // Keep the disk footprint bounded however long criterion runs.
        retention_bytes: Some(256 * MIB as u64),
        retention_age: None,
        ..LogConfig::default()
    }
}

fn append_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    let flushes = [
        ("flush_none", FlushPolicy::Never, AppendWait::Written),
        (
            "flush_per_append",
            FlushPolicy::EveryAppend,
            AppendWait::Durable,
        ),
    ];
    let paths = [
        ("io_uring", WritePath::IoUring),
        ("inline", WritePath::Inline),
        ("adaptive", WritePath::Adaptive),
    ];
    for (flush_label, policy, wait) in flushes {
        for (path_label, write_path) in paths {
            for size in [KIB, 16 * KIB, MIB] {
                let config = LogConfig {
                    write_path,
                    ..log_config(policy)
                };
                let id = BenchmarkId::new(
                    format!("{flush_label}/{path_label}"),
                    format!("{}KiB", size / KIB),
                );
                bench_appends(&mut group, id, config, &batch_of(size), wait);
            }
        }
    }
    group.finish();
}

/// One producer appending `batch` back to back, each append awaited.
fn bench_appends(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    config: LogConfig,
    batch: &[u8],
    wait: AppendWait,
) {
    let rt = Runtime::new().expect("runtime");
    let dir = bench_dir();
    let (partition, _) = rt
        .block_on(Partition::open(dir.path(), config))
        .expect("open");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    partition
                        .append(batch.to_vec(), wait)
                        .await
                        .expect("append");
                }
                start.elapsed()
            });
            partition.apply_retention(engine::now_ms());
            elapsed
        })
    });
    rt.block_on(partition.close()).expect("close");
}

/// One producer appending 1 KiB batches back to back (each written before the next) to a
/// log synced every 10 ms (`flush = interval`, Kafka's `log.flush.interval.ms`): what the
/// periodic fdatasync costs the appends around it. Before #16 the partition's writer
/// awaited each sync inline, and appends waited behind it; now it runs beside them.
fn interval_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("interval_sync");
    group.measurement_time(Duration::from_secs(10));
    group.sample_size(20);
    let config = LogConfig {
        write_path: WritePath::Inline,
        ..log_config(FlushPolicy::Interval(Duration::from_millis(10)))
    };
    bench_appends(
        &mut group,
        BenchmarkId::new("every_10ms", "1KiB"),
        config,
        &batch_of(KIB),
        AppendWait::Written,
    );
    group.finish();
}

/// 16 producers appending 16 KiB batches concurrently, each waiting for durability:
/// group commit lets them share fdatasyncs.
fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_commit");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    for (path_label, write_path) in [
        ("io_uring", WritePath::IoUring),
        ("inline", WritePath::Inline),
    ] {
        let config = LogConfig {
            write_path,
            ..log_config(FlushPolicy::EveryAppend)
        };
        bench_concurrent_durable(&mut group, path_label, config);
    }
    group.finish();
}

fn bench_concurrent_durable(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    path_label: &str,
    config: LogConfig,
) {
    const PRODUCERS: u64 = 16;
    let rt = Runtime::new().expect("runtime");
    let dir = bench_dir();
    let batch = batch_of(16 * KIB);
    let (partition, _) = rt
        .block_on(Partition::open(dir.path(), config))
        .expect("open");
    group.throughput(Throughput::Bytes(batch.len() as u64 * PRODUCERS));
    group.bench_function(format!("16_producers_16KiB_durable/{path_label}"), |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..PRODUCERS)
                    .map(|_| {
                        let p = partition.clone();
                        let batch = batch.clone();
                        compio::runtime::spawn(async move {
                            for _ in 0..iters {
                                p.append(batch.clone(), AppendWait::Durable)
                                    .await
                                    .expect("append");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
                start.elapsed()
            });
            partition.apply_retention(engine::now_ms());
            elapsed
        })
    });
    let stats = partition.stats();
    eprintln!(
        "group_commit/{path_label}: {} batches, {} syncs ({:.1} batches per sync)",
        stats.batches,
        stats.syncs,
        stats.batches as f64 / stats.syncs.max(1) as f64
    );
    rt.block_on(partition.close()).expect("close");
}

fn index_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("index_lookup");
    // In-memory sparse index of a full 1 GiB segment at the default 4 KiB interval.
    let mut index = OffsetIndex::default();
    let entries = 262_144u32;
    for i in 1..=entries {
        index.push(OffsetEntry {
            relative_offset: i * 4,
            position: i * 4096,
        });
    }
    let mut probe = 0u32;
    group.bench_function("offset_index_floor_256k_entries", |b| {
        b.iter(|| {
            probe = probe.wrapping_add(7919) % (entries * 4);
            std::hint::black_box(index.floor(probe))
        })
    });

    // Offset -> file range through the partition: index floor plus a header scan.
    let rt = Runtime::new().expect("runtime");
    let batches = 20_000i64;
    let (_dir, partition) = filled_partition(&rt, &batch_of(KIB), batches);
    let mut offset = 0i64;
    group.bench_function("partition_read_ranges_20k_batches", |b| {
        b.iter(|| {
            offset = (offset + 7919) % batches;
            rt.block_on(partition.read_ranges(offset, 64 * KIB as u64))
                .expect("read")
        })
    });
    rt.block_on(partition.close()).expect("close");

    // A consumer at the tail of small batches (200 bytes, ~20 per index interval): the
    // batch is among the recent ones kept in memory; further back it is found by a
    // header scan from the index floor, through one read window.
    let (_dir, partition) = filled_partition(&rt, &batch_of(200), batches);
    let mut probe = 0i64;
    group.bench_function("partition_read_ranges_tail_200B_batches", |b| {
        b.iter(|| {
            probe = (probe + 37) % 200;
            rt.block_on(partition.read_ranges(batches - 1 - probe, 64 * KIB as u64))
                .expect("read")
        })
    });
    group.bench_function("partition_read_ranges_old_200B_batches", |b| {
        b.iter(|| {
            probe = (probe + 7919) % (batches - 1000);
            rt.block_on(partition.read_ranges(probe, 64 * KIB as u64))
                .expect("read")
        })
    });
    rt.block_on(partition.close()).expect("close");
    group.finish();
}

/// A partition (in its own temporary directory) holding `count` copies of `batch`.
fn filled_partition(rt: &Runtime, batch: &[u8], count: i64) -> (tempfile::TempDir, Partition) {
    let dir = bench_dir();
    let (partition, _) = rt
        .block_on(Partition::open(dir.path(), log_config(FlushPolicy::Never)))
        .expect("open");
    rt.block_on(async {
        for _ in 0..count {
            partition
                .append(batch.to_vec(), AppendWait::Written)
                .await
                .expect("append");
        }
    });
    (dir, partition)
}

fn crc_validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_batch");
    for size in [KIB, 16 * KIB, MIB] {
        let batch = batch_of(size);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_function(
            BenchmarkId::from_parameter(format!("{}KiB", size / KIB)),
            |b| b.iter(|| batch::validate(std::hint::black_box(&batch), 2 * MIB).expect("valid")),
        );
    }
    group.finish();
}

/// How long deleting a partition of 256 MiB (in the page cache) holds its core: the
/// last close of an unlinked file frees its pages in the closing thread, which the
/// engine leaves to its reaper thread.
fn delete_stall(c: &mut Criterion) {
    let mut group = c.benchmark_group("delete_partition");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let rt = Runtime::new().expect("runtime");
    let batch = batch_of(MIB);
    group.bench_function("256MiB_on_the_core", |b| {
        b.iter_custom(|iters| {
            let mut on_core = Duration::ZERO;
            for _ in 0..iters {
                let dir = bench_dir();
                let config = LogConfig {
                    retention_bytes: None,
                    ..log_config(FlushPolicy::Never)
                };
                rt.block_on(async {
                    let (p, _) = Partition::open(dir.path().join("t-0"), config)
                        .await
                        .expect("open");
                    for _ in 0..256 {
                        p.append(batch.clone(), AppendWait::Written)
                            .await
                            .expect("append");
                    }
                    p.flush().await.expect("flush");
                    let start = Instant::now();
                    p.delete().await.expect("delete");
                    on_core += start.elapsed();
                });
            }
            on_core
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    crc_validation,
    index_lookup,
    append_throughput,
    group_commit,
    interval_sync,
    delete_stall
);
criterion_main!(benches);
