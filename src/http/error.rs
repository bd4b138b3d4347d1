//! HTTP errors: one enum, mapped to a status code and a JSON body in one place.
//!
//! Every error body is `{"error": {"code", "message"}, "request_id"}`. A 5xx logs its cause
//! and answers a message that names the problem without internals.

use serde_json::json;
use warp::http::StatusCode;

use crate::{
    broker::publisher::PublishError,
    config::Scope,
    operator::{OperatorError, dlq::DlqError},
    saga::SagaError,
    store::StoreError,
};

/// The body of every error answer (`ApiError::body`), and its schema in the OpenAPI document.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody {
    /// What went wrong.
    error: ErrorDetail,
    /// The request's id (`X-Request-ID`).
    request_id: String,
    /// The saga an order number or `Idempotency-Key` already started (`order_exists`,
    /// `idempotency_key_reused` on the saga routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    saga_id: Option<uuid::Uuid>,
    /// The event an `Idempotency-Key` already published (`idempotency_key_reused` on
    /// `POST /v1/events/{name}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<uuid::Uuid>,
    /// The job an `Idempotency-Key` already enqueued (`idempotency_key_reused` on
    /// `POST /v1/jobs/{name}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<uuid::Uuid>,
    /// How many parked messages a console operation would move (`confirmation_required`).
    #[serde(skip_serializing_if = "Option::is_none")]
    matched: Option<u32>,
}

/// The `error` of an [`ErrorBody`].
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct ErrorDetail {
    /// A stable machine-readable code (`invalid_json`, `forbidden`, ...).
    code: String,
    /// What is wrong, for people.
    message: String,
    /// The scope the route needs (`forbidden`).
    #[serde(skip_serializing_if = "Option::is_none")]
    required_scope: Option<String>,
    /// The CloudEvents attribute at fault (`invalid_cloudevent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    attribute: Option<String>,
}

/// A request whose headers together exceed the limit (the limit in bytes).
#[derive(Debug)]
pub(super) struct HeadersTooLarge(pub usize);

impl warp::reject::Reject for HeadersTooLarge {}

/// Everything an HTTP request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No route for this path.
    #[error("no route for this path")]
    NotFound,
    /// The route exists, the method does not.
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The token is valid but lacks the scope this route needs.
    #[error("this token lacks the `{}` scope this route needs", .0.as_str())]
    Forbidden(Scope),
    /// The caller sent more publish requests than `http.rate_limit_per_sec` allows.
    #[error("too many requests: over this caller's rate limit, retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the next request would be accepted (rounded up).
        retry_after_secs: u64,
    },
    /// `http.max_in_flight_publishes` publishes are being handled already.
    #[error("overloaded: {0} publish requests are in flight already, retry shortly")]
    Overloaded(usize),
    /// The body is larger than `http.body_limit_bytes`.
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(u64),
    /// No Content-Length header.
    #[error("a Content-Length header is required")]
    LengthRequired,
    /// The request's headers together are larger than [`super::MAX_HEADER_BYTES`].
    #[error("request headers are larger than the limit of {0} bytes")]
    HeadersTooLarge(usize),
    /// A header is missing, not visible ASCII, or does not parse.
    #[error("{0}")]
    InvalidHeader(String),
    /// The body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// A form body (`application/x-www-form-urlencoded`) does not parse.
    #[error("request body is not a valid form: {0}")]
    InvalidForm(String),
    /// Content-Type is set and is not JSON.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// The event's `data` must be a JSON object.
    #[error("request body must be a JSON object (the event's data), got {0}")]
    NotAnObject(&'static str),
    /// The event name breaks the naming rule.
    #[error("invalid event name {name:?}: {reason}")]
    InvalidEventName {
        /// The name as sent (truncated).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// No queue takes this job name.
    #[error("no module takes job {0:?}")]
    UnknownJob(String),
    /// The settings have no HTTP subscription of this name.
    #[error("no subscription {0:?} in the settings")]
    UnknownSubscription(String),
    /// A query parameter is wrong.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The broker did not safely take the message.
    #[error("the broker could not take the message: {0}")]
    Broker(#[from] PublishError),
    /// Neither the broker nor the events outbox could take the message.
    #[error("the message was not stored: {0}")]
    NotStored(String),
    /// A dead-letter operation failed (unknown queue, broker or database trouble, or a
    /// replay or purge that stopped part-way; the message says how many were done).
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// The database did not answer.
    #[error("the database is unavailable: {0}")]
    Store(#[from] StoreError),
    /// No `failed_jobs` row has this id.
    #[error("no failed job with id {0}")]
    FailedJobNotFound(uuid::Uuid),
    /// The failed job's message is no longer parked (already replayed or purged).
    #[error("the message of failed job {id} is no longer parked in {queue}.dead")]
    NotParked {
        /// The `failed_jobs` row.
        id: uuid::Uuid,
        /// Its work queue.
        queue: String,
    },
    /// The order (or other saga input) breaks a rule.
    #[error("invalid order: {0}")]
    InvalidOrder(String),
    /// A saga operation failed.
    #[error(transparent)]
    Saga(#[from] SagaError),
    /// The body of `POST /v1/sagas/{kind}` breaks a rule.
    #[error("invalid saga start: {0}")]
    InvalidSagaStart(String),
    /// An `Idempotency-Key` was first used with another request (another body) on this route.
    #[error(
        "Idempotency-Key {key:?} was first used with another request (its {id_name} is {id}); use a new key for a new request"
    )]
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// What the first request's answer names (`saga_id`, `event_id`, `job_id`).
        id_name: &'static str,
        /// The id the first request's answer gave.
        id: uuid::Uuid,
    },
    /// A CloudEvent (`POST /v1/events`) breaks the CloudEvents 1.0 rules or warren's name rule
    /// for its `type`; the attribute is named.
    #[error("invalid CloudEvent: {attribute}: {reason}")]
    InvalidCloudEvent {
        /// The attribute at fault (`id`, `source`, `specversion`, `type`, an extension, `data`).
        attribute: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `POST /v1/events` with a body in none of the CloudEvents content modes.
    #[error(
        "not a CloudEvent: {0}; send content-type application/cloudevents+json (structured), application/cloudevents-batch+json (batched), or ce-specversion and the other ce-* headers (binary)"
    )]
    NotACloudEvent(String),
    /// A CloudEvents batch that is not a JSON array of 1 to the bound of events.
    #[error("invalid CloudEvents batch: {0}")]
    InvalidBatch(String),
    /// No order with this number.
    #[error("no order {0:?}")]
    OrderNotFound(String),
    /// An operation's lock is held, no such operation, or the audit log failed (the
    /// operator service's other errors map to their own variants, see the `From`).
    #[error(transparent)]
    Operator(Box<OperatorError>),
    /// A replay or purge from the console needs `"confirm": true`; the body carries the count.
    #[error("{action} of {queue} needs \"confirm\": true; it would move {matched} message(s)")]
    ConfirmationRequired {
        /// `dlq.replay` or `dlq.purge`.
        action: &'static str,
        /// The work queue.
        queue: String,
        /// How many parked messages the selection matches now.
        matched: u32,
    },
    /// Something unexpected.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound | ApiError::UnknownJob(_) | ApiError::UnknownSubscription(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::InvalidJson(_)
            | ApiError::InvalidForm(_)
            | ApiError::InvalidHeader(_)
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidEventName { .. }
            | ApiError::InvalidCloudEvent { .. }
            | ApiError::InvalidBatch(_) => StatusCode::BAD_REQUEST,
            ApiError::NotACloudEvent(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotAnObject(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Broker(_) | ApiError::NotStored(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Dlq(DlqError::UnknownQueue { .. }) | ApiError::FailedJobNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Dlq(_) | ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotParked { .. } => StatusCode::CONFLICT,
            ApiError::Operator(e) => match **e {
                OperatorError::Running { .. } => StatusCode::CONFLICT,
                OperatorError::NotFound(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::ConfirmationRequired { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidOrder(_)
            | ApiError::InvalidSagaStart(_)
            | ApiError::IdempotencyKeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::OrderNotFound(_)
            | ApiError::Saga(
                SagaError::NotFound(_)
                | SagaError::InterventionNotFound(_)
                | SagaError::UnknownKind(_),
            ) => StatusCode::NOT_FOUND,
            ApiError::Saga(SagaError::Duplicate { .. } | SagaError::Conflict(_)) => {
                StatusCode::CONFLICT
            }
            ApiError::Saga(
                SagaError::Db { .. } | SagaError::Contended(_) | SagaError::Publish(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Saga(SagaError::Corrupt(..)) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::UnknownJob(_) => "unknown_job",
            ApiError::UnknownSubscription(_) => "unknown_subscription",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::LengthRequired => "length_required",
            ApiError::HeadersTooLarge(_) => "headers_too_large",
            ApiError::InvalidHeader(_) => "invalid_header",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidForm(_) => "invalid_form",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::NotAnObject(_) => "data_not_an_object",
            ApiError::InvalidEventName { .. } => "invalid_event_name",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::Broker(PublishError::Returned { .. }) => "unroutable",
            ApiError::Broker(PublishError::Timeout(_)) => "broker_timeout",
            ApiError::Broker(PublishError::Blocked) => "broker_blocked",
            ApiError::Broker(PublishError::Nacked) => "broker_nacked",
            ApiError::Broker(_) => "broker_unavailable",
            ApiError::NotStored(_) => "not_stored",
            ApiError::Dlq(DlqError::UnknownQueue { .. }) => "unknown_queue",
            ApiError::Dlq(DlqError::Stopped { .. }) => "dlq_interrupted",
            ApiError::Dlq(DlqError::Store { .. }) | ApiError::Store(_) => "database_unavailable",
            ApiError::Dlq(_) => "broker_unavailable",
            ApiError::FailedJobNotFound(_) => "failed_job_not_found",
            ApiError::NotParked { .. } => "not_parked",
            ApiError::Operator(e) => match **e {
                OperatorError::Running { .. } => "operation_running",
                OperatorError::NotFound(_) => "operation_not_found",
                _ => "database_unavailable",
            },
            ApiError::ConfirmationRequired { .. } => "confirmation_required",
            ApiError::InvalidOrder(_) => "invalid_order",
            ApiError::InvalidSagaStart(_) => "invalid_saga_start",
            ApiError::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            ApiError::InvalidCloudEvent { .. } => "invalid_cloudevent",
            ApiError::NotACloudEvent(_) => "not_a_cloudevent",
            ApiError::InvalidBatch(_) => "invalid_cloudevent_batch",
            ApiError::OrderNotFound(_) => "order_not_found",
            ApiError::Saga(SagaError::NotFound(_)) => "saga_not_found",
            ApiError::Saga(SagaError::InterventionNotFound(_)) => "intervention_not_found",
            ApiError::Saga(SagaError::UnknownKind(_)) => "unknown_saga_kind",
            ApiError::Saga(SagaError::Duplicate { .. }) => "order_exists",
            ApiError::Saga(SagaError::Conflict(_)) => "saga_conflict",
            ApiError::Saga(SagaError::Db { .. }) => "database_unavailable",
            ApiError::Saga(SagaError::Contended(_)) => "saga_contended",
            ApiError::Saga(SagaError::Publish(_)) => "broker_unavailable",
            ApiError::Saga(SagaError::Corrupt(..)) => "saga_corrupt",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The JSON body (an [`ErrorBody`]).
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        let mut body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                required_scope: None,
                attribute: None,
            },
            request_id: request_id.to_owned(),
            saga_id: None,
            event_id: None,
            job_id: None,
            matched: None,
        };
        match self {
            ApiError::Saga(SagaError::Duplicate { saga_id, .. }) => body.saga_id = Some(*saga_id),
            ApiError::IdempotencyKeyReused { id_name, id, .. } => match *id_name {
                "event_id" => body.event_id = Some(*id),
                "job_id" => body.job_id = Some(*id),
                _ => body.saga_id = Some(*id),
            },
            ApiError::InvalidCloudEvent { attribute, .. } => {
                body.error.attribute = Some(attribute.to_string());
            }
            ApiError::Forbidden(scope) => {
                body.error.required_scope = Some(scope.as_str().to_owned());
            }
            ApiError::ConfirmationRequired { matched, .. } => body.matched = Some(*matched),
            _ => {}
        }
        serde_json::to_value(&body).unwrap_or_else(|_| json!({"request_id": request_id}))
    }

    /// Seconds for `Retry-After` that the error itself knows (a rate limit's wait).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// Maps a warp rejection (no route matched, or a filter refused the request).
    pub fn from_rejection(rejection: &warp::Rejection, body_limit: u64) -> Self {
        use warp::reject::{
            InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, MissingHeader,
            PayloadTooLarge, UnsupportedMediaType,
        };
        if rejection.is_not_found() {
            ApiError::NotFound
        } else if let Some(HeadersTooLarge(limit)) = rejection.find::<HeadersTooLarge>() {
            ApiError::HeadersTooLarge(*limit)
        } else if rejection.find::<PayloadTooLarge>().is_some() {
            ApiError::PayloadTooLarge(body_limit)
        } else if rejection.find::<LengthRequired>().is_some() {
            ApiError::LengthRequired
        } else if rejection.find::<UnsupportedMediaType>().is_some() {
            ApiError::UnsupportedMediaType
        } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
            ApiError::InvalidForm(e.to_string())
        } else if let Some(e) = rejection.find::<InvalidQuery>() {
            ApiError::InvalidQuery(e.to_string())
        } else if let Some(e) = rejection.find::<InvalidHeader>() {
            ApiError::InvalidHeader(format!(
                "invalid header {}: not visible ASCII, or not the expected form",
                e.name()
            ))
        } else if let Some(e) = rejection.find::<MissingHeader>() {
            ApiError::InvalidHeader(format!("missing header {}", e.name()))
        } else if rejection.find::<MethodNotAllowed>().is_some() {
            ApiError::MethodNotAllowed
        } else {
            ApiError::Internal(format!("unhandled rejection: {rejection:?}"))
        }
    }
}

impl From<OperatorError> for ApiError {
    /// The operator service's errors, each as the route answered it before the service
    /// existed: dead-letter, store and saga errors keep their own codes.
    fn from(e: OperatorError) -> Self {
        match e {
            OperatorError::Dlq(e) => ApiError::Dlq(e),
            OperatorError::Store(e) => ApiError::Store(e),
            OperatorError::Saga(e) => ApiError::Saga(e),
            OperatorError::FailedJobNotFound(id) => ApiError::FailedJobNotFound(id),
            OperatorError::NotParked { id, queue } => ApiError::NotParked { id, queue },
            other => ApiError::Operator(Box::new(other)),
        }
    }
}

impl From<crate::outbox::OutboxError> for ApiError {
    fn from(e: crate::outbox::OutboxError) -> Self {
        match e {
            crate::outbox::OutboxError::Publish(p) => ApiError::Broker(p),
            other => ApiError::NotStored(other.to_string()),
        }
    }
}
