//! The cron scheduler: with several instances each tick fires exactly once, and a killed
//! instance hands over without a gap.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use warren::{
    Role,
    config::{MissedTicks, ScheduleSettings},
};

use crate::{
    helpers::{TestApp, eventually, management_url, spawn_app_with},
    reliability::KillOnDrop,
    scale::Relay,
};

fn every_second() -> ScheduleSettings {
    ScheduleSettings {
        name: "heartbeat".to_owned(),
        cron: "* * * * * *".to_owned(),
        event: Some("test.tick".to_owned()),
        job: None,
        data: serde_json::json!({"from": "scheduler"}),
    }
}

/// The ticks that reached `warren.audit` (nothing consumes it here): per tick time, how many
/// distinct message ids. A tick's message is published twice only when an instance dies
/// between the broker's confirm and its commit; both copies carry the tick's message id, so
/// the effect (what an inbox-using consumer applies) is once.
async fn ticks(app: &TestApp, distinct: bool) -> BTreeMap<DateTime<Utc>, usize> {
    let mut ids: BTreeMap<DateTime<Utc>, Vec<String>> = BTreeMap::new();
    for m in app.drain("warren.audit").await {
        let v: Value = serde_json::from_slice(&m.delivery.data).expect("json");
        if v["event_name"] == "test.tick" {
            let at: DateTime<Utc> = v["occurred_on"]
                .as_str()
                .expect("occurred_on")
                .parse()
                .expect("time");
            let id = m
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|i| i.as_str().to_owned())
                .expect("message id");
            ids.entry(at).or_default().push(id);
        }
    }
    ids.into_iter()
        .map(|(at, mut v)| {
            if distinct {
                v.sort();
                v.dedup();
            }
            (at, v.len())
        })
        .collect()
}

fn assert_each_second_once(ticks: &BTreeMap<DateTime<Utc>, usize>, at_least: usize) {
    assert!(ticks.len() >= at_least, "{} ticks: {ticks:?}", ticks.len());
    for (at, n) in ticks {
        assert_eq!(*n, 1, "tick {at} fired {n} times");
    }
    let times: Vec<&DateTime<Utc>> = ticks.keys().collect();
    for pair in times.windows(2) {
        assert_eq!(
            (*pair[1] - *pair[0]).num_milliseconds(),
            1000,
            "a tick is missing between {} and {}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test]
async fn three_instances_fire_every_tick_exactly_once() {
    let app = spawn_app_with(|s| s, |a| a).await;
    let stop = CancellationToken::new();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(
            app.start_extra_with(
                &[Role::Scheduler],
                |mut s| {
                    s.scheduler.schedules = vec![every_second()];
                    s.scheduler.missed = MissedTicks::Skip;
                    s
                },
                |a| a,
                stop.clone(),
            )
            .await,
        );
    }
    let db = app.db().await;
    eventually(Duration::from_secs(20), "six ticks fired", || async {
        use sea_orm::{EntityTrait, PaginatorTrait};
        let n = entities::schedule_ticks::Entity::find()
            .count(&db)
            .await
            .ok()?;
        (n >= 6).then_some(())
    })
    .await;
    stop.cancel();
    for i in instances {
        i.wait().await;
    }
    // No instance died: every tick was published exactly once, not merely deduplicable.
    let seen = ticks(&app, false).await;
    assert_each_second_once(&seen, 6);
    {
        use sea_orm::{EntityTrait, PaginatorTrait};
        let rows = entities::schedule_ticks::Entity::find()
            .count(&db)
            .await
            .expect("count");
        assert_eq!(rows as usize, seen.len(), "one claim row per fired tick");
    }
    app.cleanup().await;
}

/// Whether the instance whose database sessions are named `holder` holds an uncommitted claim
/// of a tick that the instance named `waiter` is waiting for: `waiter`'s insert into
/// `schedule_ticks` waits on a lock of `holder`'s open transaction, whose last statement was
/// its own insert there.
async fn holds_claim(db: &sea_orm::DatabaseConnection, holder: &str, waiter: &str) -> bool {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let sql = format!(
        "SELECT COUNT(*) FROM pg_stat_activity w JOIN pg_stat_activity h ON h.pid = ANY(pg_blocking_pids(w.pid)) \
         WHERE w.datname = current_database() AND w.application_name = '{waiter}' AND w.wait_event_type = 'Lock' \
         AND w.query ILIKE 'INSERT INTO \"schedule_ticks\"%' \
         AND h.application_name = '{holder}' AND h.state = 'idle in transaction' \
         AND h.query ILIKE 'INSERT INTO \"schedule_ticks\"%'"
    );
    let Ok(Some(row)) = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
    else {
        return false;
    };
    row.try_get_by_index::<i64>(0).is_ok_and(|n| n > 0)
}

/// Every committed tick: its time and the instance that fired it (`host:pid`).
async fn fired(db: &sea_orm::DatabaseConnection) -> BTreeMap<DateTime<Utc>, String> {
    use sea_orm::EntityTrait;
    entities::schedule_ticks::Entity::find()
        .all(db)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.tick_at, t.fired_by))
        .collect()
}

#[tokio::test]
async fn a_killed_instance_hands_over_without_a_gap_or_a_double() {
    let app = spawn_app_with(|s| s, |a| a).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("warren.toml");
    std::fs::write(
        &config,
        "[scheduler]\nmissed = \"skip\"\n\n[[scheduler.schedules]]\nname = \"heartbeat\"\ncron = \"* * * * * *\"\nevent = \"test.tick\"\n",
    )
    .expect("config");
    // The first instance reaches the broker through a relay the test can stall, so that a
    // tick it claims stays claimed (its publish waits for a confirm that does not come) until
    // it is killed. Each instance names its database sessions.
    let broker = url::Url::parse(&crate::helpers::amqp_base()).expect("AMQP URL");
    let upstream = format!(
        "{}:{}",
        broker.host_str().expect("AMQP host"),
        broker.port().unwrap_or(5672)
    );
    let relay = Relay::start(upstream);
    let mut relayed = url::Url::parse(&app.vhost.amqp_url()).expect("vhost URL");
    relayed.set_port(Some(relay.port)).expect("port");
    let instance = |name: &str, amqp: &str| {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_warren"))
                .arg("--config")
                .arg(&config)
                .arg("scheduler")
                .env("WARREN_AMQP__URL", amqp)
                .env("WARREN_AMQP__MANAGEMENT_URL", management_url())
                .env(
                    "WARREN_DATABASE__URL",
                    format!("{}?application_name={name}", app.db.url),
                )
                .env("WARREN_METRICS__ADDR", "127.0.0.1:0")
                .env("WARREN_LOG__FILTER", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("scheduler starts"),
        )
    };
    let mut first = instance("warren-first", relayed.as_str());
    let mut second = instance("warren-second", &app.vhost.amqp_url());
    let second_id = format!(":{}", second.0.id());
    let db = app.db().await;
    eventually(Duration::from_secs(30), "three ticks fired", || async {
        (fired(&db).await.len() >= 3).then_some(())
    })
    .await;
    // Stall the first instance's broker connection, wait until it holds the claim of a tick
    // (the second waits on it), let it hold the claim past the next tick, and kill it.
    relay.stall();
    let before = eventually(
        Duration::from_secs(30),
        "the first instance holding a tick's claim the second waits for",
        || async {
            let before = fired(&db).await;
            holds_claim(&db, "warren-first", "warren-second")
                .await
                .then_some(before)
        },
    )
    .await;
    // Held for longer than a tick (the second keeps waiting), then killed.
    tokio::time::sleep(Duration::from_millis(1_500)).await; // the fault's length
    first.0.kill().expect("SIGKILL");
    let _ = first.0.wait();
    relay.close();
    // The held tick, the one after the last committed one, was not committed while held; the
    // second fires it once the killed instance's transaction is rolled back, then goes on.
    let held =
        *before.keys().next_back().expect("ticks before the kill") + chrono::Duration::seconds(1);
    let after = eventually(
        Duration::from_secs(20),
        "the held tick and four more fired after the kill",
        || async {
            let after = fired(&db).await;
            (after.range(held..).count() >= 5).then_some(after)
        },
    )
    .await;
    assert!(
        after.get(&held).is_some_and(|by| by.ends_with(&second_id)),
        "the tick {held} the killed instance held was fired by {:?}, not the second instance",
        after.get(&held)
    );
    eprintln!(
        "scheduler: the first instance was killed holding the claim of {held}; fired by {:?} after the rollback",
        after.get(&held)
    );
    second.0.kill().expect("stop the second");
    let _ = second.0.wait();
    let seen = ticks(&app, true).await;
    assert_each_second_once(&seen, 7);
    app.cleanup().await;
}
