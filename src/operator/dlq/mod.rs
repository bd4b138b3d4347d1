//! Dead-letter operator tools: count, peek, replay and purge the messages parked in each work
//! queue's parking queue `Q.dead`, and keep `failed_jobs` in step (`warren dlq ...` and the
//! `/v1/dlq` and `/v1/failed-jobs` endpoints).
//!
//! One pass (show, replay, purge) works on one channel:
//! - it takes at most the messages parked when it started, with `basic.get` (`no_ack: false`;
//!   the count is the first `basic.get-ok`'s, see `Scan`), so a replayed message that fails
//!   again and comes back to `Q.dead` during the pass is not taken a second time: no loop;
//! - a message the filter does not select stays unacked until the end of the pass, then goes
//!   back with `basic.nack(requeue)`; held, it cannot be fetched again in the same pass (a
//!   quorum queue hands requeued messages out first);
//! - replay publishes the same body and properties to `warren.requeue` with the work queue as
//!   routing key (it routes to exactly that queue), `x-warren-attempt` reset to 1 and
//!   `x-warren-replayed-at` set, waits for the publisher confirm, and only then acks the parked
//!   copy: a replay loses nothing (a crash in between leaves a duplicate, which the inbox
//!   absorbs). A publish that fails puts that message back and stops the pass with an error
//!   that says how many were replayed;
//! - purge acks the selected messages (they are gone for good);
//! - every replayed or purged message's `parked` `failed_jobs` rows (same queue and message
//!   id) become `retried` or `purged`. The rows are looked up before the message moves, so a
//!   replayed message that is parked again at once keeps its new row `parked`.
//!
//! The age filter reads `x-warren-failed-at`; a message without it (parked by the broker
//! itself, e.g. after `x-delivery-limit`) never matches an age filter.

mod pass;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use sea_orm::DatabaseConnection;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    broker::{
        Broker, BrokerError,
        names::{
            H_ATTEMPT, H_DELIVERY_COUNT, H_ERROR, H_FAILED_AT, H_ORIGINAL_EXCHANGE,
            H_ORIGINAL_ROUTING_KEY, H_REASON, H_REPLAYED_AT, amqp_json, header_int, header_str,
        },
        publisher::{PublishError, Publisher},
        topology::Topology,
    },
    store::StoreError,
};
use pass::{Action, Scan, close, depth, release};

/// Longest body [`Dlq::show`] returns, in characters.
pub const MAX_BODY_CHARS: usize = 4096;

/// Selected messages moved together: one `failed_jobs` lookup, their publishes in flight
/// together, then their acks.
const BATCH: usize = 256;
/// Replayed messages awaiting their publisher confirms at once.
const IN_FLIGHT: usize = 64;
/// Pause between a pass's last ack and closing its channel (see `pass.rs`).
const SETTLE_GRACE: Duration = Duration::from_millis(300);

/// Ids of the messages an operation has moved so far.
pub type MovedIds = std::collections::HashSet<Uuid>;

/// Errors of the dead-letter tools, each naming the queue it happened on.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The name is not a work queue of the topology.
    #[error("{queue:?} is not a work queue of the topology; work queues: {known}")]
    UnknownQueue {
        /// The name given.
        queue: String,
        /// The work queues, comma-separated.
        known: String,
    },
    /// No channel could be had.
    #[error("cannot reach the broker for {queue}: {source}")]
    Broker {
        /// The queue being worked on.
        queue: String,
        /// Why.
        source: Box<BrokerError>,
    },
    /// A channel operation failed (a missing queue closes the channel with 404).
    #[error("{doing} on {queue} failed: {source}")]
    Amqp {
        /// The AMQP method.
        doing: &'static str,
        /// The queue being worked on.
        queue: String,
        /// lapin's error.
        source: lapin::Error,
    },
    /// A replayed message was not confirmed by the broker; it stays parked.
    #[error("publishing message {message_id} to {exchange} with key {queue} failed: {source}")]
    Publish {
        /// The message id (`-` when it has none).
        message_id: String,
        /// The exchange it went to.
        exchange: &'static str,
        /// The work queue (the routing key).
        queue: String,
        /// The publisher's error.
        source: Box<PublishError>,
    },
    /// Reading `failed_jobs` failed; the message stays parked.
    #[error("{queue}: {source}")]
    Store {
        /// The work queue.
        queue: String,
        /// The database error.
        source: StoreError,
    },
    /// A replay or purge stopped part-way.
    #[error("{action} {done} message(s) from {dead_queue}, then stopped: {source}")]
    Stopped {
        /// `replayed` or `purged`.
        action: &'static str,
        /// How many messages were replayed or purged before it stopped.
        done: usize,
        /// The parking queue.
        dead_queue: String,
        /// What stopped it.
        source: Box<DlqError>,
    },
}

/// Which parked messages a pass selects. Everything by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only the message(s) with this `message_id`.
    pub message_id: Option<Uuid>,
    /// Only messages with one of these `message_id`s (a selection).
    pub message_ids: Option<std::collections::HashSet<Uuid>>,
    /// Only messages parked with this `x-warren-reason` (`exhausted`, `invalid`,
    /// `undecodable`).
    pub reason: Option<String>,
    /// Only messages parked at least this long ago (by `x-warren-failed-at`).
    pub older_than: Option<Duration>,
    /// Only messages parked, and not replayed, at or after this instant: an operation that
    /// runs in pages sets its start here, so a message it replayed that fails again and comes
    /// back is not taken a second time by a later page.
    pub parked_before: Option<DateTime<Utc>>,
    /// At most this many messages.
    pub limit: Option<usize>,
}

fn header_time(props: &BasicProperties, name: &str) -> Option<DateTime<Utc>> {
    header_str(props, name)
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

impl Filter {
    /// Whether the filter selects every parked message (the limit aside).
    pub fn selects_all(&self) -> bool {
        self.message_id.is_none()
            && self.message_ids.is_none()
            && self.reason.is_none()
            && self.older_than.is_none()
            && self.parked_before.is_none()
    }

    /// Whether a parked message with these properties is selected (the limit aside), at `now`.
    pub fn matches(&self, props: &BasicProperties, now: DateTime<Utc>) -> bool {
        if let Some(id) = self.message_id
            && message_uuid(props) != Some(id)
        {
            return false;
        }
        if let Some(ids) = &self.message_ids
            && !message_uuid(props).is_some_and(|id| ids.contains(&id))
        {
            return false;
        }
        if let Some(reason) = &self.reason
            && header_str(props, H_REASON).as_deref() != Some(reason.as_str())
        {
            return false;
        }
        if let Some(before) = self.parked_before
            && (header_time(props, H_FAILED_AT).is_some_and(|t| t >= before)
                || header_time(props, H_REPLAYED_AT).is_some_and(|t| t >= before))
        {
            return false;
        }
        if let Some(age) = self.older_than {
            let Some(failed_at) = header_time(props, H_FAILED_AT) else {
                return false;
            };
            let Ok(age) = chrono::TimeDelta::from_std(age) else {
                return false;
            };
            if now.signed_duration_since(failed_at) < age {
                return false;
            }
        }
        true
    }
}

/// One work queue and how many messages are parked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParkedCount {
    /// The work queue (`warren.email`).
    pub queue: String,
    /// Its parking queue (`warren.email.dead`).
    pub dead_queue: String,
    /// Messages ready in the parking queue (exact).
    pub parked: u32,
}

/// A parked message as [`Dlq::show`] sees it, without removing it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParkedMessage {
    /// `message_id` property.
    pub message_id: Option<String>,
    /// `type` property (event or command name).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `x-warren-attempt`: the attempt that failed last.
    pub attempt: Option<i64>,
    /// `x-warren-reason`: `exhausted`, `invalid` or `undecodable`.
    pub reason: Option<String>,
    /// `x-warren-error`.
    pub error: Option<String>,
    /// `x-warren-failed-at` (RFC 3339).
    pub failed_at: Option<String>,
    /// `x-warren-replayed-at`, when it was replayed before.
    pub replayed_at: Option<String>,
    /// `x-warren-original-exchange`.
    pub original_exchange: Option<String>,
    /// `x-warren-original-routing-key`.
    pub original_routing_key: Option<String>,
    /// Every header, as JSON (byte arrays as lossy UTF-8).
    pub headers: serde_json::Map<String, serde_json::Value>,
    /// The body, lossily as UTF-8, at most [`MAX_BODY_CHARS`] characters.
    pub body: String,
    /// Whether `body` was cut.
    pub body_truncated: bool,
}

impl ParkedMessage {
    fn from_delivery(delivery: &Delivery) -> Self {
        let p = &delivery.properties;
        let text = String::from_utf8_lossy(&delivery.data);
        let body_truncated = text.chars().nth(MAX_BODY_CHARS).is_some();
        Self {
            message_id: p.message_id().as_ref().map(|m| m.as_str().to_owned()),
            kind: p.kind().as_ref().map(|k| k.as_str().to_owned()),
            attempt: header_int(p, H_ATTEMPT),
            reason: header_str(p, H_REASON),
            error: header_str(p, H_ERROR),
            failed_at: header_str(p, H_FAILED_AT),
            replayed_at: header_str(p, H_REPLAYED_AT),
            original_exchange: header_str(p, H_ORIGINAL_EXCHANGE),
            original_routing_key: header_str(p, H_ORIGINAL_ROUTING_KEY),
            headers: p
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), amqp_json(v)))
                        .collect()
                })
                .unwrap_or_default(),
            body: text.chars().take(MAX_BODY_CHARS).collect(),
            body_truncated,
        }
    }
}

/// What [`Dlq::show`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peek {
    /// The work queue.
    pub queue: String,
    /// Its parking queue.
    pub dead_queue: String,
    /// Messages parked when the peek started.
    pub parked: u32,
    /// How many of them the filter selects (the whole queue is read to count them unless
    /// the filter selects everything).
    pub matched: u32,
    /// The selected messages, oldest first, at most the limit.
    pub messages: Vec<ParkedMessage>,
}

/// The dead-letter service over the broker, the confirming publisher and the database.
#[derive(Debug, Clone)]
pub struct Dlq {
    broker: Broker,
    publisher: Publisher,
    db: DatabaseConnection,
    topology: Arc<Topology>,
}

impl Dlq {
    /// A service over these parts; `topology` names the work queues.
    pub fn new(
        broker: Broker,
        publisher: Publisher,
        db: DatabaseConnection,
        topology: Arc<Topology>,
    ) -> Self {
        Self {
            broker,
            publisher,
            db,
            topology,
        }
    }

    /// The work queue `name` names: a work queue of the topology, or its parking queue
    /// (`warren.email.dead` means `warren.email`).
    pub fn work_queue(&self, name: &str) -> Result<String, DlqError> {
        let work = self.topology.work_queues();
        if work.contains(&name) {
            return Ok(name.to_owned());
        }
        if let Some(base) = name.strip_suffix(".dead")
            && work.contains(&base)
        {
            return Ok(base.to_owned());
        }
        Err(DlqError::UnknownQueue {
            queue: name.to_owned(),
            known: work.join(", "),
        })
    }

    /// The work queues of the topology (each has a parking queue).
    pub fn work_queues(&self) -> Vec<String> {
        self.topology
            .work_queues()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// The exact number of parked messages of every work queue.
    pub async fn list(&self) -> Result<Vec<ParkedCount>, DlqError> {
        let channel = self.channel("dead-letter queues").await?;
        let mut out = Vec::new();
        let mut result = Ok(());
        for queue in self.topology.work_queues() {
            let dead_queue = dead_queue(queue);
            match depth(&channel, &dead_queue).await {
                Ok(parked) => out.push(ParkedCount {
                    queue: queue.to_owned(),
                    dead_queue,
                    parked,
                }),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        close(&channel).await;
        result.map(|()| out)
    }

    /// Up to `limit` parked messages of `queue` that `filter` selects (its own limit aside),
    /// without removing any.
    pub async fn show(&self, queue: &str, filter: &Filter, limit: usize) -> Result<Peek, DlqError> {
        let queue = self.work_queue(queue)?;
        let dead_queue = dead_queue(&queue);
        let channel = self.channel(&dead_queue).await?;
        let result = async {
            let now = Utc::now();
            let mut scan = Scan::new(&channel, &dead_queue);
            let mut held = Vec::new();
            let mut messages = Vec::new();
            let mut matched = 0u32;
            // Counting the matches of a narrowing filter takes the whole queue.
            let count_all = !filter.selects_all();
            let scanned = async {
                // The first get runs even with limit 0: it gives the count.
                while !(scan.started() && messages.len() >= limit && !count_all) {
                    let Some(delivery) = scan.next().await? else {
                        break;
                    };
                    if filter.matches(&delivery.properties, now) {
                        matched += 1;
                        if messages.len() < limit {
                            messages.push(ParkedMessage::from_delivery(&delivery));
                        }
                    }
                    held.push(delivery.delivery_tag);
                }
                Ok::<(), DlqError>(())
            }
            .await;
            release(&channel, &dead_queue, &held).await;
            scanned.map(|()| Peek {
                queue: queue.clone(),
                dead_queue: dead_queue.clone(),
                parked: scan.parked,
                matched: if count_all { matched } else { scan.parked },
                messages,
            })
        }
        .await;
        close(&channel).await;
        result
    }

    /// How many parked messages of `queue` the filter selects (its limit aside).
    pub async fn count(&self, queue: &str, filter: &Filter) -> Result<u32, DlqError> {
        self.show(queue, filter, 0).await.map(|p| p.matched)
    }

    /// Moves the parked messages of `queue` that `filter` selects back to `queue`, attempt
    /// count reset to 1, `x-warren-replayed-at` set, confirmed before the parked copy is
    /// removed. Returns how many were replayed.
    pub async fn replay(&self, queue: &str, filter: &Filter) -> Result<usize, DlqError> {
        self.replay_tracked(queue, filter, &mut MovedIds::new())
            .await
    }

    /// [`Dlq::replay`] as one page of a longer operation: a message whose id is in `moved`
    /// (moved earlier by the same operation, and handed back by the broker since) is removed
    /// without being replayed again or counted; the ids this pass moves are added.
    #[tracing::instrument(skip(self, moved), fields(replayed))]
    pub async fn replay_tracked(
        &self,
        queue: &str,
        filter: &Filter,
        moved: &mut MovedIds,
    ) -> Result<usize, DlqError> {
        let work_queue = self.work_queue(queue)?;
        let metrics = self.publisher.metrics();
        let n = match self.pass(queue, filter, Action::Replay, moved).await {
            Ok(n) => n,
            Err(e) => {
                if let DlqError::Stopped { done, .. } = &e {
                    metrics.replayed(&work_queue, *done as u64);
                }
                return Err(e);
            }
        };
        metrics.replayed(&work_queue, n as u64);
        tracing::Span::current().record("replayed", n);
        tracing::info!(replayed = n, "Replayed parked messages.");
        Ok(n)
    }

    /// Deletes the parked messages of `queue` that `filter` selects, for good. Returns how
    /// many were purged.
    pub async fn purge(&self, queue: &str, filter: &Filter) -> Result<usize, DlqError> {
        self.purge_tracked(queue, filter, &mut MovedIds::new())
            .await
    }

    /// [`Dlq::purge`] as one page of a longer operation (see [`Dlq::replay_tracked`]).
    #[tracing::instrument(skip(self, moved), fields(purged))]
    pub async fn purge_tracked(
        &self,
        queue: &str,
        filter: &Filter,
        moved: &mut MovedIds,
    ) -> Result<usize, DlqError> {
        let n = self.pass(queue, filter, Action::Purge, moved).await?;
        tracing::Span::current().record("purged", n);
        tracing::info!(purged = n, "Purged parked messages.");
        Ok(n)
    }

    async fn channel(&self, what: &str) -> Result<Channel, DlqError> {
        self.broker
            .channel()
            .await
            .map_err(|source| DlqError::Broker {
                queue: what.to_owned(),
                source: Box::new(source),
            })
    }
}

impl DlqError {
    /// Whether trying again may succeed: the broker was unreachable, a channel operation
    /// failed, or a publish was not confirmed (not an unknown queue or a database error).
    pub fn transient(&self) -> bool {
        match self {
            DlqError::Stopped { source, .. } => source.transient(),
            DlqError::Broker { .. } | DlqError::Amqp { .. } | DlqError::Publish { .. } => true,
            DlqError::UnknownQueue { .. } | DlqError::Store { .. } => false,
        }
    }

    /// How many messages a replay or purge moved before it stopped (0 for other errors).
    pub fn done(&self) -> usize {
        match self {
            DlqError::Stopped { done, .. } => *done,
            _ => 0,
        }
    }
}

/// The parking queue of work queue `queue`.
pub fn dead_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The properties of a replayed message: the parked message's, with `x-warren-attempt` = 1,
/// `x-warren-replayed-at` = `now`, and the broker's `x-delivery-count` dropped; every other
/// header (the original exchange and routing key, the last error) is kept.
pub fn replay_properties(props: &BasicProperties, now: DateTime<Utc>) -> BasicProperties {
    let mut headers: std::collections::BTreeMap<ShortString, AMQPValue> = props
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    headers.remove(H_DELIVERY_COUNT);
    headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(1));
    headers.insert(
        H_REPLAYED_AT.into(),
        AMQPValue::LongString(LongString::from(now.to_rfc3339())),
    );
    props.clone().with_headers(FieldTable::from(headers))
}

/// Parses a duration such as `30s`, `10m`, `2h`, `1d` or `1h30m` (units `ms`, `s`, `m`, `h`,
/// `d`; a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_owned());
    let s = text.trim();
    if s.is_empty() {
        return Err(err());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3_600).ok_or_else(err)?),
            "d" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(err)?),
            _ => return Err(err()),
        };
        total = total.checked_add(part).ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A duration that [`parse_duration`] cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: use a number with a unit, e.g. 30s, 10m, 2h, 1d or 1h30m")]
pub struct DurationError(pub String);

fn message_uuid(props: &BasicProperties) -> Option<Uuid> {
    props
        .message_id()
        .as_ref()
        .and_then(|m| m.as_str().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(message_id: Option<&str>, failed_at: Option<DateTime<Utc>>) -> BasicProperties {
        let mut headers = FieldTable::default();
        if let Some(t) = failed_at {
            headers.insert(
                H_FAILED_AT.into(),
                AMQPValue::LongString(t.to_rfc3339().into()),
            );
        }
        let mut p = BasicProperties::default().with_headers(headers);
        if let Some(m) = message_id {
            p = p.with_message_id(m.into());
        }
        p
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "m", "10x", "1.5h", "-1s", "h10", "10 m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_filter_selects_by_id_and_age() {
        let now = Utc::now();
        let id = Uuid::now_v7();
        let old = props(
            Some(&id.to_string()),
            Some(now - chrono::TimeDelta::minutes(20)),
        );
        let young = props(
            Some("not-a-uuid"),
            Some(now - chrono::TimeDelta::minutes(1)),
        );
        let undated = props(None, None);
        let all = Filter::default();
        assert!(all.matches(&old, now) && all.matches(&young, now) && all.matches(&undated, now));
        let by_id = Filter {
            message_id: Some(id),
            ..Filter::default()
        };
        assert!(by_id.matches(&old, now));
        assert!(!by_id.matches(&young, now) && !by_id.matches(&undated, now));
        let by_age = Filter {
            older_than: Some(Duration::from_secs(600)),
            ..Filter::default()
        };
        assert!(by_age.matches(&old, now));
        assert!(!by_age.matches(&young, now));
        assert!(!by_age.matches(&undated, now), "no failed-at, no age match");
    }

    #[test]
    fn replay_resets_the_attempt_marks_the_replay_and_keeps_the_rest() {
        let mut headers = FieldTable::default();
        headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(3));
        headers.insert(H_DELIVERY_COUNT.into(), AMQPValue::LongLongInt(2));
        headers.insert(
            H_ORIGINAL_ROUTING_KEY.into(),
            AMQPValue::LongString("user.registered".into()),
        );
        let parked = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_type("user.registered".into())
            .with_headers(headers);
        let now = Utc::now();
        let p = replay_properties(&parked, now);
        assert_eq!(header_int(&p, H_ATTEMPT), Some(1));
        assert_eq!(header_str(&p, H_REPLAYED_AT), Some(now.to_rfc3339()));
        assert_eq!(
            header_str(&p, H_ORIGINAL_ROUTING_KEY).as_deref(),
            Some("user.registered")
        );
        assert_eq!(header_int(&p, H_DELIVERY_COUNT), None);
        assert_eq!(p.message_id(), parked.message_id());
        assert_eq!(p.kind(), parked.kind());
    }
}
