//! One sync connection, served by one task that owns its socket: it handles inbound
//! messages in order, and between them sends what the room queued for it (many frames
//! per flush), SYNC_STATUS echoes once durable, and pings.
//!
//! Big messages (a large doc's step2) are written from the shared bytes straight to the
//! socket, never copied into a connection's write buffer: 150 joiners of a 20 MB doc
//! share one encoding.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWrite;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::Instrument;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

use super::hub::SyncHub;
use super::protocol::{self, close, Inbound};
use super::room::{Out, Outbox, Room};
use super::wire::{RawFrame, Wire};
use crate::access::Access;
use crate::storage::BoxFuture;
use crate::StorageError;

mod io;
use io::{close_socket, Event, Io};

/// How long a close frame may take to send and the peer's answer to arrive.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The same for a peer closed for falling behind (1013): it has stopped reading, and gets
/// the close frame (after what the kernel already holds for it) only once it reads again.
/// Until then the socket is kept (its queue is freed at once); a y-websocket client that
/// hears nothing for 30 s reconnects by itself.
const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(30);
/// The code a connection's queue is closed with once the peer has closed (not sent: the
/// answer to the peer's close frame is the socket's).
const PEER_CLOSED: u16 = 1000;
/// Reason of the 4403 close of a read-only connection that wrote.
const READ_ONLY: &str = "Forbidden: this connection may only read";
/// Messages longer than this are written straight to the socket.
const DIRECT: usize = 16 * 1024;
/// Bytes the socket reads at a time; small, so idle connections stay cheap (a big frame
/// still gets a buffer of its size).
const READ_BUFFER: usize = 512;
/// Bytes of frames gathered before a write; a flush writes the rest.
const WRITE_BUFFER: usize = 16 * 1024;
/// A busy connection (frames arriving less than `outbox::BUSY_GAP` apart on average) that flushed
/// less than this long ago holds its next flush until then, so its frames go out several
/// per write (one `write()` per delivery is most of the CPU of fan-out). A quiet one
/// flushes at once: latency only grows under load, by at most this.
const FLUSH_WINDOW: Duration = Duration::from_millis(2);

/// The byte stream a sync connection runs over: for the server, an upgraded HTTP
/// connection. The sync layer knows nothing of HTTP; the server hands it the stream.
pub(crate) trait Transport:
    tokio::io::AsyncRead + AsyncWrite + Unpin + Send + 'static
{
}

impl<T: tokio::io::AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// A sync connection's socket.
pub(crate) type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Transport>>;

/// The WebSocket settings of sync connections (a frame is never larger than a message).
pub(crate) fn config(max_message_size: usize, max_frame_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_frame_size.min(max_message_size)))
}

pub(crate) async fn run(
    socket: Box<Socket>,
    hub: Arc<SyncHub>,
    id: String,
    access: Access,
    peer: Option<SocketAddr>,
    wire: Option<Wire>,
) {
    let conn = hub.next_conn_id();
    let span = tracing::info_span!("sync", room = %id, conn);
    hub.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
    hub.stats.connections_open.fetch_add(1, Ordering::Relaxed);
    let peer = peer.map(|peer| peer.ip());
    serve(socket, &hub, id, conn, access, peer, wire)
        .instrument(span)
        .await;
    hub.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
}

async fn serve(
    socket: Box<Socket>,
    hub: &Arc<SyncHub>,
    id: String,
    conn: u64,
    access: Access,
    peer: Option<IpAddr>,
    wire: Option<Wire>,
) {
    if access == Access::Denied {
        hub.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::info!("no valid token; closing with 4401");
        refuse(
            socket,
            hub.options.ping_interval,
            close::UNAUTHORIZED,
            "Unauthorized",
        )
        .await;
        return;
    }
    if hub.stats.connections_open.load(Ordering::Acquire) > hub.options.max_connections {
        tracing::warn!("connection limit reached; closing with 1013");
        let reason = "server full: too many connections";
        refuse(
            socket,
            hub.options.ping_interval,
            close::TRY_AGAIN_LATER,
            reason,
        )
        .await;
        return;
    }
    let read_only = access == Access::ReadOnly;
    let out = Outbox::new(hub.options.send_queue, hub.stats.clone(), wire);
    // Futures awaited once or rarely are boxed, so an idle connection's task does not
    // carry their state.
    let (entry, room) = match Box::pin(hub.join(&id, conn, out.clone(), peer)).await {
        Ok(joined) => joined,
        Err(e) => {
            let (code, reason) = e.close_frame(&id);
            tracing::info!(code, %reason, "connection refused");
            refuse(socket, hub.options.ping_interval, code, &reason).await;
            return;
        }
    };
    tracing::debug!("connected");
    let mut io = Io::new(socket, hub.options.ping_interval);
    let mut shutdown = pin!(hub.shutdown.cancelled());
    // The first message must come within the handshake deadline (boxed, and dropped once
    // it has come, so idle connections do not carry the timer).
    let mut deadline = Some(Box::pin(tokio::time::sleep(hub.options.handshake_timeout)));
    loop {
        let event = poll_fn(|cx| {
            if shutdown.as_mut().poll(cx).is_ready() {
                out.close(close::GOING_AWAY, "server shutting down");
            }
            if deadline
                .as_mut()
                .is_some_and(|d| d.as_mut().poll(cx).is_ready())
            {
                deadline = None;
                tracing::info!("no message within the handshake deadline; closing");
                out.close(
                    close::POLICY_VIOLATION,
                    "no message within the handshake deadline",
                );
            }
            io.poll_event(cx, &out)
        })
        .await;
        if matches!(event, Event::Frame(_)) {
            deadline = None;
        }
        match event {
            Event::Frame(frame) => {
                hub.stats.messages_in.fetch_add(1, Ordering::Relaxed);
                hub.stats
                    .bytes_in
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
                if let Err((code, reason)) =
                    Box::pin(handle(&room, conn, &out, frame, read_only)).await
                {
                    tracing::warn!(code, %reason, "closing the connection after bad input");
                    out.close(code, reason);
                }
            }
            Event::Text => {
                tracing::warn!("text frame received; closing");
                out.close(
                    close::UNSUPPORTED_DATA,
                    "text frames are not supported: send binary y-websocket messages",
                );
            }
            Event::TooBig(detail) => {
                tracing::warn!(%detail, "frame or message over the size limit; closing with 1009");
                out.close(close::MESSAGE_TOO_BIG, "message too big");
            }
            Event::Close(code, reason) => {
                tracing::info!(code, %reason, "closed by the server");
                // A frame a push began writing (the task had nothing in flight then) is
                // finished before the close frame, which would otherwise land inside it.
                if let Some(rest) = out.take_rest() {
                    io.finish_first(rest);
                }
                // Only a queue overflow closes with 1013 here: that peer is not reading.
                let grace = if code == close::TRY_AGAIN_LATER {
                    SLOW_CLOSE_GRACE
                } else {
                    CLOSE_GRACE
                };
                Box::pin(close_socket(&mut io, Some((code, &reason)), grace)).await;
                break;
            }
            Event::PeerClosed => {
                tracing::debug!("closed by the peer");
                // Nothing more is sent: what the room pushes from now on is not queued
                // (a busy room would otherwise fill the queue during the close's grace).
                out.close(PEER_CLOSED, "closed by the peer");
                Box::pin(close_socket(&mut io, None, CLOSE_GRACE)).await;
                break;
            }
            Event::Gone(why) => {
                tracing::debug!(%why, "disconnected");
                break;
            }
        }
    }
    drop(io);
    hub.leave(entry, room, conn);
}

/// Closes a connection the server does not serve with this close frame (boxed: a
/// connection that is served does not carry the state of its closing).
async fn refuse(socket: Box<Socket>, ping_interval: Duration, code: u16, reason: &str) {
    Box::pin(async move {
        let mut io = Io::new(socket, ping_interval);
        close_socket(&mut io, Some((code, reason)), CLOSE_GRACE).await
    })
    .await
}

/// Handles one inbound frame.
async fn handle(
    room: &Arc<Room>,
    conn: u64,
    out: &Outbox,
    frame: Bytes,
    read_only: bool,
) -> Result<(), (u16, String)> {
    match protocol::decode(&frame) {
        Err(e) => Err((close::INVALID_PAYLOAD, format!("malformed message: {e}"))),
        Ok(Inbound::Step1(sv)) => {
            room.step2(sv, out).await;
            Ok(())
        }
        Ok(Inbound::Update(update)) if read_only => match room.changes(update).await {
            Err(e) => Err((close::INVALID_PAYLOAD, format!("bad update: {e}"))),
            // What the doc already has: a read-only client's answer to step1.
            Ok(false) => Ok(()),
            Ok(true) => {
                tracing::warn!("read-only connection sent a doc update; refused");
                Err((close::FORBIDDEN, READ_ONLY.into()))
            }
        },
        Ok(Inbound::Update(update)) => room.apply(conn, update).await,
        Ok(Inbound::Awareness(update)) => room.apply_awareness(conn, update, frame),
        Ok(Inbound::QueryAwareness) => {
            room.send_awareness(out);
            Ok(())
        }
        Ok(Inbound::SyncStatus) if frame.len() > protocol::MAX_SYNC_STATUS => Err((
            close::MESSAGE_TOO_BIG,
            format!(
                "SYNC_STATUS too big: at most {} bytes",
                protocol::MAX_SYNC_STATUS
            ),
        )),
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
