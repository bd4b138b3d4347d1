//! A job type of your own, in your own binary, on the warren library: no change to warren.
//!
//! `thumbnail.render` commands go to `warren.commands`; this example binds its own queue
//! (`acme.thumbnails`, with its parking queue and retry wiring) with a topology file of its
//! own, implements [`Consumer`], and runs it next to warren's HTTP front. The runner gives
//! it everything warren's modules get: manual ack, broker-side retries (60 s after a reported
//! failure, 120 s after an error), dead-lettering after the last attempt with a
//! `failed_jobs` row and a `job.failed` alert, the inbox, timeouts, metrics.
//!
//! ```sh
//! cargo run --example custom_job
//! curl -X POST http://127.0.0.1:8080/v1/jobs/thumbnail.render \
//!   -H 'content-type: application/json' -d '{"image_url": "https://example.com/cat.png", "width": 128}'
//! ```

use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use warren::{
    App, Role, Settings,
    broker::topology::Topology,
    jobs::{Consumer, Job, JobError},
};

/// The job's data.
#[derive(Debug, Deserialize)]
struct Render {
    image_url: String,
    width: u32,
}

/// Renders thumbnails (here: pretends to).
struct Thumbnails;

#[async_trait::async_trait]
impl Consumer for Thumbnails {
    fn name(&self) -> &str {
        "thumbnails"
    }

    fn queue(&self) -> &str {
        "acme.thumbnails"
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        let r: Render = job.data()?; // a body that does not fit is invalid input: parked at once
        if r.width == 0 || r.width > 4096 {
            return Err(JobError::Invalid(format!(
                "width {} is out of range",
                r.width
            )));
        }
        if !r.image_url.starts_with("https://") {
            return Err(JobError::Invalid("image_url must be https".into()));
        }
        tracing::info!(url = %r.image_url, width = r.width, attempt = job.attempt, "Rendering a thumbnail.");
        Ok(())
    }
}

/// warren's topology plus this application's queue, written out as a definitions file.
fn topology_with_thumbnails() -> anyhow::Result<std::path::PathBuf> {
    let mut t = Topology::builtin()?;
    let queue = |name: &str,
                 args: serde_json::Value|
     -> anyhow::Result<warren::broker::topology::QueueDef> {
        Ok(serde_json::from_value(serde_json::json!({
            "name": name, "durable": true, "auto_delete": false, "arguments": args
        }))?)
    };
    let binding = |source: &str,
                   destination: &str,
                   key: &str|
     -> anyhow::Result<warren::broker::topology::BindingDef> {
        Ok(serde_json::from_value(serde_json::json!({
            "source": source, "destination": destination, "destination_type": "queue",
            "routing_key": key, "arguments": {}
        }))?)
    };
    t.queues.push(queue(
        "acme.thumbnails",
        serde_json::json!({
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "warren.dead",
            "x-dead-letter-routing-key": "acme.thumbnails",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": 20
        }),
    )?);
    t.queues.push(queue(
        "acme.thumbnails.dead",
        // A parking queue's delivery limit, never reached (RabbitMQ 4.0's default is 20).
        serde_json::json!({"x-queue-type": "quorum", "x-delivery-limit": 1_000_000}),
    )?);
    t.bindings.push(binding(
        "warren.commands",
        "acme.thumbnails",
        "thumbnail.*",
    )?);
    t.bindings.push(binding(
        "warren.requeue",
        "acme.thumbnails",
        "acme.thumbnails",
    )?);
    t.bindings.push(binding(
        "warren.dead",
        "acme.thumbnails.dead",
        "acme.thumbnails",
    )?);
    let path = std::env::temp_dir().join("acme-topology.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&t)?)?;
    Ok(path)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut settings = Settings::load(None)?;
    warren::telemetry::init(&settings.log);
    settings.amqp.topology_file = Some(topology_with_thumbnails()?);
    let shutdown = CancellationToken::new();
    let running = App::new(settings)
        .modules(Vec::<String>::new())
        .consumer(Thumbnails)
        .start(&[Role::Http, Role::Worker], shutdown.clone())
        .await?;
    tracing::info!(addr = ?running.http_addr, "Example running; ctrl-c stops it.");
    tokio::signal::ctrl_c().await?;
    shutdown.cancel();
    running.wait().await;
    Ok(())
}
