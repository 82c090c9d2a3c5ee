#![no_main]
//! The record-batch validator on real or built batches, mutated, with length and CRC
//! fixed up on request; see `fuzz::batch_checks::run_mutated`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::batch_checks::run_mutated(data));
