//! The broker's metrics, kept in plain atomics where they happen and merged only when
//! scraped: each core writes its own request and flush histograms, each partition's
//! counters are written by the cores that serve it (appends on its owner, fetches on
//! the fetching connection's core), and the acceptor counts connections. Nothing here
//! takes a lock on the produce or fetch path; the partition map is locked when a
//! partition opens or is deleted, and by the scrape.
//!
//! The scrape encodes everything through `prometheus-client` (the Prometheus org's
//! crate) as one `Collector`, in the OpenMetrics text format that Prometheus reads;
//! `metrics_http` serves it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use engine::RecoveryReport;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::kafka::protocol::SUPPORTED_APIS;
use crate::runtime::limits::{ConnectionLimits, RequestMemory};
use crate::runtime::storage_health::StorageHealth;

/// Request latency buckets, seconds (a long-polling Fetch waits up to its max_wait_ms).
const REQUEST_BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// fdatasync latency buckets, seconds.
const FLUSH_BUCKETS_S: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    5.0,
];

/// A histogram of durations with fixed buckets, written by one core with relaxed atomics.
pub struct Histogram {
    bounds_ns: Vec<u64>,
    /// One count per bucket plus the last, unbounded one (not cumulative).
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds_s: &'static [f64]) -> Self {
        Self {
            bounds_ns: bounds_s.iter().map(|s| (s * 1e9) as u64).collect(),
            counts: (0..=bounds_s.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.bounds_ns.partition_point(|&bound| bound < ns);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// Histograms merged across cores for one scrape.
struct Merged {
    bounds_s: &'static [f64],
    counts: Vec<u64>,
    sum_ns: u64,
}

impl Merged {
    fn of<'a>(parts: impl Iterator<Item = &'a Histogram>, bounds_s: &'static [f64]) -> Self {
        let mut merged = Self {
            bounds_s,
            counts: vec![0; bounds_s.len() + 1],
            sum_ns: 0,
        };
        for h in parts {
            for (total, c) in merged.counts.iter_mut().zip(&h.counts) {
                *total += c.load(Ordering::Relaxed);
            }
            merged.sum_ns = merged.sum_ns.wrapping_add(h.sum_ns.load(Ordering::Relaxed));
        }
        merged
    }

    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds_s
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            self.sum_ns as f64 / 1e9,
            self.counts.iter().sum(),
            &buckets,
            None,
        )
    }
}

/// What one core records: request latency per API, fdatasync latency.
pub struct CoreMetrics {
    /// One per entry of `SUPPORTED_APIS`, in its order.
    requests: Vec<Histogram>,
    /// Per entry of `SUPPORTED_APIS`, a count per version of its range: which versions
    /// clients really speak.
    versions: Vec<Vec<AtomicU64>>,
    flush: Histogram,
}

impl CoreMetrics {
    fn new() -> Self {
        Self {
            requests: SUPPORTED_APIS
                .iter()
                .map(|_| Histogram::new(REQUEST_BUCKETS_S))
                .collect(),
            versions: SUPPORTED_APIS
                .iter()
                .map(|&(_, min, max)| (min..=max).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            flush: Histogram::new(FLUSH_BUCKETS_S),
        }
    }

    /// Records a request from its frame being read to its response being written. Keys
    /// and versions we do not serve are not recorded (their connection is closed).
    pub fn observe_request(&self, api_key: i16, version: i16, took: Duration) {
        if let Some(i) = SUPPORTED_APIS
            .iter()
            .position(|(k, _, _)| *k as i16 == api_key)
        {
            self.requests[i].observe(took);
            let min = SUPPORTED_APIS[i].1;
            if let Some(count) = usize::try_from(version - min)
                .ok()
                .and_then(|v| self.versions[i].get(v))
            {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn observe_flush(&self, took: Duration) {
        self.flush.observe(took);
    }
}

/// Bytes and records in (appended) and out (sent by Fetch) of one partition. The two
/// directions sit on separate cache lines: they are usually written by different cores.
#[derive(Default)]
pub struct PartitionCounters {
    inbound: Pair,
    outbound: Pair,
    /// Appends refused with KAFKA_STORAGE_ERROR (rare: no cache line of its own).
    storage_errors: AtomicU64,
}

#[derive(Default)]
#[repr(align(128))]
struct Pair {
    bytes: AtomicU64,
    records: AtomicU64,
}

impl PartitionCounters {
    pub fn record_in(&self, bytes: u64, records: u64) {
        self.inbound.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.inbound.records.fetch_add(records, Ordering::Relaxed);
    }

    pub fn record_out(&self, bytes: u64, records: u64) {
        self.outbound.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.outbound.records.fetch_add(records, Ordering::Relaxed);
    }

    pub fn record_storage_error(&self) {
        self.storage_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a connection ended, as the `reason` label of `broker_connections_closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// The client closed it (or the broker stopped).
    Client,
    /// Nothing (or only part of a frame) arrived for `connections_max_idle_ms`.
    Idle,
    /// A response could not be written for `connections_send_timeout_ms`.
    SendTimeout,
    /// A frame length out of bounds.
    FrameTooLarge,
    /// A request the broker does not serve or cannot decode.
    BadRequest,
    /// A socket error.
    Io,
    /// A partition refused one of its acks=0 appends (Kafka closes those at once).
    ProduceRefused,
}

const CLOSE_KINDS: [(CloseKind, &str); 7] = [
    (CloseKind::Client, "client"),
    (CloseKind::Idle, "idle"),
    (CloseKind::SendTimeout, "send_timeout"),
    (CloseKind::FrameTooLarge, "frame_too_large"),
    (CloseKind::BadRequest, "bad_request"),
    (CloseKind::Io, "io"),
    (CloseKind::ProduceRefused, "produce_refused"),
];

/// Why a connection was refused at accept, as the `reason` label of
/// `broker_connections_rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    MaxConnections,
    MaxConnectionsPerIp,
    /// The chosen core's inbox was full, it was at `connections_per_core_max`, or the
    /// broker was stopping.
    CoreBusy,
}

const REJECT_KINDS: [(RejectKind, &str); 3] = [
    (RejectKind::MaxConnections, "max_connections"),
    (RejectKind::MaxConnectionsPerIp, "max_connections_per_ip"),
    (RejectKind::CoreBusy, "core_busy"),
];

#[derive(Default)]
struct RecoveryTotals {
    partitions: AtomicU64,
    unclean: AtomicU64,
    segments_validated: AtomicU64,
    bytes_validated: AtomicU64,
    bytes_truncated: AtomicU64,
    segments_deleted: AtomicU64,
    duration_ns: AtomicU64,
}

type PartitionKey = (String, i32);

/// Every metric of the broker.
pub struct Metrics {
    cores: Vec<CoreMetrics>,
    partitions: std::sync::Mutex<BTreeMap<PartitionKey, Arc<PartitionCounters>>>,
    connections: Arc<ConnectionLimits>,
    memory: Arc<RequestMemory>,
    storage: Arc<StorageHealth>,
    accepted: AtomicU64,
    moved: AtomicU64,
    rejected: [AtomicU64; REJECT_KINDS.len()],
    closed: [AtomicU64; CLOSE_KINDS.len()],
    recovery: RecoveryTotals,
    startup_ns: AtomicU64,
    io_uring: AtomicBool,
    write_path: crate::config::WriteMode,
    zero_copy_configured: bool,
}

impl Metrics {
    pub fn new(
        cores: usize,
        connections: Arc<ConnectionLimits>,
        memory: Arc<RequestMemory>,
        storage: Arc<StorageHealth>,
        write_path: crate::config::WriteMode,
        zero_copy_configured: bool,
    ) -> Self {
        Self {
            cores: (0..cores).map(|_| CoreMetrics::new()).collect(),
            partitions: std::sync::Mutex::new(BTreeMap::new()),
            connections,
            memory,
            storage,
            accepted: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            rejected: Default::default(),
            closed: Default::default(),
            recovery: RecoveryTotals::default(),
            startup_ns: AtomicU64::new(0),
            io_uring: AtomicBool::new(false),
            write_path,
            zero_copy_configured,
        }
    }

    /// The metrics core `id` writes. Panics on an id beyond the cores started, which
    /// would be a bug in the broker, not something a client can cause.
    pub fn core(&self, id: usize) -> &CoreMetrics {
        &self.cores[id]
    }

    fn partition_map(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<PartitionKey, Arc<PartitionCounters>>> {
        self.partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The counters of a partition, created when it is first opened.
    pub fn partition(&self, topic: &str, partition: i32) -> Arc<PartitionCounters> {
        Arc::clone(
            self.partition_map()
                .entry((topic.to_owned(), partition))
                .or_default(),
        )
    }

    /// Stops exporting a deleted topic's partitions.
    pub fn remove_topic(&self, topic: &str) {
        self.partition_map().retain(|(t, _), _| t != topic);
    }

    pub fn connection_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection moved to the core that owns its partitions (see `connection.rs`).
    pub fn connection_moved(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_rejected(&self, kind: RejectKind) {
        if let Some(i) = REJECT_KINDS.iter().position(|(k, _)| *k == kind) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn connection_closed(&self, kind: CloseKind) {
        if let Some(i) = CLOSE_KINDS.iter().position(|(k, _)| *k == kind) {
            self.closed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn record_recovery(&self, report: &RecoveryReport) {
        let r = &self.recovery;
        r.partitions.fetch_add(1, Ordering::Relaxed);
        if !report.clean_shutdown {
            r.unclean.fetch_add(1, Ordering::Relaxed);
        }
        r.segments_validated
            .fetch_add(report.segments_validated as u64, Ordering::Relaxed);
        r.bytes_validated
            .fetch_add(report.bytes_validated, Ordering::Relaxed);
        r.bytes_truncated
            .fetch_add(report.bytes_truncated, Ordering::Relaxed);
        r.segments_deleted
            .fetch_add(report.segments_deleted as u64, Ordering::Relaxed);
        r.duration_ns.fetch_add(
            u64::try_from(report.duration.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Records how long start took (opening, and recovering, every partition) and which
    /// I/O driver the cores run.
    pub fn set_started(&self, took: Duration, io_uring: bool) {
        self.startup_ns.store(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.io_uring.store(io_uring, Ordering::Relaxed);
    }

    /// The OpenMetrics text of every metric.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Collector_(Arc::clone(self))));
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug here.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let seconds = |ns: u64| ns as f64 / 1e9;

        // Partitions.
        let partitions: Vec<(PartitionKey, Arc<PartitionCounters>)> = self
            .partition_map()
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        type Pick = fn(&PartitionCounters) -> &AtomicU64;
        let families: [(&str, &str, Pick); 5] = [
            (
                "broker_partition_bytes_in",
                "Bytes of record batches appended to the partition",
                |c| &c.inbound.bytes,
            ),
            (
                "broker_partition_messages_in",
                "Records appended to the partition (offsets assigned)",
                |c| &c.inbound.records,
            ),
            (
                "broker_partition_bytes_out",
                "Bytes of records sent from the partition in Fetch responses",
                |c| &c.outbound.bytes,
            ),
            (
                "broker_partition_messages_out",
                "Records sent from the partition in Fetch responses, counted from the fetch \
                 offset to the end of the last whole batch sent (a response cut by max_bytes \
                 may leave up to one index interval of small batches uncounted)",
                |c| &c.outbound.records,
            ),
            (
                "broker_partition_storage_errors",
                "Appends to the partition refused with KAFKA_STORAGE_ERROR because its \
                 storage failed",
                |c| &c.storage_errors,
            ),
        ];
        for (name, help, pick) in families {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((topic, partition), counters) in &partitions {
                let labels = [
                    ("topic", topic.clone()),
                    ("partition", partition.to_string()),
                ];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, u64, u64>(&load(pick(counters)), None)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "broker_partition_storage_failed",
            "1 once a write or fdatasync of the partition failed (ENOSPC, EIO): appends are \
             refused until the broker restarts",
            None,
            MetricType::Gauge,
        )?;
        for (topic, partition) in partitions.iter().map(|(k, _)| k) {
            let failed = self.storage.is_failed(topic, *partition);
            let labels = [
                ("topic", topic.clone()),
                ("partition", partition.to_string()),
            ];
            m.encode_family(&labels)?.encode_gauge(&u64::from(failed))?;
        }

        // Requests, per API, merged across cores.
        let mut m = enc.encode_descriptor(
            "broker_request_duration_seconds",
            "Time from a request's frame being read to its response being written, per API",
            None,
            MetricType::Histogram,
        )?;
        for (i, (key, _, _)) in SUPPORTED_APIS.iter().enumerate() {
            let merged = Merged::of(self.cores.iter().map(|c| &c.requests[i]), REQUEST_BUCKETS_S);
            merged.encode(m.encode_family(&[("api", format!("{key:?}"))])?)?;
        }

        // Requests, per API and version, summed across cores.
        let mut m = enc.encode_descriptor(
            "broker_requests",
            "Requests answered, per API and version",
            None,
            MetricType::Counter,
        )?;
        for (i, (key, min, _)) in SUPPORTED_APIS.iter().enumerate() {
            for (v, _) in self.cores[0].versions[i].iter().enumerate() {
                let total: u64 = self
                    .cores
                    .iter()
                    .map(|c| c.versions[i][v].load(Ordering::Relaxed))
                    .sum();
                let version = (i64::from(*min) + v as i64).to_string();
                m.encode_family(&[("api", format!("{key:?}")), ("version", version)])?
                    .encode_counter::<NoLabelSet, u64, u64>(&total, None)?;
            }
        }

        // Flushes.
        let merged = Merged::of(self.cores.iter().map(|c| &c.flush), FLUSH_BUCKETS_S);
        merged.encode(enc.encode_descriptor(
            "broker_flush_duration_seconds",
            "fdatasync of segment files: group commits, interval flushes, rolls, closes",
            None,
            MetricType::Histogram,
        )?)?;

        // Connections.
        enc.encode_descriptor(
            "broker_connections_open",
            "Client connections open now",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(self.connections.open() as u64))?;
        enc.encode_descriptor(
            "broker_connections_accepted",
            "Client connections accepted and handed to a core",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, u64, u64>(&load(&self.accepted), None)?;
        enc.encode_descriptor(
            "broker_connections_moved",
            "Connections handed to the core that owns all the partitions they produce to or fetch from",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, u64, u64>(&load(&self.moved), None)?;
        let mut m = enc.encode_descriptor(
            "broker_connections_rejected",
            "Client connections closed at accept, by the limit that refused them",
            None,
            MetricType::Counter,
        )?;
        for (i, (_, reason)) in REJECT_KINDS.iter().enumerate() {
            m.encode_family(&[("reason", *reason)])?
                .encode_counter::<NoLabelSet, u64, u64>(&load(&self.rejected[i]), None)?;
        }
        let mut m = enc.encode_descriptor(
            "broker_connections_closed",
            "Client connections ended, by reason",
            None,
            MetricType::Counter,
        )?;
        for (i, (_, reason)) in CLOSE_KINDS.iter().enumerate() {
            m.encode_family(&[("reason", *reason)])?
                .encode_counter::<NoLabelSet, u64, u64>(&load(&self.closed[i]), None)?;
        }

        // Request memory.
        enc.encode_descriptor(
            "broker_request_memory_bytes",
            "Bytes of request frames over 64 KiB read and not yet answered",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(self.memory.used() as u64))?;
        enc.encode_descriptor(
            "broker_request_memory_limit_bytes",
            "queued_max_request_bytes: the budget for request frames in flight",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(self.memory.limit() as u64))?;
        enc.encode_descriptor(
            "broker_request_memory_waiting",
            "Connections waiting for request memory before reading a frame",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(self.memory.waiting() as u64))?;
        enc.encode_descriptor(
            "broker_request_memory_waits",
            "Times a connection waited for request memory",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, u64, u64>(&self.memory.waits(), None)?;

        // Modes.
        let io_uring = self.io_uring.load(Ordering::Relaxed);
        let mut m = enc.encode_descriptor(
            "broker_io_mode",
            "1 for the I/O driver the cores run: io_uring, or the polling fallback",
            None,
            MetricType::Gauge,
        )?;
        for (mode, on) in [("io_uring", io_uring), ("fallback", !io_uring)] {
            m.encode_family(&[("mode", mode)])?
                .encode_gauge(&u64::from(on))?;
        }
        let mut m = enc.encode_descriptor(
            "broker_write_path",
            "1 for the path appends take: io_uring writes, inline pwritev on the core, or adaptive (inline for small writes)",
            None,
            MetricType::Gauge,
        )?;
        use crate::config::WriteMode;
        for (path, mode) in [
            ("io_uring", WriteMode::IoUring),
            ("inline", WriteMode::Inline),
            ("adaptive", WriteMode::Adaptive),
        ] {
            let on = self.write_path == mode;
            m.encode_family(&[("path", path)])?
                .encode_gauge(&u64::from(on))?;
        }
        enc.encode_descriptor(
            "broker_fetch_zero_copy",
            "1 when fetched records go by splice (configured, and io_uring available)",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&u64::from(self.zero_copy_configured && io_uring))?;

        // Start and recovery.
        let r = &self.recovery;
        enc.encode_descriptor(
            "broker_startup_seconds",
            "Time start took: opening and recovering every partition",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&seconds(load(&self.startup_ns)))?;
        let totals: [(&str, &str, u64); 6] = [
            (
                "broker_recovery_partitions",
                "Partitions opened (recovered) since start",
                load(&r.partitions),
            ),
            (
                "broker_recovery_unclean_partitions",
                "Partitions opened without a clean-shutdown marker",
                load(&r.unclean),
            ),
            (
                "broker_recovery_segments_validated",
                "Segments whose batches recovery re-validated",
                load(&r.segments_validated),
            ),
            (
                "broker_recovery_validated_bytes",
                "Bytes recovery re-validated (CRC and headers)",
                load(&r.bytes_validated),
            ),
            (
                "broker_recovery_truncated_bytes",
                "Bytes recovery cut from torn or corrupt tails",
                load(&r.bytes_truncated),
            ),
            (
                "broker_recovery_segments_deleted",
                "Segments recovery deleted after a truncation",
                load(&r.segments_deleted),
            ),
        ];
        for (name, help, value) in totals {
            enc.encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
        }
        enc.encode_descriptor(
            "broker_recovery_seconds",
            "Time spent opening partitions, summed over partitions (cores open theirs in \
             parallel)",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, f64, f64>(&seconds(load(&r.duration_ns)), None)?;
        Ok(())
    }
}

/// The scrape's view of `Metrics`.
struct Collector_(Arc<Metrics>);

impl std::fmt::Debug for Collector_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("broker metrics")
    }
}

impl Collector for Collector_ {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_merge_across_cores_and_render_as_openmetrics() {
        let storage = Arc::new(StorageHealth::default());
        let metrics = Arc::new(Metrics::new(
            2,
            Arc::new(ConnectionLimits::new(10, 10)),
            Arc::new(RequestMemory::new(1000)),
            Arc::clone(&storage),
            crate::config::WriteMode::IoUring,
            true,
        ));
        metrics
            .core(0)
            .observe_request(0, 9, Duration::from_micros(300));
        metrics
            .core(1)
            .observe_request(0, 10, Duration::from_secs(100));
        metrics
            .core(1)
            .observe_request(9999, 0, Duration::from_secs(1));
        // A version outside the advertised range is not counted (nor does it panic).
        metrics
            .core(1)
            .observe_request(0, -3, Duration::from_secs(1));
        metrics.core(1).observe_flush(Duration::from_micros(70));
        metrics.partition("t", 0).record_in(100, 3);
        metrics.partition("t", 0).record_out(40, 1);
        metrics.connection_rejected(RejectKind::MaxConnectionsPerIp);
        metrics.partition("t", 1).record_storage_error();
        storage.mark_failed(
            "t",
            1,
            &engine::StorageFailure {
                step: engine::FailedStep::Write,
                path: "/data/t-1/00000000000000000000.log".into(),
                kind: std::io::ErrorKind::StorageFull,
                cause: "No space left on device (os error 28)".into(),
            },
        );
        let text = metrics.render();
        for line in [
            "broker_request_duration_seconds_count{api=\"Produce\"} 3",
            "broker_requests_total{api=\"Produce\",version=\"9\"} 1",
            "broker_requests_total{api=\"Produce\",version=\"10\"} 1",
            "broker_requests_total{api=\"Fetch\",version=\"12\"} 0",
            "broker_request_duration_seconds_bucket{le=\"0.0005\",api=\"Produce\"} 1",
            "broker_request_duration_seconds_bucket{le=\"30.0\",api=\"Produce\"} 2",
            "broker_request_duration_seconds_bucket{le=\"+Inf\",api=\"Produce\"} 3",
            "broker_flush_duration_seconds_bucket{le=\"0.0001\"} 1",
            "broker_partition_bytes_in_total{topic=\"t\",partition=\"0\"} 100",
            "broker_partition_messages_in_total{topic=\"t\",partition=\"0\"} 3",
            "broker_partition_messages_out_total{topic=\"t\",partition=\"0\"} 1",
            "broker_connections_rejected_total{reason=\"max_connections_per_ip\"} 1",
            "broker_io_mode{mode=\"fallback\"} 1",
            "broker_request_memory_limit_bytes 1000",
            "broker_partition_storage_failed{topic=\"t\",partition=\"0\"} 0",
            "broker_partition_storage_failed{topic=\"t\",partition=\"1\"} 1",
            "broker_partition_storage_errors_total{topic=\"t\",partition=\"1\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        metrics.remove_topic("t");
        assert!(!metrics.render().contains("topic=\"t\""));
    }
}
