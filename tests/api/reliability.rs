//! Faults: a dropped broker connection, a worker killed mid-handler, and the production
//! retry timings.

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, Database, EntityTrait, TransactionTrait};
use serde_json::json;
use warren::{
    broker::topology::encode,
    jobs::{Consumer, Job, JobError},
};

use crate::helpers::{TestApp, eventually, management_url, spawn_worker_with};

/// Counts successful handler runs per message id; sleeps a little per message so a batch is
/// still in flight when the fault hits.
#[derive(Clone, Default)]
struct Counting {
    runs: Arc<Mutex<HashMap<uuid::Uuid, u32>>>,
}

#[async_trait::async_trait]
impl Consumer for Counting {
    fn name(&self) -> &str {
        "notifications"
    }

    fn queue(&self) -> &str {
        "warren.notifications"
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        *self
            .runs
            .lock()
            .expect("lock")
            .entry(job.message_id)
            .or_default() += 1;
        Ok(())
    }
}

/// A child process killed when the test ends, pass or fail.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn connection_names(app: &TestApp) -> Vec<String> {
    app.vhost
        .api
        .get(&format!("vhosts/{}/connections", encode(&app.vhost.name)))
        .await
        .expect("list connections")
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

pub(crate) async fn close_connections(app: &TestApp, names: &[String]) {
    for name in names {
        let path = format!(
            "connections/{}",
            url::form_urlencoded::byte_serialize(name.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        );
        // A connection may close by itself between the listing and the delete (a killed
        // process): that one is already gone, which is what the caller wants.
        if let Err(e) = app.vhost.api.delete(&path).await {
            let gone = !connection_names(app).await.contains(name);
            assert!(gone, "cannot close connection {name}: {e}");
        }
    }
}

#[tokio::test]
async fn consumers_resume_after_the_broker_drops_the_connection_and_handle_each_message_once() {
    let c = Counting::default();
    let app = spawn_worker_with(
        |mut s| {
            s.jobs.concurrency = 2;
            s.jobs.prefetch = 4;
            s
        },
        {
            let c = c.clone();
            move |a| a.consumer(c)
        },
    )
    .await;
    // The management API lists connections a moment after they open.
    let names = eventually(Duration::from_secs(15), "connections listed", || async {
        let n = connection_names(&app).await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..60 {
        let r = app.post_event("order.created", &json!({"i": i})).await;
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<serde_json::Value>().await.expect("json")["event_id"]
                .as_str()
                .expect("id")
                .parse::<uuid::Uuid>()
                .expect("uuid"),
        );
    }
    // Wait until some, not all, are handled, then cut every connection of the vhost.
    eventually(Duration::from_secs(10), "some handled", || async {
        (c.runs.lock().expect("lock").len() >= 5).then_some(())
    })
    .await;
    close_connections(&app, &names).await;
    assert!(
        c.runs.lock().expect("lock").len() < 60,
        "the fault hit mid-stream"
    );
    eventually(Duration::from_secs(30), "all 60 handled", || async {
        (c.runs.lock().expect("lock").len() == 60).then_some(())
    })
    .await;
    // Nothing left anywhere (unacked redeliveries and retry tiers included), then the ids:
    // exactly the accepted ones, each handled once.
    app.settled(&[("warren.notifications", 0)]).await;
    let runs = c.runs.lock().expect("lock").clone();
    let handled: std::collections::BTreeSet<_> = runs.keys().copied().collect();
    let accepted: std::collections::BTreeSet<_> = ids.iter().copied().collect();
    assert_eq!(handled, accepted, "the handled ids are the accepted ones");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    // The HTTP front publishes again too (its channels were cut as well).
    assert_eq!(
        app.post_event("order.created", &json!({"after": true}))
            .await
            .status(),
        202
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_worker_killed_mid_handler_loses_nothing_and_the_effect_happens_once() {
    let app = spawn_worker_with(|s| s, |a| a).await; // HTTP only in-process; no modules
    let db = Database::connect(&app.db.url).await.expect("db");
    // Hold a lock on the notifications table so the worker's handler blocks inside its
    // transaction: that is "mid-handler".
    let lock = db.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let worker = |name: &str| {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(["worker", "--modules", "notifications"])
                .env("WARREN_AMQP__URL", app.vhost.amqp_url())
                .env("WARREN_AMQP__MANAGEMENT_URL", management_url())
                .env("WARREN_DATABASE__URL", &app.db.url)
                .env("WARREN_LOG__FILTER", "warn")
                .env("WARREN_JOBS__FAILURE_DELAY_MS", "1000")
                .env("WARREN_JOBS__ERROR_DELAY_MS", "2000")
                .env("WARREN_TEST_NAME", name)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("worker starts"),
        )
    };
    let mut first = worker("first");
    let r = app
        .post_event("order.created", &json!({"user_id": "u-1"}))
        .await;
    assert_eq!(r.status(), 202);
    let event_id: uuid::Uuid = r.json::<serde_json::Value>().await.expect("json")["event_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    // Wait until the worker's INSERT waits on our lock.
    eventually(Duration::from_secs(20), "handler blocked on the lock", || async {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT count(*)::bigint AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            ))
            .await
            .ok()??;
        let n: i64 = row.try_get("", "n").ok()?;
        (n >= 1).then_some(())
    })
    .await;
    first.0.kill().expect("SIGKILL");
    let _ = first.0.wait();
    lock.rollback().await.expect("release");

    let second = worker("second");
    let started = Instant::now();
    let rows = eventually(Duration::from_secs(30), "notification stored", || async {
        let rows = entities::notifications::Entity::find()
            .all(&db)
            .await
            .ok()?;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    // Give a duplicate every chance to appear before counting: the redelivery of the killed
    // worker's message, and anything in a retry tier, has been handled when this holds.
    app.settled(&[("warren.notifications", 0)]).await;
    let rows_after = entities::notifications::Entity::find()
        .all(&db)
        .await
        .expect("query");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows_after.len(), 1, "exactly one notification");
    assert_eq!(rows_after[0].event_id, event_id, "the accepted event's");
    assert_eq!(rows_after[0].user_id.as_deref(), Some("u-1"));
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(second);
    app.cleanup().await;
}

/// Slow by design (about three minutes): the production delays, 60 s after a reported failure
/// and 120 s after an error.
#[tokio::test]
async fn production_tiers_wait_60_seconds_after_a_failure_and_120_after_an_error() {
    #[derive(Clone, Default)]
    struct FailThenError {
        calls: Arc<Mutex<Vec<Instant>>>,
    }
    #[async_trait::async_trait]
    impl Consumer for FailThenError {
        fn name(&self) -> &str {
            "notifications"
        }
        fn queue(&self) -> &str {
            "warren.notifications"
        }
        async fn handle(&self, _: &Job) -> Result<(), JobError> {
            let n = {
                let mut c = self.calls.lock().expect("lock");
                c.push(Instant::now());
                c.len()
            };
            match n {
                1 => Err(JobError::Failed("not yet".into())),
                2 => Err(JobError::Error("boom".into())),
                _ => Ok(()),
            }
        }
    }
    let c = FailThenError::default();
    let app = spawn_worker_with(
        |mut s| {
            s.jobs.failure_delay_ms = 60_000;
            s.jobs.error_delay_ms = 120_000;
            s
        },
        {
            let c = c.clone();
            move |a| a.consumer(c)
        },
    )
    .await;
    assert_eq!(
        app.post_event("order.created", &json!({})).await.status(),
        202
    );
    let calls = eventually(Duration::from_secs(200), "three attempts", || async {
        let calls = c.calls.lock().expect("lock").clone();
        (calls.len() >= 3).then_some(calls)
    })
    .await;
    let first = calls[1] - calls[0];
    let second = calls[2] - calls[1];
    assert!(
        first >= Duration::from_secs(60) && first < Duration::from_secs(75),
        "failure tier: {first:?}"
    );
    assert!(
        second >= Duration::from_secs(120) && second < Duration::from_secs(135),
        "error tier: {second:?}"
    );
    app.cleanup().await;
}
