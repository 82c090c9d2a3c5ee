//! `loadgen` end to end against real brokers: our broker binary, and RabbitMQ and
//! ActiveMQ from Debian's packages (started by `scripts/rabbitmq.sh` / `scripts/activemq.sh`
//! when they are not already up: `.ci/run` starts them before the tests).
//!
//! Every check reads `results.json`: each message produced was read back exactly once,
//! counts and bytes agree, percentiles are ordered, CPU was accounted to the right process.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use testkit::Broker;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Our broker in the paper's setting (flush once a second).
fn start_broker(data: &Path) -> Broker {
    start_broker_with_flush(data, "interval")
}

/// Our broker with the given `flush` policy (`per-append` for acks=all runs).
fn start_broker_with_flush(data: &Path, flush: &str) -> Broker {
    Broker::start_with(data, &[("BROKER_FLUSH", flush)])
}

/// `loadgen` under coreutils' `timeout`, so that a run that stops making progress fails its
/// test (exit 124) instead of stalling the whole test run.
fn loadgen(args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .args(["--kill-after=10s", "600s"])
        .arg(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--quiet")
        .args(args)
        .output()
        .expect("run loadgen");
    eprintln!(
        "loadgen {args:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn results(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("results.json")).expect("results.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// The checks every run must pass, whatever the target.
fn check_run(run: &Value, messages: u64) {
    let v = &run["verify"];
    assert_eq!(u(v, "sent"), messages, "{run}");
    assert_eq!(u(v, "acknowledged"), messages, "{run}");
    assert_eq!(
        v["consumed"],
        Value::Bool(true),
        "every run reads its messages back: {run}"
    );
    assert_eq!(u(v, "unique"), messages, "{run}");
    assert_eq!(u(v, "missing"), 0, "{run}");
    assert_eq!(u(v, "duplicates"), 0, "{run}");
    assert_eq!(u(v, "malformed"), 0, "{run}");
    let (n, bytes, secs) = (u(run, "messages"), u(run, "bytes"), f(run, "seconds"));
    assert!(n > 0 && n <= messages, "{run}");
    assert_eq!(bytes, n * u(run, "size"), "{run}");
    assert!(secs > 0.0);
    let rate = f(run, "msgs_per_sec");
    assert!(
        (rate - n as f64 / secs).abs() <= rate * 1e-6 + 1e-6,
        "{run}"
    );
    assert!(
        (f(run, "mb_per_sec") - bytes as f64 / secs / 1e6).abs() < 1e-6,
        "{run}"
    );
    assert!(f(run, "client_cpu_s") >= 0.0);
    let broker_cpu = run["broker_cpu_s"]
        .as_f64()
        .expect("the broker process was found by its port");
    assert!(broker_cpu >= 0.0);
    let series = run["series"].as_array().expect("series");
    assert!(!series.is_empty(), "{run}");
    let mut last = 0;
    for point in series {
        let done = point[1].as_u64().expect("count");
        assert!(done >= last, "the series only grows: {run}");
        last = done;
    }
    if run["workload"] == "latency" {
        let l = &run["latency"];
        let p: Vec<u64> = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
            .iter()
            .map(|k| u(l, k))
            .collect();
        assert!(
            p.windows(2).all(|w| w[0] <= w[1]),
            "percentiles are ordered: {l}"
        );
        assert!(p[0] >= 1, "{l}");
        assert_eq!(n, messages, "{run}");
        assert_eq!(
            u(l, "count"),
            n - u(run, "warmup"),
            "every message after the warm-up has a latency: {run}"
        );
    } else {
        assert!(run["latency"].is_null());
    }
}

fn check_paper(report: &Value, target: &str, messages: u64, latency_messages: u64) {
    let runs: Vec<&Value> = report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["target"] == target)
        .collect();
    let experiments: Vec<&str> = runs
        .iter()
        .map(|r| r["experiment"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(experiments.len(), 4, "{experiments:?}");
    assert_eq!(
        experiments[..3],
        ["producer, batch 1", "producer, batch 50", "consumer"]
    );
    assert!(experiments[3].starts_with("latency at "));
    for run in &runs[..3] {
        check_run(run, messages);
    }
    assert_eq!(u(runs[0], "batch"), 1);
    assert_eq!(u(runs[1], "batch"), 50);
    check_run(runs[3], latency_messages);
}

/// Brokers that are not ours are shared by the tests of this file: one at a time.
static PEERS: Mutex<()> = Mutex::new(());

#[test]
fn paper_against_our_broker_checks_every_message_and_writes_the_report() {
    let data = tempfile::tempdir().unwrap();
    let broker = start_broker(data.path());
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("paper");
    // The default targets: librdkafka and the lean client against our broker; the queue
    // brokers pointed at a port where nothing listens.
    let o = loadgen(&[
        "--kafka",
        &broker.addr,
        "--rabbitmq",
        "amqp://guest:guest@127.0.0.1:1/%2f",
        "--activemq",
        "127.0.0.1:1",
        "paper",
        "--messages",
        "20000",
        "--latency-rate",
        "2000",
        "--latency-seconds",
        "2",
        "--out",
        dir.to_str().unwrap(),
        "--note",
        "test run",
    ]);
    assert!(o.status.success());
    let report = results(&dir);
    check_paper(&report, "kafka", 20000, 4000);
    check_paper(&report, "kafka-lean", 20000, 4000);
    for run in report["runs"].as_array().unwrap() {
        assert_eq!(
            run["broker_pid"].as_u64(),
            Some(u64::from(broker.pid())),
            "CPU is charged to our broker: {run}"
        );
    }
    // Targets that do not answer are reported with how to start them, not fatal.
    let unreachable = report["unreachable"].as_array().unwrap();
    let names: Vec<&str> = unreachable
        .iter()
        .map(|u| u["target"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rabbitmq", "activemq"], "{unreachable:?}");
    assert!(
        unreachable[1]["how_to_start"]
            .as_str()
            .unwrap()
            .contains("scripts/activemq.sh")
    );
    let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
    assert!(md.contains("| producer, batch 50 | kafka |"), "{md}");
    assert!(md.contains("| producer, batch 50 | kafka-lean |"), "{md}");
    assert!(md.contains("kafka: librdkafka "), "{md}");
    assert!(md.contains("kafka-lean: lean (kafka-protocol 0.18"), "{md}");
    assert!(md.contains("activemq not measured"), "{md}");
    assert!(md.contains("test run"));
    for chart in ["producer.svg", "consumer.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(dir.join(chart)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{chart}"
        );
        assert!(
            svg.contains("kafka-lean "),
            "{chart} has a line for each client"
        );
    }
}

#[test]
fn lean_client_paper_mode_produce_at_batch_1_reads_every_message_back() {
    let data = tempfile::tempdir().unwrap();
    let broker = start_broker(data.path());
    let dir = tempfile::tempdir().unwrap();
    let o = loadgen(&[
        "--kafka",
        &broker.addr,
        "produce",
        "--target",
        "kafka-lean",
        "--messages",
        "20000",
        "--batch",
        "1",
        "--producers",
        "2",
        "--consumers",
        "3",
        "--partitions",
        "3",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let run = &results(dir.path())["runs"][0];
    check_run(run, 20000);
    assert_eq!(u(run, "batch"), 1);
}

/// Both Kafka clients' idempotent producers (acks=all) and committing consumers, several
/// of each over several partitions, on a broker that syncs before it answers.
#[test]
fn durable_mode_with_several_producers_consumers_and_partitions() {
    let data = tempfile::tempdir().unwrap();
    let broker = start_broker_with_flush(data.path(), "per-append");
    let dir = tempfile::tempdir().unwrap();
    for target in ["kafka", "kafka-lean"] {
        for workload in ["produce", "consume"] {
            let out = dir.path().join(format!("{target}-{workload}"));
            let o = loadgen(&[
                "--kafka",
                &broker.addr,
                workload,
                "--target",
                target,
                "--mode",
                "durable",
                "--messages",
                "9000",
                "--batch",
                "7",
                "--producers",
                "3",
                "--consumers",
                "2",
                "--partitions",
                "4",
                // Whole batches to one partition each (the other tests deal per message).
                "--partitioner",
                "per-batch",
                "--size",
                "1000",
                "--warmup",
                "300",
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{target} {workload}");
            let run = &results(&out)["runs"][0];
            check_run(run, 9000);
            assert_eq!(run["target"], target);
            assert_eq!(run["mode"], "durable");
            assert_eq!(run["partitioner"], "per-batch");
            assert_eq!(
                u(run, "messages"),
                9000 - 300,
                "the warm-up is not measured"
            );
        }
    }
}

#[test]
fn a_produce_run_can_be_bounded_by_time() {
    let data = tempfile::tempdir().unwrap();
    let broker = start_broker(data.path());
    let dir = tempfile::tempdir().unwrap();
    let o = loadgen(&[
        "--kafka",
        &broker.addr,
        "produce",
        "--duration",
        "1",
        "--batch",
        "7",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let run = &results(dir.path())["runs"][0];
    let sent = u(&run["verify"], "sent");
    assert!(sent > 100, "{run}");
    check_run(run, sent);
    let secs = f(run, "seconds");
    assert!((0.9..30.0).contains(&secs), "{run}");
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    let o = loadgen(&["--kafka", "127.0.0.1:1", "produce", "--messages", "10"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("kafka is not reachable at 127.0.0.1:1"),
        "{err}"
    );
    assert!(
        err.contains("cargo run --release -p server --bin broker"),
        "{err}"
    );
}

/// Starts a peer broker with its script unless something already listens on `port`.
/// Returns whether this test started it (and so must stop it).
fn ensure_peer(script: &str, port: u16) -> bool {
    if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_ok() {
        return false;
    }
    let script = repo().join("scripts").join(script);
    for step in [&["install"][..], &["start"][..]] {
        let status = Command::new(&script)
            .args(step)
            .status()
            .expect("run peer script");
        assert!(
            status.success(),
            "{} {step:?} failed: RabbitMQ and ActiveMQ tests need them",
            script.display()
        );
    }
    true
}

fn stop_peer(script: &str, started: bool) {
    if started {
        let _ = Command::new(repo().join("scripts").join(script))
            .arg("stop")
            .status();
    }
}

#[test]
fn rabbitmq_and_activemq_drivers_against_real_servers() {
    let _one = PEERS.lock().unwrap_or_else(|e| e.into_inner());
    let rabbit = ensure_peer("rabbitmq.sh", 5672);
    let active = ensure_peer("activemq.sh", 61613);
    let dir = tempfile::tempdir().unwrap();
    let paper = dir.path().join("paper");
    let o = loadgen(&[
        "paper",
        "--messages",
        "5000",
        "--targets",
        "rabbitmq,activemq",
        "--latency-rate",
        "1000",
        "--latency-seconds",
        "2",
        "--out",
        paper.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let report = results(&paper);
    assert!(
        report["unreachable"].as_array().unwrap().is_empty(),
        "{report}"
    );
    check_paper(&report, "rabbitmq", 5000, 2000);
    check_paper(&report, "activemq", 5000, 2000);

    // Durable mode: confirms / receipts per message, manual acks, several queues.
    for target in ["rabbitmq", "activemq"] {
        for workload in ["produce", "consume"] {
            let out = dir.path().join(format!("{target}-{workload}"));
            let o = loadgen(&[
                workload,
                "--target",
                target,
                "--mode",
                "durable",
                "--messages",
                "3000",
                "--batch",
                "20",
                "--producers",
                "2",
                "--consumers",
                "2",
                "--partitions",
                "2",
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success());
            check_run(&results(&out)["runs"][0], 3000);
        }
    }
    stop_peer("activemq.sh", active);
    stop_peer("rabbitmq.sh", rabbit);
}
