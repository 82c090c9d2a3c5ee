//! Test harness: starts the real `broker` binary on a free port with its own data
//! directory, and stops it by SIGTERM or SIGKILL.
#![allow(dead_code)]

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
