//! Typed errors of the engine. Each names what was wrong and with which value.

use std::io;
use std::path::PathBuf;

/// Why a record batch was refused. The log is untouched when `append` returns one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch of {len} bytes is shorter than the {min}-byte batch header")]
    TooShort { len: usize, min: usize },
    #[error("batch of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("batch length field says {declared} bytes but {actual} bytes were given")]
    LengthMismatch { declared: i64, actual: usize },
    #[error("unsupported record batch magic {magic} (only v2 is accepted)")]
    UnsupportedMagic { magic: i8 },
    #[error("CRC-32C mismatch: header says {stored:#010x}, bytes give {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unknown compression codec {codec}")]
    UnknownCompression { codec: u8 },
    #[error("record count {count} does not match last offset delta {last_offset_delta}")]
    InconsistentCount { count: i32, last_offset_delta: i32 },
    #[error("max timestamp {max} is below base timestamp {base}")]
    InconsistentTimestamps { base: i64, max: i64 },
    #[error("producer id {producer_id} with negative base sequence {base_sequence}")]
    InvalidSequence {
        producer_id: i64,
        base_sequence: i32,
    },
    #[error("record {index} of the batch is malformed: {reason}")]
    MalformedRecord { index: i32, reason: &'static str },
    #[error("records end at byte {end} but the batch has {len} bytes")]
    TrailingBytes { end: usize, len: usize },
    #[error("compressed records: {reason}")]
    Codec { reason: &'static str },
    #[error(
        "attributes {attributes:#06x} set the delete horizon bit, which only the broker's cleaner sets"
    )]
    DeleteHorizonFromProducer { attributes: i16 },
}

/// A configuration value out of its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} = {value} is outside [{min}, {max}]")]
    OutOfRange {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("flush interval must be greater than zero")]
    ZeroFlushInterval,
}

/// Errors of the partition log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("offset {requested} is out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        requested: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopic { name: String, reason: &'static str },
    #[error("{path} is not a partition directory ({reason})")]
    NotAPartitionDir { path: PathBuf, reason: &'static str },
    #[error("{path} holds more than {max} segments")]
    TooManySegments { path: PathBuf, max: usize },
    #[error("offset {offset} would overflow the log")]
    OffsetOverflow { offset: i64 },
    #[error("producer sequence {got} does not follow {expected}")]
    OutOfOrderSequence { expected: i32, got: i32 },
    #[error("producer epoch {got} is older than the current {current}")]
    InvalidProducerEpoch { current: i16, got: i16 },
    #[error("the partition log is closed")]
    Closed,
    #[error("{0}")]
    StorageFailed(StorageFailure),
    #[error("replica batch starts at offset {got} but the log expects {expected}")]
    ReplicaOffsetMismatch { expected: i64, got: i64 },
    #[error("the batch ending at offset {last_offset} was truncated away (log end now {log_end})")]
    TruncatedAway { last_offset: i64, log_end: i64 },
    #[error("{path} holds no valid batch at position {position}: {reason}")]
    CorruptSegment {
        path: PathBuf,
        position: u64,
        reason: &'static str,
    },
    #[error(
        "offset {offset} not found in {path} from position {start}: the index disagrees with the log"
    )]
    OffsetNotFound {
        offset: i64,
        path: PathBuf,
        start: u64,
    },
}

/// The step of the partition's storage that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedStep {
    /// A write (or a roll, an index or checkpoint write). The bytes of the failed write
    /// never became visible and were cut off the file where possible; everything written
    /// before it is intact, so reads go on.
    Write,
    /// An fdatasync. What the page cache holds may no longer match the disk (Linux marks
    /// the failed pages clean, and a later fdatasync may succeed without writing them), so
    /// the partition serves nothing more until recovery re-validates it at the next open.
    Sync,
}

impl std::fmt::Display for FailedStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailedStep::Write => "write",
            FailedStep::Sync => "fdatasync",
        })
    }
}

/// Why a partition's storage failed. It stays failed until the partition is opened again
/// (Kafka takes a failed log directory offline until the broker restarts): appends are
/// refused, and after a failed sync reads are too. Nothing it acknowledged depends on the
/// failed step: an append is answered only after its write (and, when durable, its sync)
/// succeeded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage failed: {step} of {path}: {cause} (the partition refuses writes until restart)")]
pub struct StorageFailure {
    pub step: FailedStep,
    pub path: PathBuf,
    /// The I/O error's kind, e.g. `StorageFull` for ENOSPC.
    pub kind: io::ErrorKind,
    pub cause: String,
}

impl StorageFailure {
    /// Whether reads are still served (only after a failed write).
    pub fn readable(&self) -> bool {
        self.step == FailedStep::Write
    }

    /// The failure `error` causes at `step`.
    pub(crate) fn from_error(step: FailedStep, error: &LogError) -> Self {
        match error {
            LogError::Io { path, source } => Self {
                step,
                path: path.clone(),
                kind: source.kind(),
                cause: source.to_string(),
            },
            LogError::StorageFailed(earlier) => earlier.clone(),
            other => Self {
                step,
                path: PathBuf::new(),
                kind: io::ErrorKind::Other,
                cause: other.to_string(),
            },
        }
    }
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;
