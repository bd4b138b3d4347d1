//! The chaos suite: load through the HTTP front while faults hit the broker, the database and
//! the workers. Every run ends with a ledger check: each event the front accepted (202, from
//! the broker or the outbox) was handled exactly once in effect, counted in the audit module's
//! `event_log` and the notifications module's rows against what the load generator was told.
//!
//! It runs on its own RabbitMQ node and PostgreSQL cluster (`scripts/chaos-services.sh`:
//! `chaos@localhost` on 5673/15673, cluster `15/chaos` on 5433), one test at a time (nextest
//! test group `chaos`), so stopping, killing or alarming them hurts no other test. Each run
//! prints a `LEDGER` line (see `docs/chaos.md`).

use std::{
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren::{Role, Settings};

use crate::{
    helpers::{TestApp, TestDb, TestVhost, eventually, spawn_roles_in},
    reliability::KillOnDrop,
};

const NODE: &str = "chaos@localhost";

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn chaos_amqp() -> String {
    env_or(
        "WARREN_TEST_CHAOS_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5673",
    )
}

fn chaos_management() -> String {
    env_or(
        "WARREN_TEST_CHAOS_MANAGEMENT_URL",
        "http://guest:guest@127.0.0.1:15673",
    )
}

fn chaos_prometheus() -> String {
    env_or("WARREN_TEST_CHAOS_PROMETHEUS_URL", "http://127.0.0.1:15693")
}

fn chaos_pg() -> String {
    env_or(
        "WARREN_TEST_CHAOS_DATABASE_URL",
        "postgres://warren:warren@127.0.0.1:5433",
    )
}

/// Runs a command to completion and asserts it succeeded.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rabbitmqctl(args: &[&str]) {
    let mut all = vec!["-n", NODE];
    all.extend_from_slice(args);
    run("rabbitmqctl", &all);
}

fn repo_script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Settings for warren on the chaos broker and database: short timeouts, fast retries.
fn chaos_settings(mut s: Settings) -> Settings {
    s.amqp.management_url = warren::config::Secret::new(chaos_management());
    s.amqp.connect_timeout_ms = 1_000;
    s.amqp.publish_timeout_ms = 2_000;
    s.database.max_connections = 6;
    s.outbox.relay_ms = 200;
    s.jobs.failure_delay_ms = 1_000;
    s.jobs.error_delay_ms = 2_000;
    s.jobs.shutdown_grace_ms = 3_000;
    s
}

/// Starts warren with `roles` (and the audit and notifications modules when it works) on a
/// fresh vhost of the chaos node and a fresh database of the chaos cluster.
async fn spawn_chaos(roles: &[Role]) -> TestApp {
    let vhost = TestVhost::new_on(&chaos_management(), &chaos_amqp(), &chaos_prometheus()).await;
    let db = TestDb::new_on(&chaos_pg()).await;
    let mut app = spawn_roles_in(vhost, db, roles, chaos_settings, |a| {
        a.modules(["audit", "notifications"])
    })
    .await;
    app.http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    app
}

/// What the load generator was told.
#[derive(Debug, Default)]
struct Ledger {
    /// Events answered 202, with where they were stored.
    accepted: Vec<(Uuid, String)>,
    /// Requests not answered 202 (503s, connection errors): not claimed, may or may not exist.
    refused: usize,
    /// The slowest answer.
    slowest: Duration,
}

/// Posts `order.updated` events from `clients` concurrent clients (each its own aggregate)
/// until `stop`; counts accepted events in `progress`.
async fn load(
    app: &TestApp,
    clients: usize,
    stop: CancellationToken,
    progress: Arc<AtomicUsize>,
) -> Ledger {
    let ledger = Mutex::new(Ledger::default());
    let one = |c: usize| {
        let (stop, progress, ledger) = (stop.clone(), progress.clone(), &ledger);
        async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                let started = Instant::now();
                let r = app
                    .http
                    .post(format!(
                        "{}/v1/events/order.updated?aggregate_id=client-{c}",
                        app.base
                    ))
                    .json(&json!({"n": n, "user_id": format!("u-{c}")}))
                    .send()
                    .await;
                let took = started.elapsed();
                let answer = match r {
                    Ok(r) if r.status() == 202 => r.json::<Value>().await.ok(),
                    _ => None,
                };
                {
                    let mut l = ledger.lock().expect("lock");
                    l.slowest = l.slowest.max(took);
                    match answer.as_ref().and_then(|b| {
                        Some((
                            b["event_id"].as_str()?.parse::<Uuid>().ok()?,
                            b["stored"].as_str()?.to_owned(),
                        ))
                    }) {
                        Some(acc) => {
                            l.accepted.push(acc);
                            progress.fetch_add(1, Ordering::SeqCst);
                        }
                        None => l.refused += 1,
                    }
                }
                // Pacing: a steady trickle, so the faults land mid-load.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    futures_util::future::join_all((0..clients).map(one)).await;
    ledger.into_inner().expect("lock")
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let db = app.db().await;
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .expect("query")
        .expect("a row");
    let n: i64 = row.try_get_by_index(0).expect("count");
    let _ = db.close().await;
    n
}

/// Waits until every accepted event was handled, then checks that none was handled twice and
/// none is missing. Returns the report line.
async fn check_ledger(app: &TestApp, name: &str, ledger: &Ledger) -> String {
    let ids: Vec<String> = ledger
        .accepted
        .iter()
        .map(|(id, _)| format!("'{id}'"))
        .collect();
    assert!(
        !ids.is_empty(),
        "{name}: the load generator got no 202 at all"
    );
    let list = ids.join(",");
    let want = i64::try_from(ids.len()).expect("fits");
    let audit_sql = format!("SELECT COUNT(*) FROM event_log WHERE event_id IN ({list})");
    let notif_sql =
        format!("SELECT COUNT(DISTINCT event_id) FROM notifications WHERE event_id IN ({list})");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (audit, notified) = (count(app, &audit_sql).await, count(app, &notif_sql).await);
        if audit == want && notified == want {
            break;
        }
        if Instant::now() > deadline {
            let outbox = count(app, "SELECT COUNT(*) FROM event_outbox").await;
            let failed = count(app, "SELECT COUNT(*) FROM failed_jobs").await;
            let mut depths = Vec::new();
            for q in [
                "warren.audit",
                "warren.notifications",
                "warren.audit.dead",
                "warren.notifications.dead",
                "warren.retry.60s",
                "warren.retry.120s",
            ] {
                depths.push(format!("{q}={}", app.depth(q).await));
            }
            let db = app.db().await;
            let sessions: Vec<String> = db
                .query_all_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT coalesce(state, '') || ' / ' || coalesce(wait_event_type, '') || ':' || coalesce(wait_event, '') || ' / ' || coalesce(extract(epoch from now() - xact_start)::text, '-') || ' s / ' || left(query, 90) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()".to_owned(),
                ))
                .await
                .map(|rows| rows.iter().filter_map(|r| r.try_get_by_index::<String>(0).ok()).collect())
                .unwrap_or_default();
            panic!(
                "{name}: after 120 s, {audit} audit rows and {notified} notified events of {want} accepted; outbox {outbox}, failed_jobs {failed}, queues {}; database sessions:\n{}",
                depths.join(" "),
                sessions.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await; // bounded poll
    }
    // Settle: nothing left anywhere that could still add a row.
    eventually(
        Duration::from_secs(60),
        &format!("{name}: queues and outbox empty"),
        || async {
            let outbox = count(app, "SELECT COUNT(*) FROM event_outbox").await;
            let mut queued = 0;
            for q in ["warren.audit", "warren.notifications"] {
                queued += app.depth(q).await;
            }
            (outbox == 0 && queued == 0).then_some(())
        },
    )
    .await;
    let doubled = count(
        app,
        "SELECT COUNT(*) FROM (SELECT event_id FROM notifications GROUP BY event_id HAVING COUNT(*) > 1) d",
    )
    .await;
    assert_eq!(doubled, 0, "{name}: events handled twice");
    let audit = count(app, &audit_sql).await;
    let notifications = count(app, &notif_sql).await;
    assert_eq!(audit, want, "{name}: audit rows against accepted events");
    assert_eq!(
        notifications, want,
        "{name}: notifications against accepted events"
    );
    let outbox = ledger
        .accepted
        .iter()
        .filter(|(_, s)| s == "outbox")
        .count();
    let line = format!(
        "LEDGER {name}: requests {} accepted {} (via outbox {outbox}) refused {} | handled: audit {audit} notifications {notifications} | lost 0 doubled 0 | slowest answer {:.2}s",
        ledger.accepted.len() + ledger.refused,
        ledger.accepted.len(),
        ledger.refused,
        ledger.slowest.as_secs_f64()
    );
    println!("{line}");
    line
}

/// Runs load, waits for `before` accepted events, injects `fault` (which also recovers), waits
/// for `after` more, stops the load and checks the ledger.
async fn scenario<F>(app: &TestApp, name: &str, fault: F) -> Ledger
where
    F: AsyncFnOnce(&TestApp),
{
    let stop = CancellationToken::new();
    let progress = Arc::new(AtomicUsize::new(0));
    let gen_stop = stop.clone();
    let gen_progress = progress.clone();
    let load_run = load(app, 4, gen_stop, gen_progress);
    let driver = async {
        let at_least = |n: usize| {
            let progress = progress.clone();
            async move {
                eventually(
                    Duration::from_secs(60),
                    &format!("{n} events accepted"),
                    || async { (progress.load(Ordering::SeqCst) >= n).then_some(()) },
                )
                .await;
            }
        };
        at_least(100).await;
        fault(app).await;
        let now = progress.load(Ordering::SeqCst);
        at_least(now + 100).await;
        stop.cancel();
    };
    let (ledger, ()) = tokio::join!(load_run, driver);
    check_ledger(app, name, &ledger).await;
    ledger
}

#[tokio::test]
async fn broker_stop_app_then_start_app_mid_load_loses_nothing() {
    let app = spawn_chaos(&[Role::Http, Role::Worker]).await;
    let ledger = scenario(&app, "rabbitmqctl stop_app / start_app", async |_| {
        rabbitmqctl(&["stop_app"]);
        tokio::time::sleep(Duration::from_secs(3)).await; // the outage
        rabbitmqctl(&["start_app"]);
    })
    .await;
    assert!(
        ledger.accepted.iter().any(|(_, s)| s == "outbox"),
        "the outage sent some events through the outbox"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn broker_process_killed_and_restarted_mid_load_loses_nothing() {
    let app = spawn_chaos(&[Role::Http, Role::Worker]).await;
    scenario(&app, "RabbitMQ SIGKILL and restart", async |_| {
        let pid = std::fs::read_to_string(format!("/var/lib/rabbitmq-chaos/mnesia/{NODE}.pid"))
            .expect("node pid file");
        run("kill", &["-9", pid.trim()]);
        run(&repo_script("chaos-services.sh"), &["rabbitmq"]);
    })
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn postgres_restarted_mid_load_loses_nothing() {
    let app = spawn_chaos(&[Role::Http, Role::Worker]).await;
    scenario(&app, "PostgreSQL restart", async |_| {
        run("pg_ctlcluster", &["15", "chaos", "restart", "-m", "fast"]);
    })
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn connections_closed_through_the_management_api_mid_load_lose_nothing() {
    let app = spawn_chaos(&[Role::Http, Role::Worker]).await;
    scenario(&app, "connections closed (management API)", async |app| {
        for _ in 0..3 {
            // The management API lists connections a few seconds after they open.
            let names = eventually(
                Duration::from_secs(30),
                "warren's connections listed",
                || async {
                    let names = crate::reliability::connection_names(app).await;
                    (!names.is_empty()).then_some(names)
                },
            )
            .await;
            crate::reliability::close_connections(app, &names).await;
            tokio::time::sleep(Duration::from_secs(1)).await; // between cuts
        }
    })
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn memory_alarm_blocks_publishers_nothing_hangs_and_nothing_is_lost() {
    let app = spawn_chaos(&[Role::Http, Role::Worker]).await;
    let ledger = scenario(&app, "memory alarm", async |_| {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0001"]);
        tokio::time::sleep(Duration::from_secs(4)).await; // the alarm
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.6"]);
    })
    .await;
    assert!(
        ledger.accepted.iter().any(|(_, s)| s == "outbox"),
        "the blocked broker sent some events through the outbox"
    );
    // Nothing hangs: the slowest answer is bounded by the publish timeout, not the alarm.
    let bound =
        Duration::from_millis(app.settings.amqp.publish_timeout_ms) + Duration::from_secs(3);
    assert!(
        ledger.slowest < bound,
        "an answer took {:?} under the alarm (bound {bound:?})",
        ledger.slowest
    );
    app.cleanup().await;
}

#[tokio::test]
async fn workers_sigkilled_again_and_again_mid_load_lose_nothing() {
    // The front in-process; the consumers in two worker processes, killed in turn.
    let app = spawn_chaos(&[Role::Http]).await;
    let spawn_worker = |_slot: usize| {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(["worker", "--modules", "audit,notifications"])
                .env("WARREN_AMQP__URL", app.vhost.amqp_url())
                .env("WARREN_AMQP__MANAGEMENT_URL", chaos_management())
                .env("WARREN_DATABASE__URL", &app.db.url)
                .env("WARREN_DATABASE__MAX_CONNECTIONS", "4")
                .env("WARREN_METRICS__ADDR", "127.0.0.1:0")
                .env("WARREN_JOBS__FAILURE_DELAY_MS", "1000")
                .env("WARREN_JOBS__ERROR_DELAY_MS", "2000")
                .env("WARREN_LOG__FILTER", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("worker starts"),
        )
    };
    let workers = Mutex::new(vec![spawn_worker(0), spawn_worker(1)]);
    let mut kills = 0;
    scenario(&app, "workers SIGKILLed repeatedly", async |_| {
        for round in 0..6 {
            let i = round % 2;
            {
                let mut w = workers.lock().expect("lock");
                let _ = w[i].0.kill(); // SIGKILL
                let _ = w[i].0.wait();
                w[i] = spawn_worker(i);
            }
            kills += 1;
            tokio::time::sleep(Duration::from_millis(700)).await; // between kills
        }
    })
    .await;
    assert_eq!(kills, 6);
    drop(workers);
    app.cleanup().await;
}

#[tokio::test]
async fn every_message_delivered_twice_is_handled_once() {
    let app = spawn_chaos(&[Role::Http, Role::Worker]).await;
    // A tap queue sees every event; a copier republishes each one, same properties and
    // message id, straight into the two work queues: every message arrives twice.
    let conn = lapin::Connection::connect(&app.vhost.amqp_url(), Default::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("chaos.tap".into(), Default::default(), Default::default())
        .await
        .expect("tap queue");
    ch.queue_bind(
        "chaos.tap".into(),
        "warren.events".into(),
        "#".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .expect("bind tap");
    let mut tap = ch
        .basic_consume(
            "chaos.tap".into(),
            "copier".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("consume tap");
    let copied = Arc::new(AtomicUsize::new(0));
    let copier = {
        let ch = conn.create_channel().await.expect("channel");
        let copied = copied.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(Ok(d)) = tap.next().await {
                for q in ["warren.audit", "warren.notifications"] {
                    let _ = ch
                        .basic_publish(
                            "".into(),
                            q.into(),
                            Default::default(),
                            &d.data,
                            d.properties.clone(),
                        )
                        .await;
                }
                copied.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let ledger = scenario(&app, "every message delivered twice", async |_| {}).await;
    assert!(
        copied.load(Ordering::SeqCst) >= ledger.accepted.len(),
        "every event was duplicated"
    );
    copier.abort();
    let _ = conn.close(200, "".into()).await;
    app.cleanup().await;
}
