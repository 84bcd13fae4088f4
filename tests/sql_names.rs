//! Table and field names the SQL mirror could not tell apart (SQL folds ASCII letter case)
//! or that name the storage's own tables are refused when the definition is built, from
//! Rust or JSON, and never reach the SQLite storage.
#![cfg(feature = "sqlite")]

use epicenter_server::storage::{SqliteStorage, StorageProvider};
use epicenter_server::workspace::*;
use epicenter_server::DefinitionError;
use serde_json::json;

fn refused(built: Result<WorkspaceDefinition, DefinitionError>) -> String {
    built
        .expect_err("the definition must be refused")
        .to_string()
}

#[test]
fn tables_differing_only_in_case_are_refused() {
    let message = refused(
        WorkspaceDefinition::builder("blog")
            .table("Posts", [("id", id()), ("title", text())])
            .table("posts", [("id", id())])
            .build(),
    );
    assert!(
        message
            .starts_with("table `posts`: the name differs from table `Posts` only in letter case"),
        "{message}"
    );
    let json = json!({"id": "blog", "tables": {
        "posts": {"id": {"type": "id"}},
        "POSTS": {"id": {"type": "id"}},
    }});
    let message = refused(WorkspaceDefinition::from_json(&json.to_string()));
    assert!(message.contains("table `POSTS`"), "{message}");
    // Letters outside ASCII are not folded by SQLite: these are two tables to it too.
    WorkspaceDefinition::builder("blog")
        .table("été", [("id", id())])
        .table("ÉTÉ", [("id", id())])
        .build()
        .unwrap();
}

#[test]
fn fields_differing_only_in_case_are_refused() {
    let message = refused(
        WorkspaceDefinition::builder("blog")
            .table(
                "posts",
                [("id", id()), ("Title", text()), ("title", text())],
            )
            .build(),
    );
    assert!(
        message.starts_with(
            "table `posts`, field `title`: the name differs from field `Title` only in letter case"
        ),
        "{message}"
    );
    let json = json!({"id": "blog", "tables": {
        "posts": {"ID": {"type": "id"}, "id": {"type": "text"}},
    }});
    let message = refused(WorkspaceDefinition::from_json(&json.to_string()));
    assert!(message.contains("field `id`"), "{message}");
}

#[test]
fn tables_named_like_the_storage_tables_are_refused() {
    for name in [
        "_Epicenter_log",
        "_EPICENTER_META",
        "_epicenter_x",
        "sqlite_master",
        "SQLite_stat1",
    ] {
        let message = refused(
            WorkspaceDefinition::builder("blog")
                .table(name, [("id", id())])
                .build(),
        );
        assert!(
            message.starts_with(&format!("table `{name}`: table names starting with")),
            "{message}"
        );
        let json = json!({"id": "blog", "tables": {name: {"id": {"type": "id"}}}});
        assert!(refused(WorkspaceDefinition::from_json(&json.to_string())).contains(name));
    }
    // Only a prefix is reserved.
    WorkspaceDefinition::builder("blog")
        .table("my_epicenter_log", [("id", id())])
        .table("sqlite", [("id", id())])
        .build()
        .unwrap();
}

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap()
}

/// A definition put together by hand (its fields are public) skips the builder's check:
/// neither `create()` nor the SQLite storage lets it near the database, and what is stored
/// survives the attempt.
#[tokio::test]
async fn a_hand_made_definition_with_a_storage_table_name_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::new(dir.path());
    let client = blog().with_storage(storage.clone()).create().await.unwrap();
    client
        .table("posts")
        .unwrap()
        .upsert(json!({"id": "p1", "title": "kept"}))
        .unwrap();
    client.destroy().await.unwrap();

    let mut hostile = blog();
    let mut log = hostile.tables[0].clone();
    log.name = "_Epicenter_log".into();
    hostile.tables.push(log);
    let refused = hostile.clone().with_storage(storage.clone()).create().await;
    let message = refused
        .expect_err("create() checks the definition")
        .to_string();
    assert!(message.contains("_Epicenter_log"), "{message}");
    let opened = storage.open("blog", Some(&hostile));
    let message = opened.err().expect("the storage checks it too").to_string();
    assert!(message.contains("_Epicenter_log"), "{message}");

    let client = blog().with_storage(storage).create().await.unwrap();
    let row = client.table("posts").unwrap().get("p1");
    assert!(
        matches!(&row, RowResult::Valid(r) if r["title"] == "kept"),
        "{row:?}"
    );
    client.destroy().await.unwrap();
}
