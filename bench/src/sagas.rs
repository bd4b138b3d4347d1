//! `warren-bench sagas`: order sagas end to end, in a scratch vhost.
//!
//! Starts every role in process (HTTP front, participants, orchestrator), seeds ample stock
//! and balances, posts N orders over HTTP with C concurrent clients, and waits until every
//! saga has ended: sagas per second from the first POST to the last completion, and the saga
//! durations (start to completion) as percentiles.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use warren::{App, Role, Settings};

use crate::common::{ScratchVhost, db_kind, emit, percentile};

/// Options of `warren-bench sagas`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SagasBench {
    /// Orders to place.
    #[arg(long, default_value_t = 2_000)]
    orders: usize,
    /// Concurrent HTTP clients placing them.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Handlers running at once per module.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

/// Runs the saga benchmark against the broker and database in `settings`.
pub(crate) async fn sagas(mut settings: Settings, opts: SagasBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.orders > 0 && opts.clients > 0,
        "orders and clients must be positive"
    );
    let vhost = ScratchVhost::create(&mut settings, "sagas").await?;
    settings.jobs.concurrency = opts.concurrency;
    settings.jobs.prefetch = u16::try_from(opts.concurrency * 2).unwrap_or(u16::MAX);
    settings.http.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let result = run_sagas(settings, &opts).await;
    vhost.delete().await;
    result
}

/// One run's orders: their numbers share `B-{run}-`, the SKU and users are its own.
struct Orders {
    run: String,
    sku: String,
    users: Vec<String>,
}

impl Orders {
    fn new() -> Self {
        let run = format!("{}-{}", std::process::id(), chrono::Utc::now().timestamp());
        Self {
            sku: format!("BENCH-{run}"),
            users: (0..100).map(|i| format!("bench-{run}-{i}")).collect(),
            run,
        }
    }

    /// Stock for ten times the orders, and a large balance per user.
    fn seed(&self, orders: usize) -> warren::saga::order::Seed {
        warren::saga::order::Seed {
            inventory: [(
                self.sku.clone(),
                i64::try_from(orders).unwrap_or(i64::MAX) * 10,
            )]
            .into_iter()
            .collect(),
            accounts: self
                .users
                .iter()
                .map(|u| (u.clone(), 1_000_000_000))
                .collect(),
        }
    }

    /// The body of order `i`.
    fn body(&self, i: u64) -> serde_json::Value {
        json!({
            "order_no": format!("B-{}-{i}", self.run),
            "user_id": self.users[usize::try_from(i).unwrap_or(0) % self.users.len()],
            "items": [{"sku": self.sku, "qty": 1, "price": 500}],
            "total_amount": 500,
        })
    }

    /// The order numbers' prefix (the sagas' business keys).
    fn key_prefix(&self) -> String {
        format!("B-{}-", self.run)
    }
}

/// What a run measured.
struct SagaRun {
    placed: Duration,
    finished: Duration,
    completed: usize,
    /// Seconds from the POST to the 202, sorted.
    accept: Vec<f64>,
    /// Seconds from a saga's start to its end, sorted.
    durations: Vec<f64>,
}

async fn run_sagas(settings: Settings, opts: &SagasBench) -> anyhow::Result<()> {
    let orders = Arc::new(Orders::new());
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
    orders.seed(opts.orders).apply(&running.db).await?;

    let started = Instant::now();
    let mut accept = place_orders(&base, orders.clone(), opts).await?;
    let placed = started.elapsed();
    let db = running.db.clone();
    let finished = wait_for_sagas(&db, &orders.key_prefix(), opts.orders, started).await?;
    let rows = entities::sagas::Entity::find()
        .filter(entities::sagas::Column::BusinessKey.starts_with(orders.key_prefix()))
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

    let measured = SagaRun {
        placed,
        finished,
        completed,
        accept,
        durations,
    };
    report(&settings, opts, &measured);
    anyhow::ensure!(
        completed == opts.orders,
        "{} sagas did not complete",
        opts.orders - completed
    );
    Ok(())
}

/// Posts every order from `opts.clients` concurrent clients; returns each POST's latency in
/// seconds (unsorted). Any answer but 202 fails the run.
async fn place_orders(
    base: &str,
    orders: Arc<Orders>,
    opts: &SagasBench,
) -> anyhow::Result<Vec<f64>> {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let n = opts.orders as u64;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..opts.clients {
        let (http, base, next, orders) =
            (http.clone(), base.to_owned(), next.clone(), orders.clone());
        clients.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/v1/orders"))
                    .json(&orders.body(i))
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
    Ok(accept)
}

/// Waits (up to 600 s) until `n` sagas whose business key starts with `prefix` have ended;
/// returns the time since `started`.
async fn wait_for_sagas(
    db: &sea_orm::DatabaseConnection,
    prefix: &str,
    n: usize,
    started: Instant,
) -> anyhow::Result<Duration> {
    let limit = Instant::now() + Duration::from_secs(600);
    loop {
        let done = entities::sagas::Entity::find()
            .filter(entities::sagas::Column::BusinessKey.starts_with(prefix))
            .filter(entities::sagas::Column::Status.is_in([
                "completed",
                "compensated",
                "needs_intervention",
            ]))
            .count(db)
            .await?;
        if done >= n as u64 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < limit,
            "only {done} of {n} sagas ended in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints the run: three lines, the Markdown row, the `BENCH` line.
fn report(settings: &Settings, opts: &SagasBench, m: &SagaRun) {
    let db_kind = db_kind(settings);
    let rate = opts.orders as f64 / m.finished.as_secs_f64();
    let ms = |v: &[f64], p: f64| percentile(v, p) * 1e3;
    let max_ms = m.durations.last().copied().unwrap_or(0.0) * 1e3;
    let (p50, p99) = (ms(&m.durations, 50.0), ms(&m.durations, 99.0));
    let (accept_p50, accept_p99) = (ms(&m.accept, 50.0), ms(&m.accept, 99.0));
    let (orders, clients) = (opts.orders, opts.clients);
    println!(
        "placed:    {orders} orders in {:.2?} ({clients} clients; accept p50 {accept_p50:.1} ms, p99 {accept_p99:.1} ms)",
        m.placed
    );
    println!(
        "completed: {} of {orders} sagas in {:.2?} = {rate:.0} sagas/s end to end",
        m.completed, m.finished
    );
    println!("saga duration: p50 {p50:.0} ms, p99 {p99:.0} ms, max {max_ms:.0} ms");
    println!(
        "| {db_kind} | {orders} | {clients} | {} | {rate:.0} | {p50:.0} ms | {p99:.0} ms | {max_ms:.0} ms |",
        opts.concurrency
    );
    emit(&json!({
        "bench": "sagas",
        "database": db_kind,
        "orders": opts.orders,
        "clients": opts.clients,
        "completed": m.completed,
        "rate": rate,
        "p50_ms": p50,
        "p99_ms": p99,
    }));
}
