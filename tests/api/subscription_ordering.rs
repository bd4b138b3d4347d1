//! Ordered subscriptions (`ordering = "aggregate"`, issue 18 point 6) end to end: a real
//! receiver records, per aggregate, which message came when and when it was answered; the
//! worker runs in process or as separate `warren worker` processes (two at once, the broker
//! delivering through one: the queue's single active consumer). Tiers and in-place retry
//! waits are 500 ms (failure) and 1 s (error) here.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::json;
use warp::{Filter, http::Response};

use warren::{
    broker::{
        Broker,
        names::{self, header_int, header_str},
        topology::{Topology, encode},
    },
    config::{Ordering, SubscriptionSettings},
};

use crate::{
    helpers::{TestApp, eventually, management_url, spawn_worker_with},
    reliability::KillOnDrop,
};

const FAILURE_DELAY_MS: u64 = 500;
const ERROR_DELAY_MS: u64 = 1_000;
/// The subscriptions' delivery timeout here.
const TIMEOUT_MS: u64 = 500;

/// One answer: status, an optional `Retry-After`, and how long the receiver waits first.
#[derive(Clone, Copy, Debug)]
struct Answer {
    status: u16,
    retry_after: Option<&'static str>,
    delay: Duration,
}

const fn answer(status: u16) -> Answer {
    Answer {
        status,
        retry_after: None,
        delay: Duration::ZERO,
    }
}

/// Answered after the delivery timeout: the worker gives up first (an error).
const HANG: Answer = Answer {
    status: 204,
    retry_after: None,
    delay: Duration::from_secs(30),
};

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    /// The path's name (the subscription).
    path: String,
    /// `ce-subject`: the aggregate.
    aggregate: String,
    /// The event's `data.seq`, when it has one.
    seq: Option<u64>,
    id: String,
    attempt: String,
    status: u16,
    at: Instant,
    /// When the answer went out (`None` while the request is open).
    answered: Option<Instant>,
}

impl Got {
    /// When the worker was done with this request: answered, or its timeout.
    fn ended(&self) -> Instant {
        self.answered
            .filter(|a| *a - self.at < Duration::from_millis(TIMEOUT_MS))
            .unwrap_or(self.at + Duration::from_millis(TIMEOUT_MS))
    }

    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The answers for each (aggregate, seq).
type Scripts = HashMap<(String, u64), Vec<Answer>>;

/// A receiver on 127.0.0.1: `POST /{path}` answers per (aggregate, seq) script, one answer
/// per request of that message, the last for ever after; 204 at once for the rest.
#[derive(Clone, Default)]
struct Receiver {
    scripts: Arc<Mutex<Scripts>>,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    async fn start(scripts: &[(&str, u64, Vec<Answer>)]) -> (Self, SocketAddr) {
        let r = Receiver::default();
        for (aggregate, seq, script) in scripts {
            r.scripts
                .lock()
                .expect("lock")
                .insert(((*aggregate).to_owned(), *seq), script.clone());
        }
        let state = r.clone();
        let route = warp::post()
            .and(warp::path::param::<String>())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(
                move |path: String, headers: warp::http::HeaderMap, body: Bytes| {
                    let state = state.clone();
                    async move { state.answer(path, &headers, &body).await }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(warp::serve(route).incoming(listener).run());
        (r, addr)
    }

    async fn answer(
        &self,
        path: String,
        headers: &warp::http::HeaderMap,
        body: &Bytes,
    ) -> Response<String> {
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let data: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let aggregate = header("ce-subject");
        let seq = data["seq"].as_u64();
        let a = {
            let earlier = self
                .got
                .lock()
                .expect("lock")
                .iter()
                .filter(|g| g.path == path && g.aggregate == aggregate && g.seq == seq)
                .count();
            let scripts = self.scripts.lock().expect("lock");
            seq.and_then(|s| scripts.get(&(aggregate.clone(), s)))
                .and_then(|script| script.get(earlier).or(script.last()).copied())
                .unwrap_or(answer(204))
        };
        let at = {
            let mut got = self.got.lock().expect("lock");
            got.push(Got {
                path,
                aggregate,
                seq,
                id: header("ce-id"),
                attempt: header("warren-attempt"),
                status: a.status,
                at: Instant::now(),
                answered: None,
            });
            got.len() - 1
        };
        if !a.delay.is_zero() {
            tokio::time::sleep(a.delay).await;
        }
        self.got.lock().expect("lock")[at].answered = Some(Instant::now());
        let mut resp = Response::builder().status(a.status);
        if let Some(after) = a.retry_after {
            resp = resp.header("retry-after", after);
        }
        resp.body(String::new()).expect("response")
    }

    fn got(&self, path: &str) -> Vec<Got> {
        let mut got: Vec<Got> = self
            .got
            .lock()
            .expect("lock")
            .iter()
            .filter(|g| g.path == path)
            .cloned()
            .collect();
        got.sort_by_key(|g| g.at);
        got
    }

    /// Waits until every id in `want` was answered 2xx on `path`.
    async fn delivered(&self, path: &str, want: &BTreeSet<String>, limit: Duration) {
        eventually(
            limit,
            &format!("{} delivered to /{path}", want.len()),
            || async {
                let ok: BTreeSet<String> = self
                    .got(path)
                    .iter()
                    .filter(|g| g.ok() && g.answered.is_some())
                    .map(|g| g.id.clone())
                    .collect();
                want.is_subset(&ok).then_some(())
            },
        )
        .await;
    }
}

/// Per aggregate, the order in which its messages (seq) first reached the receiver.
fn first_appearances(got: &[Got]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for g in got {
        let Some(seq) = g.seq else { continue };
        let seen = out.entry(g.aggregate.clone()).or_default();
        if !seen.contains(&seq) {
            seen.push(seq);
        }
    }
    out
}

/// Asserts that each aggregate's requests came one at a time, none before the one ahead of
/// it was done with, and never a later message before an earlier one.
fn assert_one_at_a_time(got: &[Got]) {
    let mut last: HashMap<&str, &Got> = HashMap::new();
    for g in got.iter().filter(|g| g.seq.is_some()) {
        if let Some(prev) = last.get(g.aggregate.as_str()) {
            assert!(
                g.at >= prev.ended(),
                "{} seq {:?} came while seq {:?} was still in flight",
                g.aggregate,
                g.seq,
                prev.seq
            );
            assert!(
                g.seq >= prev.seq,
                "{} seq {:?} came after seq {:?}",
                g.aggregate,
                g.seq,
                prev.seq
            );
        }
        last.insert(g.aggregate.as_str(), g);
    }
}

fn ordered(name: &str, addr: SocketAddr) -> SubscriptionSettings {
    let mut s = SubscriptionSettings::new(name, format!("http://{addr}/{name}"));
    s.events = vec!["order.*".to_owned()];
    s.ordering = Ordering::Aggregate;
    s.timeout_ms = TIMEOUT_MS;
    s.concurrency = 4;
    s.max_attempts = Some(3);
    s
}

/// The HTTP front, and the worker role in process running `run` (none: the subscriptions'
/// queues are declared, and separate `warren worker` processes deliver).
async fn start(subs: Vec<SubscriptionSettings>, run: &[&str]) -> TestApp {
    let modules: Vec<String> = run.iter().map(|m| format!("sub.{m}")).collect();
    spawn_worker_with(
        move |mut s| {
            s.subscriptions = subs;
            s.jobs.failure_delay_ms = FAILURE_DELAY_MS;
            s.jobs.error_delay_ms = ERROR_DELAY_MS;
            s
        },
        move |a| a.modules(modules),
    )
    .await
}

/// `order.updated` about `aggregate` with `data.seq`; the event id.
async fn publish(app: &TestApp, aggregate: &str, seq: u64) -> String {
    let r = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/events/order.updated?aggregate_id={aggregate}"),
        )
        .json(&json!({"seq": seq}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202, "accepted");
    r.json::<serde_json::Value>().await.expect("json")["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned()
}

/// Publishes `seqs` of every aggregate, interleaved (a1 b1 c1 a2 b2 ...), one at a time
/// (each confirmed before the next: the broker has them in this order).
async fn publish_interleaved(
    app: &TestApp,
    aggregates: &[&str],
    seqs: std::ops::RangeInclusive<u64>,
) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for seq in seqs {
        for a in aggregates {
            ids.insert(publish(app, a, seq).await);
        }
    }
    ids
}

/// A separate `warren worker` running subscription `sub` (its settings as TOML).
fn worker(app: &TestApp, config: &tempfile::NamedTempFile, sub: &str) -> KillOnDrop {
    KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["worker", "--modules", &format!("sub.{sub}")])
            .env("WARREN_CONFIG", config.path())
            .env("WARREN_AMQP__URL", app.vhost.amqp_url())
            .env("WARREN_AMQP__MANAGEMENT_URL", management_url())
            .env("WARREN_DATABASE__URL", &app.db.url)
            .env("WARREN_LOG__FILTER", "warn")
            .env(
                "WARREN_JOBS__FAILURE_DELAY_MS",
                FAILURE_DELAY_MS.to_string(),
            )
            .env("WARREN_JOBS__ERROR_DELAY_MS", ERROR_DELAY_MS.to_string())
            .env("WARREN_JOBS__SHUTDOWN_GRACE_MS", "1000")
            // Two workers at once: each its own metrics port.
            .env("WARREN_METRICS__ADDR", "127.0.0.1:0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("worker starts"),
    )
}

fn worker_config(sub: &SubscriptionSettings) -> tempfile::NamedTempFile {
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        config.path(),
        format!(
            "[[subscriptions]]\nname = \"{}\"\nevents = [\"order.*\"]\nurl = \"{}\"\n\
             ordering = \"aggregate\"\ntimeout_ms = {}\nconcurrency = {}\nmax_attempts = {}\n",
            sub.name,
            sub.url,
            sub.timeout_ms,
            sub.concurrency,
            sub.max_attempts.unwrap_or(3)
        ),
    )
    .expect("config written");
    config
}

/// The consumers of `queue` as the management API lists them: (consumer tag, active).
async fn consumers(app: &TestApp, queue: &str) -> Vec<(String, bool)> {
    let list = app
        .vhost
        .api
        .get(&format!("consumers/{}", encode(&app.vhost.name)))
        .await
        .unwrap_or_default();
    list.iter()
        .filter(|c| c["queue"]["name"] == queue)
        .map(|c| {
            (
                c["consumer_tag"].as_str().unwrap_or_default().to_owned(),
                c["active"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// Waits until `queue` has `n` consumers, one of them active; the active one's tag.
async fn one_active_of(app: &TestApp, queue: &str, n: usize) -> String {
    eventually(
        Duration::from_secs(30),
        &format!("{n} consumers on {queue}, one active"),
        || async {
            let c = consumers(app, queue).await;
            let active: Vec<&(String, bool)> = c.iter().filter(|(_, a)| *a).collect();
            (c.len() == n && active.len() == 1).then(|| active[0].0.clone())
        },
    )
    .await
}

#[tokio::test]
async fn each_aggregate_keeps_its_order_through_failures_with_two_workers_and_the_others_flow() {
    // b2: a reported failure (503), then no answer in time, then taken: held for the
    // failure wait, the timeout and the error wait. c4: an error (500), then taken.
    let (rx, addr) = Receiver::start(&[
        ("b", 2, vec![answer(503), HANG, answer(204)]),
        ("c", 4, vec![answer(500), answer(204)]),
    ])
    .await;
    let sub = ordered("ordered", addr);
    let config = worker_config(&sub);
    let app = start(vec![sub], &[]).await;
    // All in the queue first, so that how fast publishing goes does not decide whether a
    // and d can finish while b waits.
    let aggregates = ["a", "b", "c", "d"];
    let want = publish_interleaved(&app, &aggregates, 1..=6).await;
    let _one = worker(&app, &config, "ordered");
    let _two = worker(&app, &config, "ordered");
    // Both consume; the broker delivers through one (the queue's single active consumer).
    one_active_of(&app, "warren.sub.ordered", 2).await;
    rx.delivered("ordered", &want, Duration::from_secs(30))
        .await;
    app.settled(&[("warren.sub.ordered", 0), ("warren.sub.ordered.dead", 0)])
        .await;

    let got = rx.got("ordered");
    let ids: BTreeSet<String> = got.iter().map(|g| g.id.clone()).collect();
    assert_eq!(ids, want, "every message, nothing else");
    for (aggregate, seqs) in first_appearances(&got) {
        assert_eq!(
            seqs,
            (1..=6).collect::<Vec<_>>(),
            "{aggregate} in publish order"
        );
    }
    assert_one_at_a_time(&got);
    // b2 went three times, with attempts 1, 2, 3 (retried in place, not through a tier).
    let b2: Vec<&Got> = got
        .iter()
        .filter(|g| g.aggregate == "b" && g.seq == Some(2))
        .collect();
    let attempts: Vec<&str> = b2.iter().map(|g| g.attempt.as_str()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(
        b2[1].at - b2[0].at >= Duration::from_millis(FAILURE_DELAY_MS - 50),
        "waited the failure delay"
    );
    assert!(
        b2[2].at - b2[1].at >= Duration::from_millis(TIMEOUT_MS + ERROR_DELAY_MS - 50),
        "the timeout, then the error delay"
    );
    // While b was held, a and d were delivered to the end.
    let done_with = |aggregate: &str| {
        got.iter()
            .filter(|g| g.aggregate == aggregate)
            .map(|g| g.at)
            .max()
            .expect("delivered")
    };
    for other in ["a", "d"] {
        assert!(
            done_with(other) < b2[2].at,
            "{other} finished while b waited"
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn the_standby_worker_takes_over_when_the_active_one_is_killed_and_the_order_holds() {
    // a3's first delivery is held open: the kill lands on it.
    let (rx, addr) = Receiver::start(&[("a", 3, vec![HANG, answer(204)])]).await;
    let mut sub = ordered("takeover", addr);
    sub.timeout_ms = 60_000;
    let config = worker_config(&sub);
    let app = start(vec![sub], &[]).await;
    let mut workers = vec![
        worker(&app, &config, "takeover"),
        worker(&app, &config, "takeover"),
    ];
    let active = one_active_of(&app, "warren.sub.takeover", 2).await;
    let aggregates = ["a", "b", "c"];
    let mut want = publish_interleaved(&app, &aggregates, 1..=5).await;
    let held = eventually(Duration::from_secs(30), "a3 held open", || async {
        rx.got("takeover")
            .into_iter()
            .find(|g| g.aggregate == "a" && g.seq == Some(3))
    })
    .await;
    // The active worker is the one whose pid its consumer tag names.
    let at = workers
        .iter()
        .position(|w| active.contains(&format!("-{}-", w.0.id())))
        .expect("the active consumer is one of the two workers");
    let mut killed = workers.remove(at);
    let open = rx
        .got("takeover")
        .into_iter()
        .any(|g| g.id == held.id && g.answered.is_none());
    assert!(open, "the kill lands on a delivery in flight");
    killed.0.kill().expect("SIGKILL");
    let _ = killed.0.wait();
    let killed_at = Instant::now();
    // The standby becomes the active consumer; more messages come after the kill.
    want.extend(publish_interleaved(&app, &aggregates, 6..=7).await);
    rx.delivered("takeover", &want, Duration::from_secs(30))
        .await;
    app.settled(&[("warren.sub.takeover", 0), ("warren.sub.takeover.dead", 0)])
        .await;

    let got = rx.got("takeover");
    let ids: BTreeSet<String> = got.iter().map(|g| g.id.clone()).collect();
    assert_eq!(ids, want, "nothing lost, nothing else");
    for (aggregate, seqs) in first_appearances(&got) {
        assert_eq!(
            seqs,
            (1..=7).collect::<Vec<_>>(),
            "{aggregate} in publish order"
        );
    }
    let a: Vec<&Got> = got.iter().filter(|g| g.aggregate == "a").collect();
    let again = a
        .iter()
        .position(|g| g.id == held.id && g.at > killed_at)
        .expect("the held a3 delivered again by the standby");
    assert!(a[again].ok());
    assert_eq!(
        a[again + 1].seq,
        Some(4),
        "a4 came only after a3, from the standby"
    );
    assert!(
        a[..again].iter().all(|g| g.seq <= Some(3)),
        "nothing of a after a3 before the kill: {a:?}"
    );
    app.cleanup().await;
}

/// a2 and b1 parked the usual way: the dead-letter queue with the answer and the attempt,
/// failed_jobs rows, job.failed alerts.
async fn assert_parked_the_usual_way(app: &TestApp, rx: &Receiver) {
    let dead = app.drain("warren.sub.parking.dead").await;
    let mut reasons: Vec<(String, String, Option<i64>)> = dead
        .iter()
        .map(|m| {
            let p = &m.delivery.properties;
            (
                header_str(p, names::H_REASON).unwrap_or_default(),
                header_str(p, "x-warren-http-status").unwrap_or_default(),
                header_int(p, names::H_ATTEMPT),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("exhausted".to_owned(), "503".to_owned(), Some(2)),
            ("invalid".to_owned(), "404".to_owned(), Some(1))
        ],
        "a2 on its last attempt, b1 on its first"
    );
    let alerted = eventually(Duration::from_secs(20), "two job.failed", || async {
        let a = rx.got("alerts");
        (a.len() >= 2).then_some(a)
    })
    .await;
    assert_eq!(alerted.len(), 2);
    use sea_orm::EntityTrait;
    let rows = entities::failed_jobs::Entity::find()
        .all(&app.db().await)
        .await
        .expect("query");
    assert_eq!(rows.len(), 2);
}

#[tokio::test]
async fn a_parked_ordered_message_lets_its_aggregates_later_ones_through() {
    let pause = Answer {
        retry_after: Some("1"),
        ..answer(429)
    };
    let (rx, addr) = Receiver::start(&[
        // Fails on every attempt: parked after max_attempts (2), then a3 and a4.
        ("a", 2, vec![answer(503)]),
        // Refused: parked at once, b2 at once after it.
        ("b", 1, vec![answer(404)]),
        // A pause asked for: the same attempt again after it, c3 only then.
        ("c", 2, vec![pause, answer(204)]),
    ])
    .await;
    let mut sub = ordered("parking", addr);
    sub.max_attempts = Some(2);
    let mut alerts = SubscriptionSettings::new("alerts", format!("http://{addr}/alerts"));
    alerts.events = vec!["job.failed".to_owned()];
    let app = start(vec![sub, alerts], &["parking", "alerts"]).await;
    let all = publish_interleaved(&app, &["a", "b", "c"], 1..=4).await;
    let parked = eventually(Duration::from_secs(30), "two parked", || async {
        let n = app.depth("warren.sub.parking.dead").await;
        (n >= 2).then_some(n)
    })
    .await;
    assert_eq!(parked, 2);
    let got = rx.got("parking");
    let parked_ids: BTreeSet<String> = got
        .iter()
        .filter(|g| {
            (g.aggregate == "a" && g.seq == Some(2)) || (g.aggregate == "b" && g.seq == Some(1))
        })
        .map(|g| g.id.clone())
        .collect();
    let want: BTreeSet<String> = all.difference(&parked_ids).cloned().collect();
    rx.delivered("parking", &want, Duration::from_secs(30))
        .await;
    let got = rx.got("parking");
    assert_one_at_a_time(&got);
    for (aggregate, seqs) in first_appearances(&got) {
        assert_eq!(seqs, [1, 2, 3, 4], "{aggregate} in publish order");
    }
    let of = |aggregate: &str, seq: u64| -> Vec<&Got> {
        got.iter()
            .filter(|g| g.aggregate == aggregate && g.seq == Some(seq))
            .collect()
    };
    assert_eq!(of("a", 2).len(), 2, "max_attempts deliveries, then parked");
    assert!(
        of("a", 3)[0].at > of("a", 2)[1].at,
        "a3 after a2 was parked"
    );
    assert_eq!(of("b", 1).len(), 1, "a refusal is not retried");
    assert!(
        of("b", 2)[0].at > of("b", 1)[0].at,
        "b2 after b1 was parked"
    );
    let c2: Vec<&str> = of("c", 2).iter().map(|g| g.attempt.as_str()).collect();
    assert_eq!(c2, ["1", "1"], "a pause spends no attempt");
    assert!(of("c", 2)[1].at - of("c", 2)[0].at >= Duration::from_millis(950));

    assert_parked_the_usual_way(&app, &rx).await;
    app.settled(&[("warren.sub.parking", 0), ("warren.sub.parking.dead", 0)])
        .await;
    app.cleanup().await;
}

/// The most requests of `got` open at once, overall and within one aggregate.
fn overlap(got: &[Got]) -> (usize, usize) {
    let open_at = |t: Instant, same: Option<&str>| {
        got.iter()
            .filter(|g| same.is_none_or(|a| g.aggregate == a))
            .filter(|g| g.at <= t && g.answered.is_none_or(|e| e > t))
            .count()
    };
    let all = got.iter().map(|g| open_at(g.at, None)).max().unwrap_or(0);
    let one = got
        .iter()
        .map(|g| open_at(g.at, Some(&g.aggregate)))
        .max()
        .unwrap_or(0);
    (all, one)
}

#[tokio::test]
async fn ordered_lanes_run_aggregates_in_parallel_and_unordered_stays_parallel_within_one() {
    let slow = Answer {
        delay: Duration::from_millis(300),
        ..answer(204)
    };
    let aggregates = ["a", "b", "c", "d"];
    let scripts: Vec<(&str, u64, Vec<Answer>)> = aggregates
        .iter()
        .flat_map(|a| [(*a, 1, vec![slow]), (*a, 2, vec![slow])])
        .collect();
    let (rx, addr) = Receiver::start(&scripts).await;
    let lanes = ordered("lanes", addr);
    let mut plain = SubscriptionSettings::new("plain", format!("http://{addr}/plain"));
    plain.events = vec!["order.*".to_owned()];
    plain.concurrency = 4;
    let app = start(vec![lanes, plain], &["lanes", "plain"]).await;
    // Aggregate by aggregate: a1 a2 b1 b2 ...
    let mut want = BTreeSet::new();
    for a in aggregates {
        for seq in 1..=2 {
            want.insert(publish(&app, a, seq).await);
        }
    }
    rx.delivered("lanes", &want, Duration::from_secs(20)).await;
    rx.delivered("plain", &want, Duration::from_secs(20)).await;
    let (all, one) = overlap(&rx.got("lanes"));
    assert_eq!(one, 1, "ordered: one message of an aggregate at a time");
    assert!(all >= 3, "ordered: aggregates in parallel ({all} at once)");
    let (all, one) = overlap(&rx.got("plain"));
    assert!(
        one >= 2,
        "unordered: an aggregate's messages at once ({one})"
    );
    assert!(all >= 3, "unordered: {all} at once");
    app.settled(&[("warren.sub.lanes", 0), ("warren.sub.plain", 0)])
        .await;
    app.cleanup().await;
}

/// A `warren worker` running `sub`, and the first line of its JSON log with `needle` in it
/// (within 20 s).
async fn worker_saying(
    app: &TestApp,
    config: &tempfile::NamedTempFile,
    sub: &str,
    needle: &str,
) -> (KillOnDrop, String) {
    let mut worker = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["worker", "--modules", &format!("sub.{sub}")])
            .env("WARREN_CONFIG", config.path())
            .env("WARREN_AMQP__URL", app.vhost.amqp_url())
            .env("WARREN_AMQP__MANAGEMENT_URL", management_url())
            .env("WARREN_DATABASE__URL", &app.db.url)
            .env("WARREN_LOG__FILTER", "warn")
            .env("WARREN_LOG__FORMAT", "json")
            .env("WARREN_METRICS__ADDR", "127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("worker starts"),
    );
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    for out in [
        Box::new(worker.0.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(worker.0.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.recv().await {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the worker ended without saying {needle:?}")
    })
    .await
    .expect("the worker said it within 20 s");
    (worker, line)
}

#[tokio::test]
async fn turning_ordering_on_for_an_existing_queue_is_drift_that_says_what_to_do() {
    let (_rx, addr) = Receiver::start(&[]).await;
    let mut sub = ordered("switched", addr);
    sub.ordering = Ordering::None;
    // Declared unordered by a first start.
    let app = start(vec![sub.clone()], &[]).await;
    sub.ordering = Ordering::Aggregate;
    let mut settings = app.settings.clone();
    settings.subscriptions = vec![sub];
    let topology = Topology::for_settings(&settings).expect("topology");
    let drift = topology
        .verify(&management_url(), &app.vhost.name)
        .await
        .expect("verify");
    let text: Vec<String> = drift.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 1, "{text:?}");
    assert!(
        text[0].contains("queue warren.sub.switched")
            && text[0].contains("x-single-active-consumer")
            && text[0].contains("new name")
            && text[0].contains("delete_queue"),
        "{}",
        text[0]
    );
    let broker = Broker::new(&settings, "test").expect("broker");
    let error = broker
        .declare(&topology)
        .await
        .expect_err("a queue's arguments do not change in place")
        .to_string();
    assert!(
        error.contains("warren.sub.switched") && error.contains("new name"),
        "{error}"
    );
    // A worker started with ordering on says so and does not consume the queue as it is
    // (with another process there, both would deliver one aggregate at once).
    let config = worker_config(&settings.subscriptions[0]);
    let (_worker, refused) = worker_saying(
        &app,
        &config,
        "switched",
        "An ordered consumer does not consume",
    )
    .await;
    assert!(refused.contains("new name"), "with what to do: {refused}");
    assert!(
        consumers(&app, "warren.sub.switched").await.is_empty(),
        "no consumer on the unordered queue"
    );
    app.cleanup().await;
}
