//! Sagas started over HTTP (`POST /v1/sagas/{kind}`, `Idempotency-Key`), definitions files
//! checked before they run (at start and by `warren saga check`), and a saga that keeps the
//! definition it started with across a changed file and a restart.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use entities::sagas;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use warren::{App, Role};

use crate::{
    helpers::{TestApp, TestDb, TestVhost, spawn_roles_in, test_settings},
    saga::{ALL, balance, order, seed, spawn_saga, start_faulty_inventory, stock, until_status},
};

/// A "reserve" saga: stock, then balance, each undone on a rollback.
fn reserve(kind: &str, deadline_ms: u64) -> Value {
    json!([{
        "kind": kind,
        "steps": [
            {"name": "hold_stock", "command": "inventory.deduct",
             "compensation": "inventory.restore", "deadline": deadline_ms, "rolls_back": true},
            {"name": "charge", "command": "balance.deduct",
             "compensation": "balance.refund", "deadline": deadline_ms, "rolls_back": true}
        ]
    }])
}

fn write(path: &Path, defs: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(defs).expect("json")).expect("write");
}

async fn spawn_with_file(modules: &[&str], path: &Path) -> TestApp {
    let path = path.to_owned();
    spawn_saga(
        modules,
        |mut s| {
            s.saga.definitions_file = Some(path);
            s
        },
        |a| a,
    )
    .await
}

async fn start(app: &TestApp, kind: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut r = app
        .request(reqwest::Method::POST, &format!("/v1/sagas/{kind}"))
        .json(body);
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    r.send().await.expect("sent")
}

/// A queue bound to `warren.events` for `saga.*`: the sagas' end events.
async fn tap_saga_events(app: &TestApp) {
    app.tap("test.saga-events", "warren.events", "saga.*").await;
}

/// Waits for `n` end events in the tap; returns them (type, data) in arrival order.
async fn saga_events(app: &TestApp, n: usize) -> Vec<(String, Value)> {
    let got = tokio::sync::Mutex::new(Vec::new());
    crate::helpers::eventually(
        Duration::from_secs(15),
        &format!("{n} end events"),
        || async {
            let mut got = got.lock().await;
            for m in app.drain("test.saga-events").await {
                let kind = m.properties.kind().as_ref().map(ToString::to_string);
                let body: Value = serde_json::from_slice(&m.data).expect("json body");
                got.push((kind.unwrap_or_default(), body["data"].clone()));
            }
            (got.len() >= n).then(|| got.clone())
        },
    )
    .await
}

async fn sagas_of(app: &TestApp, kind: &str) -> u64 {
    sagas::Entity::find()
        .filter(sagas::Column::Kind.eq(kind))
        .count(&app.db().await)
        .await
        .expect("count")
}

#[tokio::test]
async fn saga_started_over_http_runs_to_completed_and_its_link_follows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sagas.json");
    write(&path, &reserve("reserve", 10_000));
    let app = spawn_with_file(&["inventory", "payments"], &path).await;
    tap_saga_events(&app).await;
    seed(
        &app,
        json!({"SKU-H": 5}),
        json!({"u-h": 1_000, "u-poor": 1}),
    )
    .await;
    let r = start(
        &app,
        "reserve",
        None,
        &json!({"business_key": "H-1", "payload": order("H-1", "u-h", "SKU-H", 2, 300)}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().expect("ascii").to_owned();
    let v: Value = r.json().await.expect("json");
    let id = v["saga_id"].as_str().expect("saga_id");
    assert_eq!(location, format!("/v1/sagas/{id}"));
    assert_eq!(v["links"]["self"], location.as_str());
    assert_eq!(
        (v["kind"].clone(), v["status"].clone()),
        (json!("reserve"), json!("running"))
    );
    let done = until_status(&app, id, "completed", Duration::from_secs(30)).await;
    assert_eq!(done["business_key"], "H-1");
    assert_eq!(done["definition_hash"].as_str().map(str::len), Some(64));
    assert_eq!(stock(&app, "SKU-H").await, 3);
    assert_eq!(balance(&app, "u-h").await, 400);
    // Short of balance: compensated. Each end is an event on warren.events.
    let r = start(
        &app,
        "reserve",
        None,
        &json!({"business_key": "H-3", "payload": order("H-3", "u-poor", "SKU-H", 1, 300)}),
    )
    .await;
    let poor: Value = r.json().await.expect("json");
    let poor = poor["saga_id"].as_str().expect("saga_id").to_owned();
    until_status(&app, &poor, "compensated", Duration::from_secs(30)).await;
    let seen = saga_events(&app, 2).await;
    let by = |name: &str| seen.iter().find(|(k, _)| k == name).map(|(_, d)| d.clone());
    let completed = by("saga.completed").expect("saga.completed");
    assert_eq!(completed["saga_id"], id);
    assert_eq!(completed["business_key"], "H-1");
    assert_eq!(completed["links"]["self"], location.as_str());
    let compensated = by("saga.compensated").expect("saga.compensated");
    assert_eq!(compensated["saga_id"], poor.as_str());
    assert!(compensated["reason"].is_string(), "{compensated}");
    // The order saga starts the same way.
    let r = start(
        &app,
        "order",
        None,
        &json!({"business_key": "H-2", "payload": order("H-2", "u-h", "SKU-H", 1, 1)}),
    )
    .await;
    assert_eq!(r.status(), 202);
    app.cleanup().await;
}

#[tokio::test]
async fn saga_idempotency_key_repeat_answers_the_same_saga_and_another_body_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sagas.json");
    write(&path, &reserve("reserve", 30_000));
    // No participants: the sagas wait at their first step, which is all this test needs.
    let app = spawn_with_file(&[], &path).await;
    let body = json!({"business_key": "I-1", "payload": {"n": 1}});
    let first = start(&app, "reserve", Some("key-1"), &body).await;
    assert_eq!(first.status(), 202);
    assert_eq!(first.headers()["idempotent-replayed"], "false");
    let first: Value = first.json().await.expect("json");
    let again = start(&app, "reserve", Some("key-1"), &body).await;
    assert_eq!(again.status(), 200, "a repeat answers 200");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["saga_id"], first["saga_id"]);
    assert_eq!(
        sagas_of(&app, "reserve").await,
        1,
        "the repeat started nothing"
    );

    let other = json!({"business_key": "I-1", "payload": {"n": 2}});
    let r = start(&app, "reserve", Some("key-1"), &other).await;
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["code"], "idempotency_key_reused", "{e}");
    assert_eq!(e["saga_id"], first["saga_id"]);
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("key-1")),
        "{e}"
    );

    // Concurrent starts with one new key: one saga, every answer names it.
    let body = json!({"business_key": "I-2", "payload": {"n": 3}});
    let answers = futures_util::future::join_all(
        (0..6).map(|_| start(&app, "reserve", Some("key-2"), &body)),
    )
    .await;
    let mut ids = Vec::new();
    for r in answers {
        assert!(matches!(r.status().as_u16(), 200 | 202), "{}", r.status());
        let v: Value = r.json().await.expect("json");
        ids.push(v["saga_id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(sagas_of(&app, "reserve").await, 2);
    // A new key with a taken business key is the business key's 409, as without a key.
    let r = start(
        &app,
        "reserve",
        Some("key-3"),
        &json!({"business_key": "I-1"}),
    )
    .await;
    assert_eq!(r.status(), 409);
    app.cleanup().await;
}

#[tokio::test]
async fn saga_start_of_an_unknown_kind_is_404_and_a_bad_body_is_refused_with_the_reason() {
    let app = spawn_saga(&[], |s| s, |a| a).await;
    let r = start(&app, "nope", None, &json!({"payload": {}})).await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["code"], "unknown_saga_kind", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope"))
    );

    let r = start(
        &app,
        "order",
        None,
        &json!({"payload": {}, "kind": "order"}),
    )
    .await;
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["code"], "invalid_saga_start", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field `kind`"))
    );

    let r = start(&app, "order", None, &json!({"business_key": ""})).await;
    assert_eq!(r.status(), 422);
    // The order saga keeps `POST /v1/orders`' rules: a valid order, keyed by its number.
    let mut bad = order("B-1", "u-1", "SKU-1", 1, 100);
    bad["total_amount"] = json!(7);
    let r = start(&app, "order", None, &json!({"payload": bad})).await;
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["code"], "invalid_order", "{e}");
    let good = order("B-2", "u-1", "SKU-1", 1, 100);
    let r = start(
        &app,
        "order",
        None,
        &json!({"business_key": "X", "payload": good}),
    )
    .await;
    assert_eq!(r.status(), 422, "the key must be the order number");
    let r = start(&app, "order", None, &json!([1])).await;
    assert_eq!(r.status(), 422, "not an object");
    let r = app
        .request(reqwest::Method::POST, "/v1/sagas/order")
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 400);
    assert_eq!(sagas_of(&app, "order").await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn saga_needing_intervention_is_an_event_and_the_retry_that_finishes_it_another() {
    let app = spawn_saga(&["orders", "payments", "notifications"], |s| s, |a| a).await;
    tap_saga_events(&app).await;
    let failing = Arc::new(AtomicBool::new(true));
    let stop = CancellationToken::new();
    let inventory = start_faulty_inventory(&app, failing.clone(), stop.clone()).await;
    seed(&app, json!({"SKU-1": 10}), json!({"u-1": 50})).await;
    let body = json!({"business_key": "N-1", "payload": order("N-1", "u-1", "SKU-1", 4, 100)});
    let r = start(&app, "order", Some("n-1"), &body).await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.expect("json");
    let id = v["saga_id"].as_str().expect("id").to_owned();
    let view = until_status(&app, &id, "needs_intervention", Duration::from_secs(40)).await;
    let seen = saga_events(&app, 1).await;
    assert_eq!(seen[0].0, "saga.needs_intervention");
    assert_eq!(seen[0].1["saga_id"], id.as_str());
    assert_eq!(seen[0].1["kind"], "order");

    failing.store(false, Ordering::SeqCst);
    let iv = view["interventions"][0]["id"]
        .as_str()
        .expect("intervention");
    let r = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/interventions/{iv}/retry"),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    until_status(&app, &id, "compensated", Duration::from_secs(30)).await;
    let seen = saga_events(&app, 1).await;
    assert_eq!(seen[0].0, "saga.compensated");
    assert_eq!(seen[0].1["saga_id"], id.as_str());
    stop.cancel();
    inventory.wait().await;
    app.cleanup().await;
}

fn cli_check(file: &Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["saga", "check"])
        .arg(file)
        .env("WARREN_LOG__FILTER", "error")
        .output()
        .expect("warren runs");
    let code = out.status.code().expect("exit code");
    (code, String::from_utf8(out.stdout).expect("utf-8"))
}

#[tokio::test]
async fn saga_definitions_with_problems_are_refused_at_start_and_by_saga_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    let mut defs = reserve("trip", 1_000);
    defs[0]["steps"][0]["retries"] = json!(3);
    defs[0]["steps"][1]["command"] = json!("card.charge");
    write(&bad, &defs);

    let (code, out) = cli_check(&bad);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(r#"saga "trip", step "hold_stock": unknown field `retries`"#),
        "{out}"
    );
    assert!(
        out.contains(r#"saga "trip", step "charge": command "card.charge" is handled by no module or subscription"#),
        "{out}"
    );

    let (vhost, db) = (TestVhost::new().await, TestDb::new().await);
    let mut settings = test_settings(&vhost, &db.url);
    settings.saga.definitions_file = Some(bad.clone());
    let refused = match App::new(settings)
        .start(&[Role::Saga], CancellationToken::new())
        .await
    {
        Ok(_) => panic!("a start with a bad definitions file is refused"),
        Err(e) => e,
    };
    let message = refused.to_string();
    assert!(
        message.contains(r#"saga "trip", step "charge""#),
        "{message}"
    );
    assert!(message.contains("unknown field `retries`"), "{message}");

    let good = dir.path().join("good.json");
    write(&good, &reserve("trip", 1_000));
    let (code, out) = cli_check(&good);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 saga definition(s) fit to run: trip (2 steps)"),
        "{out}"
    );
    vhost.delete().await;
    db.drop_db().await;
}

#[tokio::test]
async fn saga_started_on_definition_v1_keeps_running_v1_after_the_file_changes_and_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sagas.json");
    write(&path, &reserve("reserve", 60_000));
    // v1 runs without its participants: the saga waits at its first step.
    let app = spawn_with_file(&["orders"], &path).await;
    seed(&app, json!({"SKU-V": 5}), json!({"u-v": 1_000})).await;
    let body = json!({"business_key": "V-1", "payload": order("V-1", "u-v", "SKU-V", 1, 100)});
    let r = start(&app, "reserve", None, &body).await;
    assert_eq!(r.status(), 202);
    let v1: Value = r.json().await.expect("json");
    let id = v1["saga_id"].as_str().expect("id").to_owned();
    let before = app.get_json(&format!("/v1/sagas/{id}")).await;
    assert_eq!(before["status"], "running");

    // v2: one step under another name; the process stops and starts again with it.
    let (vhost, db, settings) = stop(app).await;
    write(
        &path,
        &json!([{"kind": "reserve", "steps": [
            {"name": "charge_only", "command": "balance.deduct", "compensation": null,
             "deadline": 60_000, "rolls_back": true}
        ]}]),
    );
    let app = spawn_roles_in(
        vhost,
        db,
        &[Role::Http, Role::Worker, Role::Saga],
        |_| settings,
        |a| a.modules(ALL.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>()),
    )
    .await;
    let done = until_status(&app, &id, "completed", Duration::from_secs(30)).await;
    let names: Vec<&str> = done["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["hold_stock", "charge"], "the saga ran v1");
    assert_eq!(done["definition_hash"], before["definition_hash"]);
    assert_eq!(
        done["definition_current"], false,
        "it kept the older definition"
    );
    assert_eq!(stock(&app, "SKU-V").await, 4, "v1's first step ran");
    assert_eq!(balance(&app, "u-v").await, 900, "v1's second step ran");
    // A saga started now runs v2.
    let r = start(
        &app,
        "reserve",
        None,
        &json!({"business_key": "V-2", "payload": order("V-2", "u-v", "SKU-V", 1, 100)}),
    )
    .await;
    let v2: Value = r.json().await.expect("json");
    let v2 = until_status(
        &app,
        v2["saga_id"].as_str().expect("id"),
        "completed",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(v2["steps"].as_array().map(Vec::len), Some(1));
    assert_ne!(v2["definition_hash"], before["definition_hash"]);
    assert_eq!(v2["definition_current"], true);
    assert_eq!(stock(&app, "SKU-V").await, 4, "v2 holds no stock");
    app.cleanup().await;
}

/// Stops `app`, keeping its vhost and database (and its settings) for a restart.
async fn stop(mut app: TestApp) -> (TestVhost, TestDb, warren::Settings) {
    app.shutdown.cancel();
    if let Some(r) = app.running.take() {
        r.wait().await;
    }
    (app.vhost, app.db, app.settings)
}
