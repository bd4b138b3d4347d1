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
    let instance = || {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_warren"))
                .arg("--config")
                .arg(&config)
                .arg("scheduler")
                .env("WARREN_AMQP__URL", app.vhost.amqp_url())
                .env("WARREN_AMQP__MANAGEMENT_URL", management_url())
                .env("WARREN_DATABASE__URL", &app.db.url)
                .env("WARREN_METRICS__ADDR", "127.0.0.1:0")
                .env("WARREN_LOG__FILTER", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("scheduler starts"),
        )
    };
    let mut first = instance();
    let mut second = instance();
    let db = app.db().await;
    let count = || async {
        use sea_orm::{EntityTrait, PaginatorTrait};
        entities::schedule_ticks::Entity::find()
            .count(&db)
            .await
            .unwrap_or(0)
    };
    eventually(Duration::from_secs(30), "three ticks fired", || async {
        (count().await >= 3).then_some(())
    })
    .await;
    first.0.kill().expect("SIGKILL");
    let _ = first.0.wait();
    let at_kill = count().await;
    eventually(
        Duration::from_secs(20),
        "four more ticks after the kill",
        || async { (count().await >= at_kill + 4).then_some(()) },
    )
    .await;
    second.0.kill().expect("stop the second");
    let _ = second.0.wait();
    let seen = ticks(&app, true).await;
    assert_each_second_once(&seen, 7);
    app.cleanup().await;
}
