//! The broker driven by KafkaJS (Node.js), pinned in `compat/node/package.json` and its
//! lock file and installed by `compat/node/build.sh` (which `.ci/run` calls; this test
//! runs it too, once, so `cargo test` needs no step of its own): create a topic, read its
//! metadata, produce idempotently with acks=all, end offsets, a consumer group that
//! commits, list and describe the group and its offsets, delete the topic.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Broker, bounded, require_tool};

#[test]
fn given_kafkajs_should_pass_its_scenarios() {
    require_tool("node");
    require_tool("npm");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../compat/node");
    let built = bounded(&dir.join("build.sh"), Duration::from_secs(600))
        .output()
        .expect("run compat/node/build.sh");
    assert!(
        built.status.success(),
        "compat/node/build.sh failed (it needs Node.js and the npm registry):\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let data = tempfile::tempdir().unwrap();
    let broker = Broker::start(data.path());
    let out = bounded(&require_tool("node"), Duration::from_secs(300))
        .arg(dir.join("scenarios.js"))
        .arg(&broker.addr)
        .output()
        .expect("run scenarios.js");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(
        out.status.success() && failed.is_empty() && passed >= 7,
        "KafkaJS scenarios: {passed} passed, failed: {failed:#?}\nexit {}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
