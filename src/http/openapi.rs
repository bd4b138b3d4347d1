//! The OpenAPI 3.1 document of the HTTP API, made from the route table so it cannot drift.
//!
//! Every [`super::route::Endpoint`] carries a [`Doc`]: its operation id, summary, query
//! parameters (from the query type's `IntoParams` derive), request body and answers (schemas
//! from `ToSchema` derives, or a [`shape`] where the answer is built in the handler), and the
//! error statuses it can give with their codes. What the declaration itself says is added
//! here: the path parameter (from the template and the handler's path type), the security
//! requirement and the errors of its access (401, 403; the publish gate's 429 and 503), of a
//! guard (404) and of the header limit (431). [`document`] assembles the paths with utoipa's
//! builders; [`json`] is what `GET /openapi.json`, `warren openapi` and `docs/openapi.json`
//! hold.

use std::{collections::BTreeMap, sync::OnceLock};

use utoipa::{
    IntoParams, ToSchema,
    openapi::{
        ArrayBuilder, ComponentsBuilder, ContentBuilder, HeaderBuilder, HttpMethod, InfoBuilder,
        KnownFormat, ObjectBuilder, OpenApiBuilder, PathItem, PathsBuilder, Ref, RefOr,
        ResponseBuilder, SchemaFormat, SecurityRequirement, Type,
        extensions::ExtensionsBuilder,
        path::{OperationBuilder, Parameter, ParameterBuilder, ParameterIn},
        request_body::RequestBodyBuilder,
        schema::{ArrayItems, SchemaType},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};
use warp::http::Method;

use super::route::{Access, Routes, Spec};

/// A schema, or a reference to one in the document's components.
pub(crate) type Schema = RefOr<utoipa::openapi::schema::Schema>;

/// The name of the bearer security scheme.
const BEARER: &str = "bearer";

/// The schema of a path placeholder's type.
pub(super) trait ParamSchema {
    /// The placeholder's schema.
    fn param_schema() -> Schema;
}

impl ParamSchema for String {
    fn param_schema() -> Schema {
        shape::string()
    }
}

impl ParamSchema for uuid::Uuid {
    fn param_schema() -> Schema {
        shape::uuid()
    }
}

/// One answer of an operation.
struct Answer {
    status: u16,
    description: &'static str,
    /// Content type and schema (none: no body).
    content: Option<(&'static str, Schema)>,
    /// Response headers: name and description.
    headers: Vec<(&'static str, &'static str)>,
}

/// A route's operation in the document (see the module doc).
pub(super) struct Doc {
    id: &'static str,
    summary: &'static str,
    description: Option<&'static str>,
    params: Vec<Parameter>,
    body: Option<(bool, Vec<(&'static str, Schema)>)>,
    answers: Vec<Answer>,
    errors: BTreeMap<u16, Vec<&'static str>>,
    schemas: Vec<(String, Schema)>,
}

impl Doc {
    /// An operation named `id` (unique in the document) with a one-line summary.
    pub(super) fn new(id: &'static str, summary: &'static str) -> Self {
        Doc {
            id,
            summary,
            description: None,
            params: Vec::new(),
            body: None,
            answers: Vec::new(),
            errors: BTreeMap::new(),
            schemas: Vec::new(),
        }
    }

    /// A longer description.
    pub(super) fn describe(mut self, text: &'static str) -> Self {
        self.description = Some(text);
        self
    }

    /// The query parameters of `Q` (a bad one is 400 `invalid_query`).
    pub(super) fn query<Q: IntoParams>(mut self) -> Self {
        self.params
            .extend(Q::into_params(|| Some(ParameterIn::Query)));
        self.error(400, &["invalid_query"])
    }

    /// An optional request header.
    pub(super) fn header(mut self, name: &'static str, description: &'static str) -> Self {
        self.params.push(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .description(Some(description))
                .schema(Some(shape::string()))
                .build(),
        );
        self.error(400, &["invalid_header"])
    }

    fn collect<T: ToSchema>(&mut self) -> Schema {
        let mut schemas = Vec::new();
        T::schemas(&mut schemas);
        self.schemas.extend(schemas);
        self.schemas.push((T::name().into_owned(), T::schema()));
        Ref::from_schema_name(T::name()).into()
    }

    /// Adds `T`'s schema to the components (a type a parameter refers to).
    pub(super) fn uses<T: ToSchema>(mut self) -> Self {
        self.collect::<T>();
        self
    }

    /// A required JSON body of type `T`, read as the publish routes read theirs: at most the
    /// body limit (413), with a length (411), JSON (415 for another content type, 400 when it
    /// does not parse), an object (422).
    pub(super) fn json_body<T: ToSchema>(mut self) -> Self {
        let schema = self.collect::<T>();
        self.json_body_schema(schema)
    }

    /// A required JSON body with a hand-written schema (see [`Doc::json_body`]).
    pub(super) fn json_body_schema(mut self, schema: Schema) -> Self {
        self.body = Some((true, vec![("application/json", schema)]));
        self.error(400, &["invalid_json", "invalid_header"])
            .error(411, &["length_required"])
            .error(413, &["payload_too_large"])
            .error(415, &["unsupported_media_type"])
            .error(422, &["data_not_an_object"])
    }

    /// An optional JSON body of type `T` (no body, or only white space, is none).
    pub(super) fn optional_body<T: ToSchema>(mut self) -> Self {
        let schema = self.collect::<T>();
        self.body = Some((false, vec![("application/json", schema)]));
        self.error(400, &["invalid_json"])
            .error(413, &["payload_too_large"])
    }

    /// A required JSON body of type `T`, any content type (400 when it does not parse).
    pub(super) fn required_body<T: ToSchema>(mut self) -> Self {
        let schema = self.collect::<T>();
        self.body = Some((true, vec![("application/json", schema)]));
        self.error(400, &["invalid_json"])
            .error(413, &["payload_too_large"])
    }

    /// A required form body (`application/x-www-form-urlencoded`) of the fields of `T`.
    pub(super) fn form_body<T: ToSchema>(mut self) -> Self {
        let schema = self.collect::<T>();
        self.body = Some((true, vec![("application/x-www-form-urlencoded", schema)]));
        self.error(400, &["invalid_form"])
            .error(411, &["length_required"])
            .error(413, &["payload_too_large"])
            .error(415, &["unsupported_media_type"])
    }

    /// A required body in any of these content types (the route reads the body itself: at
    /// most the body limit, 413, with a length, 411).
    pub(super) fn bodies(mut self, contents: Vec<(&'static str, Schema)>) -> Self {
        self.body = Some((true, contents));
        self.error(411, &["length_required"])
            .error(413, &["payload_too_large"])
    }

    /// A JSON answer with a hand-written schema (see [`shape`]).
    pub(super) fn answer(self, status: u16, description: &'static str, schema: Schema) -> Self {
        self.content(status, description, "application/json", schema)
    }

    /// An answer of any content type.
    pub(super) fn content(
        mut self,
        status: u16,
        description: &'static str,
        content_type: &'static str,
        schema: Schema,
    ) -> Self {
        self.answers.push(Answer {
            status,
            description,
            content: Some((content_type, schema)),
            headers: Vec::new(),
        });
        self
    }

    /// A `303 See Other` answer to `Location`.
    pub(super) fn see_other(mut self, description: &'static str) -> Self {
        self.answers.push(Answer {
            status: 303,
            description,
            content: None,
            headers: vec![("Location", "Where to go next.")],
        });
        self
    }

    /// A response header on the answers declared so far with `status`.
    pub(super) fn answer_header(
        mut self,
        status: u16,
        name: &'static str,
        description: &'static str,
    ) -> Self {
        for a in self.answers.iter_mut().filter(|a| a.status == status) {
            a.headers.push((name, description));
        }
        self
    }

    /// Error answers with `status`, one of `codes` in the error body.
    pub(super) fn error(mut self, status: u16, codes: &[&'static str]) -> Self {
        let known = self.errors.entry(status).or_default();
        for c in codes {
            if !known.contains(c) {
                known.push(c);
            }
        }
        self
    }

    /// The errors that reading the database or the broker can give.
    pub(super) fn unavailable(self) -> Self {
        self.error(
            503,
            &[
                "database_unavailable",
                "broker_unavailable",
                "broker_timeout",
                "broker_blocked",
                "broker_nacked",
            ],
        )
    }
}

/// Hand-written schemas for answers a handler builds itself.
pub(super) mod shape {
    use super::*;

    fn typed(t: Type) -> ObjectBuilder {
        ObjectBuilder::new().schema_type(t)
    }

    /// A string.
    pub(crate) fn string() -> Schema {
        typed(Type::String).into()
    }

    /// One of these strings.
    pub(crate) fn one_of(values: &[&str]) -> Schema {
        typed(Type::String)
            .enum_values(Some(values.iter().copied()))
            .into()
    }

    /// A UUID.
    pub(crate) fn uuid() -> Schema {
        typed(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
            .into()
    }

    /// An integer.
    pub(crate) fn integer() -> Schema {
        typed(Type::Integer).into()
    }

    /// A boolean.
    pub(crate) fn boolean() -> Schema {
        typed(Type::Boolean).into()
    }

    /// A JSON object, any fields.
    pub(crate) fn any_object() -> Schema {
        typed(Type::Object).into()
    }

    /// Any JSON value.
    pub(crate) fn any() -> Schema {
        ObjectBuilder::new()
            .schema_type(SchemaType::AnyValue)
            .into()
    }

    /// `null` or a JSON object with any fields.
    pub(crate) fn nullable_object() -> Schema {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
            .into()
    }

    /// `null` or a string.
    pub(crate) fn nullable_string() -> Schema {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .into()
    }

    /// An array of `items`.
    pub(crate) fn array(items: Schema) -> Schema {
        ArrayBuilder::new()
            .items(ArrayItems::RefOrSchema(Box::new(items)))
            .into()
    }

    /// An object with these fields, all required (others may follow).
    pub(crate) fn object(fields: Vec<(&str, Schema)>) -> Schema {
        let mut b = typed(Type::Object);
        for (name, schema) in fields {
            b = b.property(name, schema).required(name);
        }
        b.into()
    }

    /// An object with one required field, a list of rows (objects).
    pub(crate) fn rows(field: &str) -> Schema {
        object(vec![(field, array(any_object()))])
    }
}

/// The operation of one route: its doc and what its declaration adds.
fn operation(spec: &Spec, doc: &Doc, all: &[Spec]) -> utoipa::openapi::path::Operation {
    let mut errors = doc.errors.clone();
    let mut add = |status: u16, codes: &[&'static str]| {
        let known = errors.entry(status).or_default();
        for c in codes {
            if !known.contains(c) {
                known.push(c);
            }
        }
    };
    add(431, &["headers_too_large"]);
    if all
        .iter()
        .any(|o| o.method != spec.method && overlaps(o.path, spec.path))
    {
        // A path this template takes that another method's route takes too (a segment that
        // is not this placeholder's type): that route's path, the wrong method.
        add(405, &["method_not_allowed"]);
    }
    if spec.guarded {
        add(404, &["not_found"]);
    }
    if spec.path_schema.is_some() {
        // A segment that does not parse as the placeholder's type matches no route.
        add(404, &["not_found"]);
    }
    let mut description = doc.description.unwrap_or_default().to_owned();
    let scope = match spec.access {
        Access::Public => None,
        Access::Scoped(scope) => Some(scope),
        Access::Publish => {
            add(429, &["rate_limited"]);
            add(503, &["overloaded"]);
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str(
                "Publish gate: a token with the `publish` scope (401, 403), then the caller's \
                 rate (429 `rate_limited` with `Retry-After`), then a free in-flight slot (503 \
                 `overloaded` with `Retry-After`, at once).",
            );
            Some(crate::config::Scope::Publish)
        }
    };
    if scope.is_some() {
        add(400, &["invalid_header"]);
        add(401, &["unauthorized"]);
        add(403, &["forbidden"]);
    }
    let mut op = OperationBuilder::new()
        .operation_id(Some(doc.id))
        .summary(Some(doc.summary))
        .description((!description.is_empty()).then_some(description))
        .tag(tag(spec.path));
    if let Some(schema) = &spec.path_schema {
        let name = spec
            .path
            .split('/')
            .find(|s| s.starts_with('{'))
            .map(|s| s.trim_matches(|c| c == '{' || c == '}'))
            .unwrap_or_default();
        op = op.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(utoipa::openapi::Required::True)
                .schema(Some(schema.clone())),
        );
    }
    op = op.parameters(Some(doc.params.iter().cloned()));
    if let Some((required, contents)) = &doc.body {
        let mut body = RequestBodyBuilder::new().required(Some(if *required {
            utoipa::openapi::Required::True
        } else {
            utoipa::openapi::Required::False
        }));
        for (content_type, schema) in contents {
            body = body.content(
                *content_type,
                ContentBuilder::new().schema(Some(schema.clone())).build(),
            );
        }
        op = op.request_body(Some(body.build()));
    }
    // Answers with one status are one response, with a content entry per content type.
    let statuses: std::collections::BTreeSet<u16> = doc.answers.iter().map(|a| a.status).collect();
    for status in statuses {
        let mut r = ResponseBuilder::new();
        let mut described = Vec::new();
        for a in doc.answers.iter().filter(|a| a.status == status) {
            if !described.contains(&a.description) {
                described.push(a.description);
            }
            if let Some((ct, schema)) = &a.content {
                r = r.content(
                    *ct,
                    ContentBuilder::new().schema(Some(schema.clone())).build(),
                );
            }
            for (name, d) in &a.headers {
                r = r.header(*name, header(d));
            }
        }
        op = op.response(
            status.to_string(),
            r.description(described.join(" Or: ")).build(),
        );
    }
    for (status, codes) in &errors {
        let listed: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
        let mut r = ResponseBuilder::new()
            .description(format!(
                "Refused; the error code is one of {}.",
                listed.join(", ")
            ))
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .extensions(Some(
                ExtensionsBuilder::new()
                    .add("x-warren-error-codes", codes.clone())
                    .build(),
            ));
        match status {
            401 => r = r.header("WWW-Authenticate", header("`Bearer`.")),
            429 | 503 => r = r.header("Retry-After", header("Seconds to wait before a retry.")),
            _ => {}
        }
        op = op.response(status.to_string(), r.build());
    }
    match scope {
        None => op.securities(Some(Vec::<SecurityRequirement>::new())),
        Some(scope) => op
            .security(SecurityRequirement::new(BEARER, [scope.as_str()]))
            .extensions(Some(
                ExtensionsBuilder::new()
                    .add("x-warren-scope", scope.as_str())
                    .build(),
            )),
    }
    .build()
}

/// Whether one request path can fit both templates.
fn overlaps(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| x == y || x.starts_with('{') || y.starts_with('{'))
}

fn header(description: &str) -> utoipa::openapi::Header {
    HeaderBuilder::new()
        .schema(shape::string())
        .description(Some(description))
        .build()
}

/// The operation's tag: the part of the API its path belongs to.
fn tag(path: &str) -> &'static str {
    let rest = path.strip_prefix("/v1/").unwrap_or(path);
    match rest.split('/').next().unwrap_or_default() {
        "events" | "jobs" | "notifications" => "publish",
        "dlq" | "failed-jobs" => "dead letters",
        "orders" | "sagas" | "interventions" | "admin" => "sagas",
        "subscriptions" => "subscriptions",
        "console" | "/console" => "console",
        _ => "operations",
    }
}

fn http_method(m: &Method) -> HttpMethod {
    if *m == Method::POST {
        HttpMethod::Post
    } else {
        HttpMethod::Get
    }
}

/// The document of `routes`, and the routes that have no doc (each still listed, with a
/// summary saying so).
pub(super) fn document(routes: &Routes) -> (utoipa::openapi::OpenApi, Vec<String>) {
    let mut paths = PathsBuilder::new();
    let mut missing = Vec::new();
    let mut errors = Vec::new();
    <super::error::ErrorBody as ToSchema>::schemas(&mut errors);
    let mut components = ComponentsBuilder::new()
        .schema_from::<super::error::ErrorBody>()
        .schemas_from_iter(errors)
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token of `http.tokens` (`Authorization: Bearer <token>`). The \
                         requirement lists the scope the operation needs: `publish`, `read` \
                         or `admin` (which includes `read`). With no token configured every \
                         request is allowed. The console sends a session cookie with \
                         `x-warren-console: 1` instead.",
                    ))
                    .build(),
            ),
        );
    let mut by_path: BTreeMap<&str, Vec<(&Spec, utoipa::openapi::path::Operation)>> =
        BTreeMap::new();
    for spec in routes.specs() {
        let op = match &spec.doc {
            Some(doc) => {
                for (name, schema) in &doc.schemas {
                    components = components.schema(name.clone(), schema.clone());
                }
                operation(spec, doc, routes.specs())
            }
            None => {
                missing.push(format!("{} {}", spec.method, spec.path));
                OperationBuilder::new()
                    .summary(Some("undocumented"))
                    .build()
            }
        };
        by_path.entry(spec.path).or_default().push((spec, op));
    }
    for (path, ops) in by_path {
        let mut item: Option<PathItem> = None;
        for (spec, op) in ops {
            let method = http_method(&spec.method);
            match &mut item {
                None => item = Some(PathItem::new(method, op)),
                Some(i) => i.merge_operations(PathItem::new(method, op)),
            }
        }
        if let Some(item) = item {
            paths = paths.path(path, item);
        }
    }
    let doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("warren")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The HTTP front of warren: publish events and jobs, start sagas, operate \
                     dead letters, interventions and subscriptions. Every error answer has the \
                     body `ErrorBody`; its `error.code` is stable.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .build();
    (doc, missing)
}

/// The document as pretty JSON with sorted keys (stable, so the file in the repository can be
/// compared with it), ending in a newline.
pub(crate) fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        // The document does not depend on the body limit (no sizes in it).
        let (doc, _) = document(&super::routes(1024));
        // Through a `Value` (whose maps are sorted) so the key order is stable.
        let value = serde_json::to_value(&doc).unwrap_or_default();
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        text
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_has_an_operation_and_no_other_is_listed() {
        let table = super::super::routes(1024);
        let (doc, missing) = document(&table);
        assert!(missing.is_empty(), "routes without a doc: {missing:?}");
        let value = serde_json::to_value(&doc).expect("serializes");
        let mut listed = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for (path, item) in value["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                listed.insert(format!("{} {path}", method.to_ascii_uppercase()));
                let id = op["operationId"].as_str().expect("an operation id");
                assert!(ids.insert(id.to_owned()), "operation id {id} twice");
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
            }
        }
        let routes: BTreeSet<String> = table.list().into_iter().collect();
        assert_eq!(
            listed, routes,
            "the document's operations differ from the route table"
        );
    }

    #[test]
    fn the_version_is_3_1_and_scoped_operations_name_their_scope() {
        let value: serde_json::Value = serde_json::from_str(json()).expect("JSON");
        assert!(
            value["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        let op = &value["paths"]["/v1/dlq/{queue}/purge"]["post"];
        assert_eq!(op["security"][0]["bearer"][0], "admin");
        assert_eq!(op["x-warren-scope"], "admin");
        assert!(op["responses"]["403"].is_object());
        let publish = &value["paths"]["/v1/events/{name}"]["post"];
        assert!(publish["responses"]["429"]["headers"]["Retry-After"].is_object());
        assert_eq!(
            value["paths"]["/healthz"]["get"]["security"],
            serde_json::json!([])
        );
    }

    #[test]
    fn the_file_in_the_repository_is_the_generated_document() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let file = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            file == json(),
            "docs/openapi.json differs from the document the code makes; regenerate it with \
             `cargo run -q -- openapi > docs/openapi.json`"
        );
    }
}
