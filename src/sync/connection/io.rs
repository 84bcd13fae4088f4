//! A connection's socket and what waits to go out on it: reading the next message,
//! writing queued frames (several per write when the connection is busy), direct frames,
//! SYNC_STATUS echoes, pings, and the close.

use super::*;

/// What the connection's task must act on next.
pub(super) enum Event {
    /// A binary message arrived.
    Frame(Bytes),
    /// A text message arrived.
    Text,
    /// An inbound message was over the size limit.
    TooBig(String),
    /// The server is closing the connection: send this close frame.
    Close(u16, String),
    /// The peer sent a close frame: the socket's answer to it is the last thing sent.
    PeerClosed,
    /// The connection is over (the peer left, a write failed, no answer to a ping).
    Gone(String),
}

/// The socket and everything waiting to go out on it.
pub(super) struct Io {
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
    pub(super) fn new(socket: Box<Socket>, ping_interval: Duration) -> Io {
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

    /// The rest of a frame a push began writing: written before anything else.
    pub(super) fn finish_first(&mut self, rest: RawFrame) {
        debug_assert!(self.direct.is_none());
        self.direct = Some(rest);
    }

    /// Takes what is queued, sends what the socket accepts, and returns the next inbound
    /// message or the reason to stop.
    pub(super) fn poll_event(&mut self, cx: &mut Context<'_>, out: &Outbox) -> Poll<Event> {
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
                // A ping is answered by the socket (flushed in `settle`, before pushes
                // may write again).
                Message::Ping(_) => self.unflushed = true,
                // The socket has queued its answer; nothing else may follow it.
                Message::Close(_) => return Poll::Ready(Event::PeerClosed),
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

/// Finishes a direct frame, sends a close frame (`close`; without one, the answer the
/// socket queued to the peer's) after whatever is already in the socket's buffer, then
/// reads until the peer answers (or the grace period ends), so the close frame is not cut
/// off by a reset.
pub(super) async fn close_socket(io: &mut Io, close: Option<(u16, &str)>, grace: Duration) {
    // Frames taken from the queue but not written yet: the peer resyncs when it comes
    // back, so they are dropped rather than written ahead of the close frame.
    io.frames = VecDeque::new();
    // Answering the peer's close: the socket ends its stream as soon as it is read, even
    // with the answer still unwritten, so nothing is read before the answer is out.
    let answering = close.is_none();
    let mut frame = close.map(|(code, reason)| CloseFrame {
        code: code.into(),
        reason: close::fit(reason).into(),
    });
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
                    Poll::Pending if answering => return Poll::Pending,
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
