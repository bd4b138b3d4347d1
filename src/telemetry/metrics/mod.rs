//! The Prometheus registry and every metric warren exports.
//!
//! Label values stay bounded: HTTP paths are route templates (`/v1/events/{name}`), never raw
//! paths; exchanges and queues come from the topology; outcomes are fixed words.

mod process;
mod text_format;

use std::sync::{Arc, OnceLock};

use self::{process::ProcessCollector, text_format::to_text_format};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// `http_requests_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    /// HTTP method.
    pub method: &'static str,
    /// Route template.
    pub path: &'static str,
    /// Status code.
    pub status: u16,
}

/// `http_request_duration_seconds` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    /// HTTP method.
    pub method: &'static str,
    /// Route template.
    pub path: &'static str,
}

/// Labels of publish requests refused by a limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusedLabels {
    /// Route template.
    pub path: &'static str,
    /// `rate_limited` (429) or `overloaded` (503, no in-flight slot).
    pub reason: &'static str,
}

/// `messages_published_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PublishLabels {
    /// The exchange.
    pub exchange: String,
    /// confirmed, nacked, returned, timeout, blocked, unavailable, channel_error.
    pub outcome: &'static str,
}

/// `queue_jobs_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct JobLabels {
    /// The work queue.
    pub queue: String,
    /// success, failed, error, timeout, panic, invalid, undecodable, duplicate,
    /// retried_60s, retried_120s, dead_lettered.
    pub status: &'static str,
}

/// Per-queue labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabels {
    /// The work queue.
    pub queue: String,
}

/// `queue_messages_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueActionLabels {
    /// The work queue.
    pub queue: String,
    /// consumed, acked, requeued, retried_60s, retried_120s, dead_lettered, replayed.
    pub action: &'static str,
}

/// `sagas` gauge labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SagaStateLabels {
    /// Saga kind.
    pub kind: String,
    /// running, compensating, completed, compensated, needs_intervention.
    pub state: String,
}

/// `warren_build_info` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// `active_connections` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConnectionLabels {
    /// `amqp_connections`, `amqp_channels` or `database_in_use`.
    pub kind: &'static str,
}

/// `amqp_node_connections` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct NodeLabels {
    /// The node's `host:port`, as `amqp.urls` names it.
    pub node: String,
}

/// `database_pool_connections` labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PoolLabels {
    /// The role's pool: `http`, `consumers`, `relay`, `scheduler` (SQLite: `shared`).
    pub pool: &'static str,
    /// `in_use` (checked out) or `max` (the pool's size).
    pub state: &'static str,
}

/// Saga labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SagaLabels {
    /// Saga kind (`order`).
    pub kind: String,
}

/// Finished saga labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SagaOutcomeLabels {
    /// Saga kind.
    pub kind: String,
    /// `completed`, `compensated`, `needs_intervention`.
    pub outcome: &'static str,
}

/// `subscription_deliveries_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DeliveryLabels {
    /// The subscription's name (from settings: bounded).
    pub subscription: String,
    /// delivered, failed, error, invalid, timeout, connect, transport.
    pub outcome: &'static str,
}

/// Per-subscription labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SubscriptionLabels {
    /// The subscription's name.
    pub subscription: String,
}

fn delivery_histogram() -> Histogram {
    // From a local receiver's milliseconds to the default 10 s delivery timeout and beyond.
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
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
    pool_connections: Family<PoolLabels, Gauge>,
    node_connections: Family<NodeLabels, Gauge>,
    jobs: Family<JobLabels, Counter>,
    job_duration: Family<QueueLabels, Histogram, fn() -> Histogram>,
    sagas_started: Family<SagaLabels, Counter>,
    sagas_finished: Family<SagaOutcomeLabels, Counter>,
    saga_duration: Family<SagaOutcomeLabels, Histogram, fn() -> Histogram>,
    queue_messages: Family<QueueActionLabels, Counter>,
    in_flight: Family<QueueLabels, Gauge>,
    slow_requests: Family<RouteLabels, Counter>,
    publish_refused: Family<RefusedLabels, Counter>,
    sagas: Family<SagaStateLabels, Gauge>,
    deliveries: Family<DeliveryLabels, Counter>,
    delivery_duration: Family<SubscriptionLabels, Histogram, fn() -> Histogram>,
    breaker_state: Family<SubscriptionLabels, Gauge>,
    status_write_errors: Counter,
    interventions_open: Gauge,
    outbox_depth: Gauge,
    outbox_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    event_outbox_stored: Counter,
    event_outbox_relayed: Counter,
    event_outbox_depth: Gauge,
    event_outbox_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    amqp_channels: Gauge,
    probes: Arc<Probes>,
}

/// Answers each broker node's `host:port` and the pool's open connections to it.
type NodeCounts = Box<dyn Fn() -> Vec<(String, usize)> + Send + Sync>;

/// What `render` asks at scrape time: the broker pool and the database pool.
#[derive(Default)]
struct Probes {
    /// How many connections the broker pool holds.
    broker: OnceLock<Box<dyn Fn() -> usize + Send + Sync>>,
    /// The broker pool's open connections by node.
    broker_nodes: OnceLock<NodeCounts>,
    db: OnceLock<Vec<(&'static str, sea_orm::DatabaseConnection)>>,
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
    // Long on purpose: one registration per metric family, kept as one list so that every
    // name warren exports (and its help text) is found in one place.
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
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "database_pool_connections",
            "Database connections of each role's pool: checked out (in_use) and its size (max)",
            pool_connections.clone(),
        );
        let node_connections = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "amqp_node_connections",
            "The broker pool's open AMQP connections by RabbitMQ node (amqp.urls)",
            node_connections.clone(),
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
        let queue_messages = Family::<QueueActionLabels, Counter>::default();
        registry.register(
            "queue_messages",
            "Messages by queue and what the runner did: consumed, acked, requeued, retried_60s, retried_120s, dead_lettered, replayed",
            queue_messages.clone(),
        );
        let in_flight = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "messages_in_flight",
            "Messages a handler is working on now, by queue",
            in_flight.clone(),
        );
        let slow_requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_slow_requests",
            "Requests slower than http.slow_request_ms, by method and route template",
            slow_requests.clone(),
        );
        let publish_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "http_publish_refused",
            "Publish requests refused by a limit before any work: rate_limited (429, over http.rate_limit_per_sec) or overloaded (503, http.max_in_flight_publishes reached)",
            publish_refused.clone(),
        );
        let sagas = Family::<SagaStateLabels, Gauge>::default();
        registry.register(
            "sagas",
            "Sagas per kind and state now (refreshed every few seconds by the orchestrator)",
            sagas.clone(),
        );
        let interventions_open = Gauge::default();
        registry.register(
            "saga_interventions_open",
            "Failed compensations waiting for an operator",
            interventions_open.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register(
            "saga_outbox_depth",
            "Saga commands stored and not yet confirmed by the broker",
            outbox_depth.clone(),
        );
        let outbox_oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "saga_outbox_oldest_seconds",
            "Age of the oldest command waiting in the saga outbox (0 when empty)",
            outbox_oldest.clone(),
        );
        let event_outbox_stored = Counter::default();
        registry.register(
            "event_outbox_stored",
            "Events and jobs the HTTP front stored in the events outbox because the broker could not confirm them",
            event_outbox_stored.clone(),
        );
        let event_outbox_relayed = Counter::default();
        registry.register(
            "event_outbox_relayed",
            "Events and jobs the relay published from the events outbox",
            event_outbox_relayed.clone(),
        );
        let event_outbox_depth = Gauge::default();
        registry.register(
            "event_outbox_depth",
            "Events and jobs waiting in the events outbox for the broker",
            event_outbox_depth.clone(),
        );
        let event_outbox_oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "event_outbox_oldest_seconds",
            "Age of the oldest message waiting in the events outbox (0 when empty)",
            event_outbox_oldest.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "subscription_deliveries",
            "HTTP subscription deliveries, by subscription and outcome (delivered, failed, error, invalid, timeout, connect, transport)",
            deliveries.clone(),
        );
        let delivery_duration =
            Family::<SubscriptionLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                delivery_histogram,
            );
        registry.register(
            "subscription_delivery_duration_seconds",
            "Time from sending a delivery to its outcome (response read or transport error), by subscription",
            delivery_duration.clone(),
        );
        let breaker_state = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "subscription_breaker_state",
            "A subscription's circuit breaker in this process: 0 closed, 1 half-open (one trial delivery), 2 open (taking no messages)",
            breaker_state.clone(),
        );
        let status_write_errors = Counter::default();
        registry.register(
            "subscription_status_write_errors",
            "Failed writes of this process's subscription state (subscription_status) or reads of the operators' pauses; deliveries go on",
            status_write_errors.clone(),
        );
        let amqp_channels = Gauge::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "warren_build_info",
            "Always 1; the version label says which warren runs",
            build,
        );
        registry.register_collector(Box::new(ProcessCollector::new()));
        Self {
            inner: Arc::new(Inner {
                queue_messages,
                in_flight,
                slow_requests,
                publish_refused,
                sagas,
                deliveries,
                delivery_duration,
                breaker_state,
                status_write_errors,
                interventions_open,
                outbox_depth,
                outbox_oldest,
                event_outbox_stored,
                event_outbox_relayed,
                event_outbox_depth,
                event_outbox_oldest,
                amqp_channels,
                probes: Arc::new(Probes::default()),
                sagas_started,
                sagas_finished,
                saga_duration,
                registry,
                http_requests,
                http_duration,
                published,
                active_connections,
                pool_connections,
                node_connections,
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

    /// Records one subscription delivery: its outcome and how long it took.
    pub fn subscription_delivery(&self, subscription: &str, outcome: &'static str, seconds: f64) {
        self.inner
            .deliveries
            .get_or_create(&DeliveryLabels {
                subscription: subscription.to_owned(),
                outcome,
            })
            .inc();
        self.inner
            .delivery_duration
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_owned(),
            })
            .observe(seconds);
    }

    /// Sets a subscription's breaker state: 0 closed, 1 half-open, 2 open.
    pub fn subscription_breaker(&self, subscription: &str, state: i64) {
        self.inner
            .breaker_state
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_owned(),
            })
            .set(state);
    }

    /// Counts a failed write of the subscriptions' state, or a failed read of their pauses.
    pub fn subscription_status_error(&self) {
        self.inner.status_write_errors.inc();
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

    /// Counts one message event of a queue (consumed, acked, retried_60s, ...).
    pub fn queue_message(&self, queue: &str, action: &'static str) {
        self.inner
            .queue_messages
            .get_or_create(&QueueActionLabels {
                queue: queue.to_owned(),
                action,
            })
            .inc();
    }

    /// Makes a `queue_messages_total` series exist (at zero).
    pub fn queue_message_touch(&self, queue: &str, action: &'static str) {
        let _ = self.inner.queue_messages.get_or_create(&QueueActionLabels {
            queue: queue.to_owned(),
            action,
        });
    }

    /// Counts `n` messages replayed from a queue's dead-letter queue.
    pub fn replayed(&self, queue: &str, n: u64) {
        self.inner
            .queue_messages
            .get_or_create(&QueueActionLabels {
                queue: queue.to_owned(),
                action: "replayed",
            })
            .inc_by(n);
    }

    /// Messages of `queue` a handler works on now (a guard: dropping it counts the end).
    pub fn in_flight(&self, queue: &str) -> InFlight {
        let gauge = self
            .inner
            .in_flight
            .get_or_create(&QueueLabels {
                queue: queue.to_owned(),
            })
            .clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// Makes `queue`'s series exist (at zero) before its first message.
    pub fn touch_queue(&self, queue: &str) {
        let _ = self.inner.in_flight.get_or_create(&QueueLabels {
            queue: queue.to_owned(),
        });
    }

    /// Counts a slow request.
    pub fn slow_request(&self, method: &'static str, path: &'static str) {
        self.inner
            .slow_requests
            .get_or_create(&RouteLabels { method, path })
            .inc();
    }

    /// Counts a publish request refused by a limit (`rate_limited` or `overloaded`).
    pub fn publish_refused(&self, path: &'static str, reason: &'static str) {
        self.inner
            .publish_refused
            .get_or_create(&RefusedLabels { path, reason })
            .inc();
    }

    /// Sets the sagas-per-state gauges (every state of every kind given, zero included).
    pub fn set_sagas(&self, counts: &[(String, String, i64)]) {
        for (kind, state, n) in counts {
            self.inner
                .sagas
                .get_or_create(&SagaStateLabels {
                    kind: kind.clone(),
                    state: state.clone(),
                })
                .set(*n);
        }
    }

    /// Sets the open interventions gauge.
    pub fn set_interventions_open(&self, n: i64) {
        self.inner.interventions_open.set(n);
    }

    /// Sets the outbox gauges.
    pub fn set_outbox(&self, depth: i64, oldest_seconds: f64) {
        self.inner.outbox_depth.set(depth);
        self.inner.outbox_oldest.set(oldest_seconds);
    }

    /// One message stored in the events outbox.
    pub fn event_outbox_stored(&self) {
        self.inner.event_outbox_stored.inc();
    }

    /// `n` messages published by the events outbox relay.
    pub fn event_outbox_relayed(&self, n: u64) {
        self.inner.event_outbox_relayed.inc_by(n);
    }

    /// Sets the events outbox gauges.
    pub fn set_event_outbox(&self, depth: i64, oldest_seconds: f64) {
        self.inner.event_outbox_depth.set(depth);
        self.inner.event_outbox_oldest.set(oldest_seconds);
    }

    /// An AMQP channel opened (`+1`) or closed (`-1`).
    pub fn channels(&self, delta: i64) {
        self.inner.amqp_channels.inc_by(delta);
    }

    /// Lets `render` report the broker pool's connections: `connections` answers how many
    /// the pool holds.
    pub fn watch_broker(&self, connections: impl Fn() -> usize + Send + Sync + 'static) {
        let _ = self.inner.probes.broker.set(Box::new(connections));
    }

    /// Lets `render` report the broker pool's open connections by node: `by_node` answers
    /// each node's `host:port` and count.
    pub fn watch_broker_nodes(
        &self,
        by_node: impl Fn() -> Vec<(String, usize)> + Send + Sync + 'static,
    ) {
        let _ = self.inner.probes.broker_nodes.set(Box::new(by_node));
    }

    /// Lets `render` report the database pools' connections: each role's pool by its name
    /// (`database_pool_connections`), and their sum in use (`active_connections`).
    pub fn watch_database(&self, pools: Vec<(&'static str, sea_orm::DatabaseConnection)>) {
        let _ = self.inner.probes.db.set(pools);
    }

    fn set_connections(&self, kind: &'static str, n: i64) {
        self.inner
            .active_connections
            .get_or_create(&ConnectionLabels { kind })
            .set(n);
    }

    /// The registry in the format the scraper asked for: OpenMetrics when `accept` names
    /// `application/openmetrics-text` (Prometheus does), else the classic Prometheus text
    /// format 0.0.4 (curl, promtool). Returns the body and its content type.
    pub fn render_for(&self, accept: Option<&str>) -> (String, &'static str) {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (
                self.render(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            (
                to_text_format(&self.render()),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        if let Some(connections) = self.inner.probes.broker.get() {
            self.set_connections(
                "amqp_connections",
                i64::try_from(connections()).unwrap_or(0),
            );
        }
        if let Some(by_node) = self.inner.probes.broker_nodes.get() {
            for (node, n) in by_node() {
                self.inner
                    .node_connections
                    .get_or_create(&NodeLabels { node })
                    .set(i64::try_from(n).unwrap_or(0));
            }
        }
        self.set_connections("amqp_channels", self.inner.amqp_channels.get().max(0));
        if let Some(pools) = self.inner.probes.db.get() {
            let mut in_use_total = 0;
            for (pool, db) in pools {
                let (in_use, max) = pool_figures(db);
                in_use_total += in_use;
                for (state, n) in [("in_use", in_use), ("max", max)] {
                    self.inner
                        .pool_connections
                        .get_or_create(&PoolLabels { pool, state })
                        .set(n);
                }
            }
            self.set_connections("database_in_use", in_use_total);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }
}

/// Dropped when a handler finishes: takes the message off `messages_in_flight`.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Connections of a pool checked out, and its size.
fn pool_figures(db: &sea_orm::DatabaseConnection) -> (i64, i64) {
    use sea_orm::DbBackend;
    let (size, idle, max) = match db.get_database_backend() {
        DbBackend::Postgres => {
            let p = db.get_postgres_connection_pool();
            (p.size(), p.num_idle(), p.options().get_max_connections())
        }
        DbBackend::Sqlite => {
            let p = db.get_sqlite_connection_pool();
            (p.size(), p.num_idle(), p.options().get_max_connections())
        }
        _ => (0, 0, 0),
    };
    (
        i64::from(size) - i64::try_from(idle).unwrap_or(0),
        i64::from(max),
    )
}

#[cfg(test)]
mod tests;
