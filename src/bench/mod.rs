//! `warren bench ...`: throughput on a real broker and database, each in a scratch vhost.
//! `jobs`, `sagas`, `scale` measure warren; [`baseline`] holds the ceilings it is measured
//! against (a bare warp+lapin publish loop, a raw lapin publisher and consumer),
//! [`retry_delay`] the accuracy of broker-side retry delays, [`smtp_sink`] the mail receiver
//! of the synchronous-mode benchmark. `scripts/bench-suite.sh` runs them all.
//!
//! `bench sagas` starts every role in process (HTTP front, participants, orchestrator), seeds
//! ample stock and balances, posts N orders over HTTP with C concurrent clients, and waits
//! until every saga has completed: sagas per second from the first POST to the last
//! completion, and the saga durations (start to completion) as percentiles.
//!
//! Creates a scratch vhost through the management API, then measures two things with a
//! consumer that does what a real job does (the inbox check, one database write, the inbox
//! row, the ack):
//! - **drain**: N messages published first, then one worker drains them;
//! - **end to end**: the worker runs while N messages are published (publish -> consume ->
//!   handle -> ack at once).
//!
//! Prints one line per phase and a Markdown table row; `scripts/bench.sh` records it.

pub mod baseline;
pub mod retry_delay;
pub mod smtp_sink;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    App, Role, Settings,
    broker::{
        Broker,
        envelope::{Event, Meta},
        publisher::Publisher,
        topology::{Management, encode},
    },
    config::Secret,
    jobs::{Consumer, Job, JobError},
    telemetry::Metrics,
};

/// Options of `warren bench jobs`.
#[derive(Debug, Clone, clap::Args)]
pub struct JobsBench {
    /// Messages per phase.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Handlers running at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Prefetch.
    #[arg(long, default_value_t = 256)]
    pub prefetch: u16,
    /// Concurrent publishing tasks.
    #[arg(long, default_value_t = 256)]
    pub publishers: u64,
    /// What each job does: `db` (one database write, like a real job), `noop` (nothing; the
    /// runner's inbox check and row still happen) or `noop-no-inbox` (nothing at all: the
    /// runner's own cost).
    #[arg(long, default_value = "db")]
    pub handler: String,
}

/// Prints one machine-readable result line (`BENCH {json}`) for the benchmark suite.
pub fn emit(value: &serde_json::Value) {
    println!("BENCH {value}");
}

/// A job that does what real jobs do: one database write (plus the runner's inbox).
struct BenchJob {
    db: sea_orm::DatabaseConnection,
    done: Arc<AtomicU64>,
    write: bool,
    inbox: bool,
}

#[async_trait::async_trait]
impl Consumer for BenchJob {
    fn name(&self) -> &str {
        "bench"
    }

    fn queue(&self) -> &str {
        "warren.audit"
    }

    fn use_inbox(&self) -> bool {
        self.inbox
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        if self.write {
            crate::store::record_event(&self.db, &job.event)
                .await
                .map_err(|e| JobError::Error(e.to_string()))?;
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Publishes `n` messages named `name` on `exchange` from `tasks` concurrent tasks; each
/// message's data carries a `user_id` and some padding. Returns how long it took.
async fn publish_all(
    publisher: &Publisher,
    n: u64,
    tasks: u64,
    exchange: &'static str,
    name: &'static str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let publisher = publisher.clone();
        let share = n / tasks + u64::from(t < n % tasks);
        handles.push(tokio::spawn(async move {
            for i in 0..share {
                let e = Event::new(
                    name,
                    None,
                    json!({"user_id": format!("bench-{t}"), "i": i, "pad": "x".repeat(120)}),
                );
                let meta = Meta::for_event(&e);
                publisher
                    .publish(exchange, name, &e.to_json(), meta.properties())
                    .await?;
            }
            Ok::<(), crate::broker::publisher::PublishError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(started.elapsed())
}

async fn wait_done(done: &AtomicU64, n: u64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while done.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} handled in {limit:?}",
            done.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A broker with the topology declared, and a confirming publisher on it.
async fn bench_publisher(settings: &Settings, name: &str) -> anyhow::Result<(Broker, Publisher)> {
    let broker = Broker::new(settings, name)?;
    broker
        .declare(&crate::broker::topology::Topology::for_settings(settings)?)
        .await?;
    let publisher = Publisher::new(
        broker.clone(),
        settings.amqp.publish_channels,
        settings.amqp.publish_timeout(),
        Metrics::new(),
    );
    Ok((broker, publisher))
}

/// Runs the job benchmark against the broker and database in `settings`.
pub async fn jobs(mut settings: Settings, opts: JobsBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(opts.handler.as_str(), "db" | "noop" | "noop-no-inbox"),
        "handler must be db, noop or noop-no-inbox"
    );
    let (api, vhost) = scratch_vhost(&mut settings, "jobs").await?;
    settings.jobs.concurrency = opts.concurrency;
    settings.jobs.prefetch = opts.prefetch;
    let result = run_phases(settings, &opts).await;
    let _ = api.delete(&format!("vhosts/{}", encode(&vhost))).await;
    result
}

/// Creates a scratch vhost for a benchmark and points `settings` at it.
async fn scratch_vhost(
    settings: &mut Settings,
    what: &str,
) -> anyhow::Result<(Management, String)> {
    let vhost = format!("warren-bench-{what}-{}", std::process::id());
    let api = Management::new(settings.amqp.management_url.expose())?;
    let user = url::Url::parse(settings.amqp.url.expose())?
        .username()
        .to_owned();
    api.put(&format!("vhosts/{}", encode(&vhost)), &json!({}))
        .await?;
    api.put(
        &format!("permissions/{}/{}", encode(&vhost), user),
        &json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await?;
    let base = settings.amqp.url.expose().to_owned();
    let base = base
        .rsplit_once('/')
        .map_or(base.as_str(), |(b, _)| b)
        .to_owned();
    settings.amqp.url = Secret::new(format!("{base}/{}", encode(&vhost)));
    Ok((api, vhost))
}

/// Options of `warren bench sagas`.
#[derive(Debug, Clone, clap::Args)]
pub struct SagasBench {
    /// Orders to place.
    #[arg(long, default_value_t = 2_000)]
    pub orders: usize,
    /// Concurrent HTTP clients placing them.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Handlers running at once per module.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

/// Runs the saga benchmark against the broker and database in `settings`.
pub async fn sagas(mut settings: Settings, opts: SagasBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.orders > 0 && opts.clients > 0,
        "orders and clients must be positive"
    );
    let (api, vhost) = scratch_vhost(&mut settings, "sagas").await?;
    settings.jobs.concurrency = opts.concurrency;
    settings.jobs.prefetch = u16::try_from(opts.concurrency * 2).unwrap_or(u16::MAX);
    settings.http.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let result = run_sagas(settings, &opts).await;
    let _ = api.delete(&format!("vhosts/{}", encode(&vhost))).await;
    result
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn run_sagas(settings: Settings, opts: &SagasBench) -> anyhow::Result<()> {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

    let run = format!("{}-{}", std::process::id(), chrono::Utc::now().timestamp());
    let db_kind = if crate::store::is_sqlite(settings.database.url.expose()) {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    let shutdown = CancellationToken::new();
    let running = App::new(settings.clone())
        .start(&[Role::Http, Role::Worker, Role::Saga], shutdown.clone())
        .await?;
    let mut ready = running.topology_ready.clone();
    tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r)).await??;
    let base = format!(
        "http://{}",
        running
            .http_addr
            .ok_or_else(|| anyhow::anyhow!("no HTTP address"))?
    );
    let sku = format!("BENCH-{run}");
    let users: Vec<String> = (0..100).map(|i| format!("bench-{run}-{i}")).collect();
    let seed = crate::saga::order::Seed {
        inventory: [(
            sku.clone(),
            i64::try_from(opts.orders).unwrap_or(i64::MAX) * 10,
        )]
        .into_iter()
        .collect(),
        accounts: users.iter().map(|u| (u.clone(), 1_000_000_000)).collect(),
    };
    seed.apply(&running.db).await?;

    let http = reqwest::Client::new();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..opts.clients {
        let (http, base, next, sku, users) = (
            http.clone(),
            base.clone(),
            next.clone(),
            sku.clone(),
            users.clone(),
        );
        let (n, run) = (opts.orders as u64, run.clone());
        clients.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let body = json!({
                    "order_no": format!("B-{run}-{i}"),
                    "user_id": users[usize::try_from(i).unwrap_or(0) % users.len()],
                    "items": [{"sku": sku, "qty": 1, "price": 500}],
                    "total_amount": 500,
                });
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/v1/orders"))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 202, "order refused: {}", r.status());
                latencies.push(t.elapsed().as_secs_f64());
            }
        });
    }
    let mut accept = Vec::new();
    while let Some(r) = clients.join_next().await {
        accept.extend(r??);
    }
    let placed = started.elapsed();
    let limit = Instant::now() + Duration::from_secs(600);
    let db = running.db.clone();
    let finished = loop {
        let done = entities::sagas::Entity::find()
            .filter(entities::sagas::Column::BusinessKey.starts_with(format!("B-{run}-")))
            .filter(entities::sagas::Column::Status.is_in([
                "completed",
                "compensated",
                "needs_intervention",
            ]))
            .count(&db)
            .await?;
        if done >= opts.orders as u64 {
            break started.elapsed();
        }
        anyhow::ensure!(
            Instant::now() < limit,
            "only {done} of {} sagas ended in 600 s",
            opts.orders
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rows = entities::sagas::Entity::find()
        .filter(entities::sagas::Column::BusinessKey.starts_with(format!("B-{run}-")))
        .all(&db)
        .await?;
    let completed = rows.iter().filter(|r| r.status == "completed").count();
    let mut durations: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            r.finished_at
                .map(|f| (f - r.created_at).num_microseconds().unwrap_or(0) as f64 / 1e6)
        })
        .collect();
    durations.sort_by(f64::total_cmp);
    accept.sort_by(f64::total_cmp);
    shutdown.cancel();
    running.wait().await;

    let rate = opts.orders as f64 / finished.as_secs_f64();
    println!(
        "placed:    {} orders in {placed:.2?} ({} clients; accept p50 {:.1} ms, p99 {:.1} ms)",
        opts.orders,
        opts.clients,
        percentile(&accept, 50.0) * 1e3,
        percentile(&accept, 99.0) * 1e3
    );
    println!(
        "completed: {completed} of {} sagas in {finished:.2?} = {rate:.0} sagas/s end to end",
        opts.orders
    );
    println!(
        "saga duration: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&durations, 50.0) * 1e3,
        percentile(&durations, 99.0) * 1e3,
        durations.last().copied().unwrap_or(0.0) * 1e3
    );
    println!(
        "| {db_kind} | {} | {} | {} | {rate:.0} | {:.0} ms | {:.0} ms | {:.0} ms |",
        opts.orders,
        opts.clients,
        opts.concurrency,
        percentile(&durations, 50.0) * 1e3,
        percentile(&durations, 99.0) * 1e3,
        durations.last().copied().unwrap_or(0.0) * 1e3
    );
    emit(&json!({
        "bench": "sagas",
        "database": db_kind,
        "orders": opts.orders,
        "clients": opts.clients,
        "completed": completed,
        "rate": rate,
        "p50_ms": percentile(&durations, 50.0) * 1e3,
        "p99_ms": percentile(&durations, 99.0) * 1e3,
    }));
    anyhow::ensure!(
        completed == opts.orders,
        "{} sagas did not complete",
        opts.orders - completed
    );
    Ok(())
}

async fn run_phases(settings: Settings, opts: &JobsBench) -> anyhow::Result<()> {
    let n = opts.messages;
    let db = crate::store::connect(&settings.database).await?;
    let (broker, publisher) = bench_publisher(&settings, "warren bench publisher").await?;

    // Phase 1: publish N, then drain them with one worker.
    let publish = publish_all(
        &publisher,
        n,
        opts.publishers,
        crate::broker::names::EVENTS_EXCHANGE,
        "bench.job",
    )
    .await?;
    let done = Arc::new(AtomicU64::new(0));
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = App::new(settings.clone())
        .modules(Vec::<String>::new())
        .consumer(BenchJob {
            db: db.clone(),
            done: done.clone(),
            write: opts.handler == "db",
            inbox: opts.handler != "noop-no-inbox",
        })
        .start(&[Role::Worker], shutdown.clone())
        .await?;
    wait_done(&done, n, Duration::from_secs(600)).await?;
    let drain = started.elapsed();

    // Phase 2: end to end, the same worker running while N more are published.
    let started = Instant::now();
    let e2e_publish = publish_all(
        &publisher,
        n,
        opts.publishers,
        crate::broker::names::EVENTS_EXCHANGE,
        "bench.job",
    )
    .await?;
    wait_done(&done, 2 * n, Duration::from_secs(600)).await?;
    let e2e = started.elapsed();
    shutdown.cancel();
    running.wait().await;
    publisher.close().await;
    broker.close();

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "publish only:  {n} messages in {:.2?} = {:.0} msg/s",
        publish,
        rate(publish)
    );
    println!(
        "drain:         {n} jobs in {:.2?} = {:.0} jobs/s (concurrency {}, prefetch {})",
        drain,
        rate(drain),
        opts.concurrency,
        opts.prefetch
    );
    println!(
        "end to end:    {n} jobs in {:.2?} = {:.0} jobs/s (publishing took {:.2?})",
        e2e,
        rate(e2e),
        e2e_publish
    );
    let db_kind = if crate::store::is_sqlite(settings.database.url.expose()) {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    emit(&json!({
        "bench": "jobs",
        "database": db_kind,
        "handler": opts.handler,
        "messages": n,
        "concurrency": opts.concurrency,
        "prefetch": opts.prefetch,
        "publish_rate": rate(publish),
        "drain_rate": rate(drain),
        "e2e_rate": rate(e2e),
    }));
    println!(
        "| {} | {} | {} | {:.0} | {:.0} | {:.0} |",
        db_kind,
        opts.concurrency,
        opts.prefetch,
        rate(publish),
        rate(drain),
        rate(e2e)
    );
    Ok(())
}

/// Options of `warren bench scale`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleBench {
    /// Messages per run.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Worker process counts to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub processes: Vec<usize>,
}

/// Runs the scale-out benchmark against the broker and database in `settings`.
pub async fn scale(mut settings: Settings, opts: ScaleBench) -> anyhow::Result<()> {
    anyhow::ensure!(opts.messages > 0, "messages must be positive");
    let (api, vhost) = scratch_vhost(&mut settings, "scale").await?;
    let result = run_scale(settings, &opts).await;
    let _ = api.delete(&format!("vhosts/{}", encode(&vhost))).await;
    result
}

/// Kills the worker processes when dropped (also when the run fails).
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn run_scale(settings: Settings, opts: &ScaleBench) -> anyhow::Result<()> {
    use sea_orm::{EntityTrait, PaginatorTrait};
    let db = crate::store::connect(&settings.database).await?;
    let (broker, publisher) = bench_publisher(&settings, "warren bench scale").await?;
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for &k in &opts.processes {
        anyhow::ensure!(k > 0, "process counts must be positive");
        // Park N jobs first (no consumer yet), so the drain is measured alone.
        let before = entities::notifications::Entity::find().count(&db).await?;
        let publish = publish_all(
            &publisher,
            opts.messages,
            64,
            crate::broker::names::COMMANDS_EXCHANGE,
            "notification.bench",
        )
        .await?;
        let mut children = Children(Vec::new());
        for _ in 0..k {
            children.0.push(
                std::process::Command::new(&exe)
                    .args(["worker", "--modules", "notifications"])
                    .env("WARREN_AMQP__URL", settings.amqp.url.expose())
                    .env("WARREN_DATABASE__URL", settings.database.url.expose())
                    .env("WARREN_METRICS__ADDR", "127.0.0.1:0")
                    .env("WARREN_LOG__FILTER", "error")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()?,
            );
        }
        // The clock starts when the first worker takes a message.
        let limit = Instant::now() + Duration::from_secs(900);
        let first = loop {
            let n = entities::notifications::Entity::find().count(&db).await?;
            if n > before {
                break Instant::now();
            }
            anyhow::ensure!(Instant::now() < limit, "no worker started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        loop {
            let n = entities::notifications::Entity::find().count(&db).await?;
            if n >= before + opts.messages {
                break;
            }
            anyhow::ensure!(
                Instant::now() < limit,
                "only {} of {} handled",
                n - before,
                opts.messages
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drain = first.elapsed();
        drop(children);
        let rate = opts.messages as f64 / drain.as_secs_f64();
        println!(
            "{k} worker process(es): {} jobs drained in {drain:.2?} = {rate:.0} jobs/s (parked in {publish:.2?})",
            opts.messages
        );
        rows.push((k, rate));
        emit(
            &json!({"bench": "scale", "processes": k, "messages": opts.messages, "drain_rate": rate}),
        );
    }
    publisher.close().await;
    broker.close();
    let base = rows.first().map_or(1.0, |r| r.1);
    for (k, rate) in &rows {
        println!(
            "| {k} | {} | {rate:.0} | {:.2}x |",
            opts.messages,
            rate / base
        );
    }
    Ok(())
}
