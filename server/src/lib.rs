//! The Kafka-compatible broker: a thread-per-core runtime over the `engine`'s partition
//! logs, speaking the Kafka protocol, serving fetches by zero-copy.

pub mod broker;
pub mod config;
pub mod connection;
pub mod fetch_response;
pub mod groups;
pub mod handlers;
pub mod limits;
pub mod metadata_follower;
pub mod metrics;
pub mod metrics_http;
pub mod partition_table;
pub mod protocol;
pub mod request_bounds;
pub mod shard;
pub mod storage_health;
pub mod topics;
