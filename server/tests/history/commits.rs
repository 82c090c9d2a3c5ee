//! Committed offsets under faults: a consumer's acknowledged commit is never lost and a
//! group's committed offset never goes backwards. Each read of a group's committed
//! offsets (sent after the previous one came back) must show, per partition, at least
//! every commit acknowledged before the read was sent, and at least what the previous
//! read showed. Pure, over plain records; unit-tested below on hand-made histories.

use std::collections::BTreeMap;
use std::time::Instant;

/// A commit the coordinator acknowledged to a consumer of `group`.
#[derive(Debug, Clone, Copy)]
pub struct CommitAck {
    pub group: usize,
    pub partition: i32,
    pub offset: i64,
    pub at: Instant,
}

/// One read of a group's committed offsets: when it was sent, and what it showed
/// (partitions without a committed offset are absent).
#[derive(Debug, Clone)]
pub struct CommitRead {
    pub group: usize,
    pub sent: Instant,
    pub offsets: BTreeMap<i32, i64>,
}

/// Every violation, in words; empty for a correct history. `reads` in the order they
/// were made (each sent after the previous one came back).
pub fn check(acks: &[CommitAck], reads: &[CommitRead], partitions: i32) -> Vec<String> {
    let mut violations = Vec::new();
    let mut last: BTreeMap<(usize, i32), i64> = BTreeMap::new();
    for (n, read) in reads.iter().enumerate() {
        for p in 0..partitions {
            let floor = acks
                .iter()
                .filter(|a| a.group == read.group && a.partition == p && a.at < read.sent)
                .map(|a| a.offset)
                .max();
            let have = read.offsets.get(&p).copied();
            if let Some(floor) = floor
                && have.is_none_or(|h| h < floor)
            {
                violations.push(format!(
                    "read {n}: group {} partition {p} showed {have:?}, below the commit {floor} acknowledged before it",
                    read.group
                ));
            }
            if let Some(h) = have {
                if let Some(before) = last.get(&(read.group, p))
                    && h < *before
                {
                    violations.push(format!(
                        "read {n}: group {} partition {p} showed {h} after {before}: went backwards",
                        read.group
                    ));
                }
                last.insert((read.group, p), h);
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn read(group: usize, sent: Instant, offsets: &[(i32, i64)]) -> CommitRead {
        CommitRead {
            group,
            sent,
            offsets: offsets.iter().copied().collect(),
        }
    }

    fn ack(group: usize, partition: i32, offset: i64, at: Instant) -> CommitAck {
        CommitAck {
            group,
            partition,
            offset,
            at,
        }
    }

    #[test]
    fn given_reads_that_keep_up_with_acknowledged_commits_should_pass() {
        let t = Instant::now();
        let acks = [ack(0, 0, 10, at(t, 1)), ack(0, 0, 20, at(t, 5))];
        // The second commit was acknowledged after the second read was sent: 10 is fine.
        let reads = [
            read(0, at(t, 2), &[(0, 10)]),
            read(0, at(t, 4), &[(0, 10)]),
            read(0, at(t, 6), &[(0, 20)]),
            read(1, at(t, 7), &[]),
        ];
        assert!(check(&acks, &reads, 1).is_empty());
    }

    #[test]
    fn given_a_read_below_an_acknowledged_commit_should_fail() {
        let t = Instant::now();
        let acks = [ack(0, 0, 10, at(t, 1))];
        let lost = check(&acks, &[read(0, at(t, 2), &[])], 1);
        assert_eq!(lost.len(), 1, "{lost:?}");
        let behind = check(&acks, &[read(0, at(t, 2), &[(0, 9)])], 1);
        assert_eq!(behind.len(), 1, "{behind:?}");
    }

    #[test]
    fn given_a_committed_offset_that_goes_backwards_should_fail() {
        let t = Instant::now();
        let reads = [read(0, at(t, 1), &[(0, 30)]), read(0, at(t, 2), &[(0, 20)])];
        let found = check(&[], &reads, 1);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("went backwards"));
    }
}
