//! Consumer groups: the coordinator state machine and durable committed offsets.

pub mod coordinator;
pub mod offsets;
