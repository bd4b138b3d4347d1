//! The broker entities of the HTTP subscriptions (`[[subscriptions]]`, delivered by
//! `crate::subscriptions`), added to the topology by [`Topology::for_settings`] so that
//! everything that declares, verifies or exports it has them, in the shape of every built-in module's: a
//! durable quorum work queue `warren.sub.<name>` that dead-letters into `warren.dead` with
//! its own name as the key, a quorum parking queue `warren.sub.<name>.dead` (with the
//! parking queues' delivery limit, [`PARKING_DELIVERY_LIMIT`]), and the
//! bindings: its patterns on `warren.events` and `warren.commands`, `warren.requeue` →
//! queue and `warren.dead` → parking queue (both keyed by the queue's name).

use serde_json::{Map, Value, json};

use crate::{
    broker::{
        names::{
            COMMANDS_EXCHANGE, DEAD_EXCHANGE, EVENTS_EXCHANGE, PARKING_DELIVERY_LIMIT,
            REQUEUE_EXCHANGE,
        },
        topology::{BindingDef, QueueDef, Topology},
    },
    config::{Ordering, SubscriptionSettings},
};

/// The prefix of every subscription's queue.
pub(crate) const QUEUE_PREFIX: &str = "warren.sub.";

/// The queue argument an ordered subscription's queue has.
pub(crate) const SINGLE_ACTIVE_CONSUMER: &str = "x-single-active-consumer";

/// What to do when a subscription's queue exists with other arguments than its settings ask
/// for: a queue's arguments cannot change in place, and `ordering` is one of them.
pub(crate) const ARGUMENTS_HINT: &str = "a subscription's queue keeps the arguments it was \
declared with, and `ordering` is one of them (x-single-active-consumer): either give the \
subscription a new name (a new queue; remove the old one once it has drained), or let the \
queue drain and delete it (`rabbitmqctl delete_queue <queue> -p <vhost>`; events published \
while it is gone do not reach it), then start warren again (docs/subscriptions.md, Ordering)";

fn queue(name: String, arguments: Value) -> QueueDef {
    QueueDef {
        name,
        durable: true,
        auto_delete: false,
        arguments: match arguments {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        vhost: None,
    }
}

fn binding(source: &str, destination: &str, routing_key: &str) -> BindingDef {
    BindingDef {
        source: source.to_owned(),
        destination: destination.to_owned(),
        destination_type: "queue".to_owned(),
        routing_key: routing_key.to_owned(),
        arguments: Map::new(),
        vhost: None,
    }
}

/// The queues (work queue, then parking queue) and bindings of one subscription. The work
/// queue's arguments are the built-in work queues' (`broker-topology.json`): quorum,
/// at-least-once dead-lettering, `reject-publish` overflow, a delivery limit of 20 against
/// poison messages that crash a worker before it settles.
///
/// An ordered subscription's queue (`ordering = "aggregate"`) also has
/// `x-single-active-consumer: true`: of the worker processes consuming it, the broker
/// delivers to one and keeps the others as standbys, so its per-aggregate order holds across
/// processes, and when the active one dies its unacked messages go back to the queue, ahead of
/// the rest, and on to the next consumer.
pub(crate) fn entities(sub: &SubscriptionSettings) -> (Vec<QueueDef>, Vec<BindingDef>) {
    let q = sub.queue();
    let mut work = json!({
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 20,
        "x-dead-letter-routing-key": q,
    });
    if sub.ordering == Ordering::Aggregate {
        work[SINGLE_ACTIVE_CONSUMER] = json!(true);
    }
    let queues = vec![
        queue(q.clone(), work),
        queue(
            sub.dead_queue(),
            json!({"x-queue-type": "quorum", "x-delivery-limit": PARKING_DELIVERY_LIMIT}),
        ),
    ];
    let mut bindings: Vec<BindingDef> = sub
        .events
        .iter()
        .map(|p| binding(EVENTS_EXCHANGE, &q, p))
        .chain(
            sub.commands
                .iter()
                .map(|p| binding(COMMANDS_EXCHANGE, &q, p)),
        )
        .collect();
    bindings.push(binding(REQUEUE_EXCHANGE, &q, &q));
    bindings.push(binding(DEAD_EXCHANGE, &sub.dead_queue(), &q));
    (queues, bindings)
}

/// Adds every subscription's queues and bindings to `topology` (declared, verified and
/// exported with it from then on).
pub(crate) fn add_to(topology: &mut Topology, subs: &[SubscriptionSettings]) {
    for sub in subs {
        let (queues, bindings) = entities(sub);
        topology.queues.extend(queues);
        topology.bindings.extend(bindings);
    }
}

/// Subscription queues among `live` (queue names on the broker) that no subscription in
/// `subs` has any more: left alone (they may hold messages), and worth a warning at start.
pub(crate) fn orphaned<'a>(
    live: impl IntoIterator<Item = &'a str>,
    subs: &[SubscriptionSettings],
) -> Vec<String> {
    live.into_iter()
        .filter(|n| n.starts_with(QUEUE_PREFIX) && !n.ends_with(".dead"))
        .filter(|n| !subs.iter().any(|s| s.queue() == *n))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> SubscriptionSettings {
        let mut s = SubscriptionSettings::new("billing", "http://127.0.0.1:9/hook");
        s.events = vec!["order.*".into(), "user.registered".into()];
        s.commands = vec!["invoice.render".into()];
        s
    }

    #[test]
    fn a_subscription_queue_is_wired_like_the_builtin_work_queues() {
        let builtin = Topology::builtin().expect("builtin topology");
        let email = builtin
            .queues
            .iter()
            .find(|q| q.name == "warren.email")
            .expect("email queue");
        let (queues, bindings) = entities(&sub());
        assert_eq!(queues[0].name, "warren.sub.billing");
        assert_eq!(queues[1].name, "warren.sub.billing.dead");
        // Same arguments as a built-in work queue but for its own dead-letter key.
        let mut want = email.arguments.clone();
        want.insert(
            "x-dead-letter-routing-key".into(),
            json!("warren.sub.billing"),
        );
        assert_eq!(queues[0].arguments, want);
        let email_dead = builtin
            .queues
            .iter()
            .find(|q| q.name == "warren.email.dead")
            .expect("email dead queue");
        assert_eq!(queues[1].arguments, email_dead.arguments);
        let keys: Vec<(&str, &str, &str)> = bindings
            .iter()
            .map(|b| {
                (
                    b.source.as_str(),
                    b.destination.as_str(),
                    b.routing_key.as_str(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("warren.events", "warren.sub.billing", "order.*"),
                ("warren.events", "warren.sub.billing", "user.registered"),
                ("warren.commands", "warren.sub.billing", "invoice.render"),
                ("warren.requeue", "warren.sub.billing", "warren.sub.billing"),
                (
                    "warren.dead",
                    "warren.sub.billing.dead",
                    "warren.sub.billing"
                ),
            ]
        );
    }

    #[test]
    fn an_ordered_subscriptions_queue_has_a_single_active_consumer() {
        let mut ordered = sub();
        ordered.ordering = Ordering::Aggregate;
        let (queues, _) = entities(&ordered);
        let (plain, _) = entities(&sub());
        let mut want = plain[0].arguments.clone();
        want.insert(SINGLE_ACTIVE_CONSUMER.into(), json!(true));
        assert_eq!(
            queues[0].arguments, want,
            "the same queue, one argument more"
        );
        assert_eq!(
            queues[1].arguments, plain[1].arguments,
            "the parking queue unchanged"
        );
    }

    #[test]
    fn added_queues_are_work_queues_and_route_their_patterns() {
        let mut t = Topology::builtin().expect("builtin topology");
        add_to(&mut t, &[sub()]);
        assert!(t.work_queues().contains(&"warren.sub.billing"));
        assert!(t.routes("warren.commands", "invoice.render"));
    }

    #[test]
    fn queues_of_removed_subscriptions_are_found() {
        let live = [
            "warren.email",
            "warren.sub.billing",
            "warren.sub.billing.dead",
            "warren.sub.old",
            "warren.sub.old.dead",
        ];
        assert_eq!(orphaned(live, &[sub()]), ["warren.sub.old"]);
    }
}
