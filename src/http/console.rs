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
    Filter, Reply as _,
    http::{HeaderValue, StatusCode, header},
    reply::Response,
};

use super::{
    ApiError, HttpState, auth,
    openapi::{Doc, shape},
    optional_body,
    route::{self, Access, Endpoint, Reply, Request},
};
use crate::{
    config::Scope,
    operator::{Operation, dlq},
};

/// Default and largest `?limit=` of `GET /v1/console/audit`.
pub(crate) const AUDIT_LIMIT: (u64, u64) = (100, 1000);

/// The console's files, embedded at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Page {
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
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// How many (default 100, at most 1000), newest first.
    pub limit: Option<u64>,
}

/// Body of `POST /v1/console/operations`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OperationBody {
    /// `replay` or `purge`.
    #[schema(value_type = OperationAction)]
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

/// The values of an operation's `action` (documentation only: the handler names a wrong one).
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum OperationAction {
    /// Replay to the work queue.
    Replay,
    /// Drop.
    Purge,
}

/// The sign-in form of `POST /console/login`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct SignInForm {
    /// A token with the `admin` scope.
    token: String,
    /// The operator's name for the audit log (the token's name when empty).
    operator: Option<String>,
}

/// The doc of a console page.
fn page_doc(id: &'static str, summary: &'static str, p: Page) -> Doc {
    let media = p.content_type().split(';').next().unwrap_or_default();
    let doc = Doc::new(id, summary)
        .describe(
            "Needs a signed-in session (the `warren_console` cookie) when tokens are \
             configured, except the sign-in page and the style sheet.",
        )
        .content(200, "The page.", media, shape::string());
    match p {
        Page::Index | Page::Login => doc.see_other("To the sign-in page, or to the console."),
        Page::Script => doc.error(401, &["unauthorized"]),
        Page::Style => doc,
    }
}

/// The console's routes (all of them 404 when the console is off).
pub(super) fn endpoints(body_limit: u64) -> Vec<Endpoint> {
    let (read, admin) = (Access::Scoped(Scope::Read), Access::Scoped(Scope::Admin));
    let page = |path, label, p: Page, doc: Doc| {
        // The cookie filter cannot fail; the route's inputs are of the kind that can.
        let cookie = warp::cookie::optional::<String>(auth::SESSION_COOKIE)
            .and_then(|c| async move { Ok::<_, warp::Rejection>(c) });
        Endpoint::get(path, Access::Public)
            .input(cookie)
            .label(label)
            .guard(enabled)
            .doc(doc)
            .to(move |req: Request, (), cookie: Option<String>| async move {
                serve_page(&req, p, cookie)
            })
    };
    vec![
        page(
            "/console",
            "/console",
            Page::Index,
            page_doc("console", "The operator console", Page::Index),
        ),
        page(
            "/console/index.html",
            "/console",
            Page::Index,
            page_doc("console_index", "The operator console", Page::Index),
        ),
        page(
            "/console/app.js",
            "/console/{asset}",
            Page::Script,
            page_doc("console_script", "The console's script", Page::Script),
        ),
        page(
            "/console/style.css",
            "/console/{asset}",
            Page::Style,
            page_doc("console_style", "The console's style sheet", Page::Style),
        ),
        page(
            "/console/login",
            "/console/login",
            Page::Login,
            page_doc(
                "console_login_page",
                "The console's sign-in page",
                Page::Login,
            ),
        ),
        Endpoint::post("/console/login", Access::Public)
            .doc(
                Doc::new("console_sign_in", "Sign in to the console")
                    .describe(
                        "A session cookie for a token with `admin`, and back to the console; a \
                         refusal goes back to the sign-in page with the reason.",
                    )
                    .form_body::<SignInForm>()
                    .see_other("To the console (signed in) or the sign-in page (refused).")
                    .answer_header(303, "Set-Cookie", "The session cookie, when signed in."),
            )
            .input(
                warp::header::optional::<String>("x-forwarded-proto")
                    .and(warp::body::content_length_limit(body_limit))
                    .and(warp::body::form::<HashMap<String, String>>())
                    .map(|proto, form| (proto, form)),
            )
            .guard(enabled)
            .to(sign_in),
        Endpoint::post("/console/logout", Access::Public)
            .doc(
                Doc::new("console_sign_out", "Sign out of the console")
                    .see_other("To the sign-in page, the session cookie cleared.")
                    .answer_header(303, "Set-Cookie", "The cleared session cookie."),
            )
            .guard(enabled)
            .to(|_: Request, (), ()| async move { Ok(sign_out()) }),
        Endpoint::get("/v1/console/overview", read)
            .doc(
                Doc::new("console_overview", "The console's overview").answer(
                    200,
                    "Queues, dead letters, sagas, subscriptions and who is signed in.",
                    shape::any_object(),
                ),
            )
            .guard(enabled)
            .to(|req: Request, (), ()| async move {
                let mut body = req.state.console.overview().await;
                body["operator"] = json!(req.actor());
                route::json(&body)
            }),
        Endpoint::post("/v1/console/operations", admin)
            .doc(
                Doc::new(
                    "console_start_operation",
                    "Start a replay or purge with progress",
                )
                .describe(
                    "Counts the selection; with `confirm: true` starts the operation and \
                         answers 202 with it, else 400 `confirmation_required` with the count \
                         in `matched`.",
                )
                .required_body::<OperationBody>()
                .answer(
                    202,
                    "Started.",
                    shape::object(vec![("operation", shape::any_object())]),
                )
                .error(400, &["confirmation_required", "invalid_query"])
                .error(404, &["unknown_queue"])
                .error(409, &["operation_running"])
                .unavailable(),
            )
            .input(optional_body(body_limit))
            .guard(enabled)
            .to(|req: Request, (), body: Bytes| async move {
                start_operation(&req.state, &req.actor(), &body).await
            }),
        Endpoint::get("/v1/console/operations/{id}", read)
            .doc(
                Doc::new("console_get_operation", "An operation and its progress")
                    .answer(200, "The operation.", shape::any_object())
                    .error(404, &["operation_not_found"])
                    .unavailable(),
            )
            .guard(enabled)
            .to(|req: Request, (id,): (Uuid,), ()| async move {
                route::json(&req.state.operator.get(id).await?)
            }),
        Endpoint::get("/v1/console/audit", read)
            .doc(
                Doc::new(
                    "console_audit",
                    "The audit log of operator actions, newest first",
                )
                .query::<AuditQuery>()
                .answer(200, "The actions.", shape::rows("actions"))
                .unavailable(),
            )
            .input(warp::query::<AuditQuery>())
            .guard(enabled)
            .to(|req: Request, (), query: AuditQuery| async move {
                let limit = super::list_limit(query.limit, AUDIT_LIMIT)?;
                let rows = req.state.operator.audit(limit).await?;
                route::json(&json!({ "actions": rows }))
            }),
    ]
}

/// The console's routes are 404 while it is off.
fn enabled(state: &HttpState) -> Result<(), ApiError> {
    if state.settings.console.enabled {
        Ok(())
    } else {
        Err(ApiError::NotFound)
    }
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

/// A page or asset: the public ones to anyone, the others to a signed-in session (the app
/// sends the rest to the sign-in page).
fn serve_page(req: &Request, page: Page, cookie: Option<String>) -> Reply {
    let tokens = &req.state.tokens;
    let signed_in = tokens.session_valid(cookie.as_deref());
    Ok(match page {
        Page::Login if !tokens.enabled() => redirect("/console"),
        p if p.public() || signed_in => page_response(p),
        Page::Index => redirect("/console/login"),
        _ => return Err(ApiError::Unauthorized),
    })
}

/// `POST /console/login`: a session cookie for a token with `admin`, and back to the
/// console; a refusal goes back to the sign-in page with the reason.
async fn sign_in(
    req: Request,
    (): (),
    (proto, form): (Option<String>, HashMap<String, String>),
) -> Reply {
    // Whether the client came over HTTPS (a proxy's `X-Forwarded-Proto`).
    let https = proto.is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let state = &req.state;
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

/// `POST /console/logout`: the session cookie cleared, and to the sign-in page.
fn sign_out() -> Response {
    let mut r = redirect("/console/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("warren_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
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
