//! Bounds on what sync clients choose: dynamic doc names (4400), dynamic rooms opened per
//! client address per minute (1013), awareness states per connection (1008), the size of a
//! SYNC_STATUS message (1009); and REST, which never creates a doc.

use std::net::SocketAddr;
use std::time::Duration;

use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::sync::close;
use epicenter_server::workspace::WorkspaceClient;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, StateVector};

const GUARD: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn dynamic_server(options: ServerOptions) -> (Server, SocketAddr) {
    let server = create_server(Vec::<WorkspaceClient>::new(), options.port(0)).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

/// Opens the sync route of `room` (a raw path segment, sent as is).
async fn open(addr: SocketAddr, room: &str) -> Socket {
    let url = format!("ws://{addr}/workspaces/{room}/sync");
    let (ws, _) = tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    ws
}

/// Opens the sync route of `room` from the local address `from` (any of 127.0.0.0/8).
async fn open_from(addr: SocketAddr, from: [u8; 4], room: &str) -> Socket {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/workspaces/{room}/sync");
    let (ws, _) = tokio::time::timeout(
        GUARD,
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
    )
    .await
    .unwrap()
    .unwrap();
    ws
}

/// What the server says next: a message, or its close frame.
async fn next(ws: &mut Socket) -> Result<Message, (u16, String)> {
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) => return Ok(Message::decode_v1(&b).unwrap()),
            Some(Ok(Ws::Close(Some(f)))) => return Err((f.code.into(), f.reason.to_string())),
            Some(Ok(_)) => {}
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

/// Reads until the close frame, then until the end (which sends the answer to it, so the
/// server is done with the connection at once).
async fn closed(ws: &mut Socket) -> (u16, String) {
    loop {
        if let Err(close) = next(ws).await {
            while let Ok(Some(Ok(_))) = tokio::time::timeout(GUARD, ws.next()).await {}
            return close;
        }
    }
}

/// The connection is served: its step1 answered with a step2.
async fn served(ws: &mut Socket) {
    let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default()));
    ws.send(Ws::Binary(step1.encode_v1().into())).await.unwrap();
    loop {
        match next(ws).await {
            Ok(Message::Sync(SyncMessage::SyncStep2(_))) => return,
            Ok(_) => {}
            Err(close) => panic!("closed: {close:?}"),
        }
    }
}

/// Sends SYNC_STATUS `version` and reads until its echo; returns the messages before it.
async fn round_trip(ws: &mut Socket, version: u8) -> Vec<Message> {
    let status = Message::Custom(102, vec![version]);
    ws.send(Ws::Binary(status.encode_v1().into()))
        .await
        .unwrap();
    let mut before = Vec::new();
    loop {
        match next(ws).await.expect("not closed") {
            Message::Custom(102, payload) if payload == [version] => return before,
            other => before.push(other),
        }
    }
}

fn awareness(entries: &[(u64, u32, &str)]) -> Ws {
    let clients = entries
        .iter()
        .map(|&(id, clock, json)| {
            let entry = AwarenessUpdateEntry {
                clock,
                json: json.into(),
            };
            (ClientID::new(id), entry)
        })
        .collect();
    Ws::Binary(
        Message::Awareness(AwarenessUpdate { clients })
            .encode_v1()
            .into(),
    )
}

/// The client ids present in the awareness messages among `messages`, with their JSON.
fn states(messages: &[Message]) -> Vec<(u64, String)> {
    let mut states: Vec<(u64, String)> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Awareness(update) => Some(update),
            _ => None,
        })
        .flat_map(|u| {
            u.clients
                .iter()
                .map(|(id, e)| (id.get(), e.json.to_string()))
        })
        .collect();
    states.sort();
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dynamic_room_names_are_closed_with_4400_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::default()
        .storage(SqliteStorage::new(dir.path()))
        .max_room_name_len(16);
    let (server, addr) = dynamic_server(options).await;
    for (room, why) in [
        ("..", "starts with `.`"),
        (".hidden", "starts with `.`"),
        ("a%20b", "' ' is not allowed"),
        ("a%2Fb", "'/' is not allowed"),
        ("team:doc", "':' is not allowed"),
        ("caf%C3%A9", "'é' is not allowed"),
        ("a%00b", "'\\0' is not allowed"),
        ("x2345678901234567", "longer than 16 bytes"),
    ] {
        let mut ws = open(addr, room).await;
        let (code, reason) = closed(&mut ws).await;
        assert_eq!(code, close::BAD_ROOM_NAME, "{room}: {reason}");
        assert!(
            reason.starts_with("Bad room name: ") && reason.contains(why),
            "{room}: {reason}"
        );
    }
    assert!(server.sync().rooms().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a refused name left a file"
    );
    // Names within the rules are served.
    for room in ["notes", "Team_1.doc-v2", "x234567890123456"] {
        served(&mut open(addr, room).await).await;
    }
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_address_opens_a_bounded_number_of_new_rooms_per_minute() {
    let options = ServerOptions::default().max_new_rooms_per_minute(3);
    let (server, addr) = dynamic_server(options).await;
    let mut open_rooms = Vec::new();
    for room in ["r1", "r2", "r3"] {
        let mut ws = open_from(addr, [127, 0, 0, 1], room).await;
        served(&mut ws).await;
        open_rooms.push(ws);
    }
    let mut fourth = open_from(addr, [127, 0, 0, 1], "r4").await;
    assert_eq!(
        closed(&mut fourth).await,
        (
            close::TRY_AGAIN_LATER,
            "too many new rooms from this address: try again in a minute".into()
        )
    );
    // Joining a loaded room is not opening one; another address has its own budget.
    served(&mut open_from(addr, [127, 0, 0, 1], "r1").await).await;
    served(&mut open_from(addr, [127, 0, 0, 2], "r4").await).await;
    assert_eq!(server.sync().rooms(), ["r1", "r2", "r3", "r4"]);
    drop((open_rooms, fourth));
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_states_per_connection_are_bounded() {
    let (server, addr) = dynamic_server(ServerOptions::default()).await;
    let mut watcher = open(addr, "room").await;
    served(&mut watcher).await;
    let mut many = open(addr, "room").await;
    served(&mut many).await;

    // 16 states (the default bound) in one update, renewed, one swapped for another.
    let first: Vec<(u64, u32, &str)> = (1..=16).map(|id| (id, 1, "{}")).collect();
    many.send(awareness(&first)).await.unwrap();
    many.send(awareness(&[(1, 2, "{\"renewed\":1}")]))
        .await
        .unwrap();
    many.send(awareness(&[(2, 2, "null"), (17, 1, "{}")]))
        .await
        .unwrap();
    round_trip(&mut many, 1).await;
    let seen = states(&round_trip(&mut watcher, 1).await);
    assert!(seen.contains(&(17, "{}".into())), "{seen:?}");

    // A 17th: refused whole, and the connection closed with 1008.
    many.send(awareness(&[(1, 3, "{}"), (18, 1, "{}")]))
        .await
        .unwrap();
    assert_eq!(
        closed(&mut many).await,
        (
            close::POLICY_VIOLATION,
            "too many awareness states: at most 16 per connection".into()
        )
    );
    // The watcher never got the refused update; it got the removal of the 16.
    let mut removed = Vec::new();
    while removed.len() < 16 {
        let got = round_trip(&mut watcher, 2).await;
        assert!(
            !states(&got).iter().any(|(id, _)| *id == 18),
            "the refused update was sent: {got:?}"
        );
        removed.extend(states(&got).into_iter().filter(|(_, json)| json == "null"));
    }
    let ids: Vec<u64> = removed.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=17).filter(|id| *id != 2).collect::<Vec<_>>());
    // A late joiner gets no state (the watcher announced none).
    let mut late = open(addr, "room").await;
    served(&mut late).await;
    assert_eq!(states(&round_trip(&mut late, 3).await), []);
    drop((many, watcher, late));
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_status_over_1_kib_is_closed_with_1009() {
    let (server, addr) = dynamic_server(ServerOptions::default()).await;
    let mut ws = open(addr, "room").await;
    served(&mut ws).await;
    // 1 KiB exactly is echoed byte for byte.
    let most = Message::Custom(102, vec![7; 1021]).encode_v1();
    assert_eq!(most.len(), 1024);
    ws.send(Ws::Binary(most.clone().into())).await.unwrap();
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) if b[..] == most[..] => break,
            Some(Ok(Ws::Binary(_))) => {}
            other => panic!("no echo: {other:?}"),
        }
    }
    let over = Message::Custom(102, vec![7; 1022]).encode_v1();
    ws.send(Ws::Binary(over.into())).await.unwrap();
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, close::MESSAGE_TOO_BIG, "{reason}");
    drop(ws);
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_never_creates_a_doc() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::default().storage(SqliteStorage::new(dir.path()));
    let (server, addr) = dynamic_server(options).await;
    assert!(server.sync().dynamic_docs());
    let http = reqwest::Client::new();
    let base = format!("http://{addr}/workspaces/fresh");
    let body = serde_json::json!({"id": "a", "title": "t"});
    for request in [
        http.get(format!("{base}/tables/posts")),
        http.post(format!("{base}/tables/posts")).json(&body),
        http.put(format!("{base}/tables/posts/a")).json(&body),
        http.delete(format!("{base}/tables/posts/a")),
        http.get(format!("{base}/actions/anything")),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);
    }
    assert!(server.sync().rooms().is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    server.destroy().await.unwrap();
}
