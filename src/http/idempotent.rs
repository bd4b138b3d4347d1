//! The HTTP side of idempotent publish: which requests share a key (a caller's
//! `Idempotency-Key` on one route, or a CloudEvent's `source` + `id`), and running a request's
//! effect at most once per key through the remembered answers ([`crate::idempotency`]).
//!
//! - `Idempotency-Key` (1 to 255 characters, the check `POST /v1/sagas/{kind}` uses) is scoped
//!   to the caller (the token's name; `anonymous` when authentication is off) and the route
//!   template. The same key with the same request (route values, query and body hashed) is
//!   answered with the first answer, its status and body, and `Idempotent-Replayed: true`; with
//!   another request it is 422 `idempotency_key_reused`.
//! - A CloudEvent's `source` + `id` is its identity whoever sends it: a repeat is answered with
//!   the first answer (the CloudEvents spec lets a consumer take such events as duplicates, so
//!   the content is not compared).
//! - Two requests under one key at once both run the effect with the same derived message id;
//!   the first answer recorded wins and the other request answers it (see the module doc of
//!   [`crate::idempotency`]).

use std::future::Future;

use serde_json::Value;
use uuid::Uuid;
use warp::{
    http::{HeaderValue, StatusCode},
    reply::Reply as _,
};

use super::{ApiError, HttpState, Response, route::Request};
use crate::{
    broker::envelope::cloudevent_event_id,
    idempotency::{Answer, derived_id, fingerprint},
};

/// The key one request runs under.
#[derive(Debug, Clone)]
pub(super) struct Keyed {
    scope: String,
    key: String,
    fingerprint: String,
    /// The id of the message the request publishes (the same on every retry).
    pub(super) id: Uuid,
    /// Whether a repeat must be the same request (an `Idempotency-Key`), or is a repeat by its
    /// identity alone (a CloudEvent).
    compare: bool,
}

impl Keyed {
    /// The caller's `Idempotency-Key` on `route`, if sent, for a request made of `parts`.
    pub(super) fn header(
        req: &Request,
        route: &str,
        key: Option<String>,
        parts: &[&[u8]],
    ) -> Result<Option<Self>, ApiError> {
        super::sagas::check_key("Idempotency-Key", key.as_deref())
            .map_err(ApiError::InvalidHeader)?;
        let Some(key) = key else { return Ok(None) };
        let scope = format!("{} {route}", req.actor());
        Ok(Some(Self {
            id: derived_id(&scope, &key),
            fingerprint: fingerprint(parts),
            scope,
            key,
            compare: true,
        }))
    }

    /// A CloudEvent's identity.
    pub(super) fn cloudevent(source: &str, id: &str) -> Self {
        Self {
            scope: "cloudevent".to_owned(),
            key: serde_json::json!([source, id]).to_string(),
            fingerprint: String::new(),
            id: cloudevent_event_id(source, id),
            compare: false,
        }
    }

    fn replay(&self, first: Answer, id_name: &'static str) -> Result<Outcome, ApiError> {
        if self.compare && first.fingerprint != self.fingerprint {
            let id = first.body[id_name]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_default();
            return Err(ApiError::IdempotencyKeyReused {
                key: self.key.clone(),
                id_name,
                id,
            });
        }
        let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
        Ok(Outcome {
            status,
            body: first.body,
            replayed: true,
        })
    }
}

/// What a request under a key answers.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Outcome {
    /// HTTP status.
    pub(super) status: StatusCode,
    /// JSON body.
    pub(super) body: Value,
    /// Whether this is the answer remembered for an earlier request.
    pub(super) replayed: bool,
}

impl Outcome {
    /// A first answer.
    pub(super) fn fresh(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            replayed: false,
        }
    }

    /// The HTTP answer, with `Idempotent-Replayed` when under a key.
    pub(super) fn into_response(self, keyed: bool) -> Response {
        let mut resp =
            warp::reply::with_status(warp::reply::json(&self.body), self.status).into_response();
        if keyed {
            let v = if self.replayed { "true" } else { "false" };
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static(v));
        }
        resp
    }
}

/// Runs `act` once per key: a remembered answer is replayed (or refused, for another request
/// under the same key); else `act` runs and its answer is remembered. Without a key `act` just
/// runs. `id_name` is the answer's id field (`event_id`, `job_id`, `saga_id`), named in a 422.
///
/// When the database cannot be read or written the request still runs (its message id is
/// derived from the key, so a repeat is dropped downstream) and the failure is logged.
pub(super) async fn once<F, Fut>(
    state: &HttpState,
    keyed: Option<&Keyed>,
    id_name: &'static str,
    act: F,
) -> Result<Outcome, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Outcome, ApiError>>,
{
    let Some(keyed) = keyed else {
        return act().await;
    };
    let store = &state.idempotency;
    match store.find(&keyed.scope, &keyed.key).await {
        Ok(Some(first)) => return keyed.replay(first, id_name),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "Cannot look up the idempotency key; running the request.")
        }
    }
    let outcome = match act().await {
        Ok(o) => o,
        // A request racing this one may have done the work (a saga it started first).
        Err(e) => {
            return match store.find(&keyed.scope, &keyed.key).await {
                Ok(Some(first)) => keyed.replay(first, id_name),
                _ => Err(e),
            };
        }
    };
    let answer = Answer {
        fingerprint: keyed.fingerprint.clone(),
        status: outcome.status.as_u16(),
        body: outcome.body.clone(),
    };
    match store.remember(&keyed.scope, &keyed.key, &answer).await {
        Ok(None) => Ok(outcome),
        Ok(Some(first)) => keyed.replay(first, id_name),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot record the idempotency key; a retry runs again with the same id.");
            Ok(outcome)
        }
    }
}
