//! `warren-bench retry-delay`: how close to the configured delay broker-side retries come
//! back under load. N jobs are parked at once; each fails on its first attempt (a reported
//! failure, the 60 s tier shortened to `--delay-ms`) and succeeds on its second. The delay is
//! measured from the moment the handler reported the failure to the start of the second
//! attempt, per job.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use warren::{
    App, Role, Settings,
    broker::names::EVENTS_EXCHANGE,
    jobs::{Consumer, Job, JobError},
};

use crate::common::{ScratchVhost, bench_publisher, emit, percentile, publish_all};

/// Options of `warren-bench retry-delay`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RetryDelayBench {
    /// Jobs, each failing once.
    #[arg(long, default_value_t = 2_000)]
    jobs: u64,
    /// The retry delay (the failure tier's TTL) in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    delay_ms: u64,
}

#[derive(Default)]
struct Clock {
    failed_at: HashMap<Uuid, Instant>,
    delays: Vec<f64>,
}

struct FailsOnce(Arc<Mutex<Clock>>);

#[async_trait::async_trait]
impl Consumer for FailsOnce {
    fn name(&self) -> &str {
        "bench-retry"
    }

    fn queue(&self) -> &str {
        "warren.audit"
    }

    fn use_inbox(&self) -> bool {
        false
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        let now = Instant::now();
        let mut clock = self
            .0
            .lock()
            .map_err(|_| JobError::Error("poisoned".into()))?;
        if job.attempt == 1 {
            clock.failed_at.insert(job.message_id, now);
            return Err(JobError::Failed("fails once, by design".into()));
        }
        if let Some(t) = clock.failed_at.remove(&job.message_id) {
            clock.delays.push((now - t).as_secs_f64());
        }
        Ok(())
    }
}

/// Runs the retry-delay benchmark in a scratch vhost.
pub(crate) async fn retry_delay(
    mut settings: Settings,
    opts: RetryDelayBench,
) -> anyhow::Result<()> {
    anyhow::ensure!(opts.jobs > 0, "jobs must be positive");
    let vhost = ScratchVhost::create(&mut settings, "retry").await?;
    settings.jobs.failure_delay_ms = opts.delay_ms;
    let result = run(settings, &opts).await;
    vhost.delete().await;
    result
}

async fn run(settings: Settings, opts: &RetryDelayBench) -> anyhow::Result<()> {
    let clock = Arc::new(Mutex::new(Clock::default()));
    let (broker, publisher) = bench_publisher(&settings, "warren-bench retry-delay").await?;
    let shutdown = CancellationToken::new();
    let running = App::new(settings.clone())
        .modules(Vec::<String>::new())
        .consumer(FailsOnce(clock.clone()))
        .start(&[Role::Worker], shutdown.clone())
        .await?;
    let started = Instant::now();
    publish_all(&publisher, opts.jobs, 64, EVENTS_EXCHANGE, "bench.retry").await?;
    let limit = Instant::now() + Duration::from_millis(opts.delay_ms) + Duration::from_secs(600);
    loop {
        let done = clock.lock().map_or(0, |c| c.delays.len()) as u64;
        if done >= opts.jobs {
            break;
        }
        anyhow::ensure!(
            Instant::now() < limit,
            "only {done} of {} jobs came back",
            opts.jobs
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = started.elapsed();
    shutdown.cancel();
    running.wait().await;
    publisher.close().await;
    broker.close();

    let mut delays = clock
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .delays
        .clone();
    delays.sort_by(f64::total_cmp);
    let (min, p50, p99, max) = (
        delays.first().copied().unwrap_or(0.0),
        percentile(&delays, 50.0),
        percentile(&delays, 99.0),
        delays.last().copied().unwrap_or(0.0),
    );
    println!(
        "{} jobs failing once, delay {} ms: came back after min {min:.2} s, median {p50:.2} s, p99 {p99:.2} s, max {max:.2} s (all done in {total:.2?})",
        opts.jobs, opts.delay_ms
    );
    emit(&json!({
        "bench": "retry_delay",
        "system": "warren",
        "jobs": opts.jobs,
        "delay_s": opts.delay_ms as f64 / 1000.0,
        "min_s": min, "p50_s": p50, "p99_s": p99, "max_s": max,
        "returned": delays.len(),
        "total_s": total.as_secs_f64(),
    }));
    Ok(())
}
