//! The controller quorum over real TCP on loopback, each node with its own directory:
//! registration, topic creation from any node, controller failover after a crash with no
//! metadata lost, a crashed node catching up after its restart, and fencing of a silent
//! broker with its partitions left leaderless (never handed to an out-of-sync replica).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster::{
    Applied, BrokerId, Command, Controller, ControllerConfig, ControllerError, MetadataError,
    NO_LEADER, Voter,
};

use testkit::free_port;

struct Quorum {
    root: tempfile::TempDir,
    voters: Vec<Voter>,
    nodes: BTreeMap<BrokerId, Controller>,
}

fn config(id: BrokerId, voters: &[Voter], dir: PathBuf) -> ControllerConfig {
    let mut c = ControllerConfig::single(id, dir, "127.0.0.1".into(), 9000 + id);
    c.voters = voters.to_vec();
    c.listen = voters.iter().find(|v| v.id == id).map(|v| v.addr);
    c.session_timeout = Duration::from_millis(1500);
    c.heartbeat_interval = Duration::from_millis(200);
    c.election_timeout_min = Duration::from_millis(300);
    c.election_timeout_max = Duration::from_millis(600);
    c.raft_heartbeat_interval = Duration::from_millis(100);
    c
}

impl Quorum {
    fn start(n: i32) -> Self {
        let voters: Vec<Voter> = (1..=n)
            .map(|id| Voter {
                id,
                addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            })
            .collect();
        let mut q = Self {
            root: tempfile::tempdir().unwrap(),
            voters,
            nodes: BTreeMap::new(),
        };
        for id in 1..=n {
            q.start_node(id);
        }
        for node in q.nodes.values() {
            assert!(
                node.wait_registered(Duration::from_secs(20)),
                "node {} did not register",
                node.node_id()
            );
        }
        q
    }

    fn dir(&self, id: BrokerId) -> PathBuf {
        self.root.path().join(format!("node-{id}"))
    }

    fn start_node(&mut self, id: BrokerId) {
        let c = config(id, &self.voters, self.dir(id));
        // The port of a crashed node may take a moment to free.
        let deadline = Instant::now() + Duration::from_secs(10);
        let node = loop {
            match Controller::start(c.clone()) {
                Ok(node) => break node,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("retrying start of node {id}: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("node {id}: {e}"),
            }
        };
        self.nodes.insert(id, node);
    }

    fn node(&self, id: BrokerId) -> &Controller {
        &self.nodes[&id]
    }

    /// The controller every running node agrees on.
    fn active(&self, timeout: Duration) -> BrokerId {
        wait_for(timeout, "an active controller all nodes agree on", || {
            let seen: Vec<Option<BrokerId>> =
                self.nodes.values().map(|n| n.view().controller()).collect();
            match seen.first() {
                Some(Some(id))
                    if seen.iter().all(|s| *s == Some(*id)) && self.nodes.contains_key(id) =>
                {
                    Some(*id)
                }
                _ => None,
            }
        })
    }
}

fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn create(
    node: &Controller,
    name: &str,
    partitions: i32,
    rf: i16,
) -> Result<Applied, ControllerError> {
    futures_executor::block_on(node.propose(Command::CreateTopic {
        name: name.into(),
        partitions,
        replication_factor: rf,
        configs: BTreeMap::new(),
        assignments: None,
    }))
}

/// A command too large for a controller log record (a replica assignment of 300,000
/// broker ids) is refused before Raft sees it: openraft stops its core on an entry its
/// log store cannot write, which would leave the quorum without this controller.
#[test]
fn given_a_command_too_large_for_the_log_should_refuse_it_and_keep_committing() {
    let root = tempfile::tempdir().unwrap();
    let node = Controller::start(ControllerConfig::single(
        0,
        root.path().join("c"),
        "127.0.0.1".into(),
        9092,
    ))
    .unwrap();
    assert!(node.wait_registered(Duration::from_secs(10)));
    let huge = futures_executor::block_on(node.propose(Command::CreateTopic {
        name: "huge".into(),
        partitions: -1,
        replication_factor: -1,
        configs: BTreeMap::new(),
        assignments: Some(vec![vec![-2_000_000_000; 300_000]]),
    }));
    assert!(
        matches!(huge, Err(ControllerError::Refused(MetadataError::Full(_)))),
        "{huge:?}"
    );
    let Applied::TopicCreated(_) = create(&node, "after", 1, 1).unwrap() else {
        panic!("not created")
    };
    node.shutdown(false);
}

#[test]
fn given_single_voter_when_restarted_should_keep_topics_and_register_a_new_incarnation() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("c");
    let start = || {
        let node = Controller::start(ControllerConfig::single(
            0,
            dir.clone(),
            "127.0.0.1".into(),
            9092,
        ))
        .unwrap();
        assert!(node.wait_registered(Duration::from_secs(10)));
        node
    };
    let node = start();
    assert!(
        node.listen_addr().is_none(),
        "a one-voter quorum listens nowhere"
    );
    let Applied::TopicCreated(t) = create(&node, "army", 3, 1).unwrap() else {
        panic!("not created")
    };
    assert!(
        t.partitions
            .iter()
            .all(|p| p.leader == 0 && p.replicas == vec![0])
    );
    assert_eq!(
        create(&node, "army", 3, 1),
        Err(ControllerError::Refused(MetadataError::TopicAlreadyExists(
            "army".into()
        )))
    );
    assert_eq!(
        create(&node, "wide", 1, 2),
        Err(ControllerError::Refused(
            MetadataError::InvalidReplicationFactor {
                requested: 2,
                live: 1
            }
        ))
    );
    let first = node.incarnation();
    node.crash();
    let node = start();
    let md = node.view().current();
    assert_eq!(
        md.topics["army"],
        t.clone().with_epochs_bumped_if_led_by_restarted(&md)
    );
    assert_ne!(node.incarnation(), first);
    assert_eq!(md.brokers[&0].incarnation, node.incarnation());
    // Identity: the same directory as another node is refused.
    node.shutdown(false);
    let e = Controller::start(ControllerConfig::single(
        5,
        dir.clone(),
        "127.0.0.1".into(),
        9092,
    ))
    .err()
    .unwrap();
    assert!(e.to_string().contains("node 0"), "{e}");
}

trait Bumped {
    fn with_epochs_bumped_if_led_by_restarted(self, md: &cluster::Metadata) -> Self;
}

impl Bumped for cluster::TopicRecord {
    /// A restart re-registers with a new incarnation, which bumps the leader epoch of
    /// what the broker led (once, if it was not fenced in between).
    fn with_epochs_bumped_if_led_by_restarted(mut self, md: &cluster::Metadata) -> Self {
        for (p, now) in self
            .partitions
            .iter_mut()
            .zip(&md.topics[&self.name].partitions)
        {
            assert!(
                now.leader_epoch > p.leader_epoch,
                "epoch did not move on restart"
            );
            p.leader_epoch = now.leader_epoch;
            p.partition_epoch = now.partition_epoch;
        }
        self
    }
}

#[test]
fn given_three_controllers_when_the_active_one_crashes_should_elect_another_and_lose_no_metadata() {
    let mut q = Quorum::start(3);
    for node in q.nodes.values() {
        wait_for(Duration::from_secs(10), "three live brokers", || {
            (node.view().current().live_brokers() == vec![1, 2, 3]).then_some(())
        });
    }
    // Created through a node that is not the active controller: forwarded.
    let active = q.active(Duration::from_secs(10));
    let other = (1..=3).find(|id| *id != active).unwrap();
    let Applied::TopicCreated(t) = create(q.node(other), "multiple", 6, 3).unwrap() else {
        panic!("not created")
    };
    let mut led = BTreeMap::new();
    for p in &t.partitions {
        assert_eq!(p.replicas.len(), 3);
        *led.entry(p.leader).or_insert(0) += 1;
    }
    assert_eq!(led.len(), 3, "leaders on all three brokers: {led:?}");

    // Seeded rounds: crash the active controller, or another node, and bring it back.
    let mut seed: u64 = 0x5eed_0004;
    let mut failovers = Vec::new();
    for round in 0..4 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let active = q.active(Duration::from_secs(10));
        let victim = if seed >> 62 == 0 {
            (active % 3) + 1
        } else {
            active
        };
        let killed_at = Instant::now();
        q.nodes.remove(&victim).unwrap().crash();
        if victim == active {
            let next = q.active(Duration::from_secs(10));
            assert_ne!(next, victim);
            failovers.push(killed_at.elapsed());
        }
        let survivor = *q.nodes.keys().next().unwrap();
        let name = format!("round-{round}");
        let created = wait_for(
            Duration::from_secs(10),
            "CreateTopics after the crash",
            || match create(q.node(survivor), &name, 2, 2) {
                Ok(applied) => Some(applied),
                Err(ControllerError::Timeout(_)) => None,
                Err(e) => panic!("{e}"),
            },
        );
        assert!(matches!(created, Applied::TopicCreated(_)));
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "CreateTopics took {:?} to work again",
            killed_at.elapsed()
        );
        q.start_node(victim);
        assert!(q.node(victim).wait_registered(Duration::from_secs(20)));
        let expected: Vec<String> = std::iter::once("multiple".to_owned())
            .chain((0..=round).map(|r| format!("round-{r}")))
            .collect();
        for node in q.nodes.values() {
            wait_for(
                Duration::from_secs(10),
                "every node to see every topic",
                || {
                    let names: Vec<String> = node.view().current().topics.keys().cloned().collect();
                    (names.iter().collect::<std::collections::BTreeSet<_>>()
                        == expected.iter().collect())
                    .then_some(())
                },
            );
        }
    }
    eprintln!("controller failovers: {failovers:?}");
    drop(q);
}

#[test]
fn given_silent_broker_when_its_session_expires_should_fence_it_move_what_it_led_within_the_isr_and_leave_rf1_leaderless_until_it_returns()
 {
    let mut q = Quorum::start(3);
    create(q.node(1), "t", 3, 3).unwrap();
    create(q.node(1), "solo", 3, 1).unwrap();
    let active = q.active(Duration::from_secs(10));
    let victim = (active % 3) + 1;
    let led_by = |topic: &str, q: &mut Quorum| -> usize {
        let led: Vec<usize> = q.node(active).view().current().topics[topic]
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.leader == victim)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(led.len(), 1, "{topic}");
        led[0]
    };
    let (i, solo) = (led_by("t", &mut q), led_by("solo", &mut q));
    q.nodes.remove(&victim).unwrap().crash();
    let watcher = q.node(active);
    wait_for(
        Duration::from_secs(10),
        "the silent broker to be fenced",
        || {
            let md = watcher.view().current();
            md.brokers[&victim].fenced.then_some(())
        },
    );
    let md = watcher.view().current();
    let p = &md.topics["t"].partitions[i];
    assert!(
        p.leader != victim && p.leader != NO_LEADER,
        "an in-sync follower leads"
    );
    assert_eq!(p.leader_epoch, 1);
    for p in &md.topics["t"].partitions {
        assert!(!p.isr.contains(&victim), "a fenced broker leaves the ISR");
    }
    let s = &md.topics["solo"].partitions[solo];
    assert_eq!(
        s.leader, NO_LEADER,
        "no unclean election: nobody else is in sync"
    );
    assert_eq!((s.leader_epoch, s.isr.clone()), (1, vec![victim]));
    assert!(!md.live_brokers().contains(&victim));
    q.start_node(victim);
    assert!(q.node(victim).wait_registered(Duration::from_secs(20)));
    let watcher = q.node(active);
    let s = wait_for(
        Duration::from_secs(10),
        "the returning broker to lead its RF 1 partition again",
        || {
            let md = watcher.view().current();
            let p = md.topics["solo"].partitions[solo].clone();
            (p.leader == victim).then_some(p)
        },
    );
    assert_eq!(s.leader_epoch, 2);
}

#[test]
fn given_hostile_bytes_on_the_controller_port_should_close_that_connection_and_keep_serving() {
    use std::io::{Read, Write};
    let q = Quorum::start(3);
    let target = q.node(1).listen_addr().expect("a voter of three listens");
    // A frame claiming 4 GiB, and one of garbage JSON: each closes its own connection.
    for bytes in [
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        b"\0\0\0\x05{{{{{".to_vec(),
    ] {
        let mut s = std::net::TcpStream::connect(target).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&bytes).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "the connection is closed");
    }
    assert!(matches!(
        create(q.node(1), "after-garbage", 1, 3),
        Ok(Applied::TopicCreated(_))
    ));
}
