//! Scale-out without Docker: two worker processes share one queue (competing consumers), and
//! killing one mid-run loses nothing and repeats nothing.
//!
//! Also the tools other fault tests use to show a fault landed: a worker process's metrics
//! (`messages_in_flight`, its requeues), the broker's redelivery counts, a relay that stalls
//! one process's connection (so a kill finds it holding work), and the comparison of handled
//! ids with accepted ones.

use std::{
    collections::{HashMap, HashSet},
    process::{Command, Stdio},
    time::Duration,
};

use sea_orm::EntityTrait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren::broker::topology::encode;

use crate::{
    helpers::{TestApp, TestVhost, eventually, management_url, spawn_app},
    reliability::KillOnDrop,
};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn worker(app: &TestApp, metrics_port: u16) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["worker", "--modules", "notifications"])
            .env("WARREN_AMQP__URL", app.vhost.amqp_url())
            .env("WARREN_AMQP__MANAGEMENT_URL", management_url())
            .env("WARREN_DATABASE__URL", &app.db.url)
            .env("WARREN_METRICS__ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("WARREN_JOBS__FAILURE_DELAY_MS", "1000")
            .env("WARREN_JOBS__ERROR_DELAY_MS", "2000")
            .env("WARREN_LOG__FILTER", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts"),
    )
}

/// One reading of a process's metrics (Prometheus text or OpenMetrics, as a worker's
/// listener or [`warren::telemetry::metrics::Metrics::render`] gives them).
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape(pub(crate) String);

impl Scrape {
    /// The value of one series, `name{labels}` exactly as rendered; `None` when absent.
    pub(crate) fn value(&self, series: &str) -> Option<u64> {
        self.0.lines().find_map(|l| {
            let v: f64 = l
                .strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()?;
            Some(v as u64)
        })
    }

    /// Handlers running on `queue` now: each holds an unacknowledged message.
    pub(crate) fn in_flight(&self, queue: &str) -> u64 {
        self.value(&format!(r#"messages_in_flight{{queue="{queue}"}}"#))
            .unwrap_or(0)
    }

    /// `queue_messages_total` for `queue` and `action` (consumed, requeued, ...).
    pub(crate) fn queue_messages(&self, queue: &str, action: &str) -> Option<u64> {
        self.value(&format!(
            r#"queue_messages_total{{queue="{queue}",action="{action}"}}"#
        ))
    }

    /// Messages the runners requeued (each comes back redelivered), summed over `queues`.
    pub(crate) fn requeued(&self, queues: &[&str]) -> u64 {
        queues
            .iter()
            .map(|q| self.queue_messages(q, "requeued").unwrap_or(0))
            .sum()
    }

    /// `queue_jobs_total` for `queue` and `status` (success, duplicate, ...).
    pub(crate) fn jobs(&self, queue: &str, status: &str) -> u64 {
        self.value(&format!(
            r#"queue_jobs_total{{queue="{queue}",status="{status}"}}"#
        ))
        .unwrap_or(0)
    }
}

/// The metrics of the worker process listening on `port`; `None` when it does not answer.
pub(crate) async fn scrape(http: &reqwest::Client, port: u16) -> Option<Scrape> {
    let r = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    Some(Scrape(r.text().await.ok()?))
}

/// Waits until the worker process on `port` holds work, a handler running on one of
/// `queues` (`messages_in_flight` > 0, so an unacknowledged message in hand), and `more`
/// holds for the reading; returns that reading, to kill the process right then. Fails the
/// test when it does not within `limit`.
pub(crate) async fn holding_work(
    http: &reqwest::Client,
    port: u16,
    queues: &[&str],
    limit: Duration,
    more: impl Fn(&Scrape) -> bool,
) -> Scrape {
    eventually(
        limit,
        &format!("the worker on port {port} holding a message of {queues:?}"),
        || async {
            let s = scrape(http, port).await?;
            (queues.iter().any(|q| s.in_flight(q) > 0) && more(&s)).then_some(s)
        },
    )
    .await
}

/// Deliveries the broker flagged as redelivered, summed over `queues` of the vhost (the
/// management API's `message_stats.redeliver` of each queue, asked through the vhost's own
/// client, so on whichever broker or cluster holds it; its figures lag a few seconds, more on
/// a busy broker, so poll). `None` when the API does not answer one within 10 s.
pub(crate) async fn redelivered(vhost: &TestVhost, queues: &[&str]) -> Option<u64> {
    let mut sum = 0;
    for q in queues {
        let queue: Value = vhost
            .api
            .get_json(&format!("queues/{}/{}", encode(&vhost.name), encode(q)))
            .await
            .ok()?;
        sum += queue["message_stats"]["redeliver"].as_u64().unwrap_or(0);
    }
    Some(sum)
}

/// A TCP relay to `upstream` (`host:port` of the broker or the database) for one process,
/// that can be stalled: from then on it passes no byte either way and keeps both sockets
/// open, as a network that stopped answering would. It runs on a thread of its own (not on
/// the test's runtime, which serves the app under test). Dropped or closed, it closes every
/// connection.
pub(crate) struct Relay {
    /// Where it listens (127.0.0.1).
    pub(crate) port: u16,
    stall: CancellationToken,
    close: CancellationToken,
}

impl Relay {
    /// Starts a relay to `upstream`.
    pub(crate) fn start(upstream: String) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("relay binds");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("relay address").port();
        let (stall, close) = (CancellationToken::new(), CancellationToken::new());
        let (s, c) = (stall.clone(), close.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("relay runtime");
            rt.block_on(relay(listener, upstream, s, c));
        });
        Self { port, stall, close }
    }

    /// Passes nothing more, either way, on any connection.
    pub(crate) fn stall(&self) {
        self.stall.cancel();
    }

    /// Closes every connection and stops listening.
    pub(crate) fn close(&self) {
        self.close.cancel();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.close();
    }
}

async fn relay(
    listener: std::net::TcpListener,
    upstream: String,
    stall: CancellationToken,
    close: CancellationToken,
) {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{
            TcpListener, TcpStream,
            tcp::{OwnedReadHalf, OwnedWriteHalf},
        },
    };
    async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, stall: CancellationToken) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                () = stall.cancelled() => break,
                r = from.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
            };
            if stall.is_cancelled() || to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        // Stalled: hold both ends open and pass nothing.
        let _hold = (from, to);
        std::future::pending::<()>().await;
    }
    let listener = TcpListener::from_std(listener).expect("relay listener");
    // Dropped at the end: every connection's task is aborted and its sockets closed.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let client = tokio::select! {
            () = close.cancelled() => return,
            r = listener.accept() => match r {
                Ok((client, _)) => client,
                Err(_) => return,
            },
        };
        let (stall, upstream) = (stall.clone(), upstream.clone());
        conns.spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(pump(cr, sw, stall.clone()), pump(sr, cw, stall));
        });
    }
}

/// Handled ids against accepted ones: which accepted id was never handled, which handled id
/// was never accepted, which was handled more than once.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct IdCheck {
    /// Accepted, never handled.
    pub(crate) missing: Vec<Uuid>,
    /// Handled, never accepted.
    pub(crate) extra: Vec<Uuid>,
    /// Handled more than once, with how often.
    pub(crate) doubled: Vec<(Uuid, usize)>,
}

impl IdCheck {
    /// `handled`: per id, how many times it was handled (rows, deliveries).
    pub(crate) fn new(accepted: &HashSet<Uuid>, handled: &HashMap<Uuid, usize>) -> Self {
        let mut missing: Vec<Uuid> = accepted
            .iter()
            .filter(|id| !handled.contains_key(id))
            .copied()
            .collect();
        let mut extra: Vec<Uuid> = handled
            .keys()
            .filter(|id| !accepted.contains(id))
            .copied()
            .collect();
        let mut doubled: Vec<(Uuid, usize)> = handled
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (*id, *n))
            .collect();
        missing.sort();
        extra.sort();
        doubled.sort();
        Self {
            missing,
            extra,
            doubled,
        }
    }

    /// Nothing missing, nothing extra, nothing twice.
    pub(crate) fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.doubled.is_empty()
    }

    /// Counts and the first few ids of each kind.
    pub(crate) fn summary(&self) -> String {
        let first = |v: &[Uuid]| {
            v.iter()
                .take(10)
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let doubled: Vec<String> = self
            .doubled
            .iter()
            .take(10)
            .map(|(id, n)| format!("{id} x{n}"))
            .collect();
        format!(
            "missing {} [{}], extra {} [{}], handled more than once {} [{}]",
            self.missing.len(),
            first(&self.missing),
            self.extra.len(),
            first(&self.extra),
            self.doubled.len(),
            doubled.join(", ")
        )
    }
}

/// Per event id, how many rows of `notifications` hold it.
async fn notification_rows(db: &sea_orm::DatabaseConnection) -> HashMap<Uuid, usize> {
    let mut out = HashMap::new();
    for row in entities::notifications::Entity::find()
        .all(db)
        .await
        .expect("notifications")
    {
        *out.entry(row.event_id).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn two_worker_processes_share_a_queue_and_a_killed_one_loses_nothing() {
    const EVENTS: usize = 1_000;
    const QUEUE: &str = "warren.notifications";
    let app = spawn_app().await; // the HTTP front only; the work is done by two processes
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = worker(&app, port_a);
    let _b = worker(&app, port_b);
    let consumed = |port: u16| {
        let http = app.http.clone();
        async move { scrape(&http, port).await?.queue_messages(QUEUE, "consumed") }
    };
    // Both consuming before the load arrives.
    eventually(Duration::from_secs(30), "both workers up", || async {
        (consumed(port_a).await.is_some() && consumed(port_b).await.is_some()).then_some(())
    })
    .await;

    // Half the events, then worker A is killed once it has taken a share of them and while a
    // handler of it holds a message (so A dies with work in hand), then the other half, which
    // only B can take. Every event id the front answered is kept.
    let post_half = |half: usize| {
        let mut posts = tokio::task::JoinSet::new();
        for chunk in 0..10 {
            let http = app.http.clone();
            let url = format!("{}/v1/events/order.created", app.base);
            posts.spawn(async move {
                let mut ids = Vec::new();
                for i in 0..EVENTS / 20 {
                    let r = http
                        .post(&url)
                        .json(&json!({"user_id": format!("u-{half}-{chunk}"), "i": i}))
                        .send()
                        .await
                        .expect("sent");
                    assert_eq!(r.status(), 202);
                    let body: Value = r.json().await.expect("JSON answer");
                    let id: Uuid = body["event_id"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .expect("the answer names the event id");
                    ids.push(id);
                }
                ids
            });
        }
        posts
    };
    let mut first = post_half(0);
    let at_kill = holding_work(&app.http, port_a, &[QUEUE], Duration::from_secs(60), |s| {
        s.queue_messages(QUEUE, "consumed").unwrap_or(0) >= 20
    })
    .await;
    a.0.kill().expect("SIGKILL worker A");
    let _ = a.0.wait();
    let a_share = at_kill.queue_messages(QUEUE, "consumed").unwrap_or(0);
    let mut second = post_half(1);
    let mut accepted = HashSet::new();
    let mut answers = 0;
    while let Some(r) = first.join_next().await {
        let ids = r.expect("publisher task");
        answers += ids.len();
        accepted.extend(ids);
    }
    while let Some(r) = second.join_next().await {
        let ids = r.expect("publisher task");
        answers += ids.len();
        accepted.extend(ids);
    }
    assert_eq!(answers, EVENTS, "every event answered 202");
    assert_eq!(accepted.len(), EVENTS, "each answer a distinct event id");

    // The kill landed on work in hand: the broker redelivered more messages of the queue than
    // the runners requeued themselves (the rest are the ones A held when it died). The
    // management API's figures lag, so this wait runs beside the settling.
    let a_requeued = at_kill.requeued(&[QUEUE]);
    let redeliveries = eventually(
        Duration::from_secs(60),
        "redeliveries of the messages A held",
        || async {
            let b_requeued = scrape(&app.http, port_b).await?.requeued(&[QUEUE]);
            let n = redelivered(&app.vhost, &[QUEUE]).await?;
            (n > a_requeued + b_requeued).then_some((n, b_requeued))
        },
    );
    // Settled: nothing ready, unacked, in a retry tier or dead-lettered, so nothing more
    // arrives; then the stored ids are exactly the accepted ones, each once.
    let exact = async {
        app.settled_within(Duration::from_secs(90), &[(QUEUE, 0)])
            .await;
        let db = app.db().await;
        let check = IdCheck::new(&accepted, &notification_rows(&db).await);
        let _ = db.close().await;
        assert!(
            check.is_exact(),
            "notifications against the {EVENTS} accepted event ids: {}",
            check.summary()
        );
    };
    let ((redelivered, b_requeued), ()) = tokio::join!(redeliveries, exact);
    let b_share = consumed(port_b).await.expect("worker B metrics");
    assert!(
        a_share > 0 && b_share > 0,
        "work shared: A {a_share}, B {b_share}"
    );
    eprintln!(
        "scale: A consumed {a_share} and held {} when killed; B consumed {b_share}; {redelivered} redelivered, {} requeued by the runners",
        at_kill.in_flight(QUEUE),
        a_requeued + b_requeued
    );
    app.cleanup().await;
}

#[test]
fn one_lost_plus_one_duplicate_is_not_exact() {
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let accepted: HashSet<Uuid> = ids.iter().copied().collect();
    // The right number of rows, the wrong ids: ids[3] lost, ids[0] twice.
    let handled: HashMap<Uuid, usize> = [(ids[0], 2), (ids[1], 1), (ids[2], 1)].into();
    assert_eq!(handled.values().sum::<usize>(), accepted.len());
    let check = IdCheck::new(&accepted, &handled);
    assert!(!check.is_exact());
    assert_eq!(check.missing, vec![ids[3]]);
    assert_eq!(check.doubled, vec![(ids[0], 2)]);
    assert!(check.extra.is_empty());
    let stranger = Uuid::now_v7();
    let handled: HashMap<Uuid, usize> = ids
        .iter()
        .map(|id| (*id, 1))
        .chain([(stranger, 1)])
        .collect();
    let check = IdCheck::new(&accepted, &handled);
    assert_eq!(check.extra, vec![stranger]);
    assert!(!check.is_exact());
    let exact: HashMap<Uuid, usize> = ids.iter().map(|id| (*id, 1)).collect();
    assert!(IdCheck::new(&accepted, &exact).is_exact());
}

#[test]
fn scrapes_read_one_series_exactly() {
    let s = Scrape(
        "messages_in_flight{queue=\"warren.audit\"} 2\n\
         messages_in_flight{queue=\"warren.audit.x\"} 7\n\
         queue_messages_total{queue=\"warren.audit\",action=\"requeued\"} 3\n"
            .to_owned(),
    );
    assert_eq!(s.in_flight("warren.audit"), 2);
    assert_eq!(s.in_flight("warren.notifications"), 0);
    assert_eq!(s.requeued(&["warren.audit", "warren.notifications"]), 3);
    assert_eq!(s.queue_messages("warren.audit", "consumed"), None);
}
