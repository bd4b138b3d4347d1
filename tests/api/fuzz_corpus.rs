//! The fuzz targets' committed seed corpus and crash reproducers, replayed on stable through
//! the very functions the targets run (`fuzz/src/checks.rs`, included by path): a cheap guard
//! in the normal suite that what the fuzzer once found stays fixed (docs/fuzzing.md).

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::path::PathBuf;

/// Every file under `fuzz/seeds/<target>` and `fuzz/regressions/<target>`.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                let data = std::fs::read(&path).expect("readable corpus file");
                out.push((path, data));
            }
        }
    }
    out.sort();
    out
}

fn replay(target: &str, check: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(
        inputs.len() >= 10,
        "fuzz/seeds/{target} holds the committed corpus ({} files found)",
        inputs.len()
    );
    for (path, data) in inputs {
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its checks", path.display());
    }
}

#[test]
fn the_envelope_corpus_decodes_without_a_panic() {
    replay("envelope", checks::envelope);
}

#[test]
fn the_http_request_corpus_parses_without_a_panic() {
    replay("http_request", checks::http_request);
}

#[test]
fn the_http_routes_corpus_routes_without_a_panic_or_a_500() {
    replay("http_routes", checks::http_routes);
}
