//! Idle connections: a connection with no request in flight for `header_read_timeout` is
//! shut down gracefully. hyper bounds how long HTTP/1 waits for request headers, but an
//! HTTP/2 connection that opens, sends its settings and then no request would otherwise be
//! held (a socket and a task) for as long as its client likes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::lock::lock;

/// A connection's requests in flight, and when the last one ended.
pub(super) struct Idle {
    inflight: AtomicUsize,
    since: Mutex<Instant>,
    /// Set once a request was answered 101: the connection now belongs to its upgrade.
    upgraded: AtomicBool,
}

/// A response body that keeps its request in flight until it is sent (or dropped), so a
/// long download is not taken for an idle connection.
pub(super) struct Guarded {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl Guarded {
    pub fn new(body: axum::body::Body, in_flight: InFlight) -> Guarded {
        Guarded {
            body,
            _in_flight: in_flight,
        }
    }
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A request in flight; ends (on drop) when its response is sent or it is dropped.
pub(super) struct InFlight(Arc<Idle>);

impl InFlight {
    /// Marks the connection upgraded (the response was 101).
    pub fn upgraded(&self) {
        self.0.upgraded.store(true, Ordering::Release);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *lock(&self.0.since) = Instant::now();
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Idle {
    pub fn new() -> Arc<Idle> {
        Arc::new(Idle {
            inflight: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
            upgraded: AtomicBool::new(false),
        })
    }

    /// A request starts.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `timeout` (never,
    /// once it was upgraded).
    pub async fn elapsed(&self, timeout: Duration) {
        loop {
            if self.upgraded.load(Ordering::Acquire) {
                return std::future::pending().await;
            }
            let wait = if self.inflight.load(Ordering::Acquire) > 0 {
                timeout
            } else {
                let idle = lock(&self.since).elapsed();
                if idle >= timeout {
                    return;
                }
                timeout - idle
            };
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}
