//! Test harness: starts the real `broker` binary on a free port with its own data
//! directory, and stops it by SIGTERM or SIGKILL.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_broker"));
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

/// Waits for a spawned client with piped stdout and stderr, killing it past `limit`: a client
/// that hangs then fails its test with what it printed, instead of stalling the whole run.
pub fn output_within(mut child: Child, limit: Duration, what: &str) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for client") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A grandchild holding the pipes open must not hang the join either: it is bounded by
    // the same kill, since the script's own children exit when their stdin closes.
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} still running after {limit:?}; killed. It printed:\n{}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}
