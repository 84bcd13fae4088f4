//! Ids chosen by clients must not grow the disk (or memory) by themselves: a dynamic doc
//! that was opened but never written leaves no file once its room is evicted, and the
//! memory provider forgets it; a written one is kept.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::storage::{MemoryStorage, SqliteStorage, StorageProvider};
use epicenter_server::sync::RoomEvent;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const GUARD: Duration = Duration::from_secs(20);

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Connects to room `id`, handshakes (and writes one update when `write`, waiting for its
/// SYNC_STATUS echo), then leaves.
async fn visit(base: &str, id: &str, write: bool) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{base}/workspaces/{id}/sync"))
        .await
        .unwrap();
    // step1 of an empty doc, then SYNC_STATUS: its echo means the step1 was handled.
    ws.send(Message::binary(vec![0, 0, 1, 0])).await.unwrap();
    if write {
        use yrs::{Map, ReadTxn, Transact};
        let doc = yrs::Doc::new();
        let map = doc.get_or_insert_map("m");
        map.insert(&mut doc.transact_mut(), "k", "v");
        let update = doc
            .transact()
            .encode_state_as_update_v1(&Default::default());
        let mut frame = vec![0, 2, update.len() as u8];
        frame.extend_from_slice(&update);
        ws.send(Message::binary(frame)).await.unwrap();
    }
    ws.send(Message::binary(vec![102, 1, 9])).await.unwrap();
    loop {
        match tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("no hang")
        {
            Some(Ok(Message::Binary(b))) if b[..] == [102, 1, 9] => break,
            Some(Ok(_)) => {}
            end => panic!("no echo: {end:?}"),
        }
    }
    ws.close(None).await.unwrap();
}

/// Visits `ids` (writing only to `kept`) on a server storing dynamic docs in `provider`,
/// and waits until every room was evicted.
async fn visit_all(provider: Arc<dyn StorageProvider>, ids: &[&str], kept: &str) {
    let options = ServerOptions {
        storage: provider,
        ..ServerOptions::default()
            .port(0)
            .room_idle_timeout(Duration::from_millis(10))
    };
    let server = create_server([], options).unwrap();
    let mut events = server.sync().events();
    let base = format!("ws://{}", server.start().await.unwrap());
    for id in ids {
        visit(&base, id, *id == kept).await;
    }
    let mut evicted = 0;
    while evicted < ids.len() {
        match tokio::time::timeout(GUARD, events.recv())
            .await
            .expect("evicted")
        {
            Ok(RoomEvent::Evicted(_)) => evicted += 1,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    server.destroy().await.unwrap();
}

const IDS: [&str; 4] = ["r1", "r2", "kept", "r-x.y"];

#[tokio::test]
async fn never_written_dynamic_docs_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    visit_all(Arc::new(SqliteStorage::new(dir.path())), &IDS, "kept").await;
    assert_eq!(files(dir.path()), ["kept.db", "kept.db.lock"]);
    // Visited again, the written doc still holds its update; the others start empty.
    let storage = SqliteStorage::new(dir.path());
    let kept = storage.open("kept", None).unwrap();
    assert_eq!(kept.load().unwrap().len(), 1);
    kept.close().await.unwrap();
    let empty = storage.open("r1", None).unwrap();
    assert!(empty.load().unwrap().is_empty());
    empty.close().await.unwrap();
    assert_eq!(files(dir.path()), ["kept.db", "kept.db.lock"]);
}

#[tokio::test]
async fn never_written_dynamic_docs_are_forgotten_in_memory() {
    let memory = MemoryStorage::new();
    visit_all(Arc::new(memory.clone()), &IDS, "kept").await;
    assert_eq!(memory.stored_docs(), 1);
}

#[tokio::test]
async fn an_empty_doc_being_removed_never_gives_two_owners() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::new(dir.path());
    // Openers racing the removal of a never-written doc: whoever gets it is the only owner
    // until it closes, and each close of an empty doc removes its files.
    for _ in 0..50 {
        let first = storage.open("x", None).unwrap();
        let racer = {
            let storage = storage.clone();
            std::thread::spawn(move || storage.open("x", None))
        };
        first.close().await.unwrap();
        let second = racer.join().unwrap();
        let third = storage.open("x", None);
        match (second, third) {
            (Ok(a), Err(_)) => a.close().await.unwrap(),
            (Err(_), Ok(b)) => b.close().await.unwrap(),
            (Ok(_), Ok(_)) => panic!("two owners of one doc"),
            (Err(a), Err(b)) => {
                // Both lost to each other's lock: neither may still hold it.
                let again = storage
                    .open("x", None)
                    .unwrap_or_else(|_| panic!("{a} / {b}"));
                again.close().await.unwrap();
            }
        }
    }
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}
