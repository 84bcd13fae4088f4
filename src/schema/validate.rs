//! Validation of values and rows against field definitions.
//!
//! Every problem is reported, not just the first, each with the path of the value it is
//! about (`title`, `tags[2]`, `meta/author` inside a JSON field) so REST can list them all.

use serde::Serialize;
use serde_json::{Map, Value};

use super::definition::{FieldSpec, FieldType, TableDefinition};

/// One validation problem: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// The field name, with an index (`tags[1]`) or JSON pointer (`meta/author`) below it;
    /// for a server action's input, a JSON pointer without its leading `/` (`author/name`,
    /// `tags/1`; empty for the whole input).
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

impl Issue {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Issue {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A row: field name → JSON value.
pub type Row = Map<String, Value>;

pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks one value against a field spec (the path of a returned issue is relative).
pub(crate) fn check_value(spec: &FieldSpec, value: &Value) -> Result<(), Issue> {
    let mut issues = Vec::new();
    check_into(spec, "", value, &mut issues);
    match issues.into_iter().next() {
        Some(issue) => Err(issue),
        None => Ok(()),
    }
}

/// Checks `value` for the field at `path`, pushing every problem found.
pub fn check_field(spec: &FieldSpec, path: &str, value: &Value, issues: &mut Vec<Issue>) {
    check_into(spec, path, value, issues)
}

fn expected(path: &str, what: &str, value: &Value) -> Issue {
    Issue::new(path, format!("expected {what}, got {}", kind_of(value)))
}

fn check_into(spec: &FieldSpec, path: &str, value: &Value, issues: &mut Vec<Issue>) {
    if value.is_null() {
        if !spec.nullable {
            issues.push(Issue::new(path, "must not be null"));
        }
        return;
    }
    match &spec.kind {
        FieldType::Id => match value.as_str() {
            None => issues.push(expected(path, "a string id", value)),
            Some("") => issues.push(Issue::new(path, "an id must not be empty")),
            Some(s) if s.contains(':') => {
                issues.push(Issue::new(path, "an id must not contain `:`"))
            }
            Some(_) => {}
        },
        FieldType::Text => {
            if !value.is_string() {
                issues.push(expected(path, "a string", value));
            }
        }
        FieldType::Integer => match value.as_f64() {
            Some(n) if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_991.0 => {}
            Some(_) => issues.push(Issue::new(
                path,
                "expected an integer (within ±2^53), got a fraction or a larger number",
            )),
            None => issues.push(expected(path, "an integer", value)),
        },
        FieldType::Real => match value.as_f64() {
            Some(n) if n.is_finite() => {}
            _ => issues.push(expected(path, "a number", value)),
        },
        FieldType::Boolean => {
            if !value.is_boolean() {
                issues.push(expected(path, "a boolean", value));
            }
        }
        FieldType::Date => match value.as_str() {
            None => issues.push(expected(path, "a date string", value)),
            Some(s) => {
                if let Err(message) = check_date(s) {
                    issues.push(Issue::new(path, message));
                }
            }
        },
        FieldType::Select { options } => match value.as_str() {
            None => issues.push(expected(path, "a string", value)),
            Some(s) if !options.iter().any(|o| o == s) => issues.push(Issue::new(
                path,
                format!("`{s}` is not one of: {}", options.join(", ")),
            )),
            Some(_) => {}
        },
        FieldType::Tags { options } => match value.as_array() {
            None => issues.push(expected(path, "an array of strings", value)),
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let ipath = format!("{path}[{i}]");
                    match item.as_str() {
                        None => issues.push(expected(&ipath, "a string", item)),
                        Some(s) => {
                            if let Some(options) = options {
                                if !options.iter().any(|o| o == s) {
                                    issues.push(Issue::new(
                                        ipath,
                                        format!("`{s}` is not one of: {}", options.join(", ")),
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        },
        FieldType::Json { schema } => {
            if let Some(schema) = schema {
                match compiled(schema) {
                    Ok(validator) => {
                        for error in validator.iter_errors(value) {
                            let pointer = error.instance_path().to_string();
                            issues.push(Issue::new(format!("{path}{pointer}"), error.to_string()));
                        }
                    }
                    Err(e) => issues.push(Issue::new(path, format!("invalid JSON Schema: {e}"))),
                }
            }
        }
    }
}

/// The compiled validator of a JSON Schema. Compiling is far costlier than validating,
/// and a field's schema never changes, so each distinct schema is compiled once (schemas
/// come from definitions, so there are few).
fn compiled(schema: &Value) -> Result<std::sync::Arc<jsonschema::Validator>, String> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Cache = Mutex<HashMap<String, Arc<jsonschema::Validator>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = schema.to_string();
    let cache = CACHE.get_or_init(Cache::default);
    if let Some(v) = crate::lock::lock(cache).get(&key) {
        return Ok(v.clone());
    }
    let validator = Arc::new(jsonschema::validator_for(schema).map_err(|e| e.to_string())?);
    crate::lock::lock(cache).insert(key, validator.clone());
    Ok(validator)
}

/// Checks `"<ISO-8601 UTC>|<IANA tz>"`.
fn check_date(s: &str) -> Result<(), String> {
    let (instant, zone) = s.split_once('|').ok_or_else(|| {
        "expected `<ISO-8601 UTC>|<IANA time zone>`, e.g. `2024-01-01T00:00:00.000Z|America/New_York`"
            .to_string()
    })?;
    if !instant.ends_with('Z') {
        return Err(format!("`{instant}` must be a UTC instant ending in `Z`"));
    }
    chrono::DateTime::parse_from_rfc3339(instant)
        .map_err(|e| format!("`{instant}` is not an ISO-8601 instant: {e}"))?;
    zone.parse::<chrono_tz::Tz>()
        .map_err(|_| format!("`{zone}` is not an IANA time zone"))?;
    Ok(())
}

/// Whether `row` holds exactly the table's fields, in declaration order (how rows are
/// usually built): then each field's value is found by position, not by hashing its name.
fn in_field_order(table: &TableDefinition, row: &Row) -> bool {
    row.len() == table.fields.len()
        && row
            .keys()
            .zip(&table.fields)
            .all(|(key, field)| *key == field.name)
}

/// Fills defaults and nulls into a row about to be written whole. Returns the complete row.
pub(crate) fn complete_row(table: &TableDefinition, row: Row) -> Row {
    if in_field_order(table, &row) {
        return row; // every field is there
    }
    let mut out = row;
    for field in &table.fields {
        if !out.contains_key(&field.name) {
            if let Some(default) = &field.spec.default {
                out.insert(field.name.clone(), default.clone());
            } else if field.spec.nullable {
                out.insert(field.name.clone(), Value::Null);
            }
        }
    }
    out
}

/// Validates a whole row: every field present and valid, no unknown fields.
pub fn validate_row(table: &TableDefinition, row: &Row) -> Vec<Issue> {
    let mut issues = Vec::new();
    if in_field_order(table, row) {
        // The same checks in the same order, without looking each field up by name.
        for (field, value) in table.fields.iter().zip(row.values()) {
            check_into(&field.spec, &field.name, value, &mut issues);
        }
        return issues;
    }
    for field in &table.fields {
        match row.get(&field.name) {
            Some(value) => check_into(&field.spec, &field.name, value, &mut issues),
            None if field.spec.nullable => {}
            None => issues.push(Issue::new(&field.name, "is required")),
        }
    }
    for key in row.keys() {
        if table.field(key).is_none() {
            issues.push(Issue::new(key, "is not a field of this table"));
        }
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::definition::*;
    use serde_json::json;

    fn ok(spec: FieldSpec, v: Value) {
        assert_eq!(check_value(&spec, &v), Ok(()), "{v} should pass");
    }
    fn bad(spec: FieldSpec, v: Value) -> String {
        check_value(&spec, &v)
            .expect_err(&format!("{v} should fail"))
            .message
    }

    #[test]
    fn id_values() {
        ok(id(), json!("a1"));
        assert!(bad(id(), json!("a:b")).contains(':'));
        assert!(bad(id(), json!("")).contains("empty"));
        assert!(bad(id(), json!(1)).contains("string"));
        assert!(bad(id(), Value::Null).contains("null"));
    }

    #[test]
    fn text_values() {
        ok(text(), json!("x"));
        ok(text().nullable(), Value::Null);
        assert!(bad(text(), json!(3)).contains("got a number"));
        assert!(bad(text(), Value::Null).contains("null"));
    }

    #[test]
    fn integer_values() {
        ok(integer(), json!(3));
        ok(integer(), json!(3.0));
        ok(integer(), json!(-9_007_199_254_740_991_i64));
        assert!(bad(integer(), json!(3.5)).contains("integer"));
        assert!(bad(integer(), json!(1e300)).contains("integer"));
        assert!(bad(integer(), json!("3")).contains("got a string"));
    }

    #[test]
    fn real_values() {
        ok(real(), json!(3.25));
        ok(real(), json!(-1));
        assert!(bad(real(), json!(true)).contains("number"));
    }

    #[test]
    fn boolean_values() {
        ok(boolean(), json!(false));
        assert!(bad(boolean(), json!(0)).contains("boolean"));
    }

    #[test]
    fn date_values() {
        ok(date(), json!("2024-01-01T00:00:00.000Z|America/New_York"));
        ok(date(), json!("2024-02-29T23:59:59Z|UTC"));
        assert!(bad(date(), json!("2024-01-01T00:00:00.000Z")).contains("IANA"));
        assert!(bad(date(), json!("2024-01-01T00:00:00+02:00|UTC")).contains("UTC"));
        assert!(bad(date(), json!("2024-13-01T00:00:00Z|UTC")).contains("ISO-8601"));
        assert!(bad(date(), json!("2024-01-01T00:00:00Z|Mars/Olympus")).contains("time zone"));
        assert!(bad(date(), json!(5)).contains("date string"));
    }

    #[test]
    fn select_values() {
        ok(select(["a", "b"]), json!("b"));
        assert!(bad(select(["a", "b"]), json!("c")).contains("not one of: a, b"));
        assert!(bad(select(["a"]), json!(["a"])).contains("string"));
    }

    #[test]
    fn tags_values() {
        ok(tags(), json!([]));
        ok(tags(), json!(["x", "y"]));
        ok(tags_of(["x", "y"]), json!(["y"]));
        let mut issues = Vec::new();
        check_field(&tags_of(["x"]), "t", &json!(["x", "z", 1]), &mut issues);
        assert_eq!(issues.len(), 2);
        assert_eq!(issues[0].path, "t[1]");
        assert_eq!(issues[1].path, "t[2]");
        assert!(bad(tags(), json!("x")).contains("array"));
    }

    #[test]
    fn json_values() {
        ok(json(), json!({"any": [1, "thing"]}));
        ok(json(), json!(7));
        let schema =
            json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
        ok(json_with_schema(schema.clone()), json!({"n": 1}));
        let mut issues = Vec::new();
        check_field(
            &json_with_schema(schema),
            "meta",
            &json!({"n": "x"}),
            &mut issues,
        );
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "meta/n");
    }

    /// A workspace `w` with a table `posts` of four fields, one of them nullable.
    fn posts() -> WorkspaceDefinition {
        WorkspaceDefinition::builder("w")
            .table(
                "posts",
                [
                    ("id", id()),
                    ("title", text()),
                    ("views", integer()),
                    ("note", text().nullable()),
                ],
            )
            .build()
            .unwrap()
    }

    #[test]
    fn rows_report_every_problem() {
        let def = posts();
        let table = def.table("posts").unwrap();
        let row = json!({"id": "p:1", "views": 1.5, "extra": true});
        let issues = validate_row(table, row.as_object().unwrap());
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["id", "title", "views", "extra"]);
    }

    /// A row listing exactly the fields in declaration order is checked by position: the
    /// same issues, in the same order, as the same row in any other order.
    #[test]
    fn field_order_does_not_change_the_issues() {
        let def = posts();
        let table = def.table("posts").unwrap();
        let ordered = json!({"id": "p:1", "title": 5, "views": 1.5, "note": null});
        let shuffled = json!({"note": null, "views": 1.5, "title": 5, "id": "p:1"});
        let a = validate_row(table, ordered.as_object().unwrap());
        let b = validate_row(table, shuffled.as_object().unwrap());
        assert_eq!(a, b);
        let paths: Vec<_> = a.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["id", "title", "views"]);
        // Same length, one name different: not taken for the declared fields.
        let renamed = json!({"id": "1", "title": "t", "views": 1, "notes": "x"});
        let paths: Vec<_> = validate_row(table, renamed.as_object().unwrap())
            .into_iter()
            .map(|i| i.path)
            .collect();
        assert_eq!(paths, ["notes"]);
        let completed = complete_row(table, renamed.as_object().unwrap().clone());
        assert_eq!(completed.get("note"), Some(&Value::Null));
        let full = ordered.as_object().unwrap().clone();
        assert_eq!(complete_row(table, full.clone()), full);
    }
}
