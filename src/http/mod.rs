//! The HTTP front (warp): publish events, run the sync dispatcher, the dead-letter tools
//! (`/v1/dlq`, `/v1/failed-jobs`), health, readiness, metrics.
//!
//! Shape: one filter parses a request into a [`Route`] (or a rejection), then one function
//! answers it. Wrapping both is the monitor: it gives every response `X-Request-ID` (echoed
//! or generated) and `X-Execution-Time`, and records `http_requests_total` and
//! `http_request_duration_seconds` by route template, never by raw path.
//!
//! Access: every `/v1` route needs a bearer token with a scope ([`auth`]): `publish` for the
//! publish routes, `read` for the `GET`s, `admin` for the operator actions. The publish routes
//! are also rate-limited per caller and bounded in flight ([`limits`]).

pub mod auth;
pub mod console;
pub mod error;
pub mod limits;
pub mod sagas;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};
use tracing::Instrument;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warp::{
    Filter, Reply,
    filters::BoxedFilter,
    http::{HeaderValue, Method, StatusCode},
    reply::Response,
};

use crate::{
    broker::{
        envelope::{Event, Meta},
        names::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE},
    },
    config::{Scope, Settings},
    dispatch::Dispatcher,
    operator::{Operation, Operator, dlq},
    store::{self, ListQuery},
    telemetry::Metrics,
};
pub use error::ApiError;

/// Longest accepted event name.
pub const MAX_EVENT_NAME: usize = 128;
/// Largest accepted request head: the names and values of all headers together, in bytes.
/// Beyond it the answer is 431 `headers_too_large`. (hyper itself refuses heads beyond about
/// 400 KiB, or with more than 100 headers, with a bare 431 before warren sees them.)
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// Settings, loaded once.
    pub settings: Arc<Settings>,
    /// The events service: publishes with a confirm, and keeps what the broker cannot
    /// confirm in the events outbox (every event warren publishes for itself goes through it).
    pub events: crate::outbox::EventOutbox,
    /// The read service (audit log, notifications, failed jobs, orders, known jobs).
    pub reads: crate::reads::Reads,
    /// The health checks behind `/readyz`.
    pub health: crate::health::Health,
    /// In-process listeners for `?mode=sync`.
    pub dispatcher: Arc<Dispatcher>,
    /// Metrics.
    pub metrics: Metrics,
    /// The operator service: dead-letter operations, failed-job retry, interventions, the
    /// audit log.
    pub operator: Operator,
    /// The saga engine.
    pub sagas: crate::saga::Sagas,
    /// Caps the `system.slow_request` events per second.
    pub slow_events: Arc<SlowEvents>,
    /// The bearer tokens (as digests) and their scopes.
    pub tokens: Arc<auth::Tokens>,
    /// Rate and in-flight limits of the publish routes.
    pub limits: Arc<limits::Limits>,
    /// The operator console's overview.
    pub console: crate::console::Console,
}

/// A per-second budget of `system.slow_request` events: under overload every request is
/// slow, and one event per request would add to the load that made them slow.
#[derive(Debug, Default)]
pub struct SlowEvents {
    second: std::sync::atomic::AtomicU64,
    used: std::sync::atomic::AtomicU32,
}

impl SlowEvents {
    /// Whether one more event fits in this second's budget of `per_sec`.
    pub fn take(&self, per_sec: u32) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        if self.second.swap(now, Relaxed) != now {
            self.used.store(0, Relaxed);
        }
        self.used.fetch_add(1, Relaxed) < per_sec
    }
}

/// Query of `POST /v1/events/{name}`.
#[derive(Debug, Deserialize, Default)]
pub struct EventQuery {
    /// `async` (default: publish and answer 202) or `sync` (run in-process listeners).
    pub mode: Option<String>,
    /// The entity the event is about.
    pub aggregate_id: Option<String>,
}

/// Default and largest `?limit=` of `GET /v1/dlq/{queue}`.
pub const DLQ_SHOW_LIMIT: (usize, usize) = (20, 200);
/// Default and largest `?limit=` of `GET /v1/failed-jobs`.
pub const FAILED_JOBS_LIMIT: (u64, u64) = (50, 500);

/// Query of `GET /v1/dlq/{queue}`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DlqShowQuery {
    /// How many messages to show (default 20, at most 200).
    pub limit: Option<usize>,
    /// Only the message with this id.
    pub message_id: Option<Uuid>,
    /// Only messages parked for this reason (`exhausted`, `invalid`, `undecodable`).
    pub reason: Option<String>,
    /// Only messages parked at least this long ago (`30s`, `10m`, `2h`, `1d`).
    pub older_than: Option<String>,
}

/// Optional JSON body of `POST /v1/dlq/{queue}/replay` and `.../purge`; no body (or `{}`)
/// selects every parked message. Unknown fields are refused, so a misspelt filter cannot
/// widen a purge to everything.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DlqActionBody {
    /// Only the message with this id.
    pub message_id: Option<Uuid>,
    /// Only messages parked at least this many seconds ago.
    pub older_than_secs: Option<u64>,
    /// Only messages parked for this reason (`exhausted`, `invalid`, `undecodable`).
    pub reason: Option<String>,
    /// At most this many messages.
    pub limit: Option<usize>,
}

/// Query of `GET /v1/failed-jobs`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FailedJobsQuery {
    /// Only rows of this work queue.
    pub queue: Option<String>,
    /// Only rows with this status: `parked`, `retried` or `purged`.
    pub status: Option<String>,
    /// How many rows (default 50, at most 500).
    pub limit: Option<u64>,
}

/// A parsed request.
#[derive(Debug)]
pub enum Route {
    /// `POST /v1/events/{name}`.
    PublishEvent {
        /// Event name as in the path.
        name: String,
        /// Query parameters.
        query: EventQuery,
        /// Authorization header.
        auth: Option<String>,
        /// Content-Type header.
        content_type: Option<String>,
        /// Incoming W3C trace context.
        traceparent: Option<String>,
        /// The raw body.
        body: Bytes,
    },
    /// `POST /v1/jobs/{name}`.
    EnqueueJob {
        /// Job (command) name as in the path.
        name: String,
        /// Authorization header.
        auth: Option<String>,
        /// Content-Type header.
        content_type: Option<String>,
        /// Incoming W3C trace context.
        traceparent: Option<String>,
        /// The raw body.
        body: Bytes,
    },
    /// `GET /v1/events`: the audit log.
    ListEvents {
        /// Authorization header.
        auth: Option<String>,
        /// Filters.
        query: ListQuery,
    },
    /// `GET /v1/notifications`.
    ListNotifications {
        /// Authorization header.
        auth: Option<String>,
        /// Filters.
        query: ListQuery,
    },
    /// `GET /v1/dlq`: parked messages per work queue.
    DlqList {
        /// Authorization header.
        auth: Option<String>,
    },
    /// `GET /v1/dlq/{queue}`: peek at parked messages.
    DlqShow {
        /// The work queue.
        queue: String,
        /// Query parameters.
        query: DlqShowQuery,
        /// Authorization header.
        auth: Option<String>,
    },
    /// `POST /v1/dlq/{queue}/replay`.
    DlqReplay {
        /// The work queue.
        queue: String,
        /// Authorization header.
        auth: Option<String>,
        /// The optional JSON filter.
        body: Bytes,
    },
    /// `POST /v1/dlq/{queue}/purge`.
    DlqPurge {
        /// The work queue.
        queue: String,
        /// Authorization header.
        auth: Option<String>,
        /// The optional JSON filter.
        body: Bytes,
    },
    /// `GET /v1/failed-jobs`.
    FailedJobs {
        /// Query parameters.
        query: FailedJobsQuery,
        /// Authorization header.
        auth: Option<String>,
    },
    /// `POST /v1/failed-jobs/{id}/retry`.
    RetryFailedJob {
        /// The `failed_jobs` row id.
        id: Uuid,
        /// Authorization header.
        auth: Option<String>,
    },
    /// `POST /v1/orders`.
    CreateOrder {
        /// Authorization header.
        auth: Option<String>,
        /// Content-Type header.
        content_type: Option<String>,
        /// Incoming W3C trace context.
        traceparent: Option<String>,
        /// The raw body.
        body: Bytes,
    },
    /// `GET /v1/orders/{order_no}`.
    GetOrder {
        /// The order number.
        order_no: String,
        /// Authorization header.
        auth: Option<String>,
    },
    /// `GET /v1/sagas`.
    ListSagas {
        /// Filters.
        query: sagas::SagaListQuery,
        /// Authorization header.
        auth: Option<String>,
    },
    /// `GET /v1/sagas/{id}`.
    GetSaga {
        /// The saga id.
        id: Uuid,
        /// Authorization header.
        auth: Option<String>,
    },
    /// `GET /v1/interventions`.
    ListInterventions {
        /// Filters.
        query: sagas::InterventionsQuery,
        /// Authorization header.
        auth: Option<String>,
    },
    /// `POST /v1/interventions/{id}/retry`.
    RetryIntervention {
        /// The intervention id.
        id: Uuid,
        /// Authorization header.
        auth: Option<String>,
        /// Optional `{"note": ...}`.
        body: Bytes,
    },
    /// `POST /v1/interventions/{id}/resolve`.
    ResolveIntervention {
        /// The intervention id.
        id: Uuid,
        /// Authorization header.
        auth: Option<String>,
        /// `{"note": ...}`.
        body: Bytes,
    },
    /// `POST /v1/admin/seed`.
    Seed {
        /// Authorization header.
        auth: Option<String>,
        /// `{"inventory": {sku: n}, "accounts": {user: n}}`.
        body: Bytes,
    },
    /// `GET /console...`: a console page or asset.
    ConsolePage {
        /// Which.
        page: console::Page,
        /// The session cookie.
        cookie: Option<String>,
    },
    /// `POST /console/login`.
    ConsoleLogin {
        /// `token` and `operator`.
        form: std::collections::HashMap<String, String>,
        /// Whether the client came over HTTPS (a proxy's `X-Forwarded-Proto`).
        https: bool,
    },
    /// `POST /console/logout`.
    ConsoleLogout,
    /// `GET /v1/console/overview`.
    ConsoleOverview {
        /// Credentials.
        auth: Option<String>,
    },
    /// `POST /v1/console/operations`.
    ConsoleStart {
        /// Credentials.
        auth: Option<String>,
        /// The JSON body.
        body: Bytes,
    },
    /// `GET /v1/console/operations/{id}`.
    ConsoleOperation {
        /// The operation id.
        id: Uuid,
        /// Credentials.
        auth: Option<String>,
    },
    /// `GET /v1/console/audit`.
    ConsoleAudit {
        /// Filters.
        query: console::AuditQuery,
        /// Credentials.
        auth: Option<String>,
    },
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// `GET /metrics`.
    Metrics {
        /// Accept header (OpenMetrics or the classic text format).
        accept: Option<String>,
    },
}

impl Route {
    fn template(&self) -> &'static str {
        match self {
            Route::PublishEvent { .. } => "/v1/events/{name}",
            Route::EnqueueJob { .. } => "/v1/jobs/{name}",
            Route::ListEvents { .. } => "/v1/events",
            Route::ListNotifications { .. } => "/v1/notifications",
            Route::DlqList { .. } => "/v1/dlq",
            Route::DlqShow { .. } => "/v1/dlq/{queue}",
            Route::DlqReplay { .. } => "/v1/dlq/{queue}/replay",
            Route::DlqPurge { .. } => "/v1/dlq/{queue}/purge",
            Route::FailedJobs { .. } => "/v1/failed-jobs",
            Route::RetryFailedJob { .. } => "/v1/failed-jobs/{id}/retry",
            Route::CreateOrder { .. } => "/v1/orders",
            Route::GetOrder { .. } => "/v1/orders/{order_no}",
            Route::ListSagas { .. } => "/v1/sagas",
            Route::GetSaga { .. } => "/v1/sagas/{id}",
            Route::ListInterventions { .. } => "/v1/interventions",
            Route::RetryIntervention { .. } => "/v1/interventions/{id}/retry",
            Route::ResolveIntervention { .. } => "/v1/interventions/{id}/resolve",
            Route::Seed { .. } => "/v1/admin/seed",
            Route::ConsolePage { page, .. } => match page {
                console::Page::Index => "/console",
                console::Page::Login => "/console/login",
                _ => "/console/{asset}",
            },
            Route::ConsoleLogin { .. } => "/console/login",
            Route::ConsoleLogout => "/console/logout",
            Route::ConsoleOverview { .. } => "/v1/console/overview",
            Route::ConsoleStart { .. } => "/v1/console/operations",
            Route::ConsoleOperation { .. } => "/v1/console/operations/{id}",
            Route::ConsoleAudit { .. } => "/v1/console/audit",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics { .. } => "/metrics",
        }
    }
}

/// The route template for a raw path, for requests that were rejected before routing.
fn template_for(path: &str) -> &'static str {
    if path.starts_with("/v1/events/") {
        "/v1/events/{name}"
    } else if path.starts_with("/v1/jobs/") {
        "/v1/jobs/{name}"
    } else if let Some(t) = dlq_template_for(path) {
        t
    } else if let Some(t) = sagas::template_for(path) {
        t
    } else if let Some(t) = console::template_for(path) {
        t
    } else {
        match path {
            "/v1/events" => "/v1/events",
            "/v1/notifications" => "/v1/notifications",
            "/healthz" => "/healthz",
            "/readyz" => "/readyz",
            "/metrics" => "/metrics",
            _ => "unmatched",
        }
    }
}

/// The template of a dead-letter route (`/v1/dlq...`, `/v1/failed-jobs...`).
fn dlq_template_for(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    Some(match segments.as_slice() {
        ["", "v1", "dlq"] => "/v1/dlq",
        ["", "v1", "dlq", _] => "/v1/dlq/{queue}",
        ["", "v1", "dlq", _, "replay"] => "/v1/dlq/{queue}/replay",
        ["", "v1", "dlq", _, "purge"] => "/v1/dlq/{queue}/purge",
        ["", "v1", "failed-jobs"] => "/v1/failed-jobs",
        ["", "v1", "failed-jobs", _, "retry"] => "/v1/failed-jobs/{id}/retry",
        _ => return None,
    })
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The request's monitoring context.
#[derive(Debug)]
struct Ctx {
    start: Instant,
    method: Method,
    path: String,
    request_id: String,
    traceparent: Option<String>,
    remote: Option<SocketAddr>,
}

fn valid_request_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

fn ctx() -> impl Filter<Extract = (Ctx,), Error = Infallible> + Clone {
    let rid = warp::header::optional::<String>("x-request-id")
        .or(warp::any().map(|| None))
        .unify();
    let tp = warp::header::optional::<String>("traceparent")
        .or(warp::any().map(|| None))
        .unify();
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(rid)
        .and(tp)
        .and(warp::addr::remote())
        .map(
            |start, method, path: warp::path::FullPath, rid: Option<String>, tp, remote| Ctx {
                start,
                method,
                path: path.as_str().to_owned(),
                request_id: rid
                    .filter(|r| valid_request_id(r))
                    .unwrap_or_else(|| Uuid::now_v7().to_string()),
                traceparent: tp,
                remote,
            },
        )
}

/// The route tree: parses a request into a [`Route`] or a rejection, touching nothing else
/// (public for the fuzz targets in `fuzz/`). Each route is boxed: the unboxed tree's type nests
/// deep enough to overflow the compiler's recursion limit in release builds, and the boxing
/// costs one indirect call.
pub fn routes(body_limit: u64) -> BoxedFilter<(Route,)> {
    // Path before method: an unknown path is 404, a known path with the wrong method 405.
    let publish = warp::path!("v1" / "events" / String)
        .and(warp::post())
        .and(warp::query::<EventQuery>())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>("traceparent"))
        .and(warp::body::content_length_limit(body_limit))
        .and(warp::body::bytes())
        .map(
            |name, query, auth, content_type, traceparent, body| Route::PublishEvent {
                name,
                query,
                auth,
                content_type,
                traceparent,
                body,
            },
        )
        .boxed();
    let enqueue = warp::path!("v1" / "jobs" / String)
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>("traceparent"))
        .and(warp::body::content_length_limit(body_limit))
        .and(warp::body::bytes())
        .map(
            |name, auth, content_type, traceparent, body| Route::EnqueueJob {
                name,
                auth,
                content_type,
                traceparent,
                body,
            },
        )
        .boxed();
    let list_events = warp::path!("v1" / "events")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::<ListQuery>())
        .map(|auth, query| Route::ListEvents { auth, query })
        .boxed();
    let list_notifications = warp::path!("v1" / "notifications")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::<ListQuery>())
        .map(|auth, query| Route::ListNotifications { auth, query })
        .boxed();
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| Route::Healthz)
        .boxed();
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .map(|| Route::Readyz)
        .boxed();
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(warp::header::optional::<String>("accept"))
        .map(|accept| Route::Metrics { accept })
        .boxed();
    let auth = auth::credentials;
    let dlq_list = warp::path!("v1" / "dlq")
        .and(warp::get())
        .and(auth())
        .map(|auth| Route::DlqList { auth })
        .boxed();
    let dlq_show = warp::path!("v1" / "dlq" / String)
        .and(warp::get())
        .and(warp::query::<DlqShowQuery>())
        .and(auth())
        .map(|queue, query, auth| Route::DlqShow { queue, query, auth })
        .boxed();
    let dlq_replay = warp::path!("v1" / "dlq" / String / "replay")
        .and(warp::post())
        .and(auth())
        .and(optional_body(body_limit))
        .map(|queue, auth, body| Route::DlqReplay { queue, auth, body })
        .boxed();
    let dlq_purge = warp::path!("v1" / "dlq" / String / "purge")
        .and(warp::post())
        .and(auth())
        .and(optional_body(body_limit))
        .map(|queue, auth, body| Route::DlqPurge { queue, auth, body })
        .boxed();
    let failed_jobs = warp::path!("v1" / "failed-jobs")
        .and(warp::get())
        .and(warp::query::<FailedJobsQuery>())
        .and(auth())
        .map(|query, auth| Route::FailedJobs { query, auth })
        .boxed();
    let retry = warp::path!("v1" / "failed-jobs" / Uuid / "retry")
        .and(warp::post())
        .and(auth())
        .map(|id, auth| Route::RetryFailedJob { id, auth })
        .boxed();
    publish
        .or(enqueue)
        .unify()
        .or(list_events)
        .unify()
        .or(list_notifications)
        .unify()
        .or(dlq_list)
        .unify()
        .or(dlq_show)
        .unify()
        .or(dlq_replay)
        .unify()
        .or(dlq_purge)
        .unify()
        .or(failed_jobs)
        .unify()
        .or(retry)
        .unify()
        .or(sagas::routes(body_limit))
        .unify()
        .or(console::routes(body_limit))
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .boxed()
}

/// A body that may be absent: without `Content-Length` (and without `Transfer-Encoding`) it is
/// empty; with one, it is read up to `limit` bytes (413 beyond).
fn optional_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    let sized = warp::header::<u64>("content-length")
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
        .map(|_: u64, body: Bytes| body);
    let absent = warp::header::optional::<String>("content-length")
        .and(warp::header::optional::<String>("transfer-encoding"))
        .and_then(|len: Option<String>, te: Option<String>| async move {
            if len.is_none() && te.is_none() {
                Ok(Bytes::new())
            } else {
                Err(warp::reject::not_found())
            }
        });
    sized.or(absent).unify()
}

/// Refuses a request whose headers add up to more than [`MAX_HEADER_BYTES`].
fn header_limit() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(|headers: warp::http::HeaderMap| async move {
            let size: usize = headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum();
            if size > MAX_HEADER_BYTES {
                Err(warp::reject::custom(error::HeadersTooLarge(
                    MAX_HEADER_BYTES,
                )))
            } else {
                Ok(())
            }
        })
        .untuple_one()
}

/// The whole HTTP API as one filter (what the server and `warp::test` run).
pub fn api(state: HttpState) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let limit = state.settings.http.body_limit_bytes;
    let parsed = header_limit()
        .and(routes(limit))
        .map(Ok::<Route, warp::Rejection>)
        .recover(|r: warp::Rejection| async move { Ok::<_, Infallible>(Err::<Route, _>(r)) })
        .unify();
    let state = Arc::new(state);
    ctx()
        .and(parsed)
        .then(move |ctx: Ctx, route: Result<Route, warp::Rejection>| {
            let state = state.clone();
            // One span per request, parented (when spans are exported) on the caller's
            // traceparent before it is entered.
            let span = tracing::info_span!(
                "http.request",
                method = %ctx.method,
                path = %ctx.path,
                request_id = %ctx.request_id,
            );
            crate::telemetry::set_remote_parent(&span, ctx.traceparent.as_deref());
            async move { answer(&state, ctx, route).await }.instrument(span)
        })
}

async fn answer(state: &HttpState, ctx: Ctx, route: Result<Route, warp::Rejection>) -> Response {
    let (template, result) = match route {
        Ok(route) => {
            let template = route.template();
            (template, handle(state, &ctx, route).await)
        }
        Err(rejection) => (
            template_for(&ctx.path),
            Err(ApiError::from_rejection(
                &rejection,
                state.settings.http.body_limit_bytes,
            )),
        ),
    };
    let mut response = match result {
        Ok(r) => r,
        Err(e) => error_response(state, &ctx, e),
    };
    let elapsed = ctx.start.elapsed();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        headers.insert("x-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{:.3}ms", elapsed.as_secs_f64() * 1000.0)) {
        headers.insert("x-execution-time", v);
    }
    state.metrics.http_request(
        method_label(&ctx.method),
        template,
        response.status().as_u16(),
        elapsed.as_secs_f64(),
    );
    let threshold = state.settings.http.slow_request_ms;
    if elapsed.as_millis() >= u128::from(threshold) {
        state
            .metrics
            .slow_request(method_label(&ctx.method), template);
        if state
            .slow_events
            .take(state.settings.http.slow_request_events_per_sec)
        {
            slow_request_event(state, &ctx, template, response.status().as_u16(), elapsed);
        }
    }
    response
}

/// Publishes `system.slow_request` (the article's monitor event) through the events service,
/// without delaying the answer.
fn slow_request_event(
    state: &HttpState,
    ctx: &Ctx,
    template: &'static str,
    status: u16,
    elapsed: std::time::Duration,
) {
    let event = Event::new(
        "system.slow_request",
        None,
        json!({
            "method": method_label(&ctx.method),
            "path": template,
            "status": status,
            "duration_ms": (elapsed.as_secs_f64() * 1000.0).round(),
            "threshold_ms": state.settings.http.slow_request_ms,
            "request_id": ctx.request_id,
        }),
    );
    let mut meta = Meta::for_event(&event);
    meta.request_id = Some(ctx.request_id.clone());
    meta.correlation_id = Some(ctx.request_id.clone());
    // Through the events service like a published event: what the broker cannot confirm
    // waits in the outbox.
    let events = state.events.clone();
    tokio::spawn(async move {
        if let Err(e) = events.send(EVENTS_EXCHANGE, &event, &meta).await {
            tracing::debug!(error = %e, "Cannot publish system.slow_request.");
        }
    });
}

fn error_response(state: &HttpState, ctx: &Ctx, e: ApiError) -> Response {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(request_id = %ctx.request_id, path = %ctx.path, error = %e, "Request failed.");
    } else {
        tracing::debug!(request_id = %ctx.request_id, path = %ctx.path, error = %e, "Request refused.");
    }
    let mut resp = warp::reply::with_status(warp::reply::json(&e.body(&ctx.request_id)), status)
        .into_response();
    if let Some(secs) = e.retry_after_secs() {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(
            "retry-after",
            HeaderValue::from(state.settings.http.retry_after_secs),
        );
    }
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    resp
}

async fn handle(state: &HttpState, ctx: &Ctx, route: Route) -> Result<Response, ApiError> {
    match route {
        Route::Healthz => Ok(warp::reply::json(&json!({"status": "ok"})).into_response()),
        Route::Readyz => Ok(readyz(state).await),
        Route::Metrics { accept } => {
            let (body, content_type) = state.metrics.render_for(accept.as_deref());
            Ok(warp::reply::with_header(body, "content-type", content_type).into_response())
        }
        Route::PublishEvent {
            name,
            query,
            auth,
            content_type,
            traceparent,
            body,
        } => {
            let _permit = admit_publish(state, ctx, auth.as_deref(), "/v1/events/{name}")?;
            publish_event(state, ctx, name, query, content_type, traceparent, body).await
        }
        Route::EnqueueJob {
            name,
            auth,
            content_type,
            traceparent,
            body,
        } => {
            let _permit = admit_publish(state, ctx, auth.as_deref(), "/v1/jobs/{name}")?;
            enqueue_job(state, ctx, name, content_type, traceparent, body).await
        }
        Route::ListEvents { auth, query } => {
            authorize(state, auth.as_deref(), Scope::Read)?;
            let rows = state.reads.events(&query).await?;
            Ok(warp::reply::json(&json!({"events": rows})).into_response())
        }
        Route::ListNotifications { auth, query } => {
            authorize(state, auth.as_deref(), Scope::Read)?;
            let rows = state.reads.notifications(&query).await?;
            Ok(warp::reply::json(&json!({"notifications": rows})).into_response())
        }
        Route::DlqList { auth } => {
            authorize(state, auth.as_deref(), Scope::Read)?;
            let queues = state.operator.dlq().list().await?;
            Ok(warp::reply::json(&json!({ "queues": queues })).into_response())
        }
        Route::DlqShow { queue, query, auth } => {
            authorize(state, auth.as_deref(), Scope::Read)?;
            let (default, max) = DLQ_SHOW_LIMIT;
            let limit = query.limit.unwrap_or(default);
            if limit == 0 || limit > max {
                return Err(ApiError::InvalidQuery(format!(
                    "limit must be 1 to {max}, got {limit}"
                )));
            }
            let older_than = query
                .older_than
                .as_deref()
                .map(dlq::parse_duration)
                .transpose()
                .map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
            let filter = dlq::Filter {
                message_id: query.message_id,
                reason: check_reason(query.reason)?,
                older_than,
                ..dlq::Filter::default()
            };
            let peek = state.operator.dlq().show(&queue, &filter, limit).await?;
            Ok(warp::reply::json(&peek).into_response())
        }
        Route::DlqReplay { queue, auth, body } => {
            let actor = authorize_actor(state, auth.as_deref(), Scope::Admin)?;
            dlq_operation(state, &actor, Operation::Replay, &queue, &body).await
        }
        Route::DlqPurge { queue, auth, body } => {
            let actor = authorize_actor(state, auth.as_deref(), Scope::Admin)?;
            dlq_operation(state, &actor, Operation::Purge, &queue, &body).await
        }
        Route::FailedJobs { query, auth } => {
            authorize(state, auth.as_deref(), Scope::Read)?;
            failed_jobs(state, query).await
        }
        Route::RetryFailedJob { id, auth } => {
            let actor = authorize_actor(state, auth.as_deref(), Scope::Admin)?;
            let retried = state.operator.retry_failed_job(&actor, id).await?;
            Ok(warp::reply::json(&retried).into_response())
        }
        Route::CreateOrder { ref auth, .. } => {
            let _permit = admit_publish(state, ctx, auth.as_deref(), "/v1/orders")?;
            sagas::handle(state, ctx, route).await
        }
        Route::GetOrder { ref auth, .. }
        | Route::ListSagas { ref auth, .. }
        | Route::GetSaga { ref auth, .. }
        | Route::ListInterventions { ref auth, .. } => {
            authorize(state, auth.as_deref(), Scope::Read)?;
            sagas::handle(state, ctx, route).await
        }
        Route::RetryIntervention { ref auth, .. } | Route::ResolveIntervention { ref auth, .. } => {
            let actor = authorize_actor(state, auth.as_deref(), Scope::Admin)?;
            sagas::intervene(state, &actor, route).await
        }
        Route::Seed { ref auth, .. } => {
            authorize(state, auth.as_deref(), Scope::Admin)?;
            sagas::handle(state, ctx, route).await
        }
        Route::ConsolePage { .. }
        | Route::ConsoleLogin { .. }
        | Route::ConsoleLogout
        | Route::ConsoleOverview { .. }
        | Route::ConsoleStart { .. }
        | Route::ConsoleOperation { .. }
        | Route::ConsoleAudit { .. } => console::handle(state, route).await,
    }
}

/// `POST /v1/dlq/{queue}/replay|purge`: the operation runs to its end under the queue's lock
/// and is recorded in the audit log; the answer says how many messages moved.
async fn dlq_operation(
    state: &HttpState,
    actor: &str,
    op: Operation,
    queue: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let filter = dlq_filter(body)?;
    let queue = state.operator.dlq().work_queue(queue)?;
    let detail = crate::operator::filter_detail(&filter);
    let (row, error) = state
        .operator
        .run_now(actor, op, &queue, filter, detail)
        .await?;
    if let Some(e) = error {
        return Err(e.into());
    }
    let key = op.done();
    Ok(
        warp::reply::json(&json!({"queue": queue, key: row.moved, "action_id": row.id}))
            .into_response(),
    )
}

/// A list's `?limit=`: `default` when absent, else 1 to `max` (400 otherwise).
pub(super) fn list_limit(
    requested: Option<u64>,
    (default, max): (u64, u64),
) -> Result<u64, ApiError> {
    let n = requested.unwrap_or(default);
    if n == 0 || n > max {
        return Err(ApiError::InvalidQuery(format!(
            "limit must be 1 to {max}, got {n}"
        )));
    }
    Ok(n)
}

/// The filter in a replay or purge body (none: everything).
fn dlq_filter(body: &[u8]) -> Result<dlq::Filter, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(dlq::Filter::default());
    }
    let b: DlqActionBody =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    Ok(dlq::Filter {
        message_id: b.message_id,
        reason: check_reason(b.reason)?,
        older_than: b.older_than_secs.map(std::time::Duration::from_secs),
        limit: b.limit,
        ..dlq::Filter::default()
    })
}

/// A reason filter must name a reason warren parks for (a typo would select nothing).
fn check_reason(reason: Option<String>) -> Result<Option<String>, ApiError> {
    match reason.as_deref() {
        None | Some("exhausted" | "invalid" | "undecodable") => Ok(reason),
        Some(other) => Err(ApiError::InvalidQuery(format!(
            "reason must be exhausted, invalid or undecodable, got {other:?}"
        ))),
    }
}

async fn failed_jobs(state: &HttpState, query: FailedJobsQuery) -> Result<Response, ApiError> {
    let limit = list_limit(query.limit, FAILED_JOBS_LIMIT)?;
    if let Some(s) = query.status.as_deref()
        && ![
            store::FAILED_PARKED,
            store::FAILED_RETRIED,
            store::FAILED_PURGED,
        ]
        .contains(&s)
    {
        return Err(ApiError::InvalidQuery(format!(
            "status must be parked, retried or purged, got {s:?}"
        )));
    }
    let rows = state
        .reads
        .failed_jobs(query.queue.as_deref(), query.status.as_deref(), limit)
        .await?;
    let rows: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "queue": r.queue,
                "message_id": r.message_id,
                "job_name": r.job_name,
                "attempts": r.attempts,
                "error": r.error,
                "reason": r.reason,
                "status": r.status,
                "failed_at": r.failed_at,
                "updated_at": r.updated_at,
                "payload": r.payload,
            })
        })
        .collect();
    Ok(warp::reply::json(&json!({ "failed_jobs": rows })).into_response())
}

/// Checks the credentials for `needed` and names the caller for the audit log.
fn authorize_actor(
    state: &HttpState,
    header: Option<&str>,
    needed: Scope,
) -> Result<String, ApiError> {
    let caller = state.tokens.authorize(header, needed)?;
    Ok(state.tokens.actor(caller, header))
}

/// Checks the bearer token for `needed` (see [`auth`]).
fn authorize(
    state: &HttpState,
    header: Option<&str>,
    needed: Scope,
) -> Result<auth::Caller, ApiError> {
    state.tokens.authorize(header, needed)
}

/// The gate of a publish route, in order: a token with `publish` (401/403), the caller's rate
/// (429), a free in-flight slot (503 at once). The permit is held until the answer.
fn admit_publish(
    state: &HttpState,
    ctx: &Ctx,
    header: Option<&str>,
    template: &'static str,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
    let caller = authorize(state, header, Scope::Publish)?;
    let key = limits::RateKey::new(caller, ctx.remote.map(|a| a.ip()));
    if let Err(e) = state.limits.check_rate(key) {
        state.metrics.publish_refused(template, "rate_limited");
        return Err(e);
    }
    match state.limits.admit() {
        Ok(permit) => Ok(permit),
        Err(e) => {
            state.metrics.publish_refused(template, "overloaded");
            Err(e)
        }
    }
}

/// Checks the event naming rule: two or more lowercase segments separated by dots, each
/// starting with a letter and made of `a-z`, `0-9`, `_`; at most [`MAX_EVENT_NAME`] bytes.
pub fn validate_event_name(name: &str) -> Result<(), ApiError> {
    let err = |reason| ApiError::InvalidEventName {
        name: name.chars().take(MAX_EVENT_NAME).collect(),
        reason,
    };
    if name.len() > MAX_EVENT_NAME {
        return Err(err("longer than 128 bytes"));
    }
    let segments: Vec<&str> = name.split('.').collect();
    if segments.len() < 2 {
        return Err(err("must be segment.segment, e.g. order.created"));
    }
    for s in segments {
        let mut bytes = s.bytes();
        match bytes.next() {
            None => return Err(err("empty segment")),
            Some(b) if !b.is_ascii_lowercase() => {
                return Err(err("each segment must start with a lowercase letter"));
            }
            Some(_) => {}
        }
        if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(err("segments may hold only a-z, 0-9 and _"));
        }
    }
    Ok(())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[tracing::instrument(skip_all, fields(event_name = %name, request_id = %ctx.request_id, event_id, trace_id))]
async fn publish_event(
    state: &HttpState,
    ctx: &Ctx,
    name: String,
    query: EventQuery,
    content_type: Option<String>,
    traceparent: Option<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_event_name(&name)?;
    let sync = match query.mode.as_deref() {
        None | Some("async") => false,
        Some("sync") => true,
        Some(other) => {
            return Err(ApiError::InvalidQuery(format!(
                "mode must be async or sync, got {other:?}"
            )));
        }
    };
    let data = parse_data(content_type.as_deref(), &body)?;
    if let Some(a) = &query.aggregate_id
        && (a.is_empty() || a.len() > 255)
    {
        return Err(ApiError::InvalidQuery(
            "aggregate_id must be 1 to 255 bytes".into(),
        ));
    }
    let event = Event::new(name, query.aggregate_id, data);
    tracing::Span::current().record("event_id", tracing::field::display(event.event_id));

    if sync {
        let results = state.dispatcher.dispatch_sync(&event).await;
        return Ok(warp::reply::json(&json!({
            "event_id": event.event_id,
            "event_name": event.event_name,
            "mode": "sync",
            "results": results,
        }))
        .into_response());
    }

    let stored =
        publish_for_request(state, ctx, EVENTS_EXCHANGE, &event, traceparent.as_deref()).await?;
    Ok(warp::reply::with_status(
        warp::reply::json(&json!({
            "event_id": event.event_id,
            "status": "accepted",
            "stored": stored.as_str(),
        })),
        StatusCode::ACCEPTED,
    )
    .into_response())
}

/// Publishes `message` (routing key = its name) with the request's id as correlation id and
/// `x-request-id`, and a child of the caller's trace (or a new trace), and waits for the
/// confirm; when the broker cannot confirm, stores it in the events outbox.
async fn publish_for_request(
    state: &HttpState,
    ctx: &Ctx,
    exchange: &'static str,
    message: &Event,
    traceparent: Option<&str>,
) -> Result<crate::outbox::Stored, ApiError> {
    let trace = crate::telemetry::outgoing(traceparent);
    tracing::Span::current().record("trace_id", trace.trace_id.as_str());
    let mut meta = Meta::for_event(message);
    meta.correlation_id = Some(ctx.request_id.clone());
    meta.request_id = Some(ctx.request_id.clone());
    meta.traceparent = Some(trace.header());
    Ok(state.events.send(exchange, message, &meta).await?)
}

/// Checks the content type and parses the body as a JSON object (a message's `data`). Nesting
/// deeper than serde_json's recursion limit (128) is refused as invalid JSON, never a stack
/// overflow.
pub fn parse_data(content_type: Option<&str>, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    if let Some(ct) = content_type {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != "application/json" && !media.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    let data: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    if !data.is_object() {
        return Err(ApiError::NotAnObject(json_kind(&data)));
    }
    Ok(data)
}

#[tracing::instrument(skip_all, fields(job_name = %name, request_id = %ctx.request_id, job_id, trace_id))]
async fn enqueue_job(
    state: &HttpState,
    ctx: &Ctx,
    name: String,
    content_type: Option<String>,
    traceparent: Option<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_event_name(&name)?;
    if !state.reads.takes_job(&name) {
        return Err(ApiError::UnknownJob(name));
    }
    let data = parse_data(content_type.as_deref(), &body)?;
    let job = Event::new(name, None, data);
    tracing::Span::current().record("job_id", tracing::field::display(job.event_id));
    let stored =
        publish_for_request(state, ctx, COMMANDS_EXCHANGE, &job, traceparent.as_deref()).await?;
    Ok(warp::reply::with_status(
        warp::reply::json(&json!({
            "job_id": job.event_id,
            "status": "queued",
            "stored": stored.as_str(),
        })),
        StatusCode::ACCEPTED,
    )
    .into_response())
}

async fn readyz(state: &HttpState) -> Response {
    let checks = state.health.readiness().await;
    let ready = checks.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(
        warp::reply::json(&json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": checks,
        })),
        status,
    )
    .into_response()
}

/// Binds `addr` (port 0 picks a free port) and serves the API until `shutdown` fires.
/// Returns the bound address and the server task.
pub async fn serve(
    state: HttpState,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let server = warp::serve(api(state))
        .incoming(listener)
        .graceful(async move { shutdown.cancelled().await })
        .run();
    Ok((bound, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_follow_the_rule() {
        for ok in [
            "order.created",
            "user.registered",
            "a.b.c",
            "order_v2.created2",
        ] {
            assert!(validate_event_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "order",
            "Order.created",
            "order..created",
            ".x",
            "order.*",
            "order.#",
            "order.crea-ted",
            "1x.y",
        ] {
            assert!(validate_event_name(bad).is_err(), "{bad}");
        }
        assert!(validate_event_name(&format!("a.{}", "b".repeat(200))).is_err());
    }

    #[test]
    fn templates_are_bounded() {
        assert_eq!(
            template_for("/v1/events/anything.here"),
            "/v1/events/{name}"
        );
        assert_eq!(template_for("/random/123"), "unmatched");
        assert_eq!(template_for("/v1/dlq"), "/v1/dlq");
        assert_eq!(template_for("/v1/dlq/warren.email"), "/v1/dlq/{queue}");
        assert_eq!(
            template_for("/v1/dlq/anything/replay"),
            "/v1/dlq/{queue}/replay"
        );
        assert_eq!(template_for("/v1/dlq/x/purge"), "/v1/dlq/{queue}/purge");
        assert_eq!(template_for("/v1/dlq/x/other"), "unmatched");
        assert_eq!(template_for("/v1/failed-jobs"), "/v1/failed-jobs");
        assert_eq!(
            template_for("/v1/failed-jobs/123/retry"),
            "/v1/failed-jobs/{id}/retry"
        );
        assert_eq!(template_for("/v1/failed-jobs/123"), "unmatched");
    }
}
