//! Peers that close in odd ways: the close frame in the packet of the handshake, data
//! after it, two of them, or a close from a peer that never reads. The server answers
//! when it can, ends the connection within its grace period, frees the peer's place in
//! the room, and serves the others on.

mod support;

use std::time::{Duration, Instant};

use epicenter_server::server::ServerOptions;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Text, Transact, Update};

use support::ws::{awareness, blog_server, join, letter_updates, next_frame, Socket};

/// A guard against a hung test; nothing waits for it to elapse.
const GUARD: Duration = Duration::from_secs(10);

/// The upgrade request of a sync connection to room `room`.
fn upgrade(room: &str) -> Vec<u8> {
    format!(
        "GET /workspaces/{room}/sync HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A client frame (masked with a zero key) with this opcode and payload.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65_535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    out
}

fn binary(payload: &[u8]) -> Vec<u8> {
    frame(0x2, payload)
}

fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    frame(0x8, &payload)
}

/// The frames (opcode, payload) a server sent after its 101 answer, read to the end of
/// the stream.
async fn read_to_end(tcp: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut bytes = Vec::new();
    tokio::time::timeout(GUARD, tcp.read_to_end(&mut bytes))
        .await
        .expect("the server ended the connection")
        .ok();
    let head = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    assert!(bytes.starts_with(b"HTTP/1.1 101"), "{:?}", &bytes[..head]);
    let mut rest = &bytes[head + 4..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let opcode = rest[0] & 0x0f;
        assert_eq!(rest[1] & 0x80, 0, "a server frame is not masked");
        let (len, at) = match rest[1] & 0x7f {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert!(rest.len() >= at + len, "a cut frame");
        frames.push((opcode, rest[at..at + len].to_vec()));
        rest = &rest[at + len..];
    }
    frames
}

/// The text `t` of the room, as a new connection gets it.
async fn text_of_room(addr: std::net::SocketAddr) -> String {
    let mut ws = join(addr, "blog").await;
    let sv = yrs::StateVector::default();
    ws.send(Ws::Binary(
        Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1().into(),
    ))
    .await
    .unwrap();
    loop {
        let frame = next_frame(&mut ws).await;
        if let Ok(Message::Sync(SyncMessage::SyncStep2(update))) = Message::decode_v1(&frame) {
            let doc = Doc::new();
            let text = doc.get_or_insert_text("t");
            doc.transact_mut()
                .apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
            return text.get_string(&doc.transact());
        }
    }
}

/// Reads awareness messages until `client`'s state is `null` (removed).
async fn until_removed(ws: &mut Socket, client: u64) {
    tokio::time::timeout(GUARD, async {
        loop {
            let frame = next_frame(ws).await;
            if let Ok(Message::Awareness(update)) = Message::decode_v1(&frame) {
                if let Some(entry) = update.clients.get(&yrs::ClientID::new(client)) {
                    if &*entry.json == "null" {
                        return;
                    }
                }
            }
        }
    })
    .await
    .expect("the state was removed");
}

/// One packet: the handshake, presence, a close, an update, a second close. The server
/// answers the close, takes nothing after it (the update is not applied), ends the
/// connection and removes the peer's presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_in_the_handshake_packet_ends_what_the_server_reads() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let mut observer = join(addr, "blog").await;
    let mut packet = upgrade("blog");
    packet.extend(binary(&awareness(77, 1, "{\"x\":1}")));
    packet.extend(close(1000, "bye"));
    packet.extend(binary(&letter_updates(1).remove(0)));
    packet.extend(close(1000, "again"));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&packet).await.unwrap();
    let frames = read_to_end(&mut tcp).await;
    let (opcode, payload) = frames.last().expect("frames");
    assert_eq!(*opcode, 0x8, "the last frame is the close");
    assert_eq!(&payload[..2], &1000u16.to_be_bytes());
    assert_eq!(
        frames.iter().filter(|(op, _)| *op == 0x8).count(),
        1,
        "one close frame"
    );
    until_removed(&mut observer, 77).await;
    assert_eq!(
        text_of_room(addr).await,
        "",
        "an update after the close was applied"
    );
    drop(observer);
    server.destroy().await.unwrap();
}

/// A peer closes and never reads again, behind frames the room sent it (its receive
/// buffer small): the server ends the connection within its grace period, the peer's
/// presence is removed, and the room serves the others on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_closes_and_never_reads_is_let_go_within_the_grace() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let mut observer = join(addr, "blog").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let mut packet = upgrade("blog");
    packet.extend(binary(&awareness(78, 1, "{\"x\":1}")));
    tcp.write_all(&packet).await.unwrap();
    // Heard by the room: joined.
    support::ws::awareness_of(&mut observer, 78).await;
    // Fills what the peer's socket takes.
    let doc = Doc::new();
    let text = doc.get_or_insert_text("big");
    for _ in 0..400 {
        let update = {
            let mut txn = doc.transact_mut();
            text.push(&mut txn, &"x".repeat(5_000));
            Message::Sync(SyncMessage::Update(txn.encode_update_v1())).encode_v1()
        };
        observer.send(Ws::Binary(update.into())).await.unwrap();
    }
    let started = Instant::now();
    tcp.write_all(&close(1000, "")).await.unwrap();
    until_removed(&mut observer, 78).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The room serves the others on.
    let mut other = join(addr, "blog").await;
    observer
        .send(Ws::Binary(letter_updates(1).remove(0).into()))
        .await
        .unwrap();
    next_frame(&mut other).await;
    drop((observer, other, tcp));
    server.destroy().await.unwrap();
}

/// A peer asks for a big doc's state (a frame of megabytes, written straight to the
/// socket) and closes in the same packet, then reads slowly: it gets the whole frame, then
/// the answer to its close, then the end of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_behind_a_big_direct_frame_is_answered_after_all_of_it() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let mut writer = join(addr, "blog").await;
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let update = {
        let mut txn = doc.transact_mut();
        text.push(&mut txn, &"x".repeat(3 << 20));
        Message::Sync(SyncMessage::Update(txn.encode_update_v1())).encode_v1()
    };
    let status = Message::Custom(102, vec![1]).encode_v1();
    writer.send(Ws::Binary(update.into())).await.unwrap();
    writer
        .send(Ws::Binary(status.clone().into()))
        .await
        .unwrap();
    while next_frame(&mut writer).await != status {}
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let mut packet = upgrade("blog");
    let sv = yrs::StateVector::default();
    packet.extend(binary(
        &Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1(),
    ));
    packet.extend(close(1000, ""));
    tcp.write_all(&packet).await.unwrap();
    let frames = read_to_end(&mut tcp).await;
    let step2 = frames
        .iter()
        .find_map(|(_, payload)| match Message::decode_v1(payload) {
            Ok(Message::Sync(SyncMessage::SyncStep2(update))) => Some(update),
            _ => None,
        })
        .expect("a step 2");
    let got = Doc::new();
    got.transact_mut()
        .apply_update(Update::decode_v1(&step2).unwrap())
        .unwrap();
    assert_eq!(got.get_or_insert_text("t").len(&got.transact()), 3 << 20);
    assert_eq!(
        frames.last().map(|(op, _)| *op),
        Some(0x8),
        "the close comes last"
    );
    drop(writer);
    server.destroy().await.unwrap();
}
