//! The accept path under attack from the network: connections that send nothing, half a
//! preface or odd first bytes, requests that carry `Upgrade` where no upgrade happens, and
//! a server stopping while connections are still being told apart.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use epicenter_server::server::{Server, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::ws::blog_server;

/// A guard against a hung test; nothing waits for it to elapse.
const GUARD: Duration = Duration::from_secs(10);
/// A header deadline no test waits for.
const LONG: Duration = Duration::from_secs(60);

async fn server() -> (Server, SocketAddr) {
    blog_server(ServerOptions::default().header_read_timeout(LONG)).await
}

/// Sends `request` on a new connection and reads until the server closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A whole request answered: the accept loop has taken every connection made before it.
async fn served(addr: SocketAddr) {
    let answer = exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Connections that have sent no request (nothing yet, or half an HTTP/2 preface: a
/// browser's preconnect, a stalled client) have nothing to finish: stopping the server
/// closes them at once instead of waiting for their header deadline or the shutdown
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_does_not_wait_for_connections_without_a_request() {
    let (server, addr) = server().await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    served(addr).await;
    // The shutdown timeout is 10 s; the header deadline longer still.
    tokio::time::timeout(Duration::from_secs(3), server.destroy())
        .await
        .expect("destroy waited for connections that sent no request")
        .unwrap();
    for tcp in [&mut silent, &mut half] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(GUARD, tcp.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

/// Half an HTTP/2 preface, then the client closes: the server closes too, at once, not at
/// the header deadline (a socket the client gave up on is not held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_preface_then_close_is_closed_at_once() {
    let (server, addr) = server().await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, tcp.read_to_end(&mut answer))
        .await
        .expect("the server holds a connection its client closed")
        .unwrap();
    server.destroy().await.unwrap();
}

/// The CPU time this thread has used, in clock ticks (Linux).
#[cfg(target_os = "linux")]
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // utime and stime: fields 14 and 15, the 12th and 13th after the command's `)`.
    let after_command = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_command.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Connections stalled in the middle of an HTTP/2 preface wait for their next bytes
/// without costing the server CPU: a byte each must not buy an attacker a share of a core
/// for the whole header deadline. (The server runs on this test's one thread, whose CPU
/// time is measured.)
#[cfg(target_os = "linux")]
#[tokio::test]
async fn stalled_prefaces_cost_no_cpu() {
    let (server, addr) = server().await;
    let mut stalled = Vec::new();
    for _ in 0..400 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"P").await.unwrap();
        stalled.push(tcp);
    }
    served(addr).await;
    let before = thread_cpu_ticks();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spent = thread_cpu_ticks() - before;
    // Waiting costs nothing; polling every connection every few milliseconds costs tens
    // of ticks (of 10 ms) here.
    assert!(
        spent < 5,
        "{spent} ticks spent in 500 ms by stalled connections"
    );
    // They are still waiting, not closed: a preface completed now is served as HTTP/2.
    let mut tcp = stalled.pop().unwrap();
    tcp.write_all(b"RI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(GUARD, tcp.read_exact(&mut frame))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame[3], 4, "the server's first frame is its SETTINGS");
    drop((tcp, stalled));
    server.destroy().await.unwrap();
}

/// A client frame (masked, with a zero key: the payload as is).
fn client_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![0x82, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

/// Frames sent right behind the WebSocket handshake, in the same packet (before the 101),
/// reach the connection whole and in order, while the server's own frames (some written
/// straight to the socket) follow the 101, not inside it: an update, then a sync step 1
/// whose answer must contain that update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_the_handshake_arrive_in_order() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message as Ws;
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{GetString, Transact};

    let (server, addr) = server().await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut sent = b"GET /workspaces/blog/sync HTTP/1.1\r\nHost: x\r\n\
        Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    let update = &support::ws::letter_updates(1)[0];
    sent.extend(client_frame(update));
    let step1 = Message::Sync(SyncMessage::SyncStep1(Default::default())).encode_v1();
    sent.extend(client_frame(&step1));
    tcp.write_all(&sent).await.unwrap();

    // The 101, alone, up to its blank line; what follows is frames.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(GUARD, tcp.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    loop {
        let frame = match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(frame))) => frame,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        };
        if let Ok(Message::Sync(SyncMessage::SyncStep2(state))) = Message::decode_v1(&frame) {
            let doc = yrs::Doc::new();
            let text = doc.get_or_insert_text("t");
            doc.transact_mut()
                .apply_update(yrs::Update::decode_v1(&state).unwrap())
                .unwrap();
            assert_eq!(text.get_string(&doc.transact()), "a");
            break;
        }
    }
    drop(ws);
    server.destroy().await.unwrap();
}

/// First bytes that are neither HTTP/1 nor HTTP/2 (a TLS ClientHello, a preface followed
/// by garbage, nothing at all) are answered or closed at once, not held to the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_first_bytes_are_closed_at_once() {
    let (server, addr) = server().await;
    let hello = [
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    let answer = exchange(addr, &hello).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = exchange(addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nnot a frame at all").await;
    assert!(!answer.starts_with("HTTP/1.1"), "{answer}");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, tcp.read_to_end(&mut answer))
        .await
        .expect("the server holds a connection that closed without a byte")
        .unwrap();
    assert!(answer.is_empty());
    served(addr).await;
    server.destroy().await.unwrap();
}

/// An `Upgrade` header on a request that does not upgrade (a REST read, with `websocket`
/// or `h2c`; a POST with a body to the sync route) changes nothing: each pipelined request
/// is answered in turn on the same plain HTTP/1 connection, the POST's body read as its
/// body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_header_where_no_upgrade_happens_changes_nothing() {
    let (server, addr) = server().await;
    let answer = exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
          GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n\
          POST /workspaces/blog/sync HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 5\r\n\r\nhello\
          GET /workspaces/blog/tables/posts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    // Four answers in turn, no 101, nothing else on the connection.
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answer[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "405", "200"], "{answer}");
    assert!(answer.ends_with("]}"), "{answer}");
    server.destroy().await.unwrap();
}
