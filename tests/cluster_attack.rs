//! Attacks on the bus between nodes: updates over Redis Streams and the catch-up from
//! Postgres. Each test is an attack from a review, kept as a regression test. Skipped when
//! PostgreSQL or Redis is not installed.
//! Presence: `cluster_attack_presence.rs`; the writer and the mirror:
//! `cluster_attack_storage.rs`.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod support;

use std::time::Duration;

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::sync::RedisBus;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use serde_json::json;
use support::cluster::{
    blog, gets, has, open, open_with, redis_conn, rest_post, serve, serve_signed, sql,
    stored_update, xadd,
};
use support::services::{Postgres, Redis};
use yrs::{ReadTxn, StateVector, Transact};

/// The fields of a stream entry.
type Fields<'a> = &'a [(&'a str, &'a [u8])];

// ---------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------

/// Redis keeps its streams across a restart by default (RDB snapshots), and a database is
/// sometimes replaced (restored from a backup, or reset) while Redis is not. A node then
/// reads each update stream from its start: the old database's entries, signed with the
/// same secret, carry the numbers the new database gives its own updates next, so the node
/// applies the old content as those numbers and skips the real updates that get them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_left_by_an_earlier_database_are_not_applied() {
    let (Some(old_db), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let quick = Duration::from_millis(100);
    let (a, a_addr) = serve_signed(open(&old_db, "a").await, &redis, "a", quick).await;
    rest_post(a_addr, "old").await; // number 1 in the old database, on the bus
    a.destroy().await.unwrap();
    drop(old_db);

    // The database is replaced; Redis is not.
    let Some(new_db) = Postgres::start() else {
        return;
    };
    let (b, _) = serve_signed(open(&new_db, "b").await, &redis, "b", quick).await;
    let (c, c_addr) = serve_signed(open(&new_db, "c").await, &redis, "c", quick).await;
    rest_post(c_addr, "new").await; // number 1 in the new database
    let b_client = b.client("blog").unwrap();
    assert!(
        gets(b_client, "new").await,
        "node b never got a stored write"
    );
    assert!(
        !has(b_client, "old"),
        "node b serves a row its database does not hold"
    );
    b.destroy().await.unwrap();
    c.destroy().await.unwrap();
}

/// Workspaces of one server may be stored in different databases (each its own
/// `PostgresStorage`). The periodic check asks one doc's storage for the last number of
/// every doc (`stored_through`), so the docs of the other database are never found behind,
/// and what their Redis entries did not bring never arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_check_covers_docs_of_every_storage() {
    let (Some(pg1), Some(pg2), Some(redis)) =
        (Postgres::start(), Postgres::start(), Redis::start())
    else {
        return;
    };
    let wiki = || {
        WorkspaceDefinition::builder("wiki")
            .table("posts", [("id", id()), ("title", text())])
            .build()
            .unwrap()
    };
    let bus = RedisBus::new(redis.url(), "b").catch_up_interval(Duration::from_millis(100));
    let clients = [open(&pg1, "b").await, open_with(&pg2, "b", wiki()).await];
    let b = create_server(clients, ServerOptions::default().port(0).redis_bus(bus)).unwrap();
    b.start().await.unwrap();
    // Node a writes to the databases only: what reaches b comes from the periodic check.
    let (a_blog, a_wiki) = (open(&pg1, "a").await, open_with(&pg2, "a", wiki()).await);
    for a in [&a_blog, &a_wiki] {
        let posts = a.table("posts").unwrap();
        posts.upsert(json!({"id": "1", "title": "t"})).unwrap();
        a.flush().await.unwrap();
    }
    assert!(
        gets(b.client("blog").unwrap(), "1").await,
        "blog never caught up"
    );
    assert!(
        gets(b.client("wiki").unwrap(), "1").await,
        "wiki never caught up"
    );
    b.destroy().await.unwrap();
}

/// A key of another type under a doc's stream name (written by anyone with access to
/// Redis, or left by something else) makes every XREAD of the node fail with WRONGTYPE: the
/// reader reconnects and fails again at once, in a loop, and no doc's entries are read
/// any more; updates then cross only with the periodic check, and presence not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_does_not_stop_the_bus() {
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let rare = Duration::from_secs(3600);
    let (a, a_addr) = serve(open(&pg, "a").await, &redis, "a", rare).await;
    let (b, _) = serve(open(&pg, "b").await, &redis, "b", rare).await;
    let mut c = redis_conn(&redis).await;
    let _: () = redis::cmd("SET")
        .arg("epicenter:{blog}:a")
        .arg("not a stream")
        .query_async(&mut c)
        .await
        .unwrap();
    let connections = || async {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut redis_conn(&redis).await)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap()
    };
    let before = connections().await;
    rest_post(a_addr, "1").await;
    let crossed = gets(b.client("blog").unwrap(), "1").await;
    let churn = connections().await - before;
    assert!(
        crossed,
        "the write never crossed over Redis ({churn} new connections)"
    );
    assert!(churn < 50, "{churn} new Redis connections in a few seconds");
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}

/// Node b misses node a's update 2 over Redis (trimmed, Redis restarted: the documented
/// case for reading from Postgres), commits its own update 3, and a's compaction folds the
/// log through 3. Catching up, b gets the snapshot numbered 3, one of its own commits'
/// numbers: it stands for update 2 too, so b applies it (skipping it would lose update 2,
/// and leave every later update of node a's pending behind the hole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_numbered_like_an_own_commit_is_still_applied() {
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let db = sql(&pg).await;
    // Node a writes to the database only (its bus entries are what gets lost).
    let b_client = open(&pg, "b").await;
    let a = open(&pg, "a").await;
    let a_posts = a.table("posts").unwrap();
    a_posts.upsert(json!({"id": "0", "title": "t"})).unwrap();
    a.flush().await.unwrap();
    // b's bus starts with one check of the database (the next one is an hour away).
    let (b, b_addr) = serve(b_client, &redis, "b", Duration::from_secs(3600)).await;
    let b_client = b.client("blog").unwrap().clone();
    assert!(gets(&b_client, "0").await, "b's first check");

    a_posts.upsert(json!({"id": "1", "title": "t"})).unwrap(); // update 2
    a.flush().await.unwrap();
    rest_post(b_addr, "2").await; // update 3, b's own
    a.compact().await.unwrap(); // snapshot through 3
    a_posts.upsert(json!({"id": "3", "title": "t"})).unwrap(); // update 4
    a.flush().await.unwrap();
    // a's entry for update 4 reaches b: a gap, so b reads what it lacks from the database.
    let mut c = redis_conn(&redis).await;
    let u4 = stored_update(&db, 4).await;
    xadd(
        &mut c,
        "epicenter:{blog}:u",
        &[("node", b"a"), ("n", b"4"), ("u", &u4)],
    )
    .await;
    assert!(gets(&b_client, "1").await, "node b lost update 2");
    assert!(gets(&b_client, "3").await, "update 4 waits for update 2");
    b.destroy().await.unwrap();
    a.destroy().await.unwrap();
}

/// Anyone who can write to Redis can add an entry with the number a node expects next.
/// Without a secret the node would apply its bytes (never stored anywhere) and count the
/// number as applied, so never apply the real update of that number; with the nodes'
/// secret (`RedisBus::secret`) the unsigned entry is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_bus_entry_does_not_replace_a_stored_update() {
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let quick = Duration::from_millis(100);
    let (a, a_addr) = serve_signed(open(&pg, "a").await, &redis, "a", quick).await;
    let (b, _) = serve_signed(open(&pg, "b").await, &redis, "b", quick).await;
    let b_client = b.client("blog").unwrap().clone();

    let scratch = blog().in_memory().create().await.unwrap();
    scratch
        .table("posts")
        .unwrap()
        .upsert(json!({"id": "forged", "title": "never stored"}))
        .unwrap();
    let forged = scratch
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let mut c = redis_conn(&redis).await;
    // Unsigned, and with a signature made without the secret.
    xadd(
        &mut c,
        "epicenter:{blog}:u",
        &[("node", b"mallory"), ("n", b"1"), ("u", &forged)],
    )
    .await;
    xadd(
        &mut c,
        "epicenter:{blog}:u",
        &[
            ("node", b"mallory"),
            ("n", b"1"),
            ("u", &forged),
            ("s", &[0u8; 32]),
        ],
    )
    .await;
    rest_post(a_addr, "real").await; // update 1
    assert!(
        gets(&b_client, "real").await,
        "node b never got an acknowledged write"
    );
    assert!(
        !has(&b_client, "forged"),
        "node b serves a row no node stored"
    );
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}

/// Malformed entries on both streams of a doc (fields missing, numbers that are not
/// numbers, bytes that are no update or awareness frame, a node name that is no UTF-8)
/// neither stop the bus nor reach the doc: a write afterwards still crosses at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_bus_neither_stops_it_nor_reaches_the_doc() {
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let rare = Duration::from_secs(3600);
    let (a, a_addr) = serve(open(&pg, "a").await, &redis, "a", rare).await;
    let (b, _) = serve(open(&pg, "b").await, &redis, "b", rare).await;
    let b_client = b.client("blog").unwrap().clone();
    let mut c = redis_conn(&redis).await;
    let u = "epicenter:{blog}:u";
    let aw = "epicenter:{blog}:a";
    let garbage: [(&str, Fields); 9] = [
        (u, &[("x", b"1")]),
        (u, &[("node", b"m"), ("n", b"not a number"), ("u", b"\x00")]),
        (u, &[("node", b"m"), ("n", b"-1"), ("u", b"\x00")]),
        (
            u,
            &[("node", b"m"), ("n", b"1"), ("u", b"\xff\xff\xff\xff\xff")],
        ),
        (u, &[("node", b"m"), ("n", b"1"), ("u", b"")]),
        (u, &[("node", b"\xff\xfe"), ("n", b"1"), ("u", b"\x00\x00")]),
        (aw, &[("node", b"m"), ("a", b"\x01\xff\xff\xff\xff\xff")]),
        (aw, &[("node", b"m"), ("a", b"")]),
        (aw, &[("node", b"m")]),
    ];
    for (key, fields) in garbage {
        xadd(&mut c, key, fields).await;
    }
    rest_post(a_addr, "after").await;
    assert!(gets(&b_client, "after").await, "the bus stopped");
    let ids: Vec<_> = b_client.table("posts").unwrap().get_all_valid();
    assert_eq!(ids.len(), 1, "garbage reached the doc: {ids:?}");
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}
