//! Raw y-websocket clients for the tests that run several nodes: join a room, announce
//! presence, read presence back.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{AwarenessUpdate, Message};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

const GUARD: Duration = Duration::from_secs(30);

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A sync connection to room `room` of the server at `addr` (`host:port`), joined: the
/// server's step 1 has been read.
pub async fn join(addr: impl std::fmt::Display, room: &str) -> Socket {
    let url = format!("ws://{addr}/workspaces/{room}/sync");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(_))) => return ws,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// An awareness message: `client` at `clock` with state `state` (JSON, or `null`).
pub fn awareness(client: u64, clock: u32, state: &str) -> Vec<u8> {
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
    Message::Awareness(update).encode_v1()
}

/// The state of `client` in the next awareness message that has it.
pub async fn awareness_of(ws: &mut Socket, client: u64) -> String {
    loop {
        let frame = match ws.next().await {
            Some(Ok(Ws::Binary(b))) => b,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        };
        if let Ok(Message::Awareness(update)) = Message::decode_v1(&frame) {
            if let Some(entry) = update.clients.get(&yrs::ClientID::new(client)) {
                return entry.json.to_string();
            }
        }
    }
}

/// Announces `client` with `state` on `from` until `to` (a connection on another node)
/// hears of it: a node's bus reads presence from what comes next, so the first
/// announcements may go out before it listens. Returns the state `to` heard.
pub async fn announce_until_heard(
    from: &mut Socket,
    to: &mut Socket,
    client: u64,
    state: &str,
) -> String {
    tokio::time::timeout(GUARD, async {
        let mut clock = 1;
        loop {
            from.send(Ws::Binary(awareness(client, clock, state).into()))
                .await
                .unwrap();
            clock += 1;
            let heard = tokio::time::timeout(Duration::from_millis(300), awareness_of(to, client));
            if let Ok(state) = heard.await {
                return state;
            }
        }
    })
    .await
    .expect("presence reached the other node")
}

/// A server (port 0) over an in-memory `blog` workspace with a `posts` table.
pub async fn blog_server(
    options: epicenter_server::server::ServerOptions,
) -> (epicenter_server::server::Server, std::net::SocketAddr) {
    use epicenter_server::workspace::{id, text, WorkspaceDefinition};
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let client = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .expect("valid definition")
        .in_memory()
        .create()
        .await
        .expect("client");
    let server =
        epicenter_server::server::create_server([client], options.port(0)).expect("server");
    let addr = server.start().await.expect("start");
    (server, addr)
}

/// The character update `i` of [`letter_updates`] appends.
pub fn letter(i: usize) -> char {
    char::from(b'a' + (i % 26) as u8)
}

/// `count` update frames, each appending one character (`letter(i)`) to the text `t`.
pub fn letter_updates(count: usize) -> Vec<Vec<u8>> {
    use yrs::{Text, Transact};
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    (0..count)
        .map(|i| {
            let mut txn = doc.transact_mut();
            text.push(&mut txn, &letter(i).to_string());
            Message::Sync(yrs::sync::SyncMessage::Update(txn.encode_update_v1())).encode_v1()
        })
        .collect()
}

/// The next binary frame (within a guard).
pub async fn next_frame(ws: &mut Socket) -> bytes::Bytes {
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(frame))) => return frame,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}
