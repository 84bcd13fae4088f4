//! A connection's send queue, as the rest of the server sees it: the room and the
//! connection's own handler push frames and SYNC_STATUS echoes into it without waiting,
//! and the connection's task takes them to write them.
//!
//! The bound covers everything the connection has to send, wherever it waits: still in
//! the queue, taken by the task but not written yet (a batch of frames, echoes waiting for
//! durability, echoes ready to go). A peer that stops reading therefore fills it whatever
//! it makes the server send, SYNC_STATUS echoes included, and is closed with 1013 instead
//! of growing the server's memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use bytes::Bytes;

use super::hub::Stats;
use super::protocol::close;
use crate::error::StorageError;
use crate::lock::lock;
use crate::storage::BoxFuture;

/// One item of a connection's send queue.
pub(crate) enum Out {
    /// A frame to send as is.
    Frame(Bytes),
    /// A SYNC_STATUS echo, sent once the storage future resolves.
    Ack(BoxFuture<Result<(), StorageError>>, Bytes),
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
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Out>,
    /// The connection's task, to wake when there is something for it.
    waker: Option<Waker>,
    /// Set once the server decides to close the connection: the close frame to send.
    close: Option<(u16, String)>,
}

impl Outbox {
    /// A queue that holds at most `limit` items, counting those taken and not yet written.
    pub fn new(limit: usize, stats: Arc<Stats>) -> Outbox {
        Outbox(Arc::new(Queue {
            limit: limit.max(1),
            stats,
            taken: AtomicUsize::new(0),
            state: Mutex::default(),
        }))
    }

    /// Queues an item without waiting. When `limit` items are already pending (queued,
    /// or taken and not yet written), the connection is closed with 1013 instead (never a
    /// silent skip: the client resyncs when it reconnects).
    pub fn push(&self, item: Out) {
        let mut state = lock(&self.0.state);
        if state.close.is_some() {
            return;
        }
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
            state.items = VecDeque::new();
        } else {
            state.items.push_back(item);
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
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

    /// For the connection's task: one item it took was written to the socket.
    pub fn written(&self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn frame() -> Out {
        Out::Frame(Bytes::from_static(b"x"))
    }

    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn pushes_wake_the_task_only_while_it_asks_to_be_woken() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let out = Outbox::new(8, Arc::default());
        assert!(out.poll_take(Some(&cx), None).is_none());
        out.push(frame());
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // Holding: pushes queue silently, and are all there when the task takes them.
        assert!(out.poll_take(Some(&cx), None).is_none());
        assert!(out.poll_take(None, None).is_none());
        out.push(frame());
        out.push(frame());
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        let mut taken = VecDeque::new();
        assert!(out.poll_take(Some(&cx), Some(&mut taken)).is_none());
        assert_eq!(taken.len(), 3);
        // A close still shows when the task looks, woken or not.
        assert!(out.poll_take(None, None).is_none());
        out.close(close::GOING_AWAY, "bye");
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(
            out.poll_take(None, None).map(|(code, _)| code),
            Some(close::GOING_AWAY)
        );
    }

    #[test]
    fn items_taken_and_not_written_count_against_the_limit() {
        let out = Outbox::new(3, Arc::default());
        let cx = Context::from_waker(Waker::noop());
        let mut taken = VecDeque::new();
        out.push(frame());
        out.push(frame());
        assert!(out.poll_take(Some(&cx), Some(&mut taken)).is_none());
        assert_eq!(taken.len(), 2);
        // Two taken, one queued: the limit is reached.
        out.push(frame());
        out.push(frame());
        assert_eq!(
            out.poll_take(Some(&cx), None).map(|(code, _)| code),
            Some(close::TRY_AGAIN_LATER)
        );
        assert_eq!(out.stats().slow_consumer_closes.load(Ordering::Relaxed), 1);

        // Written items make room again.
        let out = Outbox::new(2, Arc::default());
        let mut taken = VecDeque::new();
        out.push(frame());
        out.push(frame());
        assert!(out.poll_take(Some(&cx), Some(&mut taken)).is_none());
        taken.clear();
        out.written();
        out.written();
        out.push(frame());
        out.push(frame());
        assert!(out.poll_take(Some(&cx), Some(&mut taken)).is_none());
        assert_eq!(taken.len(), 2);
    }
}
