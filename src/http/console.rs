//! The console's routes: its pages at `/console` (embedded in the binary from `console/`, no
//! build step and nothing fetched from elsewhere), sign-in and sign-out, and its JSON API under
//! `/v1/console` (overview, dead-letter operations with progress, the audit log).
//!
//! The pages need a signed-in session (see [`super::auth`]) when tokens are configured; the
//! sign-in page and the style sheet do not. The JSON routes take a bearer token or the
//! session like every `/v1` route: `read` for the `GET`s, `admin` to start an operation.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;
use warp::{
    Filter, Reply,
    filters::BoxedFilter,
    http::{HeaderValue, StatusCode, header},
    reply::Response,
};

use super::{ApiError, HttpState, Route, auth, optional_body};
use crate::{
    config::Scope,
    operator::{Operation, dlq},
};

/// Default and largest `?limit=` of `GET /v1/console/audit`.
pub const AUDIT_LIMIT: (u64, u64) = (100, 1000);

/// The console's files, embedded at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `index.html`: the app.
    Index,
    /// `app.js`.
    Script,
    /// `style.css` (public: the sign-in page uses it).
    Style,
    /// `login.html` (public).
    Login,
}

impl Page {
    fn body(self) -> &'static str {
        match self {
            Page::Index => include_str!("../../console/index.html"),
            Page::Script => include_str!("../../console/app.js"),
            Page::Style => include_str!("../../console/style.css"),
            Page::Login => include_str!("../../console/login.html"),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Page::Index | Page::Login => "text/html; charset=utf-8",
            Page::Script => "text/javascript; charset=utf-8",
            Page::Style => "text/css; charset=utf-8",
        }
    }

    fn public(self) -> bool {
        matches!(self, Page::Style | Page::Login)
    }
}

/// Query of `GET /v1/console/audit`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// How many (default 100, at most 1000), newest first.
    pub limit: Option<u64>,
}

/// Body of `POST /v1/console/operations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperationBody {
    /// `replay` or `purge`.
    action: String,
    /// The work queue (or its parking queue).
    queue: String,
    /// Only messages parked for this reason.
    #[serde(default)]
    reason: Option<String>,
    /// Only messages parked at least this long ago (`10m`, `2h`, ...).
    #[serde(default)]
    older_than: Option<String>,
    /// Only these messages (a selection).
    #[serde(default)]
    message_ids: Option<Vec<Uuid>>,
    /// Must be `true`: without it the answer is 400 `confirmation_required` with the count.
    #[serde(default)]
    confirm: bool,
}

/// The console's routes.
pub(super) fn routes(body_limit: u64) -> BoxedFilter<(Route,)> {
    let cookie = || warp::cookie::optional::<String>(auth::SESSION_COOKIE);
    let page = |p: Page| move |cookie: Option<String>| Route::ConsolePage { page: p, cookie };
    let index = warp::path!("console")
        .or(warp::path!("console" / ..).and(warp::path::end()))
        .unify()
        .or(warp::path!("console" / "index.html"))
        .unify()
        .and(warp::get())
        .and(cookie())
        .map(page(Page::Index))
        .boxed();
    let script = warp::path!("console" / "app.js")
        .and(warp::get())
        .and(cookie())
        .map(page(Page::Script))
        .boxed();
    let style = warp::path!("console" / "style.css")
        .and(warp::get())
        .and(cookie())
        .map(page(Page::Style))
        .boxed();
    let login_page = warp::path!("console" / "login")
        .and(warp::get())
        .and(cookie())
        .map(page(Page::Login))
        .boxed();
    let login = warp::path!("console" / "login")
        .and(warp::post())
        .and(warp::header::optional::<String>("x-forwarded-proto"))
        .and(warp::body::content_length_limit(body_limit))
        .and(warp::body::form::<HashMap<String, String>>())
        .map(|proto: Option<String>, form| Route::ConsoleLogin {
            form,
            https: proto.is_some_and(|p| p.eq_ignore_ascii_case("https")),
        })
        .boxed();
    let logout = warp::path!("console" / "logout")
        .and(warp::post())
        .map(|| Route::ConsoleLogout)
        .boxed();
    let overview = warp::path!("v1" / "console" / "overview")
        .and(warp::get())
        .and(auth::credentials())
        .map(|auth| Route::ConsoleOverview { auth })
        .boxed();
    let start = warp::path!("v1" / "console" / "operations")
        .and(warp::post())
        .and(auth::credentials())
        .and(optional_body(body_limit))
        .map(|auth, body| Route::ConsoleStart { auth, body })
        .boxed();
    let operation = warp::path!("v1" / "console" / "operations" / Uuid)
        .and(warp::get())
        .and(auth::credentials())
        .map(|id, auth| Route::ConsoleOperation { id, auth })
        .boxed();
    let audit = warp::path!("v1" / "console" / "audit")
        .and(warp::get())
        .and(warp::query::<AuditQuery>())
        .and(auth::credentials())
        .map(|query, auth| Route::ConsoleAudit { query, auth })
        .boxed();
    index
        .or(script)
        .unify()
        .or(style)
        .unify()
        .or(login_page)
        .unify()
        .or(login)
        .unify()
        .or(logout)
        .unify()
        .or(overview)
        .unify()
        .or(start)
        .unify()
        .or(operation)
        .unify()
        .or(audit)
        .unify()
        .boxed()
}

/// The template of a console route, for requests rejected before routing.
pub(super) fn template_for(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    Some(match segments.as_slice() {
        ["", "console"] | ["", "console", ""] | ["", "console", "index.html"] => "/console",
        ["", "console", "login"] => "/console/login",
        ["", "console", "logout"] => "/console/logout",
        ["", "console", _] => "/console/{asset}",
        ["", "v1", "console", "overview"] => "/v1/console/overview",
        ["", "v1", "console", "operations"] => "/v1/console/operations",
        ["", "v1", "console", "operations", _] => "/v1/console/operations/{id}",
        ["", "v1", "console", "audit"] => "/v1/console/audit",
        _ => return None,
    })
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/console")),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Headers every console page carries: nothing from elsewhere may load or frame it.
fn page_response(page: Page) -> Response {
    let mut r =
        warp::reply::with_header(page.body(), "content-type", page.content_type()).into_response();
    let h = r.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn session_cookie(value: &str, max_age: Duration, https: bool) -> String {
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        auth::SESSION_COOKIE,
        max_age.as_secs(),
        if https { "; Secure" } else { "" }
    )
}

fn query_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn authorize(state: &HttpState, auth: Option<&str>, needed: Scope) -> Result<String, ApiError> {
    let caller = state.tokens.authorize(auth, needed)?;
    Ok(state.tokens.actor(caller, auth))
}

/// Handles a console route.
pub(super) async fn handle(state: &HttpState, route: Route) -> Result<Response, ApiError> {
    if !state.settings.console.enabled {
        return Err(ApiError::NotFound);
    }
    match route {
        Route::ConsolePage { page, cookie } => {
            let signed_in = state.tokens.session_valid(cookie.as_deref());
            Ok(match page {
                Page::Login if !state.tokens.enabled() => redirect("/console"),
                p if p.public() || signed_in => page_response(p),
                Page::Index => redirect("/console/login"),
                _ => return Err(ApiError::Unauthorized),
            })
        }
        Route::ConsoleLogin { form, https } => {
            let token = form.get("token").map_or("", String::as_str).trim();
            let operator = form.get("operator").map_or("", String::as_str);
            let lifetime = Duration::from_secs(state.settings.console.session_hours * 3_600);
            match state.tokens.sign_in(token, operator, lifetime) {
                Ok(value) => {
                    let mut r = redirect("/console");
                    if let Ok(v) = HeaderValue::from_str(&session_cookie(&value, lifetime, https)) {
                        r.headers_mut().insert(header::SET_COOKIE, v);
                    }
                    tracing::info!(actor = %operator.trim(), "Console sign-in.");
                    Ok(r)
                }
                Err(e) => {
                    let why = match e {
                        ApiError::Unauthorized => "unknown token".to_owned(),
                        ApiError::Forbidden(_) => {
                            "this token lacks the admin scope the console needs".to_owned()
                        }
                        other => other.to_string(),
                    };
                    tracing::info!(reason = %why, "Console sign-in refused.");
                    Ok(redirect(&format!(
                        "/console/login?error={}",
                        query_escape(&why)
                    )))
                }
            }
        }
        Route::ConsoleLogout => {
            let mut r = redirect("/console/login");
            r.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "warren_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
                ),
            );
            Ok(r)
        }
        Route::ConsoleOverview { auth } => {
            let actor = authorize(state, auth.as_deref(), Scope::Read)?;
            let mut body = state.console.overview().await;
            body["operator"] = json!(actor);
            Ok(warp::reply::json(&body).into_response())
        }
        Route::ConsoleStart { auth, body } => {
            let actor = authorize(state, auth.as_deref(), Scope::Admin)?;
            start_operation(state, &actor, &body).await
        }
        Route::ConsoleOperation { id, auth } => {
            authorize(state, auth.as_deref(), Scope::Read)?;
            let op = state.operator.get(id).await?;
            Ok(warp::reply::json(&op).into_response())
        }
        Route::ConsoleAudit { query, auth } => {
            authorize(state, auth.as_deref(), Scope::Read)?;
            let rows = state
                .operator
                .audit(super::list_limit(query.limit, AUDIT_LIMIT)?)
                .await?;
            Ok(warp::reply::json(&json!({ "actions": rows })).into_response())
        }
        _ => Err(ApiError::NotFound),
    }
}

/// `POST /v1/console/operations`: counts the selection; with `confirm: true` starts the
/// operation and answers 202 with it, else 400 `confirmation_required` with the count.
async fn start_operation(
    state: &HttpState,
    actor: &str,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let b: OperationBody =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let op = match b.action.as_str() {
        "replay" => Operation::Replay,
        "purge" => Operation::Purge,
        other => {
            return Err(ApiError::InvalidQuery(format!(
                "action must be replay or purge, got {other:?}"
            )));
        }
    };
    let queue = state.operator.dlq().work_queue(&b.queue)?;
    let older_than = b
        .older_than
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(dlq::parse_duration)
        .transpose()
        .map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
    if b.message_ids.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::InvalidQuery(
            "message_ids is empty: select at least one message, or leave it out for all".to_owned(),
        ));
    }
    let filter = dlq::Filter {
        reason: super::dlq::check_reason(b.reason.clone().filter(|r| !r.is_empty()))?,
        older_than,
        message_ids: b.message_ids.clone().map(|v| v.into_iter().collect()),
        ..dlq::Filter::default()
    };
    let matched = state.operator.dlq().count(&queue, &filter).await?;
    if !b.confirm {
        return Err(ApiError::ConfirmationRequired {
            action: op.action(),
            queue,
            matched,
        });
    }
    let detail = json!({
        "reason": b.reason,
        "older_than": b.older_than,
        "message_ids": b.message_ids,
    });
    let row = state
        .operator
        .start(actor, op, &queue, filter, detail, matched)
        .await?;
    Ok(warp::reply::with_status(
        warp::reply::json(&json!({ "operation": row })),
        StatusCode::ACCEPTED,
    )
    .into_response())
}
