//! The order saga end to end: the orchestrator, the participants (orders, inventory,
//! payments, notifications) and the HTTP surface, on a real broker and database.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use entities::{accounts, inventory, notifications, orders, saga_commands};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use warren::{
    App, Role, Settings,
    jobs::{Consumer, Job, JobError},
    modules::inventory::Inventory,
    saga::participants::ParticipantConsumer,
};

use crate::helpers::{TestApp, eventually, spawn_roles};

/// Short retry tiers, a short deadline, and `modules`.
pub async fn spawn_saga(
    modules: &[&str],
    settings: impl FnOnce(Settings) -> Settings,
    app: impl FnOnce(App) -> App,
) -> TestApp {
    let modules: Vec<String> = modules.iter().map(|m| (*m).to_owned()).collect();
    spawn_roles(
        &[Role::Http, Role::Worker, Role::Saga],
        |mut s| {
            s.jobs.failure_delay_ms = 1_000;
            s.jobs.error_delay_ms = 2_000;
            s.jobs.shutdown_grace_ms = 5_000;
            s.saga.deadline_ms = 20_000;
            s.saga.tick_ms = 100;
            s.saga.relay_ms = 200;
            s.saga.relay_grace_ms = 1_000;
            settings(s)
        },
        |a| app(a.modules(modules)),
    )
    .await
}

pub const ALL: &[&str] = &["orders", "inventory", "payments", "notifications"];

/// Every queue an order saga's commands and replies pass through, empty once it has settled.
pub const SAGA_QUEUES: [(&str, u64); 5] = [
    ("warren.orders", 0),
    ("warren.inventory", 0),
    ("warren.payments", 0),
    ("warren.notifications", 0),
    ("warren.saga", 0),
];

pub async fn seed(app: &TestApp, inventory: Value, accounts: Value) {
    let r = app
        .request(reqwest::Method::POST, "/v1/admin/seed")
        .json(&json!({"inventory": inventory, "accounts": accounts}))
        .send()
        .await
        .expect("seed sent");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

pub fn order(no: &str, user: &str, sku: &str, qty: i64, price: i64) -> Value {
    json!({
        "order_no": no,
        "user_id": user,
        "items": [{"sku": sku, "qty": qty, "price": price}],
        "total_amount": qty * price,
    })
}

pub async fn place(app: &TestApp, body: &Value) -> String {
    let r = app
        .request(reqwest::Method::POST, "/v1/orders")
        .json(body)
        .send()
        .await
        .expect("order sent");
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let v: Value = r.json().await.expect("json");
    v["saga_id"].as_str().expect("saga_id").to_owned()
}

/// Waits until the saga reaches `status`; returns its view.
pub async fn until_status(app: &TestApp, id: &str, status: &str, limit: Duration) -> Value {
    eventually(limit, &format!("saga {id} reaches {status}"), || async {
        let v = app.get_json(&format!("/v1/sagas/{id}")).await;
        (v["status"] == status).then_some(v)
    })
    .await
}

/// What the created orders among `orders` took: units per SKU and amount per user.
pub fn taken_by_created(
    orders: &[orders::Model],
) -> (
    std::collections::HashMap<String, i64>,
    std::collections::HashMap<String, i64>,
) {
    let mut taken = std::collections::HashMap::<String, i64>::new();
    let mut spent = std::collections::HashMap::<String, i64>::new();
    for o in orders.iter().filter(|o| o.status == "created") {
        for it in o.items.as_array().expect("items") {
            *taken
                .entry(it["sku"].as_str().expect("sku").to_owned())
                .or_default() += it["qty"].as_i64().expect("qty");
        }
        *spent.entry(o.user_id.clone()).or_default() += o.total_amount;
    }
    (taken, spent)
}

pub async fn stock(app: &TestApp, sku: &str) -> i64 {
    inventory::Entity::find_by_id(sku.to_owned())
        .one(&app.db().await)
        .await
        .expect("query")
        .expect("sku exists")
        .stock
}

pub async fn balance(app: &TestApp, user: &str) -> i64 {
    accounts::Entity::find_by_id(user.to_owned())
        .one(&app.db().await)
        .await
        .expect("query")
        .expect("account exists")
        .balance
}

async fn order_status(app: &TestApp, no: &str) -> Option<String> {
    orders::Entity::find()
        .filter(orders::Column::OrderNo.eq(no))
        .one(&app.db().await)
        .await
        .expect("query")
        .map(|o| o.status)
}

/// The timeline as `(step, action, event)` triples.
fn timeline(view: &Value) -> Vec<(i64, String, String)> {
    view["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| {
            (
                e["step"].as_i64().expect("step"),
                e["action"].as_str().expect("action").to_owned(),
                e["event"].as_str().expect("event").to_owned(),
            )
        })
        .collect()
}

fn t(step: i64, action: &str, event: &str) -> (i64, String, String) {
    (step, action.to_owned(), event.to_owned())
}

#[tokio::test]
async fn happy_path_creates_the_order_deducts_stock_and_balance_and_notifies() {
    let app = spawn_saga(ALL, |s| s, |a| a).await;
    seed(&app, json!({"SKU-1": 10}), json!({"u-1": 10_000})).await;
    let id = place(&app, &order("A-100", "u-1", "SKU-1", 3, 1_500)).await;
    let view = until_status(&app, &id, "completed", Duration::from_secs(30)).await;

    assert_eq!(
        order_status(&app, "A-100").await.as_deref(),
        Some("created")
    );
    assert_eq!(stock(&app, "SKU-1").await, 7);
    assert_eq!(balance(&app, "u-1").await, 10_000 - 4_500);
    let notes = notifications::Entity::find()
        .filter(notifications::Column::UserId.eq("u-1"))
        .all(&app.db().await)
        .await
        .expect("query");
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].title, "Order A-100 created");

    assert_eq!(
        timeline(&view),
        vec![
            t(0, "execute", "started"),
            t(0, "execute", "sent"),
            t(0, "execute", "succeeded"),
            t(1, "execute", "sent"),
            t(1, "execute", "succeeded"),
            t(2, "execute", "sent"),
            t(2, "execute", "succeeded"),
            t(3, "execute", "sent"),
            t(3, "execute", "succeeded"),
        ]
    );
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = view["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e["at"].as_str().expect("at")).expect("time"))
        .collect();
    let mut sorted = times.clone();
    sorted.sort_unstable();
    assert_eq!(times, sorted, "timeline in time order");
    assert!(view["finished_at"].is_string());
    assert!(view["deadline_at"].is_null(), "no deadline once finished");
    assert_eq!(view["steps"][3]["status"], "done");

    // By order number, and in the list of completed sagas.
    let by_no = app.get_json("/v1/orders/A-100").await;
    assert_eq!(by_no["saga"]["id"], id.as_str());
    assert_eq!(by_no["order"]["status"], "created");
    let list = app.get_json("/v1/sagas?state=completed").await;
    assert_eq!(list["sagas"].as_array().map(Vec::len), Some(1));

    // The same order number again is refused, naming the saga that has it.
    let r = app
        .request(reqwest::Method::POST, "/v1/orders")
        .json(&order("A-100", "u-1", "SKU-1", 1, 1))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "order_exists");
    assert_eq!(body["saga_id"], id.as_str());

    // The same views from the command line.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(args)
            .env("WARREN_AMQP__URL", app.vhost.amqp_url())
            .env("WARREN_DATABASE__URL", &app.db.url)
            .env("WARREN_LOG__FILTER", "error")
            .output()
            .expect("warren runs");
        assert!(out.status.success(), "warren {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let listed = cli(&["saga", "list", "--state", "completed"]);
    assert!(listed.contains(&id) && listed.contains("A-100"), "{listed}");
    let shown: Value = serde_json::from_str(&cli(&["saga", "show", "A-100"])).expect("json");
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["timeline"].as_array().map(Vec::len), Some(9));
    assert!(cli(&["seed", "--sku", "SKU-CLI=7"]).contains("seeded 1 SKU"));
    assert_eq!(stock(&app, "SKU-CLI").await, 7);
    app.cleanup().await;
}

#[tokio::test]
async fn an_order_accepted_while_the_broker_is_down_is_sent_by_the_relay_when_it_is_back() {
    // The orchestrator and participants run on the real broker; a second front is pointed at
    // a port where no broker listens.
    let app = spawn_saga(ALL, |s| s, |a| a).await;
    seed(&app, json!({"SKU-1": 10}), json!({"u-1": 10_000})).await;
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let stop = CancellationToken::new();
    let cut_off = app
        .start_extra_with(
            &[Role::Http],
            |mut s| {
                s.amqp.url = warren::config::Secret::new(format!(
                    "amqp://guest:guest@127.0.0.1:{dead_port}/%2f"
                ));
                s.amqp.connect_timeout_ms = 300;
                s.amqp.declare_topology = false;
                s
            },
            |a| a,
            stop.clone(),
        )
        .await;
    let front = format!("http://{}", cut_off.http_addr.expect("http"));
    let r = app
        .http
        .post(format!("{front}/v1/orders"))
        .json(&order("A-600", "u-1", "SKU-1", 1, 100))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202, "stored with its first command, answered");
    let id = r.json::<Value>().await.expect("json")["saga_id"]
        .as_str()
        .expect("saga_id")
        .to_owned();
    let view = until_status(&app, &id, "completed", Duration::from_secs(30)).await;
    assert_eq!(timeline(&view)[1], t(0, "execute", "sent"));
    assert_eq!(stock(&app, "SKU-1").await, 9);
    // Confirmed commands leave the outbox (deleted in batches, a few milliseconds later).
    let db = app.db().await;
    eventually(Duration::from_secs(5), "the outbox empties", || async {
        (entities::saga_outbox::Entity::find()
            .count(&db)
            .await
            .expect("count")
            == 0)
            .then_some(())
    })
    .await;
    stop.cancel();
    cut_off.wait().await;
    app.cleanup().await;
}

#[tokio::test]
async fn short_stock_fails_step_two_cancels_the_order_and_leaves_the_balance() {
    let app = spawn_saga(ALL, |s| s, |a| a).await;
    seed(&app, json!({"SKU-1": 1}), json!({"u-1": 10_000})).await;
    let id = place(&app, &order("A-200", "u-1", "SKU-1", 2, 100)).await;
    let view = until_status(&app, &id, "compensated", Duration::from_secs(30)).await;

    assert_eq!(
        order_status(&app, "A-200").await.as_deref(),
        Some("cancelled")
    );
    assert_eq!(stock(&app, "SKU-1").await, 1);
    assert_eq!(balance(&app, "u-1").await, 10_000);
    let reason = view["reason"].as_str().expect("reason");
    assert!(
        reason.contains("insufficient stock for SKU SKU-1"),
        "{reason}"
    );
    assert_eq!(
        timeline(&view)[3..],
        [
            t(1, "execute", "sent"),
            t(1, "execute", "failed"),
            t(0, "compensate", "sent"),
            t(0, "compensate", "succeeded"),
        ]
    );
    app.cleanup().await;
}

#[tokio::test]
async fn short_balance_fails_step_three_restores_stock_and_cancels_the_order() {
    let app = spawn_saga(ALL, |s| s, |a| a).await;
    seed(&app, json!({"SKU-1": 10}), json!({"u-1": 100})).await;
    let id = place(&app, &order("A-300", "u-1", "SKU-1", 2, 100)).await;
    let view = until_status(&app, &id, "compensated", Duration::from_secs(30)).await;

    assert_eq!(
        order_status(&app, "A-300").await.as_deref(),
        Some("cancelled")
    );
    assert_eq!(stock(&app, "SKU-1").await, 10);
    assert_eq!(balance(&app, "u-1").await, 100);
    assert!(
        view["reason"]
            .as_str()
            .is_some_and(|r| r.contains("insufficient balance")),
        "{view}"
    );
    let events = timeline(&view);
    let restore = events
        .iter()
        .position(|e| *e == t(1, "compensate", "succeeded"))
        .expect("stock restored");
    let cancel = events
        .iter()
        .position(|e| *e == t(0, "compensate", "succeeded"))
        .expect("order cancelled");
    assert!(restore < cancel, "compensations run in reverse order");
    app.cleanup().await;
}

#[tokio::test]
async fn a_participant_that_never_answers_hits_the_deadline_and_its_late_success_is_undone() {
    // No payments module: balance.deduct waits in its queue past the 2 s deadline.
    let app = spawn_saga(
        &["orders", "inventory", "notifications"],
        |mut s| {
            s.saga.deadline_ms = 2_000;
            s
        },
        |a| a,
    )
    .await;
    seed(&app, json!({"SKU-1": 10}), json!({"u-1": 10_000})).await;
    let id = place(&app, &order("A-400", "u-1", "SKU-1", 1, 700)).await;
    let view = until_status(&app, &id, "compensated", Duration::from_secs(30)).await;
    assert!(timeline(&view).contains(&t(2, "execute", "deadline_passed")));
    assert_eq!(stock(&app, "SKU-1").await, 10);
    assert_eq!(
        order_status(&app, "A-400").await.as_deref(),
        Some("cancelled")
    );
    assert_eq!(balance(&app, "u-1").await, 10_000, "not deducted yet");

    // Payments comes back: it applies the waiting deduct and replies success, late. The
    // orchestrator refunds it.
    let stop = CancellationToken::new();
    let payments = app
        .start_extra(&[Role::Worker], |a| a.modules(["payments"]), stop.clone())
        .await;
    let view = eventually(Duration::from_secs(30), "late success refunded", || async {
        let v = app.get_json(&format!("/v1/sagas/{id}")).await;
        (v["status"] == "compensated" && timeline(&v).contains(&t(2, "compensate", "succeeded")))
            .then_some(v)
    })
    .await;
    let events = timeline(&view);
    let late = events
        .iter()
        .position(|e| *e == t(2, "execute", "succeeded"))
        .expect("late success recorded");
    let deadline = events
        .iter()
        .position(|e| *e == t(2, "execute", "deadline_passed"))
        .expect("deadline recorded");
    assert!(deadline < late);
    assert_eq!(balance(&app, "u-1").await, 10_000, "refunded");
    stop.cancel();
    payments.wait().await;
    app.cleanup().await;
}

/// Starts the inventory participant in a worker process of its own beside `app`, wrapped in
/// [`FaultyRestore`] with the switch `failing`; stopped by `stop`.
pub async fn start_faulty_inventory(
    app: &TestApp,
    failing: Arc<AtomicBool>,
    stop: CancellationToken,
) -> warren::Running {
    let db = app.db().await;
    let publisher = app.running.as_ref().expect("running").publisher.clone();
    app.start_extra(
        &[Role::Worker],
        move |a| {
            a.modules(Vec::<String>::new()).consumer(FaultyRestore {
                inner: Arc::new(ParticipantConsumer::new(Inventory, db, publisher)),
                failing,
            })
        },
        stop,
    )
    .await
}

/// The inventory participant with a switch that makes `inventory.restore` error.
#[derive(Clone)]
pub struct FaultyRestore {
    /// The real participant.
    pub inner: Arc<ParticipantConsumer<Inventory>>,
    /// While true, every `inventory.restore` errors.
    pub failing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Consumer for FaultyRestore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn queue(&self) -> &str {
        self.inner.queue()
    }

    fn use_inbox(&self) -> bool {
        false
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        if job.routing_key == "inventory.restore" && self.failing.load(Ordering::SeqCst) {
            return Err(JobError::Error(
                "injected: inventory database unreachable".into(),
            ));
        }
        self.inner.handle(job).await
    }

    async fn on_failed(&self, job: &Job, error: &str) {
        self.inner.on_failed(job, error).await;
    }
}

#[tokio::test]
async fn a_compensation_that_keeps_failing_needs_intervention_and_a_retry_finishes_it() {
    let failing = Arc::new(AtomicBool::new(true));
    // Inventory runs beside the app, wrapped in the fault switch.
    let app = spawn_saga(&["orders", "payments", "notifications"], |s| s, |a| a).await;
    let stop = CancellationToken::new();
    let inventory = start_faulty_inventory(&app, failing.clone(), stop.clone()).await;
    seed(&app, json!({"SKU-1": 10}), json!({"u-1": 50})).await;
    let id = place(&app, &order("A-500", "u-1", "SKU-1", 4, 100)).await;
    let view = until_status(&app, &id, "needs_intervention", Duration::from_secs(40)).await;
    // The order was still cancelled: the other compensations ran.
    assert_eq!(
        order_status(&app, "A-500").await.as_deref(),
        Some("cancelled")
    );
    assert_eq!(stock(&app, "SKU-1").await, 6, "restore failed");
    assert_eq!(view["steps"][1]["status"], "compensation_failed");

    let list = app.get_json("/v1/interventions").await;
    let ivs = list["interventions"].as_array().expect("list");
    assert_eq!(ivs.len(), 1, "{list}");
    assert_eq!(ivs[0]["saga_id"], id.as_str());
    assert_eq!(ivs[0]["compensation"], "inventory.restore");
    assert_eq!(ivs[0]["status"], "open");
    let reason = ivs[0]["reason"].as_str().expect("reason");
    assert!(reason.contains("injected"), "{reason}");
    let iv = ivs[0]["id"].as_str().expect("id").to_owned();

    // Resolving needs a note.
    let r = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/interventions/{iv}/resolve"),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 422);

    failing.store(false, Ordering::SeqCst);
    let r = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/interventions/{iv}/retry"),
        )
        .json(&json!({"note": "database is back"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let view = until_status(&app, &id, "compensated", Duration::from_secs(30)).await;
    assert_eq!(stock(&app, "SKU-1").await, 10);
    assert_eq!(balance(&app, "u-1").await, 50);
    assert_eq!(view["interventions"][0]["status"], "resolved");
    assert!(timeline(&view).contains(&t(1, "compensate", "retried")));

    // A second retry has nothing to do.
    let r = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/interventions/{iv}/retry"),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 409);
    stop.cancel();
    inventory.wait().await;
    app.cleanup().await;
}

#[tokio::test]
async fn bad_orders_get_a_422_with_the_reason_and_unknown_sagas_a_404() {
    let app = spawn_saga(&[], |s| s, |a| a).await;
    for (body, needle) in [
        (
            json!({"order_no": "X", "user_id": "u", "items": [{"sku": "S", "qty": 1, "price": 5}], "total_amount": 6}),
            "add up to 5",
        ),
        (
            json!({"order_no": "X", "user_id": "u", "items": [], "total_amount": 0}),
            "items must hold",
        ),
        (
            json!({"order_no": "X", "user_id": "u", "items": [{"sku": "S", "qty": 0, "price": 5}], "total_amount": 0}),
            "qty must be at least 1",
        ),
        (json!({"order_no": "X"}), "missing field"),
    ] {
        let r = app
            .request(reqwest::Method::POST, "/v1/orders")
            .json(&body)
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 422, "{body}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["code"], "invalid_order");
        let msg = v["error"]["message"].as_str().expect("message");
        assert!(msg.contains(needle), "{msg} should mention {needle}");
    }
    let r = app
        .request(
            reqwest::Method::GET,
            &format!("/v1/sagas/{}", uuid::Uuid::now_v7()),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 404);
    let r = app
        .request(reqwest::Method::GET, "/v1/sagas?state=lost")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 400);
    app.cleanup().await;
}

#[tokio::test]
async fn a_second_saga_from_a_definitions_file_runs_on_the_same_engine() {
    // A "reserve" saga: stock and balance only, no order row, no notification. Started over
    // the broker with `saga.start`, as any publisher could.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sagas.json");
    std::fs::write(
        &path,
        serde_json::to_string(&json!([{
            "kind": "reserve",
            "steps": [
                {"name": "hold_stock", "command": "inventory.deduct",
                 "compensation": "inventory.restore", "deadline": 10000, "rolls_back": true},
                {"name": "charge", "command": "balance.deduct",
                 "compensation": "balance.refund", "deadline": 10000, "rolls_back": true}
            ]
        }]))
        .expect("json"),
    )
    .expect("write");
    let app = spawn_saga(
        &["inventory", "payments"],
        |mut s| {
            s.saga.definitions_file = Some(path.clone());
            s
        },
        |a| a,
    )
    .await;
    seed(&app, json!({"SKU-9": 5}), json!({"u-9": 1_000, "u-8": 10})).await;
    for (user, key) in [("u-9", "R-1"), ("u-8", "R-2")] {
        let r = app
            .request(reqwest::Method::POST, "/v1/jobs/saga.start")
            .json(&json!({
                "kind": "reserve",
                "business_key": key,
                "payload": order(key, user, "SKU-9", 2, 300),
            }))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 202);
    }
    let list = eventually(
        Duration::from_secs(30),
        "both reserve sagas end",
        || async {
            let v = app.get_json("/v1/sagas?kind=reserve").await;
            let rows = v["sagas"].as_array().cloned().unwrap_or_default();
            (rows.len() == 2
                && rows
                    .iter()
                    .all(|r| r["status"] == "completed" || r["status"] == "compensated"))
            .then_some(rows)
        },
    )
    .await;
    let status = |key: &str| {
        list.iter()
            .find(|r| r["business_key"] == key)
            .map(|r| r["status"].clone())
    };
    assert_eq!(status("R-1"), Some(json!("completed")));
    assert_eq!(status("R-2"), Some(json!("compensated")), "u-8 is short");
    assert_eq!(stock(&app, "SKU-9").await, 3);
    assert_eq!(balance(&app, "u-9").await, 400);
    assert_eq!(balance(&app, "u-8").await, 10);
    app.cleanup().await;
}

/// Every command and reply, delivered three times: a tap queue bound beside the real ones copies
/// each message into its work queue again, once with its own message id (a redelivery, which
/// the inbox drops) and once with a fresh one (a re-send, which only the saga's idempotency
/// keys and state can drop).
#[tokio::test]
async fn duplicate_delivery_of_every_command_and_reply_deducts_nothing_twice() {
    let app = spawn_saga(ALL, |s| s, |a| a).await;
    let stop = CancellationToken::new();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let tap = tokio::spawn(duplicate_everything(
        app.vhost.amqp_url(),
        ready_tx,
        stop.clone(),
    ));
    ready.await.expect("tap bound before the first command");
    seed(
        &app,
        json!({"SKU-1": 5, "SKU-2": 100}),
        json!({"u-1": 100_000, "u-2": 250}),
    )
    .await;
    let orders = [
        order("D-1", "u-1", "SKU-1", 2, 100),
        order("D-2", "u-1", "SKU-1", 2, 100),
        order("D-3", "u-1", "SKU-1", 2, 100), // short stock: 5 - 4 = 1 left
        order("D-4", "u-2", "SKU-2", 1, 200),
        order("D-5", "u-2", "SKU-2", 1, 200), // short balance: 250 - 200 = 50 left
    ];
    let mut ids = Vec::new();
    for o in &orders {
        ids.push(place(&app, o).await);
    }
    let finals = eventually(Duration::from_secs(60), "every saga ends", || async {
        let mut out = Vec::new();
        for id in &ids {
            let v = app.get_json(&format!("/v1/sagas/{id}")).await;
            if !(v["status"] == "completed" || v["status"] == "compensated") {
                return None;
            }
            out.push(v["status"].as_str().unwrap_or_default().to_owned());
        }
        Some(out)
    })
    .await;
    // The sagas run concurrently, so which order of a group meets the shortage first is a
    // race: one of D-1..D-3 is short of stock, one of D-4/D-5 short of balance.
    let compensated = |range: std::ops::Range<usize>| {
        finals[range]
            .iter()
            .filter(|s| s.as_str() == "compensated")
            .count()
    };
    assert_eq!(compensated(0..3), 1, "{finals:?}");
    assert_eq!(compensated(3..5), 1, "{finals:?}");
    // Wait for the duplicates still in flight to be handled (every copy confirmed into its
    // queue has been consumed and acked, none waits in a tier), then stop the tap and check
    // that it really duplicated every command and reply.
    let mut queues = SAGA_QUEUES.to_vec();
    queues.push(("test.tap", 0));
    app.settled(&queues).await;
    let tapped = stop_tap(stop, tap).await;
    let unduplicated: Vec<_> = tapped.seen.difference(&tapped.copied).collect();
    assert!(
        unduplicated.is_empty(),
        "every command and reply was copied into its queue; not: {unduplicated:?}"
    );
    // The commands warren sent are the idempotency keys it recorded (checked below), each
    // with its reply: at least one tapped message per key and reply.
    assert!(tapped.seen.len() >= 2 * 20, "{} tapped", tapped.seen.len());
    assert_eq!(stock(&app, "SKU-1").await, 1);
    assert_eq!(
        stock(&app, "SKU-2").await,
        99,
        "the short-balance order restored its unit"
    );
    assert_eq!(balance(&app, "u-1").await, 100_000 - 400);
    assert_eq!(balance(&app, "u-2").await, 50);
    let db = app.db().await;
    assert_eq!(
        notifications::Entity::find()
            .filter(notifications::Column::EventName.eq("order.created"))
            .count(&db)
            .await
            .expect("count"),
        3,
        "one notification per completed order"
    );
    assert_eq!(
        orders::Entity::find()
            .filter(orders::Column::Status.eq("created"))
            .count(&db)
            .await
            .expect("count"),
        3
    );
    // Each idempotency key recorded once; no key beyond the commands sent.
    let keys = saga_commands::Entity::find()
        .count(&db)
        .await
        .expect("count");
    // Completed: 4 keys each; short stock: create, refused deduct, cancel; short balance:
    // create, deduct, refused charge, restore, cancel.
    assert_eq!(keys, 3 * 4 + 3 + 5, "{keys} keys");
    app.cleanup().await;
}

async fn stop_tap(stop: CancellationToken, tap: tokio::task::JoinHandle<Tapped>) -> Tapped {
    stop.cancel();
    tap.await.expect("tap task")
}

/// What the tap saw and copied, by message id.
#[derive(Debug, Default)]
struct Tapped {
    /// Every original command and reply the tap received.
    seen: BTreeSet<String>,
    /// Those whose two copies (the same message id, and a fresh one) the broker confirmed into
    /// a work queue.
    copied: BTreeSet<String>,
}

/// Binds `test.tap` to every command and reply and copies each tapped message twice (once with
/// its message id, once with a fresh one), with its routing key, through `test.copy`: an exchange bound to the work queues as the topology binds
/// them to `warren.commands` and `warren.replies`, but not to the tap. Copies are published with
/// `mandatory` and publisher confirms, and a copy counts only when the broker confirmed it and
/// did not return it, so it really sits in a work queue. Copies carry `x-test-copy`.
async fn duplicate_everything(
    amqp: String,
    ready: tokio::sync::oneshot::Sender<()>,
    stop: CancellationToken,
) -> Tapped {
    use futures_util::StreamExt;
    use lapin::{
        Confirmation,
        options::{
            BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
            QueueDeclareOptions,
        },
        types::{AMQPValue, FieldTable},
    };
    let conn = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .expect("tap connects");
    let ch = conn.create_channel().await.expect("channel");
    let out = conn.create_channel().await.expect("channel");
    out.confirm_select(Default::default())
        .await
        .expect("confirms");
    ch.queue_declare(
        "test.tap".into(),
        // Durable: RabbitMQ 4.0 deprecates transient non-exclusive queues.
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("tap queue");
    for (ex, key) in [("warren.commands", "#"), ("warren.replies", "saga")] {
        ch.queue_bind(
            "test.tap".into(),
            ex.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind tap");
    }
    ch.exchange_declare(
        "test.copy".into(),
        lapin::ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .expect("copy exchange");
    let topology = warren::broker::topology::Topology::builtin().expect("topology");
    for b in topology
        .bindings
        .iter()
        .filter(|b| b.source == "warren.commands" || b.source == "warren.replies")
    {
        ch.queue_bind(
            b.destination.as_str().into(),
            "test.copy".into(),
            b.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind copy exchange");
    }
    let mut consumer = ch
        .basic_consume(
            "test.tap".into(),
            "tap".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume tap");
    let _ = ready.send(());
    let mut tapped = Tapped::default();
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            n = consumer.next() => n,
        };
        let Some(Ok(d)) = next else { break };
        let is_copy = d
            .properties
            .headers()
            .as_ref()
            .is_some_and(|h| h.inner().contains_key("x-test-copy"));
        if !is_copy {
            let id = crate::helpers::message_id(&d.properties);
            tapped.seen.insert(id.clone());
            let mut headers = d.properties.headers().clone().unwrap_or_default();
            headers.insert("x-test-copy".into(), AMQPValue::Boolean(true));
            let same = d.properties.clone().with_headers(headers);
            // The second copy under a message id of its own: the consumers' inbox cannot know
            // it, so only the saga's idempotency key (participants) and its state (the
            // orchestrator) stand between it and a second effect.
            let fresh = same
                .clone()
                .with_message_id(uuid::Uuid::now_v7().to_string().into());
            for props in [same, fresh] {
                let confirm = out
                    .basic_publish(
                        "test.copy".into(),
                        d.routing_key.clone(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &d.data,
                        props,
                    )
                    .await
                    .expect("copy published")
                    .await
                    .expect("copy confirmed");
                assert!(
                    matches!(confirm, Confirmation::Ack(None)),
                    "a copy of {id} ({}) reached no queue: {confirm:?}",
                    d.routing_key
                );
            }
            tapped.copied.insert(id);
        }
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let _ = conn.close(200, "".into()).await;
    tapped
}
