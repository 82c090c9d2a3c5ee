//! Consumer groups: the coordinator state machine, and committed offsets in the
//! replicated `__consumer_offsets` topic (`offsets_topic`, `hosting`); `offsets` reads the
//! local file of brokers from before that topic, once, to move its offsets into it.

pub mod coordinator;
pub mod hosting;
pub mod offsets;
pub mod offsets_topic;
