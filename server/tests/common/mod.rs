//! The workspace's one test harness (`testkit`): the broker binary, bounded tools.
#![allow(unused_imports)]

pub use testkit::{
    Broker, Tmpfs, bounded, require_python_clients, require_python_test_tools, require_tool,
};

/// Closes librdkafka group members each on its own thread, as members in their own
/// processes close: closing one starts a rebalance, and a member's close can wait on that
/// rebalance, which needs the others to go on polling (a drop polls only its own
/// consumer). A close that does not end `within` fails the test rather than hanging it.
#[allow(dead_code)]
pub fn close_members(members: Vec<rdkafka::consumer::BaseConsumer>, within: std::time::Duration) {
    let (done, closed) = std::sync::mpsc::channel();
    let mut open: std::collections::BTreeSet<usize> = (0..members.len()).collect();
    for (i, m) in members.into_iter().enumerate() {
        let done = done.clone();
        std::thread::spawn(move || {
            drop(m);
            let _ = done.send(i);
        });
    }
    // Only the closing threads hold a sender: one that panics ends the wait at once.
    drop(done);
    let deadline = std::time::Instant::now() + within;
    while !open.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match closed.recv_timeout(left) {
            Ok(i) => {
                open.remove(&i);
            }
            Err(e) => panic!("group members {open:?} did not close within {within:?}: {e}"),
        }
    }
}
