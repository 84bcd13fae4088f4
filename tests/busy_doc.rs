//! Work waiting for a busy doc parks no async worker: while a transaction holds one
//! workspace's doc (as a big update does for seconds), sync messages and REST writes for
//! that doc wait off the workers, and REST reads and pings elsewhere are answered at once.
//!
//! The server runs on a runtime of one worker, so a single parked worker stops it all; the
//! test's clients run on their own runtime, so a stopped server shows as a guard timeout.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::workspace::{id, text, WorkspaceClient, WorkspaceDefinition};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::{Bytes, Message as Ws};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, StateVector, Text, Transact};

const GUARD: Duration = Duration::from_secs(10);
const SYNC_STATUS: &[u8] = &[102, 1, 7];

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Setup {
    server_rt: Runtime,
    clients: Runtime,
    server: Server,
    addr: SocketAddr,
    busy: WorkspaceClient,
}

fn setup() -> Setup {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let clients = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (server, addr, busy) = server_rt.block_on(async {
        let create = |name: &str| {
            WorkspaceDefinition::builder(name)
                .table("posts", [("id", id()), ("title", text())])
                .build()
                .unwrap()
                .in_memory()
                .create()
        };
        let busy = create("busy").await.unwrap();
        let quiet = create("quiet").await.unwrap();
        quiet
            .table("posts")
            .unwrap()
            .upsert(json!({"id": "q1", "title": "quiet"}))
            .unwrap();
        let options = ServerOptions::default().port(0).metrics(true);
        let server = create_server([busy.clone(), quiet], options).unwrap();
        let addr = server.start().await.unwrap();
        (server, addr, busy)
    });
    Setup {
        server_rt,
        clients,
        server,
        addr,
        busy,
    }
}

async fn open(addr: SocketAddr, room: &str) -> Socket {
    let url = format!("ws://{addr}/workspaces/{room}/sync");
    let (mut ws, _) = tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(url))
        .await
        .expect("connected in time")
        .unwrap();
    // The server's step 1 says the connection has joined its room.
    assert!(
        next_binary(&mut ws).await.starts_with(&[0, 0]),
        "step 1 first"
    );
    ws
}

/// The next binary message.
async fn next_binary(ws: &mut Socket) -> Bytes {
    loop {
        match tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Ws::Binary(b))) => return b,
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// What must be answered while the busy doc is held: a REST read of another workspace and
/// a ping on a connection of another room.
async fn others_are_served(addr: SocketAddr, quiet: &mut Socket) {
    let url = format!("http://{addr}/workspaces/quiet/tables/posts/q1");
    let read = tokio::time::timeout(GUARD, reqwest::get(url))
        .await
        .expect("a REST read of another workspace is answered while the doc is busy")
        .unwrap();
    assert_eq!(read.status(), 200);
    quiet
        .send(Ws::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(GUARD, quiet.next())
            .await
            .expect("a ping in another room is answered while the doc is busy")
        {
            Some(Ok(Ws::Pong(_))) => break,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Sync messages the server has taken for handling (from `/metrics`).
async fn messages_received(addr: SocketAddr) -> f64 {
    let scrape = tokio::time::timeout(GUARD, async {
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
    .await
    .expect("/metrics is answered while the doc is busy");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix("epicenter_sync_messages_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the counter is in the scrape")
}

/// Holds a write transaction on `client`'s doc on another thread until `release` is sent.
fn hold_doc(client: &WorkspaceClient) -> mpsc::Sender<()> {
    let (release, released) = mpsc::channel::<()>();
    let (held, is_held) = mpsc::channel();
    let client = client.clone();
    std::thread::spawn(move || {
        let _txn = client.doc().transact_mut();
        held.send(()).unwrap();
        let _ = released.recv();
    });
    is_held.recv().unwrap();
    release
}

/// Waits (polling the /metrics counter) until the server has taken `n` more sync messages.
async fn until_taken(addr: SocketAddr, before: f64, n: f64) {
    while messages_received(addr).await < before + n {
        tokio::task::yield_now().await;
    }
}

#[test]
fn sync_messages_for_a_busy_doc_wait_off_the_workers_in_order() {
    let Setup {
        server_rt,
        clients,
        server,
        addr,
        busy,
    } = setup();
    clients.block_on(async {
        let mut writer = open(addr, "busy").await;
        let mut quiet = open(addr, "quiet").await;
        // A step 1 while the doc is held: answered with its step 2 once it is free.
        let release = hold_doc(&busy);
        let before = messages_received(addr).await;
        let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
        writer.send(Ws::Binary(step1.into())).await.unwrap();
        until_taken(addr, before, 1.0).await;
        others_are_served(addr, &mut quiet).await;
        release.send(()).unwrap();
        loop {
            let frame = next_binary(&mut writer).await;
            if frame.starts_with(&[0, 1]) {
                break;
            }
        }

        // An update and SYNC_STATUS while the doc is held: applied once it is free, and
        // the echo follows.
        let release = hold_doc(&busy);
        let before = messages_received(addr).await;
        let doc = yrs::Doc::new();
        let t = doc.get_or_insert_text("notes");
        t.insert(&mut doc.transact_mut(), 0, "written while busy");
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let update = Message::Sync(SyncMessage::Update(update)).encode_v1();
        writer.send(Ws::Binary(update.into())).await.unwrap();
        writer
            .send(Ws::Binary(Bytes::from_static(SYNC_STATUS)))
            .await
            .unwrap();
        until_taken(addr, before, 1.0).await;
        others_are_served(addr, &mut quiet).await;
        release.send(()).unwrap();
        while next_binary(&mut writer).await[..] != *SYNC_STATUS {}
        let notes = busy.doc().get_or_insert_text("notes");
        assert_eq!(
            notes.get_string(&busy.doc().transact()),
            "written while busy",
            "the update is applied before its SYNC_STATUS is echoed"
        );
    });
    server_rt.block_on(server.destroy()).unwrap();
}

#[test]
fn a_rest_write_to_a_busy_doc_waits_off_the_workers() {
    let Setup {
        server_rt,
        clients,
        server,
        addr,
        busy,
    } = setup();
    clients.block_on(async {
        let mut quiet = open(addr, "quiet").await;
        // A read transaction: the write waits for it, and while a writer waits no new
        // read can start, which tells the test the write has begun.
        let reading = busy.doc().transact();
        let post = tokio::spawn(
            reqwest::Client::new()
                .post(format!("http://{addr}/workspaces/busy/tables/posts"))
                .json(&json!({"id": "b1", "title": "busy"}))
                .send(),
        );
        tokio::time::timeout(GUARD, async {
            while busy.doc().try_transact().is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the write waits for the doc");
        others_are_served(addr, &mut quiet).await;
        drop(reading);
        let created = tokio::time::timeout(GUARD, post)
            .await
            .expect("the write is answered once the doc is free")
            .unwrap()
            .unwrap();
        assert_eq!(created.status(), 201);
    });
    server_rt.block_on(server.destroy()).unwrap();
}

#[test]
fn an_empty_step_2_is_acknowledged_while_the_doc_is_busy() {
    let Setup {
        server_rt,
        clients,
        server,
        addr,
        busy,
    } = setup();
    clients.block_on(async {
        let mut joiner = open(addr, "busy").await;
        // A new client's answer to the server's step 1 carries nothing: it needs no
        // transaction, so neither it nor the SYNC_STATUS after it waits for the busy doc.
        let release = hold_doc(&busy);
        let empty = Message::Sync(SyncMessage::SyncStep2(vec![0, 0])).encode_v1();
        joiner.send(Ws::Binary(empty.into())).await.unwrap();
        joiner
            .send(Ws::Binary(Bytes::from_static(SYNC_STATUS)))
            .await
            .unwrap();
        assert_eq!(
            next_binary(&mut joiner).await[..],
            *SYNC_STATUS,
            "the echo comes while the doc is still held"
        );
        release.send(()).unwrap();
    });
    server_rt.block_on(server.destroy()).unwrap();
}
