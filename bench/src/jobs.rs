//! `warren-bench jobs`: job throughput on a real broker and database, in a scratch vhost.
//!
//! A consumer that does what a real job does (the inbox check, one database write, the inbox
//! row, the ack) runs in warren's own runner (`App` with the worker role), and two things are
//! measured:
//! - **drain**: N messages published first, then one worker drains them;
//! - **end to end**: the worker runs while N messages are published (publish -> consume ->
//!   handle -> ack at once).
//!
//! Prints one line per phase, a `BENCH {json}` line and a Markdown table row.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use warren::{
    App, Role, Settings,
    broker::names::EVENTS_EXCHANGE,
    jobs::{Consumer, Job, JobError},
};

use crate::common::{ScratchVhost, bench_publisher, db_kind, emit, publish_all, wait_done};

/// Options of `warren-bench jobs`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct JobsBench {
    /// Messages per phase.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Handlers running at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Prefetch.
    #[arg(long, default_value_t = 256)]
    prefetch: u16,
    /// Concurrent publishing tasks.
    #[arg(long, default_value_t = 256)]
    publishers: u64,
    /// What each job does: `db` (one database write, like a real job), `noop` (nothing; the
    /// runner's inbox check and row still happen) or `noop-no-inbox` (nothing at all: the
    /// runner's own cost).
    #[arg(long, default_value = "db")]
    handler: String,
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
            warren::store::record_event(&self.db, &job.event)
                .await
                .map_err(|e| JobError::Error(e.to_string()))?;
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Runs the job benchmark against the broker and database in `settings`.
pub(crate) async fn jobs(mut settings: Settings, opts: JobsBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(opts.handler.as_str(), "db" | "noop" | "noop-no-inbox"),
        "handler must be db, noop or noop-no-inbox"
    );
    let vhost = ScratchVhost::create(&mut settings, "jobs").await?;
    settings.jobs.concurrency = opts.concurrency;
    settings.jobs.prefetch = opts.prefetch;
    let result = run_phases(settings, &opts).await;
    vhost.delete().await;
    result
}

/// How long each phase took.
struct Phases {
    publish: Duration,
    drain: Duration,
    e2e: Duration,
    e2e_publish: Duration,
}

async fn run_phases(settings: Settings, opts: &JobsBench) -> anyhow::Result<()> {
    let n = opts.messages;
    let db = warren::store::connect(&settings.database).await?;
    let (broker, publisher) = bench_publisher(&settings, "warren-bench jobs").await?;

    // Phase 1: publish N, then drain them with one worker.
    let publish = publish_all(&publisher, n, opts.publishers, EVENTS_EXCHANGE, "bench.job").await?;
    let done = Arc::new(AtomicU64::new(0));
    let shutdown = CancellationToken::new();
    let started = std::time::Instant::now();
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
    let started = std::time::Instant::now();
    let e2e_publish =
        publish_all(&publisher, n, opts.publishers, EVENTS_EXCHANGE, "bench.job").await?;
    wait_done(&done, 2 * n, Duration::from_secs(600)).await?;
    let e2e = started.elapsed();
    shutdown.cancel();
    running.wait().await;
    publisher.close().await;
    broker.close();

    let phases = Phases {
        publish,
        drain,
        e2e,
        e2e_publish,
    };
    report(&settings, opts, &phases);
    Ok(())
}

/// Prints the phases: one line each, the `BENCH` line, the Markdown row.
fn report(settings: &Settings, opts: &JobsBench, p: &Phases) {
    let n = opts.messages;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "publish only:  {n} messages in {:.2?} = {:.0} msg/s",
        p.publish,
        rate(p.publish)
    );
    println!(
        "drain:         {n} jobs in {:.2?} = {:.0} jobs/s (concurrency {}, prefetch {})",
        p.drain,
        rate(p.drain),
        opts.concurrency,
        opts.prefetch
    );
    println!(
        "end to end:    {n} jobs in {:.2?} = {:.0} jobs/s (publishing took {:.2?})",
        p.e2e,
        rate(p.e2e),
        p.e2e_publish
    );
    let db_kind = db_kind(settings);
    emit(&json!({
        "bench": "jobs",
        "database": db_kind,
        "handler": opts.handler,
        "messages": n,
        "concurrency": opts.concurrency,
        "prefetch": opts.prefetch,
        "publish_rate": rate(p.publish),
        "drain_rate": rate(p.drain),
        "e2e_rate": rate(p.e2e),
    }));
    println!(
        "| {} | {} | {} | {:.0} | {:.0} | {:.0} |",
        db_kind,
        opts.concurrency,
        opts.prefetch,
        rate(p.publish),
        rate(p.drain),
        rate(p.e2e)
    );
}
