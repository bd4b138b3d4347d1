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
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
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
    scale::{IdCheck, Scrape, free_port, holding_work, scrape},
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
pub(crate) fn run(program: &str, args: &[&str]) {
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

/// A command line from the environment (`key`, words split on whitespace) or `default`.
fn command_from_env(key: &str, default: &str) -> Vec<String> {
    let words: Vec<String> = env_or(key, default)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(!words.is_empty(), "{key} names no command");
    words
}

/// Runs `command` (program and leading arguments) with `args` after them; returns stdout.
fn run_command(command: &[String], args: &[&str]) -> String {
    let (program, lead) = command.split_first().expect("a command");
    let mut all: Vec<&str> = lead.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    let out = Command::new(program)
        .args(&all)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} {all:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {all:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// rabbitmqctl against the chaos node: `WARREN_TEST_CHAOS_NODE_CTL` is the command before the
/// arguments (the RabbitMQ 4.0 run: `scripts/rabbitmq4.sh chaos4 ctl`), by default
/// `rabbitmqctl -n chaos@localhost`.
fn rabbitmqctl(args: &[&str]) {
    let ctl = command_from_env(
        "WARREN_TEST_CHAOS_NODE_CTL",
        &format!("rabbitmqctl -n {NODE}"),
    );
    run_command(&ctl, args);
}

/// The chaos node's OS pid: printed by the command `WARREN_TEST_CHAOS_PID_CMD` when set
/// (`scripts/rabbitmq4.sh chaos4 pid`), else read from the 3.10 node's pid file.
fn chaos_node_pid() -> String {
    match std::env::var("WARREN_TEST_CHAOS_PID_CMD") {
        Ok(_) => run_command(&command_from_env("WARREN_TEST_CHAOS_PID_CMD", ""), &[]),
        Err(_) => std::fs::read_to_string(format!("/var/lib/rabbitmq-chaos/mnesia/{NODE}.pid"))
            .expect("node pid file"),
    }
    .trim()
    .to_owned()
}

/// Starts the chaos node again after a kill: the command `WARREN_TEST_CHAOS_RESTART`
/// (`scripts/rabbitmq4.sh chaos4 start`), by default `scripts/chaos-services.sh rabbitmq`.
fn restart_chaos_node() {
    let default = format!("{} rabbitmq", repo_script("chaos-services.sh"));
    run_command(
        &command_from_env("WARREN_TEST_CHAOS_RESTART", &default),
        &[],
    );
}

pub(crate) fn repo_script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Settings for warren on the chaos broker and database: short timeouts, fast retries.
pub(crate) fn chaos_settings(mut s: Settings) -> Settings {
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
pub(crate) struct Ledger {
    /// Events answered 202, with where they were stored.
    pub(crate) accepted: Vec<(Uuid, String)>,
    /// Requests not answered 202 (503s, connection errors): not claimed, may or may not exist.
    pub(crate) refused: usize,
    /// What each refused request carried (`user_id`, `n`): an event with these may exist.
    pub(crate) refused_keys: HashSet<(String, u64)>,
    /// The slowest answer.
    pub(crate) slowest: Duration,
    /// The longest run of refusals one client met: from the start of its first refused request
    /// to the end of the next one answered 202.
    pub(crate) longest_refusal: Duration,
}

/// Posts `order.updated` events from `clients` concurrent clients (each its own aggregate)
/// until `stop`; counts accepted events in `progress`.
pub(crate) async fn load(
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
            let mut refused_since: Option<Instant> = None;
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
                            if let Some(since) = refused_since.take() {
                                l.longest_refusal = l.longest_refusal.max(since.elapsed());
                            }
                        }
                        None => {
                            refused_since.get_or_insert(started);
                            l.refused += 1;
                            l.refused_keys.insert((format!("u-{c}"), n));
                        }
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

/// One event id's rows in `event_log` or `notifications`.
#[derive(Debug, Clone)]
struct Handled {
    /// Rows holding the id.
    rows: usize,
    /// The event's name.
    name: String,
    /// The load's `user_id` and `n` in its data, when it has them.
    key: Option<(String, u64)>,
}

/// Per event id, its rows in `table` (`event_log` or `notifications`).
async fn handled(app: &TestApp, table: &str) -> HashMap<Uuid, Handled> {
    let db = app.db().await;
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT event_id::text, COUNT(*), MIN(event_name), MIN(data->>'user_id'), MIN(data->>'n') FROM {table} GROUP BY event_id"
            ),
        ))
        .await
        .expect("query");
    let _ = db.close().await;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get_by_index(0).expect("event_id");
            let n: i64 = r.try_get_by_index(1).expect("count");
            let name: String = r.try_get_by_index(2).expect("event_name");
            let user: Option<String> = r.try_get_by_index(3).expect("user_id");
            let seq: Option<String> = r.try_get_by_index(4).expect("n");
            (
                id.parse().expect("uuid"),
                Handled {
                    rows: usize::try_from(n).expect("count"),
                    name,
                    key: user.zip(seq.and_then(|s| s.parse().ok())),
                },
            )
        })
        .collect()
}

/// The load's events (`order.updated`) among `handled` against the accepted ids: missing,
/// extra and doubled ids (doubled over every event, the load's or not). An extra id is
/// allowed only as the event of a refused request (a request not answered 202 may still
/// have been stored), each refused request at most once; it is counted, not listed. Returns
/// the check and the number of such events.
fn judge(
    accepted: &HashSet<Uuid>,
    refused: &HashSet<(String, u64)>,
    handled: &HashMap<Uuid, Handled>,
) -> (IdCheck, usize) {
    let load: HashMap<Uuid, usize> = handled
        .iter()
        .filter(|(_, h)| h.name == "order.updated")
        .map(|(id, h)| (*id, h.rows))
        .collect();
    let mut check = IdCheck::new(accepted, &load);
    check.doubled.extend(
        handled
            .iter()
            .filter(|(_, h)| h.name != "order.updated" && h.rows > 1)
            .map(|(id, h)| (*id, h.rows)),
    );
    let mut used = HashSet::new();
    let mut of_refused = 0;
    check.extra.retain(|id| {
        let key = handled.get(id).and_then(|h| h.key.clone());
        match key {
            Some(k) if refused.contains(&k) && used.insert(k.clone()) => {
                of_refused += 1;
                false
            }
            _ => true,
        }
    });
    (check, of_refused)
}

/// Waits until every accepted event was handled and nothing more can arrive (the outbox
/// empty, and the work queues, their dead letters, every retry tier and the queues in `also`
/// settled), then compares identities: the event ids in `event_log` and in `notifications`
/// are exactly the accepted ones, each in one row. Returns the report line.
pub(crate) async fn check_ledger(
    app: &TestApp,
    name: &str,
    ledger: &Ledger,
    also: &[(&str, u64)],
) -> String {
    let accepted: HashSet<Uuid> = ledger.accepted.iter().map(|(id, _)| *id).collect();
    assert!(
        !accepted.is_empty(),
        "{name}: the load generator got no 202 at all"
    );
    assert_eq!(
        accepted.len(),
        ledger.accepted.len(),
        "{name}: the front answered one event id twice"
    );
    let list = accepted
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    let want = i64::try_from(accepted.len()).expect("fits");
    // Progress: wait (bounded) until each accepted event is in both tables, and say where
    // things stand when that does not happen. Not the verdict, which follows the settling.
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
            let queues = app.vhost.queue_figures().await.map_or_else(
                || "(no figures)".to_owned(),
                |f| {
                    f.iter()
                        .map(|(q, f)| format!("{q}={}+{}", f.ready, f.unacked))
                        .collect::<Vec<_>>()
                        .join(" ")
                },
            );
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
                "{name}: after 120 s, {audit} audit rows and {notified} notified events of {want} accepted; outbox {outbox}, failed_jobs {failed}, queues (ready+unacked) {queues}; database sessions:\n{}",
                sessions.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await; // bounded poll
    }
    // Settle: the outbox empty (no request is running, so it only shrinks), then nothing
    // ready, unacked, waiting in a retry tier or dead-lettered, for a quiet period.
    eventually(
        Duration::from_secs(60),
        &format!("{name}: outbox empty"),
        || async { (count(app, "SELECT COUNT(*) FROM event_outbox").await == 0).then_some(()) },
    )
    .await;
    let mut queues = vec![("warren.audit", 0), ("warren.notifications", 0)];
    queues.extend_from_slice(also);
    app.settled(&queues).await;
    // The verdict, by identity.
    let mut report = Vec::new();
    let mut of_refused = Vec::new();
    for table in ["event_log", "notifications"] {
        let (check, extra) = judge(&accepted, &ledger.refused_keys, &handled(app, table).await);
        if !check.is_exact() {
            report.push(format!("{table}: {}", check.summary()));
        }
        of_refused.push(format!("{table} {extra}"));
    }
    assert!(
        report.is_empty(),
        "{name}: handled events against the {} accepted ids ({} requests refused): {}",
        accepted.len(),
        ledger.refused,
        report.join("; ")
    );
    let outbox = ledger
        .accepted
        .iter()
        .filter(|(_, s)| s == "outbox")
        .count();
    let line = format!(
        "LEDGER {name}: requests {} accepted {} (via outbox {outbox}) refused {} | handled: audit {want} notifications {want}, the accepted ids exactly | lost 0 doubled 0 | events of refused requests: {} | slowest answer {:.2}s, longest refusal {:.2}s",
        ledger.accepted.len() + ledger.refused,
        ledger.accepted.len(),
        ledger.refused,
        of_refused.join(", "),
        ledger.slowest.as_secs_f64(),
        ledger.longest_refusal.as_secs_f64()
    );
    println!("{line}");
    line
}

/// Runs load, waits for 100 accepted events, injects `fault` (which also recovers), waits
/// for 100 more, stops the load and checks the ledger.
async fn scenario<F>(app: &TestApp, name: &str, fault: F) -> Ledger
where
    F: AsyncFnOnce(&TestApp),
{
    scenario_settling(app, name, &[], fault).await
}

/// [`scenario`], the ledger check also waiting for the queues in `also` to settle.
async fn scenario_settling<F>(app: &TestApp, name: &str, also: &[(&str, u64)], fault: F) -> Ledger
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
    check_ledger(app, name, &ledger, also).await;
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
        run("kill", &["-9", &chaos_node_pid()]);
        restart_chaos_node();
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

/// Polls `check` every 50 ms for at most `limit`, each check included; `None` when it never
/// held (for a fault that may not have landed and is tried again).
pub(crate) async fn within<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(Some(v)) = tokio::time::timeout_at(deadline, check()).await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages the chaos node redelivered to consumers, node-wide and exact (its global
/// counters on the Prometheus endpoint, no statistics lag). The node serves one test at a
/// time, so the count is this test's.
async fn node_redelivered() -> Option<u64> {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", chaos_prometheus()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut sum = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("rabbitmq_global_messages_redelivered_total{") {
            let v: f64 = rest.rsplit_once(' ')?.1.trim().parse().ok()?;
            *sum.get_or_insert(0) += v as u64;
        }
    }
    sum
}

#[tokio::test]
async fn workers_sigkilled_again_and_again_mid_load_lose_nothing() {
    const KILLS: usize = 6;
    const QUEUES: [&str; 2] = ["warren.audit", "warren.notifications"];
    // The front in-process; the consumers in two worker processes, killed in turn, each with
    // a metrics listener of its own, so the test sees what it holds.
    let app = spawn_chaos(&[Role::Http]).await;
    let spawn_worker = || {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["worker", "--modules", "audit,notifications"])
            .env("WARREN_AMQP__URL", app.vhost.amqp_url())
            .env("WARREN_AMQP__MANAGEMENT_URL", chaos_management())
            .env("WARREN_DATABASE__URL", &app.db.url)
            .env("WARREN_DATABASE__MAX_CONNECTIONS", "4")
            .env("WARREN_METRICS__ADDR", format!("127.0.0.1:{port}"))
            .env("WARREN_JOBS__FAILURE_DELAY_MS", "1000")
            .env("WARREN_JOBS__ERROR_DELAY_MS", "2000")
            .env("WARREN_LOG__FILTER", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts");
        (KillOnDrop(child), port)
    };
    let workers = Mutex::new(vec![spawn_worker(), spawn_worker()]);
    // Per kill that landed: the victim's handlers at the kill, and the redeliveries it caused.
    let mut landed: Vec<(u64, u64)> = Vec::new();
    let mut tries = 0;
    scenario(&app, "workers SIGKILLed repeatedly", async |app| {
        while landed.len() < KILLS {
            assert!(
                tries < 2 * KILLS,
                "only {} of {tries} kills landed on work in flight: {landed:?}",
                landed.len()
            );
            let i = tries % 2;
            tries += 1;
            let (victim, other) = {
                let w = workers.lock().expect("lock");
                (w[i].1, w[1 - i].1)
            };
            let requeued = |port: u16| async move {
                scrape(&app.http, port)
                    .await
                    .map_or(0, |s| s.requeued(&QUEUES))
            };
            let before = node_redelivered().await.expect("the chaos node's counters");
            let (other_before, victim_before) = (requeued(other).await, requeued(victim).await);
            // Kill while a handler of the victim holds a message.
            let at_kill: Scrape =
                holding_work(&app.http, victim, &QUEUES, Duration::from_secs(30), |_| {
                    true
                })
                .await;
            {
                let mut w = workers.lock().expect("lock");
                let _ = w[i].0.0.kill(); // SIGKILL
                let _ = w[i].0.0.wait();
                w[i] = spawn_worker();
            }
            // The messages it held come back redelivered: the node's count grows past the
            // requeues the runners made meanwhile, and then holds for 250 ms (so the next
            // kill's count starts after this one's).
            let victim_requeued = at_kill.requeued(&QUEUES).saturating_sub(victim_before);
            let last: std::cell::Cell<Option<(u64, Instant)>> = std::cell::Cell::new(None);
            let caused = within(Duration::from_secs(5), || {
                let last = &last;
                async move {
                    let now = node_redelivered().await?;
                    let requeues =
                        requeued(other).await.saturating_sub(other_before) + victim_requeued;
                    let caused = now.saturating_sub(before).saturating_sub(requeues);
                    match last.get() {
                        Some((n, since)) if n == caused => (caused > 0
                            && since.elapsed() >= Duration::from_millis(250))
                        .then_some(caused),
                        _ => {
                            last.set(Some((caused, Instant::now())));
                            None
                        }
                    }
                }
            })
            .await;
            let held: u64 = QUEUES.iter().map(|q| at_kill.in_flight(q)).sum();
            match caused {
                Some(n) => landed.push((held, n)),
                None => eprintln!("a kill with {held} in flight caused no redelivery; again"),
            }
        }
    })
    .await;
    eprintln!(
        "workers SIGKILLed: {tries} kills, {} landed (in flight at the kill, redeliveries): {landed:?}",
        landed.len()
    );
    drop(workers);
    app.cleanup().await;
}

/// What the copier of [`every_message_delivered_twice_is_handled_once`] did.
#[derive(Debug, Default)]
struct Copies {
    /// Per work queue, the message ids whose copy the broker confirmed into it (acked, not
    /// returned), with the message's type (the event name).
    into: BTreeMap<&'static str, HashMap<Uuid, String>>,
    /// Everything that went wrong.
    failures: Vec<String>,
}

#[tokio::test]
async fn every_message_delivered_twice_is_handled_once() {
    use futures_util::StreamExt;
    use lapin::{
        Confirmation,
        options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions},
        types::{AMQPValue, FieldTable},
    };
    const QUEUES: [&str; 2] = ["warren.audit", "warren.notifications"];
    let app = spawn_chaos(&[Role::Http, Role::Worker]).await;
    // A tap queue sees every event; a copier republishes each one, same properties and
    // message id, straight into the two work queues: every message arrives twice. Each copy
    // is mandatory and confirmed; the tapped message is acked only once both copies are in,
    // and dead-lettered to chaos.tap.dead when one is not (the settling then fails).
    let conn = lapin::Connection::connect(&app.vhost.amqp_url(), Default::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "chaos.tap.dead".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .expect("tap's dead letters");
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("chaos.tap.dead".into()),
    );
    ch.queue_declare("chaos.tap".into(), Default::default(), args)
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
    ch.basic_qos(64, BasicQosOptions::default())
        .await
        .expect("prefetch");
    let mut tap = ch
        .basic_consume(
            "chaos.tap".into(),
            "copier".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .expect("consume tap");
    let copies = Arc::new(Mutex::new(Copies::default()));
    let copier = {
        let out = conn.create_channel().await.expect("channel");
        out.confirm_select(Default::default())
            .await
            .expect("confirms on the copier's channel");
        let copies = copies.clone();
        tokio::spawn(async move {
            let fail = |what: String| copies.lock().expect("lock").failures.push(what);
            while let Some(d) = tap.next().await {
                let d = match d {
                    Ok(d) => d,
                    Err(e) => {
                        fail(format!("tap consumer: {e}"));
                        return;
                    }
                };
                let id = d
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|m| m.as_str().parse::<Uuid>().ok());
                let kind = d
                    .properties
                    .kind()
                    .as_ref()
                    .map_or_else(String::new, |k| k.as_str().to_owned());
                let mut ok = true;
                let Some(id) = id else {
                    fail("a tapped message without a message id".to_owned());
                    let _ = d.nack(BasicNackOptions::default()).await;
                    continue;
                };
                let mut pending = Vec::new();
                for q in QUEUES {
                    let publish = out
                        .basic_publish(
                            "".into(),
                            q.into(),
                            BasicPublishOptions {
                                mandatory: true,
                                immediate: false,
                            },
                            &d.data,
                            d.properties.clone(),
                        )
                        .await;
                    match publish {
                        Ok(confirm) => pending.push((q, confirm)),
                        Err(e) => {
                            ok = false;
                            fail(format!("copy of {id} into {q}: publish: {e}"));
                        }
                    }
                }
                for (q, confirm) in pending {
                    match confirm.await {
                        Ok(Confirmation::Ack(None)) => {
                            copies
                                .lock()
                                .expect("lock")
                                .into
                                .entry(q)
                                .or_default()
                                .insert(id, kind.clone());
                        }
                        Ok(Confirmation::Ack(Some(returned))) => {
                            ok = false;
                            fail(format!(
                                "copy of {id} into {q} returned unroutable: {returned:?}"
                            ));
                        }
                        Ok(other) => {
                            ok = false;
                            fail(format!("copy of {id} into {q} not confirmed: {other:?}"));
                        }
                        Err(e) => {
                            ok = false;
                            fail(format!("copy of {id} into {q}: confirm: {e}"));
                        }
                    }
                }
                let settled = if ok {
                    d.ack(BasicAckOptions::default()).await
                } else {
                    d.nack(BasicNackOptions::default()).await // requeue: false: dead-lettered
                };
                if let Err(e) = settled {
                    fail(format!("settling the tapped {id}: {e}"));
                }
            }
            fail("the tap consumer ended".to_owned());
        })
    };
    // The ledger check waits for the tap to settle too: no tapped message is waiting or
    // being copied, so every copy is in a work queue, and those are settled as well.
    let ledger = scenario_settling(
        &app,
        "every message delivered twice",
        &[("chaos.tap", 0)],
        async |_| {},
    )
    .await;
    copier.abort();
    let copies = std::mem::take(&mut *copies.lock().expect("lock"));
    assert!(
        copies.failures.is_empty(),
        "the copier failed: {:?}",
        copies.failures
    );
    let accepted: HashSet<Uuid> = ledger.accepted.iter().map(|(id, _)| *id).collect();
    for q in QUEUES {
        let copied = copies.into.get(q).cloned().unwrap_or_default();
        let missing: Vec<&Uuid> = accepted
            .iter()
            .filter(|id| !copied.contains_key(id))
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} accepted events were not copied into {q}: {:?}",
            missing.len(),
            accepted.len(),
            missing.iter().take(10).collect::<Vec<_>>()
        );
    }
    // The inbox dropped the second delivery of every event the queue had twice (the ones its
    // bindings route there, order.* and user.*); the ledger showed the effect once each.
    let twice = copies.into.get("warren.notifications").map_or(0, |c| {
        c.values()
            .filter(|k| k.starts_with("order.") || k.starts_with("user."))
            .count()
    }) as u64;
    let metrics = Scrape(app.running.as_ref().expect("running").metrics.render());
    let dropped = metrics.jobs("warren.notifications", "duplicate");
    assert!(
        dropped >= twice,
        "the inbox dropped {dropped} duplicates on warren.notifications; {twice} events arrived twice"
    );
    println!(
        "COPIES: {} events copied into warren.audit and {} into warren.notifications, every copy confirmed; the inbox dropped {dropped}",
        copies.into.get("warren.audit").map_or(0, HashMap::len),
        copies
            .into
            .get("warren.notifications")
            .map_or(0, HashMap::len),
    );
    let _ = conn.close(200, "".into()).await;
    app.cleanup().await;
}

#[test]
fn the_ledger_judges_by_identity() {
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let accepted: HashSet<Uuid> = ids.iter().copied().collect();
    let row = |rows: usize, name: &str, key: Option<(&str, u64)>| Handled {
        rows,
        name: name.to_owned(),
        key: key.map(|(u, n)| (u.to_owned(), n)),
    };
    let refused: HashSet<(String, u64)> = [("u-0".to_owned(), 7)].into();
    // Exact, plus another event (not the load's) and the event of a refused request.
    let mut handled: HashMap<Uuid, Handled> = ids
        .iter()
        .map(|id| (*id, row(1, "order.updated", None)))
        .collect();
    handled.insert(Uuid::now_v7(), row(1, "system.slow_request", None));
    handled.insert(Uuid::now_v7(), row(1, "order.updated", Some(("u-0", 7))));
    let (check, of_refused) = judge(&accepted, &refused, &handled);
    assert!(check.is_exact(), "{}", check.summary());
    assert_eq!(of_refused, 1);
    // A second event for the same refused request is a phantom.
    let phantom = Uuid::now_v7();
    handled.insert(phantom, row(1, "order.updated", Some(("u-0", 7))));
    let (check, _) = judge(&accepted, &refused, &handled);
    assert_eq!(check.extra.len(), 1, "{}", check.summary());
    handled.remove(&phantom);
    // One lost and one doubled: as many rows as accepted ids, and not exact.
    handled.remove(&ids[0]);
    handled.insert(ids[1], row(2, "order.updated", None));
    let (check, _) = judge(&accepted, &refused, &handled);
    assert_eq!(check.missing, vec![ids[0]]);
    assert_eq!(check.doubled, vec![(ids[1], 2)]);
    // A doubled event of another name counts too.
    let other = Uuid::now_v7();
    handled.insert(other, row(2, "system.slow_request", None));
    let (check, _) = judge(&accepted, &refused, &handled);
    assert!(check.doubled.contains(&(other, 2)));
}
