//! The pieces the document is built from: schemas of fields, errors and envelopes,
//! parameters, responses, and the names of components and operations.

use super::*;

/// A field value's schema. `json_component` names the component holding a `json` field's
/// own JSON Schema, when it has one.
pub(super) fn field_schema(
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
pub(super) fn json_field_schema(
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

pub(super) fn non_null() -> SchemaType {
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

pub(super) fn excludes_null(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(ty)) => ty != "null",
        Some(Value::Array(types)) => !types.iter().any(|ty| ty == "null"),
        _ => false,
    }
}

pub(super) fn id_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .pattern(Some("^[^:]+$"))
        .description(Some("The row id: a non-empty string without `:`."))
}

/// A user's JSON Schema as the component `name`, keyword for keyword.
pub(super) fn user_schema(schema: &Value, name: &str) -> Schema {
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
pub(super) fn rebase_refs(value: &mut Value, base: &str) {
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

pub(super) fn error_schema() -> ObjectBuilder {
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
                    super::super::MAX_ISSUES,
                    super::super::MAX_ISSUE_TEXT
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

pub(super) fn issue_schema() -> ObjectBuilder {
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

pub(super) fn page_parameter(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
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

pub(super) fn id_parameter(table: &TableDefinition) -> utoipa::openapi::path::Parameter {
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
