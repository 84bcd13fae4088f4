//! The OpenAPI 3.1 document served at `/openapi/json`.
//!
//! It is generated at runtime from the workspace definitions, the same ground truth REST
//! validation uses, so a table or field added to a definition is documented without code
//! changes and the document cannot drift from what the server accepts. It is built with
//! utoipa's builders rather than its derive macros because the row types exist only at runtime.
//!
//! Per table there are three component schemas: `<ws>.<table>` (a row as returned),
//! `<ws>.<table>.input` (a POST body) and `<ws>.<table>.patch` (a PUT/PATCH body); a `json`
//! field with its own JSON Schema gets a fourth, `<ws>.<table>.<field>`, holding that schema.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde_json::Value;
use utoipa::openapi::path::{OperationBuilder, ParameterBuilder, ParameterIn, PathItemBuilder};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{AdditionalProperties, AnyOfBuilder, RefBuilder, SchemaType};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    AllOfBuilder, ArrayBuilder, ComponentsBuilder, ContentBuilder, HttpMethod, InfoBuilder,
    ObjectBuilder, OpenApi, OpenApiBuilder, OpenApiVersion, PathItem, PathsBuilder, Ref, RefOr,
    Required, Response, ResponseBuilder, Schema, Type,
};

use crate::workspace::{FieldSpec, FieldType, TableDefinition, WorkspaceDefinition};

/// The document's `info`: what the API is called and which version of it this is.
#[derive(Debug, Clone)]
pub(crate) struct DocInfo {
    pub title: String,
    pub version: String,
    pub description: Option<String>,
}

const JSON: &str = "application/json";
const ERROR: &str = "Error";
const ISSUE: &str = "Issue";
const META_TAG: &str = "meta";
const SYNC_TAG: &str = "sync";
/// Integers are stored as float64 in the doc, so only these are exact (validation enforces it).
const MAX_SAFE_INTEGER: i64 = 9_007_199_254_740_991;
/// A necessary condition for a date (the instant ends in `Z`, one `|`, then the zone); the
/// server checks the rest, and a stricter pattern here could reject values it accepts.
const DATE_PATTERN: &str = r"^[^|]+Z\|[^|]+$";
const DATE_EXAMPLE: &str = "2024-01-01T00:00:00.000Z|America/New_York";
const DATE_DESCRIPTION: &str = "`<ISO-8601 UTC instant>|<IANA time zone>`: the instant ends in \
    `Z`, and the zone is where it was written, e.g. `2024-01-01T00:00:00.000Z|America/New_York`.";

/// Builds the OpenAPI 3.1 document for these workspaces, at runtime, with utoipa's builders.
pub(crate) fn openapi_document(
    workspaces: &[&WorkspaceDefinition],
    info: DocInfo,
) -> utoipa::openapi::OpenApi {
    let mut doc = Parts::default();
    doc.meta_paths();
    for ws in workspaces {
        for table in &ws.tables {
            doc.table(ws, table);
        }
        doc.sync_path(ws);
    }
    doc.finish(workspaces, info)
}

/// Hands out names once each. Sanitising can make different definitions collide (`a.b`/`c`
/// and `a`/`b.c`), and a silent clash would document one table with another's schema.
#[derive(Default)]
struct Names(HashSet<String>);

impl Names {
    fn claim(&mut self, wanted: String, separator: char) -> String {
        if self.0.insert(wanted.clone()) {
            return wanted;
        }
        let mut n = 2;
        loop {
            let candidate = format!("{wanted}{separator}{n}");
            if self.0.insert(candidate.clone()) {
                return candidate;
            }
            n += 1;
        }
    }
}

/// The pieces of the document, gathered table by table and assembled by [`Parts::finish`].
#[derive(Default)]
struct Parts {
    schemas: Vec<(String, Schema)>,
    paths: Vec<(String, PathItem)>,
    schema_names: Names,
    operation_ids: Names,
}

impl Parts {
    fn operation(&mut self, tag: &str, id: String, summary: String) -> OperationBuilder {
        let id = self.operation_ids.claim(id, '_');
        OperationBuilder::new()
            .tag(tag)
            .operation_id(Some(id))
            .summary(Some(summary))
    }

    fn meta_paths(&mut self) {
        let object = || ObjectBuilder::new().schema_type(Type::Object);
        let discovery = self
            .operation(META_TAG, "discovery".into(), "Discovery".into())
            .description(Some(
                "The server's name and version, links to the docs, and every workspace with \
                 its tables and their URLs.",
            ))
            .response("200", json_response("The discovery document.", object()));
        let document = self
            .operation(META_TAG, "openapi_json".into(), "This document".into())
            .description(Some(
                "The OpenAPI 3.1 document, generated from the table definitions.",
            ))
            .response("200", json_response("The OpenAPI document.", object()));
        let page = self
            .operation(META_TAG, "openapi_ui".into(), "API reference".into())
            .description(Some("An interactive reference page for this document."))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("An HTML page.")
                    .content(
                        "text/html",
                        ContentBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                            .build(),
                    )
                    .build(),
            );
        self.paths.extend([
            ("/".into(), PathItem::new(HttpMethod::Get, discovery)),
            ("/openapi".into(), PathItem::new(HttpMethod::Get, page)),
            (
                "/openapi/json".into(),
                PathItem::new(HttpMethod::Get, document),
            ),
        ]);
    }

    /// The y-websocket endpoint is not an HTTP operation, but leaving it out would hide where
    /// sync lives; it is listed as the GET that starts the upgrade.
    fn sync_path(&mut self, ws: &WorkspaceDefinition) {
        let op = self
            .operation(
                SYNC_TAG,
                format!("{}_sync", operation_part(&ws.id)),
                format!("Sync `{}` (WebSocket)", ws.id),
            )
            .description(Some(format!(
                "Not a plain HTTP endpoint: a WebSocket upgrade (`Connection: Upgrade`, \
                 `Upgrade: websocket`). The socket then speaks the y-websocket protocol (binary \
                 sync and awareness messages) for the Yjs document of workspace `{}`, so any \
                 y-websocket client can connect. REST writes reach connected clients at once.",
                ws.id
            )))
            .response(
                "101",
                ResponseBuilder::new()
                    .description("Switching Protocols: the socket now carries y-websocket sync.")
                    .build(),
            )
            .response(
                "426",
                error(
                    "Not a WebSocket upgrade request; the message says which header is \
                     missing or wrong.",
                ),
            );
        let path = format!("/workspaces/{}/sync", path_segment(&ws.id));
        self.paths.push((path, PathItem::new(HttpMethod::Get, op)));
    }

    fn table(&mut self, ws: &WorkspaceDefinition, table: &TableDefinition) {
        let base = format!("{}.{}", component_part(&ws.id), component_part(&table.name));
        let row = self.schema_names.claim(base.clone(), '-');
        let input = self.schema_names.claim(format!("{base}.input"), '-');
        let patch = self.schema_names.claim(format!("{base}.patch"), '-');
        let mut json_components = Vec::new();
        for field in &table.fields {
            let component = match &field.spec.kind {
                FieldType::Json {
                    schema: Some(schema),
                } => {
                    let wanted = format!("{base}.{}", component_part(&field.name));
                    let name = self.schema_names.claim(wanted, '-');
                    self.schemas
                        .push((name.clone(), user_schema(schema, &name)));
                    Some(name)
                }
                _ => None,
            };
            json_components.push(component);
        }
        let fields = || table.fields.iter().zip(json_components.iter());
        let object = || ObjectBuilder::new().schema_type(Type::Object);

        let mut row_schema = object().description(Some(format!(
            "A row of table `{}` in workspace `{}`, as the server returns it.",
            table.name, ws.id
        )));
        let mut input_schema = object()
            .description(Some(format!(
                "A whole row of `{}` to create or overwrite. Left-out fields take their \
                 default (or `null` when nullable); unknown fields are rejected.",
                table.name
            )))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        let mut patch_schema = object()
            .description(Some(format!(
                "Some fields of an existing row of `{}`: only these are written. Unknown \
                 fields are rejected.",
                table.name
            )))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        for (field, component) in fields() {
            let spec = &field.spec;
            let component = component.as_deref();
            row_schema = row_schema.property(
                &field.name,
                field_schema(spec, component, spec.default.clone()),
            );
            input_schema = input_schema.property(
                &field.name,
                field_schema(spec, component, spec.default.clone()),
            );
            // A patch leaves missing fields as they are, so a `default` there would mislead.
            let patched = match spec.kind {
                FieldType::Id => id_schema()
                    .description(Some(
                        "Optional: the path names the row, and an id here never changes it.",
                    ))
                    .into(),
                _ => field_schema(spec, component, None),
            };
            patch_schema = patch_schema.property(&field.name, patched);
            if !spec.nullable {
                row_schema = row_schema.required(&field.name);
                if spec.default.is_none() {
                    input_schema = input_schema.required(&field.name);
                }
            }
        }
        self.schemas.extend([
            (row.clone(), row_schema.into()),
            (input.clone(), input_schema.into()),
            (patch.clone(), patch_schema.into()),
        ]);
        self.table_paths(ws, table, &row, &input, &patch);
    }

    fn table_paths(
        &mut self,
        ws: &WorkspaceDefinition,
        table: &TableDefinition,
        row: &str,
        input: &str,
        patch: &str,
    ) {
        let tag = ws.id.as_str();
        let prefix = format!("{}_{}", operation_part(&ws.id), operation_part(&table.name));
        let name = &table.name;
        let one = || envelope(Ref::from_schema_name(row));

        let list = self
            .operation(tag, format!("{prefix}_list"), format!("List `{name}`"))
            .description(Some(
                "The rows that match the table's schema, ordered by id. Rows that do not \
                 match (written by a peer with another schema) are left out.",
            ))
            .parameter(page_parameter(
                "offset",
                "How many rows to skip (default 0).",
            ))
            .parameter(page_parameter(
                "limit",
                "The most rows to return (default: all).",
            ))
            .response(
                "200",
                json_response(
                    "The rows.",
                    envelope(ArrayBuilder::new().items(Ref::from_schema_name(row))),
                ),
            )
            .response(
                "400",
                error("The query string is malformed (e.g. `limit=-1`)."),
            );
        let upsert = self
            .operation(
                tag,
                format!("{prefix}_upsert"),
                format!("Create or overwrite a row of `{name}`"),
            )
            .description(Some(
                "Writes the whole row: every field is replaced. The row is validated first, \
                 and every problem is listed in `issues`.",
            ))
            .request_body(Some(json_body(input, "The whole row.")))
            .response(
                "200",
                json_response("An existing row was overwritten.", one()),
            )
            .response("201", json_response("The row was created.", one()))
            .response("400", error(BAD_JSON))
            .response("413", error(TOO_LARGE))
            .response("415", error(NOT_JSON))
            .response("422", error(INVALID));
        let collection = format!(
            "/workspaces/{}/tables/{}",
            path_segment(&ws.id),
            path_segment(name)
        );
        self.paths.push((
            collection.clone(),
            PathItemBuilder::new()
                .operation(HttpMethod::Get, list)
                .operation(HttpMethod::Post, upsert)
                .build(),
        ));

        let id = || id_parameter(table);
        let get = self
            .operation(
                tag,
                format!("{prefix}_get"),
                format!("Get a row of `{name}`"),
            )
            .parameter(id())
            .response("200", json_response("The row.", one()))
            .response("400", error(BAD_PATH))
            .response("404", error(NO_ROW))
            .response(
                "422",
                error(
                    "The stored row does not match the table's schema: the error carries \
                     `issues` and the stored `row`.",
                ),
            );
        let mut update = |method: &str, summary: &str| {
            self.operation(
                tag,
                format!("{prefix}_{method}"),
                format!("{summary} `{name}`"),
            )
            .description(Some(
                "Writes only the given fields; the merged row must match the schema.",
            ))
            .parameter(id())
            .request_body(Some(json_body(patch, "The fields to change.")))
            .response("200", json_response("The row after the update.", one()))
            .response("400", error(BAD_JSON))
            .response("404", error(NO_ROW))
            .response("413", error(TOO_LARGE))
            .response("415", error(NOT_JSON))
            .response("422", error(INVALID))
        };
        let put = update("put", "Update a row of");
        let patch_op = update("patch", "Update a row of");
        let delete_data = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("id", ObjectBuilder::new().schema_type(Type::String))
            .required("id");
        let delete = self
            .operation(
                tag,
                format!("{prefix}_delete"),
                format!("Delete a row of `{name}`"),
            )
            .parameter(id())
            .response(
                "200",
                json_response("The row was deleted.", envelope(delete_data)),
            )
            .response("400", error(BAD_PATH))
            .response("404", error(NO_ROW));
        self.paths.push((
            format!("{collection}/{{id}}"),
            PathItemBuilder::new()
                .operation(HttpMethod::Get, get)
                .operation(HttpMethod::Put, put)
                .operation(HttpMethod::Patch, patch_op)
                .operation(HttpMethod::Delete, delete)
                .build(),
        ));
    }

    fn finish(self, workspaces: &[&WorkspaceDefinition], info: DocInfo) -> OpenApi {
        let mut tags = vec![(
            META_TAG.to_string(),
            "Discovery and API documentation.".to_string(),
        )];
        for ws in workspaces {
            tags.push((
                ws.id.clone(),
                format!("The tables of workspace `{}`.", ws.id),
            ));
        }
        if !workspaces.is_empty() {
            tags.push((
                SYNC_TAG.into(),
                "Real-time sync over WebSocket (y-websocket).".into(),
            ));
        }
        let mut seen = HashSet::new();
        tags.retain(|(name, _)| seen.insert(name.clone()));
        let tags = tags.into_iter().map(|(name, description)| {
            TagBuilder::new()
                .name(name)
                .description(Some(description))
                .build()
        });

        let components = self
            .schemas
            .into_iter()
            .fold(
                ComponentsBuilder::new()
                    .schema(ERROR, error_schema())
                    .schema(ISSUE, issue_schema()),
                |components, (name, schema)| components.schema(name, schema),
            )
            .build();
        let paths = self
            .paths
            .into_iter()
            .fold(PathsBuilder::new(), |paths, (path, item)| {
                paths.path(path, item)
            })
            .build();
        let info = InfoBuilder::new()
            .title(info.title)
            .version(info.version)
            .description(info.description)
            .build();
        OpenApiBuilder::new()
            .openapi(OpenApiVersion::Version31)
            .info(info)
            .paths(paths)
            .components(Some(components))
            .tags(Some(tags))
            .build()
    }
}

const BAD_PATH: &str = "The path is malformed (e.g. the id is not valid UTF-8).";
pub(crate) const BAD_JSON: &str = "The body is not valid JSON.";
pub(crate) const TOO_LARGE: &str = "The body is larger than the server accepts.";
pub(crate) const NOT_JSON: &str = "The body is not sent as `application/json`.";
const NO_ROW: &str = "No such row (or no such workspace or table).";
const INVALID: &str = "The body is not a JSON object, or the row does not match the table's \
    schema; `issues` lists every problem.";

/// A field value's schema. `json_component` names the component holding a `json` field's
/// own JSON Schema, when it has one.
fn field_schema(
    spec: &FieldSpec,
    json_component: Option<&str>,
    default: Option<Value>,
) -> RefOr<Schema> {
    let typed = |ty: Type| {
        let schema_type: SchemaType = if spec.nullable {
            [ty, Type::Null].into_iter().collect()
        } else {
            ty.into()
        };
        ObjectBuilder::new()
            .schema_type(schema_type)
            .default(default.clone())
    };
    match &spec.kind {
        FieldType::Id => id_schema().into(),
        FieldType::Text => typed(Type::String).into(),
        FieldType::Integer => typed(Type::Integer)
            .minimum(Some(-MAX_SAFE_INTEGER))
            .maximum(Some(MAX_SAFE_INTEGER))
            .into(),
        FieldType::Real => typed(Type::Number).into(),
        FieldType::Boolean => typed(Type::Boolean).into(),
        FieldType::Date => typed(Type::String)
            .pattern(Some(DATE_PATTERN))
            .description(Some(DATE_DESCRIPTION))
            .examples([DATE_EXAMPLE])
            .into(),
        // `enum` is checked on its own, so a nullable select must list `null` too.
        FieldType::Select { options } => typed(Type::String)
            .enum_values(Some(
                options
                    .iter()
                    .map(|o| Value::from(o.as_str()))
                    .chain(spec.nullable.then_some(Value::Null)),
            ))
            .into(),
        FieldType::Tags { options } => {
            let item = ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(options.as_ref().map(|o| o.iter().map(String::as_str)));
            let schema_type: SchemaType = if spec.nullable {
                [Type::Array, Type::Null].into_iter().collect()
            } else {
                Type::Array.into()
            };
            ArrayBuilder::new()
                .schema_type(schema_type)
                .items(item)
                .default(default)
                .into()
        }
        FieldType::Json { schema } => {
            json_field_schema(spec, schema.as_ref(), json_component, default)
        }
    }
}

/// The server rejects `null` in a non-nullable `json` field whatever its schema says, so the
/// document excludes it too unless the field's schema already does.
fn json_field_schema(
    spec: &FieldSpec,
    schema: Option<&Value>,
    component: Option<&str>,
    default: Option<Value>,
) -> RefOr<Schema> {
    match (component, spec.nullable) {
        (None, true) => ObjectBuilder::new()
            .schema_type(SchemaType::AnyValue)
            .description(Some("Any JSON value."))
            .default(default)
            .into(),
        (None, false) => ObjectBuilder::new()
            .schema_type(non_null())
            .description(Some("Any JSON value except `null`."))
            .default(default)
            .into(),
        (Some(name), true) => AnyOfBuilder::new()
            .item(Ref::from_schema_name(name))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .default(default)
            .into(),
        (Some(name), false) if schema.is_some_and(excludes_null) => RefBuilder::new()
            .ref_location_from_schema_name(name)
            .default(default)
            .into(),
        (Some(name), false) => AllOfBuilder::new()
            .item(Ref::from_schema_name(name))
            .item(ObjectBuilder::new().schema_type(non_null()))
            .default(default)
            .into(),
    }
}

fn non_null() -> SchemaType {
    [
        Type::Object,
        Type::Array,
        Type::String,
        Type::Number,
        Type::Boolean,
    ]
    .into_iter()
    .collect()
}

fn excludes_null(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(ty)) => ty != "null",
        Some(Value::Array(types)) => !types.iter().any(|ty| ty == "null"),
        _ => false,
    }
}

fn id_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .pattern(Some("^[^:]+$"))
        .description(Some("The row id: a non-empty string without `:`."))
}

/// A user's JSON Schema as the component `name`, keyword for keyword.
fn user_schema(schema: &Value, name: &str) -> Schema {
    let mut schema = schema.clone();
    rebase_refs(&mut schema, &format!("#/components/schemas/{name}"));
    // utoipa's typed model lacks some JSON Schema keywords (`not`, `const`, `$defs`, ...), so
    // a schema it reads back unchanged is kept typed and any other is carried verbatim (as
    // extension members, so its top-level keys come out in no fixed order).
    if let Ok(typed) = serde_json::from_value::<Schema>(schema.clone()) {
        if serde_json::to_value(&typed).ok().as_ref() == Some(&schema) {
            return typed;
        }
    }
    let members = match schema {
        Value::Object(members) => members,
        Value::Bool(true) => Default::default(),
        // `false` (matches nothing) or a non-schema the definition check would have refused.
        _ => [("not".to_string(), Value::Object(Default::default()))]
            .into_iter()
            .collect(),
    };
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .extensions(Some(members.into_iter().collect()))
        .build()
        .into()
}

/// Points a schema's local `$ref`s (`#/$defs/x`) at where the schema now lives: inside the
/// document they would otherwise resolve against the document root.
fn rebase_refs(value: &mut Value, base: &str) {
    match value {
        Value::Object(members) => {
            // `$id` starts a new base URI, which its local refs are relative to.
            if members.contains_key("$id") {
                return;
            }
            for (key, member) in members.iter_mut() {
                match (key.as_str(), member) {
                    ("$ref", Value::String(target)) if target.starts_with('#') => {
                        *target = format!("{base}{}", &target[1..]);
                    }
                    // Values, not schemas: a `$ref` inside them is data.
                    ("enum" | "const" | "default" | "examples" | "example", _) => {}
                    (_, member) => rebase_refs(member, base),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rebase_refs(item, base)),
        _ => {}
    }
}

fn error_schema() -> ObjectBuilder {
    let error = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "issues",
            ArrayBuilder::new()
                .items(Ref::from_schema_name(ISSUE))
                .description(Some(format!(
                    "The problems found, for schema violations (422): the first {}, each \
                     path and message cut to {} characters.",
                    super::MAX_ISSUES,
                    super::MAX_ISSUE_TEXT
                ))),
        )
        .property(
            "more_issues",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .description(Some(
                    "How many problems there were besides the ones `issues` lists, when \
                     there were more than it holds.",
                )),
        )
        .property(
            "row",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some("The stored row, when it does not match the schema.")),
        )
        .required("message");
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Every error response: `{\"error\": {\"message\", ...}}`.",
        ))
        .property("error", error)
        .required("error")
}

fn issue_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("One validation problem: where, and what is wrong."))
        .property(
            "path",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "The field, with an index (`tags[1]`) or JSON pointer (`meta/author`) below \
                 it; for an action's input, a JSON pointer without its leading `/` \
                 (`author/name`, `tags/1`; empty for the whole input).",
                )),
        )
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("path")
        .required("message")
}

/// `{"data": ...}`, the success envelope.
pub(crate) fn envelope(data: impl Into<RefOr<Schema>>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("data", data)
        .required("data")
}

/// Documents auth: the bearer and `?token=` schemes required everywhere (but the docs
/// routes when `public_docs`), 401 on every operation and 403 on writes (read-only
/// access).
pub(crate) fn document_auth(doc: &mut OpenApi, public_docs: bool) {
    use utoipa::openapi::security::{
        ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    const BEARER: &str = "bearer";
    const QUERY: &str = "token";
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    components.add_security_scheme(
        QUERY,
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            QUERY,
            "The token as a query parameter (for WebSockets, which cannot send headers).",
        ))),
    );
    doc.security = Some(vec![
        SecurityRequirement::new(BEARER, Vec::<String>::new()),
        SecurityRequirement::new(QUERY, Vec::<String>::new()),
    ]);
    for (path, item) in doc.paths.paths.iter_mut() {
        let docs = matches!(path.as_str(), "/" | "/openapi" | "/openapi/json");
        let sync = item
            .get
            .as_ref()
            .and_then(|get| get.tags.as_ref())
            .is_some_and(|tags| tags.iter().any(|tag| tag == SYNC_TAG));
        if sync {
            // Refused sockets get 101, then the close code 4401 (documented there).
            continue;
        }
        let operations = [
            (&mut item.get, false),
            (&mut item.head, false),
            (&mut item.post, true),
            (&mut item.put, true),
            (&mut item.patch, true),
            (&mut item.delete, true),
        ];
        for (operation, write) in operations {
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            if docs && public_docs {
                // An empty requirement: no auth.
                operation.security = Some(vec![SecurityRequirement::default()]);
                continue;
            }
            operation.responses.responses.insert(
                "401".into(),
                error("No valid token (`Authorization: Bearer` or `?token=`).").into(),
            );
            if write {
                operation
                    .responses
                    .responses
                    .insert("403".into(), error("The token may only read.").into());
            }
        }
    }
}

pub(crate) fn json_response(description: &str, schema: impl Into<RefOr<Schema>>) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(JSON, ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

pub(crate) fn error(description: &str) -> Response {
    json_response(description, Ref::from_schema_name(ERROR))
}

pub(crate) fn json_body(
    schema: &str,
    description: &str,
) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .description(Some(description))
        .required(Some(Required::True))
        .content(
            JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .build()
}

fn page_parameter(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        ))
        .build()
}

fn id_parameter(table: &TableDefinition) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name("id")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(format!("The row's `{}`.", table.id_field())))
        .schema(Some(id_schema()))
        .build()
}

/// Component names may only use `[A-Za-z0-9._-]`.
pub(crate) fn component_part(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect()
}

/// Operation ids become function names in generated clients: `[A-Za-z0-9_]` only.
pub(crate) fn operation_part(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A workspace or table name as it appears in a URL path: percent-encoded, so a name with
/// `/`, `{` or a space still gives one literal segment.
pub(crate) fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::{json, Value};

    use super::*;
    use crate::workspace::{
        boolean, date, id, integer, json, json_with_schema, real, select, tags, tags_of, text,
        validate_row, Field,
    };

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn doc(workspaces: &[&WorkspaceDefinition]) -> Value {
        let info = DocInfo {
            title: "Test API".into(),
            version: "1.2.3".into(),
            description: Some("For tests.".into()),
        };
        serde_json::to_value(openapi_document(workspaces, info)).expect("the document serializes")
    }

    /// Uses a local `$ref`, which must still resolve once the schema sits inside the document.
    fn meta_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "author": { "$ref": "#/$defs/name" },
                "words": { "type": "integer", "minimum": 0 }
            },
            "required": ["author"],
            "$defs": { "name": { "type": "string", "minLength": 1 } }
        })
    }

    fn settings_schema() -> Value {
        json!({ "type": "object", "properties": { "theme": { "type": "string" } } })
    }

    fn blog() -> WorkspaceDefinition {
        WorkspaceDefinition::builder("blog")
            .table(
                "posts",
                [
                    ("id", id()),
                    ("title", text()),
                    ("views", integer().default(0)),
                    ("score", real().nullable()),
                    ("status", select(["draft", "published"])),
                    ("labels", tags_of(["rust", "web"])),
                    ("published", boolean().default(false)),
                    ("when", date().nullable()),
                    ("meta", json_with_schema(meta_schema())),
                ],
            )
            .build()
            .expect("a valid definition")
    }

    fn auth() -> WorkspaceDefinition {
        WorkspaceDefinition::builder("auth")
            .table(
                "users",
                [
                    ("id", id()),
                    ("email", text()),
                    ("roles", tags()),
                    ("profile", json().nullable()),
                    ("extra", json()),
                    ("settings", json_with_schema(settings_schema()).nullable()),
                ],
            )
            .build()
            .expect("a valid definition")
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                if METHODS.contains(&method.as_str()) {
                    out.push((path.clone(), method.clone(), op.clone()));
                }
            }
        }
        out
    }

    /// Checks that every `$ref` in the document points at something in it; returns the count.
    fn assert_refs_resolve(doc: &Value) -> usize {
        fn walk<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
            match value {
                Value::Object(members) => {
                    for (key, member) in members {
                        match member.as_str() {
                            Some(target) if key == "$ref" => out.push(target),
                            _ => walk(member, out),
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(doc, &mut refs);
        for target in &refs {
            let pointer = target.strip_prefix('#').expect("only local refs");
            assert!(
                doc.pointer(pointer).is_some(),
                "`{target}` does not resolve"
            );
        }
        refs.len()
    }

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        let schema = &doc["components"]["schemas"][name];
        assert!(schema.is_object(), "no component `{name}`");
        schema
    }

    /// A validator for one component, with the document's components around it for `$ref`s.
    fn validator(doc: &Value, name: &str) -> jsonschema::Validator {
        let root = json!({
            "$ref": format!("#/components/schemas/{name}"),
            "components": doc["components"].clone(),
        });
        jsonschema::validator_for(&root).expect("the component is a valid JSON Schema")
    }

    #[test]
    fn documents_every_table_path_and_schema() {
        let (blog, auth) = (blog(), auth());
        let doc = doc(&[&blog, &auth]);
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "Test API");
        assert_eq!(doc["info"]["version"], "1.2.3");
        assert_eq!(doc["info"]["description"], "For tests.");

        let expected = [
            ("/", &["get"][..]),
            ("/openapi/json", &["get"]),
            ("/workspaces/blog/tables/posts", &["get", "post"]),
            (
                "/workspaces/blog/tables/posts/{id}",
                &["get", "put", "patch", "delete"],
            ),
            ("/workspaces/auth/tables/users", &["get", "post"]),
            (
                "/workspaces/auth/tables/users/{id}",
                &["get", "put", "patch", "delete"],
            ),
            ("/workspaces/blog/sync", &["get"]),
            ("/workspaces/auth/sync", &["get"]),
        ];
        for (path, methods) in expected {
            let item = doc["paths"][path].as_object().expect(path);
            let found: Vec<&str> = item
                .keys()
                .map(String::as_str)
                .filter(|m| METHODS.contains(m))
                .collect();
            assert_eq!(found.len(), methods.len(), "{path} has {found:?}");
            for method in methods {
                assert!(item[*method]["responses"].is_object(), "{method} {path}");
            }
        }
        let sync = &doc["paths"]["/workspaces/blog/sync"]["get"];
        assert_eq!(sync["tags"], json!(["sync"]));
        assert_eq!(sync["responses"].as_object().expect("responses").len(), 2);
        assert!(sync["responses"]["426"].is_object());
        assert!(sync["responses"]["101"].is_object());
        assert!(sync["description"]
            .as_str()
            .expect("a description")
            .contains("y-websocket"));

        let ops = operations(&doc);
        let ids: Vec<&str> = ops
            .iter()
            .map(|(_, _, op)| {
                op["operationId"]
                    .as_str()
                    .expect("every operation has an id")
            })
            .collect();
        assert_eq!(
            ids.iter().collect::<HashSet<_>>().len(),
            ids.len(),
            "{ids:?}"
        );
        assert_eq!(ids.len(), 3 + 2 * (6 + 1));
        for id in [
            "blog_posts_list",
            "blog_posts_patch",
            "auth_users_delete",
            "blog_sync",
        ] {
            assert!(ids.contains(&id), "no `{id}` in {ids:?}");
        }
        assert_eq!(
            doc["paths"]["/workspaces/auth/tables/users"]["get"]["tags"],
            json!(["auth"])
        );
        assert_eq!(doc["paths"]["/"]["get"]["tags"], json!(["meta"]));
        let tags: Vec<&Value> = doc["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .map(|t| &t["name"])
            .collect();
        assert_eq!(
            tags,
            [
                &json!("meta"),
                &json!("blog"),
                &json!("auth"),
                &json!("sync")
            ]
        );

        // The row schema: fields in declaration order with their JSON types.
        let posts = schema(&doc, "blog.posts");
        assert_eq!(posts["type"], "object");
        let props = posts["properties"].as_object().expect("properties");
        let names: Vec<&str> = props.keys().map(String::as_str).collect();
        let declared: Vec<&str> = blog.tables[0]
            .fields
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, declared);
        assert_eq!(props["id"]["type"], "string");
        assert_eq!(props["id"]["pattern"], "^[^:]+$");
        assert_eq!(props["id"]["minLength"], 1);
        assert_eq!(props["title"]["type"], "string");
        assert_eq!(props["views"]["type"], "integer");
        assert_eq!(props["views"]["default"], 0);
        assert_eq!(props["score"]["type"], json!(["number", "null"]));
        assert_eq!(props["status"]["type"], "string");
        assert_eq!(props["status"]["enum"], json!(["draft", "published"]));
        assert_eq!(props["labels"]["type"], "array");
        assert_eq!(props["labels"]["items"]["type"], "string");
        assert_eq!(props["labels"]["items"]["enum"], json!(["rust", "web"]));
        assert_eq!(props["published"]["type"], "boolean");
        assert_eq!(props["when"]["type"], json!(["string", "null"]));
        assert_eq!(props["when"]["examples"], json!([DATE_EXAMPLE]));
        assert!(props["when"]["description"]
            .as_str()
            .expect("described")
            .contains("IANA"));
        assert_eq!(
            props["meta"]["$ref"],
            "#/components/schemas/blog.posts.meta"
        );
        assert_eq!(
            posts["required"],
            json!([
                "id",
                "title",
                "views",
                "status",
                "labels",
                "published",
                "meta"
            ])
        );

        // The json field's own schema, verbatim but for its local ref.
        let mut meta = meta_schema();
        meta["properties"]["author"]["$ref"] =
            json!("#/components/schemas/blog.posts.meta/$defs/name");
        assert_eq!(schema(&doc, "blog.posts.meta"), &meta);
        assert_eq!(schema(&doc, "auth.users.settings"), &settings_schema());

        let users = &schema(&doc, "auth.users")["properties"];
        assert_eq!(users["roles"]["items"], json!({ "type": "string" }));
        assert!(
            users["profile"].get("type").is_none(),
            "nullable json takes anything"
        );
        assert_eq!(
            users["extra"]["type"],
            json!(["object", "array", "string", "number", "boolean"])
        );
        assert_eq!(users["settings"]["anyOf"][1], json!({ "type": "null" }));

        // Bodies: defaulted and nullable fields may be left out of a POST; a patch needs nothing.
        let input = schema(&doc, "blog.posts.input");
        assert_eq!(
            input["required"],
            json!(["id", "title", "status", "labels", "meta"])
        );
        assert_eq!(input["additionalProperties"], false);
        let patch = schema(&doc, "blog.posts.patch");
        assert!(patch.get("required").is_none());
        assert_eq!(patch["additionalProperties"], false);
        assert!(patch["properties"]["views"].get("default").is_none());

        let collection = &doc["paths"]["/workspaces/blog/tables/posts"];
        let item = &doc["paths"]["/workspaces/blog/tables/posts/{id}"];
        let body = &collection["post"]["requestBody"];
        assert_eq!(body["required"], true);
        assert_eq!(
            body["content"][JSON]["schema"]["$ref"],
            "#/components/schemas/blog.posts.input"
        );
        for method in ["put", "patch"] {
            let body = &item[method]["requestBody"]["content"][JSON]["schema"]["$ref"];
            assert_eq!(body, "#/components/schemas/blog.posts.patch");
        }
        let codes = |op: &Value| -> Vec<String> {
            op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(codes(&collection["get"]), ["200", "400"]);
        assert_eq!(
            codes(&collection["post"]),
            ["200", "201", "400", "413", "415", "422"]
        );
        assert_eq!(codes(&item["get"]), ["200", "400", "404", "422"]);
        assert_eq!(
            codes(&item["put"]),
            ["200", "400", "404", "413", "415", "422"]
        );
        assert_eq!(codes(&item["patch"]), codes(&item["put"]));
        assert_eq!(codes(&item["delete"]), ["200", "400", "404"]);
        let created = &collection["post"]["responses"]["201"]["content"][JSON]["schema"];
        assert_eq!(
            created["properties"]["data"]["$ref"],
            "#/components/schemas/blog.posts"
        );
        let listed = &collection["get"]["responses"]["200"]["content"][JSON]["schema"];
        assert_eq!(
            listed["properties"]["data"]["items"]["$ref"],
            "#/components/schemas/blog.posts"
        );
        let deleted = &item["delete"]["responses"]["200"]["content"][JSON]["schema"];
        assert_eq!(
            deleted["properties"]["data"]["properties"]["id"]["type"],
            "string"
        );

        let params = collection["get"]["parameters"]
            .as_array()
            .expect("parameters");
        for name in ["limit", "offset"] {
            let p = params.iter().find(|p| p["name"] == name).expect(name);
            assert_eq!((&p["in"], &p["required"]), (&json!("query"), &json!(false)));
            assert_eq!(p["schema"], json!({ "type": "integer", "minimum": 0 }));
        }
        assert_eq!(item["get"]["parameters"][0]["in"], "path");
        assert_eq!(item["get"]["parameters"][0]["name"], "id");

        for (path, method, op) in &ops {
            for (code, response) in op["responses"].as_object().expect("responses") {
                if code.starts_with('4') || code.starts_with('5') {
                    assert_eq!(
                        response["content"][JSON]["schema"]["$ref"], "#/components/schemas/Error",
                        "{method} {path} {code}"
                    );
                }
            }
        }
        let error = schema(&doc, "Error");
        assert_eq!(error["required"], json!(["error"]));
        assert_eq!(error["properties"]["error"]["required"], json!(["message"]));
        assert_eq!(
            error["properties"]["error"]["properties"]["issues"]["items"]["$ref"],
            "#/components/schemas/Issue"
        );
        assert_eq!(
            schema(&doc, "Issue")["required"],
            json!(["path", "message"])
        );

        assert!(assert_refs_resolve(&doc) > 20);
    }

    /// The schemas accept and refuse what the server's own validation does.
    #[test]
    fn schemas_agree_with_row_validation() {
        let blog = blog();
        let table = &blog.tables[0];
        let doc = doc(&[&blog]);
        let rows = validator(&doc, "blog.posts");
        let good = json!({
            "id": "p1", "title": "Hello", "views": 3, "score": null, "status": "draft",
            "labels": ["rust"], "published": true, "when": DATE_EXAMPLE,
            "meta": { "author": "Ann", "words": 10 }
        });
        let object = |v: &Value| v.as_object().expect("an object").clone();
        assert!(validate_row(table, &object(&good)).is_empty());
        assert!(
            rows.is_valid(&good),
            "{:?}",
            rows.iter_errors(&good).collect::<Vec<_>>()
        );
        let bad = [
            ("id", json!("a:b")),
            ("title", json!(null)),
            ("views", json!(1.5)),
            ("views", json!(1e300)),
            ("score", json!("high")),
            ("status", json!("gone")),
            ("labels", json!(["go"])),
            ("published", json!(1)),
            ("when", json!("2024-01-01")),
            ("meta", json!({ "author": "" })),
            ("meta", json!(null)),
        ];
        for (field, value) in bad {
            let mut row = good.clone();
            row[field] = value.clone();
            assert!(
                !validate_row(table, &object(&row)).is_empty(),
                "{field}: {value}"
            );
            assert!(!rows.is_valid(&row), "the schema accepts {field}: {value}");
        }

        let input = validator(&doc, "blog.posts.input");
        let minimal = json!({
            "id": "p2", "title": "t", "status": "published", "labels": [], "meta": { "author": "A" }
        });
        assert!(input.is_valid(&minimal));
        let mut unknown = minimal.clone();
        unknown["nope"] = json!(1);
        assert!(!input.is_valid(&unknown));
        assert!(!input.is_valid(&json!({ "id": "p3" })));

        let patch = validator(&doc, "blog.posts.patch");
        assert!(patch.is_valid(&json!({})));
        assert!(patch.is_valid(&json!({ "score": null, "views": 4 })));
        assert!(!patch.is_valid(&json!({ "nope": 1 })));
        assert!(!patch.is_valid(&json!({ "title": null })));
    }

    /// An independent OpenAPI 3.1 reader parses the document and resolves every reference an
    /// operation makes, down to the row schemas' properties.
    #[test]
    fn an_openapi_3_1_reader_parses_and_resolves_it() {
        let (blog, auth) = (blog(), auth());
        let info = DocInfo {
            title: "Test API".into(),
            version: "1".into(),
            description: None,
        };
        let text = openapi_document(&[&blog, &auth], info)
            .to_json()
            .expect("the document serializes");
        let spec = oas3::from_json(&text).expect("oas3 parses the document");
        assert_eq!(spec.validate_version().expect("a 3.1.x version").minor, 1);
        let mut count = 0;
        for (path, method, op) in spec.operations() {
            count += 1;
            let declared = op.responses.as_ref().map_or(0, |r| r.len());
            let responses = op.responses(&spec);
            assert_eq!(
                responses.len(),
                declared,
                "{method} {path}: a response is unresolvable"
            );
            for (code, response) in &responses {
                for media in response.content.values() {
                    if let Err(e) = media.schema(&spec) {
                        panic!("{method} {path} {code}: {e}");
                    }
                }
            }
            let body = op.request_body(&spec).expect("the request body resolves");
            for media in body.iter().flat_map(|b| b.content.values()) {
                let schema = media.schema(&spec).expect("the body schema resolves");
                assert!(schema.is_some(), "{method} {path}: a body without a schema");
            }
        }
        assert_eq!(count, 3 + 2 * (6 + 1));
        let components = spec.components.as_ref().expect("components");
        for name in [
            "blog.posts",
            "blog.posts.input",
            "blog.posts.patch",
            "auth.users",
        ] {
            let schema = components.schemas.get(name).expect(name);
            let Ok(oas3::spec::Schema::Object(object)) = schema.resolve(&spec) else {
                panic!("`{name}` is not an object schema");
            };
            let oas3::spec::ObjectOrReference::Object(object) = object.as_ref() else {
                panic!("`{name}` resolved to a reference");
            };
            assert!(!object.properties.is_empty(), "`{name}` has no properties");
            for (field, property) in &object.properties {
                if let Err(e) = property.resolve(&spec) {
                    panic!("{name}.{field}: {e}");
                }
            }
        }
    }

    #[test]
    fn a_table_added_to_the_definition_is_documented() {
        let mut blog = blog();
        let before = doc(&[&blog]);
        assert!(before["paths"]["/workspaces/blog/tables/comments"].is_null());
        blog.tables.push(TableDefinition {
            name: "comments".into(),
            fields: vec![
                Field {
                    name: "id".into(),
                    spec: id(),
                },
                Field {
                    name: "body".into(),
                    spec: text(),
                },
            ],
        });
        blog.check().expect("still a valid definition");
        let after = doc(&[&blog]);
        let collection = &after["paths"]["/workspaces/blog/tables/comments"];
        let item = &after["paths"]["/workspaces/blog/tables/comments/{id}"];
        assert_eq!(collection["get"]["operationId"], "blog_comments_list");
        assert!(collection["post"].is_object());
        for method in ["get", "put", "patch", "delete"] {
            assert!(item[method].is_object(), "{method}");
        }
        let comments = schema(&after, "blog.comments");
        assert_eq!(comments["properties"]["body"]["type"], "string");
        assert_eq!(comments["required"], json!(["id", "body"]));
        assert_eq!(operations(&after).len(), operations(&before).len() + 6);
        assert_refs_resolve(&after);
    }

    #[test]
    fn no_workspaces_still_gives_a_document() {
        let doc = doc(&[]);
        assert_eq!(doc["openapi"], "3.1.0");
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(paths, ["/", "/openapi", "/openapi/json"]);
        assert_eq!(
            doc["tags"],
            json!([{ "name": "meta", "description": "Discovery and API documentation." }])
        );
        let schemas: Vec<&str> = doc["components"]["schemas"]
            .as_object()
            .expect("schemas")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(schemas, ["Error", "Issue"]);
        assert!(assert_refs_resolve(&doc) > 0);
    }

    /// Names that sanitise alike still get their own schemas and ids, and odd names give
    /// one literal, percent-encoded path segment.
    #[test]
    fn awkward_names_stay_distinct() {
        let def = |ws: &str, table: &str| {
            WorkspaceDefinition::builder(ws)
                .table(table, [("id", id()), ("n", integer())])
                .build()
                .expect("a valid definition")
        };
        let (first, second, odd) = (def("a.b", "c"), def("a", "b.c"), def("my app", "to do/{x}"));
        let doc = doc(&[&first, &second, &odd]);
        let post_body = |path: &str| {
            doc["paths"][path]["post"]["requestBody"]["content"][JSON]["schema"]["$ref"].clone()
        };
        assert_eq!(
            post_body("/workspaces/a.b/tables/c"),
            "#/components/schemas/a.b.c.input"
        );
        assert_eq!(
            post_body("/workspaces/a/tables/b.c"),
            "#/components/schemas/a.b.c.input-2"
        );
        schema(&doc, "a.b.c-2");
        let ids: Vec<String> = operations(&doc)
            .iter()
            .map(|(_, _, op)| op["operationId"].as_str().expect("an id").to_string())
            .collect();
        assert_eq!(
            ids.iter().collect::<HashSet<_>>().len(),
            ids.len(),
            "{ids:?}"
        );
        let odd_path = "/workspaces/my%20app/tables/to%20do%2F%7Bx%7D";
        assert!(doc["paths"][odd_path]["get"].is_object());
        assert!(doc["paths"][format!("{odd_path}/{{id}}")]["delete"].is_object());
        assert_eq!(
            schema(&doc, "my_app.to_do__x_")["properties"]["n"]["type"],
            "integer"
        );
        assert_refs_resolve(&doc);
    }
}
