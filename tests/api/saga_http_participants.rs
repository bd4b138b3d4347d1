//! HTTP saga participants end to end (issue 19): a "trip" saga defined in a file, whose three
//! steps (reserve a seat, charge a card, issue a ticket) and compensations are HTTP
//! subscriptions answered by a real receiver started by the test. Each answer goes its way
//! (2xx done with its result, 409/422 refused, anything else retried, then given up), the
//! results reach later commands and compensations, and the saga shows them. Tiers are 1 s and
//! 2 s (`spawn_saga`).

use std::{net::SocketAddr, time::Duration};

use entities::saga_commands;
use lapin::BasicProperties;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use warren::broker::envelope::Event;

use crate::{
    helpers::{TestApp, eventually},
    saga::spawn_saga,
    subscriptions::{Answer, Got, Receiver, answer},
};

/// Every subscription of the trip saga: (name = receiver path, the command it takes).
pub(crate) const SUBS: [(&str, &str); 5] = [
    ("reserve", "seat.reserve"),
    ("release", "seat.release"),
    ("charge", "card.charge"),
    ("refund", "card.refund"),
    ("issue", "ticket.issue"),
];

fn json_answer(status: u16, body: &'static str) -> Answer {
    Answer {
        body,
        headers: vec![("content-type", "application/json")],
        ..answer(status)
    }
}

/// The trip saga's definitions file, in `dir`.
fn definitions(dir: &tempfile::TempDir) -> std::path::PathBuf {
    trip_definitions(dir, 20_000)
}

/// The trip saga's definitions file, in `dir`, each step with `deadline_ms`.
pub(crate) fn trip_definitions(dir: &tempfile::TempDir, deadline_ms: u64) -> std::path::PathBuf {
    let step = |name: &str, command: &str, compensation: Option<&str>| {
        json!({"name": name, "command": command, "compensation": compensation,
               "deadline": deadline_ms, "rolls_back": true})
    };
    let path = dir.path().join("sagas.json");
    let defs = json!([{
        "kind": "trip",
        "steps": [
            step("reserve", "seat.reserve", Some("seat.release")),
            step("charge", "card.charge", Some("card.refund")),
            step("issue", "ticket.issue", None),
        ]
    }]);
    std::fs::write(&path, defs.to_string()).expect("write definitions");
    path
}

/// Warren with the trip saga and one subscription per command, answered by `scripts`.
async fn spawn_trip(scripts: &[(&str, Vec<Answer>)]) -> (TestApp, Receiver, tempfile::TempDir) {
    let (rx, addr) = Receiver::start(scripts).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = definitions(&dir);
    let modules: Vec<String> = SUBS.iter().map(|(n, _)| format!("sub.{n}")).collect();
    let modules: Vec<&str> = modules.iter().map(String::as_str).collect();
    let app = spawn_saga(
        &modules,
        |mut s| {
            s.saga.definitions_file = Some(path.clone());
            s.subscriptions = SUBS.iter().map(|(n, c)| sub(n, c, addr)).collect();
            s
        },
        |a| a,
    )
    .await;
    (app, rx, dir)
}

/// The subscription `name` taking `command`, posting to `http://{addr}/{name}`.
pub(crate) fn sub(
    name: &str,
    command: &str,
    addr: SocketAddr,
) -> warren::config::SubscriptionSettings {
    let mut s = warren::config::SubscriptionSettings::new(name, format!("http://{addr}/{name}"));
    s.commands = vec![command.to_owned()];
    s.timeout_ms = 5_000;
    s
}

/// Starts a trip saga with `saga.start`; returns its id.
async fn start_trip(app: &TestApp, key: &str) -> String {
    let r = app
        .request(reqwest::Method::POST, "/v1/jobs/saga.start")
        .json(&json!({
            "kind": "trip",
            "business_key": key,
            "payload": {"passenger": "Ada", "flight": "WR 19", "fare": 420},
        }))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.expect("json");
    v["job_id"].as_str().expect("job_id").to_owned()
}

/// Waits until saga `id` (started over the broker, so perhaps not stored yet) reaches
/// `status`; returns its view.
async fn until_status(app: &TestApp, id: &str, status: &str, limit: Duration) -> Value {
    eventually(limit, &format!("saga {id} reaches {status}"), || async {
        let r = app
            .request(reqwest::Method::GET, &format!("/v1/sagas/{id}"))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        (v["status"] == status).then_some(v)
    })
    .await
}

fn body(got: &Got) -> Value {
    serde_json::from_slice(&got.body).expect("a JSON body")
}

/// The saga headers of a request: (Idempotency-Key, saga id, step, action).
fn saga_headers(got: &Got) -> (String, String, String, String) {
    let h = |n: &str| got.header(n).unwrap_or_default().to_owned();
    (
        h("idempotency-key"),
        h("warren-saga-id"),
        h("warren-saga-step"),
        h("warren-saga-action"),
    )
}

fn header_of(id: &str, step: usize, name: &str, action: &str) -> (String, String, String, String) {
    (
        format!("{id}:{step}:{action}"),
        id.to_owned(),
        name.to_owned(),
        action.to_owned(),
    )
}

/// The timeline's `succeeded` rows as (step, action, result).
fn succeeded(view: &Value) -> Vec<(i64, String, Value)> {
    view["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|r| r["event"] == "succeeded")
        .map(|r| {
            (
                r["step"].as_i64().unwrap_or(-1),
                r["action"].as_str().unwrap_or_default().to_owned(),
                r["result"].clone(),
            )
        })
        .collect()
}

const LONG: Duration = Duration::from_secs(45);

#[tokio::test]
async fn each_steps_result_reaches_the_next_steps_and_shows_with_the_saga() {
    let (app, rx, _dir) = spawn_trip(&[
        ("reserve", vec![json_answer(200, r#"{"seat": "12A"}"#)]),
        ("charge", vec![json_answer(201, r#"{"charge_id": "ch_1"}"#)]),
        // A 2xx whose body is not JSON: the result is its text.
        (
            "issue",
            vec![Answer {
                body: "ticket T-1 issued",
                ..answer(200)
            }],
        ),
    ])
    .await;
    let id = start_trip(&app, "T-ok").await;
    let view = until_status(&app, &id, "completed", LONG).await;

    let reserve = rx.got("reserve");
    let charge = rx.got("charge");
    let issue = rx.got("issue");
    assert_eq!((reserve.len(), charge.len(), issue.len()), (1, 1, 1));
    assert_eq!(
        saga_headers(&reserve[0]),
        header_of(&id, 0, "reserve", "execute")
    );
    assert_eq!(
        saga_headers(&charge[0]),
        header_of(&id, 1, "charge", "execute")
    );
    assert_eq!(
        saga_headers(&issue[0]),
        header_of(&id, 2, "issue", "execute")
    );
    let first = body(&reserve[0]);
    assert_eq!(first["payload"]["passenger"], "Ada");
    assert!(first.get("results").is_none(), "{first}");
    assert_eq!(
        body(&charge[0])["results"],
        json!({"reserve": {"seat": "12A"}})
    );
    assert_eq!(
        body(&issue[0])["results"],
        json!({"reserve": {"seat": "12A"}, "charge": {"charge_id": "ch_1"}})
    );
    assert_eq!(body(&issue[0])["payload"]["fare"], 420);

    let all = json!({"reserve": {"seat": "12A"}, "charge": {"charge_id": "ch_1"},
                     "issue": "ticket T-1 issued"});
    assert_eq!(view["results"], all);
    assert_eq!(view["steps"][1]["result"], json!({"charge_id": "ch_1"}));
    assert_eq!(
        succeeded(&view),
        vec![
            (0, "execute".into(), json!({"seat": "12A"})),
            (1, "execute".into(), json!({"charge_id": "ch_1"})),
            (2, "execute".into(), json!("ticket T-1 issued")),
        ]
    );
    // Each answer is recorded under its idempotency key, by the subscription's module.
    let rows = saga_commands::Entity::find()
        .filter(saga_commands::Column::SagaId.eq(uuid::Uuid::parse_str(&id).expect("uuid")))
        .all(&app.db().await)
        .await
        .expect("query");
    let charged = rows
        .iter()
        .find(|r| r.idempotency_key == format!("{id}:1:execute"))
        .expect("the charge is recorded");
    assert_eq!(charged.participant, "sub.charge");
    assert_eq!(charged.result, Some(json!({"charge_id": "ch_1"})));
    app.settled(&queues()).await;

    // The charge sent again under a new message id (the inbox does not know it): its
    // answer is recorded, so it is replied again without asking the participant, and the
    // orchestrator drops the repeated reply.
    let again = Event::new("card.charge", Some(id.clone()), body(&charge[0]));
    app.publish_raw(
        "warren.commands",
        "card.charge",
        &again.to_json(),
        BasicProperties::default().with_correlation_id(id.clone().into()),
    )
    .await;
    app.settled(&queues()).await;
    assert_eq!(rx.got("charge").len(), 1, "answered from the record");
    let after = until_status(&app, &id, "completed", LONG).await;
    assert_eq!(
        after["version"], view["version"],
        "the repeated reply changed nothing"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_refusal_at_step_three_compensates_in_reverse_with_the_charge_reaching_the_refund() {
    let (app, rx, _dir) = spawn_trip(&[
        ("reserve", vec![json_answer(200, r#"{"seat": "14C"}"#)]),
        ("charge", vec![json_answer(200, r#"{"charge_id": "ch_7"}"#)]),
        (
            "issue",
            vec![json_answer(409, r#"{"reason": "the flight is full"}"#)],
        ),
        ("refund", vec![json_answer(200, r#"{"refund_id": "re_7"}"#)]),
        ("release", vec![answer(204)]),
    ])
    .await;
    let id = start_trip(&app, "T-full").await;
    let view = until_status(&app, &id, "compensated", LONG).await;
    assert_eq!(view["reason"], "the flight is full");
    assert_eq!(rx.got("issue").len(), 1, "a refusal is not retried");

    let refund = rx.got("refund");
    let release = rx.got("release");
    assert_eq!((refund.len(), release.len()), (1, 1));
    assert!(refund[0].at <= release[0].at, "compensated in reverse");
    assert_eq!(
        saga_headers(&refund[0]),
        header_of(&id, 1, "charge", "compensate")
    );
    assert_eq!(
        saga_headers(&release[0]),
        header_of(&id, 0, "reserve", "compensate")
    );
    let refund_body = body(&refund[0]);
    assert_eq!(refund_body["action"], "compensate");
    assert_eq!(
        refund_body["results"]["charge"],
        json!({"charge_id": "ch_7"})
    );
    assert_eq!(
        body(&release[0])["results"]["reserve"],
        json!({"seat": "14C"})
    );

    // The compensation's answer is in the timeline; the refused step records its reason.
    assert!(
        succeeded(&view).contains(&(1, "compensate".into(), json!({"refund_id": "re_7"}))),
        "{view}"
    );
    let failed = view["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|r| r["event"] == "failed")
        .cloned()
        .expect("a failed row");
    assert_eq!(
        (failed["step"].clone(), failed["reason"].clone()),
        (json!(2), json!("the flight is full"))
    );
    assert_eq!(view["steps"][2]["status"], "failed");
    app.settled(&queues()).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_participant_answering_503_twice_then_succeeds_with_the_same_idempotency_key() {
    let (app, rx, _dir) = spawn_trip(&[
        ("reserve", vec![json_answer(200, r#"{"seat": "1A"}"#)]),
        (
            "charge",
            vec![
                answer(503),
                answer(503),
                json_answer(200, r#"{"charge_id": "ch_3"}"#),
            ],
        ),
        ("issue", vec![answer(204)]),
    ])
    .await;
    let id = start_trip(&app, "T-flaky").await;
    let view = until_status(&app, &id, "completed", LONG).await;
    let charge = rx.got("charge");
    assert_eq!(charge.len(), 3, "two 503s, then the success");
    for (n, got) in charge.iter().enumerate() {
        assert_eq!(saga_headers(got), header_of(&id, 1, "charge", "execute"));
        assert_eq!(
            got.header("warren-attempt"),
            Some((n + 1).to_string().as_str())
        );
    }
    assert_eq!(view["results"]["charge"], json!({"charge_id": "ch_3"}));
    assert_eq!(
        body(&rx.got("issue")[0])["results"]["charge"],
        json!({"charge_id": "ch_3"})
    );
    app.settled(&queues()).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_participant_that_never_succeeds_is_parked_and_its_saga_fails_the_step_and_compensates() {
    let (app, rx, _dir) = spawn_trip(&[
        ("reserve", vec![json_answer(200, r#"{"seat": "3F"}"#)]),
        (
            "charge",
            vec![json_answer(500, r#"{"error": "card service down"}"#)],
        ),
        ("release", vec![answer(200)]),
    ])
    .await;
    let id = start_trip(&app, "T-down").await;
    let view = until_status(&app, &id, "compensated", LONG).await;
    let reason = view["reason"].as_str().expect("a reason").to_owned();
    assert!(
        reason.contains("sub.charge gave up on card.charge after 3 attempt(s)")
            && reason.contains("500"),
        "{reason}"
    );
    let charge = rx.got("charge");
    assert_eq!(charge.len(), 3, "max_attempts deliveries");
    assert!(
        charge
            .iter()
            .all(|g| saga_headers(g) == header_of(&id, 1, "charge", "execute")),
        "the same Idempotency-Key on every retry"
    );
    assert_eq!(rx.got("release").len(), 1);
    assert!(
        rx.got("refund").is_empty(),
        "a failed step is not compensated"
    );
    assert!(rx.got("issue").is_empty());
    // Parked as well: the message waits in the dead-letter queue for an operator.
    let mut want = queues();
    want.push(("warren.sub.charge.dead", 1));
    app.settled(&want).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_refused_compensation_needs_intervention_and_an_operator_retry_asks_the_participant_again()
 {
    let (app, rx, _dir) = spawn_trip(&[
        ("reserve", vec![json_answer(200, r#"{"seat": "9B"}"#)]),
        ("charge", vec![json_answer(200, r#"{"charge_id": "ch_9"}"#)]),
        ("issue", vec![answer(422)]),
        (
            "refund",
            vec![
                json_answer(409, r#"{"reason": "the refund desk is closed"}"#),
                json_answer(200, r#"{"refund_id": "re_9"}"#),
            ],
        ),
        ("release", vec![answer(204)]),
    ])
    .await;
    let id = start_trip(&app, "T-desk").await;
    let view = until_status(&app, &id, "needs_intervention", LONG).await;
    assert_eq!(
        rx.got("release").len(),
        1,
        "the other compensation still ran"
    );
    let iv = view["interventions"][0].clone();
    assert_eq!(iv["reason"], "the refund desk is closed");
    let r = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/interventions/{}/retry", iv["id"].as_str().expect("id")),
        )
        .json(&json!({"note": "desk open again"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let view = until_status(&app, &id, "compensated", LONG).await;
    let refund = rx.got("refund");
    assert_eq!(refund.len(), 2, "a refused compensation is asked again");
    assert!(
        refund
            .iter()
            .all(|g| saga_headers(g) == header_of(&id, 1, "charge", "compensate")),
        "the same Idempotency-Key on the operator's retry"
    );
    assert_eq!(
        body(&refund[1])["results"]["charge"],
        json!({"charge_id": "ch_9"})
    );
    assert!(
        succeeded(&view).contains(&(1, "compensate".into(), json!({"refund_id": "re_9"}))),
        "{view}"
    );
    app.settled(&queues()).await;
    app.cleanup().await;
}

/// Every subscription's queue, empty.
pub(crate) fn queues() -> Vec<(&'static str, u64)> {
    vec![
        ("warren.sub.reserve", 0),
        ("warren.sub.release", 0),
        ("warren.sub.charge", 0),
        ("warren.sub.refund", 0),
        ("warren.sub.issue", 0),
        ("warren.saga", 0),
    ]
}
