//! Test support for every test crate of the workspace (one harness, not one per crate):
//! the real `broker` binary started on a free port with its own data directory and
//! stopped by SIGTERM, SIGKILL or SIGSTOP, clusters of them (on one loopback address, or
//! each on its own), network partitions between loopback addresses (nftables), external
//! tools bounded by coreutils' `timeout`, free ports, and a tmpfs mounted for a test. It
//! never links the broker: it runs the binary that `cargo test` built beside the test
//! executable.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a clean stop (SIGTERM: a controlled shutdown, then closing every partition)
/// may take before the test fails; the broker is then killed.
const STOP_WAIT_MAX: Duration = Duration::from_secs(60);

pub struct Broker {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    /// The loopback address it listens on (its outgoing broker-to-broker sockets are
    /// bound to it too, as the broker binds them to its listen addresses).
    host: String,
    /// Between `sigstop` and `sigcont`.
    frozen: bool,
}

impl Broker {
    /// Starts a broker on a fresh data directory.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Starts a broker with extra `BROKER_*` settings (and `RUST_LOG`, which defaults to
    /// `warn`), on 127.0.0.1.
    pub fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on("127.0.0.1", data_dir, env)
    }

    /// As `start_with`, listening on the loopback address `host` (any of 127.0.0.0/8).
    pub fn start_on(host: &str, data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr) = spawn(data_dir, &format!("{host}:0"), &env);
        Self {
            child: Some(child),
            addr,
            data_dir: data_dir.to_owned(),
            env,
            host: host.to_owned(),
            frozen: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The loopback address the broker listens on and sends from.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// True while the process runs (frozen or not).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGTERM, then waits (at most a minute) for a clean exit.
    pub fn stop(&mut self) {
        if self.frozen {
            self.sigcont();
        }
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + STOP_WAIT_MAX;
            let status = loop {
                match child.try_wait().expect("wait for broker") {
                    Some(status) => break status,
                    None if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "broker {} did not stop within {STOP_WAIT_MAX:?} of SIGTERM (killed)",
                            self.addr
                        );
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            assert!(status.success(), "broker exited with {status}");
        }
    }

    /// SIGKILL: no chance to flush or mark anything (a frozen broker dies too).
    pub fn kill9(&mut self) {
        self.frozen = false;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process freezes with its sockets open (peers see silence, not a
    /// closed connection) until `sigcont`.
    pub fn sigstop(&mut self) {
        let pid = self.child.as_ref().expect("a running broker").id();
        signal(pid, "STOP");
        self.frozen = true;
    }

    /// SIGCONT: a frozen broker runs on from where it stopped.
    pub fn sigcont(&mut self) {
        let pid = self.child.as_ref().expect("a running broker").id();
        signal(pid, "CONT");
        self.frozen = false;
    }

    /// Starts again on the same data directory and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        let (child, addr) = spawn(&self.data_dir, &self.addr, &self.env);
        assert_eq!(addr, self.addr);
        self.child = Some(child);
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(data_dir: &Path, listen: &str, env: &[(String, String)]) -> (Child, String) {
    let mut last_error = String::new();
    // The port of a restart may still be in TIME_WAIT for a moment: retry briefly.
    for _ in 0..50 {
        let mut cmd = Command::new(binary("broker"));
        cmd.arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--cores")
            .arg("2")
            // TEST_BROKER_LOG raises the brokers' log level when a test needs reading.
            .env(
                "RUST_LOG",
                std::env::var("TEST_BROKER_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start broker binary");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        if let Some(addr) = line.trim().strip_prefix("broker listening on ") {
            return (child, addr.to_owned());
        }
        last_error = format!("broker printed {line:?}");
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("broker did not start: {last_error}");
}

/// A tool the tests run, from `PATH`. One that is missing but that Debian packages (kcat,
/// nftables' `nft`, Node.js and npm) is installed first with apt-get, once per test process, so that
/// `cargo test` needs no set-up step of its own on a fresh machine of this kind (root, apt
/// reachable); if that fails, the test fails with what to run.
pub fn require_tool(name: &str) -> PathBuf {
    ensure_tool(name).unwrap_or_else(|| {
        panic!("{name} is not installed: run .ci/run, or `apt-get install -y {name}`")
    })
}

/// `name` from `PATH`, installed first with apt-get if it is missing and Debian packages
/// it; `None` if it is still missing.
fn ensure_tool(name: &str) -> Option<PathBuf> {
    if let Some(found) = on_path(name) {
        return Some(found);
    }
    let package = match name {
        "kcat" => Some("kcat"),
        "nft" => Some("nftables"),
        "node" => Some("nodejs"),
        "npm" => Some("npm"),
        _ => None,
    };
    if let Some(package) = package {
        install_once(&format!("apt-get:{package}"), || {
            let quiet = |args: &[&str]| {
                Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            quiet(&["install", "-y", "-qq", package])
                || (quiet(&["update", "-qq"]) && quiet(&["install", "-y", "-qq", package]))
        });
    }
    on_path(name)
}

/// `python3` with the Python clients the tests drive (kafka-python 3.0.12 and its codecs),
/// installed with pip first if they are missing (once per test process).
pub fn require_python_clients() -> PathBuf {
    let python = require_tool("python3");
    pip_ensure(
        &python,
        "kafka, lz4, snappy, zstandard",
        &[
            "kafka-python==3.0.12",
            "lz4>=4",
            "python-snappy>=0.7",
            "zstandard>=0.22",
        ],
    );
    python
}

/// `python3` with kafka-python and the tools its own test suite runs on (pytest 9.2.0,
/// pytest-mock 3.17.0, pytest-timeout 2.4.0), installed with pip if missing.
pub fn require_python_test_tools() -> PathBuf {
    let python = require_python_clients();
    pip_ensure(
        &python,
        "pytest, pytest_mock, pytest_timeout",
        &[
            "pytest==9.2.0",
            "pytest-mock==3.17.0",
            "pytest-timeout==2.4.0",
        ],
    );
    python
}

/// Makes `modules` importable by `python`: installs `packages` with pip (once per test
/// process) when they are not, and fails the test saying what to install if that fails.
fn pip_ensure(python: &Path, modules: &str, packages: &[&str]) {
    let importable = || {
        Command::new(python)
            .args(["-c", &format!("import {modules}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !importable() {
        install_once(&format!("pip:{}", packages.join(",")), || {
            Command::new(python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--root-user-action=ignore",
                ])
                .args(packages)
                .status()
                .is_ok_and(|s| s.success())
        });
    }
    assert!(
        importable(),
        "{modules} not installed: run .ci/run, or `pip install {}`",
        packages.join(" ")
    );
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs `install` at most once per `what` in this process (tests run on many threads).
fn install_once(what: &str, install: impl FnOnce() -> bool) {
    static DONE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if done.iter().any(|d| d == what) {
        return;
    }
    eprintln!("testkit: installing {what} for the tests");
    if !install() {
        eprintln!("testkit: installing {what} failed");
    }
    done.push(what.to_owned());
}

/// `tool` under coreutils' `timeout`: past `limit` it is killed and exits 124, so a client
/// that hangs fails its test with what it printed instead of stalling the whole run.
pub fn bounded(tool: &Path, limit: Duration) -> Command {
    let mut command = Command::new("timeout");
    command
        .arg("--kill-after=5s")
        .arg(format!("{}s", limit.as_secs()))
        .arg(tool);
    command
}

/// A binary of the workspace, from the directory cargo builds them into: the test
/// executable runs from `target/<profile>/deps/`, the binaries sit in `target/<profile>/`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// A port nobody listens on right now, below the kernel's ephemeral range (32768 and
/// up by default): a broker restarted on its port must find it free, and a port from the
/// ephemeral range may meanwhile be taken as the source port of some outgoing connection
/// (seen: a controller port taken while its broker was down, its restart refused).
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// As `free_port`, on the loopback address `host` (a broker of `Cluster::start_apart`).
pub fn free_port_on(host: &str) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts elsewhere in the range, and walks it.
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + start.wrapping_add(step.wrapping_mul(97)) % SPAN) as u16;
        if std::net::TcpListener::bind((host, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {host} in {LOW}..{}", LOW + SPAN);
}

/// A tmpfs mounted for a test, unmounted (lazily, bounded) when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts `size_mib` MiB, or says why not (it needs root) and returns `None`: the
    /// caller skips its test.
    pub fn mount(size_mib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let out = Command::new("timeout")
            .args(["10s", "mount", "-t", "tmpfs", "-o"])
            .arg(format!("size={size_mib}m"))
            .arg("tmpfs")
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a {size_mib} MiB tmpfs to fill (this test needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount(8): {e}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows or shrinks the mounted filesystem.
    pub fn resize(&self, size_mib: u32) {
        let status = Command::new("timeout")
            .args(["10s", "mount", "-o"])
            .arg(format!("remount,size={size_mib}m"))
            .arg(self.path())
            .status()
            .expect("run mount(8)");
        assert!(status.success(), "remount with {size_mib} MiB");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["10s", "umount", "-l"])
            .arg(self.path())
            .status();
    }
}

/// Brokers as separate processes on loopback, each its own data directory and its own
/// controller (combined mode: every broker is a voter), numbered 1..=n.
pub struct Cluster {
    pub brokers: Vec<Broker>,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` brokers on 127.0.0.1 with short session timeouts (3 s, heartbeats every
    /// 500 ms) so tests see fencing quickly; `extra` adds `BROKER_*` settings to every
    /// broker (later settings win).
    pub fn start(n: usize, extra: &[(&str, &str)]) -> Self {
        Self::start_on(&vec!["127.0.0.1".to_owned(); n], extra)
    }

    /// As `start`, but broker `i` (1-based) listens on, and sends from, its own loopback
    /// address 127.0.0.{i+1}: 127.0.0.2, .3, .4, ... 127.0.0.1 is left to the test's own
    /// clients (the kernel's source address for any connection on `lo`), so an
    /// `Isolation` between brokers leaves the clients' traffic alone.
    pub fn start_apart(n: usize, extra: &[(&str, &str)]) -> Self {
        assert!(n < 254, "one loopback address per broker");
        let hosts: Vec<String> = (0..n).map(|i| format!("127.0.0.{}", i + 2)).collect();
        Self::start_on(&hosts, extra)
    }

    fn start_on(hosts: &[String], extra: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().expect("a temporary directory");
        let controller_listens: Vec<String> = hosts
            .iter()
            .map(|h| format!("{h}:{}", free_port_on(h)))
            .collect();
        let voters = controller_listens
            .iter()
            .enumerate()
            .map(|(i, listen)| format!("{}@{listen}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let brokers = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let id = (i + 1).to_string();
                let dir = root.path().join(format!("broker-{id}"));
                let mut env = vec![
                    ("BROKER_NODE_ID", id.as_str()),
                    ("BROKER_CONTROLLER_LISTEN", controller_listens[i].as_str()),
                    ("BROKER_CONTROLLER_QUORUM_VOTERS", voters.as_str()),
                    ("BROKER_DEFAULT_REPLICATION_FACTOR", "3"),
                    ("BROKER_BROKER_SESSION_TIMEOUT_MS", "3000"),
                    ("BROKER_BROKER_HEARTBEAT_INTERVAL_MS", "500"),
                ];
                env.extend_from_slice(extra);
                Broker::start_on(host, &dir, &env)
            })
            .collect();
        Self {
            brokers,
            _root: root,
        }
    }

    /// The broker with Kafka node id `id` (1-based).
    pub fn node(&mut self, id: i32) -> &mut Broker {
        let index = usize::try_from(id - 1).expect("node ids start at 1");
        &mut self.brokers[index]
    }

    pub fn addrs(&self) -> Vec<String> {
        self.brokers.iter().map(|b| b.addr.clone()).collect()
    }
}

/// A network partition for one test: an nftables table of its own that drops every
/// packet between the loopback address `victim` and each of `peers` (both ways).
/// Traffic among the other addresses, and of the victim with itself, flows. Healed (the
/// table deleted) by `heal`, and by `Drop`, so also when the test panics; a table left
/// by a test process that was killed is deleted by the next `cut`.
pub struct Isolation {
    table: Option<String>,
}

/// The prefix of every table this harness creates.
const ISOLATION_TABLE_PREFIX: &str = "testkit_isolation_";

impl Isolation {
    /// True when nftables can be used here (it needs root and the `nft` tool); otherwise
    /// says why (SKIPPED: ...) and returns false, and the caller skips its test. Under CI
    /// (`CI` set, as `.ci/run` runs), where `.ci/run` installs nftables, it fails instead,
    /// so a suite that needs it can never skip itself silently there.
    pub fn available() -> bool {
        // Installed with apt-get first if missing (see `require_tool`).
        let _ = ensure_tool("nft");
        // A name of its own per call: tests of one process probe side by side.
        static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let probe = format!(
            "{ISOLATION_TABLE_PREFIX}probe_{}_{}",
            std::process::id(),
            PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let why = match nft(&["add", "table", "inet", &probe]) {
            Ok(()) => match nft(&["delete", "table", "inet", &probe]) {
                Ok(()) => return true,
                Err(e) => e,
            },
            Err(e) => e,
        };
        let message = format!(
            "SKIPPED: cannot use nftables to cut the network (this test needs root and `nft`: apt-get install -y nftables): {why}"
        );
        assert!(std::env::var_os("CI").is_none(), "under CI: {message}");
        eprintln!("{message}");
        false
    }

    /// Drops everything between `victim` and each of `peers` (IPv4 loopback addresses)
    /// from now until healed.
    pub fn cut(victim: &str, peers: &[&str]) -> Self {
        for address in std::iter::once(&victim).chain(peers) {
            assert!(
                address.parse::<std::net::Ipv4Addr>().is_ok(),
                "an IPv4 address: {address:?}"
            );
        }
        assert!(!peers.is_empty(), "isolated from someone");
        let peers = peers.join(", ");
        Self::install(&[
            format!("ip saddr {victim} ip daddr {{ {peers} }} drop"),
            format!("ip daddr {victim} ip saddr {{ {peers} }} drop"),
        ])
    }

    /// Drops the TCP packets of each flow `(from, to)` from now until healed; each end is
    /// an IPv4 address, with or without a port (`127.0.0.2`, `127.0.0.2:9092`). A finer
    /// cut than `cut`: one direction only, or one broker's Kafka listener from another
    /// broker while their controllers still talk.
    pub fn drop_flows(flows: &[(&str, &str)]) -> Self {
        assert!(!flows.is_empty(), "something to drop");
        let rules: Vec<String> = flows
            .iter()
            .map(|(from, to)| {
                let (from_ip, from_port) = endpoint(from);
                let (to_ip, to_port) = endpoint(to);
                let mut rule = format!("ip saddr {from_ip} ip daddr {to_ip} meta l4proto tcp");
                if let Some(port) = from_port {
                    rule.push_str(&format!(" tcp sport {port}"));
                }
                if let Some(port) = to_port {
                    rule.push_str(&format!(" tcp dport {port}"));
                }
                rule.push_str(" drop");
                rule
            })
            .collect();
        Self::install(&rules)
    }

    /// Every Kafka-listener packet between the brokers listening on `a` and `b`
    /// (`ip:port` each), both ways, both listeners: neither fetches from the other.
    /// Their controllers, on other ports, still talk.
    pub fn cut_listeners(a: &str, b: &str) -> Self {
        let (a_ip, _) = endpoint(a);
        let (b_ip, _) = endpoint(b);
        Self::drop_flows(&[(a, b_ip), (b_ip, a), (b, a_ip), (a_ip, b)])
    }

    /// A table of its own holding `rules` in an output chain.
    fn install(rules: &[String]) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        delete_stale_tables();
        let table = format!(
            "{ISOLATION_TABLE_PREFIX}{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Every packet on `lo` passes the output hook once, so one chain sees it all.
        let mut script = format!(
            "table inet {table} {{\n\tchain output {{\n\t\ttype filter hook output priority 0; policy accept;\n"
        );
        for rule in rules {
            script.push_str(&format!("\t\t{rule}\n"));
        }
        script.push_str("\t}\n}\n");
        nft_script(&script).unwrap_or_else(|e| panic!("nft could not install {rules:?}: {e}"));
        Self { table: Some(table) }
    }

    /// Lets traffic flow again.
    pub fn heal(mut self) {
        self.delete();
    }

    fn delete(&mut self) {
        if let Some(table) = self.table.take()
            && let Err(e) = nft(&["delete", "table", "inet", &table])
        {
            // Not a panic: this also runs while a panic unwinds.
            eprintln!("could not delete nftables table {table}: {e}");
        }
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        self.delete();
    }
}

/// `ip` or `ip:port` (IPv4) as its address and port.
fn endpoint(text: &str) -> (&str, Option<u16>) {
    let (ip, port) = match text.split_once(':') {
        Some((ip, port)) => (
            ip,
            Some(
                port.parse::<u16>()
                    .unwrap_or_else(|_| panic!("a port in {text:?}")),
            ),
        ),
        None => (text, None),
    };
    assert!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "an IPv4 address: {text:?}"
    );
    (ip, port)
}

/// Deletes the tables of test processes that no longer run.
fn delete_stale_tables() {
    let Ok(out) = Command::new("timeout")
        .args(["10s", "nft", "list", "tables", "inet"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(table) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        let Some(rest) = table.strip_prefix(ISOLATION_TABLE_PREFIX) else {
            continue;
        };
        let rest = rest.strip_prefix("probe_").unwrap_or(rest);
        let pid = rest.split('_').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = nft(&["delete", "table", "inet", table]);
        }
    }
}

/// `nft ARGS`, bounded at 10 s; the error says what nft printed.
fn nft(args: &[&str]) -> Result<(), String> {
    let out = Command::new("timeout")
        .args(["10s", "nft"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft {} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `nft -f -` with `script` on stdin, bounded at 10 s.
fn nft_script(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("timeout")
        .args(["10s", "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f - exited with {}: {}\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
