//! The Rust sync provider against the real server (port 0) and against small raw servers
//! that misbehave on purpose.
#![cfg(feature = "client")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use epicenter_server::client::{Auth, ProviderOptions, Status, SyncProvider};
use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::storage::{
    BoxFuture, DocStorage, MemoryStorage, RowChange, SqliteStorage, StorageProvider,
};
use epicenter_server::workspace::*;
use epicenter_server::StorageError;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::WebSocketStream;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

const GUARD: Duration = Duration::from_secs(15);

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .expect("valid definition")
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start(clients: Vec<WorkspaceClient>, options: ServerOptions) -> (Server, SocketAddr) {
    init_tracing();
    let server = create_server(clients, options).expect("server");
    let addr = server.start().await.expect("start");
    (server, addr)
}

fn url(addr: SocketAddr, room: &str) -> String {
    format!("ws://{addr}/workspaces/{room}/sync")
}

fn provider(doc: &Doc, url: String, options: ProviderOptions) -> SyncProvider {
    let provider = SyncProvider::new(doc.clone(), url, options).expect("provider");
    provider.connect().expect("connect");
    provider
}

async fn until<T>(rx: &mut watch::Receiver<T>, what: &str, f: impl FnMut(&T) -> bool) {
    tokio::time::timeout(GUARD, rx.wait_for(f))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("provider alive");
}

async fn connected(p: &SyncProvider) {
    until(&mut p.status(), "connected", |s| *s == Status::Connected).await;
}

async fn clean(p: &SyncProvider) {
    until(&mut p.has_local_changes(), "clean", |dirty| !dirty).await;
}

/// The title of post `id` in `client`, or a note that it is missing or invalid.
fn title(client: &WorkspaceClient, id: &str) -> String {
    match client.table("posts").unwrap().get(id) {
        RowResult::Valid(row) => row["title"].as_str().unwrap_or_default().to_string(),
        other => format!("{other:?}"),
    }
}

fn push_text(doc: &Doc, s: &str) {
    let text = doc.get_or_insert_text("t");
    text.push(&mut doc.transact_mut(), s);
}

fn text_of(doc: &Doc) -> String {
    let text = doc.get_or_insert_text("t");
    text.get_string(&doc.transact())
}

/// Waits until `doc`'s text satisfies `f` (checked on every update of the doc).
async fn text_until(doc: &Doc, f: impl Fn(&str) -> bool) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let key = "test-wait";
    doc.observe_update_v1(key, move |_, _| {
        let _ = tx.send(());
    })
    .unwrap();
    let result = tokio::time::timeout(GUARD, async {
        while !f(&text_of(doc)) {
            rx.recv().await;
        }
    })
    .await;
    let _ = doc.unobserve_update_v1(key);
    result.unwrap_or_else(|_| panic!("the doc never got there: {:?}", text_of(doc)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_converge_and_see_each_others_awareness() {
    let (server, addr) = start(vec![], ServerOptions::default().port(0)).await;
    let (a_doc, b_doc) = (Doc::new(), Doc::new());
    let a = provider(&a_doc, url(addr, "notes"), ProviderOptions::default());
    let b = provider(&b_doc, url(addr, "notes"), ProviderOptions::default());
    connected(&a).await;
    connected(&b).await;
    push_text(&a_doc, "from a;");
    text_until(&b_doc, |t| t.contains("from a;")).await;
    push_text(&b_doc, "from b;");
    text_until(&a_doc, |t| t.contains("from b;")).await;
    assert_eq!(text_of(&a_doc), text_of(&b_doc));
    clean(&a).await;
    clean(&b).await;

    a.set_awareness(json!({"user": "a"})).unwrap();
    let a_id = a_doc.client_id().get();
    until(&mut b.peers(), "a's awareness", |p| {
        p.get(&a_id) == Some(&json!({"user": "a"}))
    })
    .await;
    a.destroy().await;
    assert_eq!(*a.status().borrow(), Status::Offline);
    until(&mut b.peers(), "a's awareness removed", |p| {
        !p.contains_key(&a_id)
    })
    .await;
    // Destroyed for good.
    assert!(a.connect().is_err());
    b.destroy().await;
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_goes_through_each_state_in_order() {
    let (server, addr) = start(vec![], ServerOptions::default().port(0)).await;
    let doc = Doc::new();
    let p = SyncProvider::new(doc.clone(), url(addr, "s"), ProviderOptions::default()).unwrap();
    assert_eq!(*p.status().borrow(), Status::Offline);
    let mut events = p.status_events();
    p.connect().unwrap();
    p.connect().unwrap(); // idempotent
    let mut seen = Vec::new();
    while seen.last() != Some(&Status::Connected) {
        seen.push(
            tokio::time::timeout(GUARD, events.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        [Status::Connecting, Status::Handshaking, Status::Connected]
    );
    // The server goes away: the provider falls back to connecting.
    server.destroy().await.unwrap();
    let next = tokio::time::timeout(GUARD, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next, Status::Connecting);
    p.disconnect().await;
    p.disconnect().await; // idempotent
    assert_eq!(*p.status().borrow(), Status::Offline);
    p.destroy().await;
    p.destroy().await; // idempotent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_reach_the_server_after_it_restarts_and_clean_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let server_client = blog()
        .with_storage(SqliteStorage::new(dir.path()))
        .create()
        .await
        .unwrap();
    let (server, addr) = start(vec![server_client], ServerOptions::default().port(0)).await;

    let local = blog().in_memory().create().await.unwrap();
    let options = ProviderOptions::default().backoff_base(Duration::from_millis(50));
    let p = SyncProvider::for_workspace(&local, &format!("http://{addr}"), options).unwrap();
    assert_eq!(p.url(), url(addr, "blog"));
    p.connect().unwrap();
    connected(&p).await;
    let posts = local.table("posts").unwrap();
    posts
        .upsert(json!({"id": "p1", "title": "online"}))
        .unwrap();
    clean(&p).await;
    assert_eq!(title(server.client("blog").unwrap(), "p1"), "online");

    // The server stops; edits made meanwhile wait locally.
    let mut status = p.status();
    server.destroy().await.unwrap();
    until(&mut status, "reconnecting", |s| *s == Status::Connecting).await;
    posts
        .upsert(json!({"id": "p2", "title": "offline"}))
        .unwrap();
    posts
        .upsert(json!({"id": "p1", "title": "edited offline"}))
        .unwrap();
    assert!(*p.has_local_changes().borrow());

    // Back on the same port, from the same files.
    let server_client = blog()
        .with_storage(SqliteStorage::new(dir.path()))
        .create()
        .await
        .unwrap();
    let restarted = create_server(
        vec![server_client],
        ServerOptions::default().port(addr.port()),
    )
    .unwrap();
    restarted.start().await.unwrap();
    // Clean only once the server holds the offline edits: checked the moment it says so.
    let mut dirty = p.has_local_changes();
    let served = restarted.client("blog").unwrap();
    tokio::time::timeout(GUARD, async {
        loop {
            dirty.changed().await.unwrap();
            if !*dirty.borrow_and_update() {
                break;
            }
        }
    })
    .await
    .expect("clean after the restart");
    assert_eq!(title(served, "p2"), "offline");
    assert_eq!(title(served, "p1"), "edited offline");
    p.destroy().await;
    restarted.destroy().await.unwrap();
    local.destroy().await.unwrap();
}

/// Memory storage whose flushes wait while the gate is closed.
struct Gated {
    inner: MemoryStorage,
    open: watch::Receiver<bool>,
}

struct GatedDoc {
    inner: Box<dyn DocStorage>,
    open: watch::Receiver<bool>,
}

impl StorageProvider for Gated {
    fn open(
        &self,
        doc_id: &str,
        definition: Option<&WorkspaceDefinition>,
    ) -> Result<Box<dyn DocStorage>, StorageError> {
        Ok(Box::new(GatedDoc {
            inner: self.inner.open(doc_id, definition)?,
            open: self.open.clone(),
        }))
    }
}

impl DocStorage for GatedDoc {
    fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        self.inner.load()
    }
    fn append(&self, update: Vec<u8>, rows: Vec<RowChange>) {
        self.inner.append(update, rows)
    }
    fn flush(&self) -> BoxFuture<Result<(), StorageError>> {
        let flush = self.inner.flush();
        let mut open = self.open.clone();
        Box::pin(async move {
            let _ = open.wait_for(|open| *open).await;
            flush.await
        })
    }
    fn close(&self) -> BoxFuture<Result<(), StorageError>> {
        self.inner.close()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn has_local_changes_clears_only_once_the_server_has_them_durably() {
    let (gate, open) = watch::channel(true);
    let storage = Gated {
        inner: MemoryStorage::new(),
        open,
    };
    let options = ServerOptions::default().port(0).storage(Arc::new(storage));
    let (server, addr) = start(vec![], options).await;
    let (a_doc, b_doc) = (Doc::new(), Doc::new());
    let a = provider(&a_doc, url(addr, "d"), ProviderOptions::default());
    let b = provider(&b_doc, url(addr, "d"), ProviderOptions::default());
    connected(&a).await;
    connected(&b).await;
    assert!(!*a.has_local_changes().borrow());

    gate.send_replace(false);
    push_text(&a_doc, "pending");
    assert!(
        *a.has_local_changes().borrow(),
        "dirty as soon as the edit is made"
    );
    // The server has applied it (b got it) but cannot make it durable yet.
    text_until(&b_doc, |t| t == "pending").await;
    // Probes keep flowing while the link is fine; none of them may clear the flag.
    let mut dirty = a.has_local_changes();
    let stayed = tokio::time::timeout(Duration::from_millis(2500), dirty.wait_for(|d| !d)).await;
    assert!(
        stayed.is_err(),
        "reported clean before the server's storage had it"
    );
    gate.send_replace(true);
    clean(&a).await;
    a.destroy().await;
    b.destroy().await;
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_close_code_stops_retrying() {
    // Unknown room with dynamic docs off: 4404 from the real server.
    let client = blog().in_memory().create().await.unwrap();
    let (server, addr) = start(vec![client], ServerOptions::default().port(0)).await;
    let fast = ProviderOptions::default().backoff_base(Duration::from_millis(10));
    let p = provider(&Doc::new(), url(addr, "nope"), fast.clone());
    until(&mut p.status(), "error", |s| {
        matches!(s, Status::Error { .. })
    })
    .await;
    assert_eq!(
        *p.status().borrow(),
        Status::Error {
            code: 4404,
            reason: "Room not found: nope".into()
        }
    );
    // No further attempt, though retries would come every few milliseconds.
    let opened = server.sync().stats().connections_opened;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.sync().stats().connections_opened, opened);
    p.destroy().await;
    server.destroy().await.unwrap();

    // 4401 from a raw server; another connect() tries again.
    let (addr, mut accepted) = raw_server().await;
    let p = provider(&Doc::new(), format!("ws://{addr}/x"), fast);
    let mut first = next_accept(&mut accepted).await;
    first
        .ws
        .close(Some(CloseFrame {
            code: 4401.into(),
            reason: "Unauthorized".into(),
        }))
        .await
        .unwrap();
    until(&mut p.status(), "error", |s| {
        matches!(s, Status::Error { code: 4401, .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(accepted.try_recv().is_err(), "retried after 4401");
    p.connect().unwrap();
    next_accept(&mut accepted).await;
    p.destroy().await;
}

/// One connection accepted by a raw server.
struct Accepted {
    uri: String,
    ws: WebSocketStream<TcpStream>,
}

/// A WebSocket server that hands every connection to the test.
// The handshake callback's error type is tungstenite's (a whole HTTP response).
#[allow(clippy::result_large_err)]
async fn raw_server() -> (SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let uri = Arc::new(Mutex::new(String::new()));
                let seen = uri.clone();
                let callback =
                    move |req: &tokio_tungstenite::tungstenite::handshake::server::Request, res| {
                        *seen.lock().unwrap() = req.uri().to_string();
                        Ok(res)
                    };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await {
                    let uri = uri.lock().unwrap().clone();
                    let _ = tx.send(Accepted { uri, ws });
                }
            });
        }
    });
    (addr, rx)
}

async fn next_accept(rx: &mut mpsc::UnboundedReceiver<Accepted>) -> Accepted {
    tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("a connection in time")
        .expect("server alive")
}

/// The step2 of an empty doc.
fn empty_step2() -> Ws {
    let empty = Doc::new()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    Ws::Binary(
        Message::Sync(SyncMessage::SyncStep2(empty))
            .encode_v1()
            .into(),
    )
}

/// Plays the server's side of the handshake: step1, then step2 for the client's step1,
/// echoing SYNC_STATUS; returns once `echoes` echoes were sent.
async fn handshake(ws: &mut WebSocketStream<TcpStream>, echoes: usize) {
    let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
    ws.send(Ws::Binary(step1.into())).await.unwrap();
    let mut echoed = 0;
    while echoed < echoes {
        let frame = match ws.next().await {
            Some(Ok(Ws::Binary(frame))) => frame,
            Some(Ok(_)) => continue,
            other => panic!("client left during the handshake: {other:?}"),
        };
        match Message::decode_v1(&frame).unwrap() {
            Message::Sync(SyncMessage::SyncStep1(_)) => {
                ws.send(empty_step2()).await.unwrap();
            }
            Message::Custom(102, _) => {
                ws.send(Ws::Binary(frame)).await.unwrap();
                echoed += 1;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_is_detected_within_5_s() {
    let (addr, mut accepted) = raw_server().await;
    let doc = Doc::new();
    let p = provider(
        &doc,
        format!("ws://{addr}/silent"),
        ProviderOptions::default(),
    );
    let mut conn = next_accept(&mut accepted).await;
    handshake(&mut conn.ws, 1).await;
    connected(&p).await;
    // From now on the server keeps the socket open but neither reads nor writes.
    let last_frame = Instant::now();
    let mut status = p.status();
    until(&mut status, "detection", |s| *s != Status::Connected).await;
    let detected = last_frame.elapsed();
    assert!(
        detected >= Duration::from_millis(4500) && detected <= Duration::from_millis(5600),
        "detected after {detected:?}"
    );
    // And it reconnects.
    next_accept(&mut accepted).await;
    drop(conn);
    p.destroy().await;
}

/// A listener that reads each HTTP request and answers 503: records when, and the path.
async fn refusing_server() -> (SocketAddr, mpsc::UnboundedReceiver<(Instant, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let at = Instant::now();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let path = line.split(' ').nth(1).unwrap_or_default().to_string();
            let _ = tcp
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
            let _ = tx.send((at, path));
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_back_off_by_the_formula() {
    let (addr, mut attempts) = refusing_server().await;
    let p = provider(
        &Doc::new(),
        format!("ws://{addr}/x"),
        ProviderOptions::default(),
    );
    let mut times = Vec::new();
    for _ in 0..4 {
        let (at, _) = tokio::time::timeout(GUARD, attempts.recv())
            .await
            .unwrap()
            .unwrap();
        times.push(at);
    }
    p.destroy().await;
    // 500 ms × 1.1^n after the n-th failure in a row.
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let expected = Duration::from_millis(500).mul_f64(1.1f64.powi(n as i32 + 1));
        assert!(
            gap >= expected && gap <= expected + Duration::from_millis(300),
            "gap {n}: {gap:?}, expected {expected:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reach_the_server_and_a_callback_is_asked_again_every_3_failures() {
    // A static token, percent-encoded into the query.
    let (addr, mut accepted) = raw_server().await;
    let options = ProviderOptions::default().auth(Auth::token("s3cret/+"));
    let p = provider(
        &Doc::new(),
        format!("ws://{addr}/workspaces/w/sync"),
        options,
    );
    let conn = next_accept(&mut accepted).await;
    assert_eq!(conn.uri, "/workspaces/w/sync?token=s3cret%2F%2B");
    p.destroy().await;

    // A callback: asked before the first attempt and after every 3 failed ones.
    let (addr, mut attempts) = refusing_server().await;
    let asked = Arc::new(Mutex::new(0));
    let counter = asked.clone();
    let options = ProviderOptions::default()
        .backoff_base(Duration::from_millis(5))
        .auth(Auth::callback(move || {
            let counter = counter.clone();
            async move {
                let mut n = counter.lock().unwrap();
                *n += 1;
                Ok::<_, String>(format!("t{n}"))
            }
        }));
    let p = provider(&Doc::new(), format!("ws://{addr}/s"), options);
    let mut paths = Vec::new();
    for _ in 0..7 {
        let (_, path) = tokio::time::timeout(GUARD, attempts.recv())
            .await
            .unwrap()
            .unwrap();
        paths.push(path);
    }
    p.destroy().await;
    let tokens: Vec<&str> = paths
        .iter()
        .map(|p| p.rsplit('=').next().unwrap())
        .collect();
    assert_eq!(tokens, ["t1", "t1", "t1", "t2", "t2", "t2", "t3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_sends_the_awareness_removal_before_closing() {
    let (addr, mut accepted) = raw_server().await;
    let doc = Doc::new();
    let p = provider(&doc, format!("ws://{addr}/a"), ProviderOptions::default());
    p.set_awareness(json!({"user": "me"})).unwrap();
    let mut conn = next_accept(&mut accepted).await;
    handshake(&mut conn.ws, 1).await;
    connected(&p).await;
    let destroy = tokio::spawn(async move { p.destroy().await });
    let mut last_state = None;
    loop {
        let frame = tokio::time::timeout(GUARD, conn.ws.next()).await.unwrap();
        match frame {
            Some(Ok(Ws::Binary(frame))) => {
                if let Ok(Message::Awareness(update)) = Message::decode_v1(&frame) {
                    if let Some(entry) = update.clients.get(&doc.client_id()) {
                        last_state = Some(entry.json.to_string());
                    }
                }
            }
            Some(Ok(Ws::Close(_))) | None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{e}"),
        }
    }
    assert_eq!(
        last_state.as_deref(),
        Some("null"),
        "no removal before the close"
    );
    destroy.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_goes_out_only_after_the_offline_edits() {
    let (addr, mut accepted) = raw_server().await;
    // Edits made before connecting count as local changes.
    let doc = Doc::new();
    push_text(&doc, "offline");
    let p = provider(&doc, format!("ws://{addr}/v"), ProviderOptions::default());
    assert!(*p.has_local_changes().borrow());
    let mut conn = next_accept(&mut accepted).await;
    // This server speaks only after the client's step1, so a SYNC_STATUS sent with the
    // step1 (before the edits) would arrive first.
    let mut got_step2 = None;
    loop {
        let frame = match tokio::time::timeout(GUARD, conn.ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(frame))) => frame,
            Some(Ok(_)) => continue,
            other => panic!("client left: {other:?}"),
        };
        match Message::decode_v1(&frame).unwrap() {
            Message::Sync(SyncMessage::SyncStep1(_)) => {
                let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default()));
                conn.ws
                    .send(Ws::Binary(step1.encode_v1().into()))
                    .await
                    .unwrap();
            }
            Message::Sync(SyncMessage::SyncStep2(update)) => got_step2 = Some(update),
            Message::Custom(102, _) => {
                let update = got_step2
                    .as_ref()
                    .expect("SYNC_STATUS before the offline edits");
                let check = Doc::new();
                check
                    .transact_mut()
                    .apply_update(yrs::Update::decode_v1(update).unwrap())
                    .unwrap();
                assert_eq!(text_of(&check), "offline");
                assert!(*p.has_local_changes().borrow(), "clean before the echo");
                conn.ws.send(Ws::Binary(frame)).await.unwrap();
                break;
            }
            _ => {}
        }
    }
    clean(&p).await;
    p.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_is_never_claimed_before_its_update_is_sent() {
    let (addr, mut accepted) = raw_server().await;
    let doc = Doc::new();
    let map = doc.get_or_insert_map("m");
    let p = provider(
        &doc,
        format!("ws://{addr}/race"),
        ProviderOptions::default(),
    );
    let mut conn = next_accept(&mut accepted).await;
    // Echoes every SYNC_STATUS at once and checks that version V comes after V updates
    // (the doc starts empty, so every local change travels as an update frame).
    let server = tokio::spawn(async move {
        let (mut updates, mut statuses, mut early) = (0u64, 0u64, Vec::new());
        let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default()));
        conn.ws
            .send(Ws::Binary(step1.encode_v1().into()))
            .await
            .unwrap();
        while let Some(Ok(frame)) = conn.ws.next().await {
            let Ws::Binary(bytes) = frame else { continue };
            match Message::decode_v1(&bytes).unwrap() {
                Message::Sync(SyncMessage::SyncStep1(_)) => {
                    conn.ws.send(empty_step2()).await.unwrap();
                }
                Message::Sync(SyncMessage::Update(_)) => updates += 1,
                Message::Custom(102, payload) => {
                    statuses += 1;
                    let version: u64 = yrs::encoding::read::Read::read_var(
                        &mut yrs::encoding::read::Cursor::new(&payload),
                    )
                    .unwrap();
                    if version > updates {
                        early.push((version, updates));
                    }
                    conn.ws.send(Ws::Binary(bytes)).await.unwrap();
                }
                _ => {}
            }
        }
        (statuses, early)
    });
    connected(&p).await;
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let (doc, map) = (doc.clone(), map.clone());
            std::thread::spawn(move || {
                for i in 0..5_000u32 {
                    yrs::Map::insert(&map, &mut doc.transact_mut(), format!("{t}-{}", i % 50), i);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    clean(&p).await;
    p.destroy().await;
    let (statuses, early) = tokio::time::timeout(GUARD, server).await.unwrap().unwrap();
    assert!(statuses > 1);
    assert!(
        early.is_empty(),
        "versions claimed early (version, updates so far): {:?}",
        &early[..early.len().min(5)]
    );
}
