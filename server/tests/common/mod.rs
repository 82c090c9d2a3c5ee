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
    let closing = members
        .into_iter()
        .map(|m| std::thread::spawn(move || drop(m)))
        .collect();
    let open = join_or_leave(closing, within);
    assert!(
        open.is_empty(),
        "group members {open:?} did not close within {within:?}"
    );
}

/// Joins threads that run librdkafka clients, waiting at most `within` for them all;
/// returns the indexes of those still running then, which are left behind (detached).
/// A thread that panicked fails the test as a join does.
///
/// librdkafka 2.12 can deadlock a client's own threads: when a broker leaves the metadata
/// (killed, then fenced) while an OffsetForLeaderEpoch request to it is in flight, its
/// main thread holds a partition's lock and waits for the handle's, and the broker's
/// thread, decommissioning it, holds the handle's and waits for the partition's
/// (confluentinc/librdkafka#5476, open; seen in a CI run of faults.rs's coordinator
/// rounds, with a consumer blocked in a Sync commit for good). Such a thread never ends,
/// so a plain join would hang the suite.
#[allow(dead_code)]
pub fn join_or_leave(
    threads: Vec<std::thread::JoinHandle<()>>,
    within: std::time::Duration,
) -> Vec<usize> {
    let deadline = std::time::Instant::now() + within;
    let mut running: Vec<(usize, std::thread::JoinHandle<()>)> =
        threads.into_iter().enumerate().collect();
    loop {
        let (finished, still): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|(_, t)| t.is_finished());
        for (_, t) in finished {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        running = still;
        if running.is_empty() || std::time::Instant::now() >= deadline {
            return running.into_iter().map(|(i, _)| i).collect();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
