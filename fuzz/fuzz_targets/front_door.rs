#![no_main]
//! The request front door; see `fuzz::front_door`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::front_door::run(data));
