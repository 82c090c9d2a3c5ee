//! Crash consistency, through the real broker binary and librdkafka.
//!
//! The rounds test: four idempotent producers (acks=all) write continuously to a
//! four-partition topic, each message carrying (producer, sequence), while a consumer group
//! member consumes and commits offsets synchronously. The broker is SIGKILLed at random
//! moments (a seeded RNG: the seed is printed, `CRASH_SEED` replays it; `CRASH_ROUNDS` sets
//! the rounds, 5 by default) and restarted on the same data directory and port; the
//! producers and the member keep going and librdkafka retries across the restart. After
//! each restart the committed offsets must be at least the last acknowledged commit; at the
//! end every partition is read from the beginning and every acknowledged message must be
//! there exactly once, at the offset its acknowledgement named, each producer's sequences
//! increasing within a partition. The summary line gives the figures.
//!
//! The damage tests: with the broker killed, the partition's files are damaged (a torn
//! tail, a corrupt tail batch, a stale copy of the last batch, garbage after the tail,
//! deleted indexes, a torn committed-offsets log); after a restart every batch before the
//! damage point is served intact, the damaged part is gone, and the next produce lands at
//! the right offset.
//!
//! The broker runs with `flush = per-append` (the default, set explicitly): acks=all is
//! answered after fdatasync. A SIGKILL leaves the page cache alone, so these tests check
//! the broker's own bookkeeping (idempotent dedupe, recovery, truncation, committed offsets)
//! across process crashes; that fdatasync precedes the answer needs a power cut: the
//! ignored `given_power_cut_...` test (root: an ext4 image on a loop device, copied at the
//! kill). Also ignored, by hand: the recovery time of a 1 GiB log. And one protocol-level
//! test: a commit retried from before a crash must not pass for a member of the restarted
//! coordinator.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Broker;
use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, FutureProducer, FutureRecord, Producer,
    ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TOPIC: &str = "crash";
const PARTITIONS: i32 = 4;
const PRODUCERS: u32 = 4;
const GROUP: &str = "crash-group";
/// A standalone committer's group (no membership, so no rejoin after a crash).
const STANDALONE_GROUP: &str = "crash-standalone";
const PAYLOAD_BYTES: usize = 100;
/// Each producer sends this many messages, then sleeps `PACE`: at most ~2,000 messages a
/// second per producer, so the test stays light on a small CI machine.
const BURST: u64 = 20;
const PACE: Duration = Duration::from_millis(10);
const TIMEOUT: Duration = Duration::from_secs(30);
/// Small segments, so rolls (checkpoint, producer snapshot) happen during the rounds too.
const SEGMENT_BYTES: &str = "262144";

/// splitmix64: a seeded, reproducible sequence without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// Which producer wrote a message, and its sequence number in that producer's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Id {
    producer: u32,
    seq: u64,
}

fn payload(id: Id) -> Vec<u8> {
    let mut bytes = format!("p{}:s{}:", id.producer, id.seq).into_bytes();
    bytes.resize(PAYLOAD_BYTES, b'.');
    bytes
}

fn parse(bytes: &[u8]) -> Option<Id> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split(':');
    let producer = parts.next()?.strip_prefix('p')?.parse().ok()?;
    let seq = parts.next()?.strip_prefix('s')?.parse().ok()?;
    Some(Id { producer, seq })
}

/// A successful delivery report: the broker acknowledged the message at this offset.
#[derive(Debug, Clone, Copy)]
struct Ack {
    id: Id,
    partition: i32,
    offset: i64,
    at: Instant,
}

/// What the producers' delivery callbacks saw.
#[derive(Default)]
struct Deliveries {
    acks: Mutex<Vec<Ack>>,
    failed: AtomicU64,
}

struct Recorder(Arc<Deliveries>);

impl ClientContext for Recorder {
    // Transport errors while the broker is down are expected: librdkafka retries.
    fn error(&self, _error: KafkaError, _reason: &str) {}
}

impl ProducerContext for Recorder {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let id = m
                    .payload()
                    .and_then(parse)
                    .expect("acknowledged message has our payload");
                self.0.acks.lock().unwrap().push(Ack {
                    id,
                    partition: m.partition(),
                    offset: m.offset(),
                    at: Instant::now(),
                });
            }
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What one producer thread did.
struct ProducerOutcome {
    sent: u64,
    /// librdkafka's fatal errors (the idempotent producer gives up, for instance when the
    /// broker lost messages it had acknowledged); the thread starts a new client after each.
    fatal: Vec<String>,
}

fn idempotent_producer(addr: &str, deliveries: &Arc<Deliveries>) -> ThreadedProducer<Recorder> {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .set("retry.backoff.ms", "20")
        .set("retry.backoff.max.ms", "200")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "200")
        .set("queue.buffering.max.messages", "5000")
        .set("batch.size", "65536")
        .create_with_context(Recorder(Arc::clone(deliveries)))
        .expect("idempotent producer")
}

/// One idempotent producer writing continuously until `stop`, then flushing (waiting up
/// to `flush_wait` for its last messages to be acknowledged or to fail).
fn spawn_producer(
    producer: u32,
    addr: String,
    deliveries: Arc<Deliveries>,
    stop: Arc<AtomicBool>,
    flush_wait: Duration,
) -> JoinHandle<ProducerOutcome> {
    std::thread::spawn(move || {
        let mut p = idempotent_producer(&addr, &deliveries);
        let mut fatal = Vec::new();
        let key = format!("p{producer}");
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..BURST {
                let value = payload(Id { producer, seq });
                let record = BaseRecord::<[u8], [u8]>::to(TOPIC)
                    .partition((seq % PARTITIONS as u64) as i32)
                    .key(key.as_bytes())
                    .payload(&value);
                match p.send(record) {
                    Ok(()) => seq += 1,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        std::thread::sleep(PACE);
                        break;
                    }
                    Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => {
                        break;
                    }
                    Err((e, _)) => panic!("producer {producer}: send failed: {e}"),
                }
            }
            if let Some((code, why)) = p.client().fatal_error() {
                fatal.push(format!("producer {producer} at seq {seq}: {code:?}: {why}"));
                // Its unacknowledged messages fail; a new client (new producer id) goes on.
                p = idempotent_producer(&addr, &deliveries);
            }
            std::thread::sleep(PACE);
        }
        let _ = p.flush(flush_wait);
        if let Some((code, why)) = p.client().fatal_error() {
            fatal.push(format!("producer {producer} at the end: {code:?}: {why}"));
        }
        ProducerOutcome { sent: seq, fatal }
    })
}

/// What the group member consumed and committed.
#[derive(Default)]
struct GroupLog {
    /// (partition, offset, message) for every message consumed, repeats included.
    consumed: Mutex<Vec<(i32, i64, Id)>>,
    /// The last commit the broker acknowledged, per partition (commits only move forward).
    acknowledged: Mutex<BTreeMap<i32, i64>>,
    commits_ok: AtomicU64,
    commits_failed: AtomicU64,
    /// When each acknowledged commit came back.
    commit_times: Mutex<Vec<Instant>>,
}

impl GroupLog {
    fn acknowledge(&self, offsets: &[(i32, i64)]) {
        let mut acknowledged = self.acknowledged.lock().unwrap();
        for (p, o) in offsets {
            acknowledged.insert(*p, *o);
        }
        self.commits_ok.fetch_add(1, Ordering::Relaxed);
        self.commit_times.lock().unwrap().push(Instant::now());
    }
}

/// A consumer group member (subscribe, so it joins the group and rejoins after each crash)
/// committing what it consumed, synchronously, every 200 ms.
fn spawn_group_member(addr: String, log: Arc<GroupLog>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("fetch.wait.max.ms", "100")
            .set("reconnect.backoff.ms", "10")
            .set("reconnect.backoff.max.ms", "200")
            .create()
            .expect("group member");
        c.subscribe(&[TOPIC]).expect("subscribe");
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
        let mut last_commit = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50))
                && let Some(id) = m.payload().and_then(parse)
            {
                log.consumed
                    .lock()
                    .unwrap()
                    .push((m.partition(), m.offset(), id));
                next.insert(m.partition(), m.offset() + 1);
            }
            if last_commit.elapsed() < Duration::from_millis(200) {
                continue;
            }
            last_commit = Instant::now();
            // Only forward: after a rebalance the member re-reads from the committed
            // offset, and committing what it re-read would move the commit back.
            let ahead: Vec<(i32, i64)> = next
                .iter()
                .filter(|(p, o)| committed.get(p).is_none_or(|c| *o > c))
                .map(|(p, o)| (*p, *o))
                .collect();
            if ahead.is_empty() {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &ahead {
                tpl.add_partition_offset(TOPIC, *p, Offset::Offset(*o))
                    .expect("tpl");
            }
            match c.commit(&tpl, CommitMode::Sync) {
                Ok(()) => {
                    committed.extend(ahead.iter().copied());
                    log.acknowledge(&ahead);
                }
                Err(_) => {
                    log.commits_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

/// A standalone consumer (no subscription: generation -1, no member id) committing an
/// increasing offset to every partition, synchronously, every 20 ms: many more commits, and
/// kills in the middle of them, than the group member gives.
fn spawn_standalone_committer(
    addr: String,
    log: Arc<GroupLog>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let c = plain_consumer(&addr, STANDALONE_GROUP);
        let mut n = 0i64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let offsets: Vec<(i32, i64)> = (0..PARTITIONS)
                .map(|p| (p, n * 10 + i64::from(p)))
                .collect();
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &offsets {
                tpl.add_partition_offset(TOPIC, *p, Offset::Offset(*o))
                    .expect("tpl");
            }
            match c.commit(&tpl, CommitMode::Sync) {
                Ok(()) => log.acknowledge(&offsets),
                Err(_) => {
                    log.commits_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

fn admin(addr: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("admin client")
}

fn create_topic(addr: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = block_on(admin(addr).create_topics(
        &[topic],
        &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
    ))
    .expect("create_topics");
    assert_eq!(results[0], Ok(name.to_owned()));
}

fn plain_consumer(addr: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "200")
        .create()
        .expect("consumer")
}

/// One message as read back: offset, timestamp, value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Read {
    offset: i64,
    timestamp: i64,
    value: Vec<u8>,
}

/// Every message of each partition from `from` up to its high watermark, in offset order,
/// and the high watermarks.
fn read_partitions(
    addr: &str,
    topic: &str,
    partitions: i32,
    from: Offset,
) -> (Vec<Vec<Read>>, Vec<i64>) {
    let c = plain_consumer(addr, "crash-harness-reader");
    let highs: Vec<i64> = (0..partitions)
        .map(|p| c.fetch_watermarks(topic, p, TIMEOUT).expect("watermarks").1)
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, from).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut out: Vec<Vec<Read>> = vec![Vec::new(); partitions as usize];
    let done = |out: &Vec<Vec<Read>>| {
        out.iter()
            .zip(&highs)
            .all(|(msgs, high)| msgs.last().map_or(*high == 0, |m| m.offset + 1 >= *high))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&out) {
        assert!(
            Instant::now() < deadline,
            "read back only {:?} of {highs:?}",
            out.iter().map(Vec::len).collect::<Vec<_>>()
        );
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("consume");
            out[m.partition() as usize].push(Read {
                offset: m.offset(),
                timestamp: m.timestamp().to_millis().unwrap_or(-1),
                value: m.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    (out, highs)
}

/// Committed offsets of `GROUP`, retried until the broker answers.
fn committed(checker: &BaseConsumer) -> BTreeMap<i32, i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match checker.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
            Ok(got) => {
                return got
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some((e.partition(), o)),
                        _ => None,
                    })
                    .collect();
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("committed offsets not fetched yet: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("committed offsets: {e}"),
        }
    }
}

/// Bytes of segment files (`*.log`) under the topic's partition directories.
fn log_bytes(data_dir: &Path, topic: &str) -> u64 {
    (0..PARTITIONS)
        .flat_map(|p| segment_logs(&data_dir.join(format!("{topic}-{p}"))))
        .map(|path| std::fs::metadata(path).map_or(0, |m| m.len()))
        .sum()
}

fn segment_logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    logs
}

/// Per restart: spawn to the "broker listening" line (recovery done), spawn to the first
/// acknowledged produce, and the segment bytes on disk when it was killed.
struct RoundFigures {
    spawned: Instant,
    listening: Duration,
    first_ack: Duration,
    log_bytes: u64,
    acked_at_kill: usize,
}

/// What the final read found, compared with what was acknowledged.
#[derive(Debug, Default)]
struct Verdict {
    present: usize,
    /// Acknowledged, not in the log.
    lost: usize,
    /// Extra copies of any message, acknowledged or not.
    duplicated: usize,
    /// Acknowledged at one offset, found at another.
    misplaced: usize,
    /// A producer's sequence not increasing within a partition.
    reordered: usize,
    /// Consumed at an offset that now holds something else or nothing.
    consumed_then_gone: usize,
    /// Not ours, or offsets not contiguous.
    malformed: usize,
    /// In the log but never acknowledged (sent before a kill, or answered after it).
    unacknowledged_present: usize,
}

fn verify(log: &[Vec<Read>], acks: &[Ack], consumed: &[(i32, i64, Id)]) -> Verdict {
    let mut v = Verdict::default();
    let mut at: HashMap<(i32, i64), Id> = HashMap::new();
    let mut where_: HashMap<Id, Vec<(i32, i64)>> = HashMap::new();
    for (p, msgs) in log.iter().enumerate() {
        let p = p as i32;
        let mut last_seq: HashMap<u32, u64> = HashMap::new();
        let mut expected_offset = msgs.first().map_or(0, |m| m.offset);
        for m in msgs {
            if m.offset != expected_offset {
                v.malformed += 1;
            }
            expected_offset = m.offset + 1;
            let Some(id) = parse(&m.value) else {
                v.malformed += 1;
                continue;
            };
            if let Some(prev) = last_seq.insert(id.producer, id.seq)
                && id.seq <= prev
            {
                v.reordered += 1;
            }
            at.insert((p, m.offset), id);
            where_.entry(id).or_default().push((p, m.offset));
        }
    }
    v.present = where_.len();
    v.duplicated = where_.values().map(|w| w.len() - 1).sum();
    let mut acked: HashMap<Id, (i32, i64)> = HashMap::new();
    for a in acks {
        acked.insert(a.id, (a.partition, a.offset));
        match where_.get(&a.id) {
            None => v.lost += 1,
            Some(w) if !w.contains(&(a.partition, a.offset)) => v.misplaced += 1,
            Some(_) => {}
        }
    }
    v.unacknowledged_present = where_.keys().filter(|id| !acked.contains_key(id)).count();
    v.consumed_then_gone = consumed
        .iter()
        .filter(|(p, o, id)| at.get(&(*p, *o)) != Some(id))
        .count();
    v
}

#[test]
fn given_idempotent_producers_and_a_group_when_broker_killed_repeatedly_should_keep_every_acknowledged_message_once()
 {
    let rounds = env_u64("CRASH_ROUNDS").unwrap_or(5);
    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("crash harness: seed {seed} (replay with CRASH_SEED={seed}), {rounds} rounds");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_with(
        dir.path(),
        &[
            ("BROKER_FLUSH", "per-append"),
            ("BROKER_LOG_SEGMENT_BYTES", SEGMENT_BYTES),
            // A batch must fit in a segment.
            ("BROKER_MESSAGE_MAX_BYTES", SEGMENT_BYTES),
        ],
    );
    create_topic(&broker.addr, TOPIC, PARTITIONS, &[]);

    let deliveries = Arc::new(Deliveries::default());
    let group = Arc::new(GroupLog::default());
    let stop_producers = Arc::new(AtomicBool::new(false));
    let stop_member = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|n| {
            spawn_producer(
                n,
                broker.addr.clone(),
                Arc::clone(&deliveries),
                Arc::clone(&stop_producers),
                Duration::from_secs(120),
            )
        })
        .collect();
    let member = spawn_group_member(
        broker.addr.clone(),
        Arc::clone(&group),
        Arc::clone(&stop_member),
    );
    let standalone = Arc::new(GroupLog::default());
    let committer = spawn_standalone_committer(
        broker.addr.clone(),
        Arc::clone(&standalone),
        Arc::clone(&stop_member),
    );
    let checker = plain_consumer(&broker.addr, GROUP);
    let standalone_checker = plain_consumer(&broker.addr, STANDALONE_GROUP);
    let acked = || deliveries.acks.lock().unwrap().len();
    let deadline = Instant::now() + TIMEOUT;
    while acked() == 0 {
        assert!(
            Instant::now() < deadline,
            "no produce acknowledged at start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut figures = Vec::new();
    let mut kills = Vec::new();
    for round in 1..=rounds {
        std::thread::sleep(Duration::from_millis(rng.between(100, 1200)));
        // One kill in three lands during an orderly stop (SIGTERM, then SIGKILL 0-40 ms
        // later: partitions half closed, markers and snapshots half written).
        let during_stop = rng.between(0, 2) == 0;
        if during_stop {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &broker.pid().to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(rng.between(0, 40)));
        }
        broker.kill9();
        let acked_at_kill = acked();
        kills.push(Instant::now());
        let commits_at_kill = group.acknowledged.lock().unwrap().clone();
        let standalone_at_kill = standalone.acknowledged.lock().unwrap().clone();
        let bytes = log_bytes(dir.path(), TOPIC);
        // Down for a moment: clients see refused connections, not just a reset.
        std::thread::sleep(Duration::from_millis(rng.between(0, 300)));
        let spawned = Instant::now();
        broker.restart();
        let listening = spawned.elapsed();
        let first_ack = loop {
            let first = deliveries
                .acks
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take_while(|a| a.at >= spawned)
                .last()
                .map(|a| a.at);
            if let Some(at) = first {
                break at - spawned;
            }
            assert!(
                spawned.elapsed() < TIMEOUT,
                "round {round}: no produce acknowledged after the restart"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let now_committed = committed(&checker);
        let now_standalone = committed(&standalone_checker);
        for (name, before, now) in [
            (GROUP, &commits_at_kill, &now_committed),
            (STANDALONE_GROUP, &standalone_at_kill, &now_standalone),
        ] {
            for (p, o) in before {
                let got = now.get(p).copied().unwrap_or(-1);
                assert!(
                    got >= *o,
                    "round {round}: group {name} partition {p}: committed offset {got} < acknowledged commit {o} (seed {seed})"
                );
            }
        }
        println!(
            "round {round}: {} with {acked_at_kill} acknowledged, {bytes} log bytes; \
             listening after {} ms, first produce acknowledged after {} ms; commits {:?}",
            if during_stop {
                "SIGTERM then SIGKILL"
            } else {
                "SIGKILL"
            },
            listening.as_millis(),
            first_ack.as_millis(),
            now_committed
        );
        figures.push(RoundFigures {
            spawned,
            listening,
            first_ack,
            log_bytes: bytes,
            acked_at_kill,
        });
    }

    // Let every producer finish (flush: every message acknowledged or failed), then one
    // last kill with nothing in flight, so what is read back has been through a crash.
    stop_producers.store(true, Ordering::Relaxed);
    let outcomes: Vec<ProducerOutcome> = producers
        .into_iter()
        .map(|h| h.join().expect("producer thread"))
        .collect();
    // The member catches up: it consumes to the end and the broker acknowledges that commit.
    let ends: BTreeMap<i32, i64> = {
        let c = plain_consumer(&broker.addr, "crash-harness-ends");
        (0..PARTITIONS)
            .map(|p| {
                (
                    p,
                    c.fetch_watermarks(TOPIC, p, TIMEOUT).expect("watermarks").1,
                )
            })
            .collect()
    };
    let deadline = Instant::now() + TIMEOUT;
    while *group.acknowledged.lock().unwrap() != ends {
        assert!(
            Instant::now() < deadline,
            "the group member did not commit the log ends {ends:?}: {:?}",
            group.acknowledged.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_member.store(true, Ordering::Relaxed);
    member.join().expect("group member thread");
    committer.join().expect("standalone committer thread");
    let commits_at_end = group.acknowledged.lock().unwrap().clone();
    let standalone_at_end = standalone.acknowledged.lock().unwrap().clone();
    broker.kill9();
    kills.push(Instant::now());
    broker.restart();

    let (log, highs) = read_partitions(&broker.addr, TOPIC, PARTITIONS, Offset::Beginning);
    for (p, high) in highs.iter().enumerate() {
        assert_segments_follow(&dir.path().join(format!("{TOPIC}-{p}")), *high);
    }
    let acks = deliveries.acks.lock().unwrap().clone();
    let consumed = group.consumed.lock().unwrap().clone();
    let v = verify(&log, &acks, &consumed);
    let final_committed = committed(&plain_consumer(&broker.addr, GROUP));
    let final_standalone = committed(&plain_consumer(&broker.addr, STANDALONE_GROUP));
    // Per round: restart to the group member's first acknowledged commit ("-" when the
    // next kill came first: membership is not kept across a crash, so the member rejoins).
    let commit_times = group.commit_times.lock().unwrap().clone();
    let group_first_commit: Vec<String> = figures
        .iter()
        .zip(&kills[1..])
        .map(|(r, next_kill)| {
            commit_times
                .iter()
                .find(|t| **t >= r.spawned && *t < next_kill)
                .map_or("-".to_owned(), |t| (*t - r.spawned).as_millis().to_string())
        })
        .collect();
    let sent: u64 = outcomes.iter().map(|o| o.sent).sum();
    let fatal: Vec<&String> = outcomes.iter().flat_map(|o| &o.fatal).collect();
    let ms = |f: &dyn Fn(&RoundFigures) -> Duration| {
        figures
            .iter()
            .map(|r| f(r).as_millis().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "crash harness summary: seed={seed} rounds={rounds} sent={sent} acknowledged={} \
         failed_deliveries={} fatal_producer_errors={} lost={} duplicated={} misplaced={} reordered={} \
         consumed_then_gone={} malformed={} unacknowledged_present={} present={} \
         group_commits_acknowledged={} group_commits_failed={} group_first_commit_ms=[{}] \
         standalone_commits_acknowledged={} standalone_commits_failed={} recovery_listening_ms=[{}] \
         recovery_first_produce_ms=[{}] log_bytes_at_kill=[{}] acknowledged_at_kill=[{}] \
         final_high_watermarks={highs:?} final_committed={final_committed:?}",
        acks.len(),
        deliveries.failed.load(Ordering::Relaxed),
        fatal.len(),
        v.lost,
        v.duplicated,
        v.misplaced,
        v.reordered,
        v.consumed_then_gone,
        v.malformed,
        v.unacknowledged_present,
        v.present,
        group.commits_ok.load(Ordering::Relaxed),
        group.commits_failed.load(Ordering::Relaxed),
        group_first_commit.join(","),
        standalone.commits_ok.load(Ordering::Relaxed),
        standalone.commits_failed.load(Ordering::Relaxed),
        ms(&|r| r.listening),
        ms(&|r| r.first_ack),
        figures
            .iter()
            .map(|r| r.log_bytes.to_string())
            .collect::<Vec<_>>()
            .join(","),
        figures
            .iter()
            .map(|r| r.acked_at_kill.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    assert_eq!(v.lost, 0, "acknowledged messages lost (seed {seed})");
    assert_eq!(v.duplicated, 0, "messages duplicated (seed {seed})");
    assert_eq!(v.misplaced, 0, "messages not at their acknowledged offset");
    assert_eq!(v.reordered, 0, "a producer's messages out of order");
    assert_eq!(v.consumed_then_gone, 0, "consumed messages changed or gone");
    assert_eq!(v.malformed, 0, "foreign messages or offset gaps");
    assert!(fatal.is_empty(), "fatal producer errors: {fatal:?}");
    assert!(
        group.commits_ok.load(Ordering::Relaxed) > 0,
        "the group committed"
    );
    assert!(
        standalone.commits_ok.load(Ordering::Relaxed) > 0,
        "the standalone consumer committed"
    );
    for (p, o) in &commits_at_end {
        let got = final_committed.get(p).copied().unwrap_or(-1);
        assert!(got >= *o, "partition {p}: final commit {got} < {o}");
        assert!(
            got <= highs[*p as usize],
            "partition {p}: commit {got} past the log end"
        );
    }
    for (p, o) in &standalone_at_end {
        let got = final_standalone.get(p).copied().unwrap_or(-1);
        assert!(
            got >= *o,
            "standalone partition {p}: final commit {got} < {o}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// File-level damage, then a restart.

/// A batch's place in a segment file, read from its header.
#[derive(Debug, Clone, Copy)]
struct BatchAt {
    position: u64,
    len: u64,
    base_offset: i64,
    last_offset: i64,
}

/// The batches of a segment file (RecordBatch v2: baseOffset i64, batchLength i32).
fn batches(log: &Path) -> Vec<BatchAt> {
    let bytes = std::fs::read(log).unwrap();
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 12 <= bytes.len() {
        let base_offset = i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        let len = 12 + i32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        assert!(
            len >= 61 && at + len <= bytes.len(),
            "{}: not a whole batch at {at}",
            log.display()
        );
        let last_delta = i32::from_be_bytes(bytes[at + 23..at + 27].try_into().unwrap());
        out.push(BatchAt {
            position: at as u64,
            len: len as u64,
            base_offset,
            last_offset: base_offset + i64::from(last_delta),
        });
        at += len;
    }
    out
}

/// On disk, the partition's segments hold whole batches whose offsets follow one another
/// from segment to segment, up to `end`: nothing a client would skip silently (a stale
/// copy of a batch, say) is left behind. Returns the number of batches.
fn assert_segments_follow(partition_dir: &Path, end: i64) -> usize {
    let mut next: Option<i64> = None;
    let mut count = 0;
    for log in segment_logs(partition_dir) {
        for b in batches(&log) {
            if let Some(next) = next {
                assert_eq!(
                    b.base_offset,
                    next,
                    "{}: batch at {} does not follow",
                    log.display(),
                    b.position
                );
            }
            next = Some(b.last_offset + 1);
            count += 1;
        }
    }
    assert_eq!(
        next.unwrap_or(0),
        end,
        "{}: log end",
        partition_dir.display()
    );
    count
}

const DAMAGE_BATCHES: usize = 30;
const DAMAGE_BATCH_MESSAGES: usize = 5;

/// Produces `DAMAGE_BATCHES` waves of 400-byte messages with acks=all to partition 0 (one
/// batch per wave, most of the time); returns the values in offset order.
fn produce_waves(addr: &str, topic: &str) -> Vec<Vec<u8>> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()
        .expect("producer");
    let mut values = Vec::new();
    for wave in 0..DAMAGE_BATCHES {
        let wave_values: Vec<Vec<u8>> = (0..DAMAGE_BATCH_MESSAGES)
            .map(|i| {
                let mut v = format!("{topic}-{wave}-{i}-").into_bytes();
                v.resize(400, b'.');
                v
            })
            .collect();
        let futures: Vec<_> = wave_values
            .iter()
            .map(|v| {
                p.send(
                    FutureRecord::<[u8], [u8]>::to(topic)
                        .partition(0)
                        .payload(v),
                    TIMEOUT,
                )
            })
            .collect();
        for (f, v) in futures.into_iter().zip(&wave_values) {
            let d = block_on(f).map_err(|(e, _)| e).expect("acknowledged");
            assert_eq!(d.offset, values.len() as i64);
            values.push(v.clone());
        }
    }
    values
}

/// Sends one message with acks=all; returns its offset.
fn produce_one(addr: &str, topic: &str, value: &[u8]) -> i64 {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("acks", "all")
        .create()
        .expect("producer");
    block_on(
        p.send(
            FutureRecord::<[u8], [u8]>::to(topic)
                .partition(0)
                .payload(value),
            TIMEOUT,
        ),
    )
    .map_err(|(e, _)| e)
    .expect("acknowledged")
    .offset
}

/// Produces, kills the broker, lets `damage` at partition 0's directory (it returns the
/// offset the log must end at after recovery), restarts, and checks: every message below
/// that offset served intact, nothing after it, and the next produce lands there.
fn damage_then_restart(
    topic: &str,
    topic_configs: &[(&str, &str)],
    damage: impl FnOnce(&Path) -> i64,
) -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_with(dir.path(), &[("BROKER_FLUSH", "per-append")]);
    create_topic(&broker.addr, topic, 1, topic_configs);
    let values = produce_waves(&broker.addr, topic);
    broker.kill9();
    let end = damage(&dir.path().join(format!("{topic}-0")));
    assert!(end as usize <= values.len());
    broker.restart();

    let (log, highs) = read_partitions(&broker.addr, topic, 1, Offset::Beginning);
    assert_eq!(highs[0], end, "the log ends at the damage point");
    let got: Vec<&[u8]> = log[0].iter().map(|m| m.value.as_slice()).collect();
    let want: Vec<&[u8]> = values[..end as usize].iter().map(Vec::as_slice).collect();
    assert_eq!(got, want, "every message before the damage point, intact");
    assert_eq!(produce_one(&broker.addr, topic, b"after"), end);
    let (log, _) = read_partitions(&broker.addr, topic, 1, Offset::Offset(end));
    assert_eq!(log[0].len(), 1);
    assert_eq!(log[0][0].value, b"after");
    assert_segments_follow(&dir.path().join(format!("{topic}-0")), end + 1);
    // Dropped in this order: the broker, then its data directory.
    (broker, dir)
}

fn active_segment(partition_dir: &Path) -> PathBuf {
    segment_logs(partition_dir).pop().expect("a segment")
}

#[test]
fn given_active_segment_cut_mid_batch_when_restarted_should_serve_batches_before_and_append_after()
{
    damage_then_restart("torn-tail", &[], |pdir| {
        let log = active_segment(pdir);
        let last = *batches(&log).last().unwrap();
        let f = OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(last.position + last.len / 2).unwrap();
        last.base_offset
    });
}

#[test]
fn given_tail_batch_overwritten_when_restarted_should_cut_it() {
    damage_then_restart("corrupt-tail", &[], |pdir| {
        let log = active_segment(pdir);
        let last = *batches(&log).last().unwrap();
        let mut f = OpenOptions::new().write(true).open(&log).unwrap();
        // Inside the records, which the CRC covers; the header still frames the batch.
        f.seek(SeekFrom::Start(last.position + last.len - 6))
            .unwrap();
        f.write_all(b"XXXX").unwrap();
        last.base_offset
    });
}

#[test]
fn given_batch_in_the_middle_of_the_active_segment_overwritten_should_cut_from_it() {
    damage_then_restart("corrupt-middle", &[], |pdir| {
        let log = active_segment(pdir);
        let all = batches(&log);
        let victim = all[all.len() / 2];
        let mut f = OpenOptions::new().write(true).open(&log).unwrap();
        f.seek(SeekFrom::Start(victim.position + victim.len - 3))
            .unwrap();
        f.write_all(b"!!").unwrap();
        victim.base_offset
    });
}

#[test]
fn given_garbage_after_the_tail_when_restarted_should_cut_it_and_keep_everything() {
    let mut original_len = 0;
    let mut log_path = PathBuf::new();
    let (broker, _dir) = damage_then_restart("garbage-tail", &[], |pdir| {
        log_path = active_segment(pdir);
        let mut f = OpenOptions::new().append(true).open(&log_path).unwrap();
        original_len = f.metadata().unwrap().len();
        let mut rng = Rng(7);
        let garbage: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
        f.write_all(&garbage).unwrap();
        (DAMAGE_BATCHES * DAMAGE_BATCH_MESSAGES) as i64
    });
    drop(broker);
    // Cut back to the last whole batch, then one more batch ("after") was appended.
    let b = batches(&log_path);
    assert_eq!(b[b.len() - 2].position + b[b.len() - 2].len, original_len);
}

#[test]
fn given_stale_copy_of_the_last_batch_after_the_tail_when_restarted_should_cut_it() {
    damage_then_restart("stale-copy", &[], |pdir| {
        let log = active_segment(pdir);
        let last = *batches(&log).last().unwrap();
        let bytes = std::fs::read(&log).unwrap();
        let copy = &bytes[last.position as usize..(last.position + last.len) as usize];
        // A valid batch (CRC and all) whose offsets do not follow the log.
        OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(copy)
            .unwrap();
        (DAMAGE_BATCHES * DAMAGE_BATCH_MESSAGES) as i64
    });
}

#[test]
fn given_index_files_deleted_when_restarted_should_rebuild_them_and_lose_nothing() {
    let total = (DAMAGE_BATCHES * DAMAGE_BATCH_MESSAGES) as i64;
    // Segments of 16 KiB hold a few index entries each (one per 4 KiB of log).
    let (broker, _dir) = damage_then_restart("no-index", &[("segment.bytes", "16384")], |pdir| {
        let logs = segment_logs(pdir);
        assert!(logs.len() >= 3, "several segments: {logs:?}");
        for log in &logs[..2] {
            let index_bytes = std::fs::metadata(log.with_extension("index"))
                .unwrap()
                .len();
            assert!(
                index_bytes >= 16,
                "{}: index entries to lose",
                log.display()
            );
        }
        // A sealed segment the checkpoint vouches for, and the active one.
        for log in [&logs[0], &logs[logs.len() - 1]] {
            for ext in ["index", "timeindex"] {
                std::fs::remove_file(log.with_extension(ext)).unwrap();
            }
        }
        // A middle one loses only its time index.
        std::fs::remove_file(logs[1].with_extension("timeindex")).unwrap();
        total
    });
    // Reads from offsets inside each segment, and lookups by time, still land right.
    let (all, _) = read_partitions(&broker.addr, "no-index", 1, Offset::Beginning);
    let all = &all[0];
    for start in [1, total / 3, total / 2, total - 2] {
        let (from, _) = read_partitions(&broker.addr, "no-index", 1, Offset::Offset(start));
        assert_eq!(from[0], all[start as usize..], "read from {start}");
    }
    let c = plain_consumer(&broker.addr, "crash-harness-times");
    for probe in [0, total / 2, total - 1] {
        let ts = all[probe as usize].timestamp;
        let want = all.iter().find(|m| m.timestamp >= ts).unwrap().offset;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("no-index", 0, Offset::Offset(ts))
            .unwrap();
        let got = c.offsets_for_times(tpl, TIMEOUT).unwrap();
        assert_eq!(
            got.elements()[0].offset(),
            Offset::Offset(want),
            "first offset at or after timestamp {ts}"
        );
    }
}

/// One record of the committed-offsets file brokers kept before `__consumer_offsets`
/// (`.groups/offsets.log`: length, CRC-32C, group, topic, partition, offset, leader epoch,
/// metadata), written here independently of the broker's reader.
fn legacy_offset_record(group: &str, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut payload = Vec::new();
    for s in [group, topic] {
        payload.extend_from_slice(&(s.len() as u16).to_be_bytes());
        payload.extend_from_slice(s.as_bytes());
    }
    payload.extend_from_slice(&partition.to_be_bytes());
    payload.extend_from_slice(&offset.to_be_bytes());
    payload.extend_from_slice(&(-1i32).to_be_bytes());
    payload.extend_from_slice(&(-1i32).to_be_bytes());
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// A data directory from a broker before `__consumer_offsets`, its offsets file torn at
/// the end (a crash mid-write): the commits before the tear move into the topic when the
/// group's partition first loads, survive a kill -9 from there, and the file is retired.
#[test]
fn given_an_old_committed_offsets_file_torn_at_the_end_should_move_its_commits_into_the_offsets_topic()
 {
    let dir = tempfile::tempdir().unwrap();
    let groups = dir.path().join(".groups");
    std::fs::create_dir_all(&groups).unwrap();
    let mut file = Vec::new();
    for (p, o) in [(0, 1), (1, 2), (2, 3), (0, 10), (1, 20), (2, 30)] {
        file.extend(legacy_offset_record("torn-group", "commits", p, o));
    }
    // The last record torn (its final bytes lost), then garbage where it ended.
    file.truncate(file.len() - 3);
    file.extend_from_slice(&[0xAB; 40]);
    std::fs::write(groups.join("offsets.log"), &file).unwrap();

    let mut broker = Broker::start_with(dir.path(), &[("BROKER_FLUSH", "per-append")]);
    create_topic(&broker.addr, "commits", 3, &[]);
    let fetch = |broker: &Broker| -> Vec<Offset> {
        let c = plain_consumer(&broker.addr, "torn-group");
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition("commits", p);
        }
        c.committed_offsets(tpl, TIMEOUT)
            .expect("committed offsets")
            .elements()
            .iter()
            .map(|e| e.offset())
            .collect()
    };
    // Partition 2's last record was torn: its earlier commit stands.
    let moved = [Offset::Offset(10), Offset::Offset(20), Offset::Offset(3)];
    assert_eq!(fetch(&broker), moved);
    assert!(!groups.join("offsets.log").exists(), "the old file retired");
    assert!(groups.join("offsets.log.migrated").exists());
    broker.kill9();
    broker.restart();
    assert_eq!(fetch(&broker), moved, "kept in __consumer_offsets");
    let c = plain_consumer(&broker.addr, "torn-group");
    let mut tpl = TopicPartitionList::new();
    for (p, o) in [(0, 11), (1, 21), (2, 31)] {
        tpl.add_partition_offset("commits", p, Offset::Offset(o))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).expect("commit");
    broker.kill9();
    broker.restart();
    assert_eq!(
        fetch(&broker),
        [Offset::Offset(11), Offset::Offset(21), Offset::Offset(31)]
    );
}

// ---------------------------------------------------------------------------------------
// Recovery time of a large log, by hand.

/// Writes `CRASH_LARGE_MIB` MiB (default 1024) across four partitions with 1 KiB
/// messages, then measures the restart after a SIGKILL (the active segments re-validated:
/// CRC-32C of every batch since the checkpoint) and after a clean stop. Segment size from
/// `CRASH_LARGE_SEGMENT_BYTES` (the broker's default, 1 GiB, when unset: nothing rolls, so
/// the whole log is re-validated).
#[test]
#[ignore = "by hand: writes ~1 GiB and prints recovery times"]
fn recovery_time_of_a_large_log() {
    let mib = env_u64("CRASH_LARGE_MIB").unwrap_or(1024);
    let segment = std::env::var("CRASH_LARGE_SEGMENT_BYTES").unwrap_or("1073741824".into());
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_with(
        dir.path(),
        &[
            ("BROKER_FLUSH", "per-append"),
            ("BROKER_LOG_SEGMENT_BYTES", &segment),
        ],
    );
    create_topic(&broker.addr, "large", PARTITIONS, &[]);
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .expect("producer");
    let mut rng = Rng(11);
    let value: Vec<u8> = (0..1024).map(|_| rng.next() as u8).collect();
    let count = mib * 1024;
    let started = Instant::now();
    let mut i = 0u64;
    while i < count {
        let record = BaseRecord::<[u8], [u8]>::to("large")
            .partition((i % PARTITIONS as u64) as i32)
            .payload(&value);
        match p.send(record) {
            Ok(()) => i += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => panic!("send: {e}"),
        }
    }
    p.flush(Duration::from_secs(600)).expect("flush");
    let produce_s = started.elapsed().as_secs_f64();
    let bytes = (0..PARTITIONS)
        .flat_map(|p| segment_logs(&dir.path().join(format!("large-{p}"))))
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum::<u64>();
    let highs = |addr: &str| -> Vec<i64> {
        let c = plain_consumer(addr, "large-check");
        (0..PARTITIONS)
            .map(|p| c.fetch_watermarks("large", p, TIMEOUT).unwrap().1)
            .collect()
    };
    let before = highs(&broker.addr);

    broker.kill9();
    let t = Instant::now();
    broker.restart();
    let unclean = t.elapsed();
    assert_eq!(highs(&broker.addr), before);

    broker.stop();
    let t = Instant::now();
    broker.restart();
    let clean = t.elapsed();
    assert_eq!(highs(&broker.addr), before);

    // Cold cache, where the kernel lets us drop it (root, not in every container).
    broker.kill9();
    let cold = std::fs::write("/proc/sys/vm/drop_caches", "3")
        .ok()
        .map(|()| {
            let t = Instant::now();
            broker.restart();
            let took = t.elapsed();
            assert_eq!(highs(&broker.addr), before);
            took
        });
    println!(
        "large-log recovery: {bytes} log bytes in {PARTITIONS} partitions, segment_bytes={segment}, \
         produced in {produce_s:.1} s; restart after SIGKILL (warm cache) {} ms; after a clean \
         stop {} ms; after SIGKILL with a dropped page cache {}",
        unclean.as_millis(),
        clean.as_millis(),
        cold.map_or("n/a (cannot drop caches)".to_owned(), |d| format!(
            "{} ms",
            d.as_millis()
        ))
    );
}

// ---------------------------------------------------------------------------------------
// A power cut, by hand: what a SIGKILL cannot show.

/// Runs a command, failing the test with its name when it fails.
fn run(cmd: &str, args: &[&str]) {
    let status = std::process::Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (this test needs root, mount and mkfs.ext4)"));
    assert!(status.success(), "{cmd} {args:?}: {status}");
}

/// An ext4 image mounted on a loop device; unmounted on drop.
struct LoopMount(PathBuf);

impl LoopMount {
    fn new(image: &Path, at: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &["-o", "loop", image.to_str().unwrap(), at.to_str().unwrap()],
        );
        Self(at.to_owned())
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// The broker's data directory lives on an ext4 file system in a loop device. Idempotent
/// producers (acks=all) and a standalone committer run; the broker is SIGKILLed and, at
/// once, the image file is copied: the copy holds what the file system had written to its
/// "disk" (the loop device), which is what a power cut would leave, not what was only in
/// the page cache. The copy is mounted (ext4 replays its journal) and a broker started on
/// it must hold every acknowledged message and commit. `CRASH_POWER_FLUSH` picks the
/// broker's flush policy (`per-append` by default; `none` shows the loss the harness
/// reports when acknowledgements do not wait for fdatasync). Needs root (mount, loop
/// devices); the copy is not atomic, so late kernel writeback can only make it hold more.
#[test]
#[ignore = "by hand, as root: needs loop devices, mount and mkfs.ext4"]
fn given_power_cut_should_keep_every_acknowledged_message_and_commit() {
    let flush = std::env::var("CRASH_POWER_FLUSH").unwrap_or("per-append".into());
    let run_ms = env_u64("CRASH_POWER_MS").unwrap_or(3000);
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("disk.img");
    let cut = work.path().join("cut.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
    let live = LoopMount::new(&image, &work.path().join("live"));
    let data = live.0.join("data");
    let env = [
        ("BROKER_FLUSH", flush.as_str()),
        ("BROKER_LOG_SEGMENT_BYTES", SEGMENT_BYTES),
        ("BROKER_MESSAGE_MAX_BYTES", SEGMENT_BYTES),
    ];
    let mut broker = Broker::start_with(&data, &env);
    create_topic(&broker.addr, TOPIC, PARTITIONS, &[]);
    let deliveries = Arc::new(Deliveries::default());
    let standalone = Arc::new(GroupLog::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|n| {
            spawn_producer(
                n,
                broker.addr.clone(),
                Arc::clone(&deliveries),
                Arc::clone(&stop),
                Duration::from_secs(1),
            )
        })
        .collect();
    // Not joined: with the broker gone for good, its last commit waits forever.
    let _committer = spawn_standalone_committer(
        broker.addr.clone(),
        Arc::clone(&standalone),
        Arc::clone(&stop),
    );
    std::thread::sleep(Duration::from_millis(run_ms));

    broker.kill9();
    let cut_at = Instant::now();
    run(
        "cp",
        &[
            "--sparse=always",
            image.to_str().unwrap(),
            cut.to_str().unwrap(),
        ],
    );
    let acks: Vec<Ack> = deliveries
        .acks
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.at < cut_at)
        .copied()
        .collect();
    let commits_at_cut = standalone.acknowledged.lock().unwrap().clone();
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().expect("producer thread");
    }
    drop(broker);
    drop(live);

    let after = LoopMount::new(&cut, &work.path().join("after"));
    let broker = Broker::start_with(&after.0.join("data"), &env);
    let (log, highs) = read_partitions(&broker.addr, TOPIC, PARTITIONS, Offset::Beginning);
    let v = verify(&log, &acks, &[]);
    let now_committed = committed(&plain_consumer(&broker.addr, STANDALONE_GROUP));
    let commits_lost = commits_at_cut
        .iter()
        .filter(|(p, o)| now_committed.get(p).is_none_or(|c| c < o))
        .count();
    println!(
        "power cut: flush={flush} acknowledged={} present={} lost={} duplicated={} \
         misplaced={} reordered={} malformed={} high_watermarks={highs:?} \
         commits_acknowledged={} partitions_with_commit_lost={commits_lost}",
        acks.len(),
        v.present,
        v.lost,
        v.duplicated,
        v.misplaced,
        v.reordered,
        v.malformed,
        standalone.commits_ok.load(Ordering::Relaxed),
    );
    drop(broker);
    drop(after);
    if flush == "per-append" {
        assert!(!acks.is_empty());
        assert_eq!(v.lost, 0, "acknowledged messages lost in the power cut");
        assert_eq!(v.duplicated + v.misplaced + v.reordered + v.malformed, 0);
        assert_eq!(commits_lost, 0, "acknowledged commits lost");
    }
}

// ---------------------------------------------------------------------------------------
// Group fencing across a restart, spoken at the protocol level (the test controls which
// member id and generation a request carries).

mod raw {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{
        ApiKey, CreateTopicsRequest, CreateTopicsResponse, GroupId, JoinGroupRequest,
        JoinGroupResponse, OffsetCommitRequest, OffsetCommitResponse, RequestHeader,
        ResponseHeader, SyncGroupRequest, SyncGroupResponse, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    pub fn call<Q: Encodable, R: Decodable>(
        stream: &mut TcpStream,
        key: ApiKey,
        version: i16,
        request: &Q,
    ) -> R {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(1)
            .with_client_id(Some(StrBytes::from_static_str("fencing-test")))
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        request.encode(&mut buf, version).unwrap();
        stream.write_all(&(buf.len() as i32).to_be_bytes()).unwrap();
        stream.write_all(&buf).unwrap();
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).unwrap();
        let mut frame = vec![0u8; i32::from_be_bytes(len) as usize];
        stream.read_exact(&mut frame).unwrap();
        let mut frame = Bytes::from(frame);
        ResponseHeader::decode(&mut frame, key.response_header_version(version)).unwrap();
        R::decode(&mut frame, version).unwrap()
    }

    pub fn create_topic(stream: &mut TcpStream, name: &'static str) {
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str(name)))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ]);
        let response: CreateTopicsResponse = call(stream, ApiKey::CreateTopics, 4, &request);
        assert_eq!(response.topics[0].error_code, 0);
    }

    /// Asks FindCoordinator (v2) until the group has a coordinator that has loaded its
    /// partition, as a client does before joining (the first ask creates
    /// `__consumer_offsets`; a single broker coordinates every group).
    pub fn find_coordinator(stream: &mut TcpStream, group: &'static str) {
        use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
        let start = std::time::Instant::now();
        loop {
            let request = FindCoordinatorRequest::default()
                .with_key(StrBytes::from_static_str(group))
                .with_key_type(0);
            let response: FindCoordinatorResponse =
                call(stream, ApiKey::FindCoordinator, 2, &request);
            if response.error_code == 0 {
                return;
            }
            assert!(start.elapsed() < super::TIMEOUT, "no coordinator");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Joins `group` as a new member (JoinGroup v4: MEMBER_ID_REQUIRED, then again with
    /// the id) and syncs; returns (member id, generation). Retried while the coordinator
    /// loads the group's partition (COORDINATOR_LOAD_IN_PROGRESS, 14).
    pub fn join(stream: &mut TcpStream, group: &'static str) -> (String, i32) {
        find_coordinator(stream, group);
        let mut member_id = StrBytes::from_static_str("");
        let start = std::time::Instant::now();
        loop {
            let request = JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str(group)))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_member_id(member_id.clone())
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str("range"))
                        .with_metadata(Bytes::from_static(b"m")),
                ]);
            let response: JoinGroupResponse = call(stream, ApiKey::JoinGroup, 4, &request);
            member_id = response.member_id.clone();
            if response.error_code == 0 {
                let sync = SyncGroupRequest::default()
                    .with_group_id(GroupId(StrBytes::from_static_str(group)))
                    .with_generation_id(response.generation_id)
                    .with_member_id(member_id.clone())
                    .with_assignments(vec![
                        SyncGroupRequestAssignment::default()
                            .with_member_id(member_id.clone())
                            .with_assignment(Bytes::from_static(b"a")),
                    ]);
                let synced: SyncGroupResponse = call(stream, ApiKey::SyncGroup, 3, &sync);
                assert_eq!(synced.error_code, 0);
                return (member_id.to_string(), response.generation_id);
            }
            assert!(
                matches!(response.error_code, 79 | 14),
                "MEMBER_ID_REQUIRED first, or a coordinator loading: {}",
                response.error_code
            );
            assert!(start.elapsed() < super::TIMEOUT, "did not join");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// OffsetCommit v7 for partition 0 of `topic`; returns its error code.
    pub fn commit(
        stream: &mut TcpStream,
        group: &'static str,
        topic: &'static str,
        member: &str,
        generation: i32,
        offset: i64,
    ) -> i16 {
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(StrBytes::from_string(member.to_owned()))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str(topic)))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(offset),
                    ]),
            ]);
        let response: OffsetCommitResponse = call(stream, ApiKey::OffsetCommit, 7, &request);
        response.topics[0].partitions[0].error_code
    }
}

/// A commit sent before a crash and retried after the restart (librdkafka does this) must
/// not pass for a member of the new incarnation: member ids may never repeat across
/// restarts, or the stale commit overwrites the new member's offset.
#[test]
fn given_broker_restarted_when_a_commit_from_before_the_crash_is_retried_should_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let mut s = std::net::TcpStream::connect(&broker.addr).unwrap();
    raw::create_topic(&mut s, "fenced");
    let (old_member, old_generation) = raw::join(&mut s, "fencing");
    assert_eq!(
        raw::commit(&mut s, "fencing", "fenced", &old_member, old_generation, 5),
        0
    );
    broker.kill9();
    broker.restart();

    // The same client joins again first, as it would after the restart.
    let mut s = std::net::TcpStream::connect(&broker.addr).unwrap();
    let (new_member, new_generation) = raw::join(&mut s, "fencing");
    assert_ne!(
        new_member, old_member,
        "a member id handed out again after a restart"
    );
    assert_eq!(
        raw::commit(
            &mut s,
            "fencing",
            "fenced",
            &new_member,
            new_generation,
            100
        ),
        0
    );
    // The stale retry: UNKNOWN_MEMBER_ID (25), and the new member's offset stays.
    assert_eq!(
        raw::commit(&mut s, "fencing", "fenced", &old_member, old_generation, 7),
        25
    );
    let c = plain_consumer(&broker.addr, "fencing");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("fenced", 0);
    let committed = c.committed_offsets(tpl, TIMEOUT).unwrap();
    assert_eq!(committed.elements()[0].offset(), Offset::Offset(100));
}
