//! The operator console against real parts: sign-in and sessions; dead-letter operations
//! (confirm first, pages with progress, the per-queue lock, the audit log); and the whole
//! console in headless Chromium, driven by Playwright (`tests/console/run.mjs`), against a
//! running warren whose e-mail jobs really fail into the dead-letter queue (a refusing SMTP
//! receiver) and whose order saga really needs an intervention (a failing compensation).

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use chrono::Utc;
use entities::operator_actions;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use reqwest::{Method, header};
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren::{
    Role, Settings,
    config::{Scope, Secret, TokenSetting},
};

use crate::{
    dlq::{self, Flaky},
    helpers::{TestApp, eventually, spawn_app_with, spawn_worker_with},
    saga::{order, place, seed, spawn_saga, start_faulty_inventory, until_status},
    smtp::SmtpSink,
};

const ADMIN: &str = "console-admin-token-0123456789";
const READER: &str = "console-reader-token-0123456789";

/// An admin token named `ops` and a read-only token.
pub(crate) fn with_tokens(mut s: Settings) -> Settings {
    s.http.tokens = vec![
        TokenSetting::Scoped {
            token: Secret::new(ADMIN),
            scopes: vec![Scope::Publish, Scope::Admin],
            name: Some("ops".to_owned()),
        },
        TokenSetting::Scoped {
            token: Secret::new(READER),
            scopes: vec![Scope::Read],
            name: None,
        },
    ];
    s
}

/// Gives the test's own requests the admin token.
pub(crate) fn as_admin(app: &mut TestApp) {
    let mut headers = header::HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        header::HeaderValue::from_static("Bearer console-admin-token-0123456789"),
    );
    app.http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client");
}

/// A client that neither follows redirects nor keeps cookies.
fn browserless() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in at `base` and returns the session cookie (`warren_console=...`).
async fn sign_in(base: &str, token: &str, operator: &str) -> reqwest::Response {
    browserless()
        .post(format!("{base}/console/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("token", token)
                .append_pair("operator", operator)
                .finish(),
        )
        .send()
        .await
        .expect("sent")
}

fn cookie_of(r: &reqwest::Response) -> String {
    let set = r
        .headers()
        .get(header::SET_COOKIE)
        .expect("set-cookie")
        .to_str()
        .expect("ascii");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    set.split(';').next().expect("pair").to_owned()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// `GET path` with a cookie, and the console header when `console`.
async fn with_cookie(base: &str, path: &str, cookie: &str, console: bool) -> reqwest::Response {
    let mut req = browserless()
        .get(format!("{base}{path}"))
        .header(header::COOKIE, cookie);
    if console {
        req = req.header("x-warren-console", "1");
    }
    req.send().await.expect("sent")
}

#[tokio::test]
async fn the_console_needs_an_admin_sign_in_and_its_session_is_signed() {
    let app = spawn_app_with(with_tokens, |a| a).await;
    let base = app.base.clone();
    let get = |path: &'static str| {
        let base = base.clone();
        async move {
            browserless()
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("sent")
        }
    };

    // Signed out: the app redirects to sign-in, its script is refused, the sign-in page and
    // the style sheet are served.
    let r = get("/console").await;
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), "/console/login");
    assert_eq!(get("/console/app.js").await.status(), 401);
    let css = get("/console/style.css").await;
    assert_eq!(css.status(), 200);
    assert!(
        css.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .starts_with("text/css")
    );
    let login = get("/console/login").await;
    assert_eq!(login.status(), 200);
    assert!(login.text().await.expect("html").contains("name=\"token\""));

    // A read-only token and an unknown one are refused, with the reason on the page.
    let r = sign_in(&base, READER, "rita").await;
    assert_eq!(r.status(), 303);
    assert!(location(&r).contains("admin"), "{}", location(&r));
    assert!(r.headers().get(header::SET_COOKIE).is_none());
    let r = sign_in(&base, "not-a-token-at-all-0123456789", "mallory").await;
    assert!(location(&r).starts_with("/console/login?error="));
    assert!(r.headers().get(header::SET_COOKIE).is_none());

    // The admin token signs in.
    let r = sign_in(&base, ADMIN, "alice").await;
    assert_eq!(location(&r), "/console");
    let cookie = cookie_of(&r);
    let page = with_cookie(&base, "/console", &cookie, false).await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(
        with_cookie(&base, "/console/app.js", &cookie, false)
            .await
            .status(),
        200
    );

    // The cookie counts on the JSON API only with the console header (a cross-site request
    // cannot send it), and names the operator.
    assert_eq!(
        with_cookie(&base, "/v1/console/overview", &cookie, false)
            .await
            .status(),
        401
    );
    // The management API's figures of a new queue appear with its first statistics round.
    let overview = eventually(Duration::from_secs(20), "queue figures", || async {
        let r = with_cookie(&base, "/v1/console/overview", &cookie, true).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        v["queues"][0]["consumers"].is_u64().then_some(v)
    })
    .await;
    assert_eq!(overview["operator"], "alice (console, ops)");
    assert!(overview["queues"].as_array().expect("queues").len() >= 8);
    assert_eq!(overview["queues"][0]["consumers"], 0, "{overview}");
    assert!(overview["management_error"].is_null(), "{overview}");
    assert_eq!(overview["sagas"]["needs_intervention"], 0);

    // Forged sessions: a changed MAC, or another operator's name under the same MAC.
    let mut forged = cookie.clone();
    let last = forged.pop().expect("char");
    forged.push(if last == '0' { '1' } else { '0' });
    assert_eq!(
        with_cookie(&base, "/v1/console/overview", &forged, true)
            .await
            .status(),
        401
    );
    let renamed = cookie.replace(&hex::encode("alice"), &hex::encode("bobby"));
    assert_ne!(renamed, cookie);
    assert_eq!(
        with_cookie(&base, "/v1/console/overview", &renamed, true)
            .await
            .status(),
        401
    );

    // A second warren with the same tokens accepts the session: nothing is kept per process.
    let stop = CancellationToken::new();
    let other = app.start_extra(&[Role::Http], |a| a, stop.clone()).await;
    let other_base = format!("http://{}", other.http_addr.expect("http"));
    assert_eq!(
        with_cookie(&other_base, "/v1/console/overview", &cookie, true)
            .await
            .status(),
        200
    );

    // The read-only token cannot start an operation; sign-out clears the cookie.
    let r = browserless()
        .post(format!("{base}/v1/console/operations"))
        .bearer_auth(READER)
        .json(&json!({"action": "purge", "queue": "warren.email", "confirm": true}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 403);
    let r = browserless()
        .post(format!("{base}/console/logout"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()[header::SET_COOKIE]
            .to_str()
            .expect("cookie")
            .contains("Max-Age=0")
    );
    stop.cancel();
    other.wait().await;
    app.cleanup().await;
}

/// Publishes `n` messages straight into `dead_queue`, as parked messages (reason
/// `exhausted`, failed an hour ago), with confirms.
async fn park_raw(app: &TestApp, dead_queue: &str, n: usize) -> HashSet<Uuid> {
    let conn = Connection::connect(&app.vhost.amqp_url(), ConnectionProperties::default())
        .await
        .expect("amqp connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let failed_at = (Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    let mut ids = HashSet::new();
    let mut pending = Vec::new();
    for i in 0..n {
        let id = Uuid::now_v7();
        ids.insert(id);
        let mut headers = FieldTable::default();
        headers.insert(
            "x-warren-reason".into(),
            AMQPValue::LongString(LongString::from("exhausted")),
        );
        headers.insert(
            "x-warren-failed-at".into(),
            AMQPValue::LongString(LongString::from(failed_at.as_str())),
        );
        headers.insert("x-warren-attempt".into(), AMQPValue::LongLongInt(3));
        let props = BasicProperties::default()
            .with_message_id(id.to_string().into())
            .with_type("email.send".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let body = json!({"email": format!("{i}@example.com"), "subject": "s", "content": "c"});
        pending.push(
            ch.basic_publish(
                "".into(),
                dead_queue.into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                props,
            )
            .await
            .expect("publish"),
        );
    }
    for p in pending {
        assert!(p.await.expect("confirm").is_ack());
    }
    let _ = conn.close(200, "".into()).await;
    ids
}

/// Consumes `n` messages from `queue` (no ack) and returns their message ids, in order.
async fn take_ids(app: &TestApp, queue: &str, n: usize) -> Vec<Uuid> {
    use futures_util::StreamExt;
    let conn = Connection::connect(&app.vhost.amqp_url(), ConnectionProperties::default())
        .await
        .expect("amqp connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "take".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages in {queue}", ids.len()))
            .expect("a delivery")
            .expect("delivered");
        let id = crate::helpers::message_id(&d.properties)
            .parse()
            .expect("a uuid message id");
        ids.push(id);
    }
    let _ = conn.close(200, "".into()).await;
    ids
}

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .request(Method::POST, path)
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_replay_of_ten_thousand_messages_runs_in_pages_reports_progress_and_is_audited() {
    const N: usize = 10_000;
    let mut app = spawn_app_with(
        |s| {
            let mut s = with_tokens(s);
            s.console.page_size = 1_000;
            s
        },
        |a| a,
    )
    .await;
    as_admin(&mut app);
    let parked = park_raw(&app, "warren.email.dead", N).await;
    assert_eq!(parked.len(), N);
    app.settled(&[("warren.email", 0), ("warren.email.dead", N as u64)])
        .await;

    // Without the confirmation nothing moves; the answer says how many would.
    let (status, body) = post(
        &app,
        "/v1/console/operations",
        json!({"action": "replay", "queue": "warren.email"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "confirmation_required");
    assert_eq!(body["matched"], N);
    // A narrowing filter is counted, not guessed.
    let (_, body) = post(
        &app,
        "/v1/console/operations",
        json!({"action": "replay", "queue": "warren.email", "reason": "invalid"}),
    )
    .await;
    assert_eq!(body["matched"], 0, "{body}");
    let (status, body) = post(
        &app,
        "/v1/console/operations",
        json!({"action": "replay", "queue": "warren.email", "reason": "typo"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = post(
        &app,
        "/v1/console/operations",
        json!({"action": "replay", "queue": "warren.email", "confirm": true}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["operation"]["id"].as_str().expect("id").to_owned();
    assert_eq!(body["operation"]["matched"], N);
    assert_eq!(body["operation"]["actor"], "ops");

    // Progress: the recorded count grows page by page until done.
    let seen = std::sync::Mutex::new(Vec::<u64>::new());
    let done = eventually(Duration::from_secs(240), "operation done", || async {
        let op = app.get_json(&format!("/v1/console/operations/{id}")).await;
        let moved = op["moved"].as_u64().expect("moved");
        let mut seen = seen.lock().expect("lock");
        if seen.last() != Some(&moved) {
            seen.push(moved);
        }
        (op["status"] != "running").then_some(op)
    })
    .await;
    let seen = seen.into_inner().expect("lock");
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["moved"], N, "{done}; progress seen: {seen:?}");
    let took = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(done[field].as_str().expect("time")).expect("rfc3339")
    };
    println!(
        "replayed {N} parked messages in {} ms",
        (took("finished_at") - took("created_at")).num_milliseconds()
    );
    assert!(
        seen.iter().any(|m| *m > 0 && (*m as usize) < N),
        "progress seen between 0 and {N}: {seen:?}"
    );
    assert!(
        seen.iter().all(|m| m % 1_000 == 0),
        "progress is recorded per page of 1,000: {seen:?}"
    );
    // Copies the broker may hand back after the last page are swept in the background; then
    // the work queue (no consumer here) holds every replayed copy, and only those.
    app.settled(&[("warren.email", N as u64), ("warren.email.dead", 0)])
        .await;
    let replayed = take_ids(&app, "warren.email", N).await;
    let mut distinct = HashSet::new();
    let twice: Vec<Uuid> = replayed
        .iter()
        .filter(|id| !distinct.insert(**id))
        .copied()
        .collect();
    assert!(twice.is_empty(), "replayed twice: {twice:?}");
    let missing = parked.difference(&distinct).count();
    let foreign = distinct.difference(&parked).count();
    assert_eq!(
        (missing, foreign),
        (0, 0),
        "the replayed ids are the parked ones"
    );

    let audit = app.get_json("/v1/console/audit").await;
    let first = &audit["actions"][0];
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["action"], "dlq.replay");
    assert_eq!(first["target"], "warren.email");
    assert!(first.get("lock_key").is_none(), "{first}");
    app.cleanup().await;
}

#[tokio::test]
async fn two_operators_at_once_cannot_replay_a_message_twice() {
    const N: usize = 30;
    let flaky = Flaky::default();
    let mut app = spawn_worker_with(with_tokens, {
        let flaky = flaky.clone();
        move |a| a.consumer(flaky)
    })
    .await;
    as_admin(&mut app);
    let ids = dlq::park(&app, N).await;
    flaky.succeed.store(true, Ordering::SeqCst);

    // Another operation holds the queue's lock: refused, naming who.
    let db = app.db().await;
    let now = Utc::now();
    let held = operator_actions::ActiveModel {
        id: Set(Uuid::now_v7()),
        actor: Set("bob (console, ops)".into()),
        action: Set("dlq.purge".into()),
        target: Set(dlq::QUEUE.into()),
        detail: Set(json!({})),
        status: Set("running".into()),
        matched: Set(Some(5)),
        moved: Set(2),
        error: Set(None),
        lock_key: Set(Some(format!("dlq:{}", dlq::QUEUE))),
        created_at: Set(now),
        updated_at: Set(now),
        finished_at: Set(None),
    }
    .insert(&db)
    .await
    .expect("insert");
    let held_id = held.id;
    let start = json!({"action": "replay", "queue": dlq::QUEUE, "confirm": true});
    let (status, body) = post(&app, "/v1/console/operations", start.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "operation_running");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("bob"),
        "{body}"
    );
    let (status, _) = post(&app, &format!("/v1/dlq/{}/replay", dlq::QUEUE), json!({})).await;
    assert_eq!(status, 409, "the synchronous API takes the same lock");
    // Its process died: once it has not moved for two minutes its lock is taken over.
    let mut stale: operator_actions::ActiveModel = held.into();
    stale.updated_at = Set(now - chrono::TimeDelta::minutes(3));
    stale.update(&db).await.expect("update");

    // Two operators at once, and a replay that bypasses the lock (as the CLI does), race.
    let dlq_service = dlq::service(&app);
    let everything = warren::operator::dlq::Filter::default();
    let (a, b, direct) = tokio::join!(
        post(&app, "/v1/console/operations", start.clone()),
        post(&app, "/v1/console/operations", start.clone()),
        dlq_service.replay(dlq::QUEUE, &everything),
    );
    let direct = direct.expect("direct replay");
    let mut moved = direct;
    for (status, body) in [a, b] {
        match status {
            202 => {
                let id = body["operation"]["id"].as_str().expect("id").to_owned();
                let op = eventually(Duration::from_secs(30), "operation ends", || async {
                    let op = app.get_json(&format!("/v1/console/operations/{id}")).await;
                    (op["status"] != "running").then_some(op)
                })
                .await;
                assert_eq!(op["status"], "done", "{op}");
                moved += op["moved"].as_u64().expect("moved") as usize;
            }
            409 => assert_eq!(body["error"]["code"], "operation_running", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(moved, N, "every parked copy moved exactly once");
    eventually(
        Duration::from_secs(15),
        "each handled after replay",
        || async {
            ids.iter()
                .all(|id| flaky.seen_of(*id).len() >= 2)
                .then_some(())
        },
    )
    .await;
    // Settled (nothing unacked, parked or in a tier) before the ids are compared: a copy moved
    // twice would have been handled a third time by now.
    app.settled(&[(dlq::QUEUE, 0), (dlq::DEAD, 0)]).await;
    for id in &ids {
        assert_eq!(
            flaky.seen_of(*id),
            vec![1, 1],
            "{id}: failed once, handled once"
        );
    }
    assert_eq!(
        flaky.seen().len(),
        2 * N,
        "no message beyond the parked ones"
    );
    let abandoned = operator_actions::Entity::find_by_id(held_id)
        .one(&db)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(abandoned.status, "abandoned");
    assert_eq!(abandoned.lock_key, None);
    let _ = db.close().await;
    app.cleanup().await;
}

/// The first action in the audit log taken from the command line (`cli:<user>@<host>`).
async fn cli_action(app: &TestApp) -> Option<Value> {
    let audit = app.get_json("/v1/console/audit?limit=20").await;
    audit["actions"]
        .as_array()?
        .iter()
        .find(|a| a["actor"].as_str().is_some_and(|s| s.starts_with("cli:")))
        .cloned()
}

#[tokio::test]
async fn a_cli_replay_is_a_console_operation_with_its_lock_and_progress() {
    const N: usize = 1_500;
    let mut app = spawn_app_with(with_tokens, |a| a).await;
    as_admin(&mut app);
    let parked = park_raw(&app, "warren.email.dead", N).await;
    app.settled(&[("warren.email", 0), ("warren.email.dead", N as u64)])
        .await;

    // Watched through the console's audit and operation API while the CLI runs, in pages
    // of 100.
    let seen = std::sync::Mutex::new(Vec::<(String, u64)>::new());
    let watch = eventually(Duration::from_secs(120), "CLI operation done", || async {
        let op = cli_action(&app).await?;
        let id = op["id"].as_str().expect("id");
        let op = app.get_json(&format!("/v1/console/operations/{id}")).await;
        let state = (
            op["status"].as_str().expect("status").to_owned(),
            op["moved"].as_u64().expect("moved"),
        );
        let mut seen = seen.lock().expect("lock");
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        (op["status"] != "running").then_some(op)
    });
    let env = [("WARREN_CONSOLE__PAGE_SIZE", "100")];
    let ((code, out, err), done) = tokio::join!(
        dlq::cli_with(&app, &["dlq", "replay", "warren.email"], &env),
        watch
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("replayed {N} messages from warren.email.dead")),
        "{out}"
    );
    let id = done["id"].as_str().expect("id");
    assert!(err.contains(&format!("operation {id} started")), "{err}");
    assert!(
        err.contains("dlq.replay of warren.email: 100 replayed so far"),
        "{err}"
    );
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["action"], "dlq.replay");
    assert_eq!(done["target"], "warren.email");
    assert_eq!(done["moved"], N, "{done}");
    let seen = seen.into_inner().expect("lock");
    let running: Vec<u64> = seen
        .iter()
        .filter(|(status, _)| status == "running")
        .map(|(_, moved)| *moved)
        .collect();
    assert!(
        running.iter().any(|m| *m > 0 && (*m as usize) < N),
        "seen running with progress between 0 and {N}: {seen:?}"
    );
    assert!(
        running.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {seen:?}"
    );

    app.settled(&[("warren.email", N as u64), ("warren.email.dead", 0)])
        .await;
    let replayed: HashSet<Uuid> = take_ids(&app, "warren.email", N)
        .await
        .into_iter()
        .collect();
    assert_eq!(
        replayed, parked,
        "every parked id is back in the work queue"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_cli_replay_while_the_console_holds_the_queue_is_refused_and_moves_nothing() {
    const N: usize = 20;
    let mut app = spawn_app_with(with_tokens, |a| a).await;
    as_admin(&mut app);
    park_raw(&app, "warren.email.dead", N).await;
    app.settled(&[("warren.email", 0), ("warren.email.dead", N as u64)])
        .await;
    let before = dlq::parked_ids(&app, "warren.email").await;
    assert_eq!(before.len(), N);

    // A console operation on the queue, running and recently making progress.
    let db = app.db().await;
    let now = Utc::now();
    let held = operator_actions::ActiveModel {
        id: Set(Uuid::now_v7()),
        actor: Set("carol (console, ops)".into()),
        action: Set("dlq.purge".into()),
        target: Set("warren.email".into()),
        detail: Set(json!({})),
        status: Set("running".into()),
        matched: Set(Some(N as i64)),
        moved: Set(0),
        error: Set(None),
        lock_key: Set(Some("dlq:warren.email".into())),
        created_at: Set(now),
        updated_at: Set(now),
        finished_at: Set(None),
    }
    .insert(&db)
    .await
    .expect("insert");
    let _ = db.close().await;

    for args in [
        &["dlq", "replay", "warren.email"][..],
        &["dlq", "purge", "warren.email.dead", "--yes"][..],
    ] {
        let (code, out, err) = dlq::cli(&app, args).await;
        assert_ne!(code, 0, "{args:?} is refused: {out}{err}");
        assert!(
            err.contains("carol (console, ops)"),
            "names the holder: {err}"
        );
        assert!(
            err.contains(&held.id.to_string()),
            "names the holder's operation: {err}"
        );
        assert!(
            !out.contains("replayed") && !out.contains("purged"),
            "{out}"
        );
    }
    app.settled(&[("warren.email", 0), ("warren.email.dead", N as u64)])
        .await;
    assert_eq!(
        dlq::parked_ids(&app, "warren.email").await,
        before,
        "the parked ids are unchanged"
    );
    assert!(
        cli_action(&app).await.is_none(),
        "a refused CLI operation records nothing"
    );
    let op = app
        .get_json(&format!("/v1/console/operations/{}", held.id))
        .await;
    assert_eq!(op["status"], "running", "the holder is untouched: {op}");
    app.cleanup().await;
}

/// Where the browser test writes its screenshots: under `target/` (a test run leaves the work
/// tree as it was), or over the committed ones in `docs/console/` when
/// `WARREN_UPDATE_SCREENSHOTS=1` asks for a refresh.
fn screenshot_dir(root: &std::path::Path) -> PathBuf {
    if std::env::var("WARREN_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        root.join("docs/console")
    } else {
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root.join("target"), PathBuf::from)
            .join("console-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        dir
    }
}

/// Runs one phase of `tests/console/run.mjs` in headless Chromium; panics with its output
/// when it fails.
pub(crate) async fn browser(phase: &str, base: &str, env: &[(&str, String)]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/console");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix tests/console` (scripts/test.sh does)"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("run.mjs"))
        .arg(phase)
        .current_dir(&root)
        .env("CONSOLE_BASE", base)
        .env("CONSOLE_TOKEN", ADMIN)
        .env("SCREENSHOT_DIR", screenshot_dir(&root))
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("browser phase {phase} took over 180 s"))
        .expect("node runs");
    let text = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "browser phase {phase} failed ({}):\n{text}",
        out.status
    );
    println!("browser phase {phase}:\n{text}");
}

#[tokio::test]
async fn in_a_real_browser_dead_letters_are_replayed_and_a_failed_compensation_is_retried() {
    let sink = SmtpSink::start().await;
    // 451: a temporary refusal, so the job is retried through the delay tiers and parked
    // after its last attempt (reason `exhausted`).
    sink.refuse_all(Some(451));
    let url = sink.url();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut app = spawn_saga(
        &["orders", "payments", "notifications", "email"],
        move |mut s| {
            s = with_tokens(s);
            s.email.smtp_url = Secret::new(url);
            s.email.smtp_timeout_ms = 5_000;
            s.jobs.error_delay_ms = 1_000;
            s.saga.deadline_ms = 60_000;
            s
        },
        |a| a,
    )
    .await;
    as_admin(&mut app);
    let stop = CancellationToken::new();
    let inventory = start_faulty_inventory(&app, failing.clone(), stop.clone()).await;

    // Three e-mail jobs fail for real and are parked.
    const MAILS: usize = 3;
    for i in 0..MAILS {
        let (status, body) = post(
            &app,
            "/v1/jobs/email.send",
            json!({"email": format!("user{i}@example.com"), "subject": "Welcome", "content": "<p>Hi</p>"}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    eventually(Duration::from_secs(40), "e-mails parked", || async {
        (app.depth("warren.email.dead").await as usize == MAILS).then_some(())
    })
    .await;
    assert!(sink.mails().is_empty());
    sink.refuse_all(None);
    // The management API's figures of the new vhost's queues come with its next statistics
    // round; the overview (and its screenshot) should show them.
    eventually(Duration::from_secs(20), "queue figures", || async {
        let v = app.get_json("/v1/console/overview").await;
        v["queues"][0]["consumers"].is_u64().then_some(())
    })
    .await;
    browser(
        "dlq",
        &app.base,
        &[
            ("QUEUE", "warren.email".to_owned()),
            ("EXPECT_PARKED", MAILS.to_string()),
        ],
    )
    .await;
    let mails = eventually(Duration::from_secs(20), "replayed e-mails sent", || async {
        let m = sink.mails();
        (m.len() >= MAILS).then_some(m)
    })
    .await;
    app.settled(&[("warren.email", 0), ("warren.email.dead", 0)])
        .await;
    let mut to: Vec<String> = sink.mails().iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    let want: Vec<String> = (0..MAILS)
        .map(|i| format!("<user{i}@example.com>"))
        .collect();
    assert_eq!(to, want, "each replayed job sent once: {mails:?}");

    // An order whose payment is refused is compensated; restoring its stock fails until the
    // inventory is fixed, so the saga needs an intervention.
    seed(&app, json!({"SKU-1": 10}), json!({"u-1": 50})).await;
    let id = place(&app, &order("C-100", "u-1", "SKU-1", 4, 100)).await;
    until_status(&app, &id, "needs_intervention", Duration::from_secs(60)).await;
    failing.store(false, Ordering::SeqCst);
    browser("saga", &app.base, &[("ORDER_NO", "C-100".to_owned())]).await;
    let view = until_status(&app, &id, "compensated", Duration::from_secs(20)).await;
    let retried = view["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .any(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("retry by playwright (console, ops)"))
        });
    assert!(retried, "the operator's retry is in the timeline: {view}");

    // Both actions are in the audit log, by the operator who signed in.
    let audit = app.get_json("/v1/console/audit").await;
    let actions = audit["actions"].as_array().expect("actions");
    let by = |action: &str| {
        actions
            .iter()
            .find(|a| a["action"] == action)
            .unwrap_or_else(|| panic!("{action} audited: {audit}"))
            .clone()
    };
    let replay = by("dlq.replay");
    assert_eq!(replay["actor"], "playwright (console, ops)");
    assert_eq!(replay["moved"], MAILS);
    assert_eq!(
        by("intervention.retry")["actor"],
        "playwright (console, ops)"
    );

    stop.cancel();
    inventory.wait().await;
    app.cleanup().await;
}
