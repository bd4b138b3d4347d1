//! The Prometheus registry and every metric warren exports.
//!
//! Label values stay bounded: HTTP paths are route templates (`/v1/events/{name}`), never raw
//! paths; exchanges and queues come from the topology; outcomes are fixed words.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// `http_requests_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// HTTP method.
    pub method: &'static str,
    /// Route template.
    pub path: &'static str,
    /// Status code.
    pub status: u16,
}

/// `http_request_duration_seconds` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// HTTP method.
    pub method: &'static str,
    /// Route template.
    pub path: &'static str,
}

/// `messages_published_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// The exchange.
    pub exchange: String,
    /// confirmed, nacked, returned, timeout, blocked, unavailable, channel_error.
    pub outcome: &'static str,
}

/// `queue_jobs_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The work queue.
    pub queue: String,
    /// success, failed, error, timeout, panic, invalid, undecodable, duplicate,
    /// retried_60s, retried_120s, dead_lettered.
    pub status: &'static str,
}

/// Per-queue labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// The work queue.
    pub queue: String,
}

/// `active_connections` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `amqp` or `database`.
    pub kind: &'static str,
}

/// Saga labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SagaLabels {
    /// Saga kind (`order`).
    pub kind: String,
}

/// Finished saga labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SagaOutcomeLabels {
    /// Saga kind.
    pub kind: String,
    /// `completed`, `compensated`, `needs_intervention`.
    pub outcome: &'static str,
}

fn saga_histogram() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])
}

fn duration_histogram() -> Histogram {
    // The article's buckets (0.1, 0.5, 1, 2, 5) plus finer ones below 0.1 s, where an
    // event-driven front answers.
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0,
    ])
}

/// All of warren's metrics, registered once. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    published: Family<PublishLabels, Counter>,
    active_connections: Family<ConnectionLabels, Gauge>,
    jobs: Family<JobLabels, Counter>,
    job_duration: Family<QueueLabels, Histogram, fn() -> Histogram>,
    sagas_started: Family<SagaLabels, Counter>,
    sagas_finished: Family<SagaOutcomeLabels, Counter>,
    saga_duration: Family<SagaOutcomeLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            http_requests.clone(),
        );
        let http_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response, by method and route template",
            http_duration.clone(),
        );
        let published = Family::<PublishLabels, Counter>::default();
        registry.register(
            "messages_published",
            "Messages published, by exchange and outcome (confirmed or the failure)",
            published.clone(),
        );
        let active_connections = Family::<ConnectionLabels, Gauge>::default();
        registry.register(
            "active_connections",
            "Open connections: AMQP connections in the pool, database connections in use",
            active_connections.clone(),
        );
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register(
            "queue_jobs",
            "Jobs by queue and status: handler outcomes, and what the runner did with them",
            jobs.clone(),
        );
        let job_duration =
            Family::<QueueLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "job_handler_duration_seconds",
            "Time a handler took, by queue",
            job_duration.clone(),
        );
        let sagas_started = Family::<SagaLabels, Counter>::default();
        registry.register(
            "sagas_started",
            "Sagas started, by kind",
            sagas_started.clone(),
        );
        let sagas_finished = Family::<SagaOutcomeLabels, Counter>::default();
        registry.register(
            "sagas_finished",
            "Sagas that reached a terminal state, by kind and outcome",
            sagas_finished.clone(),
        );
        let saga_duration =
            Family::<SagaOutcomeLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                saga_histogram,
            );
        registry.register(
            "saga_duration_seconds",
            "Time from a saga's start to its terminal state, by kind and outcome",
            saga_duration.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                sagas_started,
                sagas_finished,
                saga_duration,
                registry,
                http_requests,
                http_duration,
                published,
                active_connections,
                jobs,
                job_duration,
            }),
        }
    }

    /// Records one answered HTTP request.
    pub fn http_request(
        &self,
        method: &'static str,
        path: &'static str,
        status: u16,
        seconds: f64,
    ) {
        self.inner
            .http_requests
            .get_or_create(&HttpLabels {
                method,
                path,
                status,
            })
            .inc();
        self.inner
            .http_duration
            .get_or_create(&RouteLabels { method, path })
            .observe(seconds);
    }

    /// Records one publish outcome.
    pub fn published(&self, exchange: &str, outcome: &'static str) {
        self.inner
            .published
            .get_or_create(&PublishLabels {
                exchange: exchange.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts one job outcome or runner action.
    pub fn job(&self, queue: &str, status: &'static str) {
        self.inner
            .jobs
            .get_or_create(&JobLabels {
                queue: queue.to_owned(),
                status,
            })
            .inc();
    }

    /// Records a handler's duration.
    pub fn job_duration(&self, queue: &str, seconds: f64) {
        self.inner
            .job_duration
            .get_or_create(&QueueLabels {
                queue: queue.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts a started saga.
    pub fn saga_started(&self, kind: &str) {
        self.inner
            .sagas_started
            .get_or_create(&SagaLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a finished saga and records how long it took.
    pub fn saga_finished(&self, kind: &str, outcome: &'static str, seconds: f64) {
        let labels = SagaOutcomeLabels {
            kind: kind.to_owned(),
            outcome,
        };
        self.inner.sagas_finished.get_or_create(&labels).inc();
        self.inner
            .saga_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// Sets a connection gauge.
    pub fn set_connections(&self, kind: &'static str, n: i64) {
        self.inner
            .active_connections
            .get_or_create(&ConnectionLabels { kind })
            .set(n);
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_articles_metrics() {
        let m = Metrics::new();
        m.http_request("POST", "/v1/events/{name}", 202, 0.003);
        m.published("warren.events", "confirmed");
        let text = m.render();
        assert!(
            text.contains(
                r#"http_requests_total{method="POST",path="/v1/events/{name}",status="202"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"http_request_duration_seconds_bucket{le="0.005",method="POST",path="/v1/events/{name}"} 1"#) ||
            text.contains(r#"http_request_duration_seconds_bucket{method="POST",path="/v1/events/{name}",le="0.005"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"messages_published_total{exchange="warren.events",outcome="confirmed"} 1"#
            ),
            "{text}"
        );
    }
}
