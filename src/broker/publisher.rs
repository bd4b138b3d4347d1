//! The confirming publisher: persistent, `mandatory` messages on confirm channels, each publish
//! bounded by a timeout.
//!
//! A publish succeeds only when the broker confirmed it *and* routed it to at least one queue.
//! A nack, a returned (unroutable) message, a blocked connection, a closed channel or a confirm
//! that does not come within the timeout is a [`PublishError`] the caller sees; the HTTP front
//! answers those with 503 and `Retry-After`, never 202.
//!
//! Throughput comes from keeping many confirms in flight: publishes are spread round-robin
//! over `publish_channels` confirm channels, and concurrent callers share each channel (lapin
//! pipelines them), so one disk sync on the broker confirms many messages at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{
    BasicProperties, Channel, Confirmation, ConnectionStatus,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::sync::Mutex;

use super::{
    Broker, BrokerError, cloudevent,
    envelope::{Event, Meta},
};
use crate::telemetry::Metrics;

/// Why a message was not safely accepted by the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No channel could be had (broker down, pool exhausted).
    #[error("broker unavailable: {0}")]
    Unavailable(#[from] BrokerError),
    /// The channel failed while publishing.
    #[error("publish failed on the channel: {0}")]
    Channel(#[source] lapin::Error),
    /// The broker refused the message (basic.nack).
    #[error("broker nacked the message")]
    Nacked,
    /// No queue is bound for this routing key (basic.return with `mandatory`).
    #[error("unroutable message returned by the broker: {code} {text}")]
    Returned {
        /// AMQP reply code (312 NO_ROUTE).
        code: u16,
        /// The broker's reason.
        text: String,
    },
    /// The broker blocked the connection (memory or disk alarm).
    #[error("broker connection is blocked (resource alarm)")]
    Blocked,
    /// No confirm within the configured timeout.
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
}

impl PublishError {
    /// A short, bounded label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            PublishError::Unavailable(_) => "unavailable",
            PublishError::Channel(_) => "channel_error",
            PublishError::Nacked => "nacked",
            PublishError::Returned { .. } => "returned",
            PublishError::Blocked => "blocked",
            PublishError::Timeout(_) => "timeout",
        }
    }
}

/// One confirm channel. The fast path reads the open channel under a short synchronous lock;
/// opening a channel (the slow path) is serialized by an async lock, so callers that find it
/// closed do not all open one.
struct Slot {
    current: std::sync::Mutex<Option<(Channel, ConnectionStatus)>>,
    opening: Mutex<()>,
}

impl Slot {
    fn open_channel(&self) -> Option<(Channel, ConnectionStatus)> {
        let guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|(ch, status)| ch.status().connected() && status.connected())
            .cloned()
    }

    /// Forgets the channel; true when there was one.
    fn forget(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
    }
}

/// A publisher over a set of confirm channels. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    slots: Vec<Slot>,
    next: AtomicUsize,
    timeout: Duration,
    metrics: Metrics,
    /// Whether messages carry the `ce-*` headers (always, but for the benchmark's switch).
    cloudevents: bool,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("channels", &self.inner.slots.len())
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl Publisher {
    /// A publisher with `channels` confirm channels, opened lazily.
    pub fn new(broker: Broker, channels: usize, timeout: Duration, metrics: Metrics) -> Self {
        let inner = Inner {
            broker,
            slots: Vec::new(),
            next: AtomicUsize::new(0),
            timeout,
            metrics,
            cloudevents: true,
        };
        Self::with_slots(inner, channels)
    }

    fn with_slots(mut inner: Inner, channels: usize) -> Self {
        inner.slots = (0..channels.max(1))
            .map(|_| Slot {
                current: std::sync::Mutex::new(None),
                opening: Mutex::new(()),
            })
            .collect();
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The broker this publisher uses.
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// The metrics it reports to.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    async fn channel(&self, slot: &Slot) -> Result<(Channel, ConnectionStatus), PublishError> {
        if let Some(open) = slot.open_channel() {
            return Ok(open);
        }
        let _opening = slot.opening.lock().await;
        // Another caller may have opened it while this one waited.
        if let Some(open) = slot.open_channel() {
            return Ok(open);
        }
        if slot.forget() {
            self.inner.metrics.channels(-1);
        }
        let (ch, status) = self.inner.broker.channel_with_status().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| PublishError::Unavailable(BrokerError::Channel(e)))?;
        self.inner.metrics.channels(1);
        *slot.current.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((ch.clone(), status.clone()));
        Ok((ch, status))
    }

    /// Publishes one message and waits for the broker's confirm, within the timeout.
    #[tracing::instrument(skip_all, fields(exchange, routing_key, message_id = ?props.message_id()))]
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let result = tokio::time::timeout(
            self.inner.timeout,
            self.publish_inner(exchange, routing_key, payload, props),
        )
        .await
        .unwrap_or(Err(PublishError::Timeout(self.inner.timeout)));
        let outcome = match &result {
            Ok(()) => "confirmed",
            Err(e) => e.outcome(),
        };
        self.inner.metrics.published(exchange, outcome);
        if let Err(e) = &result {
            tracing::warn!(exchange, routing_key, error = %e, "Publish failed.");
        }
        result
    }

    /// Publishes `message` on `exchange` with `routing_key` (its event name when `None`) and
    /// waits for the confirm.
    pub async fn send(
        &self,
        exchange: &str,
        routing_key: Option<&str>,
        message: &super::envelope::Outgoing,
    ) -> Result<(), PublishError> {
        let key = routing_key.unwrap_or(message.routing_key());
        let props = self.properties(exchange, &message.event, &message.meta);
        self.publish(exchange, key, &message.body(), props).await
    }

    /// The AMQP properties of `event` published on `exchange`: the envelope's ([`Meta`]) and
    /// its CloudEvents `ce-*` headers ([`cloudevent`]), whose `source` names this
    /// publisher's vhost and `exchange`.
    pub fn properties(&self, exchange: &str, event: &Event, meta: &Meta) -> BasicProperties {
        let props = meta.properties();
        if !self.inner.cloudevents {
            return props;
        }
        let attrs = cloudevent::Attributes::of(
            event,
            || event.event_id.to_string(),
            || cloudevent::source(self.inner.broker.vhost(), exchange),
        );
        cloudevent::with_headers(props, &attrs)
    }

    /// The properties of a stored body (an outbox row) published on `exchange`: those of
    /// [`properties`](Self::properties) when the body is warren's envelope, else `meta`'s
    /// alone.
    pub fn stored_properties(&self, exchange: &str, body: &[u8], meta: &Meta) -> BasicProperties {
        match serde_json::from_slice::<Event>(body) {
            Ok(event) => self.properties(exchange, &event, meta),
            Err(_) => meta.properties(),
        }
    }

    /// Leaves the `ce-*` headers off every message (the benchmark's switch, to measure what
    /// they cost the broker; not a setting: warren's messages always carry them).
    #[doc(hidden)]
    pub fn without_cloudevents(self) -> Self {
        let inner = Inner {
            broker: self.inner.broker.clone(),
            slots: Vec::new(),
            next: AtomicUsize::new(0),
            timeout: self.inner.timeout,
            metrics: self.inner.metrics.clone(),
            cloudevents: false,
        };
        Self::with_slots(inner, self.inner.slots.len())
    }

    async fn publish_inner(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        let slot = &self.inner.slots[i];
        let (ch, status) = self.channel(slot).await?;
        if status.blocked() {
            return Err(PublishError::Blocked);
        }
        let options = BasicPublishOptions {
            // mandatory: an event no queue is bound for comes back as basic.return and is an
            // error, instead of vanishing with an ack.
            mandatory: true,
            immediate: false,
        };
        let confirm = match ch
            .basic_publish(exchange.into(), routing_key.into(), options, payload, props)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if slot.forget() {
                    self.inner.metrics.channels(-1);
                }
                return Err(PublishError::Channel(e));
            }
        };
        match confirm.await.map_err(PublishError::Channel)? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Returned {
                code: returned.reply_code,
                text: returned.reply_text.as_str().to_owned(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }

    /// Closes the publisher's channels.
    pub async fn close(&self) {
        for slot in &self.inner.slots {
            let taken = slot
                .current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some((ch, _)) = taken {
                self.inner.metrics.channels(-1);
                let _ = ch.close(200, "shutdown".into()).await;
            }
        }
    }
}
