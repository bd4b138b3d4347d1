//! The broker topology: `broker-topology.json` parsed, declared over AMQP, verified against a
//! live broker through the management API, and exported.
//!
//! The file is RabbitMQ's own definitions format, so `rabbitmqctl import_definitions` and the
//! management API's `POST /api/definitions/{vhost}` take it unchanged. warren declares the same
//! entities at start; declaring is idempotent because each entity is declared with exactly the
//! arguments in the file (RabbitMQ answers 406 and closes the channel when a queue exists with
//! other arguments, so declaration runs on a throwaway channel and reports that as drift).

use std::collections::BTreeMap;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    names::{ERROR_TIER, FAILURE_TIER, PARKING_DELIVERY_LIMIT},
    subscriptions,
};

/// The queue argument of a quorum queue's delivery limit.
const DELIVERY_LIMIT: &str = "x-delivery-limit";

/// The built-in topology, the repository's `broker-topology.json`.
pub const BUILTIN: &str = include_str!("../../broker-topology.json");

/// Errors while loading, declaring or verifying the topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The definitions file could not be read.
    #[error(transparent)]
    Read(#[from] crate::config::ConfigError),
    /// The definitions file is not valid definitions JSON.
    #[error("topology definitions do not parse: {0}")]
    Parse(#[from] serde_json::Error),
    /// An argument has a JSON type AMQP tables cannot carry here.
    #[error("unsupported argument {key} = {value} on {entity}")]
    UnsupportedArgument {
        /// The entity declaring it.
        entity: String,
        /// The argument name.
        key: String,
        /// Its value.
        value: Value,
    },
    /// The broker refused a declaration.
    #[error("declaring {entity} failed: {source}")]
    Declare {
        /// The entity being declared.
        entity: String,
        /// The broker's answer.
        source: lapin::Error,
    },
    /// A subscription's queue exists with other arguments than its settings ask for.
    #[error("declaring {entity} failed: {source}; {hint}", hint = subscriptions::ARGUMENTS_HINT)]
    SubscriptionQueue {
        /// The queue.
        entity: String,
        /// The broker's answer (406 PRECONDITION_FAILED, inequivalent arg).
        source: lapin::Error,
    },
    /// The management API could not be queried.
    #[error("management API request {url} failed: {reason}")]
    Management {
        /// The URL without credentials.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// An exchange definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    /// Exchange name.
    pub name: String,
    /// `topic`, `direct`, `fanout` or `headers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not publishable by clients.
    #[serde(default)]
    pub internal: bool,
    /// Optional arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// Vhost, present only in exports for a whole-broker import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
}

/// A queue definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Queue name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// `x-queue-type`, TTLs, dead-letter wiring.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// Vhost, present only in exports for a whole-broker import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
}

/// A binding from an exchange to a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    /// The exchange.
    pub source: String,
    /// The queue.
    pub destination: String,
    /// Always `queue` in warren's topology.
    pub destination_type: String,
    /// Binding key (topic patterns allowed on topic exchanges).
    pub routing_key: String,
    /// Binding arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// Vhost, present only in exports for a whole-broker import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
}

/// The whole topology, in RabbitMQ's definitions format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// The RabbitMQ version the definitions were written for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbit_version: Option<String>,
    /// Exchanges.
    #[serde(default)]
    pub exchanges: Vec<ExchangeDef>,
    /// Queues.
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    /// Bindings.
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
}

/// One way a live broker differs from the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// An entity in the file is absent on the broker.
    Missing(String),
    /// An entity exists with other properties.
    Different {
        /// The entity.
        entity: String,
        /// The property and both values.
        detail: String,
    },
    /// A `warren.*` entity on the broker that the file does not name.
    Unexpected(String),
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Missing(e) => write!(f, "missing: {e}"),
            Drift::Different { entity, detail } => write!(f, "different: {entity}: {detail}"),
            Drift::Unexpected(e) => write!(f, "unexpected: {e}"),
        }
    }
}

impl Topology {
    /// Parses definitions JSON.
    pub fn parse(json: &str) -> Result<Self, TopologyError> {
        Ok(serde_json::from_str(json)?)
    }

    /// The built-in topology.
    pub fn builtin() -> Result<Self, TopologyError> {
        Self::parse(BUILTIN)
    }

    /// The topology for these settings: the file (or the built-in one) with the delay tiers
    /// TTLs set from `jobs.failure_delay_ms` and `jobs.error_delay_ms`, and the queues and
    /// bindings of every HTTP subscription (`[[subscriptions]]`).
    /// The file's text was read when the settings loaded ([`crate::config::Files`]).
    pub fn for_settings(settings: &crate::config::Settings) -> Result<Self, TopologyError> {
        let topology = match settings.files()?.topology {
            Some(file) => Self::parse(&file.text)?,
            None => Self::builtin()?,
        };
        let mut topology = topology
            .with_retry_delays(settings.jobs.failure_delay_ms, settings.jobs.error_delay_ms);
        super::subscriptions::add_to(&mut topology, &settings.subscriptions);
        Ok(topology)
    }

    /// Sets the TTL of the failure tier (`warren.retry.60s`) and the error tier
    /// (`warren.retry.120s`). The names stay: they say what production uses.
    pub fn with_retry_delays(mut self, failure_ms: u64, error_ms: u64) -> Self {
        for q in &mut self.queues {
            let ttl = match q.name.as_str() {
                FAILURE_TIER => failure_ms,
                ERROR_TIER => error_ms,
                _ => continue,
            };
            q.arguments
                .insert("x-message-ttl".to_owned(), Value::from(ttl));
        }
        self
    }

    /// The definitions with every entity stamped with `vhost`, for a whole-broker import
    /// (`rabbitmqctl import_definitions`, or `load_definitions` at boot); without a vhost the
    /// file is vhost-neutral, for `POST /api/definitions/{vhost}`.
    pub fn export(&self, vhost: Option<&str>) -> Self {
        let mut t = self.clone();
        let v = vhost.map(str::to_owned);
        t.exchanges.iter_mut().for_each(|e| e.vhost.clone_from(&v));
        t.queues.iter_mut().for_each(|q| q.vhost.clone_from(&v));
        t.bindings.iter_mut().for_each(|b| b.vhost.clone_from(&v));
        t
    }

    /// Whether a message with `routing_key` published to `exchange` reaches a queue.
    pub fn routes(&self, exchange: &str, routing_key: &str) -> bool {
        !self.destinations(exchange, routing_key).is_empty()
    }

    /// The queues a message published to `exchange` with `routing_key` reaches, each once,
    /// in binding order.
    pub fn destinations(&self, exchange: &str, routing_key: &str) -> Vec<&str> {
        let topic = self
            .exchanges
            .iter()
            .any(|e| e.name == exchange && e.kind == "topic");
        let mut out: Vec<&str> = Vec::new();
        for b in &self.bindings {
            let matches = b.source == exchange
                && if topic {
                    topic_matches(&b.routing_key, routing_key)
                } else {
                    b.routing_key == routing_key
                };
            if matches && !out.contains(&b.destination.as_str()) {
                out.push(&b.destination);
            }
        }
        out
    }

    /// Names of the work queues (those that have a parking queue `Q.dead`).
    pub fn work_queues(&self) -> Vec<&str> {
        self.queues
            .iter()
            .map(|q| q.name.as_str())
            .filter(|n| self.queues.iter().any(|d| d.name == format!("{n}.dead")))
            .collect()
    }

    /// The parking queue a [`Topology::declare`] error is about when that queue exists with
    /// another `x-delivery-limit` than [`PARKING_DELIVERY_LIMIT`], the one this topology
    /// gives it: mostly none, declared by a warren before the limit came (see
    /// [`crate::broker::Broker::declare`]). A queue's arguments cannot change in place.
    pub(crate) fn older_parking_queue(&self, error: &TopologyError) -> Option<String> {
        let TopologyError::Declare { entity, source } = error else {
            return None;
        };
        let name = entity.strip_prefix("queue ")?;
        let limited = self.queues.iter().any(|q| {
            q.name == name
                && q.arguments.get(DELIVERY_LIMIT) == Some(&Value::from(PARKING_DELIVERY_LIMIT))
        });
        (name.ends_with(".dead")
            && limited
            && source
                .to_string()
                .contains(&format!("inequivalent arg '{DELIVERY_LIMIT}'")))
        .then(|| name.to_owned())
    }

    /// This topology with `queue` declared without its `x-delivery-limit`, as it exists.
    pub(crate) fn without_delivery_limit(mut self, queue: &str) -> Self {
        for q in self.queues.iter_mut().filter(|q| q.name == queue) {
            q.arguments.remove(DELIVERY_LIMIT);
        }
        self
    }

    /// Declares every exchange, queue and binding on `channel`. Idempotent; a 406 from an
    /// existing entity with other arguments is returned as an error naming the entity (the
    /// channel is closed by the broker afterwards, so pass a throwaway one).
    #[tracing::instrument(skip_all, fields(exchanges = self.exchanges.len(), queues = self.queues.len(), bindings = self.bindings.len()))]
    pub async fn declare(&self, channel: &Channel) -> Result<(), TopologyError> {
        for e in &self.exchanges {
            let entity = format!("exchange {}", e.name);
            let kind = match e.kind.as_str() {
                "topic" => ExchangeKind::Topic,
                "direct" => ExchangeKind::Direct,
                "fanout" => ExchangeKind::Fanout,
                "headers" => ExchangeKind::Headers,
                other => ExchangeKind::Custom(other.to_owned()),
            };
            let options = ExchangeDeclareOptions {
                durable: e.durable,
                auto_delete: e.auto_delete,
                internal: e.internal,
                ..ExchangeDeclareOptions::default()
            };
            let args = field_table(&entity, &e.arguments)?;
            channel
                .exchange_declare(e.name.as_str().into(), kind, options, args)
                .await
                .map_err(|source| TopologyError::Declare { entity, source })?;
        }
        for q in &self.queues {
            let entity = format!("queue {}", q.name);
            let options = QueueDeclareOptions {
                durable: q.durable,
                auto_delete: q.auto_delete,
                ..QueueDeclareOptions::default()
            };
            let args = field_table(&entity, &q.arguments)?;
            channel
                .queue_declare(q.name.as_str().into(), options, args)
                .await
                .map_err(|source| {
                    // A subscription's queue declared with other arguments: its `ordering`
                    // changed, and the error says what to do.
                    if q.name.starts_with(subscriptions::QUEUE_PREFIX)
                        && source.to_string().contains("inequivalent arg")
                    {
                        TopologyError::SubscriptionQueue { entity, source }
                    } else {
                        TopologyError::Declare { entity, source }
                    }
                })?;
        }
        for b in &self.bindings {
            let entity = format!(
                "binding {} -> {} ({})",
                b.source, b.destination, b.routing_key
            );
            let args = field_table(&entity, &b.arguments)?;
            channel
                .queue_bind(
                    b.destination.as_str().into(),
                    b.source.as_str().into(),
                    b.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    args,
                )
                .await
                .map_err(|source| TopologyError::Declare { entity, source })?;
        }
        tracing::info!("Broker topology declared.");
        Ok(())
    }

    /// Compares this topology with what the management API reports for `vhost`. Returns
    /// every difference; an empty list means the broker matches.
    pub async fn verify(
        &self,
        management_url: &str,
        vhost: &str,
    ) -> Result<Vec<Drift>, TopologyError> {
        self.verify_with(&Management::new(management_url)?, vhost)
            .await
    }

    /// [`Topology::verify`] through `api` (any of a cluster's nodes).
    pub async fn verify_with(
        &self,
        api: &Management,
        vhost: &str,
    ) -> Result<Vec<Drift>, TopologyError> {
        let live_exchanges = api.get(&format!("exchanges/{}", encode(vhost))).await?;
        let live_queues = api.get(&format!("queues/{}", encode(vhost))).await?;
        let live_bindings = api.get(&format!("bindings/{}", encode(vhost))).await?;
        Ok(self.diff(&live_exchanges, &live_queues, &live_bindings))
    }

    /// The pure comparison behind [`Topology::verify`], on the management API's JSON lists.
    pub fn diff(&self, exchanges: &[Value], queues: &[Value], bindings: &[Value]) -> Vec<Drift> {
        let mut drift = Vec::new();
        self.diff_exchanges(&mut drift, exchanges);
        self.diff_queues(&mut drift, queues);
        self.diff_bindings(&mut drift, bindings);
        drift
    }

    fn diff_exchanges(&self, drift: &mut Vec<Drift>, exchanges: &[Value]) {
        let live = by_name(exchanges);
        for e in &self.exchanges {
            let entity = format!("exchange {}", e.name);
            let Some(live) = live.get(&e.name) else {
                drift.push(Drift::Missing(entity));
                continue;
            };
            let fields = [
                ("type", json_str(&e.kind)),
                ("durable", Value::Bool(e.durable)),
                ("auto_delete", Value::Bool(e.auto_delete)),
                ("internal", Value::Bool(e.internal)),
            ];
            for (field, want) in &fields {
                compare(drift, &entity, field, want, live.get(*field));
            }
            compare_args(drift, &entity, &e.arguments, live.get("arguments"));
        }
        for name in live.keys() {
            if name.starts_with("warren.") && !self.exchanges.iter().any(|e| &e.name == name) {
                drift.push(Drift::Unexpected(format!("exchange {name}")));
            }
        }
    }

    fn diff_queues(&self, drift: &mut Vec<Drift>, queues: &[Value]) {
        let live = by_name(queues);
        for q in &self.queues {
            let entity = format!("queue {}", q.name);
            let Some(live) = live.get(&q.name) else {
                drift.push(Drift::Missing(entity));
                continue;
            };
            let fields = [
                ("durable", Value::Bool(q.durable)),
                ("auto_delete", Value::Bool(q.auto_delete)),
            ];
            for (field, want) in &fields {
                compare(drift, &entity, field, want, live.get(*field));
            }
            let from = drift.len();
            compare_args(drift, &entity, &q.arguments, live.get("arguments"));
            if q.name.starts_with(subscriptions::QUEUE_PREFIX) {
                for d in &mut drift[from..] {
                    if let Drift::Different { detail, .. } = d
                        && detail.contains(subscriptions::SINGLE_ACTIVE_CONSUMER)
                    {
                        detail.push_str(&format!(" ({})", subscriptions::ARGUMENTS_HINT));
                    }
                }
            }
        }
        for name in live.keys() {
            if name.starts_with("warren.") && !self.queues.iter().any(|q| &q.name == name) {
                drift.push(Drift::Unexpected(format!("queue {name}")));
            }
        }
    }

    fn diff_bindings(&self, drift: &mut Vec<Drift>, bindings: &[Value]) {
        let key = |s: &str, d: &str, k: &str| format!("binding {s} -> {d} ({k})");
        // The default exchange's implicit bindings have an empty source.
        let live: Vec<String> = bindings
            .iter()
            .filter_map(|b| {
                let source = b.get("source")?.as_str().filter(|s| !s.is_empty())?;
                Some(key(
                    source,
                    b.get("destination")?.as_str()?,
                    b.get("routing_key")?.as_str()?,
                ))
            })
            .collect();
        let want: Vec<String> = self
            .bindings
            .iter()
            .map(|b| key(&b.source, &b.destination, &b.routing_key))
            .collect();
        for b in &want {
            if !live.contains(b) {
                drift.push(Drift::Missing(b.clone()));
            }
        }
        for b in &live {
            if b.starts_with("binding warren.") && !want.contains(b) {
                drift.push(Drift::Unexpected(b.clone()));
            }
        }
    }
}

/// A management API list keyed by each entry's `name`.
fn by_name(list: &[Value]) -> BTreeMap<String, Value> {
    list.iter()
        .filter_map(|v| Some((v.get("name")?.as_str()?.to_owned(), v.clone())))
        .collect()
}

fn json_str(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn compare(drift: &mut Vec<Drift>, entity: &str, field: &str, want: &Value, live: Option<&Value>) {
    let live = live.cloned().unwrap_or(Value::Null);
    if !json_eq(want, &live) {
        drift.push(Drift::Different {
            entity: entity.to_owned(),
            detail: format!("{field}: expected {want}, broker has {live}"),
        });
    }
}

fn compare_args(
    drift: &mut Vec<Drift>,
    entity: &str,
    want: &Map<String, Value>,
    live: Option<&Value>,
) {
    let empty = Map::new();
    let live = live.and_then(Value::as_object).unwrap_or(&empty);
    for (k, v) in want {
        compare(drift, entity, &format!("argument {k}"), v, live.get(k));
    }
    for (k, v) in live {
        if !want.contains_key(k) {
            drift.push(Drift::Different {
                entity: entity.to_owned(),
                detail: format!("argument {k}: not in the file, broker has {v}"),
            });
        }
    }
}

/// Numbers compare by value (the broker may answer `60000` where the file says `60000.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Converts definitions-JSON arguments to an AMQP field table.
pub(crate) fn field_table(
    entity: &str,
    args: &Map<String, Value>,
) -> Result<FieldTable, TopologyError> {
    let mut table = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Number(n) if n.is_i64() => {
                AMQPValue::LongLongInt(n.as_i64().unwrap_or_default())
            }
            _ => {
                return Err(TopologyError::UnsupportedArgument {
                    entity: entity.to_owned(),
                    key: k.clone(),
                    value: v.clone(),
                });
            }
        };
        table.insert(ShortString::from(k.as_str()), value);
    }
    Ok(table)
}

/// Percent-encodes a vhost for a management API path.
pub fn encode(vhost: &str) -> String {
    url::form_urlencoded::byte_serialize(vhost.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A minimal client of RabbitMQ's management HTTP API, over one node or several: a call goes
/// to the node that last answered, and when that one cannot be reached (no connection, a
/// time-out, a 5xx), to the next, each node tried once.
#[derive(Debug, Clone)]
pub struct Management {
    nodes: std::sync::Arc<Vec<ManagementNode>>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    http: reqwest::Client,
}

#[derive(Debug)]
struct ManagementNode {
    base: url::Url,
    user: String,
    password: String,
}

impl Management {
    /// A client for `url` (`http://user:pass@host:15672`) whose calls time out after 30 s.
    pub fn new(url: &str) -> Result<Self, TopologyError> {
        Self::with_timeout(url, std::time::Duration::from_secs(30))
    }

    /// A client for `url` whose calls time out after `timeout`.
    pub fn with_timeout(url: &str, timeout: std::time::Duration) -> Result<Self, TopologyError> {
        Self::nodes(&[url], timeout)
    }

    /// A client of every node's management API in `settings` (`amqp.management_urls`, or
    /// `amqp.management_url`) whose calls time out after `timeout` on each node.
    pub fn for_settings(
        settings: &crate::config::AmqpSettings,
        timeout: std::time::Duration,
    ) -> Result<Self, TopologyError> {
        Self::nodes(&settings.management_node_urls(), timeout)
    }

    /// A client of these nodes' management APIs.
    pub fn nodes(urls: &[&str], timeout: std::time::Duration) -> Result<Self, TopologyError> {
        let nodes = urls
            .iter()
            .map(|url| {
                let mut base = url::Url::parse(url).map_err(|e| TopologyError::Management {
                    url: crate::config::redact_url(url),
                    reason: e.to_string(),
                })?;
                let user = percent_decode(base.username());
                let password = percent_decode(base.password().unwrap_or(""));
                let _ = base.set_username("");
                let _ = base.set_password(None);
                Ok(ManagementNode {
                    base,
                    user,
                    password,
                })
            })
            .collect::<Result<Vec<_>, TopologyError>>()?;
        if nodes.is_empty() {
            return Err(TopologyError::Management {
                url: String::new(),
                reason: "no management URL".to_owned(),
            });
        }
        crate::tls::install_crypto_provider();
        Ok(Self {
            nodes: std::sync::Arc::new(nodes),
            current: std::sync::Arc::default(),
            // Bounded: a broker busy with vhost operations must fail a call, not hang it.
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| TopologyError::Management {
                    url: crate::config::redact_url(urls[0]),
                    reason: e.to_string(),
                })?,
        })
    }

    /// `{base}/api/{path}` of the node at `index`.
    fn url_of(&self, index: usize, path: &str) -> String {
        let base = self.nodes[index % self.nodes.len()].base.as_str();
        format!("{}/api/{path}", base.trim_end_matches('/'))
    }

    /// Sends the request to the node that last answered, then to the others in turn while a
    /// node cannot be reached or answers 5xx. An answer of 4xx is the caller's error.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, TopologyError> {
        use std::sync::atomic::Ordering;
        let n = self.nodes.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let index = (first + i) % n;
            let node = &self.nodes[index];
            let url = self.url_of(index, path);
            let err = |reason: String| TopologyError::Management {
                url: url.clone(),
                reason,
            };
            let mut req = self
                .http
                .request(method.clone(), &url)
                .basic_auth(&node.user, Some(&node.password));
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    last = Some(err(e.to_string()));
                    continue;
                }
            };
            let status = resp.status();
            if status.is_server_error() && i + 1 < n {
                let body = resp.text().await.unwrap_or_default();
                last = Some(err(format!("HTTP {status}: {body}")));
                continue;
            }
            self.current.store(index, Ordering::Relaxed);
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                return Err(err(format!("HTTP {status}: {body}")));
            }
            return Ok(resp);
        }
        Err(last.unwrap_or_else(|| TopologyError::Management {
            url: path.to_owned(),
            reason: "no management node".to_owned(),
        }))
    }

    /// `GET /api/{path}` as a JSON list.
    pub async fn get(&self, path: &str) -> Result<Vec<Value>, TopologyError> {
        self.get_json(path).await
    }

    /// `GET /api/{path}` as any JSON value.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, TopologyError> {
        let resp = self.send(reqwest::Method::GET, path, None).await?;
        let url = resp.url().to_string();
        resp.json::<T>()
            .await
            .map_err(|e| TopologyError::Management {
                url,
                reason: e.to_string(),
            })
    }

    /// `PUT /api/{path}` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<(), TopologyError> {
        self.send(reqwest::Method::PUT, path, Some(body))
            .await
            .map(drop)
    }

    /// `POST /api/{path}` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(), TopologyError> {
        self.send(reqwest::Method::POST, path, Some(body))
            .await
            .map(drop)
    }

    /// `DELETE /api/{path}`.
    pub async fn delete(&self, path: &str) -> Result<(), TopologyError> {
        self.send(reqwest::Method::DELETE, path, None)
            .await
            .map(drop)
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// AMQP topic matching: words split on `.`, `*` matches one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        assert!(topic_matches("#", "order.created"));
        assert!(topic_matches("order.*", "order.created"));
        assert!(!topic_matches("order.*", "order.created.v2"));
        assert!(topic_matches("order.#", "order.created.v2"));
        assert!(topic_matches("order.#", "order"));
        assert!(!topic_matches("user.*", "order.created"));
        assert!(topic_matches("*.created", "order.created"));
    }

    #[test]
    fn builtin_topology_has_the_spec_wiring() {
        let t = Topology::builtin().expect("builtin parses");
        for name in [
            "warren.events",
            "warren.commands",
            "warren.replies",
            "warren.retry.60s",
            "warren.retry.120s",
            "warren.requeue",
            "warren.dead",
        ] {
            assert!(t.exchanges.iter().any(|e| e.name == name), "{name}");
        }
        let work = t.work_queues();
        for q in [
            "warren.email",
            "warren.notifications",
            "warren.audit",
            "warren.orders",
            "warren.inventory",
            "warren.payments",
            "warren.saga",
            "warren.maintenance",
        ] {
            assert!(work.contains(&q), "{q} is a work queue");
            let def = t.queues.iter().find(|d| d.name == q).expect("declared");
            assert_eq!(
                def.arguments.get("x-dead-letter-exchange"),
                Some(&json!("warren.dead"))
            );
            assert_eq!(
                def.arguments.get("x-dead-letter-routing-key"),
                Some(&json!(q))
            );
            assert!(
                t.bindings.iter().any(|b| b.source == "warren.requeue"
                    && b.destination == q
                    && b.routing_key == q)
            );
            assert!(t.bindings.iter().any(|b| b.source == "warren.dead"
                && b.destination == format!("{q}.dead")
                && b.routing_key == q));
        }
        for (tier, ttl) in [("warren.retry.60s", 60_000), ("warren.retry.120s", 120_000)] {
            let def = t
                .queues
                .iter()
                .find(|d| d.name == tier)
                .expect("tier queue");
            assert_eq!(def.arguments.get("x-message-ttl"), Some(&json!(ttl)));
            assert_eq!(
                def.arguments.get("x-dead-letter-exchange"),
                Some(&json!("warren.requeue"))
            );
        }
    }

    #[test]
    fn diff_names_each_difference() {
        let t = Topology::builtin().expect("builtin parses");
        let exchanges: Vec<Value> = t.exchanges.iter().filter(|e| e.name != "warren.dead").map(|e| {
            let mut v = serde_json::to_value(e).expect("serializes");
            if e.name == "warren.events" { v["type"] = json!("direct"); }
            v
        }).chain([json!({"name": "warren.stray", "type": "fanout", "durable": true, "auto_delete": false, "internal": false, "arguments": {}})]).collect();
        let queues: Vec<Value> = t
            .queues
            .iter()
            .map(|q| {
                let mut v = serde_json::to_value(q).expect("serializes");
                if q.name == "warren.retry.60s" {
                    v["arguments"]["x-message-ttl"] = json!(5000);
                }
                v
            })
            .collect();
        let bindings: Vec<Value> = t
            .bindings
            .iter()
            .skip(1)
            .map(|b| serde_json::to_value(b).expect("serializes"))
            .collect();
        let drift = t.diff(&exchanges, &queues, &bindings);
        let text: Vec<String> = drift.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"missing: exchange warren.dead".to_owned()),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|d| d.starts_with("different: exchange warren.events: type")),
            "{text:?}"
        );
        assert!(text.iter().any(|d| d.starts_with("different: queue warren.retry.60s: argument x-message-ttl")), "{text:?}");
        assert!(
            text.contains(&"unexpected: exchange warren.stray".to_owned()),
            "{text:?}"
        );
        assert!(
            text.iter().any(|d| d.starts_with("missing: binding")),
            "{text:?}"
        );
        assert_eq!(drift.len(), 5, "{text:?}");
    }

    #[test]
    fn export_stamps_vhost() {
        let t = Topology::builtin()
            .expect("builtin parses")
            .export(Some("/"));
        assert!(t.queues.iter().all(|q| q.vhost.as_deref() == Some("/")));
        let neutral = serde_json::to_string(&Topology::builtin().expect("parses")).expect("ser");
        assert!(!neutral.contains("\"vhost\""));
    }
}
