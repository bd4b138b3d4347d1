//! The AsyncAPI document of a running warren, checked by code no one here wrote: the AsyncAPI
//! parser (`@asyncapi/parser` from npm, pinned in `tests/asyncapi/package.json`, installed
//! by `scripts/test.sh`; `tests/asyncapi/check.mjs` runs it and prints what it found). The
//! document must parse with no error and no warning, and the parser's reading of it must hold
//! the live broker's queues and bindings, the saga definitions' commands and the HTTP
//! subscriptions; `warren asyncapi` prints the same document.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};
use warren::config::SubscriptionSettings;

use crate::helpers::{management_url, spawn_app_with};

/// A saga whose steps an HTTP subscription (`seats`) takes.
fn definitions() -> Value {
    json!([{
        "kind": "trip",
        "steps": [
            {"name": "reserve_seat", "command": "seat.reserve", "compensation": "seat.release",
             "deadline": 5000, "rolls_back": true}
        ]
    }])
}

fn seats() -> SubscriptionSettings {
    let mut s = SubscriptionSettings::new("seats", "http://127.0.0.1:9/seats");
    s.commands = vec!["seat.*".into()];
    s
}

fn checker() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/asyncapi");
    assert!(
        dir.join("node_modules/@asyncapi/parser").is_dir(),
        "the AsyncAPI parser is not installed: run scripts/test.sh (npm ci --prefix tests/asyncapi)"
    );
    dir.join("check.mjs")
}

/// Runs the parser on `document`: (exit code, what it printed).
async fn parse(dir: &Path, name: &str, document: &Value) -> (i32, Value) {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(document).expect("json")).expect("write");
    let out = tokio::process::Command::new("node")
        .arg(checker())
        .arg(&path)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "the checker printed no report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), report)
}

async fn management(path: &str) -> Vec<Value> {
    reqwest::get(format!("{}{path}", management_url()))
        .await
        .expect("management API answers")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn the_asyncapi_document_of_a_running_warren_passes_the_asyncapi_parser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("sagas.json");
    std::fs::write(&defs, definitions().to_string()).expect("write");
    let defs_file = defs.clone();
    let app = spawn_app_with(
        move |mut s| {
            s.saga.definitions_file = Some(defs_file);
            s.subscriptions = vec![seats()];
            s
        },
        |a| a,
    )
    .await;

    let response = app
        .request(reqwest::Method::GET, "/asyncapi.json")
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.expect("json");
    assert_eq!(document["asyncapi"], "3.0.0");

    let (code, report) = parse(dir.path(), "asyncapi.json", &document).await;
    assert_eq!(code, 0, "the parser refused the document: {report:#}");
    let diagnostics = &report["diagnostics"];
    assert_eq!(diagnostics["error"], json!([]), "{diagnostics:#}");
    assert_eq!(diagnostics["warning"], json!([]), "{diagnostics:#}");
    assert_eq!(report["version"], "3.0.0");

    // The parser's reading of it holds every queue and binding of the live vhost.
    let channels: Vec<&Value> = report["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .collect();
    let channel = |id: &str| {
        channels
            .iter()
            .find(|c| c["id"] == id)
            .copied()
            .unwrap_or_else(|| panic!("no channel {id} in {channels:#?}"))
    };
    let vhost = urlencoding(&app.vhost.name);
    let queues = management(&format!("/api/queues/{vhost}")).await;
    assert!(queues.len() > 10, "the vhost has its topology: {queues:?}");
    for q in &queues {
        let name = q["name"].as_str().expect("name");
        let c = channel(&format!("queue.{name}"));
        assert_eq!(c["address"], name);
        assert_eq!(c["amqp"]["is"], "queue");
        assert_eq!(c["amqp"]["queue"]["name"], name);
        assert_eq!(c["amqp"]["queue"]["durable"], q["durable"]);
    }
    let documented: BTreeSet<(String, String, String)> = document["channels"]
        .as_object()
        .expect("channels")
        .iter()
        .flat_map(|(_, c)| {
            let queue = c["address"].as_str().unwrap_or_default().to_owned();
            c["x-warren-bindings"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |b| {
                    (
                        b["exchange"].as_str().unwrap_or_default().to_owned(),
                        queue.clone(),
                        b["routingKey"].as_str().unwrap_or_default().to_owned(),
                    )
                })
        })
        .collect();
    let live: BTreeSet<(String, String, String)> = management(&format!("/api/bindings/{vhost}"))
        .await
        .iter()
        .filter(|b| b["source"] != "")
        .map(|b| {
            (
                b["source"].as_str().unwrap_or_default().to_owned(),
                b["destination"].as_str().unwrap_or_default().to_owned(),
                b["routing_key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(documented, live, "documented bindings vs the broker's");

    // The saga file's command and compensation are sent by warren and received by the
    // subscription's queue; the subscription's queue says whose it is.
    let operations = report["operations"].as_array().expect("operations");
    let operation = |id: &str| {
        operations
            .iter()
            .find(|o| o["id"] == id)
            .unwrap_or_else(|| panic!("no operation {id}"))
    };
    for command in ["seat.reserve", "seat.release"] {
        assert_eq!(operation(&format!("send.{command}"))["action"], "send");
        let received = &operation("receive.warren.sub.seats")["messages"];
        assert!(
            received
                .as_array()
                .expect("messages")
                .contains(&json!(command)),
            "{received}"
        );
    }
    assert_eq!(
        document["channels"]["queue.warren.sub.seats"]["x-warren-subscription"]["name"],
        "seats"
    );
    // Every message carries the envelope's headers, CloudEvents' among them.
    let messages = report["messages"].as_array().expect("messages");
    let reserve = messages
        .iter()
        .find(|m| m["id"] == "seat.reserve")
        .expect("seat.reserve message");
    for header in [
        "x-warren-attempt",
        "traceparent",
        "ce-id",
        "ce-source",
        "ce-type",
    ] {
        assert!(
            reserve["headers"]
                .as_array()
                .expect("headers")
                .contains(&json!(header)),
            "{header} missing: {reserve}"
        );
    }

    // The checker can fail: a channel binding AsyncAPI does not allow is refused.
    let mut broken = document.clone();
    broken["channels"]["queue.warren.audit"]["bindings"]["amqp"]["is"] = json!("exchange");
    let (code, report) = parse(dir.path(), "broken.json", &broken).await;
    assert_eq!(code, 1, "a broken document passed: {report}");
    assert_ne!(report["diagnostics"]["error"], json!([]));

    // `warren asyncapi` prints the same document for the same settings.
    let config = dir.path().join("warren.toml");
    std::fs::write(
        &config,
        format!(
            "[amqp]\nurl = {url:?}\n\n[saga]\ndefinitions_file = {defs:?}\n\n[[subscriptions]]\nname = \"seats\"\nurl = \"http://127.0.0.1:9/seats\"\ncommands = [\"seat.*\"]\n",
            url = app.vhost.amqp_url(),
            defs = defs.display().to_string(),
        ),
    )
    .expect("write");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("--config")
        .arg(&config)
        .arg("asyncapi")
        .env("WARREN_LOG__FILTER", "error")
        .output()
        .await
        .expect("warren runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("json");
    let differences = differences(&printed, &document, "");
    assert!(
        differences.is_empty(),
        "warren asyncapi differs: {differences:#?}"
    );
    app.cleanup().await;
}

/// The JSON paths where `a` and `b` differ.
fn differences(a: &Value, b: &Value, at: &str) -> Vec<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    differences(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &format!("{at}/{k}"),
                    )
                })
                .collect()
        }
        _ if a == b => Vec::new(),
        _ => vec![format!("{at}: {a} vs {b}")],
    }
}

/// The vhost as one path segment of the management API.
fn urlencoding(vhost: &str) -> String {
    vhost.bytes().fold(String::new(), |mut s, b| {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
        s
    })
}
