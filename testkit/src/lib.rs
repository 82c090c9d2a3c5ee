//! Test support for every test crate of the workspace (one harness, not one per crate):
//! the real `broker` binary started on a free port with its own data directory and
//! stopped by SIGTERM or SIGKILL, external tools bounded by coreutils' `timeout`, free
//! ports, and a tmpfs mounted for a test. It never links the broker: it runs the binary
//! that `cargo test` built beside the test executable.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Broker {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Broker {
    /// Starts a broker on a fresh data directory.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Starts a broker with extra `BROKER_*` settings.
    pub fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr) = spawn(data_dir, None, &env);
        Self {
            child: Some(child),
            addr,
            data_dir: data_dir.to_owned(),
            env,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = child.wait().expect("wait for broker");
            assert!(status.success(), "broker exited with {status}");
        }
    }

    /// SIGKILL: no chance to flush or mark anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same data directory and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        let (child, addr) = spawn(&self.data_dir, Some(&self.addr), &self.env);
        assert_eq!(addr, self.addr);
        self.child = Some(child);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(data_dir: &Path, addr: Option<&str>, env: &[(String, String)]) -> (Child, String) {
    let mut last_error = String::new();
    // The port of a restart may still be in TIME_WAIT for a moment: retry briefly.
    for _ in 0..50 {
        let mut cmd = Command::new(binary("broker"));
        cmd.arg("--listen")
            .arg(addr.unwrap_or("127.0.0.1:0"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--cores")
            .arg("2")
            .env("RUST_LOG", "warn")
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

/// Fails with a clear message when a tool that `.ci/run` installs is missing.
pub fn require_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: run .ci/run, or `apt-get install -y {name}`")
    })
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
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts elsewhere in the range, and walks it.
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + start.wrapping_add(step.wrapping_mul(97)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
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
    /// Starts `n` brokers with short session timeouts (3 s, heartbeats every 500 ms) so
    /// tests see fencing quickly; `extra` adds `BROKER_*` settings to every broker.
    pub fn start(n: usize, extra: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().expect("a temporary directory");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let brokers = (0..n)
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
