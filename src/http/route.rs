//! One route, declared once: an [`Endpoint`] says its method, its path template, its metric
//! label, who may call it ([`Access`]), what else it reads from the request, and its handler.
//! The path filter, the credentials check, the publish gate and the template of a rejected
//! request all come from that one declaration.
//!
//! A route's filter parses a request into a [`Call`]: the handler with its inputs, not yet
//! run. The front ([`super::api`]) then checks the call's access and runs it, so a request
//! that fails a check never reaches its handler and every handler starts already admitted.

use std::{future::Future, pin::Pin, str::FromStr, sync::Arc};

use warp::{
    Filter,
    filters::BoxedFilter,
    http::Method,
    reply::{Reply as _, Response},
};

use super::{ApiError, Ctx, HttpState, auth, openapi::Doc};
use crate::config::Scope;

/// What a handler answers.
pub(super) type Reply = Result<Response, ApiError>;

type Run = Box<dyn FnOnce(Request) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send>;

/// A check that runs before the access check (a part of the API that can be switched off).
type Guard = fn(&HttpState) -> Result<(), ApiError>;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Anyone: health, metrics, and the console's pages and sign-in (which check the session
    /// themselves).
    Public,
    /// A bearer token or console session with this scope (401 without, 403 with too little).
    Scoped(Scope),
    /// The publish gate, in order: a token with `publish` (401/403), the caller's rate (429),
    /// a free in-flight slot (503 at once). The slot is held until the answer.
    Publish,
}

/// What a handler gets besides its inputs: the shared state, the request's context, and who
/// is calling.
pub(super) struct Request {
    /// Everything the handlers share.
    pub(super) state: Arc<HttpState>,
    /// Request id, remote address, incoming trace context.
    pub(super) ctx: Arc<Ctx>,
    caller: auth::Caller,
    credentials: Option<String>,
}

impl Request {
    /// The caller's name for the audit log (the token's name, and the operator's on a console
    /// session).
    pub(super) fn actor(&self) -> String {
        self.state
            .tokens
            .actor(self.caller, self.credentials.as_deref())
    }
}

/// A parsed request: a route's handler with its inputs, run once its access is checked.
pub struct Call {
    template: &'static str,
    access: Access,
    guard: Option<Guard>,
    credentials: Option<String>,
    run: Run,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("template", &self.template)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl Call {
    /// The route's template: the metric label, never the raw path.
    pub fn template(&self) -> &'static str {
        self.template
    }

    /// Checks the call's guard and access, then runs its handler. A publish slot taken by the
    /// gate is held until the handler has answered.
    pub(super) async fn run(self, state: Arc<HttpState>, ctx: Arc<Ctx>) -> Reply {
        if let Some(guard) = self.guard {
            guard(&state)?;
        }
        let header = self.credentials.as_deref();
        let (caller, _permit) = match self.access {
            Access::Public => (auth::Caller::Anonymous, None),
            Access::Scoped(scope) => (state.tokens.authorize(header, scope)?, None),
            Access::Publish => admit_publish(&state, &ctx, header, self.template)?,
        };
        let request = Request {
            state,
            ctx,
            caller,
            credentials: self.credentials,
        };
        (self.run)(request).await
    }
}

/// The publish gate (see [`Access::Publish`]).
fn admit_publish(
    state: &HttpState,
    ctx: &Ctx,
    header: Option<&str>,
    template: &'static str,
) -> Result<(auth::Caller, Option<tokio::sync::OwnedSemaphorePermit>), ApiError> {
    let caller = state.tokens.authorize(header, Scope::Publish)?;
    let key = super::limits::RateKey::new(caller, ctx.remote.map(|a| a.ip()));
    if let Err(e) = state.limits.check_rate(key) {
        state.metrics.publish_refused(template, "rate_limited");
        return Err(e);
    }
    match state.limits.admit() {
        Ok(permit) => Ok((caller, permit)),
        Err(e) => {
            state.metrics.publish_refused(template, "overloaded");
            Err(e)
        }
    }
}

/// The values a route's path template holds: `()` for none, `(T,)` for one `{placeholder}`
/// (a segment that does not parse as `T` is 404, as with `warp::path!`).
pub(super) trait PathParams: Sized + Send + 'static {
    /// The filter matching `template` exactly, extracting its values as one.
    fn filter(template: &'static str) -> BoxedFilter<(Self,)>;

    /// The schema of the template's placeholder, if it has one (the OpenAPI document's path
    /// parameter).
    fn schema() -> Option<super::openapi::Schema> {
        None
    }
}

/// The template's segments (`/v1/dlq/{queue}` gives `v1`, `dlq`, `{queue}`).
fn segments(template: &'static str) -> Vec<&'static str> {
    template.trim_start_matches('/').split('/').collect()
}

fn is_placeholder(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

/// Literal segments, in order, as one filter.
fn literals(segments: &[&'static str]) -> BoxedFilter<()> {
    segments
        .iter()
        .fold(warp::any().boxed(), |f, s| f.and(warp::path(*s)).boxed())
}

impl PathParams for () {
    fn filter(template: &'static str) -> BoxedFilter<((),)> {
        let segs = segments(template);
        assert!(
            !segs.iter().any(|s| is_placeholder(s)),
            "{template}: a route with a placeholder takes its value"
        );
        literals(&segs).and(warp::path::end()).map(|| ()).boxed()
    }
}

impl<T: FromStr + super::openapi::ParamSchema + Send + 'static> PathParams for (T,) {
    fn schema() -> Option<super::openapi::Schema> {
        Some(T::param_schema())
    }

    fn filter(template: &'static str) -> BoxedFilter<((T,),)> {
        let segs = segments(template);
        let at = segs.iter().position(|s| is_placeholder(s));
        let at = at.unwrap_or_else(|| panic!("{template}: no placeholder for the route's value"));
        let (before, rest) = segs.split_at(at);
        let after = &rest[1..];
        assert!(
            !after.iter().any(|s| is_placeholder(s)),
            "{template}: one placeholder at most"
        );
        literals(before)
            .and(warp::path::param::<T>())
            .and(literals(after))
            .and(warp::path::end())
            .map(|t| (t,))
            .boxed()
    }
}

/// A route being declared: see [`Endpoint::get`] and [`Endpoint::post`].
pub(super) struct Declare<I> {
    method: Method,
    path: &'static str,
    label: &'static str,
    access: Access,
    guard: Option<Guard>,
    doc: Option<Doc>,
    input: BoxedFilter<(I,)>,
}

impl Declare<()> {
    /// What else the handler reads from the request (a query, headers, the body), as one
    /// value; rejections here (400, 413, 415) come before the access check.
    pub(super) fn input<I, F>(self, input: F) -> Declare<I>
    where
        I: Send + 'static,
        F: Filter<Extract = (I,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
    {
        Declare {
            method: self.method,
            path: self.path,
            label: self.label,
            access: self.access,
            guard: self.guard,
            doc: self.doc,
            input: input.boxed(),
        }
    }
}

impl<I: Send + 'static> Declare<I> {
    /// The metric label when it is not the path (the console's assets share one).
    pub(super) fn label(mut self, label: &'static str) -> Self {
        self.label = label;
        self
    }

    /// A check run before the access check.
    pub(super) fn guard(mut self, guard: Guard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// The route's operation in the OpenAPI document (see [`super::openapi`]); a route
    /// without one fails the document's unit test.
    pub(super) fn doc(mut self, doc: Doc) -> Self {
        self.doc = Some(doc);
        self
    }

    /// The handler: `handler(request, path values, input)`.
    pub(super) fn to<P, H, Fut>(self, handler: H) -> Endpoint
    where
        P: PathParams,
        H: Fn(Request, P, I) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let Declare {
            method,
            path,
            label,
            access,
            guard,
            doc,
            input,
        } = self;
        let credentials = match access {
            Access::Public => warp::any().map(|| None).boxed(),
            Access::Scoped(_) | Access::Publish => auth::credentials().boxed(),
        };
        // Path before method: an unknown path is 404, a known path with the wrong method 405.
        let filter = P::filter(path)
            .and(method_filter(&method))
            .and(credentials)
            .and(input)
            .map(move |params: P, credentials: Option<String>, input: I| {
                let handler = handler.clone();
                Call {
                    template: label,
                    access,
                    guard,
                    credentials,
                    run: Box::new(move |request| Box::pin(handler(request, params, input))),
                }
            })
            .boxed();
        let spec = Spec {
            method,
            path,
            label,
            access,
            guarded: guard.is_some(),
            path_schema: P::schema(),
            doc,
        };
        Endpoint { spec, filter }
    }
}

fn method_filter(method: &Method) -> BoxedFilter<()> {
    if *method == Method::POST {
        warp::post().boxed()
    } else {
        warp::get().boxed()
    }
}

/// What the route table knows of a route besides its filter: what the OpenAPI document and
/// the rejection templates are made of.
pub(super) struct Spec {
    /// `GET` or `POST`.
    pub(super) method: Method,
    /// The path template.
    pub(super) path: &'static str,
    /// The metric label.
    pub(super) label: &'static str,
    /// Who may call it.
    pub(super) access: Access,
    /// Whether a guard can refuse it (404 while its part of the API is off).
    pub(super) guarded: bool,
    /// The schema of the path's placeholder.
    pub(super) path_schema: Option<super::openapi::Schema>,
    /// Its operation doc.
    pub(super) doc: Option<Doc>,
}

/// One route of the API.
pub(super) struct Endpoint {
    spec: Spec,
    filter: BoxedFilter<(Call,)>,
}

impl Endpoint {
    /// A `GET` route at `path` (`{name}` marks the one value a path may hold).
    pub(super) fn get(path: &'static str, access: Access) -> Declare<()> {
        Self::declare(Method::GET, path, access)
    }

    /// A `POST` route at `path`.
    pub(super) fn post(path: &'static str, access: Access) -> Declare<()> {
        Self::declare(Method::POST, path, access)
    }

    fn declare(method: Method, path: &'static str, access: Access) -> Declare<()> {
        Declare {
            method,
            path,
            label: path,
            access,
            guard: None,
            doc: None,
            input: warp::any().map(|| ()).boxed(),
        }
    }
}

/// The whole route table: one filter over every endpoint, and their templates for the
/// requests the filter rejects.
pub struct Routes {
    filter: BoxedFilter<(Call,)>,
    /// Method, template, its segments (split once, here), label.
    templates: Vec<(Method, &'static str, Vec<&'static str>, &'static str)>,
    /// Every route's declaration, in order.
    specs: Vec<Spec>,
}

impl Routes {
    /// The table of `endpoints`, tried in order.
    pub(super) fn new(endpoints: Vec<Endpoint>) -> Self {
        let templates = endpoints
            .iter()
            .map(|e| {
                let s = &e.spec;
                (s.method.clone(), s.path, segments(s.path), s.label)
            })
            .collect();
        let (specs, filters): (Vec<Spec>, Vec<BoxedFilter<(Call,)>>) =
            endpoints.into_iter().map(|e| (e.spec, e.filter)).unzip();
        Routes {
            filter: balanced(filters),
            templates,
            specs,
        }
    }

    /// The filter: parses a request into a [`Call`] or a rejection, touching nothing else.
    pub fn filter(&self) -> BoxedFilter<(Call,)> {
        self.filter.clone()
    }

    /// The metric label of a raw path (for requests rejected before routing): the label of
    /// the first route whose template the path fits, whatever the method, else `unmatched`.
    pub fn template_for(&self, path: &str) -> &'static str {
        let given: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.templates
            .iter()
            .find(|(_, _, want, _)| {
                want.len() == given.len()
                    && want.iter().zip(&given).all(|(w, g)| {
                        if is_placeholder(w) {
                            !g.is_empty()
                        } else {
                            w == g
                        }
                    })
            })
            .map_or("unmatched", |(_, _, _, label)| *label)
    }

    /// Every route's declaration, in order (what the OpenAPI document is made of).
    pub(super) fn specs(&self) -> &[Spec] {
        &self.specs
    }

    /// Every route as `METHOD template`, in order.
    pub fn list(&self) -> Vec<String> {
        self.templates
            .iter()
            .map(|(m, t, _, _)| format!("{m} {t}"))
            .collect()
    }
}

/// `a or b or ...` as a balanced tree, so a request to the last route goes through a few
/// levels of `or`, not one per route. Order is kept: the first route that matches wins.
fn balanced(mut filters: Vec<BoxedFilter<(Call,)>>) -> BoxedFilter<(Call,)> {
    if filters.len() <= 1 {
        return filters
            .pop()
            .unwrap_or_else(|| warp::any().and_then(not_found).boxed());
    }
    let right = filters.split_off(filters.len() / 2);
    balanced(filters).or(balanced(right)).unify().boxed()
}

async fn not_found() -> Result<Call, warp::Rejection> {
    Err(warp::reject::not_found())
}

/// A JSON answer with status 200.
pub(super) fn json(value: &impl serde::Serialize) -> Reply {
    Ok(warp::reply::json(value).into_response())
}
