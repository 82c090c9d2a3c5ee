//! Consumer groups driven by librdkafka (the `rdkafka` crate) and kcat: members sharing a
//! topic (queue-style), groups each receiving everything (pub/sub), rebalances when a
//! member dies, and committed offsets that survive broker restarts and crashes.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Broker, close_members, require_tool};
use futures_executor::block_on;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TIMEOUT: Duration = Duration::from_secs(30);

fn create_topic(broker: &Broker, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let r = block_on(admin.create_topics(
        &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
    assert_eq!(r[0], Ok(name.to_owned()));
}

fn produce(broker: &Broker, topic: &str, count: usize, tag: &str) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let values: Vec<String> = (0..count).map(|i| format!("{tag}-{i}")).collect();
    let futures: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            p.send(
                FutureRecord::<[u8], [u8]>::to(topic)
                    .partition((i % 6) as i32)
                    .payload(v.as_bytes()),
                TIMEOUT,
            )
        })
        .collect();
    for f in futures {
        block_on(f).map_err(|(e, _)| e).expect("produced");
    }
}

fn member(broker: &Broker, group: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

fn assigned(c: &BaseConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls every member until their assignments are disjoint and cover `partitions`.
fn wait_for_balance(members: &[&BaseConsumer], partitions: i32) -> Vec<BTreeSet<i32>> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for m in members {
            let _ = m.poll(Duration::from_millis(50));
        }
        let sets: Vec<BTreeSet<i32>> = members.iter().map(|m| assigned(m)).collect();
        let total: usize = sets.iter().map(|s| s.len()).sum();
        let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
        if total == partitions as usize
            && union.len() == partitions as usize
            && sets.iter().all(|s| !s.is_empty())
        {
            return sets;
        }
        assert!(
            Instant::now() < deadline,
            "no balanced assignment: {sets:?}"
        );
    }
}

/// Polls the members round-robin until `count` messages arrived; returns (value, partition, member).
fn drain(members: &[&BaseConsumer], count: usize) -> Vec<(String, i32, usize)> {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    while got.len() < count {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {count}",
            got.len()
        );
        for (i, m) in members.iter().enumerate() {
            if let Some(msg) = m.poll(Duration::from_millis(20)) {
                let msg = msg.expect("message");
                got.push((
                    String::from_utf8(msg.payload().unwrap().to_vec()).unwrap(),
                    msg.partition(),
                    i,
                ));
            }
        }
    }
    got
}

#[test]
fn given_three_members_in_one_group_should_share_six_partitions_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    create_topic(&broker, "shared", 6);
    let (a, b, c) = (
        member(&broker, "queue", "shared"),
        member(&broker, "queue", "shared"),
        member(&broker, "queue", "shared"),
    );
    let sets = wait_for_balance(&[&a, &b, &c], 6);
    produce(&broker, "shared", 600, "m");
    let got = drain(&[&a, &b, &c], 600);
    let values: HashSet<&String> = got.iter().map(|(v, _, _)| v).collect();
    assert_eq!(values.len(), 600, "no duplicates, nothing lost");
    for (_, partition, m) in &got {
        assert!(
            sets[*m].contains(partition),
            "member {m} read partition {partition} it does not own"
        );
    }
    // Nothing more arrives.
    for m in [&a, &b, &c] {
        assert!(m.poll(Duration::from_millis(300)).is_none());
    }
    close_members(vec![a, b, c], TIMEOUT);
}

#[test]
fn given_two_groups_should_each_receive_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    create_topic(&broker, "fanout", 6);
    produce(&broker, "fanout", 300, "f");
    for group in ["billing", "audit"] {
        let m = member(&broker, group, "fanout");
        let got = drain(&[&m], 300);
        assert_eq!(
            got.iter().map(|(v, _, _)| v).collect::<HashSet<_>>().len(),
            300,
            "group {group}"
        );
    }
}

#[test]
fn given_a_member_killed_mid_stream_should_rebalance_its_partitions_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    create_topic(&broker, "resilient", 6);
    let (a, b) = (
        member(&broker, "survivors", "resilient"),
        member(&broker, "survivors", "resilient"),
    );
    // A third member in its own process (kcat, Debian's librdkafka), killed with SIGKILL.
    let mut doomed = Command::new(require_tool("kcat"))
        .args([
            "-b",
            &broker.addr,
            "-G",
            "survivors",
            "resilient",
            "-X",
            "session.timeout.ms=6000",
            "-X",
            "heartbeat.interval.ms=500",
            "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    // Wait until the kcat member holds some partitions (the two here hold fewer than 6).
    loop {
        for m in [&a, &b] {
            let _ = m.poll(Duration::from_millis(50));
        }
        let held = assigned(&a).len() + assigned(&b).len();
        if (1..6).contains(&held) && !assigned(&a).is_empty() && !assigned(&b).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "kcat never joined");
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let killed_at = Instant::now();
    let sets = wait_for_balance(&[&a, &b], 6);
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(20), "rebalance took {took:?}");
    produce(&broker, "resilient", 120, "r");
    let got = drain(&[&a, &b], 120);
    assert_eq!(
        got.iter().map(|(v, _, _)| v).collect::<HashSet<_>>().len(),
        120
    );
    assert_eq!(sets.iter().flatten().count(), 6);
    close_members(vec![a, b], TIMEOUT);
}

fn consume_and_commit(broker: &Broker, group: &str, topic: &str, count: usize) -> Vec<String> {
    let m = member(broker, group, topic);
    let got = drain(&[&m], count);
    m.commit_consumer_state(CommitMode::Sync).expect("commit");
    got.into_iter().map(|(v, _, _)| v).collect()
}

fn restart_and_resume(kill: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    create_topic(&broker, "resume", 6);
    produce(&broker, "resume", 300, "first");
    let first = consume_and_commit(&broker, "resumers", "resume", 300);
    assert_eq!(first.len(), 300);
    produce(&broker, "resume", 60, "second");
    if kill {
        broker.kill9();
    } else {
        broker.stop();
    }
    broker.restart();
    let m = member(&broker, "resumers", "resume");
    let got = drain(&[&m], 60);
    assert!(
        got.iter().all(|(v, _, _)| v.starts_with("second-")),
        "re-delivered: {:?}",
        got.iter().find(|(v, _, _)| !v.starts_with("second-"))
    );
    assert!(
        m.poll(Duration::from_millis(500)).is_none(),
        "nothing beyond the new messages"
    );
}

#[test]
fn given_committed_offsets_when_broker_restarts_cleanly_should_resume_without_redelivery() {
    restart_and_resume(false);
}

#[test]
fn given_committed_offsets_when_broker_is_killed_should_resume_without_redelivery() {
    restart_and_resume(true);
}
