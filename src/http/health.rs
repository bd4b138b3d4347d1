//! Health and metrics: `GET /healthz` (the process answers), `GET /readyz` (the health
//! service's checks) and `GET /metrics` (Prometheus, OpenMetrics or the classic text format).

use serde_json::json;
use warp::{Filter, filters::BoxedFilter, http::StatusCode, reply::Reply as _};

use super::{ApiError, HttpState, Response, Route};

/// The health and metrics routes.
pub(super) fn routes() -> BoxedFilter<(Route,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| Route::Healthz)
        .boxed();
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .map(|| Route::Readyz)
        .boxed();
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(warp::header::optional::<String>("accept"))
        .map(|accept| Route::Metrics { accept })
        .boxed();
    healthz.or(readyz).unify().or(metrics).unify().boxed()
}

/// Handles a health or metrics route.
pub(super) async fn handle(state: &HttpState, route: Route) -> Result<Response, ApiError> {
    match route {
        Route::Healthz => Ok(warp::reply::json(&json!({"status": "ok"})).into_response()),
        Route::Readyz => Ok(readyz(state).await),
        Route::Metrics { accept } => {
            let (body, content_type) = state.metrics.render_for(accept.as_deref());
            Ok(warp::reply::with_header(body, "content-type", content_type).into_response())
        }
        _ => Err(ApiError::NotFound),
    }
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
