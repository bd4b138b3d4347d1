//! `warren-bench sagas`: sagas end to end, in a scratch vhost, with the built-in Rust
//! participants (`--participants rust`, the default: order sagas) or with HTTP participants
//! (`--participants http`: the `shop` saga of the same shape, defined in a file, whose
//! commands go to HTTP subscriptions answered by [`crate::http_participants`]).
//!
//! Starts every role in process (HTTP front, worker with the default modules, orchestrator),
//! seeds ample stock and balances (rust), posts N sagas over HTTP with C concurrent clients
//! (`POST /v1/orders`, or `POST /v1/sagas/shop` with the same order as payload), and waits
//! until every saga has ended: sagas per second from the first POST to the last completion,
//! and the saga durations (start to completion) as percentiles. The cost per saga: warren's
//! CPU seconds (the process's, less the client and participant threads', from `/proc`) and,
//! with HTTP participants, the requests they received.

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

use crate::{
    common::{ScratchVhost, db_kind, emit, percentile},
    cpu,
    http_participants::{self, Counts, DefinitionsFile, Participants},
};

/// Who does the sagas' steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ParticipantKind {
    /// The built-in participants (`orders`, `inventory`, `payments`, `notifications`), in
    /// warren's worker: the order saga.
    Rust,
    /// HTTP subscriptions to in-process HTTP participants: the `shop` saga (a file).
    Http,
}

impl ParticipantKind {
    fn name(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Http => "http",
        }
    }

    /// The saga kind run.
    fn kind(self) -> &'static str {
        match self {
            Self::Rust => "order",
            Self::Http => http_participants::KIND,
        }
    }
}

/// Options of `warren-bench sagas`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SagasBench {
    /// Sagas (orders) to start.
    #[arg(long, default_value_t = 2_000)]
    orders: usize,
    /// Concurrent HTTP clients starting them.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Handlers running at once per module (and per HTTP subscription).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Who does the steps: `rust` (the built-in participants) or `http` (HTTP subscriptions
    /// to in-process HTTP participants).
    #[arg(long, value_enum, default_value_t = ParticipantKind::Rust)]
    participants: ParticipantKind,
    /// Each step's deadline (ms), both modes: above the wait in the backlog a saturated run
    /// builds, so the run measures throughput, not timeouts.
    #[arg(long, default_value_t = 120_000)]
    deadline_ms: u64,
}

/// Runs the saga benchmark against the broker and database in `settings`.
pub(crate) async fn sagas(mut settings: Settings, opts: SagasBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.orders > 0 && opts.clients > 0 && opts.deadline_ms > 0,
        "orders, clients and the deadline must be positive"
    );
    let vhost = ScratchVhost::create(&mut settings, "sagas").await?;
    settings.jobs.concurrency = opts.concurrency;
    settings.jobs.prefetch = u16::try_from(opts.concurrency * 2).unwrap_or(u16::MAX);
    settings.http.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    settings.saga.deadline_ms = opts.deadline_ms;
    let result = match opts.participants {
        ParticipantKind::Rust => run_sagas(settings.clone(), &opts).await.map(|m| (m, None)),
        ParticipantKind::Http => with_http_participants(&mut settings, &opts).await,
    };
    vhost.delete().await;
    let (measured, counts) = result?;
    report(&settings, &opts, &measured, counts.as_ref());
    anyhow::ensure!(
        measured.completed == opts.orders,
        "{} sagas did not complete",
        opts.orders - measured.completed
    );
    Ok(())
}

/// The HTTP mode: the participants' server, the definitions file and the subscriptions.
async fn with_http_participants(
    settings: &mut Settings,
    opts: &SagasBench,
) -> anyhow::Result<(SagaRun, Option<Counts>)> {
    let participants = Participants::start()?;
    let file = DefinitionsFile::write(opts.deadline_ms)?;
    settings.saga.definitions_file = Some(file.path().to_owned());
    settings.subscriptions =
        http_participants::subscriptions(&participants.base(), opts.concurrency);
    let measured = run_sagas(settings.clone(), opts).await;
    let counts = participants.stop();
    drop(file);
    Ok((measured?, Some(counts)))
}

/// One run's sagas: their business keys (order numbers) share `B-{mode}-{run}-`, the SKU and
/// users are its own.
struct Orders {
    run: String,
    sku: String,
    users: Vec<String>,
    participants: ParticipantKind,
}

impl Orders {
    fn new(participants: ParticipantKind) -> Self {
        let run = format!(
            "{}-{}-{}",
            participants.name(),
            std::process::id(),
            chrono::Utc::now().timestamp()
        );
        Self {
            sku: format!("BENCH-{run}"),
            users: (0..100).map(|i| format!("bench-{run}-{i}")).collect(),
            run,
            participants,
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

    /// The order `i`.
    fn order(&self, i: u64) -> serde_json::Value {
        json!({
            "order_no": format!("B-{}-{i}", self.run),
            "user_id": self.users[usize::try_from(i).unwrap_or(0) % self.users.len()],
            "items": [{"sku": self.sku, "qty": 1, "price": 500}],
            "total_amount": 500,
        })
    }

    /// Where saga `i` is started and the body: `POST /v1/orders` with the order, or
    /// `POST /v1/sagas/shop` with the order as the payload and its number as business key.
    fn request(&self, i: u64) -> (String, serde_json::Value) {
        let order = self.order(i);
        match self.participants {
            ParticipantKind::Rust => ("/v1/orders".to_owned(), order),
            ParticipantKind::Http => (
                format!("/v1/sagas/{}", http_participants::KIND),
                json!({"business_key": order["order_no"], "payload": order}),
            ),
        }
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
    /// CPU seconds of the bench process from the first POST to the last saga's end.
    process_cpu_s: f64,
    /// CPU seconds of the clients' thread.
    clients_cpu_s: f64,
    /// Busy cores of the whole machine over the same time (on average).
    machine_busy_cores: f64,
}

async fn run_sagas(settings: Settings, opts: &SagasBench) -> anyhow::Result<SagaRun> {
    let orders = Arc::new(Orders::new(opts.participants));
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
    if opts.participants == ParticipantKind::Rust {
        orders.seed(opts.orders).apply(&running.db).await?;
    }

    let (cpu_before, busy_before) = (cpu::process_s(), cpu::machine_busy_s());
    let started = Instant::now();
    let (mut accept, clients_cpu_s) = place_orders(base, orders.clone(), opts).await?;
    let placed = started.elapsed();
    let db = running.db.clone();
    let (kind, prefix) = (opts.participants.kind(), orders.key_prefix());
    let finished = wait_for_sagas(&db, kind, &prefix, opts.orders, started).await?;
    let process_cpu_s = cpu::process_s() - cpu_before;
    let machine_busy_cores = (cpu::machine_busy_s() - busy_before) / finished.as_secs_f64();
    let rows = entities::sagas::Entity::find()
        .filter(entities::sagas::Column::Kind.eq(kind))
        .filter(entities::sagas::Column::BusinessKey.starts_with(&prefix))
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
    Ok(SagaRun {
        placed,
        finished,
        completed,
        accept,
        durations,
        process_cpu_s,
        clients_cpu_s,
        machine_busy_cores,
    })
}

/// Starts every saga from `opts.clients` concurrent clients, on a thread (`bench-clients`)
/// and a single-threaded runtime of their own, so their CPU time is not warren's; returns each
/// POST's latency in seconds (unsorted) and the thread's CPU seconds. Any answer but 202
/// fails the run.
async fn place_orders(
    base: String,
    orders: Arc<Orders>,
    opts: &SagasBench,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let (n, clients) = (opts.orders as u64, opts.clients);
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-clients".into())
        .spawn(move || {
            let before = cpu::this_thread_s();
            let placed = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(clients_run(&base, orders, clients, n)));
            let _ = done.send(placed.map(|a| (a, cpu::this_thread_s() - before)));
        })?;
    result.await?
}

/// The clients themselves (on the clients' runtime).
async fn clients_run(
    base: &str,
    orders: Arc<Orders>,
    clients: usize,
    n: u64,
) -> anyhow::Result<Vec<f64>> {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, base, next, orders) =
            (http.clone(), base.to_owned(), next.clone(), orders.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let (path, body) = orders.request(i);
                let t = Instant::now();
                let r = http
                    .post(format!("{base}{path}"))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 202, "start refused: {}", r.status());
                latencies.push(t.elapsed().as_secs_f64());
            }
        });
    }
    let mut accept = Vec::new();
    while let Some(r) = tasks.join_next().await {
        accept.extend(r??);
    }
    Ok(accept)
}

/// Waits (up to 600 s) until `n` sagas of `kind` whose business key starts with `prefix`
/// have ended; returns the time since `started`.
async fn wait_for_sagas(
    db: &sea_orm::DatabaseConnection,
    kind: &str,
    prefix: &str,
    n: usize,
    started: Instant,
) -> anyhow::Result<Duration> {
    let limit = Instant::now() + Duration::from_secs(600);
    loop {
        let done = entities::sagas::Entity::find()
            .filter(entities::sagas::Column::Kind.eq(kind))
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

/// Prints the run: four lines, the Markdown row, the `BENCH` line.
fn report(settings: &Settings, opts: &SagasBench, m: &SagaRun, http: Option<&Counts>) {
    let db_kind = db_kind(settings);
    let rate = opts.orders as f64 / m.finished.as_secs_f64();
    let ms = |v: &[f64], p: f64| percentile(v, p) * 1e3;
    let max_ms = m.durations.last().copied().unwrap_or(0.0) * 1e3;
    let (p50, p99) = (ms(&m.durations, 50.0), ms(&m.durations, 99.0));
    let (accept_p50, accept_p99) = (ms(&m.accept, 50.0), ms(&m.accept, 99.0));
    let (orders, clients, mode) = (opts.orders, opts.clients, opts.participants.name());
    let participants_cpu_s = http.map_or(0.0, |c| c.cpu_s);
    let warren_cpu_s = (m.process_cpu_s - m.clients_cpu_s - participants_cpu_s).max(0.0);
    let per_saga_ms = |s: f64| s * 1e3 / orders as f64;
    println!(
        "placed:    {orders} {} sagas in {:.2?} ({clients} clients; accept p50 {accept_p50:.1} ms, p99 {accept_p99:.1} ms)",
        opts.participants.kind(),
        m.placed
    );
    println!(
        "completed: {} of {orders} sagas in {:.2?} = {rate:.0} sagas/s end to end ({mode} participants)",
        m.completed, m.finished
    );
    println!("saga duration: p50 {p50:.0} ms, p99 {p99:.0} ms, max {max_ms:.0} ms");
    println!(
        "cost per saga: warren {:.1} ms CPU (process {:.1}, clients {:.1}, participants {:.1}){}; machine busy {:.2} cores of {}",
        per_saga_ms(warren_cpu_s),
        per_saga_ms(m.process_cpu_s),
        per_saga_ms(m.clients_cpu_s),
        per_saga_ms(participants_cpu_s),
        http.map_or(String::new(), |c| format!(
            "; {:.2} HTTP requests ({} requests, {} effects, {} repeats, {} refused)",
            c.requests as f64 / orders as f64,
            c.requests,
            c.effects,
            c.repeats,
            c.bad
        )),
        m.machine_busy_cores,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
    );
    println!(
        "| {db_kind} | {orders} | {clients} | {} | {rate:.0} | {p50:.0} ms | {p99:.0} ms | {max_ms:.0} ms |",
        opts.concurrency
    );
    let http = http.map(|c| {
        json!({
            "requests": c.requests,
            "effects": c.effects,
            "repeats": c.repeats,
            "refused": c.bad,
            "requests_per_saga": c.requests as f64 / orders as f64,
            "expected_effects": http_participants::STEPS_PER_SAGA * orders as u64,
        })
    });
    emit(&json!({
        "bench": "sagas",
        "participants": mode,
        "kind": opts.participants.kind(),
        "database": db_kind,
        "orders": opts.orders,
        "clients": opts.clients,
        "concurrency": opts.concurrency,
        "completed": m.completed,
        "rate": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max_ms,
        "cpu_s": {
            "process": m.process_cpu_s,
            "clients": m.clients_cpu_s,
            "participants": participants_cpu_s,
            "warren": warren_cpu_s,
        },
        "warren_cpu_ms_per_saga": per_saga_ms(warren_cpu_s),
        "machine_busy_cores": m.machine_busy_cores,
        "http": http,
    }));
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: SagasBench,
    }

    #[test]
    fn the_participants_are_rust_unless_told_http() {
        let rust = Cli::try_parse_from(["sagas"]).expect("parses").bench;
        assert_eq!(rust.participants, ParticipantKind::Rust);
        let http = Cli::try_parse_from(["sagas", "--participants", "http", "--orders", "5"])
            .expect("parses")
            .bench;
        assert_eq!((http.participants, http.orders), (ParticipantKind::Http, 5));
        assert!(Cli::try_parse_from(["sagas", "--participants", "go"]).is_err());
    }

    #[test]
    fn an_http_saga_starts_with_the_order_as_payload() {
        let orders = Orders::new(ParticipantKind::Http);
        let (path, body) = orders.request(3);
        assert_eq!(path, "/v1/sagas/shop");
        assert_eq!(body["payload"], orders.order(3));
        assert_eq!(body["business_key"], orders.order(3)["order_no"]);
        assert!(
            body["business_key"]
                .as_str()
                .is_some_and(|k| k.starts_with(&orders.key_prefix()))
        );
        let (path, body) = Orders::new(ParticipantKind::Rust).request(3);
        assert_eq!(path, "/v1/orders");
        assert!(body.get("order_no").is_some());
    }
}
