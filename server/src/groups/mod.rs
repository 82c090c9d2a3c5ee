//! Consumer groups (the coordinator state machine, durable committed offsets) and
//! producer id allocation for idempotent producers.

pub mod coordinator;
pub mod offsets;
pub mod producer_ids;
