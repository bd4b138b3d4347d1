//! `warren bench jobs`: end-to-end job throughput on a real broker and database.
//!
//! Creates a scratch vhost through the management API, then measures two things with a
//! consumer that does what a real job does (the inbox check, one database write, the inbox
//! row, the ack):
//! - **drain**: N messages published first, then one worker drains them;
//! - **end to end**: the worker runs while N messages are published (publish -> consume ->
//!   handle -> ack at once).
//!
//! Prints one line per phase and a Markdown table row; `scripts/bench.sh` records it.

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
}

/// A job that does what real jobs do: one database write (plus the runner's inbox).
struct BenchJob {
    db: sea_orm::DatabaseConnection,
    done: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Consumer for BenchJob {
    fn name(&self) -> &str {
        "bench"
    }

    fn queue(&self) -> &str {
        "warren.audit"
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        crate::store::record_event(&self.db, &job.event)
            .await
            .map_err(|e| JobError::Error(e.to_string()))?;
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn publish_all(publisher: &Publisher, n: u64, tasks: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let publisher = publisher.clone();
        let share = n / tasks + u64::from(t < n % tasks);
        handles.push(tokio::spawn(async move {
            for i in 0..share {
                let e = Event::new(
                    "bench.job",
                    None,
                    json!({"task": t, "i": i, "pad": "x".repeat(120)}),
                );
                let meta = Meta::for_event(&e);
                publisher
                    .publish(
                        crate::http::EVENTS_EXCHANGE,
                        "bench.job",
                        &e.to_json(),
                        meta.properties(),
                    )
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

/// Runs the job benchmark against the broker and database in `settings`.
pub async fn jobs(mut settings: Settings, opts: JobsBench) -> anyhow::Result<()> {
    let vhost = format!("warren-bench-jobs-{}", std::process::id());
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
    settings.jobs.concurrency = opts.concurrency;
    settings.jobs.prefetch = opts.prefetch;
    let result = run_phases(settings, &opts).await;
    let _ = api.delete(&format!("vhosts/{}", encode(&vhost))).await;
    result
}

async fn run_phases(settings: Settings, opts: &JobsBench) -> anyhow::Result<()> {
    let n = opts.messages;
    let db = crate::store::connect(&settings.database).await?;
    let broker = Broker::new(&settings, "warren bench publisher")?;
    broker
        .declare(&crate::broker::topology::Topology::for_settings(&settings)?)
        .await?;
    let publisher = Publisher::new(
        broker.clone(),
        settings.amqp.publish_channels,
        settings.amqp.publish_timeout(),
        Metrics::new(),
    );

    // Phase 1: publish N, then drain them with one worker.
    let publish = publish_all(&publisher, n, opts.publishers).await?;
    let done = Arc::new(AtomicU64::new(0));
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = App::new(settings.clone())
        .modules(Vec::<String>::new())
        .consumer(BenchJob {
            db: db.clone(),
            done: done.clone(),
        })
        .start(&[Role::Worker], shutdown.clone())
        .await?;
    wait_done(&done, n, Duration::from_secs(600)).await?;
    let drain = started.elapsed();

    // Phase 2: end to end, the same worker running while N more are published.
    let started = Instant::now();
    let e2e_publish = publish_all(&publisher, n, opts.publishers).await?;
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
    println!(
        "| {} | {} | {} | {:.0} | {:.0} | {:.0} |",
        if crate::store::is_sqlite(settings.database.url.expose()) {
            "SQLite"
        } else {
            "PostgreSQL"
        },
        opts.concurrency,
        opts.prefetch,
        rate(publish),
        rate(drain),
        rate(e2e)
    );
    Ok(())
}
