//! The trip saga (issue 19) under load with HTTP participants: 300 concurrent sagas whose
//! steps are answered by three real HTTP servers in the test process (seats, payments,
//! tickets) keeping ledgers keyed by `Idempotency-Key`, with limited seats and balances.
//! A share of first attempts answers 503 or 500, hangs past the subscription's timeout, or
//! takes effect and then answers 500 (chosen by a hash of the key). Mid-run the seats server
//! is dropped while it holds requests and restarted on the same port; a warren worker process
//! is SIGKILLed after the payments server answered it and before it could record or reply;
//! every broker connection is cut. Afterwards every saga has ended, the queues are empty, and
//! the ledgers agree with the sagas exactly: one seat, charge and ticket per completed saga,
//! one release and one refund (of the saga's own charge) per compensated one, stock and
//! balances adding up.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{Hash, Hasher},
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use entities::sagas;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::{TestApp, eventually, management_url},
    reliability::{KillOnDrop, close_connections, connection_names},
    saga::spawn_saga,
    saga_http_participants::{SUBS, queues, sub, trip_definitions},
    scale::{Relay, Scrape, free_port, holding_work},
};

const SAGAS: usize = 300;
const FLIGHTS: usize = 3;
const SEATS: i64 = 60;
const PASSENGERS: usize = 30;
const BALANCE: i64 = 1_200;
/// The subscriptions' request timeout; a hanging first attempt sleeps past it.
const TIMEOUT_MS: u64 = 1_500;
/// How long the seats server holds an answer after its effect: a stop finds some in hand.
const SEATS_ANSWER_DELAY: Duration = Duration::from_millis(30);

/// One effect a participant applied: the saga, its id (seat, charge, ticket; for a release or
/// refund the seat or charge it undid), what it is on (flight, account) and the amount.
#[derive(Debug, Clone)]
struct Effect {
    saga: Uuid,
    id: String,
    on: String,
    amount: i64,
}

/// The participants' books, shared by their servers (they outlive a server's restart).
#[derive(Default)]
struct Books {
    /// The answer kept for each (op, Idempotency-Key) that took effect or was refused.
    answers: HashMap<(String, String), (u16, Value)>,
    /// Requests received per (op, key).
    asked: HashMap<(String, String), u32>,
    /// Keys whose first attempt was given a fault.
    flaked: HashSet<(String, String)>,
    faults: u64,
    /// Answers given again from `answers` (a retry or redelivery of a key that took effect).
    replayed: u64,
    stock: HashMap<String, i64>,
    balance: HashMap<String, i64>,
    seats: Vec<Effect>,
    releases: Vec<Effect>,
    charges: Vec<Effect>,
    refunds: Vec<Effect>,
    tickets: Vec<Effect>,
    /// Requests being handled now: (op, key, its effect applied).
    in_flight: HashMap<u64, (String, String, bool)>,
    next_request: u64,
    /// Armed: the next 2xx to the victim process stalls its database relay first, then is
    /// answered, and its key is sent here.
    trap: Option<Trap>,
}

type Shared = Arc<Mutex<Books>>;

/// The relay to stall, and where to send the trapped key with the times it was asked then.
type Trap = (Arc<Relay>, tokio::sync::oneshot::Sender<(String, u32)>);

/// Where the trapped key arrives.
type Told = tokio::sync::oneshot::Receiver<(String, u32)>;

fn lock(books: &Shared) -> std::sync::MutexGuard<'_, Books> {
    books.lock().expect("books lock")
}

/// The fault a key's first attempt gets, if any (one key in five), by a hash of the key.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Unavailable,
    Error,
    Hang,
    /// The effect applies, then the answer is a 500: the retry must be answered from the book.
    LostAnswer,
}

fn fault_of(key: &str) -> Option<Fault> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    match h.finish() % 20 {
        0 => Some(Fault::Unavailable),
        1 => Some(Fault::Error),
        2 => Some(Fault::Hang),
        3 => Some(Fault::LostAnswer),
        _ => None,
    }
}

/// Removes a request from `in_flight` when its handler ends (answered or dropped).
struct InFlight(Shared, u64);

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight.remove(&self.1);
    }
}

/// One request: `op` (reserve, release, charge, refund, issue), whether it came from the
/// victim process, its Idempotency-Key, saga id and JSON body.
struct Asked {
    op: String,
    victim: bool,
    key: String,
    saga: Uuid,
    body: Value,
}

async fn handle(books: Shared, req: Asked) -> (u16, Value) {
    let k = (req.op.clone(), req.key.clone());
    let n = {
        let mut b = lock(&books);
        b.next_request += 1;
        let n = b.next_request;
        b.in_flight
            .insert(n, (req.op.clone(), req.key.clone(), false));
        *b.asked.entry(k.clone()).or_default() += 1;
        n
    };
    let _guard = InFlight(books.clone(), n);
    let fault = {
        let mut b = lock(&books);
        let first = !b.answers.contains_key(&k) && b.flaked.insert(k.clone());
        let fault = fault_of(&req.key).filter(|_| first);
        b.faults += u64::from(fault.is_some());
        fault
    };
    match fault {
        Some(Fault::Unavailable) => return (503, json!({"error": "try later"})),
        Some(Fault::Error) => return (500, json!({"error": "ledger hiccup"})),
        Some(Fault::Hang) => {
            tokio::time::sleep(Duration::from_millis(TIMEOUT_MS + 500)).await;
            return (503, json!({"error": "too late"}));
        }
        Some(Fault::LostAnswer) | None => {}
    }
    let (status, body, trap) = {
        let mut b = lock(&books);
        let (status, body) = match b.answers.get(&k).cloned() {
            Some(kept) => {
                b.replayed += 1;
                kept
            }
            None => {
                let answer = apply(&mut b, &req);
                b.answers.insert(k.clone(), answer.clone());
                answer
            }
        };
        if let Some(r) = b.in_flight.get_mut(&n) {
            r.2 = true;
        }
        let trap = (req.victim && status < 300 && fault.is_none())
            .then(|| b.trap.take())
            .flatten()
            .map(|t| (t, b.asked.get(&k).copied().unwrap_or(0)));
        (status, body, trap)
    };
    if let Some(((relay, tell), asked)) = trap {
        // The victim cannot record this answer nor reply it: its database is stalled.
        relay.stall();
        let _ = tell.send((req.key.clone(), asked));
    }
    if matches!(fault, Some(Fault::LostAnswer)) {
        return (500, json!({"error": "the answer was lost"}));
    }
    if matches!(req.op.as_str(), "reserve" | "release") {
        tokio::time::sleep(SEATS_ANSWER_DELAY).await;
    }
    (status, body)
}

/// Applies one new key's effect to the books; the answer to keep for it.
fn apply(b: &mut Books, req: &Asked) -> (u16, Value) {
    let p = &req.body["payload"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let effect = |id: String, on: String, amount: i64| Effect {
        saga: req.saga,
        id,
        on,
        amount,
    };
    match req.op.as_str() {
        "reserve" => {
            let flight = text(&p["flight"]);
            let left = b.stock.entry(flight.clone()).or_default();
            if *left <= 0 {
                return (409, json!({"reason": format!("{flight} is full")}));
            }
            *left -= 1;
            let seat = format!("{flight}/{}", b.seats.len() + 1);
            b.seats.push(effect(seat.clone(), flight, 1));
            (200, json!({"seat": seat}))
        }
        "release" => {
            let seat = text(&req.body["results"]["reserve"]["seat"]);
            let Some(taken) = b.seats.iter().find(|s| s.id == seat).cloned() else {
                return (422, json!({"reason": format!("no seat {seat:?}")}));
            };
            *b.stock.entry(taken.on.clone()).or_default() += 1;
            b.releases.push(effect(seat, taken.on, 1));
            (204, Value::Null)
        }
        "charge" => {
            let (account, fare) = (text(&p["passenger"]), p["fare"].as_i64().unwrap_or(0));
            let balance = b.balance.entry(account.clone()).or_default();
            if *balance < fare {
                return (
                    422,
                    json!({"reason": format!("{account} cannot pay {fare}")}),
                );
            }
            *balance -= fare;
            let id = format!("ch_{}", b.charges.len() + 1);
            b.charges.push(effect(id.clone(), account, fare));
            (201, json!({"charge_id": id, "amount": fare}))
        }
        "refund" => {
            let id = text(&req.body["results"]["charge"]["charge_id"]);
            let Some(charge) = b.charges.iter().find(|c| c.id == id).cloned() else {
                return (422, json!({"reason": format!("no charge {id:?}")}));
            };
            *b.balance.entry(charge.on.clone()).or_default() += charge.amount;
            b.refunds.push(effect(id.clone(), charge.on, charge.amount));
            (200, json!({"refund_of": id}))
        }
        "issue" if p["blocked"] == true => {
            (409, json!({"reason": "no ticket for a blocked passenger"}))
        }
        "issue" => {
            let id = format!("T-{}", b.tickets.len() + 1);
            b.tickets.push(effect(id.clone(), text(&p["passenger"]), 0));
            (200, json!({"ticket": id}))
        }
        _ => (404, json!({"reason": "no such operation"})),
    }
}

/// A participant server on a fixed port of 127.0.0.1 that can be dropped (every connection
/// closed, requests in hand never answered) and started again on the same port.
struct Server {
    port: u16,
    books: Shared,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Server {
    async fn start_new(books: Shared) -> Server {
        let s = Server {
            port: free_port(),
            books,
            task: Mutex::new(None),
        };
        s.start();
        s
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Listens on the port again.
    fn start(&self) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(self.addr()).expect("bind the server's port");
        let listener = socket.listen(1024).expect("listen");
        let service = warp::service(routes(self.books.clone()));
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection's task is aborted, its socket closed.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let service = service.clone();
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tcp),
                            hyper_util::service::TowerToHyperService::new(service),
                        )
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        *self.task.lock().expect("task lock") = Some(task);
    }

    /// Drops the server now if it holds a request whose effect applied and whose answer is
    /// not sent; returns those requests' (op, key) with the times each was asked so far.
    fn stop_if_holding(&self, ops: &[&str]) -> Option<Vec<((String, String), u32)>> {
        let b = lock(&self.books);
        let held: Vec<((String, String), u32)> = b
            .in_flight
            .values()
            .filter(|(op, _, applied)| *applied && ops.contains(&op.as_str()))
            .map(|(op, key, _)| {
                let k = (op.clone(), key.clone());
                let n = b.asked.get(&k).copied().unwrap_or(0);
                (k, n)
            })
            .collect();
        if held.is_empty() {
            return None;
        }
        if let Some(task) = self.task.lock().expect("task lock").take() {
            task.abort();
        }
        Some(held)
    }
}

fn routes(
    books: Shared,
) -> impl warp::Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    use warp::{Filter, Reply};
    warp::post()
        .and(warp::path::param::<String>())
        .and(warp::path::tail())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |op: String,
                  tail: warp::path::Tail,
                  h: warp::http::HeaderMap,
                  body: bytes::Bytes| {
                let books = books.clone();
                async move {
                    let header = |n: &str| {
                        h.get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let req = Asked {
                        op,
                        victim: tail.as_str() == "victim",
                        key: header("idempotency-key"),
                        saga: header("warren-saga-id").parse().unwrap_or_default(),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    };
                    let (status, body) = handle(books, req).await;
                    let status = warp::http::StatusCode::from_u16(status).expect("status");
                    if body.is_null() {
                        return status.into_response();
                    }
                    warp::reply::with_status(warp::reply::json(&body), status).into_response()
                }
            },
        )
}

/// Which server answers each subscription.
fn server_of(name: &str) -> usize {
    match name {
        "reserve" | "release" => 0,
        "charge" | "refund" => 1,
        _ => 2,
    }
}

fn tune(mut s: warren::config::SubscriptionSettings) -> warren::config::SubscriptionSettings {
    s.timeout_ms = TIMEOUT_MS;
    s.max_attempts = Some(8);
    s.concurrency = 32;
    // Faults here are on purpose and short: the breaker is not under test.
    s.breaker.failures = 10_000;
    s
}

/// The victim worker's configuration: the payments subscriptions, posting to `/victim`.
fn victim_config(dir: &tempfile::TempDir, payments: SocketAddr) -> std::path::PathBuf {
    let mut toml = String::new();
    for (name, command) in SUBS.iter().filter(|(n, _)| server_of(n) == 1) {
        toml.push_str(&format!(
            "[[subscriptions]]\nname = \"{name}\"\ncommands = [\"{command}\"]\n\
             url = \"http://{payments}/{name}/victim\"\ntimeout_ms = {TIMEOUT_MS}\n\
             max_attempts = 8\n[subscriptions.breaker]\nfailures = 10000\n\n"
        ));
    }
    let path = dir.path().join("victim.toml");
    std::fs::write(&path, toml).expect("write the victim's config");
    path
}

fn spawn_victim(app: &TestApp, config: &std::path::Path, db: &str, metrics: u16) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["worker", "--modules", "sub.charge,sub.refund"])
            .env("WARREN_CONFIG", config)
            .env("WARREN_AMQP__URL", app.vhost.amqp_url())
            .env("WARREN_AMQP__MANAGEMENT_URL", management_url())
            .env("WARREN_DATABASE__URL", db)
            .env("WARREN_METRICS__ADDR", format!("127.0.0.1:{metrics}"))
            .env("WARREN_LOG__FILTER", "error")
            .env("WARREN_JOBS__FAILURE_DELAY_MS", "1000")
            .env("WARREN_JOBS__ERROR_DELAY_MS", "2000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the victim worker starts"),
    )
}

fn payload(i: usize) -> Value {
    json!({
        "passenger": format!("P-{}", i % PASSENGERS),
        "flight": format!("WR-{}", i % FLIGHTS),
        "fare": 100 + (i % 5) as i64 * 100,
        "blocked": i % 9 == 4,
    })
}

/// Starts saga `i`: even ones with `POST /v1/sagas/trip` and an Idempotency-Key (retried with
/// the same key on a 503; every tenth sent twice, the repeat answering the same saga), odd
/// ones with `saga.start`. Returns (saga id, business key).
async fn start(http: reqwest::Client, base: String, i: usize) -> (Uuid, String) {
    let key = format!("trip-{i}");
    let id_of = |v: &Value, field: &str| -> Uuid {
        v[field]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{v}"))
    };
    if i % 2 == 1 {
        let body = json!({"kind": "trip", "business_key": key, "payload": payload(i)});
        let r = http
            .post(format!("{base}/v1/jobs/saga.start"))
            .json(&body)
            .send();
        let r = r.await.expect("sent");
        assert_eq!(r.status(), 202, "saga.start {i}");
        return (id_of(&r.json().await.expect("json"), "job_id"), key);
    }
    let body = json!({"business_key": key, "payload": payload(i)});
    let mut first = None;
    for _ in 0..30 {
        let r = http
            .post(format!("{base}/v1/sagas/trip"))
            .header("idempotency-key", format!("start-{i}"))
            .json(&body)
            .send()
            .await
            .expect("sent");
        let status = r.status().as_u16();
        if status == 503 {
            tokio::time::sleep(Duration::from_millis(500)).await; // the client's pause
            continue;
        }
        let v: Value = r.json().await.expect("json");
        assert!(status == 202 || status == 200, "start {i}: {status} {v}");
        let id = id_of(&v, "saga_id");
        match first {
            Some(f) => {
                assert_eq!((status, id), (200, f), "a repeat answers the same saga");
                return (f, key);
            }
            None if i.is_multiple_of(10) => first = Some(id),
            None => return (id, key),
        }
    }
    panic!("saga {i} not started")
}

async fn ended_count(db: &sea_orm::DatabaseConnection, status: &str) -> usize {
    sagas::Entity::find()
        .all(db)
        .await
        .map_or(0, |r| r.iter().filter(|s| s.status == status).count())
}

#[tokio::test]
async fn three_hundred_trip_sagas_with_flaky_killed_and_cut_http_participants_keep_the_ledgers_exact()
 {
    let began = Instant::now();
    let books: Shared = Arc::default();
    {
        let mut b = lock(&books);
        b.stock = (0..FLIGHTS).map(|f| (format!("WR-{f}"), SEATS)).collect();
        b.balance = (0..PASSENGERS)
            .map(|p| (format!("P-{p}"), BALANCE))
            .collect();
    }
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Server::start_new(books.clone()).await);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = trip_definitions(&dir, 60_000);
    let modules: Vec<String> = SUBS.iter().map(|(n, _)| format!("sub.{n}")).collect();
    let modules: Vec<&str> = modules.iter().map(String::as_str).collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::addr).collect();
    let app = spawn_saga(
        &modules,
        |mut s| {
            s.saga.definitions_file = Some(path.clone());
            s.subscriptions = SUBS
                .iter()
                .map(|(n, c)| tune(sub(n, c, addrs[server_of(n)])))
                .collect();
            s.database.max_connections = 10;
            s
        },
        |a| a,
    )
    .await;
    // A second worker, a process sharing the payments subscriptions' queues, reaching the
    // database through a relay the test stalls.
    let pg = url::Url::parse(&app.db.url).expect("database URL");
    let relay = Arc::new(Relay::start(format!(
        "{}:{}",
        pg.host_str().expect("database host"),
        pg.port().unwrap_or(5432)
    )));
    let mut victim_db = pg.clone();
    victim_db.set_port(Some(relay.port)).expect("port");
    let victim_port = free_port();
    let config = victim_config(&dir, addrs[1]);
    let mut victim = spawn_victim(&app, &config, victim_db.as_str(), victim_port);
    eventually(Duration::from_secs(30), "the victim consumes", || async {
        crate::scale::scrape(&app.http, victim_port).await
    })
    .await;

    let (tell, told) = tokio::sync::oneshot::channel();
    lock(&books).trap = Some((relay.clone(), tell));
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..SAGAS {
        posts.spawn(start(app.http.clone(), app.base.clone(), i));
    }
    let db = app.db().await;
    let asked_again = faults(
        &app,
        &servers[0],
        &db,
        (&mut victim, &relay, victim_port, told),
    )
    .await;

    let mut answered: HashMap<Uuid, String> = HashMap::new();
    while let Some(r) = posts.join_next().await {
        let (id, key) = r.expect("start task");
        assert!(
            answered.insert(id, key).is_none(),
            "a saga id answered twice"
        );
    }
    assert_eq!(answered.len(), SAGAS);
    let finals = settle(&app, &db).await;
    for s in &finals {
        assert_eq!(
            answered.get(&s.id),
            s.business_key.as_ref(),
            "saga {}",
            s.id
        );
    }
    assert_eq!(finals.len(), SAGAS, "one saga per start");
    {
        let b = lock(&books);
        let not_again: Vec<_> = asked_again
            .iter()
            .filter(|(k, n)| b.asked.get(k).copied().unwrap_or(0) <= *n)
            .collect();
        assert!(
            not_again.is_empty(),
            "answered requests lost to a fault were never asked again: {not_again:?}"
        );
        check_books(&b, &finals);
    }
    eprintln!("saga http load: {:?} in all", began.elapsed());
    app.cleanup().await;
}

/// The faults, each landing on work in hand: the seats server dropped while it holds
/// answered requests and started again; the victim worker SIGKILLed after the payments server
/// answered it (its database stalled, so it could not record or reply); every connection cut.
async fn faults(
    app: &TestApp,
    seats: &Server,
    db: &sea_orm::DatabaseConnection,
    (victim, relay, victim_port, told): (&mut KillOnDrop, &Arc<Relay>, u16, Told),
) -> Vec<((String, String), u32)> {
    let (key, before) = tokio::time::timeout(Duration::from_secs(30), told)
        .await
        .expect("the victim is asked within 30 s")
        .expect("the trap fired");
    let op = if key.ends_with(":execute") {
        "charge"
    } else {
        "refund"
    };
    let queue = format!("warren.sub.{op}");
    let at_kill = holding_work(
        &app.http,
        victim_port,
        &[&queue],
        Duration::from_secs(10),
        |_| true,
    )
    .await;
    victim.0.kill().expect("SIGKILL the victim");
    let _ = victim.0.wait();
    relay.close();
    eprintln!(
        "saga http load: the victim was killed holding {} {queue} commands, {key} answered to it",
        at_kill.in_flight(&queue)
    );
    let mut asked_again = vec![((op.to_owned(), key), before)];
    eventually(
        Duration::from_secs(60),
        "a share of sagas completed",
        || async { (ended_count(db, "completed").await >= 20).then_some(()) },
    )
    .await;
    let held = eventually(
        Duration::from_secs(30),
        "the seats server holding an answered request",
        || async { seats.stop_if_holding(&["reserve", "release"]) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // down for a while
    seats.start();
    eprintln!(
        "saga http load: the seats server was dropped holding {} answered requests",
        held.len()
    );
    asked_again.extend(held);
    // The cut lands on commands the in-process subscriptions hold.
    let metrics = &app.running.as_ref().expect("running").metrics;
    let subs: Vec<String> = SUBS
        .iter()
        .map(|(n, _)| format!("warren.sub.{n}"))
        .collect();
    let held = eventually(
        Duration::from_secs(30),
        "the in-process subscriptions holding commands",
        || async {
            let s = Scrape(metrics.render());
            let n: u64 = subs.iter().map(|q| s.in_flight(q)).sum();
            (n > 0).then_some(n)
        },
    )
    .await;
    let names = connection_names(app).await;
    close_connections(app, &names).await;
    eprintln!(
        "saga http load: {} connections cut while the subscriptions held {held} commands",
        names.len()
    );
    asked_again
}

/// Waits until every saga has ended with the outbox empty and the queues have settled
/// (unacked, retry tiers and dead letters included); the sagas then, unchanged since.
async fn settle(app: &TestApp, db: &sea_orm::DatabaseConnection) -> Vec<sagas::Model> {
    let ended = |rows: &[sagas::Model]| {
        rows.iter().all(|s| {
            matches!(
                s.status.as_str(),
                "completed" | "compensated" | "needs_intervention"
            )
        })
    };
    let first = eventually(Duration::from_secs(180), "every saga ends", || async {
        let rows = sagas::Entity::find().all(db).await.ok()?;
        let outbox = entities::saga_outbox::Entity::find().all(db).await.ok()?;
        (rows.len() >= SAGAS && ended(&rows) && outbox.is_empty()).then_some(rows)
    })
    .await;
    app.settled(&queues()).await;
    let finals = sagas::Entity::find().all(db).await.expect("sagas");
    let status = |rows: &[sagas::Model]| -> BTreeMap<Uuid, String> {
        rows.iter().map(|s| (s.id, s.status.clone())).collect()
    };
    assert_eq!(
        status(&finals),
        status(&first),
        "sagas changed after they ended"
    );
    finals
}

/// Effects by saga.
fn by_saga(effects: &[Effect]) -> HashMap<Uuid, Vec<&Effect>> {
    effects.iter().fold(HashMap::new(), |mut m, e| {
        m.entry(e.saga).or_default().push(e);
        m
    })
}

/// The ledgers against the sagas, by sets of ids.
fn check_books(b: &Books, finals: &[sagas::Model]) {
    let ids: HashSet<Uuid> = finals.iter().map(|s| s.id).collect();
    let with = |status: &str| -> HashSet<Uuid> {
        finals
            .iter()
            .filter(|s| s.status == status)
            .map(|s| s.id)
            .collect()
    };
    let (completed, compensated) = (with("completed"), with("compensated"));
    assert_eq!(
        completed.len() + compensated.len(),
        SAGAS,
        "every saga completed or compensated (none needs intervention)"
    );
    let all = [&b.seats, &b.releases, &b.charges, &b.refunds, &b.tickets];
    let strangers: Vec<&Effect> = all
        .iter()
        .flat_map(|v| v.iter())
        .filter(|e| !ids.contains(&e.saga))
        .collect();
    assert!(strangers.is_empty(), "effects of no saga: {strangers:?}");
    let (seats, releases) = (by_saga(&b.seats), by_saga(&b.releases));
    let (charges, refunds, tickets) = (
        by_saga(&b.charges),
        by_saga(&b.refunds),
        by_saga(&b.tickets),
    );
    let n = |m: &HashMap<Uuid, Vec<&Effect>>, id: &Uuid| m.get(id).map_or(0, Vec::len);
    let ids_of = |m: &HashMap<Uuid, Vec<&Effect>>, id: &Uuid| -> Vec<String> {
        m.get(id)
            .map_or(Vec::new(), |v| v.iter().map(|e| e.id.clone()).collect())
    };
    for s in finals {
        let id = &s.id;
        let results = &s.state["results"];
        let (seat, charge) = (ids_of(&seats, id), ids_of(&charges, id));
        if completed.contains(id) {
            let counts = [n(&seats, id), n(&charges, id), n(&tickets, id)];
            let undone = [n(&releases, id), n(&refunds, id)];
            assert_eq!((counts, undone), ([1, 1, 1], [0, 0]), "completed saga {id}");
            assert_eq!(
                results["charge"]["charge_id"],
                json!(charge[0]),
                "saga {id}"
            );
            assert_eq!(results["issue"]["ticket"], json!(ids_of(&tickets, id)[0]));
        } else {
            assert_eq!(n(&tickets, id), 0, "compensated saga {id} has a ticket");
            assert!(
                seat.len() <= 1 && charge.len() <= 1,
                "saga {id}: {seat:?} {charge:?}"
            );
            assert_eq!(
                ids_of(&releases, id),
                seat,
                "saga {id}: its seat released once"
            );
            assert_eq!(
                ids_of(&refunds, id),
                charge,
                "saga {id}: its charge refunded once"
            );
            if let Some(c) = charge.first() {
                assert_eq!(results["charge"]["charge_id"], json!(c), "saga {id}");
            }
        }
        if let Some(seat) = seat.first() {
            assert_eq!(results["reserve"]["seat"], json!(seat), "saga {id}");
        }
    }
    check_sums(b, &completed);
    let refunded = compensated.iter().filter(|id| n(&refunds, id) == 1).count();
    let released = compensated
        .iter()
        .filter(|id| n(&releases, id) == 1)
        .count();
    eprintln!(
        "saga http load: {} completed, {} compensated ({released} released a seat, {refunded} refunded a charge); {} faults, {} answers replayed",
        completed.len(),
        compensated.len(),
        b.faults,
        b.replayed
    );
    assert!(
        completed.len() >= 50 && compensated.len() >= 50,
        "a mix of endings"
    );
    assert!(refunded >= 5 && released >= 10, "compensations ran");
    assert!(
        b.faults > 0 && b.replayed > 0,
        "faults and replays happened"
    );
}

/// Stock and balances add up exactly: what is left plus what completed sagas hold.
fn check_sums(b: &Books, completed: &HashSet<Uuid>) {
    let held = |effects: &[Effect]| -> HashMap<String, i64> {
        effects
            .iter()
            .filter(|e| completed.contains(&e.saga))
            .fold(HashMap::new(), |mut m, e| {
                *m.entry(e.on.clone()).or_default() += e.amount;
                m
            })
    };
    let (seats, spent) = (held(&b.seats), held(&b.charges));
    for (flight, left) in &b.stock {
        assert!(*left >= 0, "{flight}");
        assert_eq!(
            SEATS,
            left + seats.get(flight).copied().unwrap_or(0),
            "seats of {flight}"
        );
    }
    for (account, left) in &b.balance {
        assert!(*left >= 0, "{account}");
        assert_eq!(
            BALANCE,
            left + spent.get(account).copied().unwrap_or(0),
            "balance of {account}"
        );
    }
}
