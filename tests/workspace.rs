//! Table and KV handle semantics, definitions, and observers, on in-memory clients.

use std::sync::{Arc, Mutex};

use epicenter_server::storage::MemoryStorage;
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

/// The update a peer that treats `table:posts` as a Y.Text makes when it types `text` at
/// `index` (counted as the text counts: one per entry, one per byte of text) into the doc
/// of `client`: a string item among the entries.
fn text_typed_into_posts(client: &WorkspaceClient, index: u32, text: &str) -> Vec<u8> {
    use yrs::updates::decoder::Decode;
    use yrs::{ReadTxn, Text, Transact};
    let peer = yrs::Doc::with_client_id(99);
    let as_text = peer.get_or_insert_text("table:posts");
    let state = client
        .doc()
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    peer.transact_mut()
        .apply_update(yrs::Update::decode_v1(&state).unwrap())
        .unwrap();
    let before = peer.transact().state_vector();
    as_text.insert(&mut peer.transact_mut(), index, text);
    let update = peer.transact().encode_state_as_update_v1(&before);
    update
}

/// Whether a doc's root array `name` holds text outside ASCII (its length in items and
/// in UTF-8 bytes differ).
fn holds_wide_text(doc: &yrs::Doc, name: &str) -> bool {
    use yrs::Transact;
    let array = doc.get_or_insert_array(name);
    let _txn = doc.transact();
    let branch: &yrs::branch::Branch = array.as_ref();
    branch.len() != branch.content_len()
}

fn titles(c: &WorkspaceClient) -> Vec<(String, String)> {
    c.table("posts")
        .unwrap()
        .get_all_valid()
        .into_iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["title"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A peer that writes non-ASCII text into a table's array (as a Y.Text, after the first
/// entry): yrs could not read that array by index any more (reading it looped forever,
/// so the next load hung), and its positions were not the index's, so deleting a row
/// could delete another's cells. The array is rebuilt from its entries right away: the
/// text is gone, every row is intact, the repair reaches storage and observers of the
/// doc, and later deletes hit the right rows.
#[tokio::test]
async fn text_a_peer_writes_into_a_table_is_removed_and_the_rows_kept() {
    use yrs::updates::decoder::Decode;
    use yrs::{ReadTxn, Transact};
    let storage = MemoryStorage::new();
    let c = blog().with_storage(storage.clone()).create().await.unwrap();
    let posts = c.table("posts").unwrap();
    for (id, title) in [("a", "first"), ("b", "second"), ("c", "third")] {
        posts.upsert(json!({"id": id, "title": title})).unwrap();
    }
    // A replica fed everything the doc emits from here on.
    let replica = yrs::Doc::new();
    let state = c
        .doc()
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    replica
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(&state).unwrap())
        .unwrap();
    let emitted: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = emitted.clone();
    c.doc()
        .observe_update_v1("test", move |_, e| {
            sink.lock().unwrap().push(e.update.clone())
        })
        .unwrap();

    let update = text_typed_into_posts(&c, 2, "ü😀 wide");
    {
        // The update does put wide text into the array.
        let probe = yrs::Doc::new();
        for u in [&state, &update] {
            probe
                .transact_mut()
                .apply_update(yrs::Update::decode_v1(u).unwrap())
                .unwrap();
        }
        assert!(holds_wide_text(&probe, "table:posts"));
    }
    c.apply_update(&update, "peer").unwrap();
    assert!(!holds_wide_text(c.doc(), "table:posts"));
    let expected = vec![
        ("a".to_string(), "first".to_string()),
        ("b".to_string(), "second".to_string()),
        ("c".to_string(), "third".to_string()),
    ];
    assert_eq!(titles(&c), expected);
    for u in emitted.lock().unwrap().iter() {
        replica
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(u).unwrap())
            .unwrap();
    }
    assert!(!holds_wide_text(&replica, "table:posts"));
    // Positions agree with the index again: deleting `a` deletes `a` only.
    posts.delete("a").unwrap();
    assert_eq!(titles(&c), expected[1..]);
    c.destroy().await.unwrap();
    let reopened = blog().with_storage(storage).create().await.unwrap();
    assert_eq!(titles(&reopened), expected[1..]);
    reopened.destroy().await.unwrap();
}

/// Stored data with such text (written by an older build, or straight into the doc) no
/// longer hangs the load: the array is left out of the bulk index, then rebuilt (and the
/// rebuild stored) before the client is handed out.
#[tokio::test]
async fn text_stored_in_a_table_is_rebuilt_on_load() {
    let storage = MemoryStorage::new();
    let c = blog().with_storage(storage.clone()).create().await.unwrap();
    let posts = c.table("posts").unwrap();
    posts.upsert(json!({"id": "a", "title": "first"})).unwrap();
    posts.upsert(json!({"id": "b", "title": "second"})).unwrap();
    c.kv().set("theme", json!("dark")).unwrap();
    // Typed straight into the doc: nothing checks writes made that way.
    {
        use yrs::{Text, Transact};
        let as_text: yrs::TextRef =
            yrs::TextRef::from(yrs::branch::BranchPtr::from(
                AsRef::<yrs::branch::Branch>::as_ref(&c.doc().get_or_insert_array("table:posts")),
            ));
        as_text.insert(&mut c.doc().transact_mut(), 1, "naïve 😀");
    }
    assert!(holds_wide_text(c.doc(), "table:posts"));
    c.destroy().await.unwrap();

    let load = tokio::spawn(blog().with_storage(storage.clone()).create());
    let reopened = tokio::time::timeout(std::time::Duration::from_secs(20), load)
        .await
        .expect("the load finishes")
        .unwrap()
        .unwrap();
    assert!(!holds_wide_text(reopened.doc(), "table:posts"));
    assert_eq!(
        titles(&reopened),
        [("a".into(), "first".into()), ("b".into(), "second".into())]
    );
    assert_eq!(reopened.kv().get("theme").unwrap(), Some(json!("dark")));
    reopened.destroy().await.unwrap();
    // The rebuild was stored: the next load finds nothing to repair.
    let again = blog().with_storage(storage).create().await.unwrap();
    assert!(!holds_wide_text(again.doc(), "table:posts"));
    assert_eq!(titles(&again).len(), 2);
    again.destroy().await.unwrap();
}
