//! An acknowledged write is never lost: a client streams updates over a sync connection,
//! each followed by SYNC_STATUS; the server process is SIGKILLed mid-stream and restarted,
//! several times; every update whose SYNC_STATUS was echoed before the kill is there.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, ReadTxn, StateVector, Transact, Update};

const GUARD: Duration = Duration::from_secs(30);
const CYCLES: u64 = 3;

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap()
}

/// Not a test on its own: the server child process (a no-op without the env var).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_role() {
    let Ok(dir) = std::env::var("EPICENTER_SYNC_CHILD_DIR") else {
        return;
    };
    let client = blog()
        .with_storage(SqliteStorage::new(&dir))
        .create()
        .await
        .unwrap();
    let server = create_server([client], ServerOptions::default().port(0)).unwrap();
    let addr = server.start().await.unwrap();
    println!("listening {addr}");
    std::future::pending::<()>().await;
}

fn spawn_server(dir: &Path) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
        .env("EPICENTER_SYNC_CHILD_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the child printed its address")
            .unwrap();
        // The test harness may print on the same line before it.
        if let Some((_, addr)) = line.split_once("listening ") {
            break addr.trim().to_string();
        }
    };
    (child, addr)
}

fn status(version: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    yrs::encoding::write::Write::write_var(&mut payload, version);
    Message::Custom(102, payload).encode_v1()
}

fn version_of(frame: &[u8]) -> Option<u64> {
    match Message::decode(&mut DecoderV1::from(frame)).ok()? {
        Message::Custom(102, payload) => {
            yrs::encoding::read::Read::read_var(&mut yrs::encoding::read::Cursor::new(&payload))
                .ok()
        }
        _ => None,
    }
}

/// Streams `m.set(i, i)` updates from `start`, each followed by SYNC_STATUS `i`, until the
/// connection dies; `kill` runs once `acked_before_kill` of them were echoed. Returns the
/// highest echoed `i`.
async fn stream_until_killed(
    addr: &str,
    start: u64,
    acked_before_kill: u64,
    kill: impl FnOnce(),
) -> u64 {
    let url = format!("ws://{addr}/workspaces/blog/sync");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let writer = tokio::spawn(async move {
        let doc = Doc::new();
        let map = doc.get_or_insert_map("m");
        for i in start.. {
            let before = doc.transact().state_vector();
            map.insert(&mut doc.transact_mut(), i.to_string(), i as f64);
            let update = doc.transact().encode_state_as_update_v1(&before);
            let frames = [
                Message::Sync(SyncMessage::Update(update)).encode_v1(),
                status(i),
            ];
            for frame in frames {
                if tx.send(Ws::Binary(frame.into())).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut acked = None;
    let mut kill = Some(kill);
    loop {
        match tokio::time::timeout(GUARD, rx.next())
            .await
            .expect("frames in time")
        {
            Some(Ok(Ws::Binary(frame))) => {
                if let Some(v) = version_of(&frame) {
                    assert!(acked < Some(v), "echoes out of order");
                    acked = Some(v);
                    if v >= start + acked_before_kill {
                        if let Some(kill) = kill.take() {
                            // SIGKILL while updates and statuses are still in flight.
                            kill();
                        }
                    }
                }
            }
            Some(Ok(Ws::Close(frame))) => panic!("the server closed the stream: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    // Never leave the server running, even if the stream ended first.
    if let Some(kill) = kill.take() {
        kill();
    }
    writer.abort();
    acked.expect("some writes were acknowledged")
}

/// The map `m` of the server's doc, through a fresh sync connection.
async fn server_map(addr: &str) -> Doc {
    let url = format!("ws://{addr}/workspaces/blog/sync");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Ws::Binary(
        Message::Sync(SyncMessage::SyncStep1(StateVector::default()))
            .encode_v1()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        let frame = match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(frame))) => frame,
            Some(Ok(_)) => continue,
            other => panic!("no step2: {other:?}"),
        };
        if let Ok(Message::Sync(SyncMessage::SyncStep2(update))) =
            Message::decode(&mut DecoderV1::from(&frame[..]))
        {
            let doc = Doc::new();
            doc.transact_mut()
                .apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
            return doc;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_echoed_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut next = 0;
    for cycle in 0..CYCLES {
        let (mut child, addr) = spawn_server(dir.path());
        // `Child::kill` is SIGKILL on Unix: no chance to flush or clean up.
        let acked = stream_until_killed(&addr, next, 200, || child.kill().unwrap()).await;
        child.wait().unwrap();

        let (mut child, addr) = spawn_server(dir.path());
        let doc = server_map(&addr).await;
        let map = doc.get_or_insert_map("m");
        let txn = doc.transact();
        for i in 0..=acked {
            assert!(
                map.get(&txn, &i.to_string()).is_some(),
                "cycle {cycle}: update {i} was acknowledged (up to {acked}) but is missing"
            );
        }
        drop(txn);
        child.kill().unwrap();
        child.wait().unwrap();
        next = acked + 1;
    }
}
