//! Attacks on several nodes after the one-statement commits, the new bus reader and the
//! versioned mirror, kept as regression tests.
//! Skipped when PostgreSQL or Redis is not installed.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod support;

use std::time::Duration;

use epicenter_server::storage::{PostgresOptions, PostgresStorage, StorageProvider};
use serde_json::json;
use support::cluster::{blog, gets, has, open, redis_conn, rest_post, serve_signed, sql, GUARD};
use support::services::{Postgres, Redis};

/// Redis keeps its streams across a restart by default (RDB), and a database is sometimes
/// replaced (restored from a backup) while Redis is not. A node that joins skips what the
/// streams already hold; but after Redis restarts (a new `run_id`) the reader reads every
/// stream from "0" again, so the old database's signed entries come back as the numbers
/// the new database gives its next updates: the node applies the old content as them and
/// skips the real ones (the periodic check finds nothing missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_that_kept_its_streams_brings_no_old_entries() {
    let (Some(old_db), Some(mut redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let quick = Duration::from_millis(100);
    let (a, a_addr) = serve_signed(open(&old_db, "a").await, &redis, "a", quick).await;
    for id in ["old1", "old2", "old3"] {
        rest_post(a_addr, id).await; // numbers 1..3 in the old database, on the bus
    }
    a.destroy().await.unwrap();
    drop(old_db);

    let Some(new_db) = Postgres::start() else {
        return;
    };
    let (b, _) = serve_signed(open(&new_db, "b").await, &redis, "b", quick).await;
    let (c, c_addr) = serve_signed(open(&new_db, "c").await, &redis, "c", quick).await;
    rest_post(c_addr, "new1").await; // number 1 in the new database
    let b_client = b.client("blog").unwrap();
    assert!(gets(b_client, "new1").await, "node b never got new1");
    assert!(!has(b_client, "old2"), "the join already took an old entry");

    // Redis restarts with what it held (an RDB snapshot, as by default).
    let _: () = redis::cmd("SAVE")
        .query_async(&mut redis_conn(&redis).await)
        .await
        .unwrap();
    redis.restart();
    // Both readers are back (the periodic check alone must not be what brings new2).
    let readers_back = tokio::time::timeout(GUARD, async {
        loop {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut redis_conn(&redis).await)
                .await
                .unwrap();
            if clients.matches("cmd=xread").count() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(readers_back.is_ok(), "the readers never came back");
    rest_post(c_addr, "new2").await; // number 2
    rest_post(c_addr, "new3").await; // number 3
    assert!(gets(b_client, "new2").await, "node b never got new2");
    assert!(gets(b_client, "new3").await, "node b never got new3");
    assert!(
        !has(b_client, "old2"),
        "node b serves a row its database does not hold"
    );
    b.destroy().await.unwrap();
    c.destroy().await.unwrap();
}

/// The title of post `id` in the SQL mirror.
async fn mirrored_title(db: &tokio_postgres::Client, id: &str) -> Option<String> {
    db.query_opt("SELECT title FROM blog.posts WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Node b opens the workspace: it loads the doc (through update 1), and its reset of the
/// mirror is committed a moment later, with version 1. Meanwhile node a commits update 2,
/// which changes post p; a's own row write carries a's "through" at append time, also 1.
/// The tie lets b's reset (the doc before update 2) overwrite a's row. Only b applying
/// update 2 later would write p again; if b dies first (killed during its start, as the
/// storage handle below stands for), the mirror keeps the stale row for good while every
/// live node's doc says otherwise, until some node opens the workspace again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_from_a_load_just_before_a_write_does_not_overwrite_it() {
    let Some(pg) = Postgres::start() else { return };
    let a = open(&pg, "a").await;
    let posts = a.table("posts").unwrap();
    posts.upsert(json!({"id": "p", "title": "old"})).unwrap();
    a.flush().await.unwrap(); // update 1

    // Node b opens the workspace as `create()` does: open, load.
    let options = PostgresOptions {
        node: "b".into(),
        ..PostgresOptions::default()
    };
    let storage = PostgresStorage::connect_with(&pg.url(), options)
        .await
        .unwrap();
    let b = tokio::task::spawn_blocking(move || {
        let doc = storage.open("blog", Some(&blog())).unwrap();
        assert_eq!(doc.load().unwrap().len(), 1);
        doc
    })
    .await
    .unwrap();

    posts.upsert(json!({"id": "p", "title": "new"})).unwrap();
    a.flush().await.unwrap(); // update 2, with its row
    let db = sql(&pg).await;
    assert_eq!(mirrored_title(&db, "p").await.as_deref(), Some("new"));

    // b's reset: the rows of the doc it loaded (before update 2).
    let row = json!({"id": "p", "title": "old"})
        .as_object()
        .unwrap()
        .clone();
    b.reset_rows(vec![("posts".into(), vec![row])]);
    b.flush().await.unwrap();
    // b dies here, before its bus brings it update 2; node a lives on.
    drop(b);

    let converged = tokio::time::timeout(GUARD, async {
        while mirrored_title(&db, "p").await.as_deref() != Some("new") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        converged.is_ok(),
        "the mirror says {:?}; the doc of the live node says \"new\"",
        mirrored_title(&db, "p").await
    );
    a.destroy().await.unwrap();
}
