//! Scale-out without Docker: two worker processes share one queue (competing consumers), and
//! killing one mid-run loses nothing and repeats nothing.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::json;

use crate::{
    helpers::{TestApp, eventually, management_url, spawn_app},
    reliability::KillOnDrop,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn worker(app: &TestApp, metrics_port: u16) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["worker", "--modules", "notifications"])
            .env("WARREN_AMQP__URL", app.vhost.amqp_url())
            .env("WARREN_AMQP__MANAGEMENT_URL", management_url())
            .env("WARREN_DATABASE__URL", &app.db.url)
            .env("WARREN_METRICS__ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("WARREN_JOBS__FAILURE_DELAY_MS", "1000")
            .env("WARREN_JOBS__ERROR_DELAY_MS", "2000")
            .env("WARREN_LOG__FILTER", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts"),
    )
}

/// Messages a worker process consumed from `warren.notifications`, from its metrics listener.
async fn consumed(http: &reqwest::Client, port: u16) -> Option<u64> {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"queue_messages_total{queue="warren.notifications",action="consumed"} "#,
            )
        })
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn two_worker_processes_share_a_queue_and_a_killed_one_loses_nothing() {
    const EVENTS: usize = 1_000;
    let app = spawn_app().await; // the HTTP front only; the work is done by two processes
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = worker(&app, port_a);
    let _b = worker(&app, port_b);
    // Both consuming before the load arrives.
    eventually(Duration::from_secs(30), "both workers up", || async {
        (consumed(&app.http, port_a).await.is_some() && consumed(&app.http, port_b).await.is_some())
            .then_some(())
    })
    .await;

    // Half the events, then worker A is killed once it has taken a share of them (the
    // queue still holds work, so A dies with messages in hand), then the other half, which
    // only B can take.
    let post_half = |half: usize| {
        let mut posts = tokio::task::JoinSet::new();
        for chunk in 0..10 {
            let http = app.http.clone();
            let url = format!("{}/v1/events/order.created", app.base);
            posts.spawn(async move {
                for i in 0..EVENTS / 20 {
                    let r = http
                        .post(&url)
                        .json(&json!({"user_id": format!("u-{half}-{chunk}"), "i": i}))
                        .send()
                        .await
                        .expect("sent");
                    assert_eq!(r.status(), 202);
                }
            });
        }
        posts
    };
    let db = app.db().await;
    let stored = || async {
        entities::notifications::Entity::find()
            .count(&db)
            .await
            .unwrap_or(0) as usize
    };
    let mut first = post_half(0);
    let a_share = eventually(Duration::from_secs(60), "worker A has worked", || async {
        consumed(&app.http, port_a).await.filter(|n| *n >= 20)
    })
    .await;
    a.0.kill().expect("SIGKILL worker A");
    let _ = a.0.wait();
    let mut second = post_half(1);
    while let Some(r) = first.join_next().await {
        r.expect("publisher task");
    }
    while let Some(r) = second.join_next().await {
        r.expect("publisher task");
    }
    eventually(Duration::from_secs(90), "every event stored", || async {
        (stored().await >= EVENTS).then_some(())
    })
    .await;
    // Settle: nothing more arrives, and nothing was stored twice.
    eventually(Duration::from_secs(20), "queue drained", || async {
        (app.depth("warren.notifications").await == 0).then_some(())
    })
    .await;
    assert_eq!(stored().await, EVENTS, "each event stored exactly once");
    let b_share = consumed(&app.http, port_b).await.expect("worker B metrics");
    assert!(
        a_share > 0 && b_share > 0,
        "work shared: A {a_share}, B {b_share}"
    );
    app.cleanup().await;
}
