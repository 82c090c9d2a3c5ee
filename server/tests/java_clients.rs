//! The broker driven by Java code we did not write, pinned in `compat/*/pom.xml` and
//! resolved from Maven Central by `compat/*/build.sh` (which `.ci/run` calls): Apache
//! Kafka's Java client (`kafka-clients`: AdminClient, the default idempotent producer, a
//! consumer group of three, seeks, static membership), Kafka's command-line tools
//! (`kafka-tools`, run through their main classes as `bin/kafka-*.sh` does) walking
//! through seed 004 step by step, and seed 002's Spring Boot application (Spring Kafka's
//! `KafkaTemplate` and `@KafkaListener`).

mod common;
mod wire;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use common::{Broker, bounded, require_tool};

/// Longest one JVM run may take (a tool, or the whole client scenario).
const JAVA_LIMIT: Duration = Duration::from_secs(180);

/// The classpath of `compat/<project>` (`target/classes` and the jars in `target/lib`),
/// from its `build.sh`, run once per test binary (Maven fetches the jars the first time
/// only, as loadgen's tests install RabbitMQ when it is missing), so `cargo test` needs no
/// step of its own for them.
fn classpath_of(project: &'static str) -> String {
    static BUILT: Mutex<BTreeMap<&'static str, Result<String, String>>> =
        Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    built
        .entry(project)
        .or_insert_with(|| {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../compat")
                .join(project);
            let target = dir.join("target");
            let out = bounded(&dir.join("build.sh"), Duration::from_secs(600))
                .output()
                .map_err(|e| format!("cannot run compat/{project}/build.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "compat/{project}/build.sh failed ({}; it needs Maven and a JDK 17):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(format!(
                "{}:{}/*",
                target.join("classes").display(),
                target.join("lib").display()
            ))
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn classpath() -> String {
    classpath_of("java")
}

/// `java -cp <compat/java classpath> <main> <args>`, bounded, with `stdin` fed and closed.
fn java(main: &str, args: &[&str], stdin: Option<&str>) -> Output {
    java_in(&classpath(), main, args, stdin)
}

/// As `java`, on another classpath.
fn java_in(classpath: &str, main: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = bounded(&require_tool("java"), JAVA_LIMIT)
        // A short-lived client: quick start matters more than peak speed.
        .args(["-XX:TieredStopAtLevel=1", "-Xss1m", "-cp", classpath, main])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run java");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write to java");
    }
    drop(input);
    child.wait_with_output().expect("java output")
}

/// Runs one of Kafka's tools and returns what it printed; fails the test if it failed.
fn tool(main: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = java(main, args, stdin);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{main} {args:?} exited {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn given_the_java_client_should_pass_its_admin_producer_and_consumer_group_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", wire::free_port());
    let broker = Broker::start_with(dir.path(), &[("BROKER_METRICS_LISTEN", &metrics)]);
    let out = java("compat.ClientScenarios", &[&broker.addr], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(
        out.status.success() && failed.is_empty() && passed >= 14,
        "Java client scenarios: {passed} passed, failed: {failed:#?}\nexit {}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Which versions the Java client really spoke: it takes the highest both sides
    // know, so the flexible versions (and topic ids in Fetch and Metadata) are the ones
    // these scenarios passed on.
    let used = wire::Scrape::take(&metrics).versions_used();
    for (api, versions) in &used {
        println!("VERSIONS {api}: {versions:?}");
    }
    let highest = |api: &str| {
        used.get(api)
            .and_then(|v| v.iter().map(|(version, _)| *version).max())
    };
    for (api, at_least) in [
        ("Fetch", 13),
        ("Metadata", 12),
        ("Produce", 10),
        ("JoinGroup", 9),
        ("OffsetCommit", 8),
        ("CreateTopics", 7),
        ("DeleteTopics", 6),
        ("DescribeCluster", 1),
        ("ListOffsets", 10),
        ("DescribeTopicPartitions", 0),
    ] {
        assert!(
            highest(api).is_some_and(|v| v >= at_least),
            "the Java client sent {api} at {:?}, expected v{at_least} or later",
            used.get(api)
        );
    }
}

const TOPICS: &str = "org.apache.kafka.tools.TopicCommand";
const PRODUCER: &str = "org.apache.kafka.tools.ConsoleProducer";
const CONSUMER: &str = "org.apache.kafka.tools.consumer.ConsoleConsumer";
const GROUPS: &str = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand";
const QUORUM: &str = "org.apache.kafka.tools.MetadataQuorumCommand";

/// Seed 004, sections 3 to 5, with Kafka 4's tools (`--bootstrap-server` where the seed,
/// written for Kafka 2, says `--zookeeper` or `--broker-list`): create `army`, list and
/// describe it, type three lines into the console producer, read them back in order with
/// the console consumer `--from-beginning`, then see its group's offsets; then grow it to
/// three partitions with `kafka-topics --alter`, and create one with `--replica-assignment`.
#[test]
fn given_kafkas_own_tools_should_walk_through_seed_004_on_one_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let server = broker.addr.as_str();
    let created = tool(
        TOPICS,
        &[
            "--bootstrap-server",
            server,
            "--create",
            "--replication-factor",
            "1",
            "--partitions",
            "1",
            "--topic",
            "army",
        ],
        None,
    );
    assert!(created.contains("Created topic army"), "{created}");
    let listed = tool(TOPICS, &["--bootstrap-server", server, "--list"], None);
    assert!(listed.lines().any(|l| l.trim() == "army"), "{listed}");
    let described = tool(
        TOPICS,
        &[
            "--bootstrap-server",
            server,
            "--describe",
            "--topic",
            "army",
        ],
        None,
    );
    assert!(
        described.contains("PartitionCount: 1") && described.contains("ReplicationFactor: 1"),
        "{described}"
    );
    assert!(
        described.contains("Partition: 0") && described.contains("Leader: 0"),
        "{described}"
    );

    let lines = [
        "이것은 수류탄이여!",
        "받아라 수류탄!!!",
        "전방 100m 적출현 사격 개시",
    ];
    tool(
        PRODUCER,
        &["--bootstrap-server", server, "--topic", "army"],
        Some(&format!("{}\n", lines.join("\n"))),
    );
    let consumed = tool(
        CONSUMER,
        &[
            "--bootstrap-server",
            server,
            "--topic",
            "army",
            "--from-beginning",
            "--group",
            "seed-004",
            "--max-messages",
            "3",
            "--timeout-ms",
            "30000",
        ],
        None,
    );
    assert_eq!(
        consumed.lines().collect::<Vec<_>>(),
        lines,
        "the console consumer prints the lines in the order they were typed"
    );
    let groups = tool(
        GROUPS,
        &[
            "--bootstrap-server",
            server,
            "--describe",
            "--group",
            "seed-004",
        ],
        None,
    );
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    let row: Vec<&str> = groups
        .lines()
        .find(|l| l.starts_with("seed-004"))
        .unwrap_or_else(|| panic!("no row for the group:\n{groups}"))
        .split_whitespace()
        .collect();
    assert_eq!(&row[1..6], ["army", "0", "3", "3", "0"], "{groups}");

    // Beyond the seed: more partitions for the topic (CreatePartitions).
    tool(
        TOPICS,
        &[
            "--bootstrap-server",
            server,
            "--alter",
            "--topic",
            "army",
            "--partitions",
            "3",
        ],
        None,
    );
    let described = tool(
        TOPICS,
        &[
            "--bootstrap-server",
            server,
            "--describe",
            "--topic",
            "army",
        ],
        None,
    );
    assert!(
        described.contains("PartitionCount: 3") && described.contains("Partition: 2"),
        "{described}"
    );
    // And a topic whose replicas are assigned by hand, two partitions on broker 0.
    let created = tool(
        TOPICS,
        &[
            "--bootstrap-server",
            server,
            "--create",
            "--topic",
            "assigned",
            "--replica-assignment",
            "0,0",
        ],
        None,
    );
    assert!(created.contains("Created topic assigned"), "{created}");
    let described = tool(
        TOPICS,
        &[
            "--bootstrap-server",
            server,
            "--describe",
            "--topic",
            "assigned",
        ],
        None,
    );
    assert!(
        described.contains("PartitionCount: 2") && described.contains("Replicas: 0"),
        "{described}"
    );
}

/// `Leader`, `Replicas` and `Isr` of partition 0 from `kafka-topics --describe`.
fn describe_partition(bootstrap: &str, topic: &str) -> Option<(i32, Vec<i32>, Vec<i32>)> {
    let out = java(
        TOPICS,
        &[
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--topic",
            topic,
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.contains("Partition: 0"))?;
    let field = |name: &str| -> Option<String> {
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        fields
            .iter()
            .find_map(|f| f.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let ids = |v: String| -> Vec<i32> {
        v.split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    };
    Some((
        field("Leader:")?.parse().ok()?,
        ids(field("Replicas:")?),
        ids(field("Isr:")?),
    ))
}

/// Polls `describe_partition` until `ok` holds; the last answer either way.
fn describe_until(
    bootstrap: &str,
    topic: &str,
    ok: impl Fn(&(i32, Vec<i32>, Vec<i32>)) -> bool,
) -> Option<(i32, Vec<i32>, Vec<i32>)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = describe_partition(bootstrap, topic);
        if seen.as_ref().is_some_and(&ok) || std::time::Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Seed 004, section 6, with Kafka's own tools against three of our brokers: create
/// `multiple` with replication factor 3, describe it (Leader, Replicas, Isr), type four
/// lines, kill -9 the leader, describe shows the Isr without it and another leader, the
/// console consumer `--from-beginning` still prints all four lines, and the restarted
/// broker comes back into the Isr.
#[test]
fn given_kafkas_own_tools_should_walk_through_seed_004_on_three_brokers_through_a_kill_9() {
    // The console consumer first joins a group after the kill, when __consumer_offsets is
    // created (on the first FindCoordinator, as in Kafka): it needs as many live brokers
    // as its replication factor, so 2 here (Kafka would answer COORDINATOR_NOT_AVAILABLE
    // with its default of 3 and one broker down, as this broker does).
    let mut cluster =
        testkit::Cluster::start(3, &[("BROKER_OFFSETS_TOPIC_REPLICATION_FACTOR", "2")]);
    let bootstrap = cluster.addrs().join(",");
    let created = tool(
        TOPICS,
        &[
            "--bootstrap-server",
            &bootstrap,
            "--create",
            "--replication-factor",
            "3",
            "--partitions",
            "1",
            "--topic",
            "multiple",
        ],
        None,
    );
    assert!(created.contains("Created topic multiple"), "{created}");
    let full = describe_until(&bootstrap, "multiple", |(leader, replicas, isr)| {
        *leader > 0 && replicas.len() == 3 && isr.len() == 3
    });
    let (leader, replicas, _) = full.clone().unwrap_or_else(|| panic!("describe: {full:?}"));
    assert!(
        full.as_ref().is_some_and(|(_, _, isr)| isr.len() == 3),
        "Isr never held all three replicas: {full:?}"
    );

    // Beyond the seed: the controller quorum as Kafka's own tool shows it
    // (DescribeQuorum, answered through any broker by the active controller).
    let quorum = tool(
        QUORUM,
        &["--bootstrap-server", &bootstrap, "describe", "--status"],
        None,
    );
    println!("{quorum}");
    let field = |name: &str| {
        quorum
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(name)
                    .map(str::trim)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{quorum}"))
    };
    let quorum_leader: i32 = field("LeaderId:").parse().unwrap();
    assert!((1..=3).contains(&quorum_leader), "{quorum}");
    let high_watermark: i64 = field("HighWatermark:").parse().unwrap();
    assert!(high_watermark > 0, "{quorum}");
    let voters = field("CurrentVoters:");
    for id in 1..=3 {
        assert!(
            voters.contains(&format!("\"id\": {id}")) || voters.contains(&format!("{id}")),
            "{voters}"
        );
    }

    let lines = ["node1", "node2", "node", "node4"];
    tool(
        PRODUCER,
        &["--bootstrap-server", &bootstrap, "--topic", "multiple"],
        Some(&format!("{}\n", lines.join("\n"))),
    );

    println!(
        "before: leader {leader}, replicas {replicas:?}, isr {:?}",
        full.as_ref().map(|f| &f.2)
    );
    cluster.node(leader).kill9();
    let after = describe_until(&bootstrap, "multiple", |(new_leader, _, isr)| {
        *new_leader > 0 && *new_leader != leader && isr.len() == 2 && !isr.contains(&leader)
    });
    assert!(
        after
            .as_ref()
            .is_some_and(|(l, r, isr)| *l != leader && *r == replicas && !isr.contains(&leader)),
        "after kill -9 of broker {leader}: {after:?}"
    );
    println!("after kill -9 of broker {leader}: {after:?}");
    let consumed = tool(
        CONSUMER,
        &[
            "--bootstrap-server",
            &bootstrap,
            "--topic",
            "multiple",
            "--from-beginning",
            "--max-messages",
            "4",
            "--timeout-ms",
            "30000",
        ],
        None,
    );
    assert_eq!(consumed.lines().collect::<Vec<_>>(), lines);

    cluster.node(leader).restart();
    let back = describe_until(&bootstrap, "multiple", |(_, _, isr)| isr.contains(&leader));
    println!("after its restart: {back:?}");
    assert!(
        back.as_ref().is_some_and(|(_, _, isr)| isr.len() == 3),
        "broker {leader} never rejoined the Isr: {back:?}"
    );
}

/// Seed 002: a Spring Boot application with the seed's `application.yml` (group
/// `testconsume`, `auto-offset-reset: earliest`, String deserializers) sends with
/// `KafkaTemplate` to the topic `test` (created on first use) and its `@KafkaListener`
/// receives the message.
#[test]
fn given_seed_002s_spring_boot_application_should_receive_what_its_kafka_template_sent() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let bootstrap = format!("--spring.kafka.bootstrap-servers={}", broker.addr);
    let producer = format!("--spring.kafka.producer.bootstrap-servers={}", broker.addr);
    let out = java_in(
        &classpath_of("spring"),
        "compat.spring.SeedApplication",
        &[&bootstrap, &producer, "--spring.main.banner-mode=off"],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = stdout
        .lines()
        .find(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
        .unwrap_or("no result line");
    println!("{result}");
    assert!(
        out.status.success() && result.starts_with("PASS spring.template-to-listener"),
        "Spring Boot application: {result}; exit {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
