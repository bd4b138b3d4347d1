//! The saga routes: `POST /v1/orders` starts the order saga, `POST /v1/sagas/{kind}` any
//! defined saga (with `Idempotency-Key`), `GET /v1/orders/{order_no}`,
//! `GET /v1/sagas`, `GET /v1/sagas/{id}`, the interventions (`GET /v1/interventions`,
//! `POST /v1/interventions/{id}/retry|resolve`) and `POST /v1/admin/seed`.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;
use warp::{Filter, http::StatusCode, reply::Reply as _};

use super::{
    ApiError, JsonBody,
    idempotent::{self, Keyed, Outcome},
    openapi::{Doc, shape},
    optional_body,
    route::{Access, Endpoint, Reply, Request, json},
};
use crate::{
    config::Scope,
    saga::{
        Start, Started,
        engine::STATUSES,
        order::{OrderRequest, Seed},
    },
};

/// Longest `Idempotency-Key` and business key accepted.
const MAX_KEY_LEN: usize = 255;

/// Body of `POST /v1/sagas/{kind}`: what `saga.start` takes besides the kind.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// Unique per kind (an order number), optional.
    #[serde(default)]
    business_key: Option<String>,
    /// The saga's input, handed to every command.
    #[serde(default)]
    #[schema(value_type = Object)]
    payload: serde_json::Value,
}

/// Default and largest `?limit=` of the saga lists.
pub(crate) const SAGA_LIST_LIMIT: (u64, u64) = (50, 500);

/// Query of `GET /v1/sagas`.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct SagaListQuery {
    /// Only sagas in this state (`running`, `compensating`, `completed`, `compensated`,
    /// `needs_intervention`).
    pub state: Option<String>,
    /// Only sagas of this kind.
    pub kind: Option<String>,
    /// How many (default 50, at most 500).
    pub limit: Option<u64>,
}

/// Query of `GET /v1/interventions`.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct InterventionsQuery {
    /// Also resolved ones.
    #[serde(default)]
    pub all: bool,
    /// How many (default 50, at most 500).
    pub limit: Option<u64>,
}

/// Body of the intervention actions.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    /// What was done (required to resolve).
    note: Option<String>,
}

/// The saga routes.
pub(super) fn endpoints(body_limit: u64) -> Vec<Endpoint> {
    let (read, admin) = (Access::Scoped(Scope::Read), Access::Scoped(Scope::Admin));
    let saga_errors = |doc: Doc| {
        doc.error(404, &["saga_not_found"])
            .error(409, &["saga_conflict"])
            .error(500, &["saga_corrupt"])
            .error(503, &["saga_contended"])
            .unavailable()
    };
    let intervention = |id, summary, done| {
        saga_errors(
            Doc::new(id, summary)
                .optional_body::<NoteBody>()
                .answer(
                    200,
                    "Done; the saga as it stands now.",
                    shape::object(vec![(done, shape::uuid()), ("saga", shape::any_object())]),
                )
                .error(404, &["intervention_not_found"])
                .error(409, &["operation_running"]),
        )
    };
    vec![
        Endpoint::post("/v1/orders", Access::Publish)
            .doc(super::publish::idempotent_doc(
                Doc::new("create_order", "Start the order saga")
                    .json_body::<OrderRequest>()
                    .answer(
                        202,
                        "Started.",
                        shape::object(vec![
                            ("saga_id", shape::uuid()),
                            ("order_no", shape::string()),
                            ("status", shape::one_of(&["running"])),
                            ("links", shape::object(vec![("saga", shape::string())])),
                        ]),
                    )
                    .error(409, &["order_exists"])
                    .error(422, &["invalid_order"])
                    .unavailable(),
            ))
            .input(
                super::json_body(body_limit)
                    .and(super::publish::idempotency_key())
                    .map(|body, key| (body, key)),
            )
            .to(create_order),
        Endpoint::post("/v1/sagas/{kind}", Access::Publish)
            .doc(saga_errors(
                Doc::new("start_saga", "Start a saga of a defined kind")
                    .describe(
                        "With an `Idempotency-Key` that already started a saga: 200 and that \
                         saga when the body is the same (`Idempotent-Replayed: true`), 422 \
                         `idempotency_key_reused` when it is not.",
                    )
                    .header("Idempotency-Key", "1 to 255 characters; one saga per key.")
                    .json_body::<StartBody>()
                    .answer(202, "Started.", started())
                    .answer(200, "Started before under this Idempotency-Key.", started())
                    .answer_header(202, "Location", "The saga.")
                    .answer_header(200, "Location", "The saga.")
                    .answer_header(200, "Idempotent-Replayed", "`true`.")
                    .answer_header(202, "Idempotent-Replayed", "`false`.")
                    .error(404, &["unknown_saga_kind"])
                    .error(409, &["order_exists"])
                    .error(
                        422,
                        &["invalid_saga_start", "invalid_order", "idempotency_key_reused"],
                    ),
            ))
            .input(
                super::json_body(body_limit)
                    .and(warp::header::optional::<String>("idempotency-key"))
                    .map(|body, key| (body, key)),
            )
            .to(start_saga),
        Endpoint::get("/v1/orders/{order_no}", read)
            .doc(saga_errors(
                Doc::new("get_order", "An order and its saga")
                    .answer(
                        200,
                        "The order (null until the orders participant stored it) and its saga.",
                        shape::object(vec![
                            ("order", shape::nullable_object()),
                            ("saga", shape::any_object()),
                        ]),
                    )
                    .error(404, &["order_not_found"])
                    .error(500, &["internal"]),
            ))
            .to(get_order),
        Endpoint::get("/v1/sagas", read)
            .doc(
                Doc::new("list_sagas", "Sagas, newest first")
                    .query::<SagaListQuery>()
                    .answer(200, "The sagas.", shape::rows("sagas"))
                    .unavailable(),
            )
            .input(warp::query::<SagaListQuery>())
            .to(list_sagas),
        Endpoint::get("/v1/sagas/{id}", read)
            .doc(saga_errors(Doc::new("get_saga", "A saga with its steps and timeline").answer(
                200,
                "The saga.",
                shape::any_object(),
            )))
            .to(|req: Request, (id,): (Uuid,), ()| async move {
            json(&req.state.sagas.get(id).await?)
        }),
        Endpoint::get("/v1/interventions", read)
            .doc(
                Doc::new("list_interventions", "Sagas waiting for an operator")
                    .query::<InterventionsQuery>()
                    .answer(200, "The interventions.", shape::rows("interventions"))
                    .unavailable(),
            )
            .input(warp::query::<InterventionsQuery>())
            .to(|req: Request, (), query: InterventionsQuery| async move {
                let rows = req
                    .state
                    .sagas
                    .interventions(query.all, limit(query.limit)?)
                    .await?;
                json(&json!({ "interventions": rows }))
            }),
        Endpoint::post("/v1/interventions/{id}/retry", admin)
            .doc(intervention(
                "retry_intervention",
                "Retry a failed compensation",
                "retried",
            ))
            .input(optional_body(body_limit))
            .to(retry_intervention),
        Endpoint::post("/v1/interventions/{id}/resolve", admin)
            .doc(
                intervention(
                    "resolve_intervention",
                    "Close an intervention done by hand (a note is required)",
                    "resolved",
                )
                .error(422, &["invalid_order"]),
            )
            .input(optional_body(body_limit))
            .to(resolve_intervention),
        Endpoint::post("/v1/admin/seed", admin)
            .doc(
                Doc::new("seed", "Set stock per SKU and balances per user")
                    .required_body::<Seed>()
                    .answer(
                        200,
                        "How many rows were set.",
                        shape::object(vec![
                            ("inventory", shape::integer()),
                            ("accounts", shape::integer()),
                        ]),
                    )
                    .error(411, &["length_required"])
                    .error(422, &["invalid_order", "data_not_an_object"])
                    .error(500, &["internal"]),
            )
            .input(warp::body::content_length_limit(body_limit).and(warp::body::bytes()))
            .to(seed),
    ]
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

/// The answer of a started saga.
fn started() -> super::openapi::Schema {
    shape::object(vec![
        ("saga_id", shape::uuid()),
        ("kind", shape::string()),
        ("business_key", shape::nullable_string()),
        ("status", shape::string()),
        ("links", shape::object(vec![("self", shape::string())])),
    ])
}

/// `POST /v1/orders`: validates and starts the order saga.
#[tracing::instrument(skip_all, fields(request_id = %req.ctx.request_id, order_no, saga_id, trace_id))]
async fn create_order(req: Request, (): (), (body, key): (JsonBody, Option<String>)) -> Reply {
    let keyed = Keyed::header(&req, "/v1/orders", key, &[&body.bytes])?;
    let outcome = idempotent::once(&req.state, keyed.as_ref(), "saga_id", || {
        start_order(&req, body)
    })
    .await?;
    Ok(outcome.into_response(keyed.is_some()))
}

/// Validates and starts the order saga of `POST /v1/orders`.
async fn start_order(req: &Request, body: JsonBody) -> Result<Outcome, ApiError> {
    let order: OrderRequest = json_body(body.content_type.as_deref(), &body.bytes)?;
    order.validate().map_err(ApiError::InvalidOrder)?;
    tracing::Span::current().record("order_no", order.order_no.as_str());
    let trace = crate::telemetry::outgoing(body.traceparent.as_deref());
    tracing::Span::current().record("trace_id", trace.trace_id.as_str());
    let payload = serde_json::to_value(&order).map_err(|e| ApiError::Internal(e.to_string()))?;
    let id = req
        .state
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
    Ok(Outcome::fresh(
        StatusCode::ACCEPTED,
        json!({
            "saga_id": id,
            "order_no": order.order_no,
            "status": "running",
            "links": {"saga": format!("/v1/sagas/{id}")},
        }),
    ))
}

/// `POST /v1/sagas/{kind}`: starts a saga of `kind` (202, `Location` the saga). With an
/// `Idempotency-Key` that already started one: 200 and the same saga when the body is the
/// same (`Idempotent-Replayed: true`), 422 when it is not; nothing is started either way.
#[tracing::instrument(skip_all, fields(request_id = %req.ctx.request_id, kind = %kind, saga_id, trace_id))]
async fn start_saga(
    req: Request,
    (kind,): (String,),
    (body, key): (JsonBody, Option<String>),
) -> Reply {
    let sagas = &req.state.sagas;
    if sagas.definition(&kind).is_none() {
        return Err(crate::saga::SagaError::UnknownKind(kind).into());
    }
    let data = super::parse_data(body.content_type.as_deref(), &body.bytes)?;
    let start: StartBody =
        serde_json::from_value(data).map_err(|e| ApiError::InvalidSagaStart(e.to_string()))?;
    let start = if kind == "order" {
        order_start(start)?
    } else {
        start
    };
    check_key("business_key", start.business_key.as_deref()).map_err(ApiError::InvalidSagaStart)?;
    check_key("Idempotency-Key", key.as_deref()).map_err(ApiError::InvalidSagaStart)?;
    let trace = crate::telemetry::outgoing(body.traceparent.as_deref());
    tracing::Span::current().record("trace_id", trace.trace_id.as_str());
    let start = Start {
        business_key: start.business_key,
        payload: start.payload,
        traceparent: Some(trace.header()),
        idempotency_key: key.clone(),
    };
    let (id, status, code) = match key {
        None => {
            let (bk, payload) = (start.business_key.clone(), start.payload.clone());
            let id = sagas
                .start(&kind, bk, payload, start.traceparent, None)
                .await?;
            (id, "running".to_owned(), StatusCode::ACCEPTED)
        }
        Some(key) => match sagas.start_idempotent(&kind, start.clone()).await? {
            Started::New(id) => (id, "running".to_owned(), StatusCode::ACCEPTED),
            Started::Existing(row)
                if row.business_key == start.business_key && row.payload == start.payload =>
            {
                (row.id, row.status, StatusCode::OK)
            }
            Started::Existing(row) => {
                return Err(ApiError::IdempotencyKeyReused {
                    key,
                    id_name: "saga_id",
                    id: row.id,
                });
            }
        },
    };
    tracing::Span::current().record("saga_id", tracing::field::display(id));
    let link = format!("/v1/sagas/{id}");
    let reply = warp::reply::with_status(
        warp::reply::json(&json!({
            "saga_id": id,
            "kind": kind,
            "business_key": start.business_key,
            "status": status,
            "links": {"self": link},
        })),
        code,
    );
    let reply = warp::reply::with_header(reply, "location", link);
    let replayed = if code == StatusCode::OK {
        "true"
    } else {
        "false"
    };
    Ok(warp::reply::with_header(reply, "idempotent-replayed", replayed).into_response())
}

/// The order saga started this way meets `POST /v1/orders`' rules: the payload is a valid
/// order, and the business key is its order number (given, or taken from the payload), so
/// `GET /v1/orders/{order_no}` finds it.
fn order_start(start: StartBody) -> Result<StartBody, ApiError> {
    let order: OrderRequest = serde_json::from_value(start.payload.clone())
        .map_err(|e| ApiError::InvalidOrder(format!("payload: {e}")))?;
    order.validate().map_err(ApiError::InvalidOrder)?;
    match start.business_key {
        Some(k) if k != order.order_no => Err(ApiError::InvalidOrder(format!(
            "the business key of an order saga is its order number: {k:?} is not {:?}",
            order.order_no
        ))),
        _ => Ok(StartBody {
            business_key: Some(order.order_no),
            payload: start.payload,
        }),
    }
}

/// A key (business key, `Idempotency-Key`) is 1 to 255 characters when given.
pub(super) fn check_key(what: &str, key: Option<&str>) -> Result<(), String> {
    match key {
        Some(k) if k.trim().is_empty() || k.len() > MAX_KEY_LEN => {
            Err(format!("{what} must be 1 to {MAX_KEY_LEN} characters"))
        }
        _ => Ok(()),
    }
}

/// `GET /v1/orders/{order_no}`: the order and its saga.
async fn get_order(req: Request, (order_no,): (String,), (): ()) -> Reply {
    let state = &req.state;
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
    json(&json!({"order": order, "saga": saga}))
}

/// `GET /v1/sagas`.
async fn list_sagas(req: Request, (): (), query: SagaListQuery) -> Reply {
    super::no_nul("kind", query.kind.as_deref())?;
    if let Some(s) = query.state.as_deref()
        && !STATUSES.contains(&s)
    {
        return Err(ApiError::InvalidQuery(format!(
            "state must be one of {}, got {s:?}",
            STATUSES.join(", ")
        )));
    }
    let rows = req
        .state
        .sagas
        .list(
            query.state.as_deref(),
            query.kind.as_deref(),
            limit(query.limit)?,
        )
        .await?;
    json(&json!({ "sagas": rows }))
}

/// `POST /v1/admin/seed`: stock and balances for the order saga's participants.
async fn seed(req: Request, (): (), body: Bytes) -> Reply {
    let seed: Seed = json_body(Some("application/json"), &body)?;
    seed.validate().map_err(ApiError::InvalidOrder)?;
    req.state
        .reads
        .seed(&seed)
        .await
        .map_err(|e| ApiError::Internal(format!("seeding failed: {e}")))?;
    json(&json!({
        "inventory": seed.inventory.len(),
        "accounts": seed.accounts.len(),
    }))
}

/// `POST /v1/interventions/{id}/retry`: the operator service retries the failed
/// compensation. It goes into the saga's timeline with the operator's name, and into the
/// audit log.
async fn retry_intervention(req: Request, (id,): (Uuid,), body: Bytes) -> Reply {
    let note = note(&body)?.note;
    let view = req
        .state
        .operator
        .retry_intervention(&req.actor(), id, note)
        .await?;
    json(&json!({"retried": id, "saga": view}))
}

/// `POST /v1/interventions/{id}/resolve`: the operator says what was done by hand (a note
/// is required); recorded like a retry.
async fn resolve_intervention(req: Request, (id,): (Uuid,), body: Bytes) -> Reply {
    let note = note(&body)?
        .note
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| {
            ApiError::InvalidOrder(
                "resolving needs a JSON body with a note saying what was done by hand".to_owned(),
            )
        })?;
    let view = req
        .state
        .operator
        .resolve_intervention(&req.actor(), id, note)
        .await?;
    json(&json!({"resolved": id, "saga": view}))
}

fn note(body: &[u8]) -> Result<NoteBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(NoteBody::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))
}
