//! The fuzz harnesses, one function per target (the files in `fuzz_targets/` only call
//! these). Each drives the broker's own code — the same functions a connection, an append
//! or an open calls — and checks invariants on what comes back; a panic, an abort or an
//! allocation past the bounds below is a finding.

pub mod alloc_track;
pub mod batch_checks;
pub mod front_door;
pub mod recovery;
