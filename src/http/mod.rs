//! The HTTP front (warp): publish events, run the sync dispatcher, the dead-letter tools
//! (`/v1/dlq`, `/v1/failed-jobs`), health, readiness, metrics.
//!
//! Shape: every route is declared once, as an endpoint in its group's file (`route.rs` says
//! how); one filter over all of them parses a request into a [`Call`] (or a rejection), then
//! the front checks the call's access and runs its handler. Wrapping both is the monitor: it
//! gives every response `X-Request-ID` (echoed or generated) and `X-Execution-Time`, and
//! records `http_requests_total` and `http_request_duration_seconds` by route template, never
//! by raw path.
//!
//! Access: every `/v1` route needs a bearer token with a scope (`auth`): `publish` for the
//! publish routes, `read` for the `GET`s, `admin` for the operator actions. The publish routes
//! are also rate-limited per caller and bounded in flight (`limits`).

pub(crate) mod auth;
pub(crate) mod console;
mod error;
pub(crate) mod limits;
pub(crate) mod sagas;

mod asyncapi;
mod cloudevents;
mod dlq;
mod health;
mod idempotent;
pub(crate) mod openapi;
mod publish;
mod route;
mod subscriptions;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};
use tracing::Instrument;

use bytes::Bytes;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warp::{
    Filter, Reply,
    http::{HeaderValue, Method, StatusCode},
    reply::Response,
};

use crate::{
    broker::{envelope::Outgoing, names::EVENTS_EXCHANGE},
    config::Settings,
    dispatch::Dispatcher,
    operator::Operator,
    telemetry::Metrics,
};
pub use cloudevents::{MAX_BATCH, validate_event_type};
pub use error::ApiError;
pub use publish::{MAX_EVENT_NAME, parse_data, validate_event_name};
pub use route::{Call, Routes};

/// Largest accepted request head: the names and values of all headers together, in bytes.
/// Beyond it the answer is 431 `headers_too_large`. (hyper itself refuses heads beyond about
/// 400 KiB, or with more than 100 headers, with a bare 431 before warren sees them.)
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// What the HTTP handlers share.
#[derive(Clone)]
pub(crate) struct HttpState {
    /// Settings, loaded once.
    pub settings: Arc<Settings>,
    /// The events service: publishes with a confirm, and keeps what the broker cannot
    /// confirm in the events outbox (every event warren publishes for itself goes through it).
    pub events: crate::outbox::EventOutbox,
    /// The read service (audit log, notifications, failed jobs, orders, known jobs).
    pub reads: crate::reads::Reads,
    /// The answers remembered under `Idempotency-Key`s and CloudEvent identities.
    pub idempotency: crate::idempotency::Idempotency,
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
pub(crate) struct SlowEvents {
    second: std::sync::atomic::AtomicU64,
    used: std::sync::atomic::AtomicU32,
}

impl SlowEvents {
    /// Whether one more event fits in this second's budget of `per_sec`.
    pub(crate) fn take(&self, per_sec: u32) -> bool {
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

/// The route table: every endpoint, tried in order (public for the fuzz targets in `fuzz/`).
/// Each route's filter is boxed: the unboxed tree's type nests deep enough to overflow the
/// compiler's recursion limit in release builds, and the boxing costs one indirect call.
pub fn routes(body_limit: u64) -> Routes {
    let mut endpoints = publish::endpoints(body_limit);
    endpoints.extend(cloudevents::endpoints(body_limit));
    endpoints.extend(dlq::endpoints(body_limit));
    endpoints.extend(sagas::endpoints(body_limit));
    endpoints.extend(console::endpoints(body_limit));
    endpoints.extend(subscriptions::endpoints(body_limit));
    endpoints.extend(health::endpoints());
    endpoints.extend(asyncapi::endpoints());
    Routes::new(endpoints)
}

/// A JSON request body with the headers that go with it.
#[derive(Debug)]
pub(super) struct JsonBody {
    /// `Content-Type` (none: taken as JSON).
    content_type: Option<String>,
    /// Incoming W3C trace context (a header that is not visible ASCII is refused by name).
    traceparent: Option<String>,
    /// The raw body, at most the body limit.
    bytes: Bytes,
}

/// A required body of at most `limit` bytes (413 beyond, 411 without a length), with its
/// content type and trace context.
fn json_body(limit: u64) -> impl Filter<Extract = (JsonBody,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<String>("traceparent"))
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
        .map(|content_type, traceparent, bytes| JsonBody {
            content_type,
            traceparent,
            bytes,
        })
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
pub(crate) fn api(
    state: HttpState,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let limit = state.settings.http.body_limit_bytes;
    let table = Arc::new(routes(limit));
    let parsed = header_limit()
        .and(table.filter())
        .map(Ok::<Call, warp::Rejection>)
        .recover(|r: warp::Rejection| async move { Ok::<_, Infallible>(Err::<Call, _>(r)) })
        .unify();
    let state = Arc::new(state);
    ctx()
        .and(parsed)
        .then(move |ctx: Ctx, call: Result<Call, warp::Rejection>| {
            let state = state.clone();
            let table = table.clone();
            // One span per request, parented (when spans are exported) on the caller's
            // traceparent before it is entered.
            let span = tracing::info_span!(
                "http.request",
                method = %ctx.method,
                path = %ctx.path,
                request_id = %ctx.request_id,
            );
            crate::telemetry::set_remote_parent(&span, ctx.traceparent.as_deref());
            async move { answer(state, &table, ctx, call).await }.instrument(span)
        })
}

async fn answer(
    state: Arc<HttpState>,
    table: &Routes,
    ctx: Ctx,
    call: Result<Call, warp::Rejection>,
) -> Response {
    let ctx = Arc::new(ctx);
    let (template, result) = match call {
        Ok(call) => (call.template(), call.run(state.clone(), ctx.clone()).await),
        Err(rejection) => (
            table.template_for(&ctx.path),
            Err(ApiError::from_rejection(
                &rejection,
                state.settings.http.body_limit_bytes,
            )),
        ),
    };
    let mut response = match result {
        Ok(r) => r,
        Err(e) => error_response(&state, &ctx, e),
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
            slow_request_event(&state, &ctx, template, response.status().as_u16(), elapsed);
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
    let outgoing = Outgoing::event(
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
    )
    .for_request(Some(ctx.request_id.clone()), None)
    .correlated(ctx.request_id.clone());
    // Through the events service like a published event: what the broker cannot confirm
    // waits in the outbox.
    let events = state.events.clone();
    tokio::spawn(async move {
        if let Err(e) = events.send_outgoing(EVENTS_EXCHANGE, &outgoing).await {
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

/// A text filter that goes to the database: a NUL character (which PostgreSQL text cannot
/// hold) is 400 `invalid_query` naming the parameter, not a database error.
pub(super) fn no_nul(name: &str, value: Option<&str>) -> Result<(), ApiError> {
    if value.is_some_and(|v| v.contains('\0')) {
        return Err(ApiError::InvalidQuery(format!(
            "{name} must not contain a NUL character"
        )));
    }
    Ok(())
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

/// Binds `addr` (port 0 picks a free port) and serves the API until `shutdown` fires.
/// Returns the bound address and the server task.
pub(crate) async fn serve(
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
        let table = routes(1024);
        let template_for = |path| table.template_for(path);
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

    fn parse(method: &str, path: &str) -> Result<&'static str, String> {
        let table = routes(1024);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let req = warp::test::request().method(method).path(path);
        rt.block_on(req.filter(&table.filter()))
            .map(|call| call.template())
            .map_err(|r| format!("{r:?}"))
    }

    #[test]
    fn each_route_is_declared_once_and_parses_to_its_own_template() {
        let table = routes(1024);
        let list = table.list();
        let unique: std::collections::HashSet<_> = list.iter().collect();
        assert_eq!(unique.len(), list.len(), "a route declared twice: {list:?}");
        assert_eq!(parse("GET", "/v1/dlq/warren.email"), Ok("/v1/dlq/{queue}"));
        assert_eq!(
            parse("POST", &format!("/v1/failed-jobs/{}/retry", Uuid::now_v7())),
            Ok("/v1/failed-jobs/{id}/retry")
        );
        assert_eq!(parse("GET", "/console/app.js"), Ok("/console/{asset}"));
        assert_eq!(parse("GET", "/console/"), Ok("/console"));
        // Not a UUID: no route (404), as before the table.
        assert!(parse("POST", "/v1/failed-jobs/12/retry").is_err());
        // A known path with the wrong method is refused, not routed elsewhere.
        let wrong = parse("DELETE", "/v1/dlq").expect_err("refused");
        assert!(wrong.contains("MethodNotAllowed"), "{wrong}");
    }
}
