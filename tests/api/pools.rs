//! Per-role database pools (`database.pools`): each role has a bounded pool of its own, so a
//! role that holds every connection of its pool cannot starve another.

use std::time::Duration;

use sea_orm::{Database, EntityTrait, TransactionTrait};
use serde_json::json;
use uuid::Uuid;
use warren::config::Pool;

use crate::helpers::{eventually, spawn_worker_with};

/// The test holds the HTTP front's only connection in an open transaction; the audit
/// consumer still records events (through the consumers' pool), while an HTTP read that needs
/// the database is refused with a clear 503 until the connection is back.
#[tokio::test]
async fn a_held_http_pool_does_not_stop_the_consumers() {
    let app = spawn_worker_with(
        |mut s| {
            s.database.pools.http = Some(1);
            s.database.pools.consumers = Some(2);
            s
        },
        |a| a.modules(["audit"]),
    )
    .await;
    let running = app.running.as_ref().expect("running");

    let metrics = app
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for (pool, max) in [
        ("http", 1),
        ("consumers", 2),
        ("relay", 2),
        ("scheduler", 2),
    ] {
        let line = format!(r#"database_pool_connections{{pool="{pool}",state="max"}} {max}"#);
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }

    let held = running
        .pools
        .get(Pool::Http)
        .begin()
        .await
        .expect("take the HTTP pool's only connection");

    // Published while the HTTP pool is held: publishing needs no database connection.
    let mut ids = Vec::new();
    for i in 0..5 {
        let resp = app.post_event("pool.checked", &json!({"n": i})).await;
        assert_eq!(resp.status(), 202);
        let body: serde_json::Value = resp.json().await.expect("json");
        ids.push(Uuid::parse_str(body["event_id"].as_str().expect("id")).expect("uuid"));
    }
    let db = Database::connect(&app.db.url).await.expect("connect");
    eventually(Duration::from_secs(20), "every event audited", || {
        let (db, ids) = (db.clone(), ids.clone());
        async move {
            for id in ids {
                entities::event_log::Entity::find_by_id(id)
                    .one(&db)
                    .await
                    .ok()??;
            }
            Some(())
        }
    })
    .await;

    // The HTTP front's own reads wait for their pool, and say so.
    let resp = app
        .request(reqwest::Method::GET, "/v1/failed-jobs")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");

    held.rollback().await.expect("release");
    let resp = app
        .request(reqwest::Method::GET, "/v1/failed-jobs")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let _ = db.close().await;
    app.cleanup().await;
}
