//! Seed 004, section 6, end to end with `klog` against three broker processes: create
//! `multiple` with replication factor 3, produce four lines, kill -9 the leader, see the
//! ISR shrink without it in `describe`, read all four lines from the beginning, restart
//! the broker and see it return to the ISR.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::Cluster;

const WAIT: Duration = Duration::from_secs(40);

fn klog(bootstrap: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("timeout")
        .args(["--kill-after=5s", "60s"])
        .arg(env!("CARGO_BIN_EXE_klog"))
        .args(["-b", bootstrap])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run klog");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("stdin");
    }
    drop(input);
    child.wait_with_output().expect("klog output")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "klog failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// (leader, replicas, isr) of partition 0 as `klog topics describe` prints them.
fn describe(bootstrap: &str) -> Option<(i32, Vec<i32>, Vec<i32>)> {
    let out = klog(bootstrap, &["topics", "describe", "multiple"], None);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("Partition: 0"))?;
    let field = |name: &str| -> Option<String> {
        line.split('\t')
            .find_map(|f| f.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
    };
    let ids = |s: String| -> Vec<i32> {
        let mut v: Vec<i32> = s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
        v.sort_unstable();
        v
    };
    Some((
        field("Leader")?.trim().parse().ok()?,
        ids(field("Replicas")?),
        ids(field("Isr")?),
    ))
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn given_seed_004_when_the_leader_is_killed_should_shrink_the_isr_and_still_read_every_line() {
    let mut cluster = Cluster::start(3, &[("BROKER_REPLICA_LAG_TIME_MAX_MS", "3000")]);
    let addrs = cluster.addrs();
    wait_for("three registered brokers", || {
        let out = klog(
            &addrs[0],
            &[
                "topics",
                "create",
                "multiple",
                "--partitions",
                "1",
                "--replication-factor",
                "3",
            ],
            None,
        );
        out.status.success().then_some(())
    });
    let (leader, replicas, isr) = wait_for("a described topic", || describe(&addrs[1]));
    assert_eq!(replicas, vec![1, 2, 3]);
    assert_eq!(isr, vec![1, 2, 3], "every replica in sync");
    let lines = "first\nsecond\nthird\nfourth\n";
    ok(klog(
        &addrs[0],
        &["produce", "--topic", "multiple", "--acks", "all"],
        Some(lines),
    ));

    cluster.node(leader).kill9();
    let survivor = addrs[usize::try_from(leader % 3).unwrap()].clone();
    let (new_leader, isr) = wait_for("the ISR without the killed leader", || {
        describe(&survivor)
            .filter(|(l, _, isr)| *l != leader && *l > 0 && !isr.contains(&leader))
            .map(|(l, _, isr)| (l, isr))
    });
    assert_eq!(isr.len(), 2, "two in-sync replicas left: {isr:?}");
    assert!(isr.contains(&new_leader));
    let consumed = ok(klog(
        &survivor,
        &[
            "consume",
            "--topic",
            "multiple",
            "--from-beginning",
            "--max-messages",
            "4",
        ],
        None,
    ));
    assert_eq!(consumed, lines);

    cluster.node(leader).restart();
    wait_for("the restarted broker back in the ISR", || {
        describe(&survivor).filter(|(_, _, isr)| isr == &vec![1, 2, 3])
    });
}
