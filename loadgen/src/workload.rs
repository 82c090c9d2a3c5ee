//! The three workloads, written once for every target: producer throughput, consumer
//! throughput draining a backlog, and end-to-end latency at a fixed offered rate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::payload::{self, Header, Message, Tracker};
use crate::procfs;
use crate::target::{ConsumerSpec, Dest, Mode, Partitioner, ProducerSpec, Target};

/// How long consumers wait for a message that should still come before they give up
/// and report it missing.
const IDLE_GIVE_UP: Duration = Duration::from_secs(20);
const MAX_SERIES: usize = 20_000;
/// Progress is sampled this often for the first `FINE_SAMPLING_FOR` of a run (a
/// million-message run can take under half a second), then every `COARSE_SAMPLE`.
const FINE_SAMPLE: Duration = Duration::from_millis(10);
const FINE_SAMPLING_FOR: Duration = Duration::from_secs(5);
const COARSE_SAMPLE: Duration = Duration::from_millis(100);

/// Knobs shared by the workloads.
#[derive(Debug, Clone)]
pub struct Knobs {
    pub mode: Mode,
    pub messages: u64,
    pub size: usize,
    pub batch: usize,
    pub linger_ms: u64,
    pub producers: u32,
    pub consumers: u32,
    pub partitions: u32,
    pub partitioner: Partitioner,
    pub prefetch: u16,
    /// Messages (per run, spread over producers) sent before measuring starts.
    pub warmup: u64,
    /// Produce for this long (after the warm-up) instead of `messages`.
    pub duration: Option<Duration>,
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn from(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// What a run checked about the messages themselves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verify {
    pub sent: u64,
    pub acknowledged: u64,
    /// Whether a consumer read the messages back (false: only the broker's count).
    pub consumed: bool,
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub reordered: u64,
    pub malformed: u64,
}

impl Verify {
    /// Records what a consumer read back against what each producer sent.
    pub fn add_tracker(&mut self, t: &Tracker, expected: &[u64]) {
        self.consumed = true;
        self.received = t.received;
        self.unique = t.unique;
        self.duplicates = t.duplicates;
        self.missing = t.missing(expected);
        self.reordered = t.reordered;
        self.malformed = t.malformed;
    }

    /// Takes the read-back figures of the run that consumed these messages.
    pub fn take_read_back(&mut self, other: &Verify) {
        self.consumed = other.consumed;
        self.received = other.received;
        self.unique = other.unique;
        self.duplicates = other.duplicates;
        self.missing = other.missing;
        self.reordered = other.reordered;
        self.malformed = other.malformed;
    }
}

/// One measured run, as it goes into `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub target: String,
    pub client: String,
    pub address: String,
    pub experiment: String,
    pub workload: &'static str,
    pub mode: Mode,
    pub size: usize,
    pub batch: usize,
    pub producers: u32,
    pub consumers: u32,
    pub partitions: u32,
    pub partitioner: Partitioner,
    /// Messages left out of the measurement at the start.
    pub warmup: u64,
    /// Messages and payload bytes in the measured window (warm-up excluded, but for
    /// latency runs, whose throughput covers the whole run).
    pub messages: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    /// Offered rate of a latency run.
    pub rate: Option<f64>,
    pub latency: Option<Latency>,
    pub client_cpu_s: f64,
    pub broker_cpu_s: Option<f64>,
    pub broker_pid: Option<u32>,
    pub broker_rss_mb: Option<f64>,
    pub verify: Verify,
    /// (seconds since the measured window opened, messages done so far).
    pub series: Vec<(f64, u64)>,
    /// What each producer sent (for read-back checks).
    #[serde(skip)]
    pub sent_per_producer: Vec<u64>,
}

impl RunResult {
    pub fn is_clean(&self) -> bool {
        let v = &self.verify;
        v.missing == 0 && v.duplicates == 0 && v.malformed == 0 && v.acknowledged == v.sent
    }
}

/// CPU clocks of the client and the broker over a measured window.
struct CpuWindow {
    pid: Option<u32>,
    client: f64,
    broker: Option<f64>,
}

impl CpuWindow {
    fn open(target: &dyn Target) -> Self {
        let pid = procfs::pid_listening_on(target.port());
        Self {
            pid,
            client: procfs::own_cpu_seconds(),
            broker: pid.and_then(procfs::cpu_seconds),
        }
    }

    /// (client seconds, broker seconds, broker rss MB).
    fn close(&self) -> (f64, Option<f64>, Option<f64>) {
        let client = procfs::own_cpu_seconds() - self.client;
        let broker = match (self.pid.and_then(procfs::cpu_seconds), self.broker) {
            (Some(end), Some(start)) => Some(end - start),
            _ => None,
        };
        let rss = self.pid.and_then(procfs::rss_bytes).map(|b| b as f64 / 1e6);
        (client, broker, rss)
    }
}

/// Clients' own counts of departed messages, each with the warm-up messages it includes.
type Followed = Mutex<Vec<(Arc<AtomicU64>, u64)>>;

/// Live progress and the throughput series for the charts.
struct Progress {
    done: Arc<AtomicU64>,
    /// Counts kept by clients that queue on their own side (`Producer::departed`), each
    /// with the warm-up messages it includes; added to `done`.
    departed: Arc<Followed>,
    stop: Arc<AtomicBool>,
    sampler: Option<thread::JoinHandle<Vec<(f64, u64)>>>,
    started: Arc<Mutex<Option<Instant>>>,
}

impl Progress {
    fn new(label: String, total: u64, quiet: bool) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let departed: Arc<Followed> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let started: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>32} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(label);
        let sampler = {
            let (done, departed, stop, started) = (
                Arc::clone(&done),
                Arc::clone(&departed),
                Arc::clone(&stop),
                Arc::clone(&started),
            );
            thread::spawn(move || {
                let mut series = Vec::new();
                loop {
                    let finished = stop.load(Ordering::Acquire);
                    let n = done_count(&done, &departed);
                    bar.set_position(n);
                    let t0 = *started.lock().unwrap_or_else(|e| e.into_inner());
                    let mut pause = FINE_SAMPLE;
                    if let Some(t0) = t0 {
                        let t = t0.elapsed();
                        if series.len() < MAX_SERIES {
                            series.push((t.as_secs_f64(), n));
                        }
                        if t > FINE_SAMPLING_FOR {
                            pause = COARSE_SAMPLE;
                        }
                    }
                    if finished {
                        bar.finish_and_clear();
                        return series;
                    }
                    thread::sleep(pause);
                }
            })
        };
        Self {
            done,
            departed,
            stop,
            sampler: Some(sampler),
            started,
        }
    }

    /// Follows `counter` (which includes `warmup` unmeasured messages) instead of counting
    /// this producer's sends.
    fn follow(&self, counter: Arc<AtomicU64>, warmup: u64) {
        self.departed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((counter, warmup));
    }

    fn start_clock(&self, at: Instant) {
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    fn finish(mut self, end: Instant) -> Vec<(f64, u64)> {
        let total = done_count(&self.done, &self.departed);
        self.stop.store(true, Ordering::Release);
        let mut series = self
            .sampler
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let t0 = *self.started.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t0) = t0 {
            series.retain(|(t, _)| *t <= end.duration_since(t0).as_secs_f64());
            series.push((end.duration_since(t0).as_secs_f64(), total));
        }
        series
    }
}

/// Messages done: those counted directly plus those that left the clients followed.
fn done_count(done: &AtomicU64, departed: &Followed) -> u64 {
    let followed: u64 = departed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(c, warmup)| c.load(Ordering::Relaxed).saturating_sub(*warmup))
        .sum();
    done.load(Ordering::Relaxed) + followed
}

fn open_producer(
    target: &dyn Target,
    dest: &Dest,
    k: &Knobs,
    id: u32,
) -> anyhow::Result<Box<dyn crate::target::Producer>> {
    let spec = ProducerSpec {
        id,
        mode: k.mode,
        batch: k.batch,
        linger_ms: k.linger_ms,
    };
    target.producer(dest, spec)
}

/// Consumer `id` of `k.consumers`, on its share of the partitions or queues.
fn open_consumer(
    target: &dyn Target,
    dest: &Dest,
    k: &Knobs,
    id: u32,
) -> anyhow::Result<Box<dyn crate::target::Consumer>> {
    let spec = ConsumerSpec {
        id,
        mode: k.mode,
        partitions: partitions_of(id, k.consumers, dest.partitions),
        prefetch: k.prefetch,
    };
    target.consumer(dest, spec)
}

/// Joins worker threads in order: each one's result (`None` where it failed) and the first
/// error.
fn join_all<T>(
    handles: Vec<thread::JoinHandle<anyhow::Result<T>>>,
    what: &str,
) -> (Vec<Option<T>>, Option<anyhow::Error>) {
    let mut first_error = None;
    let results = handles
        .into_iter()
        .map(|h| match h.join() {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
                None
            }
            Err(_) => {
                first_error.get_or_insert(anyhow::anyhow!("a {what} thread panicked"));
                None
            }
        })
        .collect();
    (results, first_error)
}

/// Joins producer threads: what each sent (0 where it failed), what the broker
/// acknowledged in all, and the first error.
fn join_producers(
    handles: Vec<thread::JoinHandle<anyhow::Result<(u64, u64)>>>,
) -> (Vec<u64>, u64, Option<anyhow::Error>) {
    let (results, first_error) = join_all(handles, "producer");
    let per_producer = results
        .iter()
        .map(|r| r.map_or(0, |(sent, _)| sent))
        .collect();
    let acknowledged = results.iter().flatten().map(|(_, acked)| acked).sum();
    (per_producer, acknowledged, first_error)
}

fn share(total: u64, parts: u32, i: u32) -> u64 {
    let parts = u64::from(parts.max(1));
    total / parts + u64::from(u64::from(i) < total % parts)
}

/// The partitions (or queues) consumer `i` of `consumers` reads.
fn partitions_of(i: u32, consumers: u32, partitions: u32) -> Vec<u32> {
    (0..partitions)
        .filter(|p| p % consumers.max(1) == i)
        .collect()
}

fn check_knobs(k: &Knobs) -> anyhow::Result<()> {
    if k.producers == 0 || k.consumers == 0 || k.partitions == 0 {
        bail!("producers, consumers and partitions must be at least 1");
    }
    if k.consumers > k.partitions {
        bail!(
            "{} consumers on {} partitions/queues would leave some idle",
            k.consumers,
            k.partitions
        );
    }
    if k.size < payload::HEADER_LEN {
        bail!(
            "messages must be at least {} bytes (the loadgen header)",
            payload::HEADER_LEN
        );
    }
    if k.batch == 0 {
        bail!("batch must be at least 1");
    }
    Ok(())
}

/// What a producer phase did.
pub struct Produced {
    pub per_producer: Vec<u64>,
    pub acknowledged: u64,
    pub seconds: f64,
    pub measured_messages: u64,
    pub series: Vec<(f64, u64)>,
    pub cpu: (f64, Option<f64>, Option<f64>),
    pub broker_pid: Option<u32>,
}

/// Sends `k.messages` (split over `k.producers`) into `dest` and waits until the broker
/// has all of them. The measured window opens after the warm-up messages.
pub fn produce(
    target: &dyn Target,
    dest: &Dest,
    k: &Knobs,
    label: &str,
) -> anyhow::Result<Produced> {
    check_knobs(k)?;
    let progress = Progress::new(
        label.to_string(),
        if k.duration.is_some() { 0 } else { k.messages },
        k.quiet,
    );
    let warm = Arc::new(Barrier::new(k.producers as usize + 1));
    let go = Arc::new(Barrier::new(k.producers as usize + 1));
    let mut handles = Vec::new();
    for id in 0..k.producers {
        let mut producer = open_producer(target, dest, k, id)?;
        let (warm, go, done) = (
            Arc::clone(&warm),
            Arc::clone(&go),
            Arc::clone(&progress.done),
        );
        // With a duration, the count is only a cap (the tracker's per-producer bound).
        let count = match k.duration {
            Some(_) => payload::MAX_SEQ,
            None => share(k.messages, k.producers, id),
        };
        let warmup = share(k.warmup, k.producers, id).min(count);
        // Progress counts what left the client: its own count where it queues messages.
        let counted_here = match producer.departed() {
            Some(counter) => {
                progress.follow(counter, warmup);
                false
            }
            None => true,
        };
        let (size, batch, partitions, duration) = (k.size, k.batch, dest.partitions, k.duration);
        let partitioner = k.partitioner;
        handles.push(thread::spawn(move || -> anyhow::Result<(u64, u64)> {
            let mut msg = Message::new(size);
            let mut send = |seq: u64| -> anyhow::Result<()> {
                let header = Header {
                    producer: id,
                    seq,
                    sent_nanos: payload::now_nanos(),
                };
                let partition = partitioner.partition(id, seq, batch, partitions);
                producer.send(partition, msg.stamp(header))?;
                if (seq + 1).is_multiple_of(batch as u64) {
                    producer.end_batch()?;
                }
                Ok(())
            };
            let result = (|| {
                for seq in 0..warmup {
                    send(seq)?;
                }
                anyhow::Ok(())
            })();
            warm.wait();
            go.wait();
            result?;
            let deadline = duration.map(|d| Instant::now() + d);
            let mut sent = count;
            for seq in warmup..count {
                if seq % 256 == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                    sent = seq;
                    break;
                }
                send(seq)?;
                if counted_here {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            if sent % batch as u64 != 0 {
                producer.end_batch()?;
            }
            let acked = producer.finish()?;
            Ok((sent, acked))
        }));
    }
    warm.wait();
    let cpu = CpuWindow::open(target);
    let start = Instant::now();
    progress.start_clock(start);
    go.wait();
    let (per_producer, acknowledged, first_error) = join_producers(handles);
    if let Some(e) = first_error {
        progress.finish(Instant::now());
        return Err(e);
    }
    // Without acknowledgements, wait until the broker holds everything (where it can say).
    let total: u64 = per_producer.iter().sum();
    if k.mode == Mode::Paper {
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Some(n) = target.backlog(dest)? {
            if n >= total {
                break;
            }
            if Instant::now() > deadline {
                bail!("the broker holds {n} of {total} messages 120 s after the last send");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    let end = Instant::now();
    let cpu_used = cpu.close();
    let series = progress.finish(end);
    Ok(Produced {
        per_producer,
        acknowledged,
        seconds: end.duration_since(start).as_secs_f64(),
        measured_messages: total - k.warmup.min(total),
        series,
        cpu: cpu_used,
        broker_pid: cpu.pid,
    })
}

/// What a consumer phase did.
pub struct Consumed {
    pub tracker: Tracker,
    pub seconds: f64,
    pub measured_messages: u64,
    pub measured_bytes: u64,
    pub series: Vec<(f64, u64)>,
    pub cpu: (f64, Option<f64>, Option<f64>),
    pub broker_pid: Option<u32>,
    pub latency: Option<Histogram<u64>>,
}

/// Reads `dest` with `k.consumers` consumers until every expected message arrived (or
/// none came for `IDLE_GIVE_UP`). `expected[p]` is how many producer `p` sent. The measured
/// window opens when the first `k.warmup` messages have arrived.
pub fn consume(
    target: &dyn Target,
    dest: &Dest,
    k: &Knobs,
    expected: &[u64],
    label: &str,
) -> anyhow::Result<Consumed> {
    check_knobs(k)?;
    let total: u64 = expected.iter().sum();
    let progress = Progress::new(label.to_string(), total, k.quiet);
    let received = Arc::new(AtomicU64::new(0));
    let unique_goal = total;
    let warmup = k.warmup.min(total);
    let window: Arc<Mutex<Option<(Instant, CpuWindow)>>> = Arc::new(Mutex::new(None));
    let finished = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for id in 0..k.consumers {
        let mut consumer = open_consumer(target, dest, k, id)?;
        let (received, finished, done, window) = (
            Arc::clone(&received),
            Arc::clone(&finished),
            Arc::clone(&progress.done),
            Arc::clone(&window),
        );
        let (started, opener) = (Arc::clone(&progress.started), target_window_opener(target));
        handles.push(thread::spawn(move || -> anyhow::Result<Tracker> {
            let mut tracker = Tracker::default();
            let mut last_message = Instant::now();
            while !finished.load(Ordering::Acquire) {
                let mut count = 0u64;
                let n = consumer.poll(Duration::from_millis(100), &mut |body| {
                    tracker.record(body);
                    count += 1;
                })?;
                if n == 0 {
                    if last_message.elapsed() > IDLE_GIVE_UP {
                        break;
                    }
                    continue;
                }
                last_message = Instant::now();
                let before = received.fetch_add(count, Ordering::AcqRel);
                let after = before + count;
                if before < warmup.max(1) && after >= warmup.max(1) {
                    let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
                    if w.is_none() {
                        let now = Instant::now();
                        *w = Some((now, opener()));
                        *started.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
                    }
                }
                done.fetch_add(count, Ordering::Relaxed);
                if after >= unique_goal {
                    finished.store(true, Ordering::Release);
                }
            }
            finished.store(true, Ordering::Release);
            consumer.close()?;
            Ok(tracker)
        }));
    }
    let mut tracker = Tracker::default();
    let (results, first_error) = join_all(handles, "consumer");
    for t in results.into_iter().flatten() {
        tracker.merge(&t);
    }
    let end = Instant::now();
    if let Some(e) = first_error {
        progress.finish(end);
        return Err(e);
    }
    let opened = window.lock().unwrap_or_else(|e| e.into_inner()).take();
    let series = progress.finish(end);
    let Some((start, cpu)) = opened else {
        bail!("no message arrived within {IDLE_GIVE_UP:?}");
    };
    let measured_messages = tracker
        .received
        .saturating_sub(warmup.max(1).min(tracker.received));
    let per_message = tracker.bytes.checked_div(tracker.received).unwrap_or(0);
    Ok(Consumed {
        seconds: end.duration_since(start).as_secs_f64(),
        measured_messages,
        measured_bytes: measured_messages * per_message,
        series,
        cpu: cpu.close(),
        broker_pid: cpu.pid,
        tracker,
        latency: None,
    })
}

/// A closure that opens a CPU window for `target` from a consumer thread.
fn target_window_opener(target: &dyn Target) -> impl Fn() -> CpuWindow + Send + 'static {
    let port = target.port();
    move || {
        let pid = procfs::pid_listening_on(port);
        CpuWindow {
            pid,
            client: procfs::own_cpu_seconds(),
            broker: pid.and_then(procfs::cpu_seconds),
        }
    }
}

/// End-to-end latency at a fixed offered rate: producers send on a schedule (open loop),
/// each message stamped with the moment it was *meant* to go, so a stalled broker is
/// charged for every message that queued behind it (no coordinated omission). Consumers
/// run at the same time and record receive time minus intended send time.
pub fn latency(
    target: &dyn Target,
    dest: &Dest,
    k: &Knobs,
    rate: f64,
    label: &str,
) -> anyhow::Result<(Produced, Consumed)> {
    check_knobs(k)?;
    if !(rate.is_finite() && rate > 0.0) {
        bail!("the rate must be a positive number of messages per second");
    }
    let total = k.messages;
    let warmup_per_producer: Vec<u64> = (0..k.producers)
        .map(|i| share(k.warmup, k.producers, i))
        .collect();
    let expected: Vec<u64> = (0..k.producers)
        .map(|i| share(total, k.producers, i))
        .collect();
    let progress = Progress::new(label.to_string(), total, k.quiet);
    let finished = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));

    // Consumers first, so they are subscribed before the first message.
    let mut consumers = Vec::new();
    for id in 0..k.consumers {
        let mut consumer = open_consumer(target, dest, k, id)?;
        let (finished, received, done) = (
            Arc::clone(&finished),
            Arc::clone(&received),
            Arc::clone(&progress.done),
        );
        let warm = warmup_per_producer.clone();
        consumers.push(thread::spawn(
            move || -> anyhow::Result<(Tracker, Histogram<u64>)> {
                let mut tracker = Tracker::default();
                let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
                    .context("histogram bounds")?;
                let mut last_message = Instant::now();
                while !finished.load(Ordering::Acquire) {
                    let mut count = 0;
                    let mut error = None;
                    let n = consumer.poll(Duration::from_millis(100), &mut |body| {
                        let now = payload::now_nanos();
                        count += 1;
                        if let Some(h) = tracker.record(body)
                            && h.seq >= warm.get(h.producer as usize).copied().unwrap_or(0)
                        {
                            let us = (now.saturating_sub(h.sent_nanos) / 1000).max(1);
                            if let Err(e) = hist.record(us) {
                                error.get_or_insert(e);
                            }
                        }
                    })?;
                    if let Some(e) = error {
                        bail!("latency out of the histogram's range: {e}");
                    }
                    if n == 0 {
                        if last_message.elapsed() > IDLE_GIVE_UP {
                            break;
                        }
                        continue;
                    }
                    last_message = Instant::now();
                    done.fetch_add(count, Ordering::Relaxed);
                    if received.fetch_add(count, Ordering::AcqRel) + count >= total {
                        finished.store(true, Ordering::Release);
                    }
                }
                finished.store(true, Ordering::Release);
                consumer.close()?;
                Ok((tracker, hist))
            },
        ));
    }

    let go = Arc::new(Barrier::new(k.producers as usize + 1));
    let mut producers = Vec::new();
    let per_producer_rate = rate / f64::from(k.producers);
    for id in 0..k.producers {
        let mut producer = open_producer(target, dest, k, id)?;
        let go = Arc::clone(&go);
        let count = expected[id as usize];
        let (size, batch, partitions) = (k.size, k.batch, dest.partitions);
        let partitioner = k.partitioner;
        producers.push(thread::spawn(move || -> anyhow::Result<(u64, u64)> {
            let mut msg = Message::new(size);
            go.wait();
            let start_nanos = payload::now_nanos();
            let interval = 1e9 / per_producer_rate;
            for seq in 0..count {
                let intended = start_nanos + (seq as f64 * interval) as u64;
                let now = payload::now_nanos();
                if intended > now {
                    thread::sleep(Duration::from_nanos(intended - now));
                }
                let header = Header {
                    producer: id,
                    seq,
                    sent_nanos: intended,
                };
                let partition = partitioner.partition(id, seq, batch, partitions);
                producer.send(partition, msg.stamp(header))?;
                if (seq + 1).is_multiple_of(batch as u64) {
                    producer.end_batch()?;
                }
            }
            let acked = producer.finish()?;
            Ok((count, acked))
        }));
    }
    let cpu = CpuWindow::open(target);
    let start = Instant::now();
    progress.start_clock(start);
    go.wait();
    let (per_producer, acknowledged, mut first_error) = join_producers(producers);
    if first_error.is_some() {
        // Nothing more is coming: let the consumers stop now.
        finished.store(true, Ordering::Release);
    }
    let mut tracker = Tracker::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).context("histogram")?;
    let (results, consumer_error) = join_all(consumers, "consumer");
    for (t, hst) in results.into_iter().flatten() {
        tracker.merge(&t);
        hist.add(&hst).context("merging histograms")?;
    }
    if let Some(e) = consumer_error {
        first_error.get_or_insert(e);
    }
    let end = Instant::now();
    let cpu_used = cpu.close();
    let series = progress.finish(end);
    if let Some(e) = first_error {
        return Err(e);
    }
    let seconds = end.duration_since(start).as_secs_f64();
    let measured = total - k.warmup.min(total);
    let produced = Produced {
        per_producer,
        acknowledged,
        seconds,
        measured_messages: measured,
        series: series.clone(),
        cpu: cpu_used,
        broker_pid: cpu.pid,
    };
    // Throughput of a latency run counts every message over the whole run; the
    // histogram leaves out the warm-up.
    let consumed = Consumed {
        measured_messages: total,
        measured_bytes: total * k.size as u64,
        seconds,
        series,
        cpu: cpu_used,
        broker_pid: cpu.pid,
        tracker,
        latency: Some(hist),
    };
    Ok((produced, consumed))
}

/// Latency summary of a histogram.
pub fn summarize(h: &Histogram<u64>) -> Latency {
    Latency::from(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_follows_a_clients_own_count_less_its_warm_up() {
        let progress = Progress::new("test".into(), 100, true);
        let departed = Arc::new(AtomicU64::new(0));
        progress.follow(Arc::clone(&departed), 10);
        progress.done.fetch_add(5, Ordering::Relaxed);
        // Warm-up messages still queued in the client count for nothing.
        departed.store(7, Ordering::Relaxed);
        assert_eq!(done_count(&progress.done, &progress.departed), 5);
        departed.store(40, Ordering::Relaxed);
        assert_eq!(done_count(&progress.done, &progress.departed), 35);
        let start = Instant::now();
        progress.start_clock(start);
        let series = progress.finish(start + Duration::from_millis(1));
        assert_eq!(series.last().map(|p| p.1), Some(35));
    }

    #[test]
    fn shares_add_up_and_partitions_are_spread() {
        assert_eq!((0..3).map(|i| share(10, 3, i)).sum::<u64>(), 10);
        assert_eq!(share(10, 3, 0), 4);
        assert_eq!(partitions_of(1, 2, 5), vec![1, 3]);
        assert_eq!(partitions_of(0, 1, 3), vec![0, 1, 2]);
    }
}
