//! The OpenAPI document against a live warren, checked by schemathesis (PyPI, pinned in
//! `scripts/test.sh`, its own venv `target/schemathesis`): every operation, a few dozen
//! examples each, with the checks for server errors, status codes, content types and
//! response schemas, as a token that has every scope.
//!
//! Known answers that are right and that the document cannot express are listed in
//! [`ACCEPTED`] with their reason (none today); everything else schemathesis reports fails
//! the test with its output.

use std::{path::PathBuf, process::Stdio, time::Instant};

use warren::config::{Scope, Secret, TokenSetting};

use crate::helpers::spawn_app_with;

const TOKEN: &str = "openapi-every-scope-0123456789";

/// The checks schemathesis runs on every answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance";

/// Failures that are right behaviour, as `(operation, reason)`; excluded by name, so each one
/// is here and in docs/architecture.md, never silently skipped.
const ACCEPTED: &[(&str, &str)] = &[];

fn schemathesis() -> PathBuf {
    std::env::var_os("WARREN_TEST_SCHEMATHESIS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis/bin/schemathesis"),
        PathBuf::from,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_on_any_operation() {
    let app = spawn_app_with(
        |mut s| {
            s.http.tokens = vec![TokenSetting::Scoped {
                token: Secret::new(TOKEN),
                scopes: vec![Scope::Publish, Scope::Read, Scope::Admin],
                name: Some("schemathesis".into()),
            }];
            s.console.enabled = true;
            s
        },
        |a| a,
    )
    .await;

    // The document the live process serves is the one in the repository.
    let served = app
        .request(reqwest::Method::GET, "/openapi.json")
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-type"].to_str().ok(),
        Some("application/json")
    );
    let served = served.text().await.expect("body");
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
        .expect("docs/openapi.json");
    assert_eq!(served, file, "the served document is not docs/openapi.json");

    let bin = schemathesis();
    assert!(
        bin.exists(),
        "{} is missing: scripts/test.sh installs schemathesis",
        bin.display()
    );
    let report = tempfile::tempdir().expect("a report directory");
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("run")
        .arg(format!("{}/openapi.json", app.base))
        .args(["--checks", CHECKS])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", "25", "--seed", "20"])
        .args(["--phases", "examples,coverage,fuzzing"])
        // One worker thread: hypothesis calls ast.parse while drawing, and two threads doing so
        // at once trip Python 3.11's (< 3.11.8) shared AST recursion counter, a SystemError
        // ("AST constructor recursion depth mismatch", cpython gh-106905), not a finding of
        // ours. On two cores a second worker bought no time.
        .args(["--workers", "1", "--request-timeout", "10"])
        .args(["--max-redirects", "0", "--no-shrink"])
        .arg("--report-dir")
        .arg(report.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (operation, _reason) in ACCEPTED {
        cmd.args(["--exclude-operation-id", operation]);
    }
    let started = Instant::now();
    // Hypothesis on Python 3.11 now and then fails inside its own lambda description ("AST
    // constructor recursion depth mismatch"), a bug of the tool, not an answer of warren's: such
    // a run (no failure reported, only that error) is run once more.
    let mut runs = 0;
    let (out, stdout) = loop {
        runs += 1;
        let out = tokio::time::timeout(std::time::Duration::from_secs(300), cmd.output())
            .await
            .expect("schemathesis finishes within 5 minutes")
            .expect("schemathesis runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let tool_bug = !out.status.success()
            && !stdout.contains("=== FAILURES ===")
            && stdout.contains("AST constructor recursion depth mismatch");
        if !tool_bug || runs == 2 {
            break (out, stdout);
        }
        eprintln!("schemathesis hit its own runtime error; running it once more");
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "schemathesis took {:.1} s ({runs} run(s))\n{stdout}\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "schemathesis found failures (exit {:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    // Every operation was tested: none left out for want of a way to build a request.
    let selected = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Selected: "))
        .and_then(|v| v.split('/').next())
        .map(str::to_owned);
    let tested = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .map(str::to_owned);
    assert!(
        selected.is_some() && selected == tested,
        "schemathesis tested {tested:?} of {selected:?} operations:\n{stdout}"
    );
}
