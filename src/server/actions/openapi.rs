//! Actions in the OpenAPI document: one operation per action, its input as query
//! parameters (a query) or the request body (a mutation), its output in the success
//! envelope, tagged by its first path segment and its kind, with its description.
//!
//! The schemas come from the handler's types (`ToSchema`). The types they name are
//! components under their own names, shared between actions; a name already holding
//! another schema (two types called `Post`, or a type called `Error`) is refused, since
//! one of them would be documented wrongly. Each action's input (for a mutation) and
//! output are components `<ws>.actions.<path, dotted>.{input,output}`.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;
use utoipa::openapi::path::{Operation, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{HttpMethod, OpenApi, PathItem, Ref, RefOr, Required, Schema};

use super::mount::Mounted;
use super::ActionKind;
use crate::server::openapi::{
    component_part, envelope, error, json_body, json_response, operation_part, path_segment,
    BAD_JSON, NOT_JSON, TOO_LARGE,
};
use crate::server::ServerError;

const INVALID: &str = "The input does not match the action's schema; `issues` lists every \
    problem.";
const OTHER: &str = "Any other error the action answers with, in the error envelope.";

/// Adds `mounted`, actions of workspace `ws`, to `doc`. On an error `doc` may be half
/// done: work on a copy.
pub(crate) fn document(
    doc: &mut OpenApi,
    ws: &str,
    mounted: &[Arc<Mounted>],
) -> Result<(), ServerError> {
    let mut operation_ids = operation_ids(doc);
    let components = doc.components.get_or_insert_with(Default::default);
    for m in mounted {
        let action = &m.action;
        for (name, schema) in action
            .input
            .components
            .iter()
            .chain(&action.output.components)
        {
            match components.schemas.get(name) {
                Some(existing) if existing != schema => {
                    return Err(ServerError::Action {
                        workspace: ws.to_string(),
                        path: m.path.clone(),
                        reason: format!(
                            "its type `{name}` has another schema than the one of that name \
                             already in the document; rename one (`#[schema(as = ...)]`)"
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    components.schemas.insert(name.clone(), schema.clone());
                }
            }
        }
    }
    for m in mounted {
        let base = format!(
            "{}.actions.{}",
            component_part(ws),
            m.path.replace('/', ".")
        );
        let schemas = &mut doc.components.get_or_insert_with(Default::default).schemas;
        let output = claim(schemas.keys(), format!("{base}.output"));
        schemas.insert(output.clone(), m.action.output.root.clone());
        let input = (m.action.kind == ActionKind::Mutation).then(|| {
            let name = claim(schemas.keys(), format!("{base}.input"));
            schemas.insert(name.clone(), m.action.input.root.clone());
            name
        });
        let wanted_id = format!("{}_{}", operation_part(ws), operation_part(&m.path));
        let id = claim(operation_ids.iter(), wanted_id);
        operation_ids.insert(id.clone());
        let operation = operation(m, id, &output, input.as_deref());
        let path = format!("/workspaces/{}/actions/{}", path_segment(ws), m.path);
        let method = match m.action.kind {
            ActionKind::Query => HttpMethod::Get,
            ActionKind::Mutation => HttpMethod::Post,
        };
        doc.paths
            .paths
            .insert(path, PathItem::new(method, operation));
    }
    add_tags(doc, mounted);
    Ok(())
}

fn operation(m: &Mounted, id: String, output: &str, input: Option<&str>) -> Operation {
    let action = &m.action;
    let first = m.path.split('/').next().unwrap_or_default();
    let mut op = OperationBuilder::new()
        .tag(first)
        .tag(action.kind.name())
        .operation_id(Some(id))
        .summary(Some(m.path.clone()))
        .description(Some(action.description.clone()))
        .response(
            "200",
            json_response(
                "The action's output.",
                envelope(Ref::from_schema_name(output)),
            ),
        );
    match input {
        Some(input) => {
            op = op
                .request_body(Some(json_body(input, "The action's input.")))
                .response("400", error(BAD_JSON))
                .response("413", error(TOO_LARGE))
                .response("415", error(NOT_JSON));
        }
        None => {
            for (name, schema, required) in m.input.fields() {
                let description = schema
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let schema: RefOr<Schema> = serde_json::from_value(schema.clone())
                    .unwrap_or_else(|_| Schema::default().into());
                op = op.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Query)
                        .required(if required {
                            Required::True
                        } else {
                            Required::False
                        })
                        .description(description)
                        .schema(Some(schema)),
                );
            }
        }
    }
    op.response("422", error(INVALID))
        .response("default", error(OTHER))
        .build()
}

/// Tags for the first path segments and the kinds, after the ones already there.
fn add_tags(doc: &mut OpenApi, mounted: &[Arc<Mounted>]) {
    let tags = doc.tags.get_or_insert_with(Vec::new);
    let mut wanted: Vec<(String, String)> = Vec::new();
    for m in mounted {
        let first = m.path.split('/').next().unwrap_or_default();
        wanted.push((first.to_string(), format!("Actions under `{first}`.")));
    }
    for kind in [ActionKind::Query, ActionKind::Mutation] {
        if mounted.iter().any(|m| m.action.kind == kind) {
            let description = match kind {
                ActionKind::Query => "Actions that read: `GET`, the input from the query string.",
                ActionKind::Mutation => {
                    "Actions that write: `POST`, the input as the JSON body; answered once \
                     what they wrote is durable."
                }
            };
            wanted.push((kind.name().to_string(), description.to_string()));
        }
    }
    for (name, description) in wanted {
        if !tags.iter().any(|tag| tag.name == name) {
            tags.push(
                TagBuilder::new()
                    .name(name)
                    .description(Some(description))
                    .build(),
            );
        }
    }
}

/// `wanted`, or `wanted-2`, `wanted-3`, ... if it is taken.
fn claim<'a>(taken: impl Iterator<Item = &'a String>, wanted: String) -> String {
    let taken: HashSet<&String> = taken.collect();
    if !taken.contains(&wanted) {
        return wanted;
    }
    (2..)
        .map(|n| format!("{wanted}-{n}"))
        .find(|candidate| !taken.contains(candidate))
        .unwrap_or(wanted)
}

fn operation_ids(doc: &OpenApi) -> HashSet<String> {
    let mut ids = HashSet::new();
    for item in doc.paths.paths.values() {
        let operations = [
            &item.get,
            &item.put,
            &item.post,
            &item.delete,
            &item.options,
            &item.head,
            &item.patch,
            &item.trace,
        ];
        for op in operations.into_iter().flatten() {
            if let Some(id) = &op.operation_id {
                ids.insert(id.clone());
            }
        }
    }
    ids
}
