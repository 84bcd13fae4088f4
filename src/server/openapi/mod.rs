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

mod schemas;
use schemas::*;
pub(crate) use schemas::{
    component_part, document_auth, envelope, error, json_body, json_response, operation_part,
    path_segment,
};

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

#[cfg(test)]
mod tests;
