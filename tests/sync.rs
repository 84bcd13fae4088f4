//! WebSocket sync over real sockets, with raw protocol clients: the handshake, fan-out
//! (never back to the sender), server-side writes reaching sockets, awareness (echoed,
//! removed on disconnect, queried), SYNC_STATUS echo order, unknown rooms, dynamic docs
//! (created, evicted, reloaded), keepalive, eviction, slow consumers, bad input, shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::sync::{close, RoomEvent};
use epicenter_server::workspace::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::types::ToJson;
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Array, Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// A guard against a hung test; nothing waits for it to elapse.
const GUARD: Duration = Duration::from_secs(10);

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

async fn blog_server(options: ServerOptions) -> (Server, SocketAddr) {
    init_tracing();
    let client = blog().in_memory().create().await.expect("client");
    let server = create_server([client], options.port(0)).expect("server");
    let addr = server.start().await.expect("start");
    (server, addr)
}

async fn dynamic_server(options: ServerOptions) -> (Server, SocketAddr) {
    init_tracing();
    let server = create_server(Vec::<WorkspaceClient>::new(), options.port(0)).expect("server");
    let addr = server.start().await.expect("start");
    (server, addr)
}

/// What a raw client read.
#[derive(Debug)]
enum Got {
    Frame(Bytes),
    Close(u16, String),
    /// The stream ended (or failed) without a close frame.
    End,
}

/// A raw y-websocket client.
struct Peer {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Peer {
    async fn connect(addr: SocketAddr, room: &str) -> Peer {
        let url = format!("ws://{addr}/workspaces/{room}/sync");
        let (ws, _) = tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Peer { ws }
    }

    /// Connects and reads the server's step1 (and nothing else).
    async fn join(addr: SocketAddr, room: &str) -> Peer {
        let mut peer = Peer::connect(addr, room).await;
        assert!(matches!(
            peer.message().await,
            Message::Sync(SyncMessage::SyncStep1(_))
        ));
        peer
    }

    async fn next(&mut self) -> Got {
        loop {
            let read = tokio::time::timeout(GUARD, self.ws.next())
                .await
                .expect("a frame in time");
            match read {
                Some(Ok(Ws::Binary(b))) => return Got::Frame(b),
                Some(Ok(Ws::Close(Some(f)))) => {
                    return Got::Close(f.code.into(), f.reason.to_string())
                }
                Some(Ok(Ws::Close(None))) => return Got::Close(1005, String::new()),
                Some(Ok(Ws::Ping(_) | Ws::Pong(_) | Ws::Frame(_))) => continue,
                Some(Ok(Ws::Text(t))) => panic!("text frame from the server: {t}"),
                Some(Err(_)) | None => return Got::End,
            }
        }
    }

    async fn frame(&mut self) -> Bytes {
        match self.next().await {
            Got::Frame(b) => b,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    async fn message(&mut self) -> Message {
        let frame = self.frame().await;
        Message::decode(&mut DecoderV1::from(&frame[..])).expect("a valid message")
    }

    /// Reads until the server closes; returns the close code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Got::Frame(_) => continue,
                Got::Close(code, reason) => return (code, reason),
                Got::End => panic!("the stream ended without a close frame"),
            }
        }
    }

    async fn send(&mut self, message: Message) {
        self.send_raw(message.encode_v1()).await;
    }

    async fn send_raw(&mut self, bytes: impl Into<Bytes>) {
        self.ws.send(Ws::Binary(bytes.into())).await.expect("send");
    }

    /// Sends SYNC_STATUS with `version` and returns the exact bytes sent.
    async fn sync_status(&mut self, version: u64) -> Vec<u8> {
        let mut payload = Vec::new();
        yrs::encoding::write::Write::write_var(&mut payload, version);
        let frame = Message::Custom(102, payload).encode_v1();
        self.send_raw(frame.clone()).await;
        frame
    }

    /// Sends SYNC_STATUS and reads until its echo; returns the frames read before it.
    async fn round_trip(&mut self, version: u64) -> Vec<Bytes> {
        let sent = self.sync_status(version).await;
        let mut before = Vec::new();
        loop {
            let frame = self.frame().await;
            if frame[..] == sent[..] {
                return before;
            }
            before.push(frame);
        }
    }
}

/// A local doc with a text `t`, and the update that wrote `s` into it.
fn text_update(doc: &Doc, s: &str) -> Vec<u8> {
    let text = doc.get_or_insert_text("t");
    let before = doc.transact().state_vector();
    let mut txn = doc.transact_mut();
    let len = text.len(&txn);
    text.insert(&mut txn, len, s);
    drop(txn);
    doc.transact().encode_state_as_update_v1(&before)
}

fn apply(doc: &Doc, update: &[u8]) {
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).expect("update"))
        .expect("apply");
}

fn text_of(doc: &Doc) -> String {
    let text = doc.get_or_insert_text("t");
    text.get_string(&doc.transact())
}

fn update_of(message: Message) -> Vec<u8> {
    match message {
        Message::Sync(SyncMessage::Update(u) | SyncMessage::SyncStep2(u)) => u,
        other => panic!("expected an update, got {other:?}"),
    }
}

fn awareness(client: u64, clock: u32, state: &str) -> Message {
    let mut update = AwarenessUpdate {
        clients: Default::default(),
    };
    update.clients.insert(
        yrs::ClientID::new(client),
        yrs::sync::awareness::AwarenessUpdateEntry {
            clock,
            json: state.into(),
        },
    );
    Message::Awareness(update)
}

fn awareness_of(message: Message) -> Vec<(u64, String)> {
    match message {
        Message::Awareness(update) => {
            let mut states: Vec<(u64, String)> = update
                .clients
                .into_iter()
                .map(|(id, e)| (id.get(), e.json.to_string()))
                .collect();
            states.sort();
            states
        }
        other => panic!("expected awareness, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_sends_step1_then_awareness_and_answers_step1_with_the_state() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let posts = server.client("blog").unwrap().table("posts").unwrap();
    posts.upsert(json!({"id": "p1", "title": "Hello"})).unwrap();

    // First connection: step1 carrying the server's state vector, no awareness yet.
    let mut a = Peer::connect(addr, "blog").await;
    let server_sv = server
        .client("blog")
        .unwrap()
        .doc()
        .transact()
        .state_vector();
    match a.message().await {
        Message::Sync(SyncMessage::SyncStep1(sv)) => assert_eq!(sv, server_sv),
        other => panic!("expected step1 first, got {other:?}"),
    }
    a.send(Message::Sync(
        SyncMessage::SyncStep1(StateVector::default()),
    ))
    .await;
    let local = Doc::new();
    apply(&local, &update_of(a.message().await));
    assert_eq!(local.transact().state_vector(), server_sv);
    let cells = local.get_or_insert_array("table:posts");
    assert_eq!(cells.len(&local.transact()), 2, "the id and title cells");

    // With an awareness state present, a newcomer gets step1 then the states.
    a.send(awareness(7, 1, r#"{"user":"a"}"#)).await;
    assert_eq!(
        awareness_of(a.message().await),
        [(7, r#"{"user":"a"}"#.into())]
    );
    let mut b = Peer::connect(addr, "blog").await;
    assert!(matches!(
        b.message().await,
        Message::Sync(SyncMessage::SyncStep1(_))
    ));
    assert_eq!(
        awareness_of(b.message().await),
        [(7, r#"{"user":"a"}"#.into())]
    );
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_reach_the_others_but_never_their_sender() {
    let (server, addr) = dynamic_server(ServerOptions::default()).await;
    let mut a = Peer::join(addr, "notes").await;
    let mut b = Peer::join(addr, "notes").await;
    let doc = Doc::new();
    a.send(Message::Sync(SyncMessage::Update(text_update(&doc, "hi"))))
        .await;
    let got = Doc::new();
    apply(&got, &update_of(b.message().await));
    assert_eq!(text_of(&got), "hi");
    // Everything a sent before its SYNC_STATUS was handled before the echo: nothing came back.
    assert!(
        a.round_trip(1).await.is_empty(),
        "a got its own update back"
    );
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_messages_arrive_whole_and_in_order_among_small_ones() {
    let (server, addr) = dynamic_server(ServerOptions::default()).await;
    let mut a = Peer::join(addr, "big").await;
    let mut b = Peer::join(addr, "big").await;
    let doc = Doc::new();
    // Sizes around the point where the server writes a message straight from its shared
    // bytes, and well past it.
    let parts = [
        "x".repeat(10),
        "y".repeat(300 * 1024),
        "z".repeat(5),
        "w".repeat(16 * 1024),
        "v".repeat(20),
    ];
    for part in &parts {
        a.send(Message::Sync(SyncMessage::Update(text_update(&doc, part))))
            .await;
    }
    let got = Doc::new();
    for part in &parts {
        let before = text_of(&got).len();
        apply(&got, &update_of(b.message().await));
        assert_eq!(
            &text_of(&got)[before..],
            part.as_str(),
            "out of order or cut"
        );
    }
    // A late joiner's step 2 (over 300 KiB) holds everything.
    let mut late = Peer::join(addr, "big").await;
    late.send(Message::Sync(
        SyncMessage::SyncStep1(StateVector::default()),
    ))
    .await;
    let joined = Doc::new();
    apply(&joined, &update_of(late.message().await));
    assert_eq!(text_of(&joined), parts.concat());
    // The connection goes on normally after it.
    a.send(Message::Sync(SyncMessage::Update(text_update(&doc, "!"))))
        .await;
    apply(&joined, &update_of(late.message().await));
    assert!(text_of(&joined).ends_with('!'));
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_on_the_server_reach_every_connection() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let mut peers = [
        Peer::join(addr, "blog").await,
        Peer::join(addr, "blog").await,
    ];
    let posts = server.client("blog").unwrap().table("posts").unwrap();
    posts
        .upsert(json!({"id": "p1", "title": "From Rust"}))
        .unwrap();
    // And one over REST.
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/workspaces/blog/tables/posts"))
        .json(&json!({"id": "p2", "title": "From REST"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    for peer in &mut peers {
        let doc = Doc::new();
        apply(&doc, &update_of(peer.message().await));
        apply(&doc, &update_of(peer.message().await));
        let cells = doc.get_or_insert_array("table:posts");
        let json = format!("{:?}", cells.to_json(&doc.transact()));
        assert!(
            json.contains("From Rust") && json.contains("From REST"),
            "{json}"
        );
    }
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_is_echoed_to_all_removed_on_disconnect_and_answered_on_query() {
    let (server, addr) = dynamic_server(ServerOptions::default()).await;
    let mut a = Peer::join(addr, "room").await;
    let mut b = Peer::join(addr, "room").await;
    a.send(awareness(11, 1, r#"{"name":"ann"}"#)).await;
    let expected = vec![(11, r#"{"name":"ann"}"#.to_string())];
    // The sender gets it back too (its renewals keep a lone idle client connected).
    assert_eq!(awareness_of(a.message().await), expected);
    assert_eq!(awareness_of(b.message().await), expected);
    b.send(awareness(22, 1, r#"{"name":"bob"}"#)).await;
    assert_eq!(
        awareness_of(a.message().await),
        [(22, r#"{"name":"bob"}"#.into())]
    );
    assert_eq!(
        awareness_of(b.message().await),
        [(22, r#"{"name":"bob"}"#.into())]
    );

    // QUERY_AWARENESS is answered with every state.
    b.send_raw(vec![3u8]).await;
    assert_eq!(
        awareness_of(b.message().await),
        [
            (11, r#"{"name":"ann"}"#.into()),
            (22, r#"{"name":"bob"}"#.into())
        ]
    );

    // a leaves: b hears that 11 is gone.
    a.ws.close(None).await.unwrap();
    assert_eq!(awareness_of(b.message().await), [(11, "null".into())]);
    b.send_raw(vec![3u8]).await;
    assert_eq!(
        awareness_of(b.message().await),
        [(22, r#"{"name":"bob"}"#.into())]
    );
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_status_is_echoed_byte_for_byte_after_the_updates_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let client = blog()
        .with_storage(SqliteStorage::new(dir.path()))
        .create()
        .await
        .unwrap();
    let server = create_server([client], ServerOptions::default().port(0)).unwrap();
    let addr = server.start().await.unwrap();
    let mut a = Peer::join(addr, "blog").await;
    let doc = Doc::new();
    let mut sent = Vec::new();
    for i in 0..50 {
        a.send(Message::Sync(SyncMessage::Update(text_update(
            &doc,
            &format!("{i},"),
        ))))
        .await;
        sent.push(i);
    }
    // A large version, so the varuint takes several bytes.
    let status = a.sync_status(1 << 40).await;
    let echo = a.frame().await;
    assert_eq!(echo[..], status[..]);
    // By the time of the echo, every earlier update was applied.
    let server_doc = server.client("blog").unwrap().doc();
    assert_eq!(text_of(server_doc), text_of(&doc));
    server.destroy().await.unwrap();
    // ... and durable: a fresh client over the same files has them.
    let reopened = blog()
        .with_storage(SqliteStorage::new(dir.path()))
        .create()
        .await
        .unwrap();
    assert_eq!(text_of(reopened.doc()), text_of(&doc));
    reopened.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_room_is_closed_with_4404_when_dynamic_docs_are_off() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    assert!(!server.sync().dynamic_docs());
    let mut peer = Peer::connect(addr, "nope").await;
    assert_eq!(
        peer.closed().await,
        (close::ROOM_NOT_FOUND, "Room not found: nope".into())
    );
    // Turned on explicitly, the same id gets a doc.
    let client = blog().in_memory().create().await.unwrap();
    let dynamic = create_server(
        [client],
        ServerOptions::default().port(0).dynamic_docs(true),
    )
    .unwrap();
    let addr = dynamic.start().await.unwrap();
    let mut peer = Peer::join(addr, "nope").await;
    assert!(peer.round_trip(1).await.is_empty());
    server.destroy().await.unwrap();
    dynamic.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_reason_is_cut_to_what_a_close_frame_can_carry() {
    // A close frame's payload is at most 125 bytes (RFC 6455 5.5): the code and 123 bytes
    // of reason. "Room not found: " and a 128-byte id would be 146; a client then fails the
    // connection instead of seeing 4404.
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let id = "é".repeat(64); // 128 bytes, and the cut must fall between characters
    let mut peer = Peer::connect(addr, &id).await;
    let (code, reason) = peer.closed().await;
    assert_eq!(code, close::ROOM_NOT_FOUND);
    assert!(reason.len() <= 123, "{} bytes", reason.len());
    assert!(reason.starts_with("Room not found: éé"), "{reason}");
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_doc_is_created_evicted_and_reloaded_with_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::default()
        .storage(SqliteStorage::new(dir.path()))
        .room_idle_timeout(Duration::from_millis(50));
    let (server, addr) = dynamic_server(options).await;
    assert!(server.sync().dynamic_docs());
    let mut events = server.sync().events();

    let mut a = Peer::join(addr, "scratch").await;
    assert_eq!(
        events.recv().await.unwrap(),
        RoomEvent::Opened("scratch".into())
    );
    let doc = Doc::new();
    a.send(Message::Sync(SyncMessage::Update(text_update(
        &doc, "kept",
    ))))
    .await;
    a.round_trip(1).await;
    a.ws.close(None).await.unwrap();
    let evicted = tokio::time::timeout(GUARD, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(evicted, RoomEvent::Evicted("scratch".into()));
    assert!(server.sync().rooms().is_empty());
    // The doc was flushed and closed: it is on disk, and the next connection loads it.
    assert!(std::fs::read_dir(dir.path()).unwrap().count() > 0);
    let mut b = Peer::join(addr, "scratch").await;
    b.send(Message::Sync(
        SyncMessage::SyncStep1(StateVector::default()),
    ))
    .await;
    let got = Doc::new();
    apply(&got, &update_of(b.message().await));
    assert_eq!(text_of(&got), "kept");
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_connections_load_a_dynamic_doc_once() {
    let (server, addr) = dynamic_server(ServerOptions::default()).await;
    let mut events = server.sync().events();
    let peers = futures_util::future::join_all((0..20).map(|_| Peer::join(addr, "busy"))).await;
    assert_eq!(
        events.recv().await.unwrap(),
        RoomEvent::Opened("busy".into())
    );
    assert!(events.try_recv().is_err(), "the room was opened twice");
    assert_eq!(server.sync().stats().connections_open, 20);
    drop(peers);
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eviction_timer_is_cancelled_by_a_new_connection() {
    let options = ServerOptions::default().room_idle_timeout(Duration::from_millis(300));
    let (server, addr) = dynamic_server(options).await;
    let mut events = server.sync().events();
    let mut a = Peer::join(addr, "r").await;
    let doc = Doc::new();
    a.send(Message::Sync(SyncMessage::Update(text_update(&doc, "x"))))
        .await;
    a.round_trip(1).await;
    a.ws.close(None).await.unwrap();
    assert!(matches!(a.next().await, Got::Close(..) | Got::End));
    let mut b = Peer::join(addr, "r").await;
    // Longer than the timeout: the room must still be there (an absence, so a sleep).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(events.recv().await.unwrap(), RoomEvent::Opened("r".into()));
    assert!(
        events.try_recv().is_err(),
        "the room was evicted under a connection"
    );
    assert_eq!(server.sync().rooms(), ["r"]);
    b.send(Message::Sync(
        SyncMessage::SyncStep1(StateVector::default()),
    ))
    .await;
    let got = Doc::new();
    apply(&got, &update_of(b.message().await));
    assert_eq!(text_of(&got), "x");
    b.ws.close(None).await.unwrap();
    let evicted = tokio::time::timeout(GUARD, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(evicted, RoomEvent::Evicted("r".into()));
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_sent_and_a_silent_peer_is_dropped() {
    let options = ServerOptions::default().ping_interval(Duration::from_millis(100));
    let (server, addr) = dynamic_server(options).await;
    // A peer that keeps reading sees pings and answers them (tungstenite does, as it reads).
    let mut lively = Peer::join(addr, "r").await;
    let lively = tokio::spawn(async move {
        let mut pings = 0;
        while pings < 8 {
            match tokio::time::timeout(GUARD, lively.ws.next()).await {
                Ok(Some(Ok(Ws::Ping(_)))) => pings += 1,
                Ok(Some(Ok(_))) => {}
                other => panic!("the lively peer lost its connection: {other:?}"),
            }
        }
        lively
    });
    let mut silent = Peer::join(addr, "r").await;
    // Silent for several intervals: it neither reads nor answers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ended = false;
    for _ in 0..100 {
        match silent.next().await {
            Got::End => {
                ended = true;
                break;
            }
            Got::Close(..) => panic!("a dead peer needs no close frame"),
            Got::Frame(_) => {}
        }
    }
    assert!(ended, "the silent peer was not dropped");
    // The lively one, which kept answering for 8 intervals, is still served.
    let mut lively = lively.await.unwrap();
    assert!(lively.round_trip(9).await.is_empty());
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_while_the_others_keep_receiving() {
    let options = ServerOptions::default().send_queue(32);
    let (server, addr) = dynamic_server(options).await;
    let mut writer = Peer::join(addr, "r").await;
    let mut fast = Peer::join(addr, "r").await;
    let mut slow = Peer::join(addr, "r").await;
    // 32 MB in all: more than the socket buffers of the peer that does not read hold.
    const UPDATES: usize = 320;
    let blob = vec![7u8; 100 * 1024];
    let doc = Doc::new();
    let blobs = doc.get_or_insert_array("blobs");
    let reader = tokio::spawn(async move {
        let got = Doc::new();
        for _ in 0..UPDATES {
            apply(&got, &update_of(fast.message().await));
        }
        let blobs = got.get_or_insert_array("blobs");
        let len = blobs.len(&got.transact());
        (fast, len as usize)
    });
    for _ in 0..UPDATES {
        let before = doc.transact().state_vector();
        blobs.push_back(&mut doc.transact_mut(), yrs::Any::from(blob.clone()));
        let update = doc.transact().encode_state_as_update_v1(&before);
        writer
            .send(Message::Sync(SyncMessage::Update(update)))
            .await;
    }
    let (_fast, len) = reader.await.unwrap();
    assert_eq!(len, UPDATES, "the fast peer missed updates");
    // The slow one never read: it gets what fit in its buffers, then 1013.
    let (code, _) = slow.closed().await;
    assert_eq!(code, close::TRY_AGAIN_LATER);
    assert_eq!(server.sync().stats().slow_consumer_closes, 1);
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection() {
    let options = ServerOptions::default().max_message_size(64 * 1024);
    let (server, addr) = dynamic_server(options).await;
    let mut good = Peer::join(addr, "r").await;
    let cases: Vec<(Ws, u16)> = vec![
        (Ws::Text("hello".into()), close::UNSUPPORTED_DATA),
        (Ws::Binary(vec![0u8, 2, 200].into()), close::INVALID_PAYLOAD),
        (Ws::Binary(vec![].into()), close::INVALID_PAYLOAD),
        (
            Ws::Binary(vec![0u8, 2, 3, 1, 2, 3].into()),
            close::INVALID_PAYLOAD,
        ),
        (
            Ws::Binary(vec![1u8, 5, 1, 2].into()),
            close::INVALID_PAYLOAD,
        ),
        (
            Ws::Binary(vec![0u8; 100 * 1024].into()),
            close::MESSAGE_TOO_BIG,
        ),
    ];
    for (frame, code) in cases {
        let mut bad = Peer::join(addr, "r").await;
        bad.ws.send(frame).await.unwrap();
        assert_eq!(bad.closed().await.0, code);
    }
    // The room still works for everyone else.
    let mut other = Peer::join(addr, "r").await;
    let doc = Doc::new();
    good.send(Message::Sync(SyncMessage::Update(text_update(&doc, "ok"))))
        .await;
    let got = Doc::new();
    apply(&got, &update_of(other.message().await));
    assert_eq!(text_of(&got), "ok");
    assert!(good.round_trip(1).await.is_empty());
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_closes_every_socket_with_1001_and_keeps_dynamic_docs() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::default().storage(SqliteStorage::new(dir.path()));
    let (server, addr) = dynamic_server(options).await;
    let mut a = Peer::join(addr, "one").await;
    let mut b = Peer::join(addr, "two").await;
    let doc = Doc::new();
    a.send(Message::Sync(SyncMessage::Update(text_update(
        &doc, "saved",
    ))))
    .await;
    // No round trip: destroy itself must apply and store what was already received.
    a.round_trip(1).await;
    let (ra, rb) = tokio::join!(server.destroy(), async {
        (a.closed().await, b.closed().await)
    });
    ra.unwrap();
    assert_eq!(rb.0 .0, close::GOING_AWAY);
    assert_eq!(rb.1 .0, close::GOING_AWAY);
    // The dynamic doc was flushed and released: another server loads it.
    let options = ServerOptions::default().storage(SqliteStorage::new(dir.path()));
    let (again, addr) = dynamic_server(options).await;
    let mut c = Peer::join(addr, "one").await;
    c.send(Message::Sync(
        SyncMessage::SyncStep1(StateVector::default()),
    ))
    .await;
    let got = Doc::new();
    apply(&got, &update_of(c.message().await));
    assert_eq!(text_of(&got), "saved");
    again.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_get_on_the_sync_route_gets_426_in_the_json_envelope() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let response = reqwest::get(format!("http://{addr}/workspaces/blog/sync"))
        .await
        .unwrap();
    assert_eq!(response.status(), 426);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WebSocket"),
        "{body}"
    );
    server.destroy().await.unwrap();
}

/// Client 7's second transaction (a whole `posts` row) without its first (an edit of
/// another root): its items start past the server's clock for client 7.
fn row_after_a_hole() -> Vec<u8> {
    let doc = Doc::with_client_id(7);
    let other = doc.get_or_insert_array("other");
    other.push_back(&mut doc.transact_mut(), 1.0);
    let before = doc.transact().state_vector();
    let posts = doc.get_or_insert_array("table:posts");
    {
        let mut txn = doc.transact_mut();
        for (field, val) in [("id", "r1"), ("title", "after a hole")] {
            let entry = yrs::Any::from(std::collections::HashMap::from([
                ("key".to_string(), yrs::Any::from(format!("r1:{field}"))),
                ("val".to_string(), yrs::Any::from(val)),
                ("ts".to_string(), yrs::Any::from(1.0)),
            ]));
            posts.push_back(&mut txn, entry);
        }
    }
    let update = doc.transact().encode_state_as_update_v1(&before);
    update
}

/// yrs integrates an update whose items follow a hole in their client's clocks behind a
/// placeholder its state vector does not cover, so the update the doc emits for it is
/// empty. Such an update is fanned out and stored as received: the other connection gets
/// it, and after a restart on the same files the row is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_after_a_hole_is_fanned_out_and_kept() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let open = || async {
        blog()
            .with_storage(SqliteStorage::new(dir.path()))
            .create()
            .await
            .expect("client")
    };
    let client = open().await;
    let server = create_server([client.clone()], ServerOptions::default().port(0)).unwrap();
    let addr = server.start().await.unwrap();
    let mut writer = Peer::join(addr, "blog").await;
    let mut other = Peer::join(addr, "blog").await;
    let update = row_after_a_hole();
    writer
        .send(Message::Sync(SyncMessage::Update(update.clone())))
        .await;
    writer.round_trip(1).await;
    assert!(client.table("posts").unwrap().has("r1"));
    // The other connection gets the update as it was sent.
    let got = loop {
        if let Message::Sync(SyncMessage::Update(u)) = other.message().await {
            break u;
        }
    };
    assert_eq!(got, update);
    server.destroy().await.unwrap();
    client.destroy().await.unwrap();

    let reopened = open().await;
    let row = reopened.table("posts").unwrap().get("r1");
    assert!(
        matches!(&row, RowResult::Valid(r) if r["title"] == "after a hole"),
        "{row:?}"
    );
    reopened.destroy().await.unwrap();
}
