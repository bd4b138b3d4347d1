//! The fuzz targets' bodies, shared with warren's stable test that replays the committed
//! corpus (`tests/api/fuzz_corpus.rs` includes `checks.rs` by path).

pub mod checks;
