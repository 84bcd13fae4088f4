//! One sync connection: a reader (this task) that handles inbound messages in order, and
//! a writer task fed by a bounded queue that sends frames, SYNC_STATUS echoes once durable,
//! and pings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::hub::SyncHub;
use super::protocol::{self, close, Inbound};
use super::room::{Control, Out, Outbox, Room};
use crate::storage::BoxFuture;

/// How long a close frame may take to send, and the peer's answer to arrive.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Most frames written before one flush.
const BATCH: usize = 64;

pub(crate) async fn run(socket: WebSocket, hub: Arc<SyncHub>, id: String) {
    let conn = hub.next_conn_id();
    let span = tracing::info_span!("sync", room = %id, conn);
    hub.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
    hub.stats.connections_open.fetch_add(1, Ordering::Relaxed);
    serve(socket, &hub, id, conn).instrument(span).await;
    hub.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
}

async fn serve(socket: WebSocket, hub: &Arc<SyncHub>, id: String, conn: u64) {
    let (mut sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(hub.options.send_queue.max(1));
    let control = Arc::new(Control::default());
    let out = Outbox {
        tx,
        control: control.clone(),
        stats: hub.stats.clone(),
    };
    let (entry, room) = match hub.join(&id, conn, out.clone()).await {
        Ok(joined) => joined,
        Err(e) => {
            let (code, reason) = e.close_frame(&id);
            tracing::info!(code, %reason, "connection refused");
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(frame)).await;
            drain(&mut stream).await;
            return;
        }
    };
    tracing::debug!("connected");
    let alive = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn(
        write(
            sink,
            rx,
            control.clone(),
            hub.options.ping_interval,
            alive.clone(),
        )
        .in_current_span(),
    );
    read(&mut stream, hub, &room, conn, &out, &alive).await;
    control.cancel.cancel();
    let _ = writer.await;
    if let Some((code, reason)) = control.reason() {
        tracing::info!(code, %reason, "closed by the server");
        drain(&mut stream).await;
    } else {
        tracing::debug!("disconnected");
    }
    drop(out);
    hub.leave(entry, room, conn);
}

/// Handles inbound frames in order until the peer leaves or the connection is closed.
async fn read(
    stream: &mut SplitStream<WebSocket>,
    hub: &SyncHub,
    room: &Room,
    conn: u64,
    out: &Outbox,
    alive: &AtomicBool,
) {
    let control = &out.control;
    loop {
        let message = tokio::select! {
            _ = control.cancel.cancelled() => return,
            _ = hub.shutdown.cancelled() => {
                control.close(close::GOING_AWAY, "server shutting down");
                return;
            }
            message = stream.next() => message,
        };
        alive.store(true, Ordering::Relaxed);
        match message {
            None => return,
            Some(Ok(Message::Binary(frame))) => {
                if let Err((code, reason)) = handle(room, conn, out, frame).await {
                    tracing::warn!(code, %reason, "closing the connection after bad input");
                    control.close(code, reason);
                    return;
                }
                // The writer shares the socket's lock: give it a turn between frames, or a
                // peer that floods us would starve its own replies.
                tokio::task::yield_now().await;
            }
            Some(Ok(Message::Text(_))) => {
                tracing::warn!("text frame received; closing");
                control.close(
                    close::UNSUPPORTED_DATA,
                    "text frames are not supported: send binary y-websocket messages",
                );
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            // The peer is closing: keep reading so the close handshake completes.
            Some(Ok(Message::Close(_))) => {}
            Some(Err(e)) => {
                if too_big(&e) {
                    tracing::warn!(error = %e, "message too big; closing");
                    control.close(close::MESSAGE_TOO_BIG, "message too big");
                } else {
                    tracing::debug!(error = %e, "read failed");
                }
                return;
            }
        }
    }
}

/// Whether a read failed because a frame or message exceeded the size limit.
fn too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tungstenite::Error::Capacity(_)) = err.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Handles one inbound frame.
async fn handle(room: &Room, conn: u64, out: &Outbox, frame: Bytes) -> Result<(), (u16, String)> {
    match protocol::decode(&frame) {
        Err(e) => Err((close::INVALID_PAYLOAD, format!("malformed message: {e}"))),
        Ok(Inbound::Step1(sv)) => {
            room.step2(sv, out).await;
            Ok(())
        }
        Ok(Inbound::Update(update)) => room.apply(conn, &update),
        Ok(Inbound::Awareness(update)) => room.apply_awareness(conn, update, frame),
        Ok(Inbound::QueryAwareness) => {
            room.send_awareness(out);
            Ok(())
        }
        Ok(Inbound::SyncStatus) => {
            // Fixed now: resolves once everything applied before it is durable.
            out.push(Out::Ack(room.flushed(), frame));
            Ok(())
        }
        Ok(Inbound::Ignored(tag)) => {
            tracing::debug!(tag, "ignoring a message type this server does not use");
            Ok(())
        }
    }
}

type Sink = SplitSink<WebSocket, Message>;

/// Sends queued frames (many per flush), SYNC_STATUS echoes in order once durable, and
/// pings; then the close frame, if the server is closing.
async fn write(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Out>,
    control: Arc<Control>,
    ping_interval: Duration,
    alive: Arc<AtomicBool>,
) {
    let mut acks: FuturesOrdered<BoxFuture<Result<Bytes, crate::StorageError>>> =
        FuturesOrdered::new();
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    let mut batch = Vec::new();
    loop {
        let sent = tokio::select! {
            biased;
            _ = control.cancel.cancelled() => break,
            Some(first) = acks.next(), if !acks.is_empty() => {
                // One commit usually makes many echoes durable at once: send them together.
                let mut done = vec![first];
                while let Some(Some(next)) = acks.next().now_or_never() {
                    done.push(next);
                }
                match done.into_iter().map(|d| d.map(Message::Binary)).collect() {
                    Ok(frames) => send(&mut sink, &control, frames).await,
                    Err(e) => {
                        tracing::error!(error = %e, "storage failed; cannot acknowledge");
                        control.close(close::INTERNAL_ERROR, "storage failed");
                        break;
                    }
                }
            }
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                let mut frames = Vec::with_capacity(n);
                for item in batch.drain(..) {
                    match item {
                        Out::Frame(frame) => frames.push(Message::Binary(frame)),
                        Out::Ack(durable, frame) => {
                            acks.push_back(Box::pin(async move { durable.await.map(|()| frame) }));
                        }
                    }
                }
                send(&mut sink, &control, frames).await
            }
            _ = ping.tick() => {
                if !alive.swap(false, Ordering::Relaxed) {
                    tracing::info!("no answer to the last ping; dropping the connection");
                    break;
                }
                send(&mut sink, &control, vec![Message::Ping(Bytes::new())]).await
            }
        };
        if !sent {
            break;
        }
    }
    control.cancel.cancel();
    if let Some((code, reason)) = control.reason() {
        let frame = Message::Close(Some(CloseFrame {
            code: *code,
            reason: reason.as_str().into(),
        }));
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(frame)).await;
    }
}

/// Writes `frames` and flushes once; gives up (false) if the connection is closed or
/// the write fails.
async fn send(sink: &mut Sink, control: &Control, frames: Vec<Message>) -> bool {
    if frames.is_empty() {
        return true;
    }
    let write = async {
        for frame in frames {
            sink.feed(frame).await?;
        }
        sink.flush().await
    };
    tokio::select! {
        result = write => match result {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "write failed");
                false
            }
        },
        _ = control.cancel.cancelled() => false,
    }
}

/// Reads until the peer closes (or a short grace period ends), so a close frame sent
/// to it is not cut off by a reset.
async fn drain(stream: &mut SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}
