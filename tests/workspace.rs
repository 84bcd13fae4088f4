//! Table and KV handle semantics, definitions, and observers, on in-memory clients.

use std::sync::{Arc, Mutex};

use epicenter_server::workspace::*;
use epicenter_server::{DefinitionError, WorkspaceError};
use serde_json::{json, Value};

fn row(v: Value) -> Row {
    v.as_object().expect("row literal is an object").clone()
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
                ("published", boolean().default(false)),
                ("status", select(["draft", "live"]).default("draft")),
                ("labels", tags().default(json!([]))),
            ],
        )
        .table("authors", [("id", id()), ("name", text())])
        .kv("theme", select(["light", "dark"]).default("light"))
        .kv("motd", text().nullable())
        .build()
        .expect("valid definition")
}

async fn client() -> WorkspaceClient {
    blog().in_memory().create().await.expect("client")
}

#[tokio::test]
async fn upsert_fills_defaults_and_reads_back() {
    let c = client().await;
    let posts = c.table("posts").unwrap();
    posts
        .upsert(row(json!({"id": "p1", "title": "Hello"})))
        .unwrap();
    assert_eq!(
        posts.get("p1"),
        RowResult::Valid(row(json!({
            "id": "p1", "title": "Hello", "views": 0, "score": null,
            "published": false, "status": "draft", "labels": []
        })))
    );
    assert!(posts.has("p1"));
    assert_eq!(posts.count(), 1);
    assert_eq!(posts.get("nope"), RowResult::NotFound);
}

#[tokio::test]
async fn upsert_reports_every_issue_and_writes_nothing() {
    let c = client().await;
    let posts = c.table("posts").unwrap();
    let err = posts
        .upsert(row(
            json!({"id": "a:b", "views": 1.5, "status": "gone", "extra": 1}),
        ))
        .unwrap_err();
    let WorkspaceError::Invalid { issues } = err else {
        panic!("expected Invalid, got {err:?}")
    };
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["id", "title", "views", "status", "extra"]);
    assert_eq!(posts.count(), 0);
}

#[tokio::test]
async fn upsert_many_is_all_or_nothing() {
    let c = client().await;
    let posts = c.table("posts").unwrap();
    let err = posts
        .upsert_many([
            row(json!({"id": "a", "title": "A"})),
            row(json!({"id": "b"})),
        ])
        .unwrap_err();
    let WorkspaceError::Invalid { issues } = err else {
        panic!("expected Invalid")
    };
    assert_eq!(issues[0].path, "[1].title");
    assert_eq!(posts.count(), 0);
    let created = posts
        .upsert_many((0..100).map(|i| row(json!({"id": format!("r{i:03}"), "title": "t"}))))
        .unwrap();
    assert_eq!(created, 100);
    assert_eq!(posts.count(), 100);
    // Rewrites and a repeated id within one batch are not new rows.
    let created = posts
        .upsert_many([
            row(json!({"id": "r000", "title": "again"})),
            row(json!({"id": "new", "title": "n"})),
            row(json!({"id": "new", "title": "n2"})),
        ])
        .unwrap();
    assert_eq!(created, 1);
    posts.delete("new").unwrap();
    // Ordered by id.
    assert_eq!(posts.get_all_valid()[0]["id"], "r000");
    assert_eq!(posts.page_valid(98, 10).len(), 2);
}

#[tokio::test]
async fn update_merges_and_validates() {
    let c = client().await;
    let posts = c.table("posts").unwrap();
    assert!(matches!(
        posts.update("p1", row(json!({"title": "x"}))),
        Err(WorkspaceError::NotFound { .. })
    ));
    posts
        .upsert(row(json!({"id": "p1", "title": "Hello"})))
        .unwrap();
    let merged = posts.update("p1", row(json!({"views": 5}))).unwrap();
    assert_eq!(merged["title"], "Hello");
    assert_eq!(merged["views"], 5);
    assert!(matches!(
        posts.update("p1", row(json!({"views": "many"}))),
        Err(WorkspaceError::Invalid { .. })
    ));
    assert!(matches!(
        posts.update("p1", row(json!({"id": "other"}))),
        Err(WorkspaceError::Invalid { .. })
    ));
    let RowResult::Valid(now) = posts.get("p1") else {
        panic!("row should be valid")
    };
    assert_eq!(now["views"], 5);
}

#[tokio::test]
async fn overwrites_leave_one_entry_per_cell() {
    use yrs::{Array, Transact};
    let c = client().await;
    let authors = c.table("authors").unwrap();
    for i in 0..10 {
        authors
            .upsert(row(json!({"id": "a1", "name": format!("v{i}")})))
            .unwrap();
    }
    let array = c.doc().get_or_insert_array("table:authors");
    assert_eq!(array.len(&c.doc().transact()), 2, "one entry per cell");
    let RowResult::Valid(r) = authors.get("a1") else {
        panic!()
    };
    assert_eq!(r["name"], "v9");
    // The entries are plain maps with float64 ts.
    let txn = c.doc().transact();
    let first = array.get(&txn, 0).unwrap();
    let yrs::Out::Any(yrs::Any::Map(m)) = first else {
        panic!("entries must be plain maps, got {first:?}")
    };
    assert!(matches!(
        m["ts"],
        yrs::Any::Number(yrs::any::Number::Float(_))
    ));
}

#[tokio::test]
async fn delete_clear_and_delete_many() {
    let c = client().await;
    let authors = c.table("authors").unwrap();
    authors
        .upsert_many((0..5).map(|i| row(json!({"id": format!("a{i}"), "name": "n"}))))
        .unwrap();
    assert!(authors.delete("a0").unwrap());
    assert!(!authors.delete("a0").unwrap());
    assert_eq!(authors.delete_many(["a1", "a2", "zz"]).unwrap(), 2);
    assert_eq!(authors.count(), 2);
    authors.clear().unwrap();
    assert_eq!(authors.count(), 0);
    use yrs::{Array, Transact};
    let array = c.doc().get_or_insert_array("table:authors");
    assert_eq!(array.len(&c.doc().transact()), 0);
}

#[tokio::test]
async fn invalid_stored_rows_are_kept_and_reported() {
    // A peer with another schema writes a row this schema finds invalid.
    let other = WorkspaceDefinition::builder("blog")
        .table("authors", [("id", id()), ("name", integer())])
        .build()
        .unwrap()
        .in_memory()
        .create()
        .await
        .unwrap();
    other
        .table("authors")
        .unwrap()
        .upsert(row(json!({"id": "x", "name": 7})))
        .unwrap();
    use yrs::{ReadTxn, Transact};
    let update = other
        .doc()
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    let c = client().await;
    c.apply_update(&update, "peer").unwrap();
    let authors = c.table("authors").unwrap();
    assert!(authors.get_all_valid().is_empty());
    let invalid = authors.get_all_invalid();
    assert_eq!(invalid.len(), 1);
    let RowResult::Invalid {
        id,
        row: raw,
        issues,
    } = &invalid[0]
    else {
        panic!()
    };
    assert_eq!(id, "x");
    assert_eq!(raw["name"], 7);
    assert_eq!(issues[0].path, "name");
    assert_eq!(authors.count(), 1, "invalid rows stay stored");
    // Fixing it through update works.
    authors.update("x", row(json!({"name": "Seven"}))).unwrap();
    assert_eq!(authors.get_all_valid().len(), 1);
}

#[tokio::test]
async fn observe_reports_changed_row_ids_per_transaction() {
    let c = client().await;
    let authors = c.table("authors").unwrap();
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let s2 = seen.clone();
    let sub = authors.observe(move |ids| s2.lock().unwrap().push(ids.iter().cloned().collect()));
    authors
        .upsert_many([
            row(json!({"id": "a", "name": "A"})),
            row(json!({"id": "b", "name": "B"})),
        ])
        .unwrap();
    authors.delete("a").unwrap();
    drop(sub);
    authors
        .upsert(row(json!({"id": "c", "name": "C"})))
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![vec!["a", "b"], vec!["a"]]);
}

#[tokio::test]
async fn kv_get_set_delete_and_defaults() {
    let c = client().await;
    let kv = c.kv();
    assert_eq!(kv.get("theme").unwrap(), Some(json!("light")));
    assert_eq!(kv.get("motd").unwrap(), Some(Value::Null));
    kv.set("theme", json!("dark")).unwrap();
    kv.set("theme", json!("light")).unwrap();
    kv.set("theme", json!("dark")).unwrap();
    assert_eq!(kv.get("theme").unwrap(), Some(json!("dark")));
    assert!(matches!(
        kv.set("theme", json!("blue")),
        Err(WorkspaceError::Invalid { .. })
    ));
    assert!(matches!(kv.get("nope"), Err(WorkspaceError::UnknownKey(_))));
    assert!(kv.delete("theme").unwrap());
    assert_eq!(kv.get("theme").unwrap(), Some(json!("light")));
}

#[tokio::test]
async fn writes_after_destroy_fail_and_destroy_is_idempotent() {
    let c = client().await;
    c.destroy().await.unwrap();
    c.destroy().await.unwrap();
    assert!(c.is_destroyed());
    let err = c
        .table("authors")
        .unwrap()
        .upsert(row(json!({"id": "a", "name": "A"})))
        .unwrap_err();
    assert!(matches!(err, WorkspaceError::Destroyed));
}

#[test]
fn definition_errors_name_table_and_field() {
    let e = WorkspaceDefinition::builder("w")
        .table("posts", [("title", text())])
        .build()
        .unwrap_err();
    assert!(
        matches!(e, DefinitionError::Table { ref table, .. } if table == "posts"),
        "{e}"
    );
    let e = WorkspaceDefinition::builder("w")
        .table("posts", [("id", id()), ("n", integer().default("x"))])
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "table `posts`, field `n`: the default does not fit the field: expected an integer, got a string"
    );
    let e = WorkspaceDefinition::from_json(
        r#"{"id":"w","tables":{"posts":{"id":{"type":"id"},"when":{"type":"datetime"}}}}"#,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("table `posts`, field `when`: unknown type `datetime`"),
        "{e}"
    );
    let e = WorkspaceDefinition::from_json("{not json").unwrap_err();
    assert!(matches!(e, DefinitionError::Json(_)));
    let e = WorkspaceDefinition::from_json(
        r#"{"id":"w","tables":{"t":{"id":{"type":"id"},"s":{"type":"select","options":[]}}}}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("field `s`"), "{e}");
}

#[test]
fn definitions_round_trip_through_json() {
    let def = WorkspaceDefinition::builder("w")
        .table(
            "t",
            [
                ("id", id()),
                ("d", date().nullable()),
                ("s", select(["a", "b"]).default("a")),
                ("g", tags_of(["x"])),
                ("j", json_with_schema(json!({"type": "object"}))),
            ],
        )
        .kv("k", integer().default(3))
        .build()
        .unwrap();
    let back = WorkspaceDefinition::from_json(&def.to_json()).unwrap();
    assert_eq!(back, def);
}

#[tokio::test]
async fn json_values_are_accepted_and_non_objects_rejected() {
    let c = client().await;
    let authors = c.table("authors").unwrap();
    authors.upsert(json!({"id": "a", "name": "A"})).unwrap();
    let err = authors.upsert(json!(["not", "a", "row"])).unwrap_err();
    let WorkspaceError::Invalid { issues } = err else {
        panic!("expected Invalid")
    };
    assert_eq!(
        issues[0].message,
        "a row must be a JSON object, got an array"
    );
    assert_eq!(authors.count(), 1);
}

#[test]
fn the_sample_definition_file_is_valid() {
    let def = WorkspaceDefinition::from_json(include_str!("../examples/blog.json")).unwrap();
    let posts = def.table("posts").unwrap();
    assert_eq!(posts.fields.len(), 6);
    assert_eq!(
        def.kv_key("theme").unwrap().spec.default,
        Some(json!("light"))
    );
}
