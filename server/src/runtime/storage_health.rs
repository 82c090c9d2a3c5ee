//! Partitions whose storage failed, shared by every core. The owning core records a
//! failure when its engine reports one (`engine::Partition::set_failure_observer`);
//! Metadata reads it to report the partition offline (KAFKA_STORAGE_ERROR and the broker
//! in `offline_replicas`), and the metrics scrape exports it. The map is locked only on
//! those paths and when a topic is deleted, never on produce or fetch.
//!
//! A failure lasts until the broker restarts, as in Kafka (a failed log directory stays
//! offline until then): the engine refuses the partition's appends from then on, so the
//! state here never goes back to healthy while the process lives.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use engine::StorageFailure;

/// One failed partition, as clients and operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedPartition {
    /// Reads are still served (the failure was a write, not an fdatasync).
    pub readable: bool,
    /// The step, the file and the OS error, for logs and `describe`.
    pub cause: String,
}

#[derive(Default)]
pub struct StorageHealth {
    failed: Mutex<BTreeMap<(String, i32), FailedPartition>>,
    /// Whether `failed` has ever held anything: Metadata skips the lock while it has not.
    any: AtomicBool,
}

impl StorageHealth {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), FailedPartition>> {
        self.failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `topic`-`partition`'s storage failed (again, or worse).
    pub fn mark_failed(&self, topic: &str, partition: i32, failure: &StorageFailure) {
        self.map().insert(
            (topic.to_owned(), partition),
            FailedPartition {
                readable: failure.readable(),
                cause: failure.to_string(),
            },
        );
        self.any.store(true, Ordering::Release);
    }

    /// The failed partitions of `topic`, by partition index.
    pub fn failed_in(&self, topic: &str) -> BTreeMap<i32, FailedPartition> {
        if !self.any.load(Ordering::Acquire) {
            return BTreeMap::new();
        }
        self.map()
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, p), f)| (*p, f.clone()))
            .collect()
    }

    /// Whether `topic`-`partition` has failed.
    pub fn is_failed(&self, topic: &str, partition: i32) -> bool {
        self.any.load(Ordering::Acquire) && self.map().contains_key(&(topic.to_owned(), partition))
    }

    /// Forgets a deleted topic (its files are gone with it).
    pub fn forget_topic(&self, topic: &str) {
        self.map().retain(|(t, _), _| t != topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::FailedStep;

    fn failure(step: FailedStep) -> StorageFailure {
        StorageFailure {
            step,
            path: "/data/t-1/00000000000000000000.log".into(),
            kind: std::io::ErrorKind::StorageFull,
            cause: "No space left on device (os error 28)".into(),
        }
    }

    #[test]
    fn given_a_failed_write_then_a_failed_sync_should_report_the_worse_until_the_topic_goes() {
        let health = StorageHealth::default();
        assert!(health.failed_in("t").is_empty());
        health.mark_failed("t", 1, &failure(FailedStep::Write));
        let failed = health.failed_in("t");
        assert_eq!(failed.len(), 1);
        assert!(failed[&1].readable);
        assert!(failed[&1].cause.contains("No space left"), "{failed:?}");
        assert!(health.is_failed("t", 1) && !health.is_failed("t", 0));
        assert!(health.failed_in("u").is_empty());
        health.mark_failed("t", 1, &failure(FailedStep::Sync));
        assert!(!health.failed_in("t")[&1].readable);
        health.forget_topic("t");
        assert!(health.failed_in("t").is_empty());
    }
}
