//! Group coordinators in a cluster: a group's coordinator is the leader of its
//! `__consumer_offsets` partition, and when that broker is killed (kill -9) mid-stream
//! another replica takes the partition over with every acknowledged commit. Consumers
//! we did not write (librdkafka, kafka-python) process every message; after the
//! rebalance a member starts a partition from the last acknowledged commit, never below
//! it; and what was acknowledged as committed is there at the end.

mod common;
mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{bounded, close_members, require_python_clients};
use futures_executor::block_on;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, OffsetFetchRequest,
    OffsetFetchResponse,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 12;
const DEADLINE: Duration = Duration::from_secs(180);

/// The coordinator of `group` as `addr` answers FindCoordinator v2 (node id), or the
/// error code.
fn find_coordinator(addr: &str, group: &str) -> Result<i32, i16> {
    let mut stream = TcpStream::connect(addr).map_err(|_| -1i16)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|_| -1i16)?;
    let r: FindCoordinatorResponse = wire::call(
        &mut stream,
        ApiKey::FindCoordinator,
        2,
        &FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.to_owned()))
            .with_key_type(0),
    );
    if r.error_code != 0 {
        return Err(r.error_code);
    }
    Ok(r.node_id.0)
}

/// Asks the live brokers until one names a coordinator (it exists once the group did).
fn coordinator(addrs: &[String], group: &str) -> i32 {
    let start = Instant::now();
    loop {
        for addr in addrs {
            if let Ok(node) = find_coordinator(addr, group) {
                return node;
            }
        }
        assert!(start.elapsed() < DEADLINE, "no broker names a coordinator");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The group's committed offsets per partition of `TOPIC`, read from its coordinator
/// with OffsetFetch v5 (retried while it loads or moves).
fn committed(addrs: &[String], group: &str) -> BTreeMap<i32, i64> {
    let start = Instant::now();
    loop {
        let node = coordinator(addrs, group);
        let addr = &addrs[(node - 1) as usize];
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let r: OffsetFetchResponse = wire::call(
                &mut stream,
                ApiKey::OffsetFetch,
                5,
                &OffsetFetchRequest::default()
                    .with_group_id(StrBytes::from_string(group.to_owned()).into())
                    .with_topics(None),
            );
            if r.error_code == 0 {
                return r
                    .topics
                    .iter()
                    .filter(|t| t.name.0.as_str() == TOPIC)
                    .flat_map(|t| t.partitions.iter())
                    .map(|p| (p.partition_index, p.committed_offset))
                    .collect();
            }
        }
        assert!(start.elapsed() < DEADLINE, "cannot read committed offsets");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn setup(bootstrap: &str, count: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    // Every broker registered before the topic is placed.
    let start = Instant::now();
    while admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(5))
        .map_or(0, |m| m.brokers().len())
        < 3
    {
        assert!(start.elapsed() < DEADLINE, "three brokers never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let created = block_on(admin.create_topics(
        &[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let values: Vec<String> = (0..count).map(|i| format!("m{i}")).collect();
    // send_result enqueues at once (an awaited `send` would go one message at a time).
    let sends: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            producer
                .send_result(
                    FutureRecord::<[u8], [u8]>::to(TOPIC)
                        .partition((i % PARTITIONS as usize) as i32)
                        .payload(v.as_bytes()),
                )
                .map_err(|(e, _)| e)
                .expect("enqueued")
        })
        .collect();
    for s in sends {
        block_on(s)
            .expect("delivered")
            .map_err(|(e, _)| e)
            .expect("acknowledged");
    }
}

/// What the history check needs: per partition, when (in poll steps) each member was
/// last given it, every acknowledged commit with its step, and every delivery.
#[derive(Default)]
struct History {
    step: u64,
    /// (partition) -> [(step, committed offset)]
    acked: BTreeMap<i32, Vec<(u64, i64)>>,
    /// (member, partition) -> step it was (last) assigned
    assigned_at: HashMap<(usize, i32), u64>,
    delivered: BTreeMap<(i32, i64), u32>,
    values: BTreeSet<String>,
    /// Deliveries below a commit acknowledged before the partition was assigned.
    violations: Vec<String>,
    rereads: u64,
}

impl History {
    fn max_acked_before(&self, p: i32, step: u64) -> i64 {
        self.acked
            .get(&p)
            .into_iter()
            .flatten()
            .filter(|(s, _)| *s < step)
            .map(|(_, o)| *o)
            .max()
            .unwrap_or(-1)
    }

    fn deliver(&mut self, member: usize, p: i32, offset: i64, value: String) {
        self.step += 1;
        let seen = self.delivered.entry((p, offset)).or_default();
        *seen += 1;
        if *seen > 1 {
            self.rereads += 1;
            let assigned = self.assigned_at.get(&(member, p)).copied().unwrap_or(0);
            let floor = self.max_acked_before(p, assigned);
            if offset < floor {
                self.violations.push(format!(
                    "member {member} re-read {p}@{offset}, below the commit {floor} acknowledged before it was assigned the partition"
                ));
            }
        }
        self.values.insert(value);
    }

    fn assignment(&mut self, member: usize, now: &BTreeSet<i32>, before: &BTreeSet<i32>) {
        self.step += 1;
        for p in now.difference(before) {
            self.assigned_at.insert((member, *p), self.step);
        }
    }

    fn ack(&mut self, commits: &[(i32, i64)]) {
        self.step += 1;
        for (p, o) in commits {
            self.acked.entry(*p).or_default().push((self.step, *o));
        }
    }

    /// The group's committed offsets after the run, each at least the last commit
    /// acknowledged for its partition, and no delivery below a commit acknowledged
    /// before its partition was assigned.
    fn check(&self, addrs: &[String], killed: Option<i32>, group: &str) -> BTreeMap<i32, i64> {
        let stored = committed(&addrs_without(addrs, killed), group);
        for (p, acked) in self.max_acked() {
            let have = stored.get(&p).copied().unwrap_or(-1);
            assert!(
                have >= acked,
                "partition {p}: committed {have} after the failover, below the acknowledged {acked}"
            );
        }
        assert!(self.violations.is_empty(), "{:#?}", self.violations);
        stored
    }

    fn max_acked(&self) -> BTreeMap<i32, i64> {
        self.acked
            .iter()
            .map(|(p, v)| (*p, v.iter().map(|(_, o)| *o).max().unwrap_or(-1)))
            .collect()
    }
}

fn assigned(c: &BaseConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|l| l.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// The member's positions on its assigned partitions (what a commit stores).
fn positions(c: &BaseConsumer) -> Vec<(i32, i64)> {
    c.position()
        .map(|l| {
            l.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn commit(c: &BaseConsumer, at: &[(i32, i64)]) -> bool {
    if at.is_empty() {
        return false;
    }
    let mut list = TopicPartitionList::new();
    for (p, o) in at {
        list.add_partition_offset(TOPIC, *p, Offset::Offset(*o))
            .unwrap();
    }
    c.commit(&list, CommitMode::Sync).is_ok()
}

#[test]
fn given_three_librdkafka_members_when_the_coordinator_is_killed_mid_stream_should_process_everything_from_the_acknowledged_commits()
 {
    const COUNT: usize = 12_000;
    const GROUP: &str = "failover-group";
    let mut cluster = testkit::Cluster::start(3, &[]);
    let addrs = cluster.addrs();
    let bootstrap = addrs.join(",");
    setup(&bootstrap, COUNT);
    let members: Vec<BaseConsumer> = (0..3)
        .map(|_| {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", GROUP)
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500")
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "100")
                .set("max.partition.fetch.bytes", "4096")
                .create()
                .unwrap();
            c.subscribe(&[TOPIC]).unwrap();
            c
        })
        .collect();
    let mut history = History::default();
    let mut held: Vec<BTreeSet<i32>> = vec![BTreeSet::new(); 3];
    let mut since_commit = [0usize; 3];
    let mut killed: Option<i32> = None;
    // Assignment changes seen after the kill: none when the new coordinator restored the
    // group's stable generation from the topic.
    let mut moved_after_kill = 0;
    let start = Instant::now();
    while history.values.len() < COUNT {
        assert!(
            start.elapsed() < DEADLINE,
            "processed {} of {COUNT}; killed {killed:?}",
            history.values.len()
        );
        // Paced (about 750 messages/s), so that the stream outlasts the failover.
        std::thread::sleep(Duration::from_millis(5));
        for (i, m) in members.iter().enumerate() {
            for _ in 0..5 {
                let Some(Ok(msg)) = m.poll(Duration::from_millis(5)) else {
                    break;
                };
                let now = assigned(m);
                if now != held[i] {
                    history.assignment(i, &now, &held[i]);
                    held[i] = now;
                }
                let value = String::from_utf8_lossy(msg.payload().unwrap_or_default()).into();
                history.deliver(i, msg.partition(), msg.offset(), value);
                since_commit[i] += 1;
            }
            let now = assigned(m);
            if now != held[i] {
                history.assignment(i, &now, &held[i]);
                held[i] = now;
                moved_after_kill += usize::from(killed.is_some());
            }
            if since_commit[i] >= 50 {
                let at = positions(m);
                if commit(m, &at) {
                    history.ack(&at);
                    since_commit[i] = 0;
                }
            }
        }
        if killed.is_none() && history.values.len() >= COUNT / 3 {
            let node = coordinator(&addrs, GROUP);
            eprintln!(
                "killing the coordinator, broker {node}, after {} messages",
                history.values.len()
            );
            cluster.node(node).kill9();
            killed = Some(node);
        }
    }
    // Everything processed: commit where each member stands, then check the group's
    // committed offsets against every acknowledged commit.
    let final_start = Instant::now();
    for (i, m) in members.iter().enumerate() {
        loop {
            let _ = m.poll(Duration::from_millis(20));
            let at = positions(m);
            if at.is_empty() || commit(m, &at) {
                history.ack(&at);
                break;
            }
            assert!(final_start.elapsed() < DEADLINE, "member {i} cannot commit");
        }
    }
    let stored = history.check(&addrs, killed, GROUP);
    eprintln!(
        "processed {COUNT} messages with {} re-reads; coordinator {killed:?} killed; {moved_after_kill} assignment changes after the kill; committed {stored:?}",
        history.rereads
    );
    assert!(killed.is_some());
    close_members(members, Duration::from_secs(60));
}

/// `addrs` with the killed broker's address replaced by a live one (the helpers index
/// brokers by node id).
fn addrs_without(addrs: &[String], killed: Option<i32>) -> Vec<String> {
    let live = addrs
        .iter()
        .enumerate()
        .find(|(i, _)| Some(*i as i32 + 1) != killed)
        .map(|(_, a)| a.clone())
        .unwrap_or_default();
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if Some(i as i32 + 1) == killed {
                live.clone()
            } else {
                a.clone()
            }
        })
        .collect()
}

/// `p:o,p:o` as a member prints an acknowledged commit.
fn parse_commit(text: &str) -> Vec<(i32, i64)> {
    text.split(',')
        .filter_map(|e| {
            let (p, o) = e.split_once(':')?;
            Some((p.parse().ok()?, o.parse().ok()?))
        })
        .collect()
}

/// One kafka-python member process (tests/clients/kafka_python_member.py).
struct PyMember {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl PyMember {
    fn start(python: &std::path::Path, bootstrap: &str, group: &str) -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/kafka_python_member.py"
        );
        let mut child = bounded(python, Duration::from_secs(300))
            .arg(script)
            .arg(bootstrap)
            .env("KAFKA_PYTHON_MEMBER_GROUP", group)
            .env("KAFKA_PYTHON_MEMBER_TOPIC", TOPIC)
            .env("KAFKA_PYTHON_MEMBER_COMMIT_EVERY", "50")
            // Paced (about 300 records/s each), so that the stream outlasts the failover.
            .env("KAFKA_PYTHON_MEMBER_MAX_POLL_RECORDS", "10")
            .env("KAFKA_PYTHON_MEMBER_PAUSE_MS", "30")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kafka-python member");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        let _ = writeln!(stdin, "{line}");
        let _ = stdin.flush();
    }
}

#[test]
fn given_two_kafka_python_members_when_the_coordinator_is_killed_mid_stream_should_process_everything_from_the_acknowledged_commits()
 {
    const COUNT: usize = 6_000;
    const GROUP: &str = "py-failover-group";
    let python = require_python_clients();
    let mut cluster = testkit::Cluster::start(3, &[]);
    let addrs = cluster.addrs();
    let bootstrap = addrs.join(",");
    setup(&bootstrap, COUNT);
    let mut members: Vec<PyMember> = (0..2)
        .map(|_| PyMember::start(&python, &bootstrap, GROUP))
        .collect();
    let mut history = History::default();
    let mut held: Vec<BTreeSet<i32>> = vec![BTreeSet::new(); 2];
    let mut killed: Option<i32> = None;
    let start = Instant::now();
    while history.values.len() < COUNT {
        assert!(
            start.elapsed() < DEADLINE,
            "processed {} of {COUNT}; killed {killed:?}",
            history.values.len()
        );
        let mut idle = true;
        for (i, m) in members.iter_mut().enumerate() {
            while let Ok(line) = m.lines.try_recv() {
                idle = false;
                let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                match kind {
                    "A" => {
                        let now: BTreeSet<i32> =
                            rest.split(',').filter_map(|p| p.parse().ok()).collect();
                        history.assignment(i, &now, &held[i]);
                        held[i] = now;
                    }
                    // `D partition offset value`: one delivery.
                    "D" => {
                        let mut f = rest.splitn(3, ' ');
                        let p: i32 = f.next().unwrap().parse().unwrap();
                        let o: i64 = f.next().unwrap().parse().unwrap();
                        let v = f.next().unwrap_or_default().to_owned();
                        history.deliver(i, p, o, v);
                    }
                    // `K p:o,p:o`: a commit the coordinator acknowledged.
                    "K" => history.ack(&parse_commit(rest)),
                    _ => {}
                }
            }
        }
        if killed.is_none() && history.values.len() >= COUNT / 3 {
            let node = coordinator(&addrs, GROUP);
            eprintln!(
                "killing the coordinator, broker {node}, after {} messages",
                history.values.len()
            );
            cluster.node(node).kill9();
            killed = Some(node);
        }
        if idle {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Each member commits where it stands (printing `K ...` and then `C`).
    for m in &mut members {
        m.say("stop");
    }
    let final_start = Instant::now();
    let mut stopped = 0;
    while stopped < members.len() {
        assert!(final_start.elapsed() < DEADLINE, "members did not commit");
        for m in &mut members {
            while let Ok(line) = m.lines.try_recv() {
                if line == "C" {
                    stopped += 1;
                } else if let Some(rest) = line.strip_prefix("K ") {
                    history.ack(&parse_commit(rest));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for m in &mut members {
        m.say("exit");
        let _ = m.child.wait();
    }
    history.check(&addrs, killed, GROUP);
    eprintln!(
        "kafka-python: processed {COUNT} messages with {} re-reads; coordinator {killed:?} killed",
        history.rereads
    );
    assert!(killed.is_some());
}
