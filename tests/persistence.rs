//! SQLite storage: reopen, crash safety, compaction, the SQL mirror, exclusive ownership
//! and damaged files.
#![cfg(feature = "sqlite")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use epicenter_server::storage::{MemoryStorage, SqliteOptions, SqliteStorage};
use epicenter_server::workspace::*;
use epicenter_server::{StorageError, WorkspaceError};
use rusqlite::Connection;
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
                ("draft", boolean().default(true)),
                ("labels", tags().nullable()),
            ],
        )
        .kv("theme", text().nullable())
        .build()
        .unwrap()
}

async fn open(dir: &Path) -> Result<WorkspaceClient, WorkspaceError> {
    blog().with_storage(SqliteStorage::new(dir)).create().await
}

fn log_rows(db: &Path) -> i64 {
    let conn = Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM _epicenter_log", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn reopen_after_destroy_sees_everything() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path()).await.unwrap();
    let posts = c.table("posts").unwrap();
    posts
        .upsert_many((0..50).map(|i| row(json!({"id": format!("p{i:02}"), "title": "t"}))))
        .unwrap();
    posts.update("p07", row(json!({"title": "seven"}))).unwrap();
    posts.delete("p00").unwrap();
    c.kv().set("theme", json!("dark")).unwrap();
    let before = posts.get_all_valid();
    c.destroy().await.unwrap();

    let c = open(dir.path()).await.unwrap();
    let posts = c.table("posts").unwrap();
    assert_eq!(posts.get_all_valid(), before);
    assert_eq!(posts.count(), 49);
    assert_eq!(c.kv().get("theme").unwrap(), Some(json!("dark")));
    c.destroy().await.unwrap();
}

#[tokio::test]
async fn flush_means_committed() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path()).await.unwrap();
    let db = SqliteStorage::new(dir.path()).path_for("blog");
    let posts = c.table("posts").unwrap();
    for i in 0..20 {
        posts
            .upsert(row(json!({"id": format!("p{i}"), "title": "t"})))
            .unwrap();
    }
    c.flush().await.unwrap();
    // A separate connection (as `sqlite3` would be) sees every update and the mirror rows.
    assert!(log_rows(&db) >= 20);
    let conn = Connection::open(&db).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM posts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 20);
    c.destroy().await.unwrap();
}

#[tokio::test]
async fn second_opener_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path()).await.unwrap();
    let err = open(dir.path()).await.unwrap_err();
    assert!(
        matches!(err, WorkspaceError::Storage(StorageError::InUse { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("is in use"), "{err}");
    // The first client is unharmed and the storage opens again once it is released.
    c.table("posts")
        .unwrap()
        .upsert(row(json!({"id": "a", "title": "t"})))
        .unwrap();
    c.destroy().await.unwrap();
    let c = open(dir.path()).await.unwrap();
    assert!(c.table("posts").unwrap().has("a"));
    c.destroy().await.unwrap();

    let mem = MemoryStorage::new();
    let m1 = blog().with_storage(mem.clone()).create().await.unwrap();
    assert!(matches!(
        blog().with_storage(mem.clone()).create().await,
        Err(WorkspaceError::Storage(StorageError::InUse { .. }))
    ));
    m1.destroy().await.unwrap();
}

/// Runs one of this file's child roles in a separate process.
fn child(role: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
        .env("EPICENTER_CHILD_ROLE", role)
        .env("EPICENTER_CHILD_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Not a test on its own: the body of the child processes (a no-op without the env vars).
#[tokio::test]
async fn child_role() {
    let (Ok(role), Ok(dir)) = (
        std::env::var("EPICENTER_CHILD_ROLE"),
        std::env::var("EPICENTER_CHILD_DIR"),
    ) else {
        return;
    };
    match role.as_str() {
        "writer" => {
            let c = open(Path::new(&dir)).await.unwrap();
            let posts = c.table("posts").unwrap();
            println!("ready");
            for i in 0u64.. {
                posts
                    .upsert(row(
                        json!({"id": format!("p{i}"), "title": format!("t{i}")}),
                    ))
                    .unwrap();
                if i % 3 == 0 {
                    c.flush().await.unwrap();
                    println!("durable {i}");
                }
            }
        }
        "opener" => match open(Path::new(&dir)).await {
            Ok(_) => println!("opened"),
            Err(e) => println!("error: {e}"),
        },
        _ => panic!("unknown role"),
    }
}

#[tokio::test]
async fn another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path()).await.unwrap();
    let out = child("opener", dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("error: storage") && text.contains("is in use"),
        "{text}"
    );
    c.destroy().await.unwrap();
}

#[tokio::test]
async fn sigkill_loses_nothing_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = child("writer", dir.path()).spawn().unwrap();
    let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
    let mut last_durable = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("durable ") {
            let n: u64 = n.parse().unwrap();
            last_durable = Some(n);
            if n >= 300 {
                break;
            }
        }
    }
    // SIGKILL in the middle of the write stream: no chance to flush or clean up.
    proc.kill().unwrap();
    proc.wait().unwrap();
    let last = last_durable.expect("the child reported durable writes");

    let c = open(dir.path()).await.unwrap();
    let posts = c.table("posts").unwrap();
    for i in 0..=last {
        match posts.get(&format!("p{i}")) {
            RowResult::Valid(r) => assert_eq!(r["title"], format!("t{i}")),
            other => panic!("row p{i} (reported durable) is missing: {other:?}"),
        }
    }
    c.destroy().await.unwrap();
}

#[tokio::test]
async fn compaction_keeps_rows_and_shrinks_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::with_options(
        dir.path(),
        SqliteOptions {
            compact_after_updates: u64::MAX,
            compact_after_bytes: u64::MAX,
            ..SqliteOptions::default()
        },
    );
    let db = storage.path_for("blog");
    let c = blog().with_storage(storage.clone()).create().await.unwrap();
    let posts = c.table("posts").unwrap();
    for i in 0..300 {
        posts
            .upsert(row(
                json!({"id": format!("p{}", i % 40), "title": format!("v{i}")}),
            ))
            .unwrap();
    }
    c.flush().await.unwrap();
    let before = posts.get_all_valid();
    let logged = log_rows(&db);
    assert!(logged >= 300, "{logged}");
    c.compact().await.unwrap();
    assert_eq!(log_rows(&db), 0);
    let size = |p: &Path| -> i64 {
        let conn = Connection::open(p).unwrap();
        conn.query_row("SELECT length(data) FROM _epicenter_snapshot", [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let snapshot_bytes = size(&db);
    // More writes after compaction land in the log again.
    posts
        .upsert(row(json!({"id": "late", "title": "x"})))
        .unwrap();
    c.destroy().await.unwrap();
    assert_eq!(log_rows(&db), 1);

    let c = blog().with_storage(storage).create().await.unwrap();
    let posts = c.table("posts").unwrap();
    let mut expected = before.clone();
    expected.push(row(
        json!({"id": "late", "title": "x", "views": 0, "draft": true, "labels": null}),
    ));
    expected.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    assert_eq!(posts.get_all_valid(), expected);
    // Overwritten values were dropped: the snapshot is far smaller than 300 updates.
    assert!(
        snapshot_bytes < 300 * 40,
        "snapshot is {snapshot_bytes} bytes"
    );
    c.destroy().await.unwrap();
}

#[tokio::test]
async fn automatic_compaction_happens_under_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::with_options(
        dir.path(),
        SqliteOptions {
            compact_after_updates: 50,
            ..SqliteOptions::default()
        },
    );
    let db = storage.path_for("blog");
    let c = blog().with_storage(storage.clone()).create().await.unwrap();
    let posts = c.table("posts").unwrap();
    for i in 0..200 {
        posts
            .upsert(row(json!({"id": format!("p{i}"), "title": "t"})))
            .unwrap();
        c.flush().await.unwrap();
    }
    c.destroy().await.unwrap();
    assert!(log_rows(&db) < 50, "log holds {}", log_rows(&db));
    let c = blog().with_storage(storage).create().await.unwrap();
    assert_eq!(c.table("posts").unwrap().count(), 200);
    c.destroy().await.unwrap();
}

fn mirror_rows(db: &Path) -> Vec<Row> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, title, views, draft, labels FROM posts ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        let labels: Option<String> = r.get(4)?;
        Ok(row(json!({
            "id": r.get::<_, String>(0)?,
            "title": r.get::<_, String>(1)?,
            "views": r.get::<_, i64>(2)?,
            "draft": r.get::<_, i64>(3)? == 1,
            "labels": labels.map(|l| serde_json::from_str::<Value>(&l).unwrap()),
        })))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[tokio::test]
async fn mirror_equals_valid_rows_after_random_edits() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteStorage::new(dir.path()).path_for("blog");
    let c = open(dir.path()).await.unwrap();
    let posts = c.table("posts").unwrap();
    // A small deterministic pseudo-random walk over upserts, updates and deletes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..600 {
        let id = format!("p{}", next() % 30);
        match next() % 5 {
            0 => {
                posts.delete(&id).unwrap();
            }
            1 if posts.has(&id) => {
                posts
                    .update(
                        &id,
                        row(json!({"views": next() % 100, "labels": ["a", "b"]})),
                    )
                    .unwrap();
            }
            2 => posts.clear().unwrap(),
            _ => {
                let existed = posts.has(&id);
                let created = posts
                    .upsert(row(json!({"id": id, "title": format!("t{}", next() % 7), "draft": next() % 2 == 0})))
                    .unwrap();
                assert_eq!(created, !existed);
            }
        }
        if next() % 50 == 0 {
            c.flush().await.unwrap();
            assert_eq!(mirror_rows(&db), posts.get_all_valid());
        }
    }
    c.flush().await.unwrap();
    assert_eq!(mirror_rows(&db), posts.get_all_valid());
    let expected = posts.get_all_valid();
    c.destroy().await.unwrap();
    // Rebuilt on load, and still equal.
    let c = open(dir.path()).await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(mirror_rows(&db), expected);
    c.destroy().await.unwrap();
}

/// A data dir holding one stored post (`a`), released again; and its database file.
async fn stored_one_row() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteStorage::new(dir.path()).path_for("blog");
    let c = open(dir.path()).await.unwrap();
    c.table("posts")
        .unwrap()
        .upsert(row(json!({"id": "a", "title": "t"})))
        .unwrap();
    c.destroy().await.unwrap();
    (dir, db)
}

#[tokio::test]
async fn mirror_follows_a_schema_change() {
    let (dir, db) = stored_one_row().await;
    let v2 = WorkspaceDefinition::builder("blog")
        .table(
            "posts",
            [
                ("id", id()),
                ("title", text()),
                ("summary", text().nullable()),
            ],
        )
        .build()
        .unwrap();
    let c = v2
        .with_storage(SqliteStorage::new(dir.path()))
        .create()
        .await
        .unwrap();
    c.flush().await.unwrap();
    let conn = Connection::open(&db).unwrap();
    let (title, summary): (String, Option<String>) = conn
        .query_row("SELECT title, summary FROM posts WHERE id = 'a'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((title.as_str(), summary), ("t", None));
    c.destroy().await.unwrap();
}

/// Loading gathers each row's cells wherever they sit in the doc: a field first written
/// long after the row (here, after a schema change) and rows stored out of id order.
#[tokio::test]
async fn a_row_whose_fields_were_written_apart_loads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let def = |extra: bool| {
        let mut fields = vec![("id", id()), ("title", text())];
        if extra {
            fields.push(("views", integer().nullable()));
        }
        WorkspaceDefinition::builder("blog")
            .table("posts", fields)
            .build()
            .unwrap()
    };
    let open = |extra: bool| {
        def(extra)
            .with_storage(SqliteStorage::new(dir.path()))
            .create()
    };
    let c = open(false).await.unwrap();
    let posts = c.table("posts").unwrap();
    for id in ["b", "a", "c"] {
        posts.upsert(row(json!({"id": id, "title": id}))).unwrap();
    }
    c.destroy().await.unwrap();

    let c = open(true).await.unwrap();
    let posts = c.table("posts").unwrap();
    posts.update("a", row(json!({"views": 7}))).unwrap();
    posts
        .upsert(row(json!({"id": "0", "title": "zero", "views": 1})))
        .unwrap();
    c.destroy().await.unwrap();

    let c = open(true).await.unwrap();
    let posts = c.table("posts").unwrap();
    assert_eq!(
        posts.get("a"),
        RowResult::Valid(row(json!({"id": "a", "title": "a", "views": 7})))
    );
    let ids: Vec<Value> = posts
        .get_all_valid()
        .into_iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, [json!("0"), json!("a"), json!("b"), json!("c")]);
    // Rows without the new field: null, still valid.
    assert_eq!(
        posts.get("b"),
        RowResult::Valid(row(json!({"id": "b", "title": "b", "views": null})))
    );
    c.destroy().await.unwrap();
}

#[tokio::test]
async fn a_damaged_file_is_an_error_not_an_empty_doc() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteStorage::new(dir.path()).path_for("blog");
    std::fs::write(
        &db,
        b"this is not an sqlite database, just some text....".repeat(100),
    )
    .unwrap();
    let err = open(dir.path()).await.unwrap_err();
    assert!(
        matches!(err, WorkspaceError::Storage(StorageError::Damaged { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("is damaged"), "{err}");
    assert!(
        std::fs::read(&db).unwrap().starts_with(b"this is not"),
        "the file was left as it was"
    );
}

#[tokio::test]
async fn a_damaged_update_is_an_error() {
    let (dir, db) = stored_one_row().await;
    let conn = Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE _epicenter_log SET data = zeroblob(length(data)) WHERE seq = (SELECT max(seq) FROM _epicenter_log)",
        [],
    )
    .unwrap();
    drop(conn);
    let err = open(dir.path()).await.unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}
