//! The wire format checked by code no one here wrote: real deliveries, captured by the test
//! receiver, parsed by the CloudEvents Python SDK and verified by the Standard Webhooks
//! reference library (`tests/wire/check_delivery.py`, run with `WARREN_TEST_PYTHON`, the
//! venv `scripts/test.sh` makes).

use std::{path::PathBuf, process::Command};

use base64::Engine;
use serde_json::json;

use super::tests::{Captured, job, receiver, settings};
use super::*;
use crate::config::{ContentMode, Secret};

const OLD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const NEW_SECRET: &str = "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGQ";
/// Needs encoding: space, `/`-free UTF-8, a double quote and a percent sign.
const SUBJECT: &str = "order 42 \"ü\" 100% ✓";
/// An event name no publisher of warren's could send, but a foreign one might.
const TYPE: &str = "order.créé \"v2\"";

fn python() -> PathBuf {
    match std::env::var_os("WARREN_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "WARREN_TEST_PYTHON is not set: run scripts/test.sh, which makes the Python venv \
             target/pyenv with the cloudevents and standardwebhooks packages and exports it \
             (or export WARREN_TEST_PYTHON=target/pyenv/bin/python after running it once)"
        ),
    }
}

/// Delivers one job in `mode` to the receiver and returns what arrived, and the job.
async fn capture(mode: ContentMode) -> (Captured, crate::jobs::Job) {
    let (addr, seen) = receiver().await;
    let mut sub = settings(format!("http://{addr}/ok"));
    sub.content_mode = mode;
    sub.secret = Some(Secret::new(OLD_SECRET));
    sub.secrets = vec![Secret::new(NEW_SECRET)];
    let c = SubscriptionConsumer::new(&sub, "/", http_client().expect("client"), Metrics::new())
        .expect("consumer");
    let mut job = job("order.created", Some(SUBJECT));
    job.event.event_name = TYPE.to_owned();
    assert_eq!(c.handle(&job).await, Ok(()));
    let got = seen.lock().expect("lock").pop().expect("a request");
    (got, job)
}

/// Writes the capture for the checker and runs it; returns its exit status and stderr.
fn check(got: &Captured, job: &crate::jobs::Job, mode: &str) -> (bool, String) {
    let headers: serde_json::Map<String, serde_json::Value> = got
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                json!(v.to_str().expect("ASCII header")),
            )
        })
        .collect();
    let capture = json!({
        "headers": headers,
        "body_b64": base64::engine::general_purpose::STANDARD.encode(&got.body),
        "secrets": [OLD_SECRET, NEW_SECRET],
        "expect": {
            "mode": mode,
            "id": job.message_id.to_string(),
            "source": "/warren/%2F/warren.events",
            "type": TYPE,
            "time": job.event.occurred_on_rfc3339(),
            "subject": SUBJECT,
            "data": job.event.data,
        },
    });
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), capture.to_string()).expect("write capture");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/wire/check_delivery.py");
    let out = Command::new(python())
        .arg(script)
        .arg(file.path())
        .output()
        .expect("the checker runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.success(),
        stderr + &String::from_utf8_lossy(&out.stdout),
    )
}

#[tokio::test]
async fn binary_delivery_passes_the_reference_sdk_and_signature_library() {
    let (got, job) = capture(ContentMode::Binary).await;
    let (ok, output) = check(&got, &job, "binary");
    assert!(ok, "{output}");
}

#[tokio::test]
async fn structured_delivery_passes_the_reference_sdk_and_signature_library() {
    let (got, job) = capture(ContentMode::Structured).await;
    assert!(got.headers.keys().all(|k| !k.as_str().starts_with("ce-")));
    let (ok, output) = check(&got, &job, "structured");
    assert!(ok, "{output}");
}

#[tokio::test]
async fn a_broken_signature_fails_the_check() {
    let (mut got, job) = capture(ContentMode::Binary).await;
    let signature = got.headers["webhook-signature"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    // Change one base64 character of the second signature (the new secret's).
    let at = signature.rfind(',').expect("v1,") + 5;
    let mut broken = signature.into_bytes();
    broken[at] = if broken[at] == b'A' { b'B' } else { b'A' };
    got.headers.insert(
        "webhook-signature",
        String::from_utf8(broken)
            .expect("ASCII")
            .parse()
            .expect("header value"),
    );
    let (ok, output) = check(&got, &job, "binary");
    assert!(!ok, "a broken signature passed: {output}");
    assert!(output.contains("signature with secret 2"), "{output}");
}

#[tokio::test]
async fn a_changed_body_fails_the_check() {
    let (mut got, job) = capture(ContentMode::Structured).await;
    let body = String::from_utf8(got.body.to_vec()).expect("utf-8");
    assert!(body.contains(r#""order_id":42"#), "{body}");
    got.body = bytes::Bytes::from(body.replace(r#""order_id":42"#, r#""order_id":43"#));
    let (ok, output) = check(&got, &job, "structured");
    assert!(!ok, "a changed body passed: {output}");
    assert!(output.contains("signature with secret 1"), "{output}");
}

#[tokio::test]
async fn the_python_receiver_example_accepts_signed_deliveries_and_refuses_forged_ones() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/wire/receiver.py");
    let mut child = tokio::process::Command::new(python())
        .arg(script)
        .arg(OLD_SECRET)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the receiver starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let next = async |lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>| {
        tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("the receiver answers within 20 s")
            .expect("stdout readable")
            .expect("a line")
    };
    let port: u16 = next(&mut lines).await.parse().expect("the port");

    let mut sub = settings(format!("http://127.0.0.1:{port}/"));
    sub.timeout_ms = 5_000;
    sub.secret = Some(Secret::new(OLD_SECRET));
    let signed =
        SubscriptionConsumer::new(&sub, "/", http_client().expect("client"), Metrics::new())
            .expect("consumer");
    let job = job("order.created", Some(SUBJECT));
    assert_eq!(signed.handle(&job).await, Ok(()));
    let event: serde_json::Value = serde_json::from_str(&next(&mut lines).await).expect("JSON");
    assert_eq!(
        event,
        json!({"id": job.message_id.to_string(), "type": "order.created", "subject": SUBJECT, "data": job.event.data})
    );

    sub.secret = Some(Secret::new(NEW_SECRET));
    let forged =
        SubscriptionConsumer::new(&sub, "/", http_client().expect("client"), Metrics::new())
            .expect("consumer");
    let refused = forged.handle(&job).await;
    assert!(
        matches!(&refused, Err(crate::jobs::JobError::Invalid(r)) if r.contains("401")),
        "{refused:?}"
    );
    let _ = child.kill().await;
}
