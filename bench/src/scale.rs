//! `warren-bench scale`: job throughput by worker process count, in a scratch vhost.
//!
//! For each count K: N `notification.bench` commands are parked in `warren.notifications`
//! (no consumer yet), then K `warren worker --modules notifications` processes are started
//! (children of this one) and the clock runs from the first notification row to the N-th.
//! The `warren` binary is `--warren-bin`, by default the one next to `warren-bench`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::json;
use warren::{Settings, broker::names::COMMANDS_EXCHANGE};

use crate::common::{ScratchVhost, bench_publisher, emit, publish_all};

/// Options of `warren-bench scale`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ScaleBench {
    /// Messages per run.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Worker process counts to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    processes: Vec<usize>,
    /// The `warren` binary the workers run (default: `warren` in the directory of this
    /// binary, which is where cargo builds both).
    #[arg(long)]
    warren_bin: Option<PathBuf>,
}

/// Runs the scale-out benchmark against the broker and database in `settings`.
pub(crate) async fn scale(mut settings: Settings, opts: ScaleBench) -> anyhow::Result<()> {
    anyhow::ensure!(opts.messages > 0, "messages must be positive");
    let exe = match &opts.warren_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("warren"),
    };
    anyhow::ensure!(
        exe.is_file(),
        "no warren binary at {} (build it: cargo build -p warren, or give --warren-bin)",
        exe.display()
    );
    let vhost = ScratchVhost::create(&mut settings, "scale").await?;
    let result = run_scale(settings, &opts, &exe).await;
    vhost.delete().await;
    result
}

/// Kills the worker processes when dropped (also when the run fails).
struct Children(Vec<std::process::Child>);

impl Children {
    /// Starts `k` `warren worker --modules notifications` processes against `settings`.
    fn spawn(exe: &Path, settings: &Settings, k: usize) -> anyhow::Result<Self> {
        let mut children = Self(Vec::new());
        for _ in 0..k {
            children.0.push(
                std::process::Command::new(exe)
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
        Ok(children)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn run_scale(settings: Settings, opts: &ScaleBench, exe: &Path) -> anyhow::Result<()> {
    let db = warren::store::connect(&settings.database).await?;
    let (broker, publisher) = bench_publisher(&settings, "warren-bench scale").await?;
    let mut rows = Vec::new();
    for &k in &opts.processes {
        anyhow::ensure!(k > 0, "process counts must be positive");
        // Park N jobs first (no consumer yet), so the drain is measured alone.
        let before = entities::notifications::Entity::find().count(&db).await?;
        let publish = publish_all(
            &publisher,
            opts.messages,
            64,
            COMMANDS_EXCHANGE,
            "notification.bench",
        )
        .await?;
        let children = Children::spawn(exe, &settings, k)?;
        let drain = drain_time(&db, before, opts.messages).await?;
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

/// The time from the first new notification row (above `before`) to the `n`-th: the clock
/// starts when the first worker takes a message. Up to 900 s.
async fn drain_time(
    db: &sea_orm::DatabaseConnection,
    before: u64,
    n: u64,
) -> anyhow::Result<Duration> {
    let limit = Instant::now() + Duration::from_secs(900);
    let first = loop {
        let rows = entities::notifications::Entity::find().count(db).await?;
        if rows > before {
            break Instant::now();
        }
        anyhow::ensure!(Instant::now() < limit, "no worker started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    loop {
        let rows = entities::notifications::Entity::find().count(db).await?;
        if rows >= before + n {
            return Ok(first.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < limit,
            "only {} of {n} handled",
            rows - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
