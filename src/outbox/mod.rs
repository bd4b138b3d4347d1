//! The events outbox: what the HTTP front accepted while the broker could not confirm it.
//!
//! `POST /v1/events` and `POST /v1/jobs` publish with a confirm. When the broker cannot take
//! the message in time (down, blocked by an alarm, no confirm within `amqp.publish_timeout_ms`,
//! a nack), the message goes to the `event_outbox` table instead and the answer is still 202,
//! saying `"stored": "outbox"`. Only when neither the broker nor the database can take it is
//! the answer 503. A message the broker *returned* (no queue is bound for it) is not stored:
//! the broker is up and said no, and a retry would get the same answer.
//!
//! The relay ([`run_relay`], in every process that can store: the HTTP front, and every
//! process running consumers, whose runner sends `job.failed` through [`EventOutbox::send`])
//! is the shared one of [`relay`] (the saga commands use it too); it publishes stored rows in
//! insertion order and deletes each once confirmed:
//! - **Order per aggregate.** Rows with the same `aggregate_id` leave one at a time, in `seq`
//!   order; a row that cannot be published holds back the rows after it. Rows of different
//!   aggregates (and rows without one) are published concurrently. While an aggregate has rows
//!   waiting, this process stores its new events in the outbox too, behind them, instead of
//!   publishing them ahead.
//! - **Several instances.** On PostgreSQL a pass holds a transaction-scoped advisory lock, so
//!   one relay at a time publishes and their orders cannot interleave; the others skip the
//!   pass. SQLite is one process's database, and has one relay.
//! - **At least once, exactly once in effect.** A row is deleted after its confirm; a crash in
//!   between publishes it again with the same message id, as does a confirm that came after
//!   the HTTP front had given up waiting. Consumers drop repeats by message id (the inbox).
//!
//! A breaker keeps an outage cheap: after a failed publish, requests go straight to the outbox
//! for `outbox.breaker_ms` instead of each waiting for the broker to fail again; the relay
//! keeps probing and closes it once it publishes.

pub(crate) mod events;
pub(crate) mod relay;

pub(crate) use events::run_relay;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use entities::event_outbox;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};

use crate::{
    broker::{
        envelope::{Event, Meta, Outgoing},
        publisher::{PublishError, Publisher},
    },
    config::OutboxSettings,
    telemetry::Metrics,
};

/// Aggregates with waiting rows that one refresh reads at most.
const PENDING_LIMIT: u64 = 10_000;

/// Where an accepted message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// The broker confirmed it.
    Broker,
    /// The database holds it; the relay publishes it when the broker is back.
    Outbox,
}

impl Stored {
    /// `broker` or `outbox`, as the HTTP answer says.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stored::Broker => "broker",
            Stored::Outbox => "outbox",
        }
    }
}

/// Why a message was not accepted, or a relay pass failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The broker did not take it and the outbox was not an option (it is disabled, or the
    /// broker returned the message as unroutable).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Neither the broker nor the database could take it.
    #[error(
        "the broker could not take the message ({publish}) and the outbox could not store it: {store}"
    )]
    NotStored {
        /// Why the broker did not take it (or why it was not asked: the aggregate had
        /// messages waiting in the outbox, and publishing past them would break their order).
        publish: String,
        /// Why the database did not.
        #[source]
        store: DbErr,
    },
    /// The outbox could not be read or updated.
    #[error("events outbox: {context}: {source}")]
    Db {
        /// What the relay was doing.
        context: &'static str,
        /// The database error.
        #[source]
        source: DbErr,
    },
}

fn db(context: &'static str) -> impl FnOnce(DbErr) -> OutboxError {
    move |source| OutboxError::Db { context, source }
}

/// The events outbox and its relay. Cheap to clone.
#[derive(Clone)]
pub(crate) struct EventOutbox {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where senders store (the HTTP front's pool).
    db: DatabaseConnection,
    /// What the relay reads and deletes with (the relays' pool).
    relay_db: DatabaseConnection,
    publisher: Publisher,
    metrics: Metrics,
    settings: OutboxSettings,
    started: Instant,
    /// Until when (ms since `started`) requests bypass the broker; 0 when closed.
    breaker_until: AtomicU64,
    /// True while `pending` may hold aggregates (skips the lock on the hot path).
    any_pending: AtomicBool,
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

/// Aggregates with rows waiting in the outbox, as far as this process knows.
#[derive(Default)]
struct Pending {
    set: HashSet<String>,
    /// Stored since the relay's last refresh began (so the refresh does not forget them).
    recent: HashSet<String>,
}

impl std::fmt::Debug for EventOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventOutbox")
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl EventOutbox {
    /// An outbox whose senders store with `db` (the HTTP front's pool) and whose relay reads
    /// and deletes with `relay_db` (the relays' pool, `database.pools.relay`), so a burst of
    /// senders storing while the broker is away cannot hold up the relay. Publishes through
    /// `publisher`.
    pub(crate) fn new(
        db: DatabaseConnection,
        relay_db: DatabaseConnection,
        publisher: Publisher,
        metrics: Metrics,
        settings: OutboxSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                relay_db,
                publisher,
                metrics,
                settings,
                started: Instant::now(),
                breaker_until: AtomicU64::new(0),
                any_pending: AtomicBool::new(false),
                pending: Mutex::new(Pending::default()),
                wake: tokio::sync::Notify::new(),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn breaker_open(&self) -> bool {
        let until = self.inner.breaker_until.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    fn trip_breaker(&self) {
        let until = self
            .now_ms()
            .saturating_add(self.inner.settings.breaker_ms)
            .max(1);
        self.inner.breaker_until.store(until, Ordering::Relaxed);
    }

    fn close_breaker(&self) {
        self.inner.breaker_until.store(0, Ordering::Relaxed);
    }

    fn aggregate_pending(&self, aggregate: Option<&str>) -> bool {
        let Some(a) = aggregate else { return false };
        if !self.inner.any_pending.load(Ordering::Acquire) {
            return false;
        }
        let pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.set.contains(a) || pending.recent.contains(a)
    }

    /// Publishes `event` on `exchange` (routing key = its name) with the broker's confirm, or
    /// stores it in the outbox when the broker cannot take it. `Ok` means the message is safe.
    pub(crate) async fn send(
        &self,
        exchange: &'static str,
        event: &Event,
        meta: &Meta,
    ) -> Result<Stored, OutboxError> {
        let body = event.to_json();
        let enabled = self.inner.settings.enabled;
        if enabled && self.aggregate_pending(event.aggregate_id.as_deref()) {
            // Behind the aggregate's waiting events, never ahead of them.
            return match self.store(exchange, event, meta, &body).await {
                Ok(()) => Ok(Stored::Outbox),
                Err(store) => Err(OutboxError::NotStored {
                    publish: "not asked: earlier events of this aggregate wait in the outbox"
                        .to_owned(),
                    store,
                }),
            };
        }
        if enabled && self.breaker_open() {
            match self.store(exchange, event, meta, &body).await {
                Ok(()) => return Ok(Stored::Outbox),
                // The database is away too: the broker may be back.
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot store in the outbox; trying the broker.")
                }
            }
        }
        let publish = match self
            .inner
            .publisher
            .publish(
                exchange,
                &event.event_name,
                &body,
                self.inner.publisher.properties(exchange, event, meta),
            )
            .await
        {
            Ok(()) => return Ok(Stored::Broker),
            Err(e) => e,
        };
        if !enabled || matches!(publish, PublishError::Returned { .. }) {
            return Err(publish.into());
        }
        self.trip_breaker();
        match self.store(exchange, event, meta, &body).await {
            Ok(()) => {
                tracing::info!(event_id = %event.event_id, error = %publish,
                    "Broker could not take the message; stored in the outbox.");
                Ok(Stored::Outbox)
            }
            Err(store) => Err(OutboxError::NotStored {
                publish: publish.to_string(),
                store,
            }),
        }
    }

    /// [`send`](Self::send) for a message built with [`Outgoing`].
    pub(crate) async fn send_outgoing(
        &self,
        exchange: &'static str,
        message: &Outgoing,
    ) -> Result<Stored, OutboxError> {
        self.send(exchange, &message.event, &message.meta).await
    }

    async fn store(
        &self,
        exchange: &'static str,
        event: &Event,
        meta: &Meta,
        body: &[u8],
    ) -> Result<(), DbErr> {
        let row = event_outbox::ActiveModel {
            id: Set(meta.message_id),
            exchange: Set(exchange.to_owned()),
            routing_key: Set(event.event_name.clone()),
            aggregate_id: Set(event.aggregate_id.clone()),
            body: Set(String::from_utf8_lossy(body).into_owned()),
            correlation_id: Set(meta.correlation_id.clone()),
            request_id: Set(meta.request_id.clone()),
            traceparent: Set(meta.traceparent.clone()),
            created_at: Set(meta.timestamp),
            attempts: Set(0),
            last_error: Set(None),
            ..Default::default()
        };
        // A message id already waiting is the same message (a derived id: an idempotent retry,
        // a CloudEvent sent again): keep the one row.
        event_outbox::Entity::insert(row)
            .on_conflict_do_nothing_on([event_outbox::Column::Id])
            .exec_without_returning(&self.inner.db)
            .await?;
        if let Some(a) = &event.aggregate_id {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.set.insert(a.clone());
            pending.recent.insert(a.clone());
            self.inner.any_pending.store(true, Ordering::Release);
        }
        self.inner.metrics.event_outbox_stored();
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Rereads which aggregates have rows waiting, and sets the gauges.
    pub(crate) async fn refresh(&self) -> Result<(u64, Option<Duration>), OutboxError> {
        let conn = &self.inner.relay_db;
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recent
            .clear();
        let depth = event_outbox::Entity::find()
            .count(conn)
            .await
            .map_err(db("counting the outbox"))?;
        let (aggregates, oldest) = if depth == 0 {
            (Vec::new(), None)
        } else {
            let aggregates: Vec<String> = event_outbox::Entity::find()
                .select_only()
                .column(event_outbox::Column::AggregateId)
                .filter(event_outbox::Column::AggregateId.is_not_null())
                .distinct()
                .limit(PENDING_LIMIT)
                .into_tuple()
                .all(conn)
                .await
                .map_err(db("reading waiting aggregates"))?;
            let oldest = event_outbox::Entity::find()
                .order_by_asc(event_outbox::Column::Seq)
                .one(conn)
                .await
                .map_err(db("reading the outbox"))?
                .and_then(|r| (Utc::now() - r.created_at).to_std().ok());
            (aggregates, oldest)
        };
        {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
            let recent = std::mem::take(&mut pending.recent);
            pending.set = aggregates
                .into_iter()
                .chain(recent.iter().cloned())
                .collect();
            pending.recent = recent;
            self.inner
                .any_pending
                .store(!pending.set.is_empty(), Ordering::Release);
        }
        self.inner.metrics.set_event_outbox(
            i64::try_from(depth).unwrap_or(i64::MAX),
            oldest.map_or(0.0, |d| d.as_secs_f64()),
        );
        Ok((depth, oldest))
    }
}
