//! Reading and checking inputs against hand-written schemas: issue paths below the top
//! level, query values read through `$ref`s and combinators, serde's paths.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::input::{deserialize, InputSchema};

fn schema() -> InputSchema {
    let components: Map<String, Value> = json!({
        "Person": {
            "type": "object",
            "properties": {
                "name": { "type": "string", "minLength": 1 },
                "age": { "type": "integer", "minimum": 0 }
            },
            "required": ["name"]
        },
        "Color": { "type": "string", "enum": ["red", "blue"] }
    })
    .as_object()
    .cloned()
    .unwrap();
    let root = json!({
        "type": "object",
        "properties": {
            "author": { "$ref": "#/components/schemas/Person" },
            "tags": { "type": "array", "items": { "type": "string" } },
            "sizes": { "type": "array", "items": { "type": "integer" } },
            "color": { "oneOf": [{ "type": "null" }, { "$ref": "#/components/schemas/Color" }] },
            "limit": { "type": ["integer", "null"] },
            "ratio": { "type": "number" },
            "on": { "type": "boolean" }
        },
        "required": ["author"],
        "additionalProperties": false
    });
    InputSchema::new(root, components).expect("a valid schema")
}

fn issues(schema: &InputSchema, value: &Value) -> Vec<(String, String)> {
    let Err(error) = schema.check(value) else {
        return Vec::new();
    };
    assert_eq!(error.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
    let mut issues: Vec<(String, String)> = error.details["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["path"].as_str().unwrap().to_string(),
                i["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    issues.sort();
    issues
}

#[test]
fn every_issue_is_listed_with_its_path_below_the_top() {
    let schema = schema();
    let found = issues(
        &schema,
        &json!({ "author": { "age": -1 }, "tags": ["a", 1], "color": "green", "x": 0 }),
    );
    let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["author/age", "author/name", "color", "tags/1", "x"]);
    assert_eq!(found[1].1, "is required");
    assert_eq!(found[4].1, "is not a field of this input");
    assert!(issues(&schema, &json!({ "author": { "name": "A" } })).is_empty());
    let whole = issues(&schema, &json!(7));
    assert_eq!(whole.len(), 1, "{whole:?}");
    assert_eq!(whole[0].0, "");
}

#[test]
fn query_values_are_read_as_their_fields_types() {
    let schema = schema();
    let read = |query: &str| schema.read_query(Some(query)).unwrap();
    assert_eq!(
        read("limit=5&ratio=0.5&on=true&color=red&tags=a&tags=b&sizes=1&sizes=x"),
        json!({
            "limit": 5, "ratio": 0.5, "on": true, "color": "red",
            "tags": ["a", "b"], "sizes": [1, "x"]
        })
    );
    // Nullable: empty or `null` is null. Not of its type: left a string for the check.
    assert_eq!(read("limit="), json!({ "limit": null }));
    assert_eq!(read("limit=null"), json!({ "limit": null }));
    assert_eq!(
        read("limit=1.5&on=yes&ratio=NaN"),
        json!({ "limit": "1.5", "on": "yes", "ratio": "NaN" })
    );
    // A repeated single value stays a list (refused); unknown names stay strings; a
    // percent-encoded value is decoded; `token` is never read.
    assert_eq!(
        read("ratio=1&ratio=2&who=me&tags=a%20b&token=t"),
        json!({ "ratio": [1, 2], "who": "me", "tags": ["a b"] })
    );
    assert_eq!(schema.read_query(None).unwrap(), json!({}));
}

#[test]
fn only_structs_of_scalars_can_be_query_inputs() {
    assert_eq!(
        schema().query_problem().as_deref(),
        Some(
            "field `author` of a query's input is neither a scalar nor a list of scalars, so a \
             query string cannot carry it"
        )
    );
    let fine = InputSchema::new(
        json!({ "type": "object", "properties": { "q": { "type": "string" } } }),
        Map::new(),
    )
    .unwrap();
    assert_eq!(fine.query_problem(), None);
    assert_eq!(fine.fields()[0].0, "q");
    assert!(!fine.fields()[0].2, "not required");
}

#[test]
fn serde_refusals_name_where() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        people: Vec<Inner>,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        age: u8,
    }
    let error = deserialize::<Outer>(json!({ "people": [{ "age": 1 }, { "age": 300 }] }))
        .expect_err("300 is no u8");
    assert_eq!(error.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
    let issue = &error.details["issues"][0];
    assert_eq!(issue["path"], "people/1/age");
    assert!(
        issue["message"].as_str().unwrap().contains("300"),
        "{issue}"
    );
}
