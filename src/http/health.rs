//! Health and metrics: `GET /healthz` (the process answers), `GET /readyz` (the health
//! service's checks) and `GET /metrics` (Prometheus, OpenMetrics or the classic text format).

use serde_json::json;
use warp::{http::StatusCode, reply::Reply as _};

use super::{
    HttpState, Response,
    route::{Access, Endpoint, Request, json},
};

/// The health and metrics routes.
pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::get("/healthz", Access::Public)
            .to(|_: Request, (), ()| async move { json(&json!({"status": "ok"})) }),
        Endpoint::get("/readyz", Access::Public)
            .to(|req: Request, (), ()| async move { Ok(readyz(&req.state).await) }),
        // The Accept header chooses OpenMetrics or the classic text format.
        Endpoint::get("/metrics", Access::Public)
            .input(warp::header::optional::<String>("accept"))
            .to(|req: Request, (), accept: Option<String>| async move {
                let (body, content_type) = req.state.metrics.render_for(accept.as_deref());
                Ok(warp::reply::with_header(body, "content-type", content_type).into_response())
            }),
    ]
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
