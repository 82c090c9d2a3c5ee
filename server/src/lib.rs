//! The Kafka-compatible broker: a thread-per-core runtime over the `engine`'s partition
//! logs, speaking the Kafka protocol, serving fetches by zero-copy, and following the
//! cluster metadata its controller (`cluster` crate) commits.
//!
//! Three module trees, as Redpanda splits `kafka/`, `cluster/` and its shard runtime:
//! - `kafka`: the Kafka protocol layer (connections, framing, request bounds, one handler
//!   module per API group). It never touches segment files or Raft.
//! - `control`: the control-plane state this broker holds (the local topic registry and
//!   the metadata follower that writes it, consumer groups, committed offsets, producer
//!   ids). It never touches sockets.
//! - `runtime`: the cores (threads, shards, cross-core routing, partition tables,
//!   connection limits, storage health). It handles no Kafka request itself (see
//!   ARCHITECTURE.md for where the split is not clean yet).

pub mod config;
pub mod control;
pub mod kafka;
pub mod metrics;
pub mod metrics_http;
pub mod runtime;
