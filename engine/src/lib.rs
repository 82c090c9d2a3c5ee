//! The durable partition log: Kafka RecordBatch v2 segments written through io_uring,
//! sparse offset and time indexes, crash recovery and retention, and what replication
//! needs from a log (leader epochs, follower appends, truncation, reads below a limit).
//!
//! This crate knows nothing about sockets or the Kafka wire protocol beyond the record
//! batch format, which is also its on-disk format. It keeps no global state: each
//! [`Partition`] is owned by the core that opened it.

pub mod batch;
mod checkpoint;
mod codec;
pub mod compact;
pub mod config;
pub mod data_dir;
pub mod error;
pub mod io_mode;
pub mod leader_epoch;
pub mod limits;
pub mod offset_index;
pub mod partition;
pub mod producer_state;
mod reaper;
mod recovery;
pub mod segment;
pub mod time_index;

pub use batch::{BatchHeader, Compression};
pub use compact::{CompactOptions, CompactReport};
pub use config::{FlushPolicy, LogConfig, RecoveryScope, WritePath};
pub use data_dir::{TopicPartition, list_partitions};
pub use error::{BatchError, ConfigError, FailedStep, LogError, StorageFailure};
pub use io_mode::IoMode;
pub use leader_epoch::{EpochEntry, LeaderEpochCache};
pub use partition::{
    AppendInfo, AppendWait, FailureObserver, FileRange, LogOffsets, Partition, ReadSlice,
    RecoveryReport, ReplicaAppend, RetentionReport, SyncObserver, TimestampOffset, TruncateReport,
    WriteObserver, WriterStats,
};
pub use segment::SegmentFiles;

/// Wall-clock milliseconds since the Unix epoch (Kafka's timestamp unit).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
