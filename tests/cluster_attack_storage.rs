//! Attacks on the Postgres side of several nodes: the writer, the SQL mirror, compaction
//! and what is stored. Each test is an attack from a review, kept as a regression test.
//! Skipped when PostgreSQL or Redis is not installed.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod support;

use std::time::Duration;

use epicenter_server::storage::{PostgresOptions, PostgresStorage};
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use serde_json::json;
use support::cluster::{blog, has, open, serve, sql, GUARD};
use support::services::{Postgres, Redis};

/// A string of `len` letters and digits that does not compress.
fn incompressible(len: usize) -> String {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(x % 62) as usize]
                as char
        })
        .collect()
}

/// A row id is any non-empty string without `:`; one longer than a Postgres btree entry may
/// be (about 2.7 kB) is refused by the mirror's indexes (SQLSTATE 54000). The row stays out
/// of the mirror; the doc's log, and the other rows, are stored and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_id_too_long_for_a_postgres_index_does_not_wedge_the_doc() {
    let Some(pg) = Postgres::start() else { return };
    let a = open(&pg, "a").await;
    let posts = a.table("posts").unwrap();
    posts
        .upsert(json!({"id": incompressible(8000), "title": "long"}))
        .unwrap();
    posts
        .upsert(json!({"id": "innocent", "title": "t"}))
        .unwrap();
    let flushed = tokio::time::timeout(GUARD, a.flush()).await;
    assert!(
        matches!(flushed, Ok(Ok(()))),
        "the writes were never stored: {:?}",
        a.storage_status()
    );
}

/// A cell Postgres refuses (a NUL character, valid in JSON and in the doc) keeps its row
/// out of the mirror, not the other rows of the same commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_row_does_not_keep_the_others_out_of_the_mirror() {
    let Some(pg) = Postgres::start() else { return };
    let a = open(&pg, "a").await;
    a.table("posts")
        .unwrap()
        .upsert_many([
            json!({"id": "good", "title": "fine"}),
            json!({"id": "bad", "title": "nul \u{0} inside"}),
        ])
        .unwrap();
    a.flush().await.unwrap();
    let db = sql(&pg).await;
    let ids: Vec<String> = db
        .query("SELECT id FROM blog.posts", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["good"], "the mirror holds the valid row alone");
}

/// A workspace `public` with a table `epicenter_updates`: the mirror's schema would be the
/// one the server's own tables live in. Whatever happens to that workspace, the log of
/// every other doc stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_definition_cannot_drop_the_servers_own_tables() {
    let Some(pg) = Postgres::start() else { return };
    let a = open(&pg, "a").await;
    a.table("posts")
        .unwrap()
        .upsert(json!({"id": "1", "title": "kept"}))
        .unwrap();
    a.destroy().await.unwrap();

    let hostile = WorkspaceDefinition::builder("public")
        .table("epicenter_updates", [("id", id()), ("note", text())])
        .build()
        .unwrap();
    let storage = PostgresStorage::connect(&pg.url()).await.unwrap();
    // Refusing the definition is a fine outcome; destroying the log is not.
    if let Ok(client) = hostile.with_storage(storage).create().await {
        let _ = client.destroy().await;
    }
    let b = open(&pg, "b").await;
    assert!(has(&b, "1"), "an acknowledged row is gone");
}

/// A table the server did not create, in a schema that happens to carry a workspace's id,
/// keeps its data when the workspace is first opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_workspace_does_not_drop_a_table_it_did_not_create() {
    let Some(pg) = Postgres::start() else { return };
    let db = sql(&pg).await;
    db.batch_execute(
        "CREATE SCHEMA blog; CREATE TABLE blog.posts (id TEXT, body TEXT);
         INSERT INTO blog.posts VALUES ('theirs', 'an older application''s data');",
    )
    .await
    .unwrap();
    let storage = PostgresStorage::connect(&pg.url()).await.unwrap();
    // Refusing to mirror into a table it does not own is a fine outcome.
    if let Ok(client) = blog().with_storage(storage).create().await {
        client.destroy().await.unwrap();
    }
    let theirs = db
        .query_opt("SELECT body FROM blog.posts WHERE id = 'theirs'", &[])
        .await;
    assert!(
        matches!(theirs, Ok(Some(_))),
        "the table's data is gone: {theirs:?}"
    );
}

/// A doc written in sessions shorter than `compact_after_updates` (a dynamic room evicted
/// when idle, nodes restarted) still has its log folded once the log is long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_folded_whatever_the_sessions_that_wrote_it() {
    let Some(pg) = Postgres::start() else { return };
    for session in 0..6 {
        let options = PostgresOptions {
            node: format!("n{session}"),
            compact_after_updates: 20,
            ..PostgresOptions::default()
        };
        let storage = PostgresStorage::connect_with(&pg.url(), options)
            .await
            .unwrap();
        let client = blog().with_storage(storage).create().await.unwrap();
        let posts = client.table("posts").unwrap();
        for i in 0..15 {
            let id = format!("s{session}-{i}");
            posts.upsert(json!({"id": id, "title": "t"})).unwrap();
            client.flush().await.unwrap();
        }
        client.destroy().await.unwrap();
    }
    let logged: i64 = sql(&pg)
        .await
        .query_one(
            "SELECT count(*) FROM epicenter_updates WHERE doc = 'blog'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        logged < 40,
        "{logged} updates in the log with compact_after_updates = 20"
    );
}

/// An update in the database that does not decode: a running node skips it and goes on,
/// and so does a node that opens the doc afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_update_that_does_not_decode_does_not_stop_nodes_from_starting() {
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let quick = Duration::from_millis(100);
    let (a, _) = serve(open(&pg, "a").await, &redis, "a", quick).await;
    sql(&pg)
        .await
        .batch_execute(
            "INSERT INTO epicenter_docs (doc, next_seq) VALUES ('blog', 1)
                 ON CONFLICT (doc) DO UPDATE SET next_seq = epicenter_docs.next_seq + 1;
             INSERT INTO epicenter_updates (doc, seq, data, node)
                 SELECT 'blog', next_seq, '\\xdeadbeef'::BYTEA, 'x'
                 FROM epicenter_docs WHERE doc = 'blog';",
        )
        .await
        .unwrap();
    let a_client = a.client("blog").unwrap();
    a_client
        .table("posts")
        .unwrap()
        .upsert(json!({"id": "after", "title": "t"}))
        .unwrap();
    a_client.flush().await.unwrap();

    let storage = PostgresStorage::connect(&pg.url()).await.unwrap();
    let b = blog().with_storage(storage).create().await;
    let b = b.expect("a node starting now opens the doc the running node serves");
    assert!(has(&b, "after"));
    a.destroy().await.unwrap();
}

/// Field names the definition (and SQLite) accept but a Postgres table cannot have: the
/// system column names (`xmin`, `ctid`, ...). `create()` fails, and says only "db error":
/// the mirror's preparation formats the Postgres error with `to_string()`, which drops
/// what the server said (`describe` in `postgres/mod.rs` keeps it, but is not used there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_postgres_cannot_mirror_is_refused_with_the_reason() {
    let Some(pg) = Postgres::start() else { return };
    let def = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("xmin", text())])
        .build()
        .unwrap();
    let storage = PostgresStorage::connect(&pg.url()).await.unwrap();
    if let Err(e) = def.with_storage(storage).create().await {
        let message = e.to_string();
        assert!(
            message.contains("xmin"),
            "the error does not say what is wrong: {message}"
        );
    }
}
