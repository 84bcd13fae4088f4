//! Sync connections over sockets whose buffers are small on the server's side too (which a
//! client cannot arrange through the server's accept loop), so a push's write to the
//! socket is split at a known size: what a peer that stops reading sees of frames written
//! partly by a push, partly by the connection's task.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tungstenite::protocol::Role;
use tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Text, Transact, Update};

use super::hub::SyncHub;
use super::protocol::close;
use super::wire::{self, Wire};
use super::Transport;
use crate::access::Access;
use crate::server::ServerOptions;

/// A guard against a hung test; nothing waits for it to elapse.
const GUARD: Duration = Duration::from_secs(5);

type Client = tokio_tungstenite::WebSocketStream<TcpStream>;

/// The server's end of a connection, shared with its send queue (as the server's accept
/// loop shares it).
struct Shared(Wire);

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        wire::poll_read(&self.0, cx, buf)
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        wire::poll_write_vectored(&self.0, cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        wire::poll_write_vectored(&self.0, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(wire::shutdown_write(&self.0))
    }
}

/// A hub of dynamic docs with these options.
fn hub(options: ServerOptions) -> Arc<SyncHub> {
    Arc::new(SyncHub::new(options.sync_options(), BTreeMap::new()))
}

/// A sync connection to room `room` of `hub`; with `small`, both ends' buffers are a few
/// KiB. Returns once the server's step 1 has been read.
async fn connect(hub: &Arc<SyncHub>, room: &str, small: bool) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpSocket::new_v4().unwrap();
    if small {
        client.set_recv_buffer_size(4096).unwrap();
    }
    let client = client
        .connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    server.set_nodelay(true).unwrap();
    client.set_nodelay(true).unwrap();
    if small {
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
    }
    let wire: Wire = Arc::new(server);
    let transport = Box::new(Shared(wire.clone())) as Box<dyn Transport>;
    hub.serve(
        async move { Some(transport) },
        room.into(),
        Access::ReadWrite,
        None,
        Some(wire),
    );
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    next_frame(&mut ws).await;
    ws
}

async fn next_frame(ws: &mut Client) -> bytes::Bytes {
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(frame))) => return frame,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

/// The code of the close frame that comes next (frames before it are skipped).
async fn close_code(ws: &mut Client) -> u16 {
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await {
            Ok(Some(Ok(Ws::Close(Some(frame))))) => return frame.code.into(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

/// An update frame that appends `len` copies of `c` to the text `t` of `doc`.
fn append(doc: &Doc, c: char, len: usize) -> Vec<u8> {
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.push(&mut txn, &c.to_string().repeat(len));
    Message::Sync(SyncMessage::Update(txn.encode_update_v1())).encode_v1()
}

fn sync_status(version: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    yrs::encoding::write::Write::write_var(&mut payload, version);
    Message::Custom(102, payload).encode_v1()
}

/// Sends `frames` in one write and waits for the echo of a SYNC_STATUS sent after them:
/// by then the room has fanned out every update among them.
async fn send_burst(ws: &mut Client, mut frames: Vec<Vec<u8>>) {
    let status = sync_status(u64::from(u32::MAX));
    frames.push(status.clone());
    let mut frames =
        futures_util::stream::iter(frames.into_iter().map(|f| Ok(Ws::Binary(f.into()))));
    ws.send_all(&mut frames).await.unwrap();
    while next_frame(ws).await != status {}
}

/// The text `t` of the update in `frame`, applied to an empty doc.
fn text_of(frame: &[u8]) -> String {
    let Ok(Message::Sync(SyncMessage::Update(update))) = Message::decode_v1(frame) else {
        panic!("not an update");
    };
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&update).unwrap())
        .unwrap();
    let text = doc.get_or_insert_text("t");
    let string = yrs::GetString::get_string(&text, &doc.transact());
    string
}

/// A frame the push could write only part of (the peer stopped reading), then the queue
/// overflows before the connection's task ran (one runtime thread: none runs in the
/// middle of a burst). The 1013 close frame comes after the whole frame, never inside it.
#[tokio::test]
async fn a_split_frame_is_finished_before_the_close_frame_of_an_overflow() {
    let hub = hub(ServerOptions::default().send_queue(2));
    let mut slow = connect(&hub, "r", true).await;
    let mut writer = connect(&hub, "r", false).await;
    // A quiet moment: a connection written to less than a millisecond apart counts as
    // busy, and its frames go to its task.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let doc = Doc::new();
    let mut burst = vec![append(&doc, 'a', 40_000)];
    burst.extend((0..4).map(|_| append(&doc, 'b', 1)));
    send_burst(&mut writer, burst).await;
    assert_eq!(hub.stats().slow_consumer_closes, 1);
    assert_eq!(text_of(&next_frame(&mut slow).await), "a".repeat(40_000));
    assert_eq!(close_code(&mut slow).await, close::TRY_AGAIN_LATER);
}

/// A peer stops reading in the middle of a big frame: the connection's task has it and a
/// small frame after it in flight when the room pushes another. Once the peer reads
/// again, the big frame and the small one go out in one wake-up of the task, and the one
/// pushed meanwhile follows without waiting for anything else to wake the task (a ping,
/// a later update).
#[tokio::test]
async fn what_is_queued_behind_a_batch_the_socket_held_up_follows_it() {
    let hub = hub(ServerOptions::default());
    let mut slow = connect(&hub, "r", true).await;
    let mut writer = connect(&hub, "r", false).await;
    let doc = Doc::new();
    // More than the socket takes (the push writes part of it, the task the rest), and a
    // small one the task takes with it.
    send_burst(
        &mut writer,
        vec![append(&doc, 'a', 40_000), append(&doc, 'b', 1)],
    )
    .await;
    // Queued while the task's batch is stuck.
    send_burst(&mut writer, vec![append(&doc, 'c', 1)]).await;
    let expected = format!("{}bc", "a".repeat(40_000));
    let got = Doc::new();
    let text = got.get_or_insert_text("t");
    while yrs::GetString::get_string(&text, &got.transact()) != expected {
        let frame = next_frame(&mut slow).await;
        let Ok(Message::Sync(SyncMessage::Update(update))) = Message::decode_v1(&frame) else {
            panic!("not an update");
        };
        got.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
    }
}

/// Pushes and the connection's task write to one socket whose buffers are small, so
/// frames split everywhere: updates of every size, quiet and busy in turn, while the peer
/// pings (answered by the task) and reads in fits. Every frame arrives whole and in order,
/// and every ping is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_frames_from_pushes_and_the_task_interleave_whole_and_in_order() {
    const UPDATES: usize = 120;
    let hub = hub(ServerOptions::default());
    let slow = connect(&hub, "r", true).await;
    let mut writer = connect(&hub, "r", false).await;
    let (mut sink, mut stream) = slow.split();
    let sizes = |i: usize| [1, 3_000, 20_000, 200, 9_000][i % 5];
    let reading = tokio::spawn(async move {
        let got = Doc::new();
        let text = got.get_or_insert_text("t");
        let (mut updates, mut pongs) = (0, 0);
        let mut expected = 0u32;
        while updates < UPDATES || pongs < 10 {
            match tokio::time::timeout(GUARD, stream.next()).await.unwrap() {
                Some(Ok(Ws::Binary(frame))) => {
                    let Ok(Message::Sync(SyncMessage::Update(u))) = Message::decode_v1(&frame)
                    else {
                        panic!("frame {updates} is not an update");
                    };
                    got.transact_mut()
                        .apply_update(Update::decode_v1(&u).unwrap())
                        .unwrap();
                    expected += sizes(updates) as u32;
                    assert_eq!(text.len(&got.transact()), expected, "update {updates}");
                    updates += 1;
                    if updates % 10 == 0 {
                        // Reads in fits: the server's writes block and split.
                        tokio::time::sleep(Duration::from_millis(15)).await;
                    }
                }
                Some(Ok(Ws::Pong(_))) => pongs += 1,
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    });
    let pinging = tokio::spawn(async move {
        for _ in 0..10 {
            sink.send(Ws::Ping(vec![7].into())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sink
    });
    let doc = Doc::new();
    for i in 0..UPDATES {
        let frame = append(&doc, char::from(b'a' + (i % 26) as u8), sizes(i));
        writer.send(Ws::Binary(frame.into())).await.unwrap();
        // Quiet and busy in turn.
        if i % 20 < 10 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    reading.await.unwrap();
    drop(pinging.await.unwrap());
}

/// A peer closes while the room keeps pushing to it (its socket full or not): it reads
/// whole frames, then the server's answer to its close, then the end of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_closes_while_pushes_write_gets_whole_frames_then_the_close() {
    let hub = hub(ServerOptions::default());
    let mut writer = connect(&hub, "r", false).await;
    let writing = tokio::spawn(async move {
        let doc = Doc::new();
        for i in 0..400 {
            let frame = append(&doc, 'w', [10, 5_000][i % 2]);
            if writer.send(Ws::Binary(frame.into())).await.is_err() {
                break;
            }
            if i % 4 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        writer
    });
    for round in 0..8 {
        let mut peer = connect(&hub, "r", true).await;
        // Lets the socket fill for a while in some rounds.
        tokio::time::sleep(Duration::from_millis(round * 3)).await;
        peer.send(Ws::Close(None)).await.unwrap();
        loop {
            match tokio::time::timeout(GUARD, peer.next()).await.unwrap() {
                Some(Ok(Ws::Binary(frame))) => {
                    assert!(Message::decode_v1(&frame).is_ok(), "a broken frame");
                }
                Some(Ok(Ws::Close(_))) => {}
                Some(Ok(_)) => {}
                None => break,
                Some(Err(e)) => panic!("round {round}: {e}"),
            }
        }
    }
    drop(writing.await.unwrap());
}
