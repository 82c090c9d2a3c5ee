//! Control-plane state held by this broker: the local topic registry and the metadata
//! follower that keeps it in step with the committed cluster metadata, consumer groups,
//! committed offsets and producer ids.

pub mod groups;
pub mod metadata_follower;
pub mod producer_ids;
pub mod topics;
