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
