#![no_main]
//! The record-batch validator on arbitrary bytes; see `fuzz::batch_checks`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::batch_checks::run_raw(data));
