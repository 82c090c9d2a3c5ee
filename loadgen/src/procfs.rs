//! CPU time of this process and of the broker, read from `/proc`, so a report shows
//! whether the client or the broker was the limit.
//!
//! The broker is found by the TCP port it listens on: `/proc/net/tcp{,6}` gives the
//! listening socket's inode, and the process holding that inode among its fds is the
//! broker. This needs permission to read other processes' fds (same user, or root); where
//! it is missing the broker's CPU is reported as unknown rather than guessed.

use std::fs;

/// The pid of the process listening on TCP `port` (any local address).
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .find_map(|table| listening_inode(&table, port))?;
    let wanted = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// Parses a `/proc/net/tcp` table for a socket in LISTEN (state 0A) on `port`.
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local = cols.get(1)?;
        let state = cols.get(3)?;
        let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        if *state != "0A" || local_port != port {
            return None;
        }
        cols.get(9)?.parse().ok()
    })
}

/// User plus system CPU seconds used so far by `pid` (its threads included), or `None`
/// when the process is gone or unreadable.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    parse_stat_cpu(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the stat line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    Some((utime + stime) as f64 / ticks as f64)
}

/// Resident set size of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_listener_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
        drop(listener);
        assert_eq!(pid_listening_on(port), None);
    }

    #[test]
    fn reads_cpu_time_and_parses_names_with_spaces() {
        let start = own_cpu_seconds();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed().as_millis() < 200 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(own_cpu_seconds() > start);
        let line = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 300 200 0 0";
        let expect = 500.0 / rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(parse_stat_cpu(line), Some(expect));
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
