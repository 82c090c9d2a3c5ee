#![no_main]
//! Segment and index recovery; see `fuzz::recovery`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::recovery::run(data));
