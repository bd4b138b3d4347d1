//! The saga routes: `POST /v1/orders` starts the order saga, `GET /v1/orders/{order_no}`,
//! `GET /v1/sagas`, `GET /v1/sagas/{id}`, the interventions (`GET /v1/interventions`,
//! `POST /v1/interventions/{id}/retry|resolve`) and `POST /v1/admin/seed`.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;
use warp::{Filter, filters::BoxedFilter, http::StatusCode, reply::Reply as _};

use super::{ApiError, Ctx, HttpState, Response, Route, optional_body};
use crate::saga::{
    engine::STATUSES,
    order::{OrderRequest, Seed},
};

/// Default and largest `?limit=` of the saga lists.
pub const SAGA_LIST_LIMIT: (u64, u64) = (50, 500);

/// Query of `GET /v1/sagas`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SagaListQuery {
    /// Only sagas in this state (`running`, `compensating`, `completed`, `compensated`,
    /// `needs_intervention`).
    pub state: Option<String>,
    /// Only sagas of this kind.
    pub kind: Option<String>,
    /// How many (default 50, at most 500).
    pub limit: Option<u64>,
}

/// Query of `GET /v1/interventions`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InterventionsQuery {
    /// Also resolved ones.
    #[serde(default)]
    pub all: bool,
    /// How many (default 50, at most 500).
    pub limit: Option<u64>,
}

/// Body of the intervention actions.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    note: Option<String>,
}

/// The saga routes.
pub(super) fn routes(body_limit: u64) -> BoxedFilter<(Route,)> {
    let auth = super::auth::credentials;
    let create = warp::path!("v1" / "orders")
        .and(warp::post())
        .and(auth())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>("traceparent"))
        .and(warp::body::content_length_limit(body_limit))
        .and(warp::body::bytes())
        .map(|auth, content_type, traceparent, body| Route::CreateOrder {
            auth,
            content_type,
            traceparent,
            body,
        })
        .boxed();
    let get_order = warp::path!("v1" / "orders" / String)
        .and(warp::get())
        .and(auth())
        .map(|order_no, auth| Route::GetOrder { order_no, auth })
        .boxed();
    let list = warp::path!("v1" / "sagas")
        .and(warp::get())
        .and(warp::query::<SagaListQuery>())
        .and(auth())
        .map(|query, auth| Route::ListSagas { query, auth })
        .boxed();
    let get = warp::path!("v1" / "sagas" / Uuid)
        .and(warp::get())
        .and(auth())
        .map(|id, auth| Route::GetSaga { id, auth })
        .boxed();
    let interventions = warp::path!("v1" / "interventions")
        .and(warp::get())
        .and(warp::query::<InterventionsQuery>())
        .and(auth())
        .map(|query, auth| Route::ListInterventions { query, auth })
        .boxed();
    let retry = warp::path!("v1" / "interventions" / Uuid / "retry")
        .and(warp::post())
        .and(auth())
        .and(optional_body(body_limit))
        .map(|id, auth, body| Route::RetryIntervention { id, auth, body })
        .boxed();
    let resolve = warp::path!("v1" / "interventions" / Uuid / "resolve")
        .and(warp::post())
        .and(auth())
        .and(optional_body(body_limit))
        .map(|id, auth, body| Route::ResolveIntervention { id, auth, body })
        .boxed();
    let seed = warp::path!("v1" / "admin" / "seed")
        .and(warp::post())
        .and(auth())
        .and(warp::body::content_length_limit(body_limit))
        .and(warp::body::bytes())
        .map(|auth, body| Route::Seed { auth, body })
        .boxed();
    create
        .or(get_order)
        .unify()
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(interventions)
        .unify()
        .or(retry)
        .unify()
        .or(resolve)
        .unify()
        .or(seed)
        .unify()
        .boxed()
}

/// The template of a saga route, for requests rejected before routing.
pub(super) fn template_for(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    Some(match segments.as_slice() {
        ["", "v1", "orders"] => "/v1/orders",
        ["", "v1", "orders", _] => "/v1/orders/{order_no}",
        ["", "v1", "sagas"] => "/v1/sagas",
        ["", "v1", "sagas", _] => "/v1/sagas/{id}",
        ["", "v1", "interventions"] => "/v1/interventions",
        ["", "v1", "interventions", _, "retry"] => "/v1/interventions/{id}/retry",
        ["", "v1", "interventions", _, "resolve"] => "/v1/interventions/{id}/resolve",
        ["", "v1", "admin", "seed"] => "/v1/admin/seed",
        _ => return None,
    })
}

fn json_body<T: serde::de::DeserializeOwned>(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<T, ApiError> {
    let data = super::parse_data(content_type, body)?;
    serde_json::from_value(data).map_err(|e| ApiError::InvalidOrder(e.to_string()))
}

fn limit(requested: Option<u64>) -> Result<u64, ApiError> {
    super::list_limit(requested, SAGA_LIST_LIMIT)
}

/// `POST /v1/orders`: validates and starts the order saga.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, order_no, saga_id, trace_id))]
pub(super) async fn create_order(
    state: &HttpState,
    ctx: &Ctx,
    content_type: Option<String>,
    traceparent: Option<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let order: OrderRequest = json_body(content_type.as_deref(), &body)?;
    order.validate().map_err(ApiError::InvalidOrder)?;
    tracing::Span::current().record("order_no", order.order_no.as_str());
    let trace = crate::telemetry::outgoing(traceparent.as_deref());
    tracing::Span::current().record("trace_id", trace.trace_id.as_str());
    let payload = serde_json::to_value(&order).map_err(|e| ApiError::Internal(e.to_string()))?;
    let id = state
        .sagas
        .start(
            "order",
            Some(order.order_no.clone()),
            payload,
            Some(trace.header()),
            None,
        )
        .await?;
    tracing::Span::current().record("saga_id", tracing::field::display(id));
    Ok(warp::reply::with_status(
        warp::reply::json(&json!({
            "saga_id": id,
            "order_no": order.order_no,
            "status": "running",
            "links": {"saga": format!("/v1/sagas/{id}")},
        })),
        StatusCode::ACCEPTED,
    )
    .into_response())
}

/// Handles a saga route.
pub(super) async fn handle(
    state: &HttpState,
    ctx: &Ctx,
    route: Route,
) -> Result<Response, ApiError> {
    let json = |v: serde_json::Value| Ok(warp::reply::json(&v).into_response());
    match route {
        Route::CreateOrder {
            content_type,
            traceparent,
            body,
            ..
        } => create_order(state, ctx, content_type, traceparent, body).await,
        Route::GetOrder { order_no, .. } => {
            let order = state
                .reads
                .order(&order_no)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let saga_id = state.sagas.by_key("order", &order_no).await?;
            let Some(saga_id) = saga_id else {
                return Err(ApiError::OrderNotFound(order_no));
            };
            let saga = state.sagas.get(saga_id).await?;
            json(json!({"order": order, "saga": saga}))
        }
        Route::ListSagas { query, .. } => {
            if let Some(s) = query.state.as_deref()
                && !STATUSES.contains(&s)
            {
                return Err(ApiError::InvalidQuery(format!(
                    "state must be one of {}, got {s:?}",
                    STATUSES.join(", ")
                )));
            }
            let rows = state
                .sagas
                .list(
                    query.state.as_deref(),
                    query.kind.as_deref(),
                    limit(query.limit)?,
                )
                .await?;
            json(json!({ "sagas": rows }))
        }
        Route::GetSaga { id, .. } => {
            let view = state.sagas.get(id).await?;
            json(serde_json::to_value(view).map_err(|e| ApiError::Internal(e.to_string()))?)
        }
        Route::ListInterventions { query, .. } => {
            let rows = state
                .sagas
                .interventions(query.all, limit(query.limit)?)
                .await?;
            json(json!({ "interventions": rows }))
        }
        Route::Seed { body, .. } => {
            let seed: Seed = json_body(Some("application/json"), &body)?;
            seed.validate().map_err(ApiError::InvalidOrder)?;
            state
                .reads
                .seed(&seed)
                .await
                .map_err(|e| ApiError::Internal(format!("seeding failed: {e}")))?;
            json(json!({
                "inventory": seed.inventory.len(),
                "accounts": seed.accounts.len(),
            }))
        }
        _ => Err(ApiError::NotFound),
    }
}

/// The intervention actions (the operator service's): retry the failed compensation, or
/// resolve it with a note. Both go into the saga's timeline with the operator's name, and
/// into the audit log.
pub(super) async fn intervene(
    state: &HttpState,
    actor: &str,
    route: Route,
) -> Result<Response, ApiError> {
    let (key, id, view) = match route {
        Route::RetryIntervention { id, body, .. } => {
            let note = note(&body)?.note;
            let view = state.operator.retry_intervention(actor, id, note).await?;
            ("retried", id, view)
        }
        Route::ResolveIntervention { id, body, .. } => {
            let note = note(&body)?
                .note
                .filter(|n| !n.trim().is_empty())
                .ok_or_else(|| {
                    ApiError::InvalidOrder(
                        "resolving needs a JSON body with a note saying what was done by hand"
                            .to_owned(),
                    )
                })?;
            let view = state.operator.resolve_intervention(actor, id, note).await?;
            ("resolved", id, view)
        }
        _ => return Err(ApiError::NotFound),
    };
    Ok(warp::reply::json(&json!({key: id, "saga": view})).into_response())
}

fn note(body: &[u8]) -> Result<NoteBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(NoteBody::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))
}
