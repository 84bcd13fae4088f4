//! PostgresStorage against a real PostgreSQL server of the test's own: workspaces survive
//! a reopen; two clients ("nodes") hold the same doc at once and see each other's writes
//! on reload; a database crash and restart delays acknowledgements but loses nothing;
//! compaction keeps the state. Skipped (with a message) when PostgreSQL is not installed.
#![cfg(feature = "postgres")]

mod support;

use std::time::Duration;

use epicenter_server::storage::{PostgresOptions, PostgresStorage};
use epicenter_server::workspace::{id, text, RowResult, WorkspaceClient, WorkspaceDefinition};
use serde_json::json;
use support::services::Postgres;

const GUARD: Duration = Duration::from_secs(30);

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap()
}

async fn client(pg: &Postgres, node: &str) -> WorkspaceClient {
    let options = PostgresOptions {
        node: node.into(),
        compact_after_updates: 50,
        ..PostgresOptions::default()
    };
    let storage = PostgresStorage::connect_with(&pg.url(), options)
        .await
        .unwrap();
    blog().with_storage(storage).create().await.unwrap()
}

fn titles(client: &WorkspaceClient) -> Vec<String> {
    client
        .table("posts")
        .unwrap()
        .get_all_valid()
        .into_iter()
        .map(|row| row["title"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_survive_a_reopen_and_compaction() {
    let Some(pg) = Postgres::start() else { return };
    let a = client(&pg, "a").await;
    let posts = a.table("posts").unwrap();
    for i in 0..120 {
        posts
            .upsert(json!({"id": format!("p{i:03}"), "title": format!("t{i}")}))
            .unwrap();
        if i % 10 == 0 {
            a.flush().await.unwrap();
        }
    }
    posts.delete("p000").unwrap();
    a.compact().await.unwrap();
    a.destroy().await.unwrap();

    let b = client(&pg, "b").await;
    let posts = b.table("posts").unwrap();
    assert_eq!(posts.count(), 119);
    assert_eq!(posts.get("p000"), RowResult::NotFound);
    assert!(matches!(posts.get("p119"), RowResult::Valid(row) if row["title"] == "t119"));
    b.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_hold_one_doc_and_each_write_is_stored() {
    let Some(pg) = Postgres::start() else { return };
    let a = client(&pg, "a").await;
    let b = client(&pg, "b").await;
    a.table("posts")
        .unwrap()
        .upsert(json!({"id": "1", "title": "from a"}))
        .unwrap();
    b.table("posts")
        .unwrap()
        .upsert(json!({"id": "2", "title": "from b"}))
        .unwrap();
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
    let c = client(&pg, "c").await;
    assert_eq!(titles(&c), ["from a", "from b"]);
    c.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_delays_acknowledgements_and_loses_nothing() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let a = client(&pg, "a").await;
    let posts = a.table("posts").unwrap();
    posts
        .upsert(json!({"id": "before", "title": "before"}))
        .unwrap();
    a.flush().await.unwrap();

    pg.kill();
    posts
        .upsert(json!({"id": "during", "title": "during"}))
        .unwrap();
    let flushed = tokio::spawn({
        let a = a.clone();
        async move { a.flush().await }
    });
    // Not acknowledged while the database is down: the commit fails and is retried...
    tokio::time::timeout(GUARD, async {
        while a.storage_status().retrying.is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the failing commit is retried");
    assert!(
        !flushed.is_finished(),
        "acknowledged with the database down"
    );
    // ...and committed once it is back, without reopening anything.
    pg.restart();
    tokio::time::timeout(GUARD, flushed)
        .await
        .expect("committed after the restart")
        .unwrap()
        .unwrap();
    assert!(a.storage_status().is_healthy());
    a.destroy().await.unwrap();

    let b = client(&pg, "b").await;
    assert_eq!(titles(&b), ["before", "during"]);
    b.destroy().await.unwrap();
}

/// REST over a database that is down: the write is answered 503 with `Retry-After` once
/// `write_durability_timeout` passes (the change stays applied), and is stored once the
/// database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_writes_during_a_database_outage_get_503_then_are_stored() {
    use epicenter_server::server::{create_server, ServerOptions};
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let a = client(&pg, "a").await;
    let options = ServerOptions::default()
        .port(0)
        .write_durability_timeout(Duration::from_millis(300));
    let server = create_server([a.clone()], options).unwrap();
    let addr = server.start().await.unwrap();
    pg.kill();
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/workspaces/blog/tables/posts"))
        .json(&json!({"id": "x", "title": "during the outage"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    pg.restart();
    tokio::time::timeout(GUARD, a.flush())
        .await
        .expect("stored once the database is back")
        .unwrap();
    server.destroy().await.unwrap();
    let b = client(&pg, "b").await;
    assert_eq!(titles(&b), ["during the outage"]);
    b.destroy().await.unwrap();
}

/// A refusal no retry cures (here a constraint the updates break) fails the doc's waiting
/// flushes and refuses its later writes, instead of retrying for ever while memory fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_fails_flushes_and_later_writes() {
    let Some(pg) = Postgres::start() else { return };
    let a = client(&pg, "a").await;
    let posts = a.table("posts").unwrap();
    posts.upsert(json!({"id": "1", "title": "fine"})).unwrap();
    a.flush().await.unwrap();
    let (db, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db.batch_execute(
        "ALTER TABLE epicenter_updates ADD CONSTRAINT small CHECK (octet_length(data) < 200)",
    )
    .await
    .unwrap();
    posts
        .upsert(json!({"id": "2", "title": "x".repeat(500)}))
        .unwrap();
    let err = tokio::time::timeout(GUARD, a.flush())
        .await
        .expect("a flush does not wait for ever on a permanent refusal")
        .unwrap_err();
    assert!(err.to_string().contains("small"), "{err}");
    assert!(a.storage_status().failed.is_some());
    let refused = posts.upsert(json!({"id": "3", "title": "after"}));
    assert!(refused.is_err(), "a write was taken by a failed storage");
}

/// A close that gives up (the database is gone for longer than `close_timeout`) says so,
/// and flushes still waiting learn it too instead of waiting for ever; so does a flush
/// after an update that arrived once the storage was closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_that_gives_up_fails_every_waiting_flush() {
    use epicenter_server::storage::StorageProvider;
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let options = PostgresOptions {
        close_timeout: Duration::from_millis(300),
        ..PostgresOptions::default()
    };
    let storage = PostgresStorage::connect_with(&pg.url(), options)
        .await
        .unwrap();
    let doc = tokio::task::spawn_blocking(move || storage.open("d", None).unwrap())
        .await
        .unwrap();
    pg.kill();
    doc.append(vec![0, 0], Vec::new());
    let waiting = doc.flush();
    let closed = tokio::time::timeout(GUARD, doc.close()).await.unwrap();
    assert!(
        closed.is_err(),
        "a close that stored nothing claimed success"
    );
    let waited = tokio::time::timeout(GUARD, waiting)
        .await
        .expect("a flush waiting on a closed storage never returned");
    assert!(waited.is_err());
    doc.append(vec![0, 0], Vec::new());
    assert!(tokio::time::timeout(GUARD, doc.flush())
        .await
        .unwrap()
        .is_err());
    pg.restart();
}
