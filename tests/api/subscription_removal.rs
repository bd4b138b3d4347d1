//! A subscription removed from the settings: its queue and the messages in it stay (warren
//! never deletes a queue that may hold work), a worker started with the new settings says
//! so, and `warren topology verify` reports the queue as unexpected.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;

use warren::config::SubscriptionSettings;

use crate::helpers::{TestApp, eventually, management_url, spawn_app_with};

fn subscription(name: &str) -> SubscriptionSettings {
    // Nobody listens on port 9: no delivery succeeds, and none is wanted here.
    let mut s = SubscriptionSettings::new(name, format!("http://127.0.0.1:9/{name}"));
    s.events = vec!["order.*".to_owned()];
    s
}

fn warren(app: &TestApp, config: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.env("WARREN_CONFIG", config)
        .env("WARREN_AMQP__URL", app.vhost.amqp_url())
        .env("WARREN_AMQP__MANAGEMENT_URL", management_url())
        .env("WARREN_DATABASE__URL", &app.db.url)
        .env("WARREN_LOG__FILTER", "warn");
    cmd
}

#[tokio::test]
async fn a_removed_subscription_keeps_its_queue_and_messages_and_the_next_start_says_so() {
    // The front declares both subscriptions' queues; no worker runs, so the event waits.
    let app = spawn_app_with(
        |mut s| {
            s.subscriptions = vec![subscription("gone"), subscription("kept")];
            s
        },
        |a| a,
    )
    .await;
    let r = app.post_event("order.created", &json!({"n": 1})).await;
    assert_eq!(r.status(), 202);
    eventually(
        Duration::from_secs(10),
        "the event in warren.sub.gone",
        || async { (app.depth("warren.sub.gone").await == 1).then_some(()) },
    )
    .await;

    // The settings now have only `kept`.
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        config.path(),
        "[[subscriptions]]\nname = \"kept\"\nurl = \"http://127.0.0.1:9/kept\"\nevents = [\"order.*\"]\n",
    )
    .expect("config written");

    let mut child = crate::reliability::KillOnDrop(
        warren(&app, config.path())
            .args(["worker", "--modules", "sub.kept"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("worker starts"),
    );
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.0.stderr.take().expect("stderr");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().expect("lock").push(line);
        }
    });
    let warning = eventually(
        Duration::from_secs(30),
        "the removed-subscription warning",
        || {
            let lines = lines.clone();
            async move {
                let lines = lines.lock().expect("lock");
                lines
                    .iter()
                    .find(|l| l.contains("belongs to no subscription"))
                    .cloned()
            }
        },
    )
    .await;
    assert!(warning.contains("warren.sub.gone"), "{warning}");
    assert!(
        !lines
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains("belongs to no subscription") && l.contains("warren.sub.kept")),
        "the kept subscription's queue is not called removed"
    );
    // Left as it was: the queue and its message.
    assert_eq!(
        app.depth("warren.sub.gone").await,
        1,
        "the message is still there"
    );
    drop(child);

    let out = warren(&app, config.path())
        .args(["topology", "verify"])
        .output()
        .expect("verify runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "drift: {stdout}");
    assert!(
        stdout.contains("unexpected: queue warren.sub.gone"),
        "{stdout}"
    );
    assert!(!stdout.contains("queue warren.sub.kept"), "{stdout}");
    app.cleanup().await;
}
