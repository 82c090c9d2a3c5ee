//! Replica placement: round-robin over the live brokers, each partition's first replica
//! (its preferred leader) one broker further than the previous partition's, so leaders
//! spread evenly; a partition's other replicas are the brokers that follow its leader.
//! Deterministic: the controller's state machine runs it on every replica.

use crate::metadata::BrokerId;

/// The replicas of each partition, the preferred leader first. `live` must hold at least
/// `replication_factor` distinct brokers (the caller checks); `cursor` rotates where the
/// first partition starts, so successive topics do not all lead on the same broker.
pub fn assign(
    live: &[BrokerId],
    partitions: i32,
    replication_factor: usize,
    cursor: u64,
) -> Vec<Vec<BrokerId>> {
    let n = live.len();
    if n == 0 {
        return Vec::new();
    }
    let start = usize::try_from(cursor % n as u64).unwrap_or(0);
    (0..usize::try_from(partitions).unwrap_or(0))
        .map(|p| {
            (0..replication_factor.min(n))
                .map(|j| live[(start + p + j) % n])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn replicas_are_distinct_live_brokers_and_leaders_balanced(
            n in 1usize..7, partitions in 1i32..40, rf_seed in 0usize..7, cursor in 0u64..100
        ) {
            let live: Vec<BrokerId> = (0..n as i32).map(|i| i * 3 + 1).collect();
            let rf = rf_seed % n + 1;
            let plan = assign(&live, partitions, rf, cursor);
            prop_assert_eq!(plan.len(), partitions as usize);
            let mut led = vec![0usize; n];
            for replicas in &plan {
                prop_assert_eq!(replicas.len(), rf);
                let mut sorted = replicas.clone();
                sorted.sort_unstable();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), rf);
                prop_assert!(replicas.iter().all(|b| live.contains(b)));
                led[live.iter().position(|b| *b == replicas[0]).unwrap()] += 1;
            }
            let (min, max) = (led.iter().min().unwrap(), led.iter().max().unwrap());
            prop_assert!(max - min <= 1, "leaders unbalanced: {:?}", led);
        }
    }

    #[test]
    fn successive_topics_start_on_different_brokers() {
        let live = [0, 1, 2];
        assert_eq!(assign(&live, 1, 3, 0), vec![vec![0, 1, 2]]);
        assert_eq!(assign(&live, 1, 3, 1), vec![vec![1, 2, 0]]);
    }
}
