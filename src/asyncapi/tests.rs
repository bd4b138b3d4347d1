//! The document against the topology, the definitions and real messages (the AsyncAPI
//! parser's own check is `tests/api/asyncapi.rs`).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::{
    config::{Secret, SubscriptionSettings},
    saga::protocol::CommandData,
};

fn settings() -> Settings {
    let mut s = Settings::default();
    s.amqp.url = Secret::new("amqp://app:s3cret@rabbit.internal:5673/shop");
    let mut sub = SubscriptionSettings::new("billing", "http://127.0.0.1:9/hook");
    sub.events = vec!["order.*".into()];
    sub.max_attempts = Some(7);
    s.subscriptions = vec![sub];
    s
}

fn doc() -> Value {
    let s = settings();
    let topology = Topology::for_settings(&s).expect("topology");
    let sagas = crate::saga::builtin(&s);
    build(&s, &topology, &sagas)
}

/// The keys of `value`'s object (empty when it is not one).
fn keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Checks `value` against the object-level parts of `schema` this document uses:
/// `required`, and `properties` with `additionalProperties: false`, recursively into
/// properties that are objects. Returns what does not fit.
fn misfits(schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some(obj) = value.as_object() else {
        return out;
    };
    for r in schema["required"].as_array().into_iter().flatten() {
        let r = r.as_str().unwrap_or_default();
        if !obj.contains_key(r) {
            out.push(format!("{at}: required {r} missing"));
        }
    }
    let props = &schema["properties"];
    for (k, v) in obj {
        match props.get(k) {
            Some(p) => out.extend(misfits(p, v, &format!("{at}/{k}"))),
            None if schema["additionalProperties"] == json!(false) => {
                out.push(format!("{at}: {k} is not in the schema"));
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_queue_is_a_channel_and_every_work_queue_is_consumed() {
    let d = doc();
    let s = settings();
    let topology = Topology::for_settings(&s).expect("topology");
    for q in &topology.queues {
        let channel = &d["channels"][format!("queue.{}", q.name)];
        assert_eq!(channel["address"], json!(q.name), "{}", q.name);
        assert_eq!(channel["bindings"]["amqp"]["is"], "queue");
        assert_eq!(channel["bindings"]["amqp"]["queue"]["vhost"], "shop");
    }
    for q in topology.work_queues() {
        let op = &d["operations"][format!("receive.{q}")];
        assert_eq!(op["action"], "receive", "{q}");
        assert_eq!(
            d["channels"][format!("queue.{q}")]["x-warren-retry"]["deadLetterQueue"],
            json!(format!("{q}.dead"))
        );
        assert!(
            !op["messages"].as_array().expect("messages").is_empty(),
            "{q} receives nothing"
        );
    }
    // The delay tiers and parked queues are channels with their role, not consumed.
    assert_eq!(
        d["channels"]["queue.warren.retry.60s"]["x-warren-role"],
        "retry-tier"
    );
    assert_eq!(
        d["channels"]["queue.warren.retry.60s"]["x-warren-delay-ms"],
        json!(s.jobs.failure_delay_ms)
    );
    assert_eq!(
        d["channels"]["queue.warren.audit.dead"]["x-warren-parked-from"],
        "warren.audit"
    );
    assert!(d["operations"].get("receive.warren.retry.60s").is_none());
}

#[test]
fn every_saga_command_and_compensation_is_a_message_warren_sends() {
    let d = doc();
    let s = settings();
    for saga in crate::saga::builtin(&s) {
        for step in &saga.steps {
            for command in std::iter::once(&step.command).chain(step.compensation.as_ref()) {
                let channel = &d["channels"][format!("commands.{command}")];
                assert_eq!(channel["address"], json!(command));
                assert_eq!(
                    channel["bindings"]["amqp"]["exchange"]["name"],
                    "warren.commands"
                );
                assert_eq!(d["operations"][format!("send.{command}")]["action"], "send");
                assert!(
                    !channel["x-warren-routes-to"]
                        .as_array()
                        .expect("routes")
                        .is_empty(),
                    "{command} reaches no queue"
                );
            }
        }
    }
    // The order saga's inventory step reaches the inventory participant's queue.
    let received = keys(&d["channels"]["queue.warren.inventory"]["messages"]);
    assert!(
        received.contains(&"inventory.deduct".to_owned()),
        "{received:?}"
    );
}

#[test]
fn a_subscription_queue_says_whose_it_is_and_its_own_attempts() {
    let d = doc();
    let channel = &d["channels"]["queue.warren.sub.billing"];
    assert_eq!(channel["x-warren-subscription"]["name"], "billing");
    assert_eq!(channel["x-warren-retry"]["maxAttempts"], 7);
    // Bound to order.* on warren.events: any event can reach it, so it takes the generic one.
    assert!(keys(&channel["messages"]).contains(&"event".to_owned()));
}

#[test]
fn the_server_names_the_broker_without_its_credentials() {
    let d = doc();
    let text = d.to_string();
    assert!(!text.contains("s3cret"), "the password leaked");
    assert!(!text.contains("app:"), "the user name leaked");
    assert_eq!(d["servers"]["broker"]["host"], "rabbit.internal:5673");
    assert_eq!(d["servers"]["broker"]["protocol"], "amqp");
    assert_eq!(d["servers"]["broker"]["x-warren-vhost"], "shop");
}

#[test]
fn each_example_is_a_real_message_and_fits_its_schemas() {
    let d = doc();
    let headers = &d["components"]["schemas"]["Headers"];
    let messages = d["components"]["messages"].as_object().expect("messages");
    for (key, m) in messages {
        for example in m["examples"].as_array().into_iter().flatten() {
            let mut bad = misfits(&m["payload"], &example["payload"], key);
            // Headers: each one a real message carries is documented.
            for h in keys(&example["headers"]) {
                if headers["properties"].get(&h).is_none() {
                    bad.push(format!("{key}: header {h} is not documented"));
                }
            }
            bad.extend(misfits(headers, &example["headers"], key));
            assert!(bad.is_empty(), "{bad:#?}");
        }
    }
}

#[test]
fn the_saga_schemas_fit_the_protocol_types() {
    let command = CommandData {
        saga_id: Uuid::now_v7(),
        kind: "trip".into(),
        step: 1,
        step_name: "charge".into(),
        action: Action::Compensate,
        idempotency_key: "k".into(),
        payload: json!({"amount": 5}),
        results: BTreeMap::from([("charge".to_owned(), json!({"charge_id": "ch_1"}))]),
    };
    let value = serde_json::to_value(&command).expect("serializes");
    let bad = misfits(&schemas::saga_command(), &value, "command");
    assert!(bad.is_empty(), "{bad:#?}");
    // And the check can fail: a field the schema does not know.
    let mut extra = value;
    extra["unknown"] = json!(1);
    assert!(!misfits(&schemas::saga_command(), &extra, "command").is_empty());
}
