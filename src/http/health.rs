//! Health and metrics: `GET /healthz` (the process answers), `GET /readyz` (the health
//! service's checks), `GET /metrics` (Prometheus, OpenMetrics or the classic text format) and
//! `GET /openapi.json` (the API's OpenAPI document, see [`super::openapi`]).

use serde_json::json;
use warp::{http::StatusCode, reply::Reply as _};

use super::{
    HttpState, Response,
    openapi::{Doc, shape},
    route::{Access, Endpoint, Request, json},
};

/// The health and metrics routes.
pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::get("/healthz", Access::Public)
            .doc(Doc::new("healthz", "Whether the process answers").answer(
                200,
                "It answers.",
                shape::object(vec![("status", shape::one_of(&["ok"]))]),
            ))
            .to(|_: Request, (), ()| async move { json(&json!({"status": "ok"})) }),
        Endpoint::get("/readyz", Access::Public)
            .doc(
                Doc::new(
                    "readyz",
                    "Whether the process is ready (broker, database, ...)",
                )
                .answer(
                    200,
                    "Ready; each check with its result.",
                    readiness("ready"),
                )
                .answer(
                    503,
                    "Not ready; each check with its result.",
                    readiness("not_ready"),
                ),
            )
            .to(|req: Request, (), ()| async move { Ok(readyz(&req.state).await) }),
        // The Accept header chooses OpenMetrics or the classic text format.
        Endpoint::get("/metrics", Access::Public)
            .doc(
                Doc::new("metrics", "Prometheus metrics")
                    .describe(
                        "OpenMetrics when `Accept` asks for `application/openmetrics-text`, \
                         else the classic text format.",
                    )
                    .header("Accept", "`application/openmetrics-text` for OpenMetrics.")
                    .content(200, "The metrics.", "text/plain", shape::string())
                    .content(
                        200,
                        "The metrics.",
                        "application/openmetrics-text",
                        shape::string(),
                    ),
            )
            .input(warp::header::optional::<String>("accept"))
            .to(|req: Request, (), accept: Option<String>| async move {
                let (body, content_type) = req.state.metrics.render_for(accept.as_deref());
                Ok(warp::reply::with_header(body, "content-type", content_type).into_response())
            }),
        Endpoint::get("/openapi.json", Access::Public)
            .doc(
                Doc::new("openapi", "This document: the API in OpenAPI 3.1").content(
                    200,
                    "The OpenAPI document.",
                    "application/json",
                    shape::any_object(),
                ),
            )
            .to(|_: Request, (), ()| async move {
                Ok(warp::reply::with_header(
                    super::openapi::json(),
                    "content-type",
                    "application/json",
                )
                .into_response())
            }),
    ]
}

/// The answer of `/readyz` with `status`.
fn readiness(status: &str) -> super::openapi::Schema {
    shape::object(vec![
        ("status", shape::one_of(&[status])),
        ("checks", shape::any_object()),
    ])
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
