//! The order saga under load and faults: 500 concurrent orders against limited stock and
//! balances, participants failing a share of commands, a participant process SIGKILLed
//! mid-run and every broker connection cut; afterwards every saga has ended and stock and
//! balances add up exactly.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use entities::{accounts, inventory, orders, sagas};
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use warren::{
    Role,
    jobs::{Consumer, Job, JobError},
    saga::participants::{Inventory, ParticipantConsumer, Payments},
};

use crate::{
    helpers::{eventually, management_url},
    reliability::{KillOnDrop, close_connections, connection_names},
    saga::{seed, spawn_saga},
};

/// Fails the first attempt of one command in `every` (chosen by message id), as a
/// participant whose database hiccups would.
struct Flaky {
    inner: Arc<dyn Consumer>,
    every: u64,
    injected: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Consumer for Flaky {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn queue(&self) -> &str {
        self.inner.queue()
    }

    fn use_inbox(&self) -> bool {
        self.inner.use_inbox()
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        job.message_id.hash(&mut h);
        if job.attempt == 1 && h.finish().is_multiple_of(self.every) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(JobError::Error("injected fault".into()));
        }
        self.inner.handle(job).await
    }

    async fn on_failed(&self, job: &Job, error: &str) {
        self.inner.on_failed(job, error).await;
    }
}

const ORDERS: usize = 500;
const SKUS: usize = 5;
const USERS: usize = 40;
const STOCK: i64 = 150;
const BALANCE: i64 = 2_000;

#[tokio::test]
async fn five_hundred_concurrent_orders_with_faults_keep_stock_and_balances_exact() {
    let injected = Arc::new(AtomicU64::new(0));
    let app = spawn_saga(
        &["orders", "notifications"],
        |mut s| {
            s.saga.deadline_ms = 60_000;
            s.jobs.concurrency = 16;
            s.jobs.prefetch = 32;
            s.database.max_connections = 10;
            s
        },
        |a| a,
    )
    .await;
    // Inventory and payments in process, flaky, sharing their queues with a separate
    // process that is killed mid-run.
    let db = app.db().await;
    let publisher = app.running.as_ref().expect("running").publisher.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let flaky = {
        let injected = injected.clone();
        move |inner: Arc<dyn Consumer>| Flaky {
            inner,
            every: 10,
            injected: injected.clone(),
        }
    };
    let participants = app
        .start_extra(
            &[Role::Worker],
            move |a| {
                a.modules(Vec::<String>::new())
                    .consumer(flaky(Arc::new(ParticipantConsumer::new(
                        Inventory,
                        db.clone(),
                        publisher.clone(),
                    ))))
                    .consumer(flaky(Arc::new(ParticipantConsumer::new(
                        Payments, db, publisher,
                    ))))
            },
            stop.clone(),
        )
        .await;
    let mut victim = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["worker", "--modules", "inventory,payments"])
            .env("WARREN_AMQP__URL", app.vhost.amqp_url())
            .env("WARREN_AMQP__MANAGEMENT_URL", management_url())
            .env("WARREN_DATABASE__URL", &app.db.url)
            .env("WARREN_LOG__FILTER", "error")
            .env("WARREN_JOBS__FAILURE_DELAY_MS", "1000")
            .env("WARREN_JOBS__ERROR_DELAY_MS", "2000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("participant process starts"),
    );

    let skus: Vec<String> = (0..SKUS).map(|i| format!("L-SKU-{i}")).collect();
    let users: Vec<String> = (0..USERS).map(|i| format!("L-U-{i}")).collect();
    seed(
        &app,
        Value::Object(skus.iter().map(|s| (s.clone(), json!(STOCK))).collect()),
        Value::Object(users.iter().map(|u| (u.clone(), json!(BALANCE))).collect()),
    )
    .await;

    // 500 orders at once: 1-4 units of 1-2 SKUs at 50-300 each. Demand is well above the
    // stock (5 x 150 units) and the balances (40 x 2,000), so many orders are refused.
    let bodies: Vec<Value> = (0..ORDERS)
        .map(|i| {
            let a = &skus[i % SKUS];
            let b = &skus[(i * 7 + 3) % SKUS];
            let mut items = vec![
                json!({"sku": a, "qty": 1 + (i % 4) as i64, "price": 50 + (i % 6) as i64 * 50}),
            ];
            if i % 3 == 0 && a != b {
                items.push(json!({"sku": b, "qty": 1, "price": 100}));
            }
            let total: i64 = items
                .iter()
                .map(|it| it["qty"].as_i64().unwrap_or(0) * it["price"].as_i64().unwrap_or(0))
                .sum();
            json!({
                "order_no": format!("L-{i}"),
                "user_id": users[i % USERS],
                "items": items,
                "total_amount": total,
            })
        })
        .collect();
    let mut posts = tokio::task::JoinSet::new();
    for body in bodies.clone() {
        let http = app.http.clone();
        let url = format!("{}/v1/orders", app.base);
        posts.spawn(async move {
            let r = http.post(url).json(&body).send().await.expect("sent");
            r.status().as_u16()
        });
    }

    // Faults while the orders run: kill the participant process, then cut every
    // connection of the vhost (the in-process roles reconnect).
    eventually(
        Duration::from_secs(60),
        "a share of sagas finished",
        || async {
            // A poll during the burst may be answered 503 (database busy): poll again.
            let r = app
                .request(reqwest::Method::GET, "/v1/sagas?state=completed&limit=500")
                .send()
                .await
                .expect("sent");
            if r.status() != 200 {
                return None;
            }
            let v: serde_json::Value = r.json().await.expect("json");
            let done = v["sagas"].as_array().map_or(0, Vec::len);
            (done >= 20).then_some(())
        },
    )
    .await;
    victim.0.kill().expect("SIGKILL the participant process");
    let _ = victim.0.wait();
    let names = connection_names(&app).await;
    close_connections(&app, &names).await;

    let mut accepted = 0;
    while let Some(status) = posts.join_next().await {
        let status = status.expect("post task");
        assert_eq!(status, 202, "every order accepted");
        accepted += 1;
    }
    assert_eq!(accepted, ORDERS);

    // Every saga ends, and stays ended once the queues and the outbox are empty.
    let db = app.db().await;
    let finals = eventually(Duration::from_secs(240), "every saga ends", || async {
        let rows = sagas::Entity::find().all(&db).await.ok()?;
        let open = rows
            .iter()
            .filter(|s| {
                !matches!(
                    s.status.as_str(),
                    "completed" | "compensated" | "needs_intervention"
                )
            })
            .count();
        let outbox = entities::saga_outbox::Entity::find()
            .all(&db)
            .await
            .ok()?
            .len();
        let mut queued = 0;
        for q in [
            "warren.orders",
            "warren.inventory",
            "warren.payments",
            "warren.notifications",
            "warren.saga",
        ] {
            queued += app.depth(q).await;
        }
        (rows.len() == ORDERS && open == 0 && outbox == 0 && queued == 0).then_some(rows)
    })
    .await;
    let by_status = finals
        .iter()
        .fold(HashMap::<&str, usize>::new(), |mut m, s| {
            *m.entry(s.status.as_str()).or_default() += 1;
            m
        });
    eprintln!(
        "saga load: {by_status:?}; injected faults: {}",
        injected.load(Ordering::Relaxed)
    );
    let interventions = app.get_json("/v1/interventions").await;
    assert_eq!(
        by_status.get("needs_intervention").copied().unwrap_or(0),
        interventions["interventions"]
            .as_array()
            .map_or(0, Vec::len),
        "each saga needing intervention is listed"
    );
    assert_eq!(
        by_status.get("needs_intervention"),
        None,
        "transient faults never leave a compensation failed: {by_status:?}"
    );
    let completed = by_status.get("completed").copied().unwrap_or(0);
    assert!(completed >= 50, "{by_status:?}");
    assert!(
        by_status.get("compensated").copied().unwrap_or(0) >= 50,
        "{by_status:?}"
    );
    assert!(injected.load(Ordering::Relaxed) > 0, "faults were injected");

    // Invariants, exactly.
    let orders = orders::Entity::find().all(&db).await.expect("orders");
    let completed_ids: std::collections::HashSet<uuid::Uuid> = finals
        .iter()
        .filter(|s| s.status == "completed")
        .map(|s| s.id)
        .collect();
    let mut held_stock: HashMap<String, i64> = HashMap::new();
    let mut spent: HashMap<String, i64> = HashMap::new();
    for o in &orders {
        let created = o.status == "created";
        assert_eq!(
            created,
            completed_ids.contains(&o.saga_id),
            "order {} is {} while its saga is {}",
            o.order_no,
            o.status,
            if completed_ids.contains(&o.saga_id) {
                "completed"
            } else {
                "not completed"
            }
        );
        if created {
            for it in o.items.as_array().expect("items") {
                *held_stock
                    .entry(it["sku"].as_str().expect("sku").to_owned())
                    .or_default() += it["qty"].as_i64().expect("qty");
            }
            *spent.entry(o.user_id.clone()).or_default() += o.total_amount;
        }
    }
    assert_eq!(
        orders.iter().filter(|o| o.status == "created").count(),
        completed
    );
    for row in inventory::Entity::find().all(&db).await.expect("inventory") {
        assert_eq!(
            STOCK,
            row.stock + held_stock.get(&row.sku).copied().unwrap_or(0),
            "stock of {}",
            row.sku
        );
        assert!(row.stock >= 0);
    }
    for row in accounts::Entity::find().all(&db).await.expect("accounts") {
        assert_eq!(
            BALANCE,
            row.balance + spent.get(&row.user_id).copied().unwrap_or(0),
            "balance of {}",
            row.user_id
        );
        assert!(row.balance >= 0);
    }
    stop.cancel();
    participants.wait().await;
    app.cleanup().await;
}
