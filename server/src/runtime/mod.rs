//! The thread-per-core runtime: one pinned thread per core, each owning its partitions,
//! routing partition operations to their owning core, and its own partition table.

pub mod broker;
pub mod fetcher;
pub mod limits;
pub mod pacing;
pub mod partition_table;
pub mod replica;
pub mod replication;
pub mod shard;
pub mod storage_health;
