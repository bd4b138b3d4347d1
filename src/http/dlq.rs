//! The dead-letter routes: `GET /v1/dlq`, `GET /v1/dlq/{queue}`,
//! `POST /v1/dlq/{queue}/replay|purge`, `GET /v1/failed-jobs` and
//! `POST /v1/failed-jobs/{id}/retry`. Reads go to the operator service's dead-letter tools and
//! the read service; every action to the operator service.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{
    ApiError, list_limit,
    openapi::{Doc, shape},
    optional_body,
    route::{Access, Endpoint, Reply, Request, json},
};
use crate::{
    config::Scope,
    operator::{Operation, dlq},
    store,
};

/// Default and largest `?limit=` of `GET /v1/dlq/{queue}`.
pub(super) const DLQ_SHOW_LIMIT: (usize, usize) = (20, 200);
/// Default and largest `?limit=` of `GET /v1/failed-jobs`.
pub(super) const FAILED_JOBS_LIMIT: (u64, u64) = (50, 500);

/// Query of `GET /v1/dlq/{queue}`.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct DlqShowQuery {
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
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DlqActionBody {
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
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct FailedJobsQuery {
    /// Only rows of this work queue.
    pub queue: Option<String>,
    /// Only rows with this status: `parked`, `retried` or `purged`.
    pub status: Option<String>,
    /// How many rows (default 50, at most 500).
    pub limit: Option<u64>,
}

/// The dead-letter routes.
pub(super) fn endpoints(body_limit: u64) -> Vec<Endpoint> {
    let (read, admin) = (Access::Scoped(Scope::Read), Access::Scoped(Scope::Admin));
    let action = |id, summary, done| {
        Doc::new(id, summary)
            .describe(
                "Runs to its end under the queue's lock and is recorded in the audit log. No \
                 body (or `{}`) selects every parked message.",
            )
            .optional_body::<DlqActionBody>()
            .answer(
                200,
                "Done: how many messages moved.",
                shape::object(vec![
                    ("queue", shape::string()),
                    (done, shape::integer()),
                    ("action_id", shape::uuid()),
                ]),
            )
            .error(400, &["invalid_query"])
            .error(404, &["unknown_queue"])
            .error(409, &["operation_running"])
            .error(503, &["dlq_interrupted"])
            .unavailable()
    };
    vec![
        Endpoint::get("/v1/dlq", read)
            .doc(
                Doc::new("list_dlq", "Every dead-letter queue with its count")
                    .answer(200, "The queues.", shape::rows("queues"))
                    .unavailable(),
            )
            .to(|req: Request, (), ()| async move {
                let queues = req.state.operator.dlq().list().await?;
                json(&json!({ "queues": queues }))
            }),
        Endpoint::get("/v1/dlq/{queue}", read)
            .doc(
                Doc::new("show_dlq", "A peek at a queue's parked messages")
                    .query::<DlqShowQuery>()
                    .answer(200, "The messages, filtered.", shape::any_object())
                    .error(404, &["unknown_queue"])
                    .unavailable(),
            )
            .input(warp::query::<DlqShowQuery>())
            .to(show),
        Endpoint::post("/v1/dlq/{queue}/replay", admin)
            .doc(action(
                "replay_dlq",
                "Replay parked messages to their queue",
                "replayed",
            ))
            .input(optional_body(body_limit))
            .to(
                |req: Request, (queue,): (String,), body: Bytes| async move {
                    dlq_operation(&req, Operation::Replay, &queue, &body).await
                },
            ),
        Endpoint::post("/v1/dlq/{queue}/purge", admin)
            .doc(action("purge_dlq", "Drop parked messages", "purged"))
            .input(optional_body(body_limit))
            .to(
                |req: Request, (queue,): (String,), body: Bytes| async move {
                    dlq_operation(&req, Operation::Purge, &queue, &body).await
                },
            ),
        Endpoint::get("/v1/failed-jobs", read)
            .doc(
                Doc::new("list_failed_jobs", "Failed jobs, newest first")
                    .query::<FailedJobsQuery>()
                    .answer(200, "The rows.", shape::rows("failed_jobs"))
                    .unavailable(),
            )
            .input(warp::query::<FailedJobsQuery>())
            .to(failed_jobs),
        Endpoint::post("/v1/failed-jobs/{id}/retry", admin)
            .doc(
                Doc::new("retry_failed_job", "Replay one failed job's parked message")
                    .answer(200, "Replayed.", shape::any_object())
                    .error(404, &["failed_job_not_found", "unknown_queue"])
                    .error(409, &["not_parked", "operation_running"])
                    .error(503, &["dlq_interrupted"])
                    .unavailable(),
            )
            .to(|req: Request, (id,): (Uuid,), ()| async move {
                let retried = req
                    .state
                    .operator
                    .retry_failed_job(&req.actor(), id)
                    .await?;
                json(&retried)
            }),
    ]
}

/// `GET /v1/dlq/{queue}`: a peek at the parked messages, filtered.
async fn show(req: Request, (queue,): (String,), query: DlqShowQuery) -> Reply {
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
    let peek = req
        .state
        .operator
        .dlq()
        .show(&queue, &filter, limit)
        .await?;
    json(&peek)
}

/// `POST /v1/dlq/{queue}/replay|purge`: the operation runs to its end under the queue's lock
/// and is recorded in the audit log; the answer says how many messages moved.
async fn dlq_operation(req: &Request, op: Operation, queue: &str, body: &[u8]) -> Reply {
    let state = &req.state;
    let filter = dlq_filter(body)?;
    let queue = state.operator.dlq().work_queue(queue)?;
    let detail = crate::operator::filter_detail(&filter);
    let (row, error) = state
        .operator
        .run_now(&req.actor(), op, &queue, filter, detail)
        .await?;
    if let Some(e) = error {
        return Err(e.into());
    }
    let key = op.done();
    json(&json!({"queue": queue, key: row.moved, "action_id": row.id}))
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
pub(super) fn check_reason(reason: Option<String>) -> Result<Option<String>, ApiError> {
    match reason.as_deref() {
        None | Some("exhausted" | "invalid" | "undecodable") => Ok(reason),
        Some(other) => Err(ApiError::InvalidQuery(format!(
            "reason must be exhausted, invalid or undecodable, got {other:?}"
        ))),
    }
}

async fn failed_jobs(req: Request, (): (), query: FailedJobsQuery) -> Reply {
    let limit = list_limit(query.limit, FAILED_JOBS_LIMIT)?;
    super::no_nul("queue", query.queue.as_deref())?;
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
    let rows = req
        .state
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
    json(&json!({ "failed_jobs": rows }))
}
