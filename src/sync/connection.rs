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

/// How long a close frame may take to send and the peer's answer to arrive.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The same for a peer closed for falling behind (1013): it has stopped reading, and gets
/// the close frame (after what the kernel already holds for it) only once it reads again.
/// Until then the socket is kept (its queue is freed at once); a y-websocket client that
/// hears nothing for 30 s reconnects by itself.
const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(30);
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
        let ping_interval = hub.options.ping_interval;
        Box::pin(async move {
            let mut io = Io::new(socket, ping_interval);
            close_socket(&mut io, close::UNAUTHORIZED, "Unauthorized", CLOSE_GRACE).await
        })
        .await;
        return;
    }
    if hub.stats.connections_open.load(Ordering::Acquire) > hub.options.max_connections {
        tracing::warn!("connection limit reached; closing with 1013");
        let ping_interval = hub.options.ping_interval;
        Box::pin(async move {
            let mut io = Io::new(socket, ping_interval);
            close_socket(
                &mut io,
                close::TRY_AGAIN_LATER,
                "server full: too many connections",
                CLOSE_GRACE,
            )
            .await
        })
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
            let ping_interval = hub.options.ping_interval;
            Box::pin(async move {
                let mut io = Io::new(socket, ping_interval);
                close_socket(&mut io, code, &reason, CLOSE_GRACE).await
            })
            .await;
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
                    debug_assert!(io.direct.is_none());
                    io.direct = Some(rest);
                }
                // Only a queue overflow closes with 1013 here: that peer is not reading.
                let grace = if code == close::TRY_AGAIN_LATER {
                    SLOW_CLOSE_GRACE
                } else {
                    CLOSE_GRACE
                };
                Box::pin(close_socket(&mut io, code, &reason, grace)).await;
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

/// What the connection's task must act on next.
enum Event {
    /// A binary message arrived.
    Frame(Bytes),
    /// A text message arrived.
    Text,
    /// An inbound message was over the size limit.
    TooBig(String),
    /// The server is closing the connection: send this close frame.
    Close(u16, String),
    /// The connection is over (the peer left, a write failed, no answer to a ping).
    Gone(String),
}

/// The socket and everything waiting to go out on it.
struct Io {
    socket: Box<Socket>,
    /// Items just taken from the queue (swapped with it, so both buffers are reused).
    taken: VecDeque<Out>,
    /// Frames to send, in order.
    frames: VecDeque<Bytes>,
    /// The big message (or the rest of one a push began) being written straight to the
    /// socket.
    direct: Option<RawFrame>,
    /// SYNC_STATUS echoes waiting for durability, in order.
    acks: FuturesOrdered<BoxFuture<Result<Bytes, StorageError>>>,
    /// SYNC_STATUS echoes ready to send.
    echoes: VecDeque<Bytes>,
    ping: Interval,
    ping_due: bool,
    /// Whether anything arrived since the last ping.
    alive: bool,
    /// Whether frames were written since the last flush.
    unflushed: bool,
    /// Messages written since the last flush.
    since_flush: u32,
    /// Whether a flush is held back until `FLUSH_WINDOW` after the last, and the timer
    /// (made once, reused).
    holding: bool,
    hold: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Until the first event: whether nothing was read or written yet.
    fresh: bool,
}

impl Io {
    fn new(socket: Box<Socket>, ping_interval: Duration) -> Io {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Io {
            socket,
            taken: VecDeque::new(),
            frames: VecDeque::new(),
            direct: None,
            acks: FuturesOrdered::new(),
            echoes: VecDeque::new(),
            ping,
            ping_due: false,
            alive: true,
            unflushed: false,
            since_flush: 0,
            holding: false,
            hold: None,
            fresh: true,
        }
    }

    /// Takes what is queued, sends what the socket accepts, and returns the next inbound
    /// message or the reason to stop.
    fn poll_event(&mut self, cx: &mut Context<'_>, out: &Outbox) -> Poll<Event> {
        if std::mem::take(&mut self.fresh) {
            // A client sends its step 1 as soon as it is connected: when it is already
            // here, it is answered before anything is written, so the server's step 1 and
            // step 2 leave in one write (one send, and one wake-up of the client, instead of
            // two of each per handshake).
            if let Poll::Ready(event) = self.poll_read(cx) {
                return Poll::Ready(event);
            }
        }
        // Whether frames of the last batch are still waiting for the socket: what the room
        // queues meanwhile is not taken, though its pushes wake the task.
        let mut behind = false;
        // While a flush is held (see `FLUSH_WINDOW`), what the room queues stays in the
        // queue and wakes nothing: the hold's timer wakes the task, which takes it all.
        if self.held(cx) {
            if let Some((code, reason)) = out.poll_take(None, None) {
                return Poll::Ready(Event::Close(code, reason));
            }
        } else if self.frames.is_empty() {
            // Frames are taken from the queue only once the previous batch is sent, so a
            // peer that stops reading fills its queue (and is closed) instead of this
            // buffer.
            if let Some((code, reason)) = out.poll_take(Some(cx), Some(&mut self.taken)) {
                return Poll::Ready(Event::Close(code, reason));
            }
            for item in self.taken.drain(..) {
                match item {
                    Out::Frame(frame) => self.frames.push_back(frame),
                    Out::Ack(durable, frame) => self
                        .acks
                        .push_back(Box::pin(async move { durable.await.map(|()| frame) })),
                    Out::Rest(rest) => {
                        // Only ever the first item: the push found nothing in flight.
                        debug_assert!(self.direct.is_none() && self.frames.is_empty());
                        out.written();
                        self.direct = Some(rest);
                    }
                }
            }
            shrink(&mut self.taken);
        } else if let Some((code, reason)) = out.poll_take(Some(cx), None) {
            return Poll::Ready(Event::Close(code, reason));
        } else {
            behind = true;
        }
        while let Poll::Ready(Some(done)) = self.acks.poll_next_unpin(cx) {
            match done {
                Ok(frame) => self.echoes.push_back(frame),
                Err(e) => {
                    tracing::error!(error = %e, "storage failed; cannot acknowledge");
                    out.close(close::INTERNAL_ERROR, "storage failed");
                    return Poll::Ready(Event::Close(
                        close::INTERNAL_ERROR,
                        "storage failed".into(),
                    ));
                }
            }
        }
        if self.ping.poll_tick(cx).is_ready() {
            if !std::mem::replace(&mut self.alive, false) {
                return Poll::Ready(Event::Gone("no answer to the last ping".into()));
            }
            self.ping_due = true;
        }
        if let Err(e) = self.poll_write(cx, out) {
            return Poll::Ready(Event::Gone(format!("write failed: {e}")));
        }
        if behind && self.frames.is_empty() {
            // The batch is out: what was queued behind it is taken on the next poll (the
            // pushes that queued it spent their wake-ups while it could not be taken).
            cx.waker().wake_by_ref();
        }
        if self.direct.is_some() {
            // The socket would answer a ping or a close in the middle of the frame: read
            // once the frame is out (the write wakes this task).
            return Poll::Pending;
        }
        match self.poll_read(cx) {
            Poll::Pending => {
                if let Err(e) = self.settle(cx, out) {
                    return Poll::Ready(Event::Gone(format!("write failed: {e}")));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }

    /// The next inbound message, or the reason to stop.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        loop {
            let message = match self.socket.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Event::Gone("the peer left".into())),
                Poll::Ready(Some(Err(tungstenite::Error::Capacity(e)))) => {
                    return Poll::Ready(Event::TooBig(e.to_string()))
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Event::Gone(format!("read failed: {e}")))
                }
                Poll::Ready(Some(Ok(message))) => message,
            };
            self.alive = true;
            match message {
                Message::Binary(frame) => return Poll::Ready(Event::Frame(frame)),
                Message::Text(_) => return Poll::Ready(Event::Text),
                // Pings and a close are answered by the socket (flushed in `settle`,
                // before pushes may write again); after a close the stream ends.
                Message::Ping(_) | Message::Close(_) => self.unflushed = true,
                Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Before the task waits: flushes what the socket answered to pings, and when nothing
    /// is in flight, lets pushes write to the socket themselves (see `outbox`).
    fn settle(&mut self, cx: &mut Context<'_>, out: &Outbox) -> Result<(), tungstenite::Error> {
        if self.unflushed && !self.holding {
            if let Poll::Ready(result) = self.socket.poll_flush_unpin(cx) {
                result?;
                self.unflushed = false;
            }
        }
        let quiet = !self.unflushed
            && !self.holding
            && !self.ping_due
            && self.direct.is_none()
            && self.frames.is_empty()
            && self.echoes.is_empty();
        if quiet {
            out.set_idle();
        }
        Ok(())
    }

    /// Sends what is waiting while the socket accepts it, then flushes.
    fn poll_write(&mut self, cx: &mut Context<'_>, out: &Outbox) -> Result<(), tungstenite::Error> {
        loop {
            if self.direct.is_some() {
                // What the socket buffered goes first.
                if self.unflushed {
                    match self.socket.poll_flush_unpin(cx) {
                        Poll::Pending => return Ok(()),
                        Poll::Ready(result) => result?,
                    }
                    self.unflushed = false;
                }
                if !self.poll_direct(cx)? {
                    return Ok(());
                }
                continue;
            }
            if !self.has_output() {
                break;
            }
            match self.socket.poll_ready_unpin(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(result) => result?,
            }
            if let Some(message) = self.next_message(out) {
                self.socket.start_send_unpin(message)?;
                self.unflushed = true;
                self.since_flush += 1;
            }
        }
        shrink(&mut self.frames);
        shrink(&mut self.echoes);
        if self.unflushed && !self.held(cx) {
            match self.socket.poll_flush_unpin(cx) {
                Poll::Pending => {}
                Poll::Ready(result) => {
                    result?;
                    self.unflushed = false;
                    if out.flushed(std::mem::take(&mut self.since_flush)) {
                        self.hold();
                    }
                }
            }
        }
        Ok(())
    }

    /// After a flush on a busy connection: holds the next flush until `FLUSH_WINDOW`
    /// from now. The timer is polled (and wakes the task) only once something is pushed
    /// during the hold; a connection that gets nothing costs no wake-up.
    fn hold(&mut self) {
        let until = tokio::time::Instant::now() + FLUSH_WINDOW;
        match &mut self.hold {
            Some(hold) => hold.as_mut().reset(until),
            None => self.hold = Some(Box::pin(tokio::time::sleep_until(until))),
        }
        self.holding = true;
    }

    /// Whether a flush is held (see `FLUSH_WINDOW`); the hold's timer wakes the task
    /// when it ends.
    fn held(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.holding {
            return false;
        }
        let Some(hold) = self.hold.as_mut() else {
            return false;
        };
        if hold.as_mut().poll(cx).is_pending() {
            return true;
        }
        self.holding = false;
        false
    }

    /// Writes the direct frame on; true once all of it is written.
    fn poll_direct(&mut self, cx: &mut Context<'_>) -> Result<bool, tungstenite::Error> {
        let Some(direct) = &mut self.direct else {
            return Ok(true);
        };
        let stream = self.socket.get_mut();
        while !direct.is_done() {
            match Pin::new(&mut *stream).poll_write_vectored(cx, &direct.rest()) {
                Poll::Pending => return Ok(false),
                Poll::Ready(Ok(0)) => {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into())
                }
                Poll::Ready(Ok(n)) => {
                    direct.written += n;
                    // The peer is taking it: as good as an answer to a ping.
                    self.alive = true;
                }
                Poll::Ready(Err(e)) => return Err(e.into()),
            }
        }
        self.direct = None;
        Ok(true)
    }

    fn has_output(&self) -> bool {
        self.ping_due || !self.echoes.is_empty() || !self.frames.is_empty()
    }

    /// The next message to send (a ping, echoes, frames), or `None` when it is a big
    /// one, set up to be written directly. An echo or frame leaves the queue's count here:
    /// from now on the socket's bounded write buffer (or `direct`) holds it.
    fn next_message(&mut self, out: &Outbox) -> Option<Message> {
        if std::mem::take(&mut self.ping_due) {
            return Some(Message::Ping(Bytes::new()));
        }
        let frame = match self.echoes.pop_front() {
            Some(echo) => echo,
            None => self.frames.pop_front()?,
        };
        out.written();
        let stats = out.stats();
        stats.messages_out.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes_out
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if frame.len() <= DIRECT {
            return Some(Message::Binary(frame));
        }
        self.direct = Some(RawFrame::binary(frame));
        None
    }
}

/// Gives back a buffer's memory once it is empty, so idle connections hold none.
fn shrink<T>(buffer: &mut VecDeque<T>) {
    if buffer.is_empty() && buffer.capacity() > 0 {
        *buffer = VecDeque::new();
    }
}

/// Finishes a direct frame, sends a close frame after whatever is already in the
/// socket's buffer, then reads until the peer answers (or the grace period ends), so the
/// close frame is not cut off by a reset.
async fn close_socket(io: &mut Io, code: u16, reason: &str, grace: Duration) {
    // Frames taken from the queue but not written yet: the peer resyncs when it comes
    // back, so they are dropped rather than written ahead of the close frame.
    io.frames = VecDeque::new();
    let frame = CloseFrame {
        code: code.into(),
        reason: close::fit(reason).into(),
    };
    let mut frame = Some(frame);
    let mut flushed = false;
    let _ = tokio::time::timeout(
        grace,
        poll_fn(|cx| {
            match io.poll_direct(cx) {
                Ok(true) => {}
                Ok(false) => return Poll::Pending,
                Err(_) => return Poll::Ready(()),
            }
            // Queued without waiting for the socket: a peer that stopped reading still
            // gets the close frame if it reads again within the grace period.
            if let Some(frame) = frame.take() {
                if io
                    .socket
                    .start_send_unpin(Message::Close(Some(frame)))
                    .is_err()
                {
                    return Poll::Ready(());
                }
            }
            if !flushed {
                match io.socket.poll_flush_unpin(cx) {
                    Poll::Ready(Ok(())) => flushed = true,
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            loop {
                match io.socket.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }),
    )
    .await;
}
