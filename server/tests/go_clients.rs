//! The broker driven by the Go clients, pinned in `compat/go/go.mod` and built by
//! `compat/go/build.sh` (which `.ci/run` calls; this test runs it too, once, so
//! `cargo test` needs no step of its own): franz-go (`kgo` and `kadm`) and Sarama, each
//! creating a topic, producing idempotently with acks=all, consuming it in a group with
//! commits, listing and describing the group and its offsets, and deleting the topic.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Broker, bounded, require_tool};

#[test]
fn given_the_go_clients_franz_go_and_sarama_should_pass_their_scenarios() {
    require_tool("go");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../compat/go");
    let built = bounded(&dir.join("build.sh"), Duration::from_secs(600))
        .output()
        .expect("run compat/go/build.sh");
    assert!(
        built.status.success(),
        "compat/go/build.sh failed (it needs Go and its module proxy):\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let data = tempfile::tempdir().unwrap();
    let broker = Broker::start(data.path());
    let out = bounded(&dir.join("target/compat-go"), Duration::from_secs(300))
        .arg(&broker.addr)
        .output()
        .expect("run compat-go");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(
        out.status.success() && failed.is_empty() && passed >= 13,
        "Go client scenarios: {passed} passed, failed: {failed:#?}\nexit {}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
