//! The broker driven by clients other than the `rdkafka` crate: kcat (Debian's
//! librdkafka 2.0.2, which negotiates different versions) and kafka-python (a pure
//! Python implementation of the protocol). `.ci/run` installs both.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{Broker, bounded, require_python_clients, require_tool};

fn kcat(broker: &Broker, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = bounded(&require_tool("kcat"), Duration::from_secs(60))
        .arg("-b")
        .arg(&broker.addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kcat");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write to kcat");
    }
    drop(input);
    let out = child.wait_with_output().expect("kcat output");
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn given_kcat_when_producing_and_consuming_should_round_trip_keys_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let lines: String = (0..500)
        .map(|i| format!("key{}:value {i}\n", i % 5))
        .collect();
    kcat(
        &broker,
        &["-P", "-t", "walkthrough", "-K", ":"],
        Some(&lines),
    );
    for codec in ["gzip", "snappy", "zstd"] {
        kcat(
            &broker,
            &["-P", "-t", "walkthrough", "-z", codec],
            Some(&format!("compressed with {codec}\n")),
        );
    }
    let out = kcat(
        &broker,
        &[
            "-C",
            "-t",
            "walkthrough",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o %k %s\n",
        ],
        None,
    );
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), 503, "{out}");
    for (i, line) in got.iter().take(500).enumerate() {
        assert_eq!(*line, format!("{i} key{} value {i}", i % 5));
    }
    assert_eq!(got[500], "500  compressed with gzip");
    assert_eq!(got[502], "502  compressed with zstd");
    let metadata = kcat(&broker, &["-L", "-t", "walkthrough"], None);
    assert!(
        metadata.contains("topic \"walkthrough\" with 1 partitions"),
        "{metadata}"
    );
    assert!(
        metadata.contains("leader 0, replicas: 0, isrs: 0"),
        "{metadata}"
    );
    // Offsets by query: the last message alone.
    let tail = kcat(
        &broker,
        &["-C", "-t", "walkthrough", "-o", "-1", "-e"],
        None,
    );
    assert_eq!(tail.trim(), "compressed with zstd");
}

#[test]
fn given_kafka_python_when_driving_the_broker_should_pass_its_checks() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/kafka_python_check.py"
    );
    // The script bounds itself at 180 s (faulthandler dumps its stacks); this is the backstop.
    let out = bounded(&require_python_clients(), Duration::from_secs(240))
        .arg(script)
        .arg(&broker.addr)
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "kafka-python checks failed (is kafka-python installed? .ci/run installs it):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
