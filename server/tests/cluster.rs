//! Three brokers as separate processes, each its own data directory and controller, on
//! loopback: the controller quorum registers all three, a replication-factor-3 topic gets
//! three replicas per partition with leaders on every broker, librdkafka produces and
//! consumes through any bootstrap broker (following the leaders), a broker that does not
//! lead a partition answers NOT_LEADER_OR_FOLLOWER, and a killed broker is fenced: it
//! leaves every ISR, what it led moves to in-sync followers that hold every acknowledged
//! message, and once restarted it catches up and rejoins the ISRs.

mod common;
mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use common::{Broker, bounded, require_python_clients};
use futures_executor::block_on;
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

struct Cluster {
    _root: tempfile::TempDir,
    brokers: Vec<Broker>,
}

fn start_cluster() -> Cluster {
    start_cluster_with(&[])
}

/// As `start_cluster`, with more `BROKER_*` settings for every broker.
fn start_cluster_with(extra: &[(&str, &str)]) -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| wire::free_port()).collect();
    let voters = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let brokers = (0..3)
        .map(|i| {
            let id = (i + 1).to_string();
            let listen = format!("127.0.0.1:{}", ports[i]);
            let dir = root.path().join(format!("broker-{id}"));
            let mut env = vec![
                ("BROKER_NODE_ID", id.as_str()),
                ("BROKER_CONTROLLER_LISTEN", listen.as_str()),
                ("BROKER_CONTROLLER_QUORUM_VOTERS", voters.as_str()),
                ("BROKER_DEFAULT_REPLICATION_FACTOR", "3"),
                ("BROKER_BROKER_SESSION_TIMEOUT_MS", "3000"),
                ("BROKER_BROKER_HEARTBEAT_INTERVAL_MS", "500"),
            ];
            env.extend_from_slice(extra);
            Broker::start_with(&dir, &env)
        })
        .collect();
    Cluster {
        _root: root,
        brokers,
    }
}

/// Metadata v8 for the given topics (all when `None`) from one broker, on a raw socket.
fn metadata(addr: &str, topics: Option<&[&str]>) -> MetadataResponse {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let request = MetadataRequest::default()
        .with_topics(topics.map(|names| {
            names
                .iter()
                .map(|n| {
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(kafka_protocol::messages::TopicName(
                            kafka_protocol::protocol::StrBytes::from_string((*n).to_owned()),
                        )))
                })
                .collect()
        }))
        .with_allow_auto_topic_creation(false);
    stream
        .write_all(&wire::frame(ApiKey::Metadata, 8, 1, &request))
        .unwrap();
    wire::decode(
        ApiKey::Metadata,
        8,
        wire::read_response(&mut stream).unwrap(),
    )
}

/// An API, the leader (id, epoch) its NOT_LEADER_OR_FOLLOWER names, and the endpoints
/// (id, port) that come with it.
type LeaderHint = (&'static str, (i32, i32), Vec<(i32, i32)>);

/// Produce v10 and Fetch v16 for partition 0 of `topic` sent to `not_leader`.
fn leader_hints(not_leader: &str, topic: &str, any: &str) -> Vec<LeaderHint> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, TopicName,
    };
    let name = TopicName(kafka_protocol::protocol::StrBytes::from_string(
        topic.to_owned(),
    ));
    // The topic's id, from Metadata v12.
    let mut stream = TcpStream::connect(any).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let m: MetadataResponse = wire::call(
        &mut stream,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default()
            .with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(name.clone())),
            ]))
            .with_allow_auto_topic_creation(false),
    );
    let topic_id = m.topics[0].topic_id;
    assert!(!topic_id.is_nil());

    let mut stream = TcpStream::connect(not_leader).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let produced: ProduceResponse = wire::call(
        &mut stream,
        ApiKey::Produce,
        10,
        &ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(name)
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(wire::batch(1, 10))),
                    ]),
            ]),
    );
    let p = &produced.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 6, "produce v10 NOT_LEADER_OR_FOLLOWER");
    let produce_hint = (
        "Produce v10",
        (p.current_leader.leader_id.0, p.current_leader.leader_epoch),
        produced
            .node_endpoints
            .iter()
            .map(|n| (n.node_id.0, n.port))
            .collect(),
    );
    let fetched: FetchResponse = wire::call(
        &mut stream,
        ApiKey::Fetch,
        16,
        &FetchRequest::default()
            .with_max_wait_ms(0)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic_id(topic_id)
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(0)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ]),
    );
    let p = &fetched.responses[0].partitions[0];
    assert_eq!(p.error_code, 6, "fetch v16 NOT_LEADER_OR_FOLLOWER");
    let fetch_hint = (
        "Fetch v16",
        (p.current_leader.leader_id.0, p.current_leader.leader_epoch),
        fetched
            .node_endpoints
            .iter()
            .map(|n| (n.node_id.0, n.port))
            .collect(),
    );
    vec![produce_hint, fetch_hint]
}

fn broker_ids(m: &MetadataResponse) -> BTreeSet<i32> {
    m.brokers.iter().map(|b| b.node_id.0).collect()
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

#[test]
fn given_three_brokers_when_creating_an_rf3_topic_should_spread_leaders_and_serve_through_any_broker()
 {
    let mut cluster = start_cluster();
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.addr.clone()).collect();
    for addr in &addrs {
        let listed = wire::wait_until(TIMEOUT, || {
            broker_ids(&metadata(addr, None)) == BTreeSet::from([1, 2, 3])
        });
        assert!(listed.is_some(), "{addr} never listed three brokers");
    }
    let m = metadata(&addrs[0], None);
    assert!(
        (1..=3).contains(&m.controller_id.0),
        "controller {:?}",
        m.controller_id
    );
    for b in &m.brokers {
        assert_eq!(
            b.port,
            addrs[(b.node_id.0 - 1) as usize]
                .rsplit(':')
                .next()
                .unwrap()
                .parse::<i32>()
                .unwrap()
        );
    }

    // Created through broker 2, which forwards to the active controller if need be.
    let results = block_on(admin(&addrs[1]).create_topics(
        &[NewTopic::new("multiple", 6, TopicReplication::Fixed(3))],
        &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
    ))
    .unwrap();
    assert_eq!(results[0], Ok("multiple".to_owned()));
    let too_wide = block_on(admin(&addrs[1]).create_topics(
        &[NewTopic::new("too-wide", 1, TopicReplication::Fixed(4))],
        &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
    ))
    .unwrap();
    assert!(too_wide[0].is_err(), "RF 4 on 3 brokers: {too_wide:?}");

    let topic = wire::wait_until(TIMEOUT, || {
        metadata(&addrs[2], Some(&["multiple"])).topics[0].error_code == 0
    });
    assert!(topic.is_some());
    let m = metadata(&addrs[2], Some(&["multiple"]));
    let partitions = &m.topics[0].partitions;
    assert_eq!(partitions.len(), 6);
    let mut leaders = BTreeMap::new();
    for p in partitions {
        let replicas: BTreeSet<i32> = p.replica_nodes.iter().map(|b| b.0).collect();
        assert_eq!(replicas, BTreeSet::from([1, 2, 3]));
        let isr: BTreeSet<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
        assert_eq!(isr, replicas, "empty replicas are all in sync");
        *leaders.entry(p.leader_id.0).or_insert(0) += 1;
    }
    assert_eq!(leaders, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));

    // A produce sent to a broker that does not lead the partition.
    let p0 = &partitions[0];
    let not_leader = addrs[(p0.leader_id.0 % 3) as usize].clone();
    let mut stream = TcpStream::connect(&not_leader).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(&wire::produce_frame("multiple", &[wire::batch(1, 10)]))
        .unwrap();
    assert_eq!(
        wire::produce_errors(wire::read_response(&mut stream).unwrap()),
        vec![6],
        "NOT_LEADER_OR_FOLLOWER from broker {not_leader}"
    );
    // From Produce v10 and Fetch v16 on, the refusal names the current leader, its
    // epoch and its endpoint (KIP-951), so the client goes there without a metadata round.
    let hinted = leader_hints(&not_leader, "multiple", &addrs[0]);
    let leader_port: i32 = addrs[(p0.leader_id.0 - 1) as usize]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for (api, leader, endpoints) in hinted {
        assert_eq!(leader, (p0.leader_id.0, p0.leader_epoch), "{api}");
        assert_eq!(endpoints, vec![(p0.leader_id.0, leader_port)], "{api}");
    }

    // librdkafka bootstrapped at broker 3 finds every leader.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &addrs[2])
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let sent = 600;
    for i in 0..sent {
        let value = format!("message-{i}");
        let key = i.to_string();
        block_on(
            producer.send(
                FutureRecord::to("multiple")
                    .partition(i % 6)
                    .key(&key)
                    .payload(&value),
                TIMEOUT,
            ),
        )
        .map_err(|(e, _)| e)
        .expect("delivered");
    }
    // ... and a consumer bootstrapped at broker 1 reads them all back.
    let seen = read_all(&addrs[0], sent);
    assert_eq!(
        seen.len(),
        sent as usize,
        "read back {} of {sent}",
        seen.len()
    );

    // Kill a broker: once its session expires it is fenced, leaves every ISR, and what it
    // led moves to an in-sync follower, which holds every acknowledged message.
    let victim = 2usize;
    cluster.brokers[victim].kill9();
    let watcher = addrs[0].clone();
    let fenced = wire::wait_until(TIMEOUT, || {
        let m = metadata(&watcher, Some(&["multiple"]));
        !broker_ids(&m).contains(&3)
            && m.topics[0]
                .partitions
                .iter()
                .filter(|p| p.replica_nodes.iter().any(|b| b.0 == 3))
                .all(|p| p.leader_id.0 != 3)
    });
    assert!(fenced.is_some(), "broker 3 was never fenced");
    let m = metadata(&watcher, Some(&["multiple"]));
    for p in &m.topics[0].partitions {
        assert!(p.leader_id.0 >= 1, "an in-sync follower leads: {p:?}");
        assert!(!p.isr_nodes.iter().any(|b| b.0 == 3), "ISR shrank: {p:?}");
        assert!(p.offline_replicas.iter().any(|b| b.0 == 3));
    }
    let seen = read_all(&addrs[0], sent);
    assert_eq!(
        seen.len(),
        sent as usize,
        "with the broker killed, read back {} of {sent}",
        seen.len()
    );
    // Two in-sync replicas of three: acks=all goes on (min_insync_replicas = 2).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &addrs[0])
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    for i in sent..2 * sent {
        let value = format!("message-{i}");
        block_on(
            producer.send(
                FutureRecord::<(), _>::to("multiple")
                    .partition(i % 6)
                    .payload(&value),
                TIMEOUT,
            ),
        )
        .map_err(|(e, _)| e)
        .expect("delivered with one broker down");
    }
    // The commit index is a hint written without fsync: a power cut can lose it. Without it
    // the restarted node re-applies its log only as the quorum commits it again, so its
    // metadata starts empty; it must not take that for "every topic was deleted".
    let committed = cluster.brokers[victim].data_dir.join(".cluster/committed");
    std::fs::remove_file(&committed).expect("the controller's commit hint");
    cluster.brokers[victim].restart();
    let back = wire::wait_until(TIMEOUT, || {
        let m = metadata(&watcher, Some(&["multiple"]));
        broker_ids(&m).contains(&3)
            && m.topics[0]
                .partitions
                .iter()
                .all(|p| p.isr_nodes.iter().any(|b| b.0 == 3))
    });
    assert!(
        back.is_some(),
        "broker 3 never caught up into the ISRs: {:?}",
        metadata(&watcher, Some(&["multiple"])).topics[0].partitions
    );
    let m = metadata(&watcher, Some(&["multiple"]));
    assert!(
        m.topics[0]
            .partitions
            .iter()
            .filter(|p| p.replica_nodes[0].0 == 3)
            .all(|p| p.leader_id.0 != 3 && p.leader_epoch >= 1),
        "what broker 3 led moved, at a new epoch: {:?}",
        m.topics[0].partitions
    );
    // Everything is still there, and the returning broker did not delete its partitions
    // before it had caught up with the metadata.
    let again = read_all(&addrs[0], 2 * sent);
    assert_eq!(
        again.len(),
        2 * sent as usize,
        "after the restart, read back {} of {}",
        again.len(),
        2 * sent
    );
}

/// Reads partitions 0..6 of `multiple` from the beginning until `expected` distinct
/// values came back or the timeout passed.
fn read_all(bootstrap: &str, expected: i32) -> BTreeSet<String> {
    read_partitions(bootstrap, "multiple", 0..6, expected)
}

/// The distinct payloads of `partitions` of `topic`, read from the beginning until
/// `expected` of them arrived (or the timeout passed).
fn read_partitions(
    bootstrap: &str,
    topic: &str,
    partitions: std::ops::Range<i32>,
    expected: i32,
) -> BTreeSet<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "cluster-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut seen = BTreeSet::new();
    wire::wait_until(TIMEOUT, || {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            seen.insert(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
        seen.len() == expected as usize
    });
    seen
}

/// CreateTopics v4 on one broker; the error code (or -2 when the broker did not answer).
fn try_create(addr: &str, name: &str, partitions: i32, replication_factor: i16) -> i16 {
    use kafka_protocol::messages::CreateTopicsRequest;
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return -2;
    };
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(kafka_protocol::messages::TopicName(
                    kafka_protocol::protocol::StrBytes::from_string(name.to_owned()),
                ))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor),
        ]);
    if stream
        .write_all(&wire::frame(ApiKey::CreateTopics, 4, 1, &request))
        .is_err()
    {
        return -2;
    }
    match wire::read_response(&mut stream) {
        Ok(frame) => {
            let response: kafka_protocol::messages::CreateTopicsResponse =
                wire::decode(ApiKey::CreateTopics, 4, frame);
            response.topics[0].error_code
        }
        Err(_) => -2,
    }
}

/// The controller id every given broker reports, when they agree.
fn agreed_controller(addrs: &[&str]) -> Option<i32> {
    let ids: BTreeSet<i32> = addrs
        .iter()
        .map(|a| metadata(a, Some(&[])).controller_id.0)
        .collect();
    match ids.into_iter().collect::<Vec<_>>().as_slice() {
        [id] if *id >= 1 => Some(*id),
        _ => None,
    }
}

#[test]
fn given_three_brokers_when_the_active_controller_is_killed_20_times_should_elect_another_and_lose_no_topic()
 {
    let mut cluster = start_cluster();
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.addr.clone()).collect();
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    assert!(wire::wait_until(TIMEOUT, || broker_ids(&metadata(all[0], None)).len() == 3).is_some());
    assert_eq!(try_create(all[0], "before", 3, 3), 0);
    let mut expected = BTreeSet::from(["before".to_owned()]);
    let mut seed: u64 = 0x5eed_0012;
    let mut elections = Vec::new();
    let mut creatable = Vec::new();
    for round in 0..20 {
        let active = wire::wait_until(TIMEOUT, || agreed_controller(&all).is_some())
            .and_then(|_| agreed_controller(&all))
            .expect("an active controller all brokers agree on");
        let victim = (active - 1) as usize;
        let survivors: Vec<&str> = (0..3).filter(|i| *i != victim).map(|i| all[i]).collect();
        cluster.brokers[victim].kill9();
        let killed = std::time::Instant::now();
        let elected = wire::wait_until(TIMEOUT, || {
            agreed_controller(&survivors).is_some_and(|c| c != active)
        });
        elections.push(elected.expect("no new controller within 30 s"));
        // CreateTopics through a survivor chosen by the seed.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let via = survivors[(seed >> 63) as usize];
        let name = format!("round-{round}");
        let created = wire::wait_until(Duration::from_secs(10), || {
            // 36: an earlier try was committed but its answer was lost.
            matches!(try_create(via, &name, 2, 2), 0 | 36)
        });
        assert!(
            created.is_some(),
            "round {round}: CreateTopics did not work again within 10 s"
        );
        creatable.push(killed.elapsed());
        expected.insert(name);
        cluster.brokers[victim].restart();
        // Every broker, the restarted one included, lists every topic ever created.
        for addr in &all {
            let listed = wire::wait_until(TIMEOUT, || {
                let m = metadata(addr, None);
                let names: BTreeSet<String> = m
                    .topics
                    .iter()
                    .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                    .collect();
                names == expected && broker_ids(&m).len() == 3
            });
            assert!(listed.is_some(), "round {round}: {addr} lost metadata");
        }
    }
    elections.sort();
    creatable.sort();
    eprintln!(
        "controller failover over 20 kills: new controller p50 {:?} max {:?}; CreateTopics works again p50 {:?} max {:?}",
        elections[10], elections[19], creatable[10], creatable[19]
    );
}

#[test]
fn given_three_brokers_when_driven_by_kafka_python_should_list_them_spread_leaders_and_serve_through_any()
 {
    let cluster = start_cluster();
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.addr.clone()).collect();
    assert!(
        wire::wait_until(TIMEOUT, || broker_ids(&metadata(&addrs[0], None)).len()
            == 3)
        .is_some()
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/kafka_python_cluster.py"
    );
    // The script bounds itself at 120 s (faulthandler dumps its stacks); this is the backstop.
    let out = bounded(&require_python_clients(), Duration::from_secs(180))
        .arg(script)
        .args(&addrs)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "kafka-python cluster checks failed (is kafka-python installed? .ci/run installs it):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One idempotent batch of `count` records: producer `pid`, epoch 0, first sequence `seq`.
fn idempotent_batch(pid: i64, seq: i32, count: usize) -> bytes::Bytes {
    wire::idempotent_batch(
        pid,
        seq,
        (0..count).map(|i| format!("idempotent-{}", seq + i as i32).into_bytes()),
    )
}

/// Produce v7 with acks=all of one batch to partition 0; (error code, base offset).
fn produce_all(addr: &str, topic: &str, batch: bytes::Bytes) -> (i16, i64) {
    use kafka_protocol::messages::ProduceResponse;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(&wire::produce_frame_acks(topic, &[batch], -1))
        .unwrap();
    let response: ProduceResponse = wire::decode(
        ApiKey::Produce,
        7,
        wire::read_response(&mut stream).unwrap(),
    );
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

#[test]
fn given_an_idempotent_batch_acknowledged_by_the_isr_when_its_leader_dies_should_deduplicate_the_retry_on_the_new_leader()
 {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
    let mut cluster = start_cluster();
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.addr.clone()).collect();
    let created = wire::wait_until(TIMEOUT, || try_create(&addrs[0], "idem", 1, 3) == 0);
    assert!(created.is_some(), "topic never created");
    let full = wire::wait_until(TIMEOUT, || {
        let m = metadata(&addrs[0], Some(&["idem"]));
        m.topics[0].error_code == 0 && m.topics[0].partitions[0].isr_nodes.len() == 3
    });
    assert!(full.is_some());
    let leader = metadata(&addrs[0], Some(&["idem"])).topics[0].partitions[0]
        .leader_id
        .0;
    let leader_addr = addrs[(leader - 1) as usize].clone();
    let mut s = TcpStream::connect(&leader_addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let init: InitProducerIdResponse = wire::call(
        &mut s,
        ApiKey::InitProducerId,
        1,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000),
    );
    assert_eq!(init.error_code, 0);
    let pid = init.producer_id.0;
    let first = idempotent_batch(pid, 0, 5);
    assert_eq!(produce_all(&leader_addr, "idem", first.clone()), (0, 0));

    // The leader dies after every in-sync replica had the batch (acks=all answered); the
    // producer, not having seen the answer, retries on the new leader.
    cluster.brokers[(leader - 1) as usize].kill9();
    let survivor = addrs[(leader % 3) as usize].clone();
    let moved = wire::wait_until(TIMEOUT, || {
        let p = &metadata(&survivor, Some(&["idem"])).topics[0].partitions[0];
        p.leader_id.0 > 0 && p.leader_id.0 != leader
    });
    assert!(moved.is_some(), "no new leader");
    let new_leader = metadata(&survivor, Some(&["idem"])).topics[0].partitions[0]
        .leader_id
        .0;
    let new_addr = addrs[(new_leader - 1) as usize].clone();
    let retried = wire::wait_until(TIMEOUT, || {
        produce_all(&new_addr, "idem", first.clone()).0 == 0
    });
    assert!(retried.is_some(), "the retry was never accepted");
    assert_eq!(
        produce_all(&new_addr, "idem", first),
        (0, 0),
        "the retry is answered with the first offsets, not written again"
    );
    assert_eq!(
        produce_all(&new_addr, "idem", idempotent_batch(pid, 5, 5)),
        (0, 5),
        "the sequence goes on where it was"
    );
}

/// Produce v7 of one small batch to partition 0 with `acks`; the error code.
fn produce_code(addr: &str, topic: &str, acks: i16) -> i16 {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return -2;
    };
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(&wire::produce_frame_acks(
            topic,
            &[wire::batch(1, 10)],
            acks,
        ))
        .unwrap();
    match wire::read_response(&mut stream) {
        Ok(frame) => wire::produce_errors(frame)[0],
        Err(_) => -2,
    }
}

#[test]
fn given_an_isr_below_min_insync_replicas_should_refuse_acks_all_with_not_enough_replicas_and_take_acks_1()
 {
    // min_insync_replicas = 3: one dead follower puts the ISR below it while the
    // controller quorum (two of three) can still commit the shrink.
    let mut cluster = testkit::Cluster::start(3, &[("BROKER_MIN_INSYNC_REPLICAS", "3")]);
    let addrs = cluster.addrs();
    let created = wire::wait_until(TIMEOUT, || try_create(&addrs[0], "min-isr", 1, 3) == 0);
    assert!(created.is_some(), "topic never created");
    let full = wire::wait_until(TIMEOUT, || {
        let m = metadata(&addrs[0], Some(&["min-isr"]));
        m.topics[0].error_code == 0 && m.topics[0].partitions[0].isr_nodes.len() == 3
    });
    assert!(full.is_some());
    let leader = metadata(&addrs[0], Some(&["min-isr"])).topics[0].partitions[0]
        .leader_id
        .0;
    let leader_addr = addrs[(leader - 1) as usize].clone();
    let ok = wire::wait_until(TIMEOUT, || produce_code(&leader_addr, "min-isr", -1) == 0);
    assert!(ok.is_some(), "acks=all with the whole ISR");
    let follower = leader % 3 + 1;
    cluster.node(follower).kill9();
    let shrunk = wire::wait_until(TIMEOUT, || {
        let p = &metadata(&leader_addr, Some(&["min-isr"])).topics[0].partitions[0];
        p.isr_nodes.len() == 2 && !p.isr_nodes.iter().any(|b| b.0 == follower)
    });
    assert!(shrunk.is_some(), "the ISR never shrank");
    let refused = wire::wait_until(TIMEOUT, || produce_code(&leader_addr, "min-isr", -1) == 19);
    assert!(
        refused.is_some(),
        "acks=all with two in-sync replicas of the three required: NOT_ENOUGH_REPLICAS"
    );
    assert_eq!(
        produce_code(&leader_addr, "min-isr", 1),
        0,
        "acks=1 needs the leader only"
    );
    cluster.node(follower).restart();
    let back = wire::wait_until(TIMEOUT, || produce_code(&leader_addr, "min-isr", -1) == 0);
    assert!(back.is_some(), "acks=all never worked again");
}

/// Kafka's automatic preferred leader election: a broker killed and restarted gets back
/// the leadership of the partitions that prefer it once it is in sync again (here
/// checked every second), at a new leader epoch, and nothing acknowledged is lost by the
/// move.
#[test]
fn given_a_restarted_broker_back_in_sync_should_lead_its_preferred_partitions_again() {
    let mut cluster =
        start_cluster_with(&[("BROKER_LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS", "1")]);
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.addr.clone()).collect();
    let registered = wire::wait_until(TIMEOUT, || {
        broker_ids(&metadata(&addrs[0], None)) == BTreeSet::from([1, 2, 3])
    });
    assert!(registered.is_some(), "three registered brokers");
    assert_eq!(try_create(&addrs[0], "multiple", 6, 3), 0);
    let watcher = addrs[0].clone();
    let partitions = || {
        metadata(&watcher, Some(&["multiple"])).topics[0]
            .partitions
            .clone()
    };
    let spread = wire::wait_until(TIMEOUT, || {
        let ps = partitions();
        ps.len() == 6 && ps.iter().all(|p| p.leader_id == p.replica_nodes[0])
    });
    assert!(
        spread.is_some(),
        "every partition led by its preferred replica: {:?}",
        partitions()
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &addrs[0])
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let send = |from: i32, to: i32| {
        for i in from..to {
            let value = format!("message-{i}");
            block_on(
                producer.send(
                    FutureRecord::<(), _>::to("multiple")
                        .partition(i % 6)
                        .payload(&value),
                    TIMEOUT,
                ),
            )
            .map_err(|(e, _)| e)
            .expect("delivered");
        }
    };
    send(0, 300);

    let victim = 2usize; // broker 3
    let preferring: Vec<i32> = partitions()
        .iter()
        .filter(|p| p.replica_nodes[0].0 == 3)
        .map(|p| p.partition_index)
        .collect();
    assert_eq!(preferring.len(), 2);
    cluster.brokers[victim].kill9();
    let moved = wire::wait_until(TIMEOUT, || {
        partitions()
            .iter()
            .filter(|p| preferring.contains(&p.partition_index))
            .all(|p| p.leader_id.0 >= 1 && p.leader_id.0 != 3)
    });
    assert!(
        moved.is_some(),
        "broker 3's partitions moved: {:?}",
        partitions()
    );
    let epochs_moved: BTreeMap<i32, i32> = partitions()
        .iter()
        .map(|p| (p.partition_index, p.leader_epoch))
        .collect();
    send(300, 600);
    cluster.brokers[victim].restart();
    let back = wire::wait_until(Duration::from_secs(60), || {
        partitions()
            .iter()
            .filter(|p| preferring.contains(&p.partition_index))
            .all(|p| p.leader_id.0 == 3)
    });
    assert!(
        back.is_some(),
        "broker 3 never led its preferred partitions again: {:?}",
        partitions()
    );
    for p in partitions()
        .iter()
        .filter(|p| preferring.contains(&p.partition_index))
    {
        assert!(
            p.leader_epoch > epochs_moved[&p.partition_index],
            "a new leader epoch: {p:?}"
        );
    }
    send(600, 900);
    let seen = read_all(&addrs[1], 900);
    assert_eq!(seen.len(), 900, "read back {} of 900", seen.len());
}

/// Fetch v11 of partition 0 of `topic` from offset 0 in the name of replica `replica_id`
/// at `leader_epoch`, on a connection from `from`; the partition's error code.
fn replica_fetch_code(
    from: &str,
    addr: &str,
    topic: &str,
    replica_id: i32,
    leader_epoch: i32,
) -> i16 {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, FetchResponse};
    let mut stream = wire::connect_from(from, addr);
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let request = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(replica_id))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1024 * 1024)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(kafka_protocol::messages::TopicName(
                    kafka_protocol::protocol::StrBytes::from_string(topic.to_owned()),
                ))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(leader_epoch)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1024),
                ]),
        ]);
    let response: FetchResponse = wire::call(&mut stream, ApiKey::Fetch, 11, &request);
    assert_eq!(response.error_code, 0);
    response.responses[0].partitions[0].error_code
}

#[test]
fn given_a_fetch_in_a_replicas_name_from_another_address_should_refuse_it_as_from_an_unknown_replica()
 {
    let cluster = testkit::Cluster::start(3, &[]);
    let addrs = cluster.addrs();
    let created = wire::wait_until(TIMEOUT, || try_create(&addrs[0], "spoof", 1, 3) == 0);
    assert!(created.is_some(), "topic never created");
    let full = wire::wait_until(TIMEOUT, || {
        let m = metadata(&addrs[0], Some(&["spoof"]));
        m.topics[0].error_code == 0 && m.topics[0].partitions[0].isr_nodes.len() == 3
    });
    assert!(full.is_some());
    let p = metadata(&addrs[0], Some(&["spoof"])).topics[0].partitions[0].clone();
    let (leader, epoch) = (p.leader_id.0, p.leader_epoch);
    let leader_addr = addrs[(leader - 1) as usize].clone();
    let follower = leader % 3 + 1;
    // The brokers registered 127.0.0.1: a fetch in a follower's name from elsewhere is
    // answered as Kafka answers an unknown replica, and moves nothing.
    assert_eq!(
        replica_fetch_code("127.0.0.9", &leader_addr, "spoof", follower, epoch),
        6,
        "NOT_LEADER_OR_FOLLOWER"
    );
    assert_eq!(
        replica_fetch_code("127.0.0.1", &leader_addr, "spoof", follower, epoch),
        0,
        "from the follower's own address"
    );
}

/// ListOffsets v1 of partition 0 of `topic` at `timestamp` (-2 earliest, -1 latest).
fn list_offset(addr: &str, topic: &str, timestamp: i64) -> Option<i64> {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let request = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(kafka_protocol::messages::TopicName(
                    kafka_protocol::protocol::StrBytes::from_string(topic.to_owned()),
                ))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(timestamp),
                ]),
        ]);
    let response: ListOffsetsResponse = wire::call(&mut stream, ApiKey::ListOffsets, 1, &request);
    let p = &response.topics[0].partitions[0];
    (p.error_code == 0).then_some(p.offset)
}

#[test]
fn given_a_follower_away_while_the_leaders_retention_passed_its_log_end_should_start_at_the_leaders_log_start_and_rejoin()
 {
    let mut cluster = testkit::Cluster::start(
        3,
        &[
            ("BROKER_MESSAGE_MAX_BYTES", "8000"),
            ("BROKER_LOG_SEGMENT_BYTES", "16384"),
            ("BROKER_LOG_RETENTION_BYTES", "65536"),
            ("BROKER_LOG_RETENTION_CHECK_INTERVAL_MS", "1000"),
        ],
    );
    let addrs = cluster.addrs();
    let created = wire::wait_until(TIMEOUT, || try_create(&addrs[0], "retained", 1, 3) == 0);
    assert!(created.is_some(), "topic never created");
    let full = wire::wait_until(TIMEOUT, || {
        let m = metadata(&addrs[0], Some(&["retained"]));
        m.topics[0].error_code == 0 && m.topics[0].partitions[0].isr_nodes.len() == 3
    });
    assert!(full.is_some());
    let leader = metadata(&addrs[0], Some(&["retained"])).topics[0].partitions[0]
        .leader_id
        .0;
    let leader_addr = addrs[(leader - 1) as usize].clone();
    let mut s = TcpStream::connect(&leader_addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(wire::produce(&mut s, "retained", 10).0, 0);
    let follower = leader % 3 + 1;
    let replicated = wire::wait_until(TIMEOUT, || {
        list_offset(&leader_addr, "retained", -1) == Some(10)
    });
    assert!(replicated.is_some(), "the first batch never committed");
    cluster.node(follower).stop();
    // While the follower is away, the leader writes far more than it retains.
    for _ in 0..60 {
        assert_eq!(wire::produce(&mut s, "retained", 50).0, 0);
    }
    let trimmed = wire::wait_until(TIMEOUT, || {
        list_offset(&leader_addr, "retained", -2).is_some_and(|start| start > 10)
    });
    assert!(
        trimmed.is_some(),
        "the leader's retention never deleted the first segments"
    );
    cluster.node(follower).restart();
    // The follower's log (10 records) ends below the leader's log start: it must start
    // again there, catch up and rejoin the ISR, rather than ask for offset 10 forever.
    let back = wire::wait_until(Duration::from_secs(60), || {
        let m = metadata(&leader_addr, Some(&["retained"]));
        m.topics[0].partitions[0]
            .isr_nodes
            .iter()
            .any(|b| b.0 == follower)
            && m.topics[0].partitions[0].isr_nodes.len() == 3
    });
    assert!(back.is_some(), "the follower never rejoined the ISR");
    // Its log starts past what it held before it went away: its old segments are gone.
    let dir = cluster.node(follower).data_dir.join("retained-0");
    let first_base = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log")?.parse::<i64>().ok()
        })
        .min()
        .unwrap();
    assert!(first_base > 10, "the follower's log starts at {first_base}");
}

/// CreatePartitions on three brokers: an RF-3 topic grows from 2 to 4 partitions through
/// a broker that is not the controller's leader necessarily; every broker opens the new
/// partitions' replicas, acks=all writes to them are replicated to a full ISR, and they
/// survive the kill -9 of their leader.
#[test]
fn given_a_grown_rf3_topic_should_replicate_its_new_partitions_and_keep_them_through_a_kill_9() {
    use rdkafka::admin::NewPartitions;
    let mut cluster = start_cluster();
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.addr.clone()).collect();
    let listed = wire::wait_until(TIMEOUT, || {
        addrs
            .iter()
            .all(|a| broker_ids(&metadata(a, None)) == BTreeSet::from([1, 2, 3]))
    });
    assert!(listed.is_some());
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let created = block_on(admin(&addrs[0]).create_topics(
        &[NewTopic::new("grown", 2, TopicReplication::Fixed(3))],
        &options,
    ))
    .unwrap();
    assert_eq!(created[0], Ok("grown".to_owned()));
    let grown =
        block_on(admin(&addrs[1]).create_partitions(&[NewPartitions::new("grown", 4)], &options))
            .unwrap();
    assert_eq!(grown[0], Ok("grown".to_owned()));
    // Fewer partitions than it has: refused.
    let shrunk =
        block_on(admin(&addrs[1]).create_partitions(&[NewPartitions::new("grown", 3)], &options))
            .unwrap();
    assert!(shrunk[0].is_err(), "{shrunk:?}");

    // Every broker sees four partitions, the new ones with three replicas all in sync.
    for addr in &addrs {
        let seen = wire::wait_until(TIMEOUT, || {
            let m = metadata(addr, Some(&["grown"]));
            m.topics[0].partitions.len() == 4
                && m.topics[0]
                    .partitions
                    .iter()
                    .all(|p| p.isr_nodes.len() == 3)
        });
        assert!(
            seen.is_some(),
            "{addr}: {:?}",
            metadata(addr, Some(&["grown"]))
        );
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &addrs[2])
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let sent = 200;
    for i in 0..sent {
        let value = format!("grown-{i}");
        block_on(
            producer.send(
                FutureRecord::<(), _>::to("grown")
                    .partition(2 + i % 2)
                    .payload(&value),
                TIMEOUT,
            ),
        )
        .map_err(|(e, _)| e)
        .expect("delivered");
    }
    // The leader of partition 3 dies; what it acknowledged is on the new leader.
    let m = metadata(&addrs[0], Some(&["grown"]));
    let leader = m.topics[0].partitions[3].leader_id.0;
    cluster.brokers[(leader - 1) as usize].kill9();
    let survivor = addrs[(leader % 3) as usize].clone();
    let moved = wire::wait_until(TIMEOUT, || {
        let m = metadata(&survivor, Some(&["grown"]));
        let p = &m.topics[0].partitions[3];
        p.leader_id.0 >= 1 && p.leader_id.0 != leader
    });
    assert!(
        moved.is_some(),
        "partition 3 never moved off broker {leader}"
    );
    let seen = read_partitions(&survivor, "grown", 2..4, sent);
    assert_eq!(
        seen.len(),
        sent as usize,
        "read back {} of {sent}",
        seen.len()
    );
}

/// InitProducerId (v1) on `addr`: the id, or the error (a refused connection is -1).
fn init_producer_id(addr: &str) -> Result<i64, i16> {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
    let mut stream = TcpStream::connect(addr).map_err(|_| -1i16)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|_| -1i16)?;
    stream
        .write_all(&wire::frame(
            ApiKey::InitProducerId,
            1,
            1,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000),
        ))
        .map_err(|_| -1i16)?;
    let frame = wire::read_response(&mut stream).map_err(|_| -1i16)?;
    let r: InitProducerIdResponse = wire::decode(ApiKey::InitProducerId, 1, frame);
    if r.error_code != 0 {
        return Err(r.error_code);
    }
    Ok(r.producer_id.0)
}

/// Producer ids come in blocks from the controller: 10,000 InitProducerId calls spread
/// over the three brokers, with the active controller killed (and restarted) after every
/// 2,000, never hand out an id twice.
#[test]
fn given_10000_init_producer_id_calls_over_three_brokers_with_controller_failovers_should_return_distinct_ids()
 {
    let mut cluster = start_cluster();
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.addr.clone()).collect();
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    assert!(wire::wait_until(TIMEOUT, || broker_ids(&metadata(all[0], None)).len() == 3).is_some());
    let mut ids: Vec<i64> = Vec::with_capacity(10_000);
    let mut refused = 0u64;
    let mut failovers = 0;
    let mut down: Option<usize> = None;
    let started = std::time::Instant::now();
    while ids.len() < 10_000 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {} ids",
            ids.len()
        );
        let n = ids.len();
        if n > 0 && n.is_multiple_of(2_000) && failovers < n / 2_000 {
            failovers += 1;
            if let Some(victim) = down.take() {
                cluster.brokers[victim].restart();
            }
            let active = wire::wait_until(TIMEOUT, || agreed_controller(&all).is_some())
                .and_then(|_| agreed_controller(&all))
                .expect("an active controller all brokers agree on");
            let victim = (active - 1) as usize;
            cluster.brokers[victim].kill9();
            down = Some(victim);
        }
        // Round robin over the brokers; a refusal (the dead one, or no controller yet)
        // moves on to the next.
        match init_producer_id(all[n % 3]) {
            Ok(id) => ids.push(id),
            Err(_) => {
                refused += 1;
                match init_producer_id(all[(n + 1) % 3]) {
                    Ok(id) => ids.push(id),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
    if let Some(victim) = down {
        cluster.brokers[victim].restart();
    }
    let distinct: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "an id was handed out twice");
    assert!(ids.iter().all(|id| *id >= 0));
    eprintln!(
        "10,000 producer ids, all distinct, over {failovers} controller failovers ({refused} calls refused meanwhile); ids {}..={}",
        distinct.first().unwrap(),
        distinct.last().unwrap()
    );
}
