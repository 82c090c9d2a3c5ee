//! Per-partition log configuration, with Kafka's defaults.

use std::time::Duration;

use crate::error::ConfigError;
use crate::limits;

/// When appended bytes are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fdatasync after every write group that holds a durable append: concurrent appends
    /// written together share one sync (group commit), and `AppendWait::Durable` resolves
    /// after it. Groups of `Written` appends alone are synced by the next such group, a
    /// roll, a flush or close.
    EveryAppend,
    /// fdatasync at most this often, if anything was written since the last sync.
    Interval(Duration),
    /// Never sync on the append path (the OS decides; Kafka's default). Segments are still
    /// synced on roll and on close. `AppendWait::Durable` resolves when the bytes are written.
    Never,
}

/// How appends reach the segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    /// An io_uring write per group of batches (compio). Never blocks the core; on
    /// filesystems without non-blocking buffered writes (ext4) the kernel hands each
    /// write to an io-wq worker thread, which costs a thread wake-up per write.
    IoUring,
    /// `pwritev` on the core's own thread: a memcpy into the page cache, with no worker
    /// hand-off, but it blocks the core if the kernel throttles dirty pages.
    Inline,
    /// `Inline` for writes of at most `INLINE_WRITE_BYTES_MAX` (the small writes of
    /// modest rates, where the worker hand-off costs far more than the copy), `IoUring`
    /// for larger ones (the heavy streams that could meet dirty-page throttling).
    Adaptive,
}

/// How much of the log `open` re-validates when the last shutdown was not clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryScope {
    /// Batches at or after the recovery checkpoint (everything older was synced).
    SinceCheckpoint,
    /// Every batch of every segment, whatever the checkpoint says, even after a clean
    /// shutdown. Slow; for tools and for tests that damage old segments.
    Full,
}

/// Configuration of one partition log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll the active segment when the next batch would take it past this size.
    pub segment_bytes: u64,
    /// Roll the active segment when its first batch is older than this.
    pub segment_age_max: Option<Duration>,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u64,
    /// Largest batch `append` accepts.
    pub batch_bytes_max: usize,
    pub flush_policy: FlushPolicy,
    pub write_path: WritePath,
    /// Retention by size: delete oldest segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Retention by time: delete segments whose newest timestamp is older than this.
    pub retention_age: Option<Duration>,
    pub recovery_scope: RecoveryScope,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            segment_age_max: Some(Duration::from_secs(7 * 24 * 3600)),
            index_interval_bytes: limits::INDEX_INTERVAL_BYTES_DEFAULT,
            batch_bytes_max: limits::BATCH_BYTES_MAX_DEFAULT,
            flush_policy: FlushPolicy::Never,
            write_path: WritePath::Adaptive,
            retention_bytes: None,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            recovery_scope: RecoveryScope::SinceCheckpoint,
        }
    }
}

impl LogConfig {
    /// Checks the bounds that the rest of the engine relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let range = |name, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err(ConfigError::OutOfRange {
                    name,
                    value,
                    min,
                    max,
                })
            } else {
                Ok(())
            }
        };
        range(
            "segment_bytes",
            self.segment_bytes,
            limits::SEGMENT_BYTES_MIN,
            limits::SEGMENT_BYTES_MAX,
        )?;
        range(
            "index_interval_bytes",
            self.index_interval_bytes,
            limits::INDEX_INTERVAL_BYTES_MIN,
            self.segment_bytes,
        )?;
        range(
            "batch_bytes_max",
            self.batch_bytes_max as u64,
            crate::batch::BATCH_HEADER_BYTES as u64,
            (limits::BATCH_BYTES_MAX as u64).min(self.segment_bytes),
        )?;
        if let FlushPolicy::Interval(every) = self.flush_policy
            && every.is_zero()
        {
            return Err(ConfigError::ZeroFlushInterval);
        }
        Ok(())
    }
}
