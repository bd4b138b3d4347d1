//! The participant protocol under the races a broker makes: two deliveries of one command in
//! flight at once (a redelivery after a lost connection while the first still runs), and an
//! inbox that cannot be read. Each test drives [`ParticipantConsumer::handle_command`]
//! directly, so the interleaving is forced by a barrier instead of hoped for.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use entities::saga_commands;
use sea_orm::{
    ColumnTrait, ConnectOptions, Database, DatabaseTransaction, EntityTrait, PaginatorTrait,
    QueryFilter,
};
use serde_json::{Value, json};
use tokio::sync::Barrier;
use uuid::Uuid;
use warren::{
    broker::envelope::Event,
    jobs::{Job, JobError},
    modules::inventory::Inventory,
    saga::{
        Action, CommandData,
        participants::{Outcome, Participant, ParticipantConsumer},
    },
};

use crate::{
    helpers::{TestApp, eventually},
    saga::{order, seed, spawn_saga, stock},
};

/// The queue that sees every reply to the orchestrator.
const REPLIES_TAP: &str = "test.replies";

/// The inventory participant, held at a barrier before it applies: every delivery has read
/// the inbox (and found nothing) before any of them can record.
struct Gated {
    barrier: Arc<Barrier>,
    applied: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Participant for Gated {
    fn name(&self) -> &str {
        Inventory.name()
    }

    fn queue(&self) -> &str {
        Inventory.queue()
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        command: &str,
        cmd: &CommandData,
    ) -> Result<Outcome, JobError> {
        self.barrier.wait().await;
        self.applied.fetch_add(1, Ordering::SeqCst);
        Inventory.apply(txn, command, cmd).await
    }
}

/// `inventory.deduct` of `payload` as step 1 of a fresh saga, as the runner hands it over.
fn deduct(payload: Value) -> (CommandData, Job) {
    let saga_id = Uuid::now_v7();
    let cmd = CommandData {
        saga_id,
        kind: "order".into(),
        step: 1,
        step_name: "deduct_inventory".into(),
        action: Action::Execute,
        idempotency_key: format!("{saga_id}:1:execute"),
        payload,
        results: Default::default(),
    };
    let event = Event::new(
        "inventory.deduct",
        Some(saga_id.to_string()),
        serde_json::to_value(&cmd).expect("command encodes"),
    );
    let job = Job {
        message_id: event.event_id,
        event,
        attempt: 1,
        max_attempts: 3,
        queue: "warren.inventory".into(),
        exchange: "warren.commands".into(),
        routing_key: "inventory.deduct".into(),
        correlation_id: Some(saga_id.to_string()),
        traceparent: None,
        request_id: None,
    };
    (cmd, job)
}

/// Every reply to `saga_id` in the replies tap once `n` have arrived.
async fn replies(app: &TestApp, saga_id: Uuid, n: usize) -> Vec<Value> {
    let got = std::sync::Mutex::new(Vec::new());
    eventually(Duration::from_secs(10), "the replies", || async {
        for m in app.drain(REPLIES_TAP).await {
            let body: Value = serde_json::from_slice(&m.data).expect("a JSON reply");
            if body["data"]["saga_id"] == saga_id.to_string() {
                got.lock().expect("not poisoned").push(body["data"].clone());
            }
        }
        (got.lock().expect("not poisoned").len() >= n).then_some(())
    })
    .await;
    got.into_inner().expect("not poisoned")
}

/// Two deliveries of `payload`'s deduct, released together at the barrier: both must finish
/// (no retry spent on the loser), the stock moves once, one answer is recorded and both
/// replies carry it. Returns that answer.
async fn race(app: &TestApp, payload: Value) -> Value {
    let publisher = app.running.as_ref().expect("running").publisher.clone();
    let applied = Arc::new(AtomicUsize::new(0));
    let consumer = ParticipantConsumer::new(
        Gated {
            barrier: Arc::new(Barrier::new(2)),
            applied: applied.clone(),
        },
        app.db().await,
        publisher,
    );
    app.tap(REPLIES_TAP, "warren.replies", "saga").await;
    let (cmd, job) = deduct(payload);
    let redelivered = job.clone();
    let (first, second) = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join(
            consumer.handle_command(&job),
            consumer.handle_command(&redelivered),
        ),
    )
    .await
    .expect("both deliveries finish");
    assert!(first.is_ok(), "first delivery: {first:?}");
    assert!(second.is_ok(), "second delivery: {second:?}");
    assert_eq!(applied.load(Ordering::SeqCst), 2, "both reached apply");

    let rows = saga_commands::Entity::find()
        .filter(saga_commands::Column::IdempotencyKey.eq(&cmd.idempotency_key))
        .count(&app.db().await)
        .await
        .expect("count");
    assert_eq!(rows, 1, "one answer recorded");

    let got = replies(app, cmd.saga_id, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["ok"], got[1]["ok"], "{got:?}");
    assert_eq!(got[0]["reason"], got[1]["reason"], "{got:?}");
    got[0].clone()
}

#[tokio::test]
async fn two_deliveries_of_one_command_at_once_apply_it_once_and_both_reply_the_first_answer() {
    let app = spawn_saga(&[], |s| s, |a| a).await;
    seed(&app, json!({"SKU-1": 10}), json!({})).await;
    let answer = race(&app, order("A-1", "u-1", "SKU-1", 3, 100)).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(stock(&app, "SKU-1").await, 7, "deducted once");
    app.cleanup().await;
}

#[tokio::test]
async fn two_deliveries_of_one_refused_command_at_once_both_reply_the_recorded_refusal() {
    let app = spawn_saga(&[], |s| s, |a| a).await;
    seed(&app, json!({"SKU-1": 2}), json!({})).await;
    let answer = race(&app, order("A-2", "u-1", "SKU-1", 3, 100)).await;
    assert_eq!(answer["ok"], false, "{answer}");
    let reason = answer["reason"].as_str().expect("a reason");
    assert!(reason.contains("insufficient stock"), "{reason}");
    assert_eq!(stock(&app, "SKU-1").await, 2, "nothing deducted");
    app.cleanup().await;
}

#[tokio::test]
async fn a_command_whose_inbox_cannot_be_read_goes_back_with_its_attempt_kept() {
    let app = spawn_saga(&[], |s| s, |a| a).await;
    let publisher = app.running.as_ref().expect("running").publisher.clone();
    // A database no one listens for: every query fails to get a connection.
    let mut options = ConnectOptions::new("postgres://warren:warren@127.0.0.1:9/warren");
    options
        .connect_lazy(true)
        .acquire_timeout(Duration::from_secs(1));
    let away = Database::connect(options).await.expect("a lazy pool");
    let consumer = ParticipantConsumer::new(Inventory, away, publisher);
    let (_, job) = deduct(order("A-3", "u-1", "SKU-1", 1, 100));
    match consumer.handle_command(&job).await {
        Err(JobError::Deferred(reason)) => {
            assert!(reason.contains("inbox is unavailable"), "{reason}")
        }
        other => panic!("expected a deferral, got {other:?}"),
    }
    app.cleanup().await;
}
