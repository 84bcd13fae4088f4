//! Read-only sync connections: they read, and may answer the server's step1 with what the
//! doc already has, but a doc update that would change the doc closes them with 4403 and is
//! never acknowledged by a SYNC_STATUS echo. Raw sockets and the Rust `SyncProvider`; the
//! stock y-websocket client is in tests/sync_js.rs.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use epicenter_server::server::{create_server, Access, Auth, Server, ServerOptions};
use epicenter_server::sync::close;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

const GUARD: Duration = Duration::from_secs(10);
const FORBIDDEN: &str = "Forbidden: this connection may only read";

/// A `blog` server whose tokens are "rw" (read-write) and "ro" (read-only).
async fn server() -> (Server, SocketAddr) {
    let blog = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap();
    let client = blog.in_memory().create().await.unwrap();
    let auth = Auth::verify(|request| async move {
        match request.token.as_deref() {
            Some("rw") => Access::ReadWrite,
            Some("ro") => Access::ReadOnly,
            _ => Access::Denied,
        }
    });
    let server = create_server([client], ServerOptions::default().port(0).auth(auth)).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

/// The server's whole doc, encoded: equal before and after means nothing changed.
fn server_state(server: &Server) -> Vec<u8> {
    let doc = server.client("blog").unwrap().doc().clone();
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    state
}

/// A raw y-websocket client with a local doc.
struct Peer {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    doc: Doc,
    /// The server's step1 (its state vector when this peer joined).
    server_sv: StateVector,
}

enum Got {
    Message(Message),
    Close(u16, String),
}

impl Peer {
    async fn join(addr: SocketAddr, token: &str) -> Peer {
        let url = format!("ws://{addr}/workspaces/blog/sync?token={token}");
        let (ws, _) = tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        let mut peer = Peer {
            ws,
            doc: Doc::new(),
            server_sv: StateVector::default(),
        };
        match peer.next().await {
            Got::Message(Message::Sync(SyncMessage::SyncStep1(sv))) => peer.server_sv = sv,
            _ => panic!("no step1 from the server"),
        }
        peer
    }

    async fn next(&mut self) -> Got {
        loop {
            match tokio::time::timeout(GUARD, self.ws.next()).await.unwrap() {
                Some(Ok(Ws::Binary(b))) => return Got::Message(Message::decode_v1(&b).unwrap()),
                Some(Ok(Ws::Close(Some(f)))) => {
                    return Got::Close(f.code.into(), f.reason.to_string())
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended without a close frame: {other:?}"),
            }
        }
    }

    async fn send(&mut self, message: Message) {
        self.ws
            .send(Ws::Binary(Bytes::from(message.encode_v1())))
            .await
            .unwrap();
    }

    /// Syncs like a stock client: answers the server's step1 with what the server lacks
    /// (nothing, for a fresh peer), asks for the state, and applies it.
    async fn sync(&mut self) {
        let answer = self
            .doc
            .transact()
            .encode_state_as_update_v1(&self.server_sv);
        self.send(Message::Sync(SyncMessage::SyncStep2(answer)))
            .await;
        let sv = self.doc.transact().state_vector();
        self.send(Message::Sync(SyncMessage::SyncStep1(sv))).await;
        loop {
            match self.next().await {
                Got::Message(Message::Sync(SyncMessage::SyncStep2(update))) => {
                    self.apply(&update);
                    return;
                }
                Got::Message(_) => {}
                Got::Close(code, reason) => panic!("closed while syncing: {code} {reason}"),
            }
        }
    }

    fn apply(&self, update: &[u8]) {
        self.doc
            .transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
    }

    /// Sends SYNC_STATUS `version`; returns what arrived before its echo, or the close.
    async fn status(&mut self, version: u8) -> Result<Vec<Message>, (u16, String)> {
        self.send(Message::Custom(102, vec![version])).await;
        let mut before = Vec::new();
        loop {
            match self.next().await {
                Got::Message(Message::Custom(102, payload)) if payload == [version] => {
                    return Ok(before)
                }
                Got::Message(Message::Sync(SyncMessage::Update(u))) => {
                    self.apply(&u);
                    before.push(Message::Sync(SyncMessage::Update(u)));
                }
                Got::Message(m) => before.push(m),
                Got::Close(code, reason) => return Err((code, reason)),
            }
        }
    }

    /// Edits the local doc with `edit` and returns the update it made.
    fn edit(&self, edit: impl FnOnce(&Doc)) -> Vec<u8> {
        // Deletions travel as the whole delete set, as in any y-websocket update.
        let before = self.doc.transact().state_vector();
        edit(&self.doc);
        let update = self.doc.transact().encode_state_as_update_v1(&before);
        update
    }

    fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("t");
        let s = text.get_string(&self.doc.transact());
        s
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_socket_that_writes_is_closed_with_4403_and_never_acknowledged() {
    let (server, addr) = server().await;
    let mut writer = Peer::join(addr, "rw").await;
    writer.sync().await;
    // Text the server has, with a deletion in it.
    let update = writer.edit(|doc| {
        let t = doc.get_or_insert_text("t");
        t.push(&mut doc.transact_mut(), "hello");
        t.remove_range(&mut doc.transact_mut(), 0, 1);
    });
    writer
        .send(Message::Sync(SyncMessage::Update(update)))
        .await;
    writer.status(1).await.unwrap();

    // A reader that sends only what the server has stays connected and acknowledged: its
    // answer to step1 (empty), then its whole state (items and deletions the server has).
    let mut reader = Peer::join(addr, "ro").await;
    reader.sync().await;
    assert_eq!(reader.text(), "ello");
    let full = reader
        .doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    reader
        .send(Message::Sync(SyncMessage::SyncStep2(full)))
        .await;
    reader.status(2).await.expect("served while it only reads");
    let before = server_state(&server);

    // An edit, then SYNC_STATUS: the close comes instead of the echo.
    let edit = reader.edit(|doc| {
        let t = doc.get_or_insert_text("t");
        t.push(&mut doc.transact_mut(), "!");
    });
    reader.send(Message::Sync(SyncMessage::Update(edit))).await;
    assert_eq!(
        reader.status(3).await.unwrap_err(),
        (close::FORBIDDEN, FORBIDDEN.into())
    );
    assert_eq!(
        server_state(&server),
        before,
        "the refused edit was applied"
    );
    let got = writer.status(4).await.unwrap();
    assert!(
        got.is_empty(),
        "the refused edit reached the writer: {got:?}"
    );

    // A deletion alone is a write too.
    let mut reader = Peer::join(addr, "ro").await;
    reader.sync().await;
    let deletion = reader.edit(|doc| {
        let t = doc.get_or_insert_text("t");
        t.remove_range(&mut doc.transact_mut(), 0, 2);
    });
    reader
        .send(Message::Sync(SyncMessage::Update(deletion)))
        .await;
    assert_eq!(
        reader.status(5).await.unwrap_err(),
        (close::FORBIDDEN, FORBIDDEN.into())
    );
    assert_eq!(
        server_state(&server),
        before,
        "the refused deletion was applied"
    );
    assert_eq!(writer.status(6).await.unwrap().len(), 0);

    // Read-write connections write as before.
    let more = writer.edit(|doc| {
        let t = doc.get_or_insert_text("t");
        t.push(&mut doc.transact_mut(), " world");
    });
    writer.send(Message::Sync(SyncMessage::Update(more))).await;
    writer.status(7).await.unwrap();
    assert_ne!(server_state(&server), before);
    server.destroy().await.unwrap();
}

#[cfg(feature = "client")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_provider_reports_a_refused_write_as_final_4403() {
    use epicenter_server::client::{self, ProviderOptions, Status, SyncProvider};
    let (server, addr) = server().await;
    let url = format!("ws://{addr}/workspaces/blog/sync");
    let mut writer = Peer::join(addr, "rw").await;
    writer.sync().await;
    let update = writer.edit(|doc| {
        let t = doc.get_or_insert_text("t");
        t.push(&mut doc.transact_mut(), "hello");
        t.remove_range(&mut doc.transact_mut(), 0, 1);
    });
    writer
        .send(Message::Sync(SyncMessage::Update(update)))
        .await;
    writer.status(1).await.unwrap();

    // A read-only provider whose doc already holds what the server has (as after an
    // earlier session) starts dirty; its handshake sends nothing new, so the server
    // acknowledges it and it turns clean.
    let doc = Doc::new();
    let state = server_state(&server);
    doc.transact_mut()
        .apply_update(Update::decode_v1(&state).unwrap())
        .unwrap();
    let options = ProviderOptions::default()
        .auth(client::Auth::token("ro"))
        .backoff_base(Duration::from_millis(10));
    let provider = SyncProvider::new(doc.clone(), url, options).unwrap();
    assert!(*provider.has_local_changes().borrow());
    provider.connect().unwrap();
    let mut dirty = provider.has_local_changes();
    tokio::time::timeout(GUARD, dirty.wait_for(|d| !d))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*provider.status().borrow(), Status::Connected);

    // A local edit: refused for good, and still a local change.
    let opened = server.sync().stats().connections_opened;
    let t = doc.get_or_insert_text("t");
    t.push(&mut doc.transact_mut(), "!");
    let mut status = provider.status();
    tokio::time::timeout(
        GUARD,
        status.wait_for(|s| matches!(s, Status::Error { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        *provider.status().borrow(),
        Status::Error {
            code: close::FORBIDDEN,
            reason: FORBIDDEN.into()
        }
    );
    assert!(*provider.has_local_changes().borrow());
    assert_eq!(server_state(&server), state, "the refused edit was applied");
    // No further attempt, though retries would come every few milliseconds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.sync().stats().connections_opened, opened);
    assert!(matches!(*provider.status().borrow(), Status::Error { .. }));
    provider.destroy().await;
    server.destroy().await.unwrap();
}
