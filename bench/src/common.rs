//! What the benchmarks share: the scratch vhost each runs in, a concurrent publisher of
//! test messages, waiting on a counter, percentiles, and the `BENCH {json}` result line that
//! `scripts/bench_suite.py` reads.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde_json::json;
use warren::{
    Settings,
    broker::{
        Broker,
        envelope::{Event, Meta},
        publisher::{PublishError, Publisher},
        topology::{Management, Topology, encode},
    },
    config::Secret,
    telemetry::Metrics,
};

/// Prints one machine-readable result line (`BENCH {json}`) for the benchmark suite.
pub(crate) fn emit(value: &serde_json::Value) {
    println!("BENCH {value}");
}

/// The value at percentile `p` (0 to 100) of `sorted`, nearest rank; 0 when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `PostgreSQL` or `SQLite`, for the result lines.
pub(crate) fn db_kind(settings: &Settings) -> &'static str {
    if warren::store::is_sqlite(settings.database.url.expose()) {
        "SQLite"
    } else {
        "PostgreSQL"
    }
}

/// A vhost made for one benchmark run through the management API; `settings.amqp.url`
/// points at it. [`ScratchVhost::delete`] removes it (best effort) when the run is over.
pub(crate) struct ScratchVhost {
    api: Management,
    name: String,
}

impl ScratchVhost {
    /// Creates `warren-bench-{what}-{pid}`, grants the AMQP user every permission on it and
    /// points `settings` at it.
    pub(crate) async fn create(settings: &mut Settings, what: &str) -> anyhow::Result<Self> {
        let name = format!("warren-bench-{what}-{}", std::process::id());
        let api = Management::new(settings.amqp.management_url.expose())?;
        let user = url::Url::parse(settings.amqp.url.expose())?
            .username()
            .to_owned();
        api.put(&format!("vhosts/{}", encode(&name)), &json!({}))
            .await?;
        api.put(
            &format!("permissions/{}/{}", encode(&name), user),
            &json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await?;
        let base = settings.amqp.url.expose().to_owned();
        let base = base
            .rsplit_once('/')
            .map_or(base.as_str(), |(b, _)| b)
            .to_owned();
        settings.amqp.url = Secret::new(format!("{base}/{}", encode(&name)));
        Ok(Self { api, name })
    }

    /// Deletes the vhost; a failure is ignored (the run's own result is what counts).
    pub(crate) async fn delete(self) {
        let _ = self
            .api
            .delete(&format!("vhosts/{}", encode(&self.name)))
            .await;
    }
}

/// A broker with the topology declared, and a confirming publisher on it.
pub(crate) async fn bench_publisher(
    settings: &Settings,
    name: &str,
) -> anyhow::Result<(Broker, Publisher)> {
    let broker = Broker::new(settings, name)?;
    broker.declare(&Topology::for_settings(settings)?).await?;
    let publisher = Publisher::new(
        broker.clone(),
        settings.amqp.publish_channels,
        settings.amqp.publish_timeout(),
        Metrics::new(),
    );
    Ok((broker, publisher))
}

/// Publishes `n` messages named `name` on `exchange` from `tasks` concurrent tasks; each
/// message's data carries a `user_id` and some padding. Returns how long it took.
pub(crate) async fn publish_all(
    publisher: &Publisher,
    n: u64,
    tasks: u64,
    exchange: &'static str,
    name: &'static str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let publisher = publisher.clone();
        let share = n / tasks + u64::from(t < n % tasks);
        handles.push(tokio::spawn(async move {
            for i in 0..share {
                let e = Event::new(
                    name,
                    None,
                    json!({"user_id": format!("bench-{t}"), "i": i, "pad": "x".repeat(120)}),
                );
                let meta = Meta::for_event(&e);
                publisher
                    .publish(
                        exchange,
                        name,
                        &e.to_json(),
                        publisher.properties(exchange, &e, &meta),
                    )
                    .await?;
            }
            Ok::<(), PublishError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(started.elapsed())
}

/// Waits until `done` reaches `n`, checking every 20 ms; an error after `limit`.
pub(crate) async fn wait_done(done: &AtomicU64, n: u64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while done.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} handled in {limit:?}",
            done.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 100.0), 5.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
