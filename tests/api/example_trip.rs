//! The trip example (`examples/trip`, issue 19) as a test: the example's three Python
//! participants run as real processes on free ports, and warren runs the example's
//! `sagas.json` with the example's `warren.toml` subscriptions pointed at them (signed with a
//! secret the participants verify). Each path is checked against the participants' ledgers
//! (`GET /ledger`) and `GET /v1/sagas/{id}`: success, a refusal at step 3, a participant
//! answering 503 twice, a participant hanging past the step's deadline, and a compensation that
//! keeps failing until an operator retries it. Tiers are 1 s and 2 s (`spawn_saga`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use warren::{Settings, config::Secret};

use crate::{
    helpers::{TestApp, eventually},
    saga::spawn_saga,
};

/// The participants' signing secret (Standard Webhooks form, 24 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The example's participants: (subscription name, script).
const SERVICES: [(&str, &str); 3] = [
    ("seats", "seats.py"),
    ("payments", "payments.py"),
    ("tickets", "tickets.py"),
];
const LONG: Duration = Duration::from_secs(40);

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/trip")
        .join(file)
}

/// One participant process, stopped when dropped.
struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `script` on a free port (`--port 0`); its first line says which.
fn start_service(script: &str) -> Service {
    let python = std::env::var("WARREN_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut child = Command::new(&python)
        .arg(example(script))
        .args(["--port", "0", "--secret", SECRET])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} {script} starts: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("{script} says where it listens within 15 s"));
    let base = line
        .trim()
        .rsplit_once(" on ")
        .map(|(_, url)| url.to_owned())
        .unwrap_or_else(|| panic!("{script}: unexpected first line {line:?}"));
    Service { child, base }
}

/// warren running the example with its participants.
struct Trip {
    app: TestApp,
    services: BTreeMap<&'static str, Service>,
    _dir: tempfile::TempDir,
}

/// Starts the participants and warren with the example's settings; `deadline` shortens one
/// step's deadline (step name, ms) in a copy of the example's definitions.
async fn spawn_example(deadline: Option<(&str, u64)>) -> Trip {
    let services: BTreeMap<_, _> = SERVICES
        .iter()
        .map(|(name, script)| (*name, start_service(script)))
        .collect();
    let example_settings =
        Settings::load(Some(&example("warren.toml"))).expect("the example's warren.toml loads");
    let mut subs = example_settings.subscriptions;
    for sub in &mut subs {
        let service = services
            .get(sub.name.as_str())
            .expect("a participant per subscription");
        sub.url = format!("{}/", service.base);
        sub.secret = Some(Secret::new(SECRET));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let definitions = match deadline {
        None => example("sagas.json"),
        Some((step, ms)) => shortened(&dir, step, ms),
    };
    let modules: Vec<String> = subs.iter().map(|s| format!("sub.{}", s.name)).collect();
    let modules: Vec<&str> = modules.iter().map(String::as_str).collect();
    let app = spawn_saga(
        &modules,
        |mut s| {
            s.saga.definitions_file = Some(definitions);
            s.subscriptions = subs;
            s
        },
        |a| a,
    )
    .await;
    Trip {
        app,
        services,
        _dir: dir,
    }
}

/// The example's definitions with `step`'s deadline set to `ms`, written into `dir`.
fn shortened(dir: &tempfile::TempDir, step: &str, ms: u64) -> PathBuf {
    let text = std::fs::read_to_string(example("sagas.json")).expect("read sagas.json");
    let mut defs: Value = serde_json::from_str(&text).expect("sagas.json is JSON");
    let steps = defs[0]["steps"].as_array_mut().expect("steps");
    let found = steps
        .iter_mut()
        .find(|s| s["name"] == step)
        .expect("the step");
    found["deadline"] = json!(ms);
    let path = dir.path().join("sagas.json");
    std::fs::write(&path, defs.to_string()).expect("write definitions");
    path
}

impl Trip {
    /// Starts a trip with `POST /v1/sagas/trip`; returns its id.
    async fn start(&self, key: &str, trip: Value) -> String {
        let r = self
            .app
            .request(reqwest::Method::POST, "/v1/sagas/trip")
            .json(&json!({"business_key": key, "payload": trip}))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        let v: Value = r.json().await.expect("json");
        v["saga_id"].as_str().expect("saga_id").to_owned()
    }

    async fn saga(&self, id: &str) -> Option<Value> {
        let r = self
            .app
            .request(reqwest::Method::GET, &format!("/v1/sagas/{id}"))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Waits until saga `id` is `status` and `also` holds of its view; returns the view.
    async fn until(&self, id: &str, status: &str, also: impl Fn(&Value) -> bool) -> Value {
        eventually(LONG, &format!("saga {id} reaches {status}"), || async {
            let v = self.saga(id).await?;
            (v["status"] == status && also(&v)).then_some(v)
        })
        .await
    }

    /// A participant's `GET /ledger`.
    async fn ledger(&self, service: &str) -> Value {
        let url = format!("{}/ledger", self.services[service].base);
        let r = self.app.http.get(url).send().await.expect("ledger");
        r.json().await.expect("ledger json")
    }

    /// Sets a participant's injected faults (`POST /faults`).
    async fn faults(&self, service: &str, spec: Value) {
        let url = format!("{}/faults", self.services[service].base);
        let r = self
            .app
            .http
            .post(url)
            .json(&spec)
            .send()
            .await
            .expect("faults");
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }

    /// Waits for the queues to settle, then stops warren and the participants.
    async fn finish(self) {
        self.app.settled(&QUEUES).await;
        self.app.cleanup().await;
    }
}

const QUEUES: [(&str, u64); 4] = [
    ("warren.sub.seats", 0),
    ("warren.sub.payments", 0),
    ("warren.sub.tickets", 0),
    ("warren.saga", 0),
];

/// A participant's stored answers by Idempotency-Key: (status, body).
fn answers(ledger: &Value) -> BTreeMap<String, (i64, Value)> {
    ledger["answers"]
        .as_array()
        .expect("answers")
        .iter()
        .map(|a| {
            let key = a["key"].as_str().expect("key").to_owned();
            (
                key,
                (a["status"].as_i64().expect("status"), a["body"].clone()),
            )
        })
        .collect()
}

/// The (status, attempt) of every request a participant received with `key`, in order.
fn requests(ledger: &Value, key: &str) -> Vec<(i64, i64)> {
    ledger["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r["key"] == key)
        .map(|r| {
            (
                r["status"].as_i64().unwrap_or(0),
                r["attempt"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn keys(id: &str, of: &[(usize, &str)]) -> BTreeSet<String> {
    of.iter().map(|(s, a)| format!("{id}:{s}:{a}")).collect()
}

fn stored_keys(ledger: &Value) -> BTreeSet<String> {
    answers(ledger).into_keys().collect()
}

/// When (participant's clock) the answer under `key` was stored.
fn answered_at(ledger: &Value, key: &str) -> f64 {
    ledger["answers"]
        .as_array()
        .expect("answers")
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["at"].as_f64())
        .unwrap_or_else(|| panic!("no answer under {key}"))
}

fn trip(flight: &str) -> Value {
    json!({"passenger": "Ada Lovelace", "flight": flight, "class": "economy",
           "card": "4242 4242 4242 4242", "fare": 420})
}

#[tokio::test]
async fn example_trip_books_a_seat_charges_the_card_and_issues_the_ticket() {
    let t = spawn_example(None).await;
    let id = t.start("TRIP-ok", trip("WR 19")).await;
    let view = t.until(&id, "completed", |_| true).await;
    t.app.settled(&QUEUES).await;

    let (seats, payments, tickets) = (
        t.ledger("seats").await,
        t.ledger("payments").await,
        t.ledger("tickets").await,
    );
    assert_eq!(stored_keys(&seats), keys(&id, &[(0, "execute")]));
    assert_eq!(stored_keys(&payments), keys(&id, &[(1, "execute")]));
    assert_eq!(stored_keys(&tickets), keys(&id, &[(2, "execute")]));
    let result = |l: &Value, step: usize| {
        let (status, body) = answers(l)[&format!("{id}:{step}:execute")].clone();
        assert_eq!(status, 200);
        body
    };
    let (seat, charge, ticket) = (result(&seats, 0), result(&payments, 1), result(&tickets, 2));
    assert_eq!(charge["amount"], 420);
    assert_eq!(
        ticket["seat"], seat["seat"],
        "the reservation reached the ticket"
    );
    assert_eq!(
        view["results"],
        json!({"reserve": seat, "charge": charge, "issue": ticket})
    );
    assert_eq!(view["steps"][1]["result"], charge);
    assert_eq!(payments["charges"].as_array().map(Vec::len), Some(1));
    assert!(payments["charges"][0]["refund_id"].is_null());
    t.finish().await;
}

#[tokio::test]
async fn example_trip_on_a_cancelled_flight_refunds_the_charge_it_made_and_releases_the_seat() {
    let t = spawn_example(None).await;
    let id = t.start("TRIP-cancelled", trip("WR 404")).await;
    let view = t.until(&id, "compensated", |_| true).await;
    assert_eq!(view["reason"], "flight WR 404 is cancelled");
    t.app.settled(&QUEUES).await;

    let (seats, payments, tickets) = (
        t.ledger("seats").await,
        t.ledger("payments").await,
        t.ledger("tickets").await,
    );
    assert_eq!(
        answers(&tickets)[&format!("{id}:2:execute")].0,
        409,
        "the refusal is stored under its key"
    );
    assert_eq!(
        stored_keys(&payments),
        keys(&id, &[(1, "execute"), (1, "compensate")])
    );
    assert_eq!(
        stored_keys(&seats),
        keys(&id, &[(0, "execute"), (0, "compensate")])
    );
    let paid = answers(&payments);
    let charge_id = paid[&format!("{id}:1:execute")].1["charge_id"].clone();
    assert_eq!(
        paid[&format!("{id}:1:compensate")].1["charge_id"],
        charge_id,
        "the refund names the charge the charge step returned"
    );
    assert_eq!(payments["charges"][0]["charge_id"], charge_id);
    assert!(
        payments["charges"][0]["refund_id"].is_string(),
        "{payments}"
    );
    assert_eq!(seats["seats"][0]["released"], 1);
    assert!(
        answered_at(&payments, &format!("{id}:1:compensate"))
            <= answered_at(&seats, &format!("{id}:0:compensate")),
        "compensated in reverse: the refund before the release"
    );
    t.finish().await;
}

#[tokio::test]
async fn example_trip_with_payments_answering_503_twice_charges_once_on_the_third_request() {
    let t = spawn_example(None).await;
    // The first request charges the card and then answers 503 (as if the answer were lost),
    // so the retries meet a charge already made under their key.
    t.faults(
        "payments",
        json!({"fail": 503, "times": 2, "after_effect": true}),
    )
    .await;
    let id = t.start("TRIP-flaky", trip("WR 19")).await;
    let view = t.until(&id, "completed", |_| true).await;
    t.app.settled(&QUEUES).await;

    let payments = t.ledger("payments").await;
    let key = format!("{id}:1:execute");
    assert_eq!(
        requests(&payments, &key),
        vec![(503, 1), (503, 2), (200, 3)],
        "three requests with the same Idempotency-Key"
    );
    assert_eq!(stored_keys(&payments), keys(&id, &[(1, "execute")]));
    assert_eq!(
        payments["charges"].as_array().map(Vec::len),
        Some(1),
        "one charge"
    );
    assert_eq!(view["results"]["charge"], answers(&payments)[&key].1);
    t.finish().await;
}

#[tokio::test]
async fn example_trip_whose_charge_hangs_past_its_deadline_is_compensated_and_the_late_charge_refunded()
 {
    // The charge step's deadline is 1 s here (the example's is 30 s); payments hangs 3 s and
    // then charges, and its answer arrives within the subscription's timeout (5 s).
    let t = spawn_example(Some(("charge", 1_000))).await;
    t.faults("payments", json!({"hang_ms": 3000, "times": 1}))
        .await;
    let id = t.start("TRIP-slow", trip("WR 19")).await;
    let refund = format!("{id}:1:compensate");
    let view = t
        .until(&id, "compensated", |v| {
            v["timeline"].as_array().is_some_and(|rows| {
                rows.iter().any(|r| {
                    r["event"] == "succeeded" && r["step"] == 1 && r["action"] == "compensate"
                })
            })
        })
        .await;
    assert_eq!(view["reason"], "step charge passed its deadline", "{view}");
    let timeline = view["timeline"].as_array().expect("timeline");
    assert!(
        timeline
            .iter()
            .any(|r| r["event"] == "deadline_passed" && r["step"] == 1),
        "{view}"
    );
    t.app.settled(&QUEUES).await;

    let (seats, payments, tickets) = (
        t.ledger("seats").await,
        t.ledger("payments").await,
        t.ledger("tickets").await,
    );
    assert_eq!(
        stored_keys(&payments),
        keys(&id, &[(1, "execute"), (1, "compensate")]),
        "the late charge happened once and was refunded once"
    );
    let paid = answers(&payments);
    assert_eq!(
        paid[&refund].1["charge_id"],
        paid[&format!("{id}:1:execute")].1["charge_id"]
    );
    assert_eq!(
        stored_keys(&seats),
        keys(&id, &[(0, "execute"), (0, "compensate")])
    );
    assert!(stored_keys(&tickets).is_empty(), "no ticket: {tickets}");
    t.finish().await;
}

#[tokio::test]
async fn example_trip_whose_refund_keeps_failing_needs_an_operator_whose_retry_refunds_once() {
    let t = spawn_example(None).await;
    t.faults("payments", json!({"compensation_fails": true}))
        .await;
    let id = t.start("TRIP-desk", trip("WR 404")).await;
    let view = t.until(&id, "needs_intervention", |_| true).await;
    let iv = view["interventions"][0].clone();
    assert_eq!(iv["reason"], "payments cannot undo it now (injected fault)");
    let refund = format!("{id}:1:compensate");
    let seats = t.ledger("seats").await;
    assert!(
        stored_keys(&seats).contains(&format!("{id}:0:compensate")),
        "the other compensation still ran: {seats}"
    );

    // The fault is cleared and the operator retries, as the console's saga page does.
    t.faults("payments", json!({})).await;
    let r = t
        .app
        .request(
            reqwest::Method::POST,
            &format!("/v1/interventions/{}/retry", iv["id"].as_str().expect("id")),
        )
        .json(&json!({"note": "refund desk open again"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    t.until(&id, "compensated", |_| true).await;
    t.app.settled(&QUEUES).await;

    let payments = t.ledger("payments").await;
    let tried: Vec<i64> = requests(&payments, &refund).iter().map(|r| r.0).collect();
    assert_eq!(tried, vec![409, 200], "refused, then refunded on the retry");
    assert_eq!(
        stored_keys(&payments),
        keys(&id, &[(1, "execute"), (1, "compensate")]),
        "one charge, one refund"
    );
    let paid = answers(&payments);
    assert_eq!(
        paid[&refund].1["charge_id"],
        paid[&format!("{id}:1:execute")].1["charge_id"]
    );
    t.finish().await;
}
