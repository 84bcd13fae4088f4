//! Writes racing `destroy()`: every write is either durable before it is acknowledged (a
//! 2xx, a SYNC_STATUS echo) or refused with an error, never acknowledged and then lost.
//! REST goes through the server's router nested in a host app (as the README shows), which
//! keeps serving while `Server::destroy` runs; sync goes through dynamic docs and a
//! workspace room.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::storage::{MemoryStorage, SqliteStorage, StorageProvider};
use epicenter_server::workspace::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A guard against a hung request or shutdown; nothing waits for it to elapse.
const GUARD: Duration = Duration::from_secs(20);

/// Rounds of each race; each round is a fresh server.
const ROUNDS: usize = 30;
const WRITERS: usize = 6;

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .expect("valid definition")
}

/// Serves `app` on 127.0.0.1 with `axum::serve`; returns the address.
async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// One REST writer: posts rows until it is refused; returns the ids answered 2xx. A
/// refusal must be a 503 (the server is shutting down), never a 500 or a dropped request.
async fn rest_writer(
    base: String,
    writer: usize,
    started: Arc<tokio::sync::Barrier>,
) -> Vec<String> {
    let http = reqwest::Client::builder().timeout(GUARD).build().unwrap();
    let mut acked = Vec::new();
    for i in 0.. {
        let id = format!("w{writer}-{i}");
        let response = http
            .post(format!("{base}/api/workspaces/blog/tables/posts"))
            .json(&json!({"id": id, "title": "t"}))
            .send()
            .await
            .expect("answered");
        let status = response.status();
        if status.is_success() {
            acked.push(id);
            if i == 0 {
                started.wait().await;
            }
            continue;
        }
        assert_eq!(
            status,
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            response.text().await.unwrap_or_default()
        );
        if i == 0 {
            started.wait().await;
        }
        break;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rest_writes_racing_destroy_are_durable_or_refused() {
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let client = blog()
            .with_storage(SqliteStorage::new(dir.path()))
            .create()
            .await
            .unwrap();
        let server = create_server([client], ServerOptions::default()).unwrap();
        let addr = serve(Router::new().nest("/api", server.router())).await;
        let started = Arc::new(tokio::sync::Barrier::new(WRITERS + 1));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(rest_writer(format!("http://{addr}"), w, started.clone())))
            .collect();
        started.wait().await;
        tokio::time::timeout(GUARD, server.destroy())
            .await
            .expect("destroy finishes")
            .expect("destroy succeeds");
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(tokio::time::timeout(GUARD, w).await.unwrap().unwrap());
        }
        let reopened = blog()
            .with_storage(SqliteStorage::new(dir.path()))
            .create()
            .await
            .unwrap();
        let posts = reopened.table("posts").unwrap();
        let lost: Vec<_> = acked.iter().filter(|id| !posts.has(id)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged rows are not stored: {lost:?}",
            lost.len(),
            acked.len()
        );
        reopened.destroy().await.unwrap();
    }
}

/// A SYNC_STATUS frame carrying `version`.
fn status_frame(version: u64) -> Vec<u8> {
    let mut frame = vec![102];
    let payload = version.to_le_bytes();
    frame.push(payload.len() as u8);
    frame.extend_from_slice(&payload);
    frame
}

/// A SYNC update frame writing `key` into the map `m` of a doc of client `client`.
fn update_frame(doc: &yrs::Doc, key: &str) -> Vec<u8> {
    use yrs::{Map, Transact};
    let map = doc.get_or_insert_map("m");
    let mut txn = doc.transact_mut();
    let before = yrs::ReadTxn::state_vector(&txn);
    map.insert(&mut txn, key, key);
    let update = yrs::ReadTxn::encode_state_as_update_v1(&txn, &before);
    drop(txn);
    let mut frame = vec![0, 2];
    let mut len = update.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            frame.push(byte);
            break;
        }
        frame.push(byte | 0x80);
    }
    frame.extend_from_slice(&update);
    frame
}

/// One sync writer: sends an update and a SYNC_STATUS for each key, without waiting,
/// until the connection closes; returns the keys whose SYNC_STATUS came back.
async fn sync_writer(
    url: String,
    writer: usize,
    started: Arc<tokio::sync::Barrier>,
) -> Vec<String> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connects");
    let (mut sink, mut stream) = ws.split();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut first = Some(first_tx);
        let mut echoed = Vec::new();
        loop {
            match tokio::time::timeout(GUARD, stream.next())
                .await
                .expect("no hang")
            {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&102) => {
                    echoed.push(u64::from_le_bytes(b[2..10].try_into().unwrap()));
                    if let Some(tx) = first.take() {
                        let _ = tx.send(());
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
        echoed
    });
    let doc = yrs::Doc::new();
    let mut first_rx = Some(first_rx);
    let mut sent = 0u64;
    loop {
        let key = format!("s{writer}-{sent}");
        let frames = [update_frame(&doc, &key), status_frame(sent)];
        let mut closed = false;
        for frame in frames {
            if sink.send(Message::binary(frame)).await.is_err() {
                closed = true;
                break;
            }
        }
        if closed || reader.is_finished() {
            break;
        }
        sent += 1;
        if let Some(rx) = first_rx.take() {
            // Start the race once this connection's first write is acknowledged.
            let _ = tokio::time::timeout(GUARD, rx).await;
            started.wait().await;
        }
        tokio::task::yield_now().await;
    }
    if first_rx.is_some() {
        started.wait().await;
    }
    let echoed = tokio::time::timeout(GUARD, reader).await.unwrap().unwrap();
    // An echo acknowledges everything the connection sent before it.
    let last = echoed.into_iter().max().map_or(0, |v| v + 1);
    (0..last).map(|v| format!("s{writer}-{v}")).collect()
}

/// Dynamic docs (one room per writer) and a shared room, over `provider`: every key whose
/// SYNC_STATUS came back is in the stored doc after `destroy()`.
async fn sync_race(provider: Arc<dyn StorageProvider>) {
    let options = ServerOptions {
        storage: provider.clone(),
        // No grace for connections: rooms are released while they may still be writing.
        shutdown_timeout: Duration::ZERO,
        ..ServerOptions::default()
    };
    let server = create_server([], options).unwrap();
    let addr = serve(Router::new().nest("/api", server.router())).await;
    let started = Arc::new(tokio::sync::Barrier::new(WRITERS + 1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let room = if w % 2 == 0 {
                "shared".to_string()
            } else {
                format!("own{w}")
            };
            let url = format!("ws://{addr}/api/workspaces/{room}/sync");
            (room, tokio::spawn(sync_writer(url, w, started.clone())))
        })
        .collect();
    started.wait().await;
    tokio::time::timeout(GUARD, server.destroy())
        .await
        .expect("destroy finishes")
        .expect("destroy succeeds");
    let mut acked: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (room, writer) in writers {
        let keys = tokio::time::timeout(GUARD, writer).await.unwrap().unwrap();
        acked.entry(room).or_default().extend(keys);
    }
    for (room, acked) in acked {
        let stored = stored_keys(&*provider, &room).await;
        let lost: Vec<_> = acked.iter().filter(|k| !stored.contains(k)).collect();
        assert!(
            lost.is_empty(),
            "room {room}: acknowledged but not stored: {lost:?}"
        );
    }
}

/// The keys of map `m` in the doc stored under `room`.
async fn stored_keys(provider: &dyn StorageProvider, room: &str) -> Vec<String> {
    use yrs::{Map, Transact};
    let storage = provider.open(room, None).expect("reopens");
    let doc = yrs::Doc::new();
    for update in storage.load().unwrap() {
        let update = yrs::updates::decoder::Decode::decode_v1(&update).unwrap();
        doc.transact_mut().apply_update(update).unwrap();
    }
    let map = doc.get_or_insert_map("m");
    let txn = doc.transact();
    let keys = map.keys(&txn).map(str::to_string).collect();
    drop(txn);
    storage.close().await.unwrap();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_updates_racing_destroy_are_durable_or_refused() {
    for _ in 0..ROUNDS / 3 {
        let dir = tempfile::tempdir().unwrap();
        sync_race(Arc::new(SqliteStorage::new(dir.path()))).await;
        sync_race(Arc::new(MemoryStorage::new())).await;
    }
}

/// A workspace room whose client is destroyed directly (say, by the application) while
/// connections write to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_updates_racing_a_client_destroy_are_durable_or_refused() {
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::new(dir.path());
        let client = blog().with_storage(storage.clone()).create().await.unwrap();
        let server = create_server([client.clone()], ServerOptions::default()).unwrap();
        let addr = serve(Router::new().nest("/api", server.router())).await;
        let started = Arc::new(tokio::sync::Barrier::new(WRITERS + 1));
        let url = format!("ws://{addr}/api/workspaces/blog/sync");
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(sync_writer(url.clone(), w, started.clone())))
            .collect();
        started.wait().await;
        tokio::time::timeout(GUARD, client.destroy())
            .await
            .expect("destroy finishes")
            .expect("destroy succeeds");
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(tokio::time::timeout(GUARD, w).await.unwrap().unwrap());
        }
        let stored = stored_keys(&storage, "blog").await;
        let lost: Vec<_> = acked.iter().filter(|k| !stored.contains(k)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged but not stored: {lost:?}"
        );
        server.destroy().await.unwrap();
    }
}
