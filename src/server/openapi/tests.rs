//! Unit tests of the OpenAPI document.

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
    meta["properties"]["author"]["$ref"] = json!("#/components/schemas/blog.posts.meta/$defs/name");
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
