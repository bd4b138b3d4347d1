//! `GET /v1/subscriptions`: each HTTP subscription of the settings with what a subscriber's
//! owner asks first: where it delivers (the URL without its query, which may carry a token),
//! what it takes, and how its queue stands on the broker (ready, unacked, consumers, parked,
//! the rates in and out) with its last parked failure.

use serde_json::{Value, json};

use super::{
    ApiError,
    route::{Access, Endpoint, Reply, Request, json},
};
use crate::config::{Scope, SubscriptionSettings};

/// The subscription routes.
pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::get("/v1/subscriptions", Access::Scoped(Scope::Read)).to(list)]
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
    let queues = state.console.queues().await;
    let mut rows = Vec::new();
    for sub in &state.settings.subscriptions {
        let queue = sub.queue();
        let figures = queues.rows.iter().find(|r| r.queue == queue);
        let last = state
            .reads
            .failed_jobs(Some(&queue), Some(crate::store::FAILED_PARKED), 1)
            .await
            .map_err(ApiError::from)?;
        rows.push(row(sub, figures, last.first()));
    }
    json(&json!({
        "subscriptions": rows,
        "management_error": queues.management_error,
        "dlq_error": queues.dlq_error,
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
