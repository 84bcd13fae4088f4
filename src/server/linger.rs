//! Lingering close: after the server is done with a connection, it reads and discards
//! what the client is still sending before closing, so an early answer (a 413 for a body
//! over `body_limit`) reaches a client that sends its whole body before reading.
//!
//! Closing a socket whose receive buffer holds unread bytes makes the kernel send a reset
//! instead of a FIN; the client, still writing its body, gets "broken pipe" or "connection
//! reset" and loses the answer already sent. Most HTTP libraries (Python's urllib and
//! requests among them) do not send `Expect: 100-continue`, so they only read once the
//! whole body is out. The server half-closes instead (the client reads the answer and the
//! end of the stream) and drains until the client closes too, within bounds.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The longest wait for the client's next bytes while draining.
const LINGER_IDLE: Duration = Duration::from_secs(2);
/// The longest a connection drains in all.
const LINGER_TOTAL: Duration = Duration::from_secs(30);

/// Where a [`Returning`] stream goes back to once its user drops it.
pub(super) type Slot = Arc<Mutex<Option<Arc<TcpStream>>>>;

/// A TCP stream that goes back to its slot when dropped (hyper owns the stream while it
/// serves the connection and drops it at the end, or hands it on to an upgrade). The
/// stream is shared ([`Returning::shared`]): a sync connection's send queue writes to it
/// directly while the connection's task is idle (see `sync::outbox`).
pub(super) struct Returning {
    tcp: Option<Arc<TcpStream>>,
    slot: Slot,
}

impl Returning {
    pub fn new(tcp: TcpStream) -> (Returning, Slot) {
        let slot = Slot::default();
        let stream = Returning {
            tcp: Some(Arc::new(tcp)),
            slot: slot.clone(),
        };
        (stream, slot)
    }

    /// Another handle on the stream.
    pub fn shared(&self) -> Arc<TcpStream> {
        self.tcp().clone()
    }

    fn tcp(&self) -> &Arc<TcpStream> {
        // Only `drop` takes it.
        self.tcp.as_ref().expect("the stream is only taken on drop")
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(tcp) = self.tcp.take() {
            *crate::lock::lock(&self.slot) = Some(tcp);
        }
    }
}

impl AsyncRead for Returning {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        crate::sync::wire::poll_read(self.get_mut().tcp(), cx, buf)
    }
}

impl AsyncWrite for Returning {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        crate::sync::wire::poll_write_vectored(self.get_mut().tcp(), cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        crate::sync::wire::poll_write_vectored(self.get_mut().tcp(), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // TCP streams buffer nothing in user space.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(crate::sync::wire::shutdown_write(self.get_mut().tcp()))
    }
}

/// Half-closes the stream back in `slot` (if hyper is done with it and did not hand it to
/// an upgrade), then reads and discards until the client closes, stops sending for
/// `LINGER_IDLE`, `LINGER_TOTAL` has passed, or the server stops.
pub(super) async fn linger(slot: &Slot, stop: &mut watch::Receiver<bool>) {
    let Some(tcp) = crate::lock::lock(slot).take() else {
        return;
    };
    // Another handle still held (a sync connection's queue): that connection closes it.
    let Ok(mut tcp) = Arc::try_unwrap(tcp) else {
        return;
    };
    if tcp.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tokio::time::timeout(LINGER_IDLE, tcp.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(LINGER_TOTAL, drain) => {}
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
}
