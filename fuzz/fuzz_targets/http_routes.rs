//! cargo-fuzz target: see `warren_fuzz::checks::http_routes` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_fuzz::checks::http_routes(data));
