//! Every bound the engine enforces, in one place, with the unit in the name.
//!
//! Nothing read from the wire or from disk sizes an allocation unless it was
//! first checked against one of these.

/// Largest record batch the engine accepts, in bytes (Kafka's `message.max.bytes`
/// default is 1 MiB; the hard ceiling here leaves room for raising it by config).
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Default for [`crate::LogConfig::batch_bytes_max`]: Kafka's `message.max.bytes` default
/// plus the batch overhead Kafka adds to it.
pub const BATCH_BYTES_MAX_DEFAULT: usize = 1024 * 1024 + 12;

/// Most records (offsets) one batch may hold. Compressed batches are not decompressed,
/// so nothing else ties their record count to their size; without a cap a 61-byte batch
/// could claim two billion offsets and force a segment roll every other append.
/// (librdkafka's largest `batch.num.messages` is 1,000,000.)
pub const BATCH_RECORDS_MAX: i32 = 1_000_000;

/// Default segment size before a roll (Kafka's `log.segment.bytes`).
pub const SEGMENT_BYTES_DEFAULT: u64 = 1024 * 1024 * 1024;

/// Segment positions are stored as `u32` in the offset index, as in Kafka.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

/// Smallest segment the config accepts: one maximal default batch must fit.
pub const SEGMENT_BYTES_MIN: u64 = 1024;

/// Default bytes of log between two sparse index entries (Kafka's `log.index.interval.bytes`).
pub const INDEX_INTERVAL_BYTES_DEFAULT: u64 = 4096;

/// Bytes per offset index entry: relative offset (u32) + position (u32).
pub const OFFSET_INDEX_ENTRY_BYTES: usize = 8;

/// Bytes per time index entry: timestamp (i64) + relative offset (u32).
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// Most entries one index may hold: a segment of `SEGMENT_BYTES_MAX` indexed at the
/// smallest interval the config allows. An index file claiming more is rebuilt.
pub const INDEX_ENTRIES_MAX: usize = (SEGMENT_BYTES_MAX / INDEX_INTERVAL_BYTES_MIN) as usize;

/// Smallest index interval the config accepts.
pub const INDEX_INTERVAL_BYTES_MIN: u64 = 64;

/// New index entries of the active segment gathered before they are written to the
/// index files (rolls and closes write them all).
pub const INDEX_PERSIST_ENTRIES_MIN: usize = 128;

/// Appends waiting for the partition's writer before `append` applies backpressure.
pub const APPEND_QUEUE_DEPTH_MAX: usize = 1024;

/// Appends the writer coalesces into one vectored write (and one sync).
pub const WRITE_GROUP_BATCHES_MAX: usize = 256;

// A group is written as two buffers per batch (the stamped head, then the rest), and one
// vectored write takes at most IOV_MAX (1024 on Linux) buffers.
const _: () = assert!(2 * WRITE_GROUP_BATCHES_MAX <= 1024);

/// Bytes the writer coalesces into one vectored write.
pub const WRITE_GROUP_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest write `WritePath::Adaptive` makes on the core's own thread: copying 64 KiB
/// into the page cache costs about what one hand-off to an io_uring worker does.
pub const INLINE_WRITE_BYTES_MAX: usize = 64 * 1024;

/// Bytes read per step when scanning a segment (recovery, lookups).
pub const SCAN_CHUNK_BYTES: usize = 256 * 1024;

/// Batches whose positions a segment keeps in memory, the newest ones: a consumer at the
/// tail finds its batch there without reading a header from the file. 24 bytes each.
pub const RECENT_BATCHES_MAX: usize = 256;

/// Bytes read per step when a lookup scans batch headers from an index floor: the index
/// interval and a header, so a floor's whole stretch is usually one read.
pub const HEADER_SCAN_CHUNK_BYTES: usize = 4096 + 64;

/// Segments one partition may hold; opening a directory with more is refused.
pub const SEGMENTS_PER_PARTITION_MAX: usize = 1_000_000;

/// Leader epochs the epoch cache remembers; the oldest is forgotten beyond it (a leader
/// change per second for 18 hours).
pub const LEADER_EPOCH_ENTRIES_MAX: usize = 65_536;

/// Largest `leader-epoch-checkpoint` file read back: the entries at their longest text
/// form (`-2147483648 -9223372036854775808\n`, 32 bytes) plus the two header lines.
pub const LEADER_EPOCH_FILE_BYTES_MAX: usize = LEADER_EPOCH_ENTRIES_MAX * 32 + 64;

/// Most bytes the records of one compressed batch may inflate to where the engine reads
/// them (the cleaner, the keyless check of compacted topics). A batch past it is kept
/// as it is.
pub const RECORDS_DECOMPRESSED_BYTES_MAX: usize = 64 * 1024 * 1024;
