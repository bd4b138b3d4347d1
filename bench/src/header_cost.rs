//! `warren-bench header-cost`: what warren's message format costs the broker, per message,
//! in RabbitMQ's own CPU time (`/proc/<pid>/stat` of the broker's `beam.smp`).
//!
//! Three variants of the same event are published, in alternating rounds, to one quorum
//! queue of a scratch vhost through warren's confirming publisher (the queue purged between
//! rounds):
//! - **bare**: the event's data alone, persistent, no other property or header;
//! - **envelope**: warren's envelope (the JSON body, `message_id`, `type`, `timestamp`,
//!   `app_id`, `correlation_id`, `traceparent`, `x-request-id`, `x-warren-attempt`) without the
//!   CloudEvents headers (the publisher's bench-only switch);
//! - **cloudevents**: the same with the `ce-*` headers, as warren publishes every message.
//!
//! Prints one line per variant (the median over the rounds), the ratios, and a `BENCH {json}`
//! line.

use std::time::Instant;

use lapin::{
    BasicProperties,
    options::{QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::json;
use warren::broker::{
    Broker,
    envelope::{Event, Meta},
    publisher::{PublishError, Publisher},
};

use crate::common::{ScratchVhost, emit, percentile};

/// Options of `warren-bench header-cost`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HeaderCost {
    /// Messages per variant and round.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Rounds (each runs the three variants, in turn).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent publishing tasks.
    #[arg(long, default_value_t = 64)]
    tasks: u64,
    /// The broker's process id (default: the process listening on the AMQP URL's port).
    #[arg(long)]
    broker_pid: Option<u32>,
}

const QUEUE: &str = "bench.headers";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    Bare,
    Envelope,
    CloudEvents,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Bare => "bare",
            Variant::Envelope => "envelope",
            Variant::CloudEvents => "cloudevents",
        }
    }
}

/// Runs the rounds in a scratch vhost.
pub(crate) async fn header_cost(
    mut settings: warren::Settings,
    opts: HeaderCost,
) -> anyhow::Result<()> {
    let port = url::Url::parse(settings.amqp.url.expose())?
        .port()
        .unwrap_or(5672);
    let pid = match opts.broker_pid {
        Some(p) => p,
        None => listener_pid(port).ok_or_else(|| {
            anyhow::anyhow!("no process found listening on port {port}; pass --broker-pid")
        })?,
    };
    let vhost = ScratchVhost::create(&mut settings, "headers").await?;
    let result = run(&settings, &opts, pid).await;
    vhost.delete().await;
    result
}

async fn run(settings: &warren::Settings, opts: &HeaderCost, pid: u32) -> anyhow::Result<()> {
    let broker = Broker::new(settings, "warren-bench-headers")?;
    let ch = broker.channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    let channels = settings.amqp.publish_channels;
    let timeout = settings.amqp.publish_timeout();
    let with_ce = Publisher::new(broker.clone(), channels, timeout, Default::default());
    let without_ce =
        Publisher::new(broker.clone(), channels, timeout, Default::default()).without_cloudevents();
    let variants = [Variant::Bare, Variant::Envelope, Variant::CloudEvents];
    let mut per_message: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..opts.rounds.max(1) {
        for (i, v) in variants.iter().enumerate() {
            let publisher = if *v == Variant::CloudEvents {
                &with_ce
            } else {
                &without_ce
            };
            let cpu0 = broker_cpu_s(pid);
            let started = Instant::now();
            publish(publisher, *v, opts.messages, opts.tasks).await?;
            let elapsed = started.elapsed().as_secs_f64();
            let cpu = broker_cpu_s(pid) - cpu0;
            per_message[i].push(cpu / opts.messages as f64 * 1e6);
            rates[i].push(opts.messages as f64 / elapsed);
            ch.queue_purge(QUEUE.into(), QueuePurgeOptions::default())
                .await?;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(v, 50.0)
    };
    let us: Vec<f64> = per_message.iter_mut().map(median).collect();
    let rate: Vec<f64> = rates.iter_mut().map(median).collect();
    for (i, v) in variants.iter().enumerate() {
        println!(
            "{:>11}: RabbitMQ {:.1} µs CPU per message, {:.0} msg/s (median of {} rounds of {})",
            v.name(),
            us[i],
            rate[i],
            opts.rounds,
            opts.messages
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    println!(
        "envelope / bare {:.2}, cloudevents / envelope {:.2}, cloudevents / bare {:.2}",
        ratio(us[1], us[0]),
        ratio(us[2], us[1]),
        ratio(us[2], us[0])
    );
    emit(&json!({
        "bench": "header_cost",
        "messages": opts.messages,
        "rounds": opts.rounds,
        "broker_us_per_message": {"bare": us[0], "envelope": us[1], "cloudevents": us[2]},
        "publish_rate": {"bare": rate[0], "envelope": rate[1], "cloudevents": rate[2]},
        "ratio": {
            "envelope_over_bare": ratio(us[1], us[0]),
            "cloudevents_over_envelope": ratio(us[2], us[1]),
            "cloudevents_over_bare": ratio(us[2], us[0]),
        },
    }));
    ch.queue_delete(QUEUE.into(), QueueDeleteOptions::default())
        .await?;
    with_ce.close().await;
    without_ce.close().await;
    broker.close();
    Ok(())
}

/// Publishes `n` messages of `variant` from `tasks` concurrent tasks.
async fn publish(
    publisher: &Publisher,
    variant: Variant,
    n: u64,
    tasks: u64,
) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let publisher = publisher.clone();
        let share = n / tasks + u64::from(t < n % tasks);
        handles.push(tokio::spawn(async move {
            for i in 0..share {
                let data = json!({"user_id": format!("bench-{t}"), "i": i, "pad": "x".repeat(120)});
                let e = Event::new("order.created", Some(format!("order-{t}-{i}")), data);
                let (body, props) = match variant {
                    Variant::Bare => (
                        serde_json::to_vec(&e.data).unwrap_or_default(),
                        BasicProperties::default().with_delivery_mode(2),
                    ),
                    Variant::Envelope | Variant::CloudEvents => {
                        let mut meta = Meta::for_event(&e);
                        meta.correlation_id = Some(format!("req-{t}-{i}"));
                        meta.request_id = meta.correlation_id.clone();
                        meta.traceparent = Some(
                            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
                        );
                        (
                            e.to_json(),
                            publisher.properties("warren.events", &e, &meta),
                        )
                    }
                };
                publisher.publish("", QUEUE, &body, props).await?;
            }
            Ok::<(), PublishError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

/// CPU seconds (user + system) of process `pid` so far.
fn broker_cpu_s(pid: u32) -> f64 {
    crate::cpu::pid_s(pid)
}

/// The process listening on TCP `port` (IPv4 or IPv6), found through `/proc/net/tcp*` and the
/// processes' socket descriptors.
fn listener_pid(port: u16) -> Option<u32> {
    let hex = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local address, state 0A (LISTEN), inode.
            if f.len() > 9 && f[1].ends_with(&hex) && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.to_str() == Some(i.as_str()))
            {
                return Some(pid);
            }
        }
    }
    None
}
