//! The walkthrough of the seeds with `klog` against the real broker binary: topics,
//! console producer and consumer, groups, and a file source -> topic -> file sink
//! pipeline that reproduces a multi-megabyte file byte for byte even when the source and
//! the sink are killed mid-way and restarted.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::{Broker, Tmpfs};

fn start_broker(data: &Path) -> Broker {
    Broker::start(data)
}

/// `klog` under coreutils' `timeout`: a consumer waiting for messages that never come fails
/// its test (exit 124) instead of stalling the run.
fn bounded_klog() -> Command {
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=5s", "120s"])
        .arg(env!("CARGO_BIN_EXE_klog"));
    command
}

fn klog(broker: &Broker, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = bounded_klog()
        .args(["-b", &broker.addr])
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

#[test]
fn given_the_walkthrough_when_run_with_klog_should_print_what_kafka_tools_would() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    assert_eq!(
        ok(klog(
            &broker,
            &[
                "topics",
                "create",
                "army",
                "--partitions",
                "1",
                "--replication-factor",
                "1"
            ],
            None
        )),
        "Created topic army.\n"
    );
    assert_eq!(ok(klog(&broker, &["topics", "list"], None)), "army\n");
    let described = ok(klog(&broker, &["topics", "describe", "army"], None));
    assert!(
        described.contains("Topic: army\tPartitionCount: 1\tReplicationFactor: 1"),
        "{described}"
    );
    assert!(
        described.contains("Partition: 0\tLeader: 0\tReplicas: 0\tIsr: 0"),
        "{described}"
    );
    assert!(described.contains("retention.ms="), "{described}");

    ok(klog(
        &broker,
        &[
            "produce",
            "--topic",
            "army",
            "--key-separator",
            ":",
            "--header",
            "src=test",
        ],
        Some("This is a message\nk1:This is another message\n"),
    ));
    let consumed = ok(klog(
        &broker,
        &[
            "consume",
            "--topic",
            "army",
            "--from-beginning",
            "--max-messages",
            "2",
        ],
        None,
    ));
    assert_eq!(consumed, "This is a message\nThis is another message\n");
    let detailed = ok(klog(
        &broker,
        &[
            "consume",
            "--topic",
            "army",
            "--from-beginning",
            "--max-messages",
            "2",
            "--print-key",
            "--print-partition",
            "--print-offset",
            "--print-headers",
        ],
        None,
    ));
    assert_eq!(
        detailed,
        "Partition:0\tOffset:0\tsrc:test\tnull\tThis is a message\nPartition:0\tOffset:1\tsrc:test\tk1\tThis is another message\n"
    );
    let json = ok(klog(
        &broker,
        &[
            "--json",
            "consume",
            "--topic",
            "army",
            "--partition",
            "0",
            "--offset",
            "1",
            "--max-messages",
            "1",
        ],
        None,
    ));
    assert!(
        json.contains("\"offset\":1") && json.contains("\"key\":\"k1\""),
        "{json}"
    );

    // A group consumes, commits on exit; describe shows offsets and lag; reset moves them.
    ok(klog(
        &broker,
        &[
            "consume",
            "--topic",
            "army",
            "--from-beginning",
            "--group",
            "readers",
            "--max-messages",
            "2",
        ],
        None,
    ));
    ok(klog(
        &broker,
        &["produce", "--topic", "army"],
        Some("third\n"),
    ));
    assert_eq!(ok(klog(&broker, &["groups", "list"], None)), "readers\n");
    let described = ok(klog(&broker, &["groups", "describe", "readers"], None));
    assert!(
        described.contains("readers\tarmy\t0\t2\t3\t1"),
        "{described}"
    );
    ok(klog(
        &broker,
        &[
            "groups",
            "reset-offsets",
            "readers",
            "--topic",
            "army",
            "--to-earliest",
        ],
        None,
    ));
    let again = ok(klog(
        &broker,
        &[
            "consume",
            "--topic",
            "army",
            "--group",
            "readers",
            "--max-messages",
            "3",
        ],
        None,
    ));
    assert_eq!(
        again.lines().count(),
        3,
        "after a reset to earliest everything is read again"
    );

    // Errors are short, actionable, and non-zero.
    let dup = klog(&broker, &["topics", "create", "army"], None);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let unknown = klog(
        &broker,
        &["consume", "--topic", "nope-never", "--max-messages", "1"],
        None,
    );
    assert!(!unknown.status.success());
    let unreachable = bounded_klog()
        .args(["-b", "127.0.0.1:1", "topics", "list"])
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("unreachable"));
    ok(klog(&broker, &["topics", "delete", "army"], None));
    // As kafka-topics --list: the groups' internal topic stays.
    assert_eq!(
        ok(klog(&broker, &["topics", "list"], None)),
        "__consumer_offsets\n"
    );
}

/// Runs `klog` in the background and SIGKILLs it once `progressed` says it is mid-way.
fn kill_midway(broker: &Broker, args: &[&str], progressed: impl Fn() -> bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_klog"))
        .args(["-b", &broker.addr])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !progressed() {
        assert!(Instant::now() < deadline, "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed mid-way"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn given_file_source_and_sink_killed_midway_should_reproduce_the_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("data"));
    let input = dir.path().join("input.txt");
    let output = dir.path().join("output.txt");
    let mut text = String::new();
    let mut i = 0u64;
    while text.len() < 8 * 1024 * 1024 {
        text.push_str(&format!(
            "line {i} {}\n",
            "x".repeat((i * 7919 % 97) as usize)
        ));
        i += 1;
    }
    std::fs::write(&input, &text).unwrap();
    let lines = i;
    ok(klog(&broker, &["topics", "create", "files"], None));
    let input_s = input.to_str().unwrap();
    let output_s = output.to_str().unwrap();
    let data = dir.path().join("data/files-0");
    kill_midway(
        &broker,
        &[
            "connect",
            "file-source",
            "--file",
            input_s,
            "--topic",
            "files",
        ],
        || {
            std::fs::read_dir(&data)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                        .map(|e| e.metadata().map_or(0, |m| m.len()))
                        .sum::<u64>()
                        > 64 * 1024
                })
                .unwrap_or(false)
        },
    );
    ok(klog(
        &broker,
        &[
            "connect",
            "file-source",
            "--file",
            input_s,
            "--topic",
            "files",
        ],
        None,
    ));
    kill_midway(
        &broker,
        &[
            "connect",
            "file-sink",
            "--topic",
            "files",
            "--file",
            output_s,
            "--group",
            "sink",
        ],
        || {
            std::fs::metadata(&output)
                .map(|m| m.len() > 64 * 1024)
                .unwrap_or(false)
        },
    );
    ok(klog(
        &broker,
        &[
            "connect",
            "file-sink",
            "--topic",
            "files",
            "--file",
            output_s,
            "--group",
            "sink",
            "--timeout-ms",
            "2000",
        ],
        None,
    ));
    let copy = std::fs::read(&output).unwrap();
    assert_eq!(copy.len(), text.len(), "{lines} lines");
    assert!(
        copy == text.as_bytes(),
        "the sink's file differs from the source's"
    );
}

/// The README's `klog connect` commands, word for word but for the optional `[--follow]`.
fn readme_connect_commands() -> Vec<Vec<String>> {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("README.md");
    let commands: Vec<Vec<String>> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("klog "))
        .filter(|rest| rest.starts_with("connect "))
        .map(|rest| {
            rest.split_whitespace()
                .take_while(|w| !w.starts_with('#'))
                .filter(|w| !(w.starts_with('[') && w.ends_with(']')))
                .map(str::to_owned)
                .collect()
        })
        .collect();
    assert_eq!(
        commands.len(),
        2,
        "README.md should show the file source and the file sink: {commands:?}"
    );
    commands
}

/// `klog` in `cwd` under `timeout`, in the background.
fn spawn_klog_in(broker: &Broker, cwd: &Path, args: &[String]) -> Child {
    bounded_klog()
        .args(["-b", &broker.addr])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run klog")
}

#[test]
fn given_a_fresh_broker_when_the_readmes_connector_commands_run_should_create_the_topic_and_copy_the_file()
 {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("data"));
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let text = "foo\nbar\nhello connect\n";
    std::fs::write(work.join("test.txt"), text).unwrap();
    let commands = readme_connect_commands();
    let (source, sink) = (&commands[0], &commands[1]);
    assert!(source.iter().any(|w| w == "file-source"), "{source:?}");
    assert!(sink.iter().any(|w| w == "file-sink"), "{sink:?}");
    let sink_file = sink
        .windows(2)
        .find(|w| w[0] == "--file")
        .map(|w| work.join(&w[1]))
        .expect("the sink's --file");

    // The sink first: the topic does not exist yet, so it waits for it.
    let sink_child = spawn_klog_in(&broker, &work, sink);
    std::thread::sleep(Duration::from_millis(500));
    let source_out = spawn_klog_in(&broker, &work, source)
        .wait_with_output()
        .expect("file-source output");
    let source_err = String::from_utf8_lossy(&source_out.stderr).into_owned();
    assert!(
        source_out.status.success(),
        "file-source failed: {source_err}"
    );
    assert!(
        source_err.contains("created topic connect-test"),
        "{source_err}"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read(&sink_file).unwrap_or_default() != text.as_bytes() {
        assert!(
            Instant::now() < deadline,
            "the sink's file never matched the source's: {:?}",
            String::from_utf8_lossy(&std::fs::read(&sink_file).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM to timeout(1), which passes it on to klog: the sink stops cleanly.
    let stopped = Command::new("kill")
        .args(["-TERM", &sink_child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let sink_out = sink_child.wait_with_output().expect("file-sink output");
    let sink_err = String::from_utf8_lossy(&sink_out.stderr).into_owned();
    assert!(sink_out.status.success(), "file-sink failed: {sink_err}");
    assert!(
        sink_err.contains("waiting up to") && sink_err.contains("wrote 3 lines"),
        "{sink_err}"
    );
    let described = ok(klog(&broker, &["topics", "describe", "connect-test"], None));
    assert!(
        described.contains("Topic: connect-test\tPartitionCount: 1"),
        "created with the broker's default partition count: {described}"
    );
    // Run again, the source sends nothing twice.
    let again = spawn_klog_in(&broker, &work, source)
        .wait_with_output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("sent 0 lines"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn given_no_topic_when_the_file_sink_waits_past_its_bound_should_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("data"));
    let out = klog(
        &broker,
        &[
            "connect",
            "file-sink",
            "--topic",
            "never-made",
            "--file",
            dir.path().join("sink.txt").to_str().unwrap(),
            "--topic-wait-ms",
            "1000",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("topic never-made does not exist")
            && err.contains("klog topics create never-made"),
        "{err}"
    );
    assert_eq!(ok(klog(&broker, &["topics", "list"], None)), "");
}

#[test]
fn given_a_full_disk_when_a_partition_fails_should_show_its_storage_error_in_describe() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let Some(tmpfs) = Tmpfs::mount(4) else {
        return;
    };
    let broker = start_broker(&tmpfs.path().join("data"));
    ok(klog(
        &broker,
        &["topics", "create", "disk", "--partitions", "2"],
        None,
    ));
    // Fill what is left of the filesystem, then append: the write fails with ENOSPC.
    let mut filler = std::fs::File::create(tmpfs.path().join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("message.send.max.retries", "0")
        .create()
        .unwrap();
    let sent = futures_executor::block_on(
        producer
            .send_result(FutureRecord::<(), _>::to("disk").partition(1).payload("x"))
            .map_err(|(e, _)| e)
            .unwrap(),
    )
    .unwrap();
    assert!(sent.is_err(), "an append on a full disk must fail");

    let described = ok(klog(&broker, &["topics", "describe", "disk"], None));
    let line = |p: &str| {
        described
            .lines()
            .find(|l| l.contains(&format!("Partition: {p}\t")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("1").ends_with(
            "\tError: KafkaStorageError (Broker: Disk error when trying to access log file on disk)"
        ),
        "{described}"
    );
    assert!(!line("0").contains("Error"), "{described}");
    let json = ok(klog(
        &broker,
        &["--json", "topics", "describe", "disk"],
        None,
    ));
    assert!(json.contains("\"error\":\"KafkaStorageError\""), "{json}");
    drop(broker);
}
