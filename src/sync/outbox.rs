//! A connection's send queue, as the rest of the server sees it: the room and the
//! connection's own handler push frames and SYNC_STATUS echoes into it without waiting,
//! and the connection's task takes them to write them.
//!
//! The bound covers everything the connection has to send, wherever it waits: still in
//! the queue, taken by the task but not written yet (a batch of frames, echoes waiting for
//! durability, echoes ready to go). A peer that stops reading therefore fills it whatever
//! it makes the server send, SYNC_STATUS echoes included, and is closed with 1013 instead
//! of growing the server's memory.
//!
//! A quiet connection's frames skip the queue: while its task has nothing in flight (it
//! said so with [`Outbox::set_idle`]), a push writes the frame straight to the socket (see
//! `wire`), so a delivery costs one `write()` and wakes no task. The task clears that state
//! (under the same lock) before it touches the socket, so the two never write at once; a
//! frame the socket took only part of goes to the task, ahead of anything else. A busy
//! connection (frames less than `BUSY_GAP` apart on average) always goes through its
//! task, which writes several frames at a time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::hub::Stats;
use super::protocol::close;
use super::wire::{RawFrame, Wire};
use crate::error::StorageError;
use crate::lock::lock;
use crate::storage::BoxFuture;

/// Average time between a connection's frames under which it counts as busy.
pub(crate) const BUSY_GAP: Duration = Duration::from_micros(1000);

/// One item of a connection's send queue.
pub(crate) enum Out {
    /// A frame to send as is.
    Frame(Bytes),
    /// A SYNC_STATUS echo, sent once the storage future resolves.
    Ack(BoxFuture<Result<(), StorageError>>, Bytes),
    /// The rest of a frame a push began writing itself: written before anything else.
    Rest(RawFrame),
}

/// A connection's send queue. Also how the server tells a connection to close, and why.
#[derive(Clone)]
pub(crate) struct Outbox(Arc<Queue>);

struct Queue {
    limit: usize,
    stats: Arc<Stats>,
    /// Items the connection's task took and has not written yet: they count against
    /// `limit` as much as the queued ones.
    taken: AtomicUsize,
    /// The socket, when pushes may write to it themselves.
    wire: Option<Wire>,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Out>,
    /// The connection's task, to wake when there is something for it.
    waker: Option<Waker>,
    /// Set once the server decides to close the connection: the close frame to send.
    close: Option<(u16, String)>,
    /// The task has nothing in flight and is not using the socket, and nothing is queued:
    /// a push may write.
    idle: bool,
    /// When frames were last written, and the average time between them (microseconds,
    /// a moving average over writes), wherever they were written.
    last_write: Option<Instant>,
    gap_us: Option<f32>,
}

impl QueueState {
    /// Notes `messages` frames written now; returns whether the connection is busy.
    fn note_write(&mut self, messages: u32) -> bool {
        let now = Instant::now();
        if let Some(last) = self.last_write {
            // In f32 from the start (a u128 to f32 conversion is a software routine).
            let gap = (now - last).as_secs_f32() * 1e6 / messages.max(1) as f32;
            self.gap_us = Some(match self.gap_us {
                None => gap,
                Some(average) => 0.75 * average + 0.25 * gap,
            });
        }
        self.last_write = Some(now);
        self.busy()
    }

    fn busy(&self) -> bool {
        self.gap_us
            .is_some_and(|gap| gap < BUSY_GAP.as_secs_f32() * 1e6)
    }
}

impl Outbox {
    /// A queue that holds at most `limit` items, counting those taken and not yet written.
    /// With `wire`, pushes write frames to it themselves while the connection is quiet.
    pub fn new(limit: usize, stats: Arc<Stats>, wire: Option<Wire>) -> Outbox {
        Outbox(Arc::new(Queue {
            limit: limit.max(1),
            stats,
            taken: AtomicUsize::new(0),
            wire,
            state: Mutex::default(),
        }))
    }

    /// Queues an item without waiting. When `limit` items are already pending (queued,
    /// or taken and not yet written), the connection is closed with 1013 instead (never a
    /// silent skip: the client resyncs when it reconnects).
    pub fn push(&self, item: Out) {
        self.offer(item, true);
    }

    /// [`Outbox::push`]; a frame is written on the spot only if `may_write` (see the
    /// module's docs). Returns whether it was.
    pub fn offer(&self, item: Out, may_write: bool) -> bool {
        let mut state = lock(&self.0.state);
        if state.close.is_some() {
            return false;
        }
        let item = match item {
            Out::Frame(frame) if state.idle && may_write => match self.write_now(&mut state, frame)
            {
                None => return true,
                Some(rest) => rest,
            },
            item => item,
        };
        // Queued: it goes out before anything pushed after it, so from now on only the
        // task writes (a later push writing itself would overtake it).
        state.idle = false;
        let pending = state.items.len() + self.0.taken.load(Ordering::Acquire);
        if pending >= self.0.limit {
            self.0
                .stats
                .slow_consumer_closes
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pending,
                "send queue full; closing the connection (it resyncs on reconnect)"
            );
            state.close = Some((
                close::TRY_AGAIN_LATER,
                "send queue full: too slow to keep up".into(),
            ));
            // The rest of a frame a push began is kept: the peer already has its start,
            // so it goes out before the close frame (see `Outbox::take_rest`).
            let rest = match state.items.pop_front() {
                Some(rest @ Out::Rest(_)) => Some(rest),
                _ => None,
            };
            state.items = rest.into_iter().collect();
        } else {
            state.items.push_back(item);
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        false
    }

    /// Writes `frame` to the socket, for an idle connection that is not busy. Returns what
    /// is left for the task: nothing, the rest of the frame, or the whole frame (the
    /// connection is busy, or the socket took none of it).
    fn write_now(&self, state: &mut QueueState, frame: Bytes) -> Option<Out> {
        let Some(wire) = &self.0.wire else {
            return Some(Out::Frame(frame));
        };
        if state.note_write(1) {
            return Some(Out::Frame(frame));
        }
        let len = frame.len() as u64;
        let mut raw = RawFrame::binary(frame);
        let result = raw.try_write(wire);
        if result.is_err() && raw.written == 0 {
            // Would block, or failed: the task writes it (and meets the error itself).
            return Some(Out::Frame(raw.into_payload()));
        }
        let stats = &self.0.stats;
        stats.messages_out.fetch_add(1, Ordering::Relaxed);
        stats.bytes_out.fetch_add(len, Ordering::Relaxed);
        match result {
            Ok(()) => None,
            Err(_) => Some(Out::Rest(raw)),
        }
    }

    /// For the connection's task: it flushed `messages` frames. Returns whether the
    /// connection is busy (see `BUSY_GAP`).
    pub fn flushed(&self, messages: u32) -> bool {
        lock(&self.0.state).note_write(messages)
    }

    /// For the connection's task, as it waits with nothing in flight and the socket
    /// flushed: pushes may write to the socket themselves until its next
    /// [`Outbox::poll_take`]. Not while items wait, the connection is closing or busy.
    pub fn set_idle(&self) {
        if self.0.wire.is_none() {
            return;
        }
        let mut state = lock(&self.0.state);
        state.idle = state.items.is_empty()
            && state.close.is_none()
            && self.0.taken.load(Ordering::Acquire) == 0
            && !state.busy();
    }

    /// The server's sync counters.
    pub fn stats(&self) -> &Stats {
        &self.0.stats
    }

    /// Closes the connection with this close frame (the first reason given wins).
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        let mut state = lock(&self.0.state);
        if state.close.is_none() {
            state.close = Some((code, reason.into()));
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// For the connection's task: swaps the queued items into `into` (when given and
    /// empty), and registers the task to be woken by the next push (with `cx`; without
    /// one, pushes wake nothing until the next call with one: the task waits for
    /// something else, a timer, and takes them all then). Returns the close frame once the
    /// server is closing the connection. The items taken still count against the limit
    /// until [`Outbox::written`] says they are gone.
    pub fn poll_take(
        &self,
        cx: Option<&Context<'_>>,
        into: Option<&mut VecDeque<Out>>,
    ) -> Option<(u16, String)> {
        let mut state = lock(&self.0.state);
        // From here until the task says otherwise, it may use the socket.
        state.idle = false;
        if let Some(close) = &state.close {
            return Some(close.clone());
        }
        if let Some(into) = into.filter(|into| into.is_empty()) {
            std::mem::swap(&mut state.items, into);
            self.0.taken.fetch_add(into.len(), Ordering::AcqRel);
        }
        match (&mut state.waker, cx) {
            (Some(waker), Some(cx)) if waker.will_wake(cx.waker()) => {}
            (waker, Some(cx)) => *waker = Some(cx.waker().clone()),
            (waker, None) => *waker = None,
        }
        None
    }

    /// For the connection's task, as it closes: the rest of a frame a push began and the
    /// task has not taken yet. The socket has the frame's start, so the close frame can
    /// only follow its end (anything else queued is dropped with the connection).
    pub fn take_rest(&self) -> Option<RawFrame> {
        let mut state = lock(&self.0.state);
        if !matches!(state.items.front(), Some(Out::Rest(_))) {
            return None;
        }
        match state.items.pop_front() {
            Some(Out::Rest(rest)) => Some(rest),
            _ => None,
        }
    }

    /// For the connection's task: one item it took was written to the socket.
    pub fn written(&self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
