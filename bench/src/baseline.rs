//! The ceilings the benchmark suite measures warren against, written straight on lapin and
//! warp with none of warren's own code:
//!
//! - `warren-bench bare-server`: the smallest honest HTTP publish loop (one AMQP connection,
//!   N confirm channels used round-robin, one persistent `mandatory` publish per request, the
//!   answer after the confirm). What `POST /v1/events/{name}` costs beyond it is warren's.
//! - `warren-bench raw`: a raw lapin publisher (many confirms in flight), a raw lapin consumer
//!   (acks sent without waiting on each) draining what it published, and both at once.
//!
//! Each prints one `BENCH {json}` line for the suite (`scripts/bench-suite.sh`).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::json;
use warp::Filter;

use crate::common::{ScratchVhost, emit};

/// Options of `warren-bench bare-server`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BareServer {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
    /// Confirm channels on the one connection.
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Exchange to publish to (the routing key is the last path segment).
    #[arg(long, default_value = "warren.events")]
    exchange: String,
}

/// Serves `POST /publish/{routing_key}` (publish the body, answer 202 after the confirm) and
/// `GET /hello`, until interrupted.
pub(crate) async fn bare_server(amqp_url: &str, opts: BareServer) -> anyhow::Result<()> {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let mut channels = Vec::with_capacity(opts.channels);
    for _ in 0..opts.channels.max(1) {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let channels: Arc<Vec<Channel>> = Arc::new(channels);
    let next = Arc::new(AtomicUsize::new(0));
    let exchange: Arc<str> = opts.exchange.into();
    let publish = warp::post()
        .and(warp::path!("publish" / String))
        .and(warp::body::bytes())
        .then(move |key: String, body: Bytes| {
            let (channels, next, exchange) = (channels.clone(), next.clone(), exchange.clone());
            async move {
                let ch = &channels[next.fetch_add(1, Ordering::Relaxed) % channels.len()];
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into());
                let options = BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                };
                let status = match ch
                    .basic_publish(
                        exchange.as_ref().into(),
                        key.as_str().into(),
                        options,
                        &body,
                        props,
                    )
                    .await
                {
                    Ok(confirm) => match confirm.await {
                        Ok(Confirmation::Ack(None)) => warp::http::StatusCode::ACCEPTED,
                        _ => warp::http::StatusCode::SERVICE_UNAVAILABLE,
                    },
                    Err(_) => warp::http::StatusCode::SERVICE_UNAVAILABLE,
                };
                warp::reply::with_status("", status)
            }
        });
    let hello = warp::get()
        .and(warp::path("hello"))
        .map(|| warp::reply::with_status("hello", warp::http::StatusCode::OK));
    let listener = tokio::net::TcpListener::bind(opts.addr).await?;
    println!("bare server on {}", listener.local_addr()?);
    let server = warp::serve(publish.or(hello))
        .incoming(listener)
        .graceful(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .run();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = server => {}
        _ = term.recv() => {}
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

/// Options of `warren-bench raw`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RawBench {
    /// Messages per phase.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// `quorum` or `classic`.
    #[arg(long, default_value = "quorum")]
    queue_type: String,
    /// Publishing channels.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Confirms in flight (all channels together).
    #[arg(long, default_value_t = 1024)]
    in_flight: usize,
    /// Consumer prefetch.
    #[arg(long, default_value_t = 500)]
    prefetch: u16,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
}

/// Publishes `n` persistent messages to `queue` through the default exchange, `in_flight`
/// confirms outstanding at most. Returns the time taken.
async fn raw_publish(
    channels: &[Channel],
    queue: &str,
    n: u64,
    in_flight: usize,
    body: &[u8],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for i in 0..n {
        // At most `in_flight` confirms outstanding: wait for the oldest ones as needed.
        while pending.len() >= in_flight.max(1) {
            if let Some(r) = pending.next().await {
                r?;
            }
        }
        let ch = &channels[usize::try_from(i).unwrap_or(0) % channels.len()];
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        pending.push(async move {
            match confirm.await? {
                Confirmation::Ack(_) => Ok::<(), anyhow::Error>(()),
                other => anyhow::bail!("not confirmed: {other:?}"),
            }
        });
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(started.elapsed())
}

/// Consumes `n` messages from `queue`, acking each without waiting for the ack to be written
/// before taking the next. Returns the time from the first delivery to the last.
async fn raw_consume(
    conn: &Connection,
    queue: &str,
    n: u64,
    prefetch: u16,
) -> anyhow::Result<Duration> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut stream = ch
        .basic_consume(
            queue.into(),
            "raw-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut acks = FuturesUnordered::new();
    let mut got = 0u64;
    let mut first = None;
    while got < n {
        tokio::select! {
            Some(r) = acks.next(), if !acks.is_empty() => {
                r?;
            }
            next = tokio::time::timeout(Duration::from_secs(60), stream.next()) => {
                let delivery = next
                    .map_err(|_| anyhow::anyhow!("no delivery for 60 s after {got} of {n}"))?
                    .ok_or_else(|| anyhow::anyhow!("consumer stream ended after {got}"))??;
                first.get_or_insert_with(Instant::now);
                got += 1;
                acks.push(async move {
                    delivery.ack(BasicAckOptions::default()).await.map(drop)
                });
            }
        }
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    let _ = ch.close(200, "done".into()).await;
    Ok(elapsed)
}

/// Runs the raw publisher and consumer phases in a scratch vhost of the configured broker.
pub(crate) async fn raw(mut settings: warren::Settings, opts: RawBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(opts.queue_type.as_str(), "quorum" | "classic"),
        "queue type must be quorum or classic"
    );
    let vhost = ScratchVhost::create(&mut settings, "raw").await?;
    let result = run_raw(settings.amqp.url.expose(), &opts).await;
    vhost.delete().await;
    result
}

async fn run_raw(amqp_url: &str, opts: &RawBench) -> anyhow::Result<()> {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let queue = format!("bench.raw.{}.{}", opts.queue_type, std::process::id());
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(opts.queue_type.as_str().into()),
    );
    let admin = conn.create_channel().await?;
    admin
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    let mut channels = Vec::new();
    for _ in 0..opts.channels.max(1) {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let body = vec![b'x'; opts.size];
    let n = opts.messages;

    let publish = raw_publish(&channels, &queue, n, opts.in_flight, &body).await?;
    let drain = raw_consume(&conn, &queue, n, opts.prefetch).await?;
    // Both at once: the consumer runs while the publisher sends.
    let started = Instant::now();
    let (p, c) = tokio::join!(
        raw_publish(&channels, &queue, n, opts.in_flight, &body),
        raw_consume(&conn, &queue, n, opts.prefetch)
    );
    p?;
    c?;
    let e2e = started.elapsed();
    let _ = admin
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;

    let rate = |d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "raw lapin, {} queue, {n} messages of {} bytes: publish {:.0} msg/s ({} channels, {} confirms in flight), drain {:.0} msg/s (prefetch {}), both at once {:.0} msg/s",
        opts.queue_type,
        opts.size,
        rate(publish),
        opts.channels,
        opts.in_flight,
        rate(drain),
        opts.prefetch,
        rate(e2e)
    );
    emit(&json!({
        "bench": "raw",
        "queue_type": opts.queue_type,
        "messages": n,
        "size": opts.size,
        "channels": opts.channels,
        "in_flight": opts.in_flight,
        "prefetch": opts.prefetch,
        "publish_rate": rate(publish),
        "drain_rate": rate(drain),
        "e2e_rate": rate(e2e),
    }));
    Ok(())
}

/// Options of `warren-bench depth`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Depth {
    /// Queues to count.
    #[arg(required = true)]
    queues: Vec<String>,
}

/// Prints each queue's message count as the broker's queue process has it (a passive
/// declare), one `name count` line each. The management API's counts, and `rabbitmqctl`'s for
/// quorum queues, trail by a statistics interval; this one does not.
pub(crate) async fn depth(amqp_url: &str, opts: Depth) -> anyhow::Result<()> {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    for queue in &opts.queues {
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        println!("{queue} {}", q.message_count());
        let _ = ch.close(200, "done".into()).await;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}
