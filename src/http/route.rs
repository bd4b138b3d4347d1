//! The parsed request: one variant per route, with what its filter extracted, and its
//! template (the metric label).

use bytes::Bytes;
use uuid::Uuid;

use super::{
    console,
    dlq::{DlqShowQuery, FailedJobsQuery},
    publish::EventQuery,
    sagas,
};
use crate::store::ListQuery;

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
    /// The route's template: the metric label, never the raw path.
    pub fn template(&self) -> &'static str {
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
