//! cargo-fuzz target: see `warren_fuzz::checks::envelope` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_fuzz::checks::envelope(data));
