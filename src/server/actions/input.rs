//! From a request to a handler's input: a query string is read into the input schema's
//! types, the value is checked against the schema with every problem listed, and only
//! then deserialized.
//!
//! serde stops at the first error, so it cannot list every problem; the JSON Schema that
//! `ToSchema` generates can. Deserializing still runs after it, and the rare value the
//! schema lets through but serde refuses (a `u8` of 300: the schema says only "an integer
//! of at least 0") is a 422 naming where, never a 500.

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::super::error::Issues;
use super::super::ApiError;
use crate::schema::Issue;

/// The query parameter that carries the auth token; never part of an input.
const TOKEN: &str = "token";
/// How deep `$ref`s and combinators are followed when reading a schema's types.
const MAX_DEPTH: usize = 16;
/// The longest value (as JSON, in bytes) an issue's message quotes; a longer one is called
/// "value" instead.
const MAX_QUOTE: usize = 64;
/// The message of a 422 for an input that does not match.
const INVALID: &str = "the input does not match the action's schema";

/// An action's input schema, ready to check values against.
pub(crate) struct InputSchema {
    root: Value,
    components: Map<String, Value>,
    validator: jsonschema::Validator,
}

impl InputSchema {
    /// Compiles the schema `root`, whose `$ref`s point at `components` by name.
    pub fn new(root: Value, components: Map<String, Value>) -> Result<Self, String> {
        let document = json!({
            "$ref": "#/$defs/input",
            "$defs": { "input": root.clone() },
            "components": { "schemas": components.clone() },
        });
        let validator = jsonschema::validator_for(&document)
            .map_err(|e| format!("its input schema is not a valid JSON Schema: {e}"))?;
        Ok(InputSchema {
            root,
            components,
            validator,
        })
    }

    /// Why a query string could not carry this input, if it cannot: it must be an object
    /// whose fields are scalars or lists of them, and `token` is taken by auth.
    pub fn query_problem(&self) -> Option<String> {
        let root = self.resolve(&self.root, 0);
        if !self.types(root, 0).contains(&"object") {
            return Some(
                "a query's input must be a struct: its fields are the query parameters".into(),
            );
        }
        for (name, schema) in self.properties(root, 0) {
            if name == TOKEN {
                return Some(format!(
                    "a query's input cannot have a `{TOKEN}` field: `?{TOKEN}=` is the auth token"
                ));
            }
            let types = self.types(schema, 0);
            let scalar = |types: &[&str]| types.is_empty() || types.iter().any(|t| is_scalar(t));
            let carried = scalar(&types)
                || (types.contains(&"array")
                    && self
                        .items(schema, 0)
                        .is_none_or(|items| scalar(&self.types(items, 0))));
            if !carried {
                return Some(format!(
                    "field `{name}` of a query's input is neither a scalar nor a list of \
                     scalars, so a query string cannot carry it"
                ));
            }
        }
        None
    }

    /// The input's top-level fields (a query's parameters): name, schema, and whether it
    /// is required.
    pub fn fields(&self) -> Vec<(&str, &Value, bool)> {
        let root = self.resolve(&self.root, 0);
        let required: Vec<&str> = self
            .branches(root, 0)
            .into_iter()
            .filter_map(|branch| branch.get("required").and_then(Value::as_array))
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        self.properties(root, 0)
            .into_iter()
            .map(|(name, schema)| (name, schema, required.contains(&name)))
            .collect()
    }

    /// The query string as the input's JSON: each parameter read as its field's type
    /// (`limit=5` a number where the field is an integer), repeated ones as a list. A value
    /// that does not read as its type stays a string, for the schema to report.
    pub fn read_query(&self, query: Option<&str>) -> Result<Value, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("malformed query string: {e}"),
                )
            })?;
        let mut grouped: Map<String, Value> = Map::new();
        for (name, value) in pairs {
            if name == TOKEN {
                continue;
            }
            match grouped
                .entry(name)
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(values) => values.push(Value::String(value)),
                _ => unreachable!("only arrays are inserted"),
            }
        }
        let root = self.resolve(&self.root, 0);
        let properties = self.properties(root, 0);
        let mut input = Map::new();
        for (name, values) in grouped {
            let Value::Array(values) = values else {
                continue;
            };
            let values: Vec<String> = values
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let schema = properties.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
            input.insert(name, self.read_values(values, schema));
        }
        Ok(Value::Object(input))
    }

    /// Whether `value` matches; quick, as it stops at the first problem.
    pub fn is_valid(&self, value: &Value) -> bool {
        self.validator.is_valid(value)
    }

    /// Every problem with `value`, or none. The 422 lists the first
    /// [`MAX_ISSUES`](crate::server::MAX_ISSUES) and counts the rest, so only those are
    /// put in words; still, every one is found, which takes long for a big input with a
    /// problem in every item (~0.2 s per MiB): call it off the async workers.
    pub fn check(&self, value: &Value) -> Result<(), ApiError> {
        use jsonschema::error::ValidationErrorKind as Kind;
        let mut issues = Issues::default();
        for error in self.validator.iter_errors(value) {
            if issues.is_full() {
                issues.skip(match error.kind() {
                    Kind::AdditionalProperties { unexpected } => unexpected.len(),
                    _ => 1,
                });
                continue;
            }
            let at = error.instance_path().to_string();
            let at = at.strip_prefix('/').unwrap_or(&at);
            let below = |name: &str| {
                if at.is_empty() {
                    name.to_string()
                } else {
                    format!("{at}/{name}")
                }
            };
            match error.kind() {
                Kind::Required { property } => {
                    let name = property
                        .as_str()
                        .map_or_else(|| property.to_string(), str::to_string);
                    issues.push(Issue::new(below(&name), "is required"));
                }
                Kind::AdditionalProperties { unexpected } => {
                    for name in unexpected {
                        if issues.is_full() {
                            issues.skip(1);
                        } else {
                            issues.push(Issue::new(below(name), "is not a field of this input"));
                        }
                    }
                }
                _ => issues.push(Issue::new(at, describe(&error))),
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues.into_error(INVALID))
        }
    }

    fn read_values(&self, values: Vec<String>, schema: Option<&Value>) -> Value {
        let Some(schema) = schema else {
            return match <[String; 1]>::try_from(values) {
                Ok([value]) => Value::String(value),
                Err(values) => values.into_iter().map(Value::String).collect(),
            };
        };
        let types = self.types(schema, 0);
        if types.contains(&"array") && !types.contains(&"string") {
            let item_types = self
                .items(schema, 0)
                .map(|items| self.types(items, 0))
                .unwrap_or_default();
            return values.iter().map(|v| read(v, &item_types)).collect();
        }
        match <[String; 1]>::try_from(values) {
            Ok([value]) => read(&value, &types),
            // Repeated where one is expected: kept as a list, which the schema refuses.
            Err(values) => values.iter().map(|v| read(v, &types)).collect(),
        }
    }

    /// Follows `$ref`s to the named components.
    fn resolve<'a>(&'a self, schema: &'a Value, depth: usize) -> &'a Value {
        let target = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
            .and_then(|name| self.components.get(name));
        match target {
            Some(target) if depth < MAX_DEPTH => self.resolve(target, depth + 1),
            _ => schema,
        }
    }

    /// The subschemas a value may match: the schema itself and its `oneOf`/`anyOf`/`allOf`
    /// members (an `Option<Enum>` is a `oneOf` of `null` and the enum), resolved.
    fn branches<'a>(&'a self, schema: &'a Value, depth: usize) -> Vec<&'a Value> {
        let schema = self.resolve(schema, depth);
        let mut out = vec![schema];
        if depth < MAX_DEPTH {
            for key in ["oneOf", "anyOf", "allOf"] {
                for member in schema
                    .get(key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.extend(self.branches(member, depth + 1));
                }
            }
        }
        out
    }

    /// The JSON types a schema allows (empty: anything).
    fn types<'a>(&'a self, schema: &'a Value, depth: usize) -> Vec<&'a str> {
        let mut types = Vec::new();
        for branch in self.branches(schema, depth) {
            match branch.get("type") {
                Some(Value::String(t)) => types.push(t.as_str()),
                Some(Value::Array(ts)) => types.extend(ts.iter().filter_map(Value::as_str)),
                _ => {}
            }
            if branch.get("properties").is_some() {
                types.push("object");
            }
        }
        types
    }

    /// The `items` schema of the first branch that has one.
    fn items<'a>(&'a self, schema: &'a Value, depth: usize) -> Option<&'a Value> {
        self.branches(schema, depth)
            .into_iter()
            .find_map(|branch| branch.get("items"))
    }

    /// The properties of an object schema, across `allOf` members (`#[serde(flatten)]`).
    fn properties<'a>(&'a self, schema: &'a Value, depth: usize) -> Vec<(&'a str, &'a Value)> {
        self.branches(schema, depth)
            .into_iter()
            .filter_map(|branch| branch.get("properties").and_then(Value::as_object))
            .flatten()
            .map(|(name, schema)| (name.as_str(), schema))
            .collect()
    }
}

fn is_scalar(json_type: &str) -> bool {
    matches!(
        json_type,
        "string" | "integer" | "number" | "boolean" | "null"
    )
}

/// What is wrong, quoting the value only when it is short: a message about a 1 MiB object
/// should not be 1 MiB, nor take the time to write one.
fn describe(error: &jsonschema::ValidationError<'_>) -> String {
    /// Takes at most its budget of bytes, then fails the write.
    struct Budget(usize);
    impl std::io::Write for Budget {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self
                .0
                .checked_sub(buf.len())
                .ok_or(std::io::ErrorKind::WriteZero)?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let short = serde_json::to_writer(Budget(MAX_QUOTE), error.instance().as_ref()).is_ok();
    if short {
        error.to_string()
    } else {
        error.masked().to_string()
    }
}

/// One query value read as the first of `types` it reads as; a string otherwise.
fn read(value: &str, types: &[&str]) -> Value {
    let allows = |t: &str| types.contains(&t);
    if types.is_empty() || allows("string") {
        return Value::String(value.to_string());
    }
    if allows("null") && (value.is_empty() || value == "null") {
        return Value::Null;
    }
    if allows("integer") || allows("number") {
        if let Ok(n) = value.parse::<i64>() {
            return n.into();
        }
        if let Ok(n) = value.parse::<u64>() {
            return n.into();
        }
    }
    if allows("number") {
        if let Some(n) = value
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return Value::Number(n);
        }
    }
    if allows("boolean") {
        match value {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    Value::String(value.to_string())
}

/// Deserializes a checked input; a refusal is a 422 naming where.
pub(crate) fn deserialize<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path: Vec<String> = error
            .path()
            .iter()
            .map(|segment| match segment {
                serde_path_to_error::Segment::Seq { index } => index.to_string(),
                serde_path_to_error::Segment::Map { key } => key.clone(),
                serde_path_to_error::Segment::Enum { variant } => variant.clone(),
                serde_path_to_error::Segment::Unknown => "?".into(),
            })
            .collect();
        let mut issues = Issues::default();
        issues.push(Issue::new(path.join("/"), error.inner().to_string()));
        issues.into_error(INVALID)
    })
}
