//! Limits and the Origin allow-list: each gives a clear close code or HTTP status, and
//! the server goes on serving within them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::workspace::WorkspaceClient;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::StateVector;

const GUARD: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn dynamic_server(options: ServerOptions) -> (Server, SocketAddr) {
    let server = create_server(Vec::<WorkspaceClient>::new(), options.port(0)).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

async fn open(addr: SocketAddr, room: &str, origin: Option<&str>) -> Result<Socket, String> {
    let mut request = format!("ws://{addr}/workspaces/{room}/sync")
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(format!("HTTP {}", response.status().as_u16()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Sends step1 and waits for the step2: the connection is served.
async fn synced(ws: &mut Socket) -> bool {
    let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
    if ws.send(Ws::Binary(step1.into())).await.is_err() {
        return false;
    }
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) if b.starts_with(&[0, 1]) => return true,
            Some(Ok(Ws::Close(_))) | None | Some(Err(_)) => return false,
            Some(Ok(_)) => {}
        }
    }
}

/// Reads until the server closes; returns the close code and reason.
async fn closed(ws: &mut Socket) -> (u16, String) {
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(Ws::Close(None))) | None | Some(Err(_)) => panic!("no close frame"),
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limits_close_extra_sockets_with_1013() {
    let (server, addr) = dynamic_server(ServerOptions::default().max_connections(2)).await;
    let mut a = open(addr, "r1", None).await.unwrap();
    let mut b = open(addr, "r2", None).await.unwrap();
    assert!(synced(&mut a).await && synced(&mut b).await);
    let mut c = open(addr, "r3", None).await.unwrap();
    assert_eq!(
        closed(&mut c).await,
        (1013, "server full: too many connections".into())
    );
    // Room for one more once one leaves.
    b.close(None).await.unwrap();
    closed_or_gone(&mut b).await;
    let mut d = wait_served(addr, "r3").await;
    assert!(synced(&mut d).await);
    server.destroy().await.unwrap();

    let (server, addr) = dynamic_server(ServerOptions::default().max_room_connections(1)).await;
    let mut a = open(addr, "room", None).await.unwrap();
    assert!(synced(&mut a).await);
    let mut b = open(addr, "room", None).await.unwrap();
    assert_eq!(
        closed(&mut b).await,
        (1013, "room full: too many connections".into())
    );
    let mut other = open(addr, "other", None).await.unwrap();
    assert!(synced(&mut other).await, "another room is not full");
    server.destroy().await.unwrap();
}

async fn closed_or_gone(ws: &mut Socket) {
    while let Ok(Some(Ok(_))) = tokio::time::timeout(GUARD, ws.next()).await {}
}

/// Connects until a connection is served (the server counts a leaving socket out once its
/// task ends, a moment after the close handshake).
async fn wait_served(addr: SocketAddr, room: &str) -> Socket {
    let start = Instant::now();
    loop {
        let mut ws = open(addr, room, None).await.unwrap();
        if synced(&mut ws).await {
            return ws;
        }
        assert!(start.elapsed() < GUARD, "never served again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamic_room_limit_refuses_new_rooms_only() {
    let (server, addr) = dynamic_server(ServerOptions::default().max_dynamic_rooms(1)).await;
    let mut a = open(addr, "first", None).await.unwrap();
    assert!(synced(&mut a).await);
    let mut b = open(addr, "second", None).await.unwrap();
    assert_eq!(closed(&mut b).await, (1013, "too many rooms".into()));
    let mut again = open(addr, "first", None).await.unwrap();
    assert!(
        synced(&mut again).await,
        "the existing room still takes connections"
    );
    assert_eq!(server.sync().rooms(), ["first"]);
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_closed_at_the_handshake_deadline() {
    let options = ServerOptions::default().handshake_timeout(Duration::from_millis(300));
    let (server, addr) = dynamic_server(options).await;
    let start = Instant::now();
    let mut silent = open(addr, "r", None).await.unwrap();
    let mut talking = open(addr, "r", None).await.unwrap();
    assert!(synced(&mut talking).await);
    assert_eq!(
        closed(&mut silent).await,
        (1008, "no message within the handshake deadline".into())
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
    // The one that spoke in time stays, past the deadline.
    let echo = Message::Custom(102, vec![1]).encode_v1();
    talking.send(Ws::Binary(echo.clone().into())).await.unwrap();
    loop {
        match tokio::time::timeout(GUARD, talking.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) if b[..] == echo[..] => break,
            Some(Ok(Ws::Binary(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allow_list_are_refused() {
    let options = ServerOptions::default().allow_origins(["https://app.example"]);
    let (server, addr) = dynamic_server(options).await;
    assert_eq!(
        open(addr, "r", Some("https://evil.example")).await.err(),
        Some("HTTP 403".to_string())
    );
    let mut allowed = open(addr, "r", Some("https://APP.example")).await.unwrap();
    assert!(synced(&mut allowed).await);
    let mut no_origin = open(addr, "r", None).await.unwrap();
    assert!(
        synced(&mut no_origin).await,
        "non-browser clients send no Origin"
    );
    server.destroy().await.unwrap();

    // Off by default.
    let (server, addr) = dynamic_server(ServerOptions::default()).await;
    let mut any = open(addr, "r", Some("https://evil.example")).await.unwrap();
    assert!(synced(&mut any).await);
    server.destroy().await.unwrap();
}

/// A client that sends request headers slowly ("slowloris") is cut off at the header
/// deadline; one that sends them in time is served, on the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_headers_are_cut_off_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Duration::from_millis(300);
    let (server, addr) =
        dynamic_server(ServerOptions::default().header_read_timeout(deadline)).await;
    // Half a request, then nothing: closed once the deadline passes.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(GUARD, slow.read(&mut buf))
        .await
        .expect("the server closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= deadline, "{:?}", started.elapsed());
    // A connection that sends nothing at all goes the same way.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let read = tokio::time::timeout(GUARD, silent.read(&mut buf))
        .await
        .expect("the server closes the silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The start of an HTTP/2 preface, then nothing: the same.
    let mut h2 = TcpStream::connect(addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let read = tokio::time::timeout(GUARD, h2.read(&mut buf))
        .await
        .expect("the server closes the stalled HTTP/2 connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // A whole request in time is answered.
    let mut fast = TcpStream::connect(addr).await.unwrap();
    fast.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(GUARD, fast.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    server.destroy().await.unwrap();
}

/// Sends `message` as binary frames of at most `chunk` bytes (a fragmented message).
async fn send_fragmented(ws: &mut Socket, message: &[u8], chunk: usize) {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let parts: Vec<&[u8]> = message.chunks(chunk).collect();
    for (i, part) in parts.iter().enumerate() {
        let opcode = OpCode::Data(if i == 0 { Data::Binary } else { Data::Continue });
        let frame = Frame::message(part.to_vec(), opcode, i + 1 == parts.len());
        ws.send(Ws::Frame(frame)).await.unwrap();
    }
}

/// A SYNC update frame inserting `text` into the root text `t`.
fn text_update(text: &str) -> Vec<u8> {
    use yrs::{Doc, ReadTxn, Text, Transact};
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    t.insert(&mut doc.transact_mut(), 0, text);
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    Message::Sync(SyncMessage::Update(update)).encode_v1()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_and_messages_over_their_limits_are_closed_with_1009() {
    let options = ServerOptions::default()
        .max_frame_size(1024)
        .max_message_size(4096);
    let (server, addr) = dynamic_server(options).await;

    // 3 KB in frames of 1,000 bytes: within both limits, applied.
    let text = "x".repeat(3000);
    let mut fragmented = open(addr, "r", None).await.unwrap();
    send_fragmented(&mut fragmented, &text_update(&text), 1000).await;
    // Its step2 comes after its update is applied.
    assert!(synced(&mut fragmented).await);
    let mut reader = open(addr, "r", None).await.unwrap();
    let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
    reader.send(Ws::Binary(step1.into())).await.unwrap();
    let step2 = loop {
        match tokio::time::timeout(GUARD, reader.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) if b.starts_with(&[0, 1]) => break b,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert!(step2.len() > 3000, "the fragmented update is in the doc");

    // One 2 KB frame: over the frame limit.
    let mut big_frame = open(addr, "r", None).await.unwrap();
    big_frame
        .send(Ws::Binary(text_update(&"y".repeat(2000)).into()))
        .await
        .unwrap();
    assert_eq!(
        closed(&mut big_frame).await,
        (1009, "message too big".into())
    );

    // 5 KB in frames of 1,000 bytes: each frame fits, the message does not.
    let mut big_message = open(addr, "r", None).await.unwrap();
    send_fragmented(&mut big_message, &text_update(&"z".repeat(5000)), 1000).await;
    assert_eq!(
        closed(&mut big_message).await,
        (1009, "message too big".into())
    );

    // The others are still served.
    assert!(synced(&mut fragmented).await && synced(&mut reader).await);
    server.destroy().await.unwrap();
}
