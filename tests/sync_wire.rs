//! A quiet connection's frames are written to its socket by the room's push itself, not by
//! the connection's task. Seen from the clients, nothing may change: frames whole and in
//! commit order, whatever mix of pushes and task writes carries them.

mod support;

use std::time::Duration;

use epicenter_server::server::ServerOptions;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

use support::ws::{blog_server, join, letter_updates, next_frame, Socket};

/// A guard against a hung test; nothing waits for it to elapse.
const GUARD: Duration = Duration::from_secs(10);

/// Reads `count` updates, checking that each one arrives in its turn: applied in the
/// order received, every one extends the text by exactly its character.
async fn receive_in_order(ws: &mut Socket, count: usize) {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    for i in 0..count {
        let frame = next_frame(ws).await;
        let Ok(Message::Sync(SyncMessage::Update(update))) = Message::decode_v1(&frame) else {
            panic!("frame {i} is not an update");
        };
        doc.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        assert_eq!(
            text.len(&doc.transact()) as usize,
            i + 1,
            "update {i} arrived out of order ({:?})",
            text.get_string(&doc.transact())
        );
    }
}

/// One broadcast writes to at most 128 sockets itself; the room's other connections get
/// the frame queued for their tasks. In a burst (one runtime thread: no task runs between
/// the broadcasts), the first connections turn busy and stop taking writes, which leaves
/// the budget to a connection that has frames waiting in its queue: its frames must still
/// come in order.
#[tokio::test]
async fn a_room_bigger_than_one_broadcasts_writes_gets_a_burst_in_order() {
    const RECEIVERS: usize = 140;
    const BURST: usize = 40;
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let mut receivers = Vec::new();
    for _ in 0..RECEIVERS {
        receivers.push(join(addr, "blog").await);
    }
    let mut writer = join(addr, "blog").await;
    let mut frames = futures_util::stream::iter(
        letter_updates(BURST)
            .into_iter()
            .map(|u| Ok(Ws::Binary(u.into()))),
    );
    // Fed, then flushed: one write, so the server reads the whole burst at once.
    writer.send_all(&mut frames).await.unwrap();
    for ws in &mut receivers {
        receive_in_order(ws, BURST).await;
    }
    // Gone before the shutdown, which would otherwise wait for their answers to its close.
    drop((receivers, writer));
    server.destroy().await.unwrap();
}

/// Reads until the server closes the TCP connection (after any close frame); panics if it
/// keeps it open.
async fn until_closed(ws: &mut Socket) {
    loop {
        match tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("the server closed the connection")
        {
            None | Some(Err(_)) => return,
            Some(Ok(_)) => {}
        }
    }
}

/// The TCP stream a connection's queue writes to is shared with its task: however the
/// connection ends, the server closes the socket (no handle keeps it open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_closed_however_a_connection_ends() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let mut writer = join(addr, "blog").await;
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(join(addr, "blog").await);
    }
    // Frames written by the room's pushes (quiet connections).
    let update = letter_updates(1).remove(0);
    writer.send(Ws::Binary(update.into())).await.unwrap();
    for ws in &mut peers {
        next_frame(ws).await;
    }
    let [mut closing, mut bad, vanishing] = <[Socket; 3]>::try_from(peers).ok().unwrap();
    // The peer closes.
    closing.close(None).await.unwrap();
    until_closed(&mut closing).await;
    // The server closes (1003).
    bad.send(Ws::Text("hello".into())).await.unwrap();
    until_closed(&mut bad).await;
    // The peer goes without a close frame: it half-closes its side and reads on.
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = vanishing.into_inner() else {
        unreachable!("a plain connection");
    };
    let mut tcp = tcp;
    tokio::io::AsyncWriteExt::shutdown(&mut tcp).await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(
        GUARD,
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut sink),
    )
    .await
    .expect("the server closed the connection")
    .ok();
    drop(writer);
    server.destroy().await.unwrap();
}
