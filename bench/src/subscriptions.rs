//! `warren-bench subscriptions`: HTTP subscriptions' deliveries per second (issue 18 point 9),
//! against the ceiling measured in the same run.
//!
//! A local HTTP receiver answers `204` at once (in this process, on a thread and a
//! single-threaded Tokio runtime of its own, so it does not queue behind the consumer's
//! tasks); it reads each body's sequence number and publish time, so it counts every message
//! (each must arrive exactly once) and the delivery latency, publish to receiver.
//!
//! At each concurrency C (default 1, 16, 64), two relays drain the same queue
//! (`warren.sub.bench`, a quorum queue of the scratch vhost, fed through `warren.events`):
//!
//! - **warren**: `App` with the worker role running only the subscription `bench`
//!   (`concurrency = C`, so prefetch 2C), which delivers CloudEvents in binary mode through
//!   the ordinary runner (the inbox check and row in the configured database, the ack);
//! - **bare** (the ceiling): a lapin consumer with prefetch 2C and at most C deliveries in
//!   flight that POSTs each message's body as it is, with one pooled `reqwest` client and
//!   headers of about the same size (`content-type`, `ce-specversion`, `ce-id`, `ce-source`,
//!   `ce-type`, `ce-time`, `traceparent`, `warren-attempt`, `warren-subscription`), and
//!   acks after the response. No inbox, no parsing, no signature.
//!
//! Each relay runs two phases: **throughput**, N messages published first and then drained
//! (rate from the first arrival at the receiver to the last), and **latency**, M messages
//! published at a steady rate while the relay runs (p50/p99 of publish to receiver).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use warp::Filter;
use warren::{
    App, Role, Settings,
    broker::{
        envelope::{Event, Meta},
        names::EVENTS_EXCHANGE,
        publisher::{PublishError, Publisher},
    },
    config::SubscriptionSettings,
};

use crate::common::{ScratchVhost, bench_publisher, db_kind, emit, percentile, wait_done};

/// The subscription's name (its queue is `warren.sub.bench`).
const SUBSCRIPTION: &str = "bench";
/// The event every message is (the subscription's only pattern).
const EVENT: &str = "bench.sub";

/// Options of `warren-bench subscriptions`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SubscriptionsBench {
    /// Messages pre-filled in the queue for each throughput phase.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Concurrencies to measure (deliveries in flight; prefetch twice that), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Messages of each latency phase.
    #[arg(long, default_value_t = 5_000)]
    latency_messages: u64,
    /// Publish rate of the latency phases (messages per second).
    #[arg(long, default_value_t = 500)]
    latency_rate: u64,
    /// Concurrent publishing tasks that pre-fill the queue.
    #[arg(long, default_value_t = 64)]
    publishers: u64,
    /// Padding in each message's data (bytes), for a body of a realistic size.
    #[arg(long, default_value_t = 120)]
    pad: usize,
    /// warren's subscription setting `inbox`: `true` (the default) writes an inbox row per
    /// delivery; `false` leaves a repeat after a lost ack to the receiver.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    inbox: bool,
}

/// Microseconds since the Unix epoch, now (the publish stamp and the arrival).
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The sequence number and publish stamp of a delivery's body: warren sends the event's
/// data (`{"i", "sent_us", ...}`), the bare relay the whole envelope (`{"data": {...}}`).
fn stamp(body: &[u8]) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let d = if v.get("sent_us").is_some() {
        &v
    } else {
        v.get("data")?
    };
    Some((d.get("i")?.as_u64()?, d.get("sent_us")?.as_u64()?))
}

/// What the receiver saw in one phase.
#[derive(Debug, Default)]
struct Phase {
    /// How often each sequence number arrived.
    seen: Vec<u32>,
    /// Latency of each arrival, publish to receiver (ms).
    latencies_ms: Vec<f64>,
    /// The first and the last arrival.
    first: Option<Instant>,
    last: Option<Instant>,
    /// Bodies without a stamp or with a number outside the phase.
    strays: u64,
}

/// The receiver's state: the current phase, and the arrivals counted for waiting on.
#[derive(Debug, Default)]
struct Tally {
    phase: Mutex<Phase>,
    arrived: AtomicU64,
}

impl Tally {
    /// Starts a phase of `n` messages.
    fn reset(&self, n: u64) {
        let mut p = self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *p = Phase {
            seen: vec![0; usize::try_from(n).unwrap_or(0)],
            ..Phase::default()
        };
        self.arrived.store(0, Ordering::Relaxed);
    }

    /// Records one delivery's body.
    fn record(&self, body: &[u8]) {
        let at = Instant::now();
        let arrived_us = now_us();
        let mut p = self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match stamp(body).and_then(|(i, sent)| Some((usize::try_from(i).ok()?, sent))) {
            Some((i, sent)) if i < p.seen.len() => {
                p.seen[i] += 1;
                p.latencies_ms
                    .push(arrived_us.saturating_sub(sent) as f64 / 1000.0);
                p.first.get_or_insert(at);
                p.last = Some(at);
            }
            _ => p.strays += 1,
        }
        drop(p);
        self.arrived.fetch_add(1, Ordering::Relaxed);
    }

    /// The phase's figures: (rate first to last arrival, p50 ms, p99 ms, missing, duplicates,
    /// strays).
    fn summary(&self) -> Summary {
        let mut p = self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = p.seen.len();
        let rate = match (p.first, p.last) {
            (Some(f), Some(l)) if n > 1 => {
                (n - 1) as f64 / l.duration_since(f).as_secs_f64().max(1e-9)
            }
            _ => 0.0,
        };
        p.latencies_ms.sort_by(f64::total_cmp);
        Summary {
            rate,
            p50_ms: percentile(&p.latencies_ms, 50.0),
            p99_ms: percentile(&p.latencies_ms, 99.0),
            missing: p.seen.iter().filter(|c| **c == 0).count() as u64,
            duplicates: p.seen.iter().map(|c| u64::from(c.saturating_sub(1))).sum(),
            strays: p.strays,
        }
    }
}

/// One phase's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    missing: u64,
    duplicates: u64,
    strays: u64,
}

/// The local receiver: answers `204` to every `POST /hook` and records it; stops when
/// dropped.
struct Receiver {
    addr: SocketAddr,
    tally: Arc<Tally>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts it on 127.0.0.1 (a free port), on its own thread and runtime.
    fn start() -> anyhow::Result<Self> {
        let tally = Arc::new(Tally::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, bound) = std::sync::mpsc::channel::<anyhow::Result<SocketAddr>>();
        let state = tally.clone();
        let thread = std::thread::Builder::new()
            .name("bench-receiver".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = ready.send(listener.local_addr().map_err(Into::into));
                    let hook = warp::post()
                        .and(warp::path("hook"))
                        .and(warp::body::bytes())
                        .map(move |body: Bytes| {
                            state.record(&body);
                            warp::reply::with_status("", warp::http::StatusCode::NO_CONTENT)
                        });
                    warp::serve(hook)
                        .incoming(listener)
                        .graceful(async {
                            let _ = stopped.await;
                        })
                        .run()
                        .await;
                });
            })?;
        let addr = bound.recv()??;
        Ok(Self {
            addr,
            tally,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The URL deliveries go to.
    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Publishes one message: the event `bench.sub` whose data carries its number, the publish
/// stamp and the padding.
async fn publish_one(publisher: &Publisher, i: u64, pad: &str) -> Result<(), PublishError> {
    let e = Event::new(
        EVENT,
        None,
        json!({"i": i, "sent_us": now_us(), "pad": pad}),
    );
    let meta = Meta::for_event(&e);
    publisher
        .publish(EVENTS_EXCHANGE, EVENT, &e.to_json(), meta.properties())
        .await
}

/// Pre-fills the queue with messages `0..n` from `tasks` concurrent tasks.
async fn fill(publisher: &Publisher, n: u64, tasks: u64, pad: &Arc<str>) -> anyhow::Result<()> {
    let tasks = tasks.clamp(1, n.max(1));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (publisher, pad) = (publisher.clone(), pad.clone());
        handles.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
                publish_one(&publisher, i, &pad).await?;
                i += tasks;
            }
            Ok::<(), PublishError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

/// Publishes messages `0..n` at `rate` per second (each publish its own task, so a slow
/// confirm does not hold back the next one).
async fn paced(publisher: &Publisher, n: u64, rate: u64, pad: &Arc<str>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut handles = Vec::new();
    for i in 0..n {
        tick.tick().await;
        let (publisher, pad) = (publisher.clone(), pad.clone());
        handles.push(tokio::spawn(async move {
            publish_one(&publisher, i, &pad).await
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

/// A relay under test: started, then stopped after its phases.
enum Relay {
    Warren(Box<warren::Running>, CancellationToken),
    Bare(
        tokio::task::JoinHandle<anyhow::Result<u64>>,
        CancellationToken,
    ),
}

impl Relay {
    /// Stops it; the bare relay's failed deliveries are an error.
    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Warren(running, shutdown) => {
                shutdown.cancel();
                running.wait().await;
            }
            Self::Bare(task, shutdown) => {
                shutdown.cancel();
                let failed = task.await??;
                anyhow::ensure!(failed == 0, "the bare relay had {failed} failed deliveries");
            }
        }
        Ok(())
    }
}

/// The bare relay: lapin and reqwest only. Returns how many deliveries did not get a 2xx.
async fn bare_relay(
    amqp_url: String,
    queue: String,
    url: String,
    source: String,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<u64> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(60))
        .build()?;
    let conn = Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let prefetch = u16::try_from(concurrency.saturating_mul(2)).unwrap_or(u16::MAX);
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut stream = ch
        .basic_consume(
            queue.as_str().into(),
            "bare-relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let failed = Arc::new(AtomicU64::new(0));
    let source: Arc<str> = source.into();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p?,
        };
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
            d = stream.next() => match d {
                Some(d) => d?,
                None => break,
            },
        };
        let (client, url, source, failed) =
            (client.clone(), url.clone(), source.clone(), failed.clone());
        tokio::spawn(async move {
            let props = &delivery.properties;
            let id = props.message_id().as_ref().map_or("", |s| s.as_str());
            let time = props
                .timestamp()
                .and_then(|t| i64::try_from(t).ok())
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let sent = client
                .post(url.as_str())
                .header("content-type", "application/json")
                .header("ce-specversion", "1.0")
                .header("ce-id", id)
                .header("ce-source", source.as_ref())
                .header("ce-type", delivery.routing_key.as_str())
                .header("ce-time", time)
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .header("warren-attempt", "1")
                .header("warren-subscription", SUBSCRIPTION)
                .body(delivery.data.clone())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let ok = matches!(&sent, Ok(r) if r.status().is_success());
            let settled = if ok {
                delivery.ack(BasicAckOptions::default()).await
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
            };
            if settled.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    // Wait for the deliveries in flight, then leave (unacked prefetched messages go back).
    let all = u32::try_from(concurrency.max(1)).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await?;
    let _ = ch.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(failed.load(Ordering::Relaxed))
}

/// One relay's figures at one concurrency.
#[derive(Debug, Clone, Copy)]
struct RelayFigures {
    throughput: Summary,
    latency: Summary,
}

/// What the benchmark holds for every phase.
struct Bench<'a> {
    settings: &'a Settings,
    opts: &'a SubscriptionsBench,
    publisher: &'a Publisher,
    receiver: &'a Receiver,
    pad: Arc<str>,
}

impl Bench<'_> {
    /// The settings with the subscription at `concurrency`.
    fn settings_at(&self, concurrency: usize) -> Settings {
        let mut settings = self.settings.clone();
        let mut sub = SubscriptionSettings::new(SUBSCRIPTION, self.receiver.url());
        sub.events = vec![EVENT.to_owned()];
        sub.concurrency = concurrency;
        sub.timeout_ms = 10_000;
        sub.inbox = self.opts.inbox;
        settings.subscriptions = vec![sub];
        settings
    }

    /// Starts warren's worker with only the subscription, or the bare relay.
    async fn start(&self, warren: bool, concurrency: usize) -> anyhow::Result<Relay> {
        let shutdown = CancellationToken::new();
        let settings = self.settings_at(concurrency);
        if warren {
            let running = App::new(settings)
                .modules([format!("sub.{SUBSCRIPTION}")])
                .start(&[Role::Worker], shutdown.clone())
                .await?;
            return Ok(Relay::Warren(Box::new(running), shutdown));
        }
        let vhost = url::Url::parse(settings.amqp.url.expose())?
            .path()
            .trim_start_matches('/')
            .to_owned();
        let source = format!("/warren/{vhost}/{EVENTS_EXCHANGE}");
        let task = tokio::spawn(bare_relay(
            settings.amqp.url.expose().to_owned(),
            settings.subscriptions[0].queue(),
            self.receiver.url(),
            source,
            concurrency,
            shutdown.clone(),
        ));
        Ok(Relay::Bare(task, shutdown))
    }

    /// Waits until `n` arrived, then a moment more (for a duplicate to show), and sums up.
    async fn settle(&self, n: u64) -> anyhow::Result<Summary> {
        wait_done(&self.receiver.tally.arrived, n, Duration::from_secs(900)).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(self.receiver.tally.summary())
    }

    /// Both phases of one relay at one concurrency.
    async fn relay(&self, warren: bool, concurrency: usize) -> anyhow::Result<RelayFigures> {
        let who = if warren { "warren" } else { "bare" };
        let (n, m) = (self.opts.messages, self.opts.latency_messages);
        let tally = &self.receiver.tally;
        tally.reset(n);
        fill(self.publisher, n, self.opts.publishers, &self.pad).await?;
        let relay = self.start(warren, concurrency).await?;
        let phases = async {
            let throughput = self.settle(n).await?;
            tally.reset(m);
            paced(self.publisher, m, self.opts.latency_rate, &self.pad).await?;
            let latency = self.settle(m).await?;
            Ok::<_, anyhow::Error>(RelayFigures {
                throughput,
                latency,
            })
        }
        .await;
        let stopped = relay.stop().await;
        let figures = phases?;
        stopped?;
        println!(
            "{who:>6} at concurrency {concurrency:>3}: {:.0} deliveries/s ({n} pre-filled); latency at {} msg/s p50 {:.1} ms, p99 {:.1} ms; missing {}, duplicates {}, strays {}",
            figures.throughput.rate,
            self.opts.latency_rate,
            figures.latency.p50_ms,
            figures.latency.p99_ms,
            figures.throughput.missing + figures.latency.missing,
            figures.throughput.duplicates + figures.latency.duplicates,
            figures.throughput.strays + figures.latency.strays,
        );
        Ok(figures)
    }
}

/// Runs the benchmark in a scratch vhost of the configured broker, with the configured
/// database (warren's inbox).
pub(crate) async fn subscriptions(
    mut settings: Settings,
    opts: SubscriptionsBench,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.messages > 1 && opts.latency_messages > 0,
        "--messages must be above 1 and --latency-messages above 0"
    );
    anyhow::ensure!(
        !opts.concurrency.is_empty() && opts.concurrency.iter().all(|c| *c > 0),
        "each --concurrency must be above 0"
    );
    let vhost = ScratchVhost::create(&mut settings, "subs").await?;
    let result = run(settings, &opts).await;
    vhost.delete().await;
    result
}

async fn run(settings: Settings, opts: &SubscriptionsBench) -> anyhow::Result<()> {
    let receiver = Receiver::start()?;
    let mut declared = settings.clone();
    let mut sub = SubscriptionSettings::new(SUBSCRIPTION, receiver.url());
    sub.events = vec![EVENT.to_owned()];
    declared.subscriptions = vec![sub];
    let (broker, publisher) = bench_publisher(&declared, "warren-bench subscriptions").await?;
    let bench = Bench {
        settings: &settings,
        opts,
        publisher: &publisher,
        receiver: &receiver,
        pad: "x".repeat(opts.pad).into(),
    };
    let mut rows = Vec::new();
    let mut outcome = Ok(());
    for &c in &opts.concurrency {
        let pair = async {
            let w = bench.relay(true, c).await?;
            let b = bench.relay(false, c).await?;
            Ok::<_, anyhow::Error>((w, b))
        }
        .await;
        match pair {
            Ok(p) => rows.push((c, p)),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    publisher.close().await;
    broker.close();
    drop(receiver);
    outcome?;
    report(&settings, opts, &rows);
    Ok(())
}

/// Prints a Markdown table and a `BENCH` line per concurrency.
fn report(
    settings: &Settings,
    opts: &SubscriptionsBench,
    rows: &[(usize, (RelayFigures, RelayFigures))],
) {
    let ratio =
        |w: &RelayFigures, b: &RelayFigures| w.throughput.rate / b.throughput.rate.max(1e-9);
    println!(
        "| concurrency | warren deliveries/s | bare relay deliveries/s | warren / bare | warren p50 | p99 | bare p50 | p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (c, (w, b)) in rows {
        println!(
            "| {c} | {:.0} | {:.0} | {:.2} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            w.throughput.rate,
            b.throughput.rate,
            ratio(w, b),
            w.latency.p50_ms,
            w.latency.p99_ms,
            b.latency.p50_ms,
            b.latency.p99_ms
        );
    }
    let side = |f: &RelayFigures| {
        json!({
            "rate": f.throughput.rate,
            "p50_ms": f.latency.p50_ms,
            "p99_ms": f.latency.p99_ms,
            "missing": f.throughput.missing + f.latency.missing,
            "duplicates": f.throughput.duplicates + f.latency.duplicates,
            "strays": f.throughput.strays + f.latency.strays,
        })
    };
    for (c, (w, b)) in rows {
        emit(&json!({
            "bench": "subscriptions",
            "database": db_kind(settings),
            "concurrency": c,
            "prefetch": c * 2,
            "messages": opts.messages,
            "latency_messages": opts.latency_messages,
            "latency_rate": opts.latency_rate,
            "inbox": opts.inbox,
            "warren": side(w),
            "bare": side(b),
            "ratio": ratio(w, b),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::{Tally, stamp};

    #[test]
    fn the_stamp_is_read_from_the_data_or_the_envelope() {
        assert_eq!(
            stamp(br#"{"i": 3, "sent_us": 17, "pad": "x"}"#),
            Some((3, 17))
        );
        assert_eq!(
            stamp(br#"{"event_id": "e", "data": {"i": 4, "sent_us": 18}}"#),
            Some((4, 18))
        );
        assert_eq!(stamp(b"not json"), None);
        assert_eq!(stamp(br#"{"data": {"i": 1}}"#), None);
    }

    #[test]
    fn the_tally_counts_missing_duplicates_and_strays() {
        let t = Tally::default();
        t.reset(3);
        t.record(br#"{"i": 0, "sent_us": 1}"#);
        t.record(br#"{"i": 0, "sent_us": 1}"#);
        t.record(br#"{"i": 2, "sent_us": 1}"#);
        t.record(br#"{"i": 9, "sent_us": 1}"#);
        let s = t.summary();
        assert_eq!((s.missing, s.duplicates, s.strays), (1, 1, 1));
        assert!(s.rate > 0.0);
    }
}
