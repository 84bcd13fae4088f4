//! Binding the server's listener with an accept queue deep enough for bursts of clients.
//!
//! `tokio::net::TcpListener::bind` asks the kernel for a queue of 128 connections (the
//! standard library's value). A few hundred clients connecting at once (a reconnect wave
//! after a deploy, a load test) overflow it whenever the accept loop falls behind for a
//! moment, and Linux then drops their SYNs: each dropped client waits a whole second for
//! its retransmit, which is what a burst's slowest handshakes showed.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The accept queue asked for; the kernel caps it (`net.core.somaxconn`, 4096 on Linux
/// since 5.4).
pub(super) const ACCEPT_BACKLOG: u32 = 4096;

/// Binds `addr` like `TcpListener::bind` (with `SO_REUSEADDR` on Unix, so a restarted
/// server can bind at once), with an accept queue of [`ACCEPT_BACKLOG`].
pub(super) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Clients that arrive while nothing accepts them wait in the accept queue: many more
    /// than 128 of them complete their TCP handshake at once instead of losing their SYN
    /// (and a second) to a full queue.
    #[tokio::test]
    async fn a_burst_of_clients_waits_in_the_accept_queue() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nothing accepts: every connection must fit in the queue.
        let connected = tokio::task::spawn_blocking(move || {
            (0..400)
                .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)))
                .collect::<Result<Vec<_>, _>>()
                .map(|streams| streams.len())
        })
        .await
        .unwrap();
        assert_eq!(connected.unwrap(), 400);
        drop(listener);
    }
}
