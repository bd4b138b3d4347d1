//! The AsyncAPI 3.0 document of warren's broker side, served as `GET /asyncapi.json` and
//! printed by `warren asyncapi`.
//!
//! It is generated, never kept by hand, from what warren runs with:
//! - the topology it declares for its settings ([`Topology::for_settings`]: the file or the
//!   built-in one, the delay tiers' TTLs, every HTTP subscription's queues), as channels with
//!   AMQP 0-9-1 channel bindings (binding version 0.3.0): one `routingKey` channel per message
//!   type warren publishes, one `queue` channel per queue;
//! - the message types it knows: its own events (`job.failed`, the saga ends), the saga
//!   protocol (`saga.start`, `saga.reply`), every step command and compensation of the saga
//!   definitions it loaded, and any event or job published over HTTP (a channel whose address
//!   is a parameter);
//! - the envelope: the body schema of every message, and the AMQP headers (warren's and the
//!   CloudEvents binding's), with an example built from a real message;
//! - as `x-warren-*` extensions, where AsyncAPI has no field: each queue's arguments and
//!   bindings, its retry tiers, attempts, delivery limit and dead-letter queue, and the role
//!   of each queue (work, retry tier, dead letters).

mod schemas;

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{
    broker::{
        cloudevent,
        envelope::Outgoing,
        names::{
            COMMANDS_EXCHANGE, DEAD_EXCHANGE, ERROR_TIER, EVENTS_EXCHANGE, FAILURE_TIER,
            REPLIES_EXCHANGE, REQUEUE_EXCHANGE, SAGA_QUEUE, amqp_json,
        },
        topology::{Topology, TopologyError},
    },
    config::Settings,
    saga::{Action, DefinitionsError, SagaDef},
};

/// The AMQP bindings version the document uses.
const BINDING_VERSION: &str = "0.3.0";

/// Why the document could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AsyncApiError {
    /// The topology did not load.
    #[error("the AsyncAPI document needs the topology: {0}")]
    Topology(#[from] TopologyError),
    /// The saga definitions did not load.
    #[error("the AsyncAPI document needs the saga definitions: {0}")]
    Definitions(#[from] DefinitionsError),
}

/// The AsyncAPI 3.0 document for `settings`, as JSON.
pub fn document(settings: &Settings) -> Result<Value, AsyncApiError> {
    let topology = Topology::for_settings(settings)?;
    let sagas = crate::saga::definitions(settings)?;
    Ok(build(settings, &topology, &sagas))
}

/// One message type warren knows, on one exchange.
struct Kind {
    /// Component key and channel suffix.
    key: String,
    /// Its name: routing key and AMQP `type` (for the generic kinds, a parameter).
    name: String,
    /// The exchange it is published to.
    exchange: &'static str,
    /// What it is and who sends it.
    summary: String,
    /// The schema of its `data`.
    data: Value,
    /// A real message of the kind, for the example.
    example: Outgoing,
    /// Whether its name is a channel parameter (any event or job published over HTTP).
    generic: bool,
}

fn build(settings: &Settings, topology: &Topology, sagas: &[SagaDef]) -> Value {
    let vhost = settings.amqp.vhost();
    let kinds = kinds(sagas);
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for kind in &kinds {
        messages.insert(kind.key.clone(), message(kind, &vhost));
        let channel = format!("{}.{}", short(kind.exchange), kind.key);
        channels.insert(channel.clone(), routing_key_channel(kind, topology, &vhost));
        operations.insert(
            format!("send.{}", kind.key),
            json!({
                "action": "send",
                "title": format!("warren publishes {}", kind.name),
                "channel": {"$ref": format!("#/channels/{channel}")},
                "messages": [{"$ref": format!("#/channels/{channel}/messages/{}", kind.key)}],
                "bindings": {"amqp": {"deliveryMode": 2, "mandatory": true, "bindingVersion": BINDING_VERSION}},
            }),
        );
    }
    messages.insert("any".to_owned(), any_message());
    for queue in &topology.queues {
        let id = format!("queue.{}", queue.name);
        let received = received_by(&queue.name, &kinds, topology);
        channels.insert(
            id.clone(),
            queue_channel(settings, topology, &queue.name, &received, &vhost),
        );
        if topology.work_queues().contains(&queue.name.as_str()) {
            operations.insert(
                format!("receive.{}", queue.name),
                json!({
                    "action": "receive",
                    "title": format!("warren consumes {}", queue.name),
                    "summary": "Manual ack, after the effect is recorded; a failure waits in a delay tier, and after the last attempt the message is parked in the dead-letter queue.",
                    "channel": {"$ref": format!("#/channels/{id}")},
                    "messages": received
                        .iter()
                        .map(|key| json!({"$ref": format!("#/channels/{id}/messages/{key}")}))
                        .collect::<Vec<_>>(),
                    "bindings": {"amqp": {"ack": true, "bindingVersion": BINDING_VERSION}},
                }),
            );
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "id": "urn:warren:broker",
        "info": {
            "title": "warren broker API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The messages warren publishes and consumes on RabbitMQ: exchanges, queues and bindings, the envelope and its CloudEvents headers, the retry tiers and dead-letter queues. Generated from the running topology and saga definitions.",
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": servers(settings, &vhost),
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": {"Headers": schemas::headers()},
        },
        "x-warren-exchanges": topology
            .exchanges
            .iter()
            .map(|e| json!({"name": e.name, "type": e.kind, "durable": e.durable, "autoDelete": e.auto_delete}))
            .collect::<Vec<_>>(),
    })
}

/// The broker's nodes, their credentials left out: `broker` for one node, `node1`... for each
/// node of `amqp.urls`.
fn servers(settings: &Settings, vhost: &str) -> Value {
    let nodes = settings.amqp.node_urls();
    if nodes.len() == 1 {
        return json!({"broker": server(nodes[0], vhost)});
    }
    let mut out = Map::new();
    for (i, url) in nodes.iter().enumerate() {
        out.insert(format!("node{}", i + 1), server(url, vhost));
    }
    Value::Object(out)
}

/// One node, its credentials left out.
fn server(url: &str, vhost: &str) -> Value {
    let parsed = url::Url::parse(url).ok();
    let protocol = parsed.as_ref().map_or("amqp", |u| {
        if u.scheme() == "amqps" {
            "amqps"
        } else {
            "amqp"
        }
    });
    let host = parsed.as_ref().map_or_else(
        || "localhost".to_owned(),
        |u| {
            let port = u
                .port()
                .unwrap_or(if protocol == "amqps" { 5671 } else { 5672 });
            format!("{}:{port}", u.host_str().unwrap_or("localhost"))
        },
    );
    json!({
        "host": host,
        "protocol": protocol,
        "protocolVersion": "0.9.1",
        "description": format!("RabbitMQ, vhost {vhost:?}: quorum queues, publisher confirms, manual acks."),
        "x-warren-vhost": vhost,
    })
}

/// The message types warren knows.
fn kinds(sagas: &[SagaDef]) -> Vec<Kind> {
    let saga_id = Uuid::nil();
    let mut kinds = vec![
        Kind {
            key: "job.failed".to_owned(),
            name: "job.failed".to_owned(),
            exchange: EVENTS_EXCHANGE,
            summary: "The alert a consumer publishes when it parks a message in its dead-letter queue.".to_owned(),
            data: schemas::job_failed(),
            example: Outgoing::event(
                "job.failed",
                Some(saga_id.to_string()),
                json!({"type": "email_failed", "queue": "warren.email", "job_id": saga_id, "job_name": "email.send", "attempts": 3, "reason": "exhausted", "error": "smtp: connection refused", "data": {}}),
            ),
            generic: false,
        },
        Kind {
            key: "saga.start".to_owned(),
            name: "saga.start".to_owned(),
            exchange: COMMANDS_EXCHANGE,
            summary: "Starts a saga of a defined kind (POST /v1/sagas/{kind} sends it; so may any publisher). The event id becomes the saga id.".to_owned(),
            data: schemas::saga_start(),
            example: Outgoing::event(
                "saga.start",
                None,
                json!({"kind": "order", "business_key": "o-1", "payload": {}}),
            ),
            generic: false,
        },
        Kind {
            key: "saga.reply".to_owned(),
            name: "saga".to_owned(),
            exchange: REPLIES_EXCHANGE,
            summary: "A participant's answer to a step command or compensation (routing key saga).".to_owned(),
            data: schemas::saga_reply(),
            example: Outgoing::event(
                "saga.reply",
                Some(saga_id.to_string()),
                json!({"saga_id": saga_id, "step": 0, "action": "execute", "ok": true, "result": {"charge_id": "ch_1"}}),
            )
            .correlated(saga_id.to_string()),
            generic: false,
        },
    ];
    for status in ["completed", "compensated", "needs_intervention"] {
        let name = format!("saga.{status}");
        kinds.push(Kind {
            key: name.clone(),
            name: name.clone(),
            exchange: EVENTS_EXCHANGE,
            summary: format!("A saga ended: {status}. An ordinary event: any module or subscription can take it."),
            data: schemas::saga_finished(),
            example: Outgoing::event(
                name,
                Some(saga_id.to_string()),
                json!({"saga_id": saga_id, "kind": "order", "business_key": "o-1", "status": status, "reason": null, "definition_hash": null, "started_at": "2026-12-01T10:00:00.000Z", "links": {"self": format!("/v1/sagas/{saga_id}")}}),
            )
            .correlated(saga_id.to_string()),
            generic: false,
        });
    }
    let mut commands: BTreeMap<String, String> = BTreeMap::new();
    for saga in sagas {
        for step in &saga.steps {
            commands
                .entry(step.command.clone())
                .or_insert_with(|| format!("Step {:?} of saga {:?}", step.name, saga.kind));
            if let Some(c) = &step.compensation {
                commands.entry(c.clone()).or_insert_with(|| {
                    format!(
                        "Compensation of step {:?} of saga {:?}",
                        step.name, saga.kind
                    )
                });
            }
        }
    }
    for (command, what) in commands {
        let data = json!({
            "saga_id": saga_id, "kind": "order", "step": 0, "step_name": "step",
            "action": Action::Execute, "idempotency_key": format!("{saga_id}:0:execute"),
            "payload": {},
        });
        kinds.push(Kind {
            key: command.clone(),
            name: command.clone(),
            exchange: COMMANDS_EXCHANGE,
            summary: format!("{what}: a saga command sent by the orchestrator; its participant answers with saga.reply."),
            data: schemas::saga_command(),
            example: Outgoing::event(command, Some(saga_id.to_string()), data)
                .correlated(saga_id.to_string()),
            generic: false,
        });
    }
    kinds.push(Kind {
        key: "event".to_owned(),
        name: "{eventName}".to_owned(),
        exchange: EVENTS_EXCHANGE,
        summary: "Any event accepted over HTTP (POST /v1/events/{name}, or a CloudEvent on POST /v1/events), published with a confirm or kept in the events outbox until the broker takes it.".to_owned(),
        data: schemas::any_data(),
        example: Outgoing::event("user.registered", Some("u-1".to_owned()), json!({"email": "a@example.com"})),
        generic: true,
    });
    kinds.push(Kind {
        key: "job".to_owned(),
        name: "{jobName}".to_owned(),
        exchange: COMMANDS_EXCHANGE,
        summary: "Any job accepted over HTTP (POST /v1/jobs/{name}).".to_owned(),
        data: schemas::any_data(),
        example: Outgoing::event(
            "email.send",
            None,
            json!({"to": "a@example.com", "template": "welcome"}),
        ),
        generic: true,
    });
    kinds
}

/// The short name of a warren exchange in channel ids (`warren.events` is `events`).
fn short(exchange: &str) -> &str {
    exchange.strip_prefix("warren.").unwrap_or(exchange)
}

/// The message object of `kind`, with an example made of a real message's body and headers.
fn message(kind: &Kind, vhost: &str) -> Value {
    // Fixed ids and times, so the same settings always give the same document.
    let example = kind
        .example
        .clone()
        .with_id(Uuid::new_v5(&Uuid::NAMESPACE_OID, kind.key.as_bytes()))
        .occurred_on(example_time());
    // The properties the publisher gives it: the envelope's and the CloudEvents headers.
    let attrs = cloudevent::Attributes::of(
        &example.event,
        || example.event.event_id.to_string(),
        || cloudevent::source(vhost, kind.exchange),
    );
    let props = cloudevent::with_headers(example.meta.properties(), &attrs);
    let headers: Map<String, Value> = props
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), amqp_json(v)))
                .collect()
        })
        .unwrap_or_default();
    let payload: Value = serde_json::from_slice(&example.body()).unwrap_or(Value::Null);
    json!({
        "name": kind.name,
        "title": kind.key,
        "summary": kind.summary,
        "contentType": "application/json",
        "headers": {"$ref": "#/components/schemas/Headers"},
        "payload": schemas::envelope(kind.data.clone()),
        "correlationId": {"description": "The saga id on saga commands, replies and ends (AMQP correlation_id).", "location": "$message.payload#/aggregate_id"},
        "bindings": {"amqp": {"messageType": kind.name, "bindingVersion": BINDING_VERSION}},
        "examples": [{"name": kind.key.replace('.', "-"), "headers": headers, "payload": payload}],
        "x-warren-amqp-properties": {
            "message_id": "the event_id",
            "type": "the event or command name",
            "content_type": "application/json",
            "delivery_mode": 2,
            "app_id": "warren",
            "timestamp": "occurred_on, seconds since the epoch",
            "correlation_id": "the saga id or the HTTP request id, when there is one",
        },
    })
}

/// When the examples happened.
fn example_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_764_583_200, 0).unwrap_or_default()
}

/// A message of any kind: what the delay tiers and the dead-letter queues hold.
fn any_message() -> Value {
    json!({
        "name": "any",
        "title": "any",
        "summary": "Any of warren's messages, as it was when it failed (with the retry or park headers added).",
        "contentType": "application/json",
        "headers": {"$ref": "#/components/schemas/Headers"},
        "payload": schemas::envelope(schemas::any_data()),
    })
}

fn exchange_binding(topology: &Topology, exchange: &str, vhost: &str) -> Value {
    let def = topology.exchanges.iter().find(|e| e.name == exchange);
    json!({
        "name": exchange,
        "type": def.map_or("topic", |e| e.kind.as_str()),
        "durable": def.is_none_or(|e| e.durable),
        "autoDelete": def.is_some_and(|e| e.auto_delete),
        "vhost": vhost,
    })
}

fn routing_key_channel(kind: &Kind, topology: &Topology, vhost: &str) -> Value {
    let mut channel = json!({
        "address": kind.name,
        "title": format!("{} on {}", kind.name, kind.exchange),
        "messages": {kind.key.clone(): {"$ref": format!("#/components/messages/{}", kind.key)}},
        "bindings": {"amqp": {
            "is": "routingKey",
            "exchange": exchange_binding(topology, kind.exchange, vhost),
            "bindingVersion": BINDING_VERSION,
        }},
    });
    if kind.generic {
        let param = kind.name.trim_matches(['{', '}']);
        channel["parameters"] = json!({param: {
            "description": "The name the publisher gave: dot-separated words, also the routing key.",
            "examples": [kind.example.routing_key()],
        }});
    } else {
        channel["x-warren-routes-to"] = json!(topology.destinations(kind.exchange, &kind.name));
    }
    channel
}

/// The keys of the messages that reach `queue`: each known kind it is bound for, and the
/// generic event or job when a pattern on that exchange can take names warren does not know.
fn received_by(queue: &str, kinds: &[Kind], topology: &Topology) -> Vec<String> {
    let bound = |exchange: &str| {
        topology
            .bindings
            .iter()
            .any(|b| b.destination == queue && b.source == exchange)
    };
    let mut keys: Vec<String> = kinds
        .iter()
        .filter(|k| {
            if k.generic {
                bound(k.exchange)
            } else {
                topology.destinations(k.exchange, &k.name).contains(&queue)
            }
        })
        .map(|k| k.key.clone())
        .collect();
    if keys.is_empty() && (queue.ends_with(".dead") || queue == FAILURE_TIER || queue == ERROR_TIER)
    {
        keys.push("any".to_owned());
    }
    keys
}

fn queue_channel(
    settings: &Settings,
    topology: &Topology,
    queue: &str,
    received: &[String],
    vhost: &str,
) -> Value {
    let def = topology.queues.iter().find(|q| q.name == queue);
    let arguments = def.map(|q| q.arguments.clone()).unwrap_or_default();
    let mut channel = json!({
        "address": queue,
        "title": format!("queue {queue}"),
        "messages": received
            .iter()
            .map(|k| (k.clone(), json!({"$ref": format!("#/components/messages/{k}")})))
            .collect::<Map<String, Value>>(),
        "bindings": {"amqp": {
            "is": "queue",
            "queue": {
                "name": queue,
                "durable": def.is_none_or(|q| q.durable),
                "exclusive": false,
                "autoDelete": def.is_some_and(|q| q.auto_delete),
                "vhost": vhost,
            },
            "bindingVersion": BINDING_VERSION,
        }},
        "x-warren-arguments": arguments,
        "x-warren-bindings": topology
            .bindings
            .iter()
            .filter(|b| b.destination == queue)
            .map(|b| json!({"exchange": b.source, "routingKey": b.routing_key}))
            .collect::<Vec<_>>(),
    });
    let role = if queue == FAILURE_TIER || queue == ERROR_TIER {
        let delay = if queue == FAILURE_TIER {
            settings.jobs.failure_delay_ms
        } else {
            settings.jobs.error_delay_ms
        };
        channel["x-warren-delay-ms"] = json!(delay);
        channel["x-warren-then"] = json!(format!(
            "after the delay RabbitMQ dead-letters the message to {REQUEUE_EXCHANGE}, keyed by its queue, back to that queue"
        ));
        "retry-tier"
    } else if let Some(from) = queue.strip_suffix(".dead") {
        channel["x-warren-parked-from"] = json!(from);
        channel["x-warren-then"] =
            json!("kept until an operator replays or purges it (warren dlq, the console, /v1/dlq)");
        "dead-letters"
    } else if topology.work_queues().contains(&queue) {
        let subscription = settings.subscriptions.iter().find(|s| s.queue() == queue);
        let max_attempts = subscription
            .and_then(|s| s.max_attempts)
            .unwrap_or(settings.jobs.max_attempts);
        channel["x-warren-retry"] = json!({
            "maxAttempts": max_attempts,
            "failureTier": {"queue": FAILURE_TIER, "delayMs": settings.jobs.failure_delay_ms, "after": "a reported failure"},
            "errorTier": {"queue": ERROR_TIER, "delayMs": settings.jobs.error_delay_ms, "after": "an error, panic or timeout"},
            "requeueExchange": REQUEUE_EXCHANGE,
            "deadLetterExchange": DEAD_EXCHANGE,
            "deadLetterQueue": format!("{queue}.dead"),
            "deliveryLimit": arguments.get("x-delivery-limit"),
        });
        if let Some(s) = subscription {
            channel["x-warren-subscription"] = json!({
                "name": s.name,
                "delivery": "HTTP POST, CloudEvents 1.0",
                "mode": s.content_mode,
            });
        }
        if queue == SAGA_QUEUE {
            channel["x-warren-consumer"] = json!("the saga orchestrator");
        }
        "work"
    } else {
        "other"
    };
    channel["x-warren-role"] = json!(role);
    channel
}

#[cfg(test)]
mod tests;
