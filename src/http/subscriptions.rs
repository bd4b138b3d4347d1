//! The subscription routes.
//!
//! `GET /v1/subscriptions`: each HTTP subscription of the settings with what a subscriber's
//! owner asks first: where it delivers (the URL without its query, which may carry a token),
//! what it takes, how it stands (`state`: paused by an operator, a breaker open in a worker,
//! running, or no worker reporting), each worker's reported state (breaker, `Retry-After`
//! pause, failures in a row, last error, `stale` when it stopped reporting), how its queue
//! stands on the broker (ready, unacked, consumers, parked, the rates in and out) with its
//! last parked failure, and the workers' delivery rate.
//!
//! `POST /v1/subscriptions/{name}/pause` and `.../resume` (admin scope; optional body
//! `{"reason": "..."}` on a pause): through the operator service, which stores the pause and
//! audits it. Idempotent; an unknown name is 404 `unknown_subscription`.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use entities::{subscription_controls, subscription_status};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiError,
    openapi::{Doc, shape},
    optional_body,
    route::{Access, Endpoint, Reply, Request, json},
};
use crate::{
    config::{Scope, SubscriptionSettings},
    subscriptions::status::stale,
};

/// The longest reason a pause may carry (characters).
const MAX_REASON_CHARS: usize = 1_000;

/// Optional JSON body of `POST /v1/subscriptions/{name}/pause` (and `resume`, which keeps no
/// reason).
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    /// Why it is paused (shown in the list and the console, kept in the audit log).
    #[serde(default)]
    reason: Option<String>,
}

/// The subscription routes.
pub(super) fn endpoints(body_limit: u64) -> Vec<Endpoint> {
    let admin = Access::Scoped(Scope::Admin);
    let control = |id, summary| {
        Doc::new(id, summary)
            .describe("Idempotent; stored and audited by the operator service.")
            .optional_body::<PauseBody>()
            .answer(
                200,
                "The subscription's control as it stands now.",
                shape::object(vec![
                    ("subscription", shape::string()),
                    ("paused", shape::boolean()),
                    ("changed", shape::boolean()),
                    ("by", shape::nullable_string()),
                    ("at", shape::nullable_string()),
                    ("reason", shape::nullable_string()),
                    ("action_id", shape::any()),
                ]),
            )
            .error(400, &["invalid_query"])
            .error(404, &["unknown_subscription"])
            .unavailable()
    };
    vec![
        Endpoint::get("/v1/subscriptions", Access::Scoped(Scope::Read))
            .doc(
                Doc::new(
                    "list_subscriptions",
                    "Each HTTP subscription and how it stands",
                )
                .answer(
                    200,
                    "The subscriptions, with what failed to be read.",
                    shape::object(vec![
                        ("subscriptions", shape::array(shape::any_object())),
                        ("management_error", shape::nullable_string()),
                        ("dlq_error", shape::nullable_string()),
                        ("status_error", shape::nullable_string()),
                    ]),
                )
                .unavailable(),
            )
            .to(list),
        Endpoint::post("/v1/subscriptions/{name}/pause", admin)
            .doc(control(
                "pause_subscription",
                "Pause a subscription's deliveries",
            ))
            .input(optional_body(body_limit))
            .to(|req: Request, (name,): (String,), body: Bytes| async move {
                pause(&req, &name, true, &body).await
            }),
        Endpoint::post("/v1/subscriptions/{name}/resume", admin)
            .doc(control(
                "resume_subscription",
                "Resume a subscription's deliveries",
            ))
            .input(optional_body(body_limit))
            .to(|req: Request, (name,): (String,), body: Bytes| async move {
                pause(&req, &name, false, &body).await
            }),
    ]
}

/// Pauses or resumes subscription `name`.
async fn pause(req: &Request, name: &str, paused: bool, body: &[u8]) -> Reply {
    let state = &req.state;
    if !state.settings.subscriptions.iter().any(|s| s.name == name) {
        return Err(ApiError::UnknownSubscription(
            name.chars().take(100).collect(),
        ));
    }
    let body: PauseBody = if body.iter().all(u8::is_ascii_whitespace) {
        PauseBody::default()
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?
    };
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(ApiError::InvalidQuery(format!(
            "reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    let done = state
        .operator
        .pause_subscription(&req.actor(), name, paused, body.reason)
        .await?;
    let c = &done.control;
    json(&json!({
        "subscription": c.subscription,
        "paused": c.paused,
        "changed": done.changed,
        "by": c.changed_by,
        "at": c.changed_at,
        "reason": c.reason,
        "action_id": done.action_id,
    }))
}

/// Where a subscription delivers, as it may be shown: scheme, host, port and path.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => String::new(),
    }
}

async fn list(req: Request, (): (), (): ()) -> Reply {
    let state = &req.state;
    let (queues, states) =
        tokio::join!(state.console.queues(), state.operator.subscription_states());
    let (statuses, controls, status_error) = match states {
        Ok((s, c)) => (s, c, None),
        Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
    };
    let now = Utc::now();
    let mut rows = Vec::new();
    for sub in &state.settings.subscriptions {
        let queue = sub.queue();
        let figures = queues.rows.iter().find(|r| r.queue == queue);
        let last = state
            .reads
            .failed_jobs(Some(&queue), Some(crate::store::FAILED_PARKED), 1)
            .await
            .map_err(ApiError::from)?;
        let mut row = row(sub, figures, last.first());
        let workers: Vec<&subscription_status::Model> = statuses
            .iter()
            .filter(|s| s.subscription == sub.name)
            .collect();
        let control = controls.iter().find(|c| c.subscription == sub.name);
        add_state(&mut row, control, &workers, now);
        rows.push(row);
    }
    json(&json!({
        "subscriptions": rows,
        "management_error": queues.management_error,
        "dlq_error": queues.dlq_error,
        "status_error": status_error,
    }))
}

fn row(
    sub: &SubscriptionSettings,
    figures: Option<&crate::console::QueueRow>,
    last: Option<&entities::failed_jobs::Model>,
) -> Value {
    json!({
        "name": sub.name,
        "url": shown_url(&sub.url),
        "events": sub.events,
        "commands": sub.commands,
        "content_mode": sub.content_mode,
        "ordering": sub.ordering,
        "signed": sub.signing_secrets().next().is_some(),
        "concurrency": sub.concurrency,
        "timeout_ms": sub.timeout_ms,
        "max_attempts": sub.max_attempts,
        "queue": sub.queue(),
        "dead_queue": sub.dead_queue(),
        "ready": figures.and_then(|f| f.ready),
        "unacked": figures.and_then(|f| f.unacked),
        "consumers": figures.and_then(|f| f.consumers),
        "parked": figures.and_then(|f| f.parked),
        "rate_in": figures.and_then(|f| f.rate_in),
        "rate_out": figures.and_then(|f| f.rate_out),
        "last_parked": last.map(|f| json!({
            "failed_at": f.failed_at,
            "reason": f.reason,
            "error": f.error,
            "message_id": f.message_id,
        })),
    })
}

/// How a subscription stands: `paused` (by an operator), else the worst of the workers that
/// report (`open`, `half_open`, `deferred` for a `Retry-After` pause, `running`), else
/// `no_workers`.
fn overall(
    paused: bool,
    fresh: &[&subscription_status::Model],
    now: DateTime<Utc>,
) -> &'static str {
    let any = |f: &dyn Fn(&subscription_status::Model) -> bool| fresh.iter().any(|w| f(w));
    if paused {
        "paused"
    } else if fresh.is_empty() {
        "no_workers"
    } else if any(&|w| w.breaker == "open") {
        "open"
    } else if any(&|w| w.breaker == "half_open") {
        "half_open"
    } else if any(&|w| w.retry_after_until.is_some_and(|t| t > now)) {
        "deferred"
    } else {
        "running"
    }
}

/// Adds the pause, the workers' rows, the overall state, the last error any worker saw and
/// the workers' delivery rate to a subscription's `row`.
fn add_state(
    row: &mut Value,
    control: Option<&subscription_controls::Model>,
    workers: &[&subscription_status::Model],
    now: DateTime<Utc>,
) {
    let paused = control.is_some_and(|c| c.paused);
    let fresh: Vec<&subscription_status::Model> = workers
        .iter()
        .copied()
        .filter(|w| !stale(w.updated_at, now))
        .collect();
    let last_error = workers
        .iter()
        .filter(|w| w.last_error.is_some())
        .max_by_key(|w| w.last_error_at)
        .map(|w| json!({"at": w.last_error_at, "error": w.last_error, "instance": w.instance}));
    row["paused"] = json!(paused);
    row["control"] = json!(control.map(|c| json!({
        "paused": c.paused,
        "by": c.changed_by,
        "at": c.changed_at,
        "reason": c.reason,
    })));
    row["state"] = json!(overall(paused, &fresh, now));
    row["delivery_rate"] = json!(fresh.iter().map(|w| w.delivery_rate).sum::<f64>());
    row["last_error"] = json!(last_error);
    row["workers"] = workers
        .iter()
        .map(|w| {
            json!({
                "instance": w.instance,
                "breaker": w.breaker,
                "breaker_until": w.breaker_until,
                "retry_after_until": w.retry_after_until.filter(|t| *t > now),
                "paused": w.paused,
                "consecutive_failures": w.consecutive_failures,
                "delivered": w.delivered,
                "failed": w.failed,
                "delivery_rate": w.delivery_rate,
                "last_error": w.last_error,
                "last_error_at": w.last_error_at,
                "last_success_at": w.last_success_at,
                "started_at": w.started_at,
                "updated_at": w.updated_at,
                "stale": stale(w.updated_at, now),
            })
        })
        .collect();
}
