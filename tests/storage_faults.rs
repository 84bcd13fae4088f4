//! Storage faults heal: a commit that fails (injected I/O errors, or a real full file
//! system) is retried until it succeeds; meanwhile REST writes are answered 503 with
//! `Retry-After` (applied and stored later, or refused before being applied once too much
//! waits), SYNC_STATUS echoes wait, sync updates past the bound close with 1013, and once
//! the fault clears everything pending commits without a restart.

use std::path::Path;
use std::time::Duration;

use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::storage::{SqliteOptions, SqliteStorage};
use epicenter_server::workspace::*;
use epicenter_server::{StorageError, WorkspaceError};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A guard against a hang; nothing waits for it to elapse.
const GUARD: Duration = Duration::from_secs(20);

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .expect("valid definition")
}

async fn client(dir: &Path, options: SqliteOptions) -> (WorkspaceClient, SqliteStorage) {
    let storage = SqliteStorage::with_options(dir, options);
    let client = blog()
        .with_storage(storage.clone())
        .create()
        .await
        .expect("client");
    (client, storage)
}

/// Waits (polling: the status has no change events) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let wait = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(GUARD, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

async fn flushed(client: &WorkspaceClient) {
    tokio::time::timeout(GUARD, client.flush())
        .await
        .expect("flush finishes")
        .expect("flush succeeds");
}

/// The rows stored in `dir`, read by a fresh client.
async fn stored_ids(dir: &Path) -> Vec<String> {
    let (client, _) = client(dir, SqliteOptions::default()).await;
    let ids = client
        .table("posts")
        .unwrap()
        .get_all_valid()
        .into_iter()
        .map(|row| row["id"].as_str().unwrap().to_string())
        .collect();
    client.destroy().await.unwrap();
    ids
}

#[tokio::test]
async fn failing_commits_are_retried_and_what_waited_commits_once_they_pass() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        max_pending_bytes: 1,
        ..SqliteOptions::default()
    };
    let (client, storage) = client(dir.path(), options).await;
    let posts = client.table("posts").unwrap();
    storage.fault_switch().set(true);
    // Admitted (nothing waits yet), applied, and kept while commits fail.
    posts.upsert(json!({"id": "a", "title": "A"})).unwrap();
    until("commits fail", || {
        client.storage_status().retrying.is_some()
    })
    .await;
    let status = client.storage_status();
    assert!(status.pending_bytes > 0, "{status:?}");
    assert!(status.failed.is_none(), "a transient fault is not final");
    // Past the bound: refused before it touches the doc.
    let refused = posts.upsert(json!({"id": "b", "title": "B"})).unwrap_err();
    assert!(
        matches!(
            refused,
            WorkspaceError::Storage(StorageError::Unavailable { .. })
        ),
        "{refused}"
    );
    assert!(!posts.has("b"), "a refused write was applied");
    assert!(posts.has("a"));
    // The fault clears: what waited commits, and writes go on without a restart.
    storage.fault_switch().set(false);
    flushed(&client).await;
    assert!(client.storage_status().is_healthy());
    assert_eq!(client.storage_status().pending_bytes, 0);
    posts.upsert(json!({"id": "b", "title": "B"})).unwrap();
    flushed(&client).await;
    client.destroy().await.unwrap();
    assert_eq!(stored_ids(dir.path()).await, ["a", "b"]);
}

/// A running server over `client`, and an HTTP client.
async fn serve(client: WorkspaceClient) -> (Server, String, reqwest::Client) {
    let options = ServerOptions::default()
        .port(0)
        .write_durability_timeout(Duration::from_millis(100));
    let server = create_server([client], options).unwrap();
    let addr = server.start().await.unwrap();
    let http = reqwest::Client::builder().timeout(GUARD).build().unwrap();
    (server, format!("http://{addr}"), http)
}

async fn post(http: &reqwest::Client, base: &str, id: &str) -> (StatusCode, Option<String>, Value) {
    let response = http
        .post(format!("{base}/workspaces/blog/tables/posts"))
        .json(&json!({"id": id, "title": "x".repeat(2000)}))
        .send()
        .await
        .expect("answered");
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, response.json().await.expect("a JSON body"))
}

async fn get_status(http: &reqwest::Client, base: &str, id: &str) -> StatusCode {
    http.get(format!("{base}/workspaces/blog/tables/posts/{id}"))
        .send()
        .await
        .expect("answered")
        .status()
}

#[tokio::test]
async fn rest_writes_during_a_fault_get_503_with_retry_after_and_commit_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        max_pending_bytes: 1,
        ..SqliteOptions::default()
    };
    let (client, storage) = client(dir.path(), options).await;
    let (server, base, http) = serve(client.clone()).await;
    storage.fault_switch().set(true);
    // Applied, but not durable in time: 503, and said so.
    let (status, retry, body) = post(&http, &base, "a").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(body["error"]["applied"], json!(true), "{body}");
    assert_eq!(get_status(&http, &base, "a").await, StatusCode::OK);
    // Past the bound: refused before being applied, never visible.
    let (status, retry, body) = post(&http, &base, "b").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(body["error"]["applied"], json!(false), "{body}");
    assert_eq!(get_status(&http, &base, "b").await, StatusCode::NOT_FOUND);
    // Healed (within about the `Retry-After`): the retry goes through, no restart.
    storage.fault_switch().set(false);
    until("storage heals", || client.storage_status().is_healthy()).await;
    let (status, _, body) = post(&http, &base, "b").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.destroy().await.unwrap();
    assert_eq!(stored_ids(dir.path()).await, ["a", "b"]);
}

fn update_frame(doc: &yrs::Doc, key: &str) -> Vec<u8> {
    use yrs::{Map, ReadTxn, Transact};
    let map = doc.get_or_insert_map("m");
    let mut txn = doc.transact_mut();
    let before = txn.state_vector();
    map.insert(&mut txn, key, key);
    let update = txn.encode_state_as_update_v1(&before);
    let mut frame = vec![0, 2];
    let mut len = update.len();
    while len >= 0x80 {
        frame.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    frame.push(len as u8);
    frame.extend_from_slice(&update);
    frame
}

#[tokio::test]
async fn sync_echoes_wait_for_a_fault_and_updates_past_the_bound_close_with_1013() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        max_pending_bytes: 1,
        ..SqliteOptions::default()
    };
    let (client, storage) = client(dir.path(), options).await;
    let (server, base, _) = serve(client.clone()).await;
    let url = format!("{}/workspaces/blog/sync", base.replace("http", "ws"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    storage.fault_switch().set(true);
    let doc = yrs::Doc::new();
    ws.send(Message::binary(update_frame(&doc, "k1")))
        .await
        .unwrap();
    ws.send(Message::binary(vec![102, 1, 7])).await.unwrap();
    until("commits fail", || {
        client.storage_status().retrying.is_some()
    })
    .await;
    // A second connection's update, past the bound: refused with 1013.
    let (mut other, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    other
        .send(Message::binary(update_frame(&yrs::Doc::new(), "k2")))
        .await
        .unwrap();
    let close = loop {
        match tokio::time::timeout(GUARD, other.next())
            .await
            .expect("no hang")
        {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame"),
            Some(Ok(_)) => {}
            end => panic!("no close frame: {end:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1013, "{close:?}");
    let keys = |doc: &yrs::Doc| {
        use yrs::{Map, Transact};
        let map = doc.get_or_insert_map("m");
        let txn = doc.transact();
        map.keys(&txn).map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(keys(client.doc()), ["k1"], "the refused update was applied");
    // The echo comes only once the update is durable, after the fault clears.
    let mut echo = Box::pin(async move {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b[..] == [102, 1, 7] => return ws,
                Some(Ok(_)) => {}
                end => panic!("no echo: {end:?}"),
            }
        }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut echo)
            .await
            .is_err(),
        "echoed while the update was not durable"
    );
    storage.fault_switch().set(false);
    let ws = tokio::time::timeout(GUARD, echo).await.expect("echoed");
    assert!(client.storage_status().is_healthy());
    drop((ws, other));
    server.destroy().await.unwrap();
}

#[tokio::test]
async fn destroy_during_a_fault_that_never_clears_fails_naming_what_was_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        close_timeout: Duration::from_millis(50),
        ..SqliteOptions::default()
    };
    let (client, storage) = client(dir.path(), options).await;
    flushed(&client).await;
    storage.fault_switch().set(true);
    client
        .table("posts")
        .unwrap()
        .upsert(json!({"id": "a", "title": "A"}))
        .unwrap();
    let err = tokio::time::timeout(GUARD, client.destroy())
        .await
        .expect("destroy gives up in time")
        .unwrap_err();
    assert!(
        err.to_string().contains("1 updates were not stored"),
        "{err}"
    );
    storage.fault_switch().set(false);
    assert!(stored_ids(dir.path()).await.is_empty());
}

#[tokio::test]
async fn an_update_appended_after_close_makes_flush_fail() {
    use epicenter_server::storage::StorageProvider;
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::new(dir.path()).open("d", None).unwrap();
    storage.append(vec![0, 0], Vec::new());
    storage.close().await.unwrap();
    assert!(
        storage.flush().await.is_ok(),
        "everything before close is durable"
    );
    storage.append(vec![0, 0], Vec::new());
    assert!(matches!(storage.flush().await, Err(StorageError::Closed)));
}
