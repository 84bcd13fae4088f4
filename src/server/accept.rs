//! The accept loop: accepts TCP connections and serves the app on each, HTTP/1 (with
//! upgrades: the sync route's WebSockets) or HTTP/2, until the server stops.
//!
//! Like `axum::serve`, plus TCP_NODELAY, a deadline for request headers, a deadline for
//! idle HTTP/2 connections, and a lingering close (see [`linger`]), so a client still
//! sending a body the server refused reads the answer instead of a reset.
//!
//! The protocol is told from the connection's first bytes, which the loop peeks at anyway
//! (see [`first_bytes`]), and the connection goes straight to hyper's HTTP/1 or HTTP/2
//! connection. (hyper-util's `auto` connection reads them a second time, 24 bytes at a
//! time, and hands them to HTTP/1 through a rewinding wrapper: a read syscall more per
//! connection, a second parse of a partial request, and a request buffer grown to 16 KiB.
//! A burst of WebSocket handshakes spends most of its server time per connection in such
//! fixed costs.)

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{idle, linger};
use crate::sync::Stats;

/// The first bytes of every HTTP/2 connection (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// hyper's settings for each protocol, shared by every connection.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// Accepts connections and serves `app` on each until `stop` turns true; then stops
/// accepting, lets every connection finish the requests it is serving, and returns once
/// they are done (upgraded sync connections are the hub's).
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    mut stop: watch::Receiver<bool>,
    header_read_timeout: Duration,
    stats: Arc<Stats>,
) {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2.enable_connect_protocol();
    let builders = Arc::new(Builders { http1, http2 });
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, as axum does.
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small JSON responses and sync frames must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            tcp,
            peer,
            app.clone(),
            builders.clone(),
            stop.clone(),
            header_read_timeout,
            stats.clone(),
        ));
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection, then lingers (see [`linger`]).
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    builders: Arc<Builders>,
    mut stop: watch::Receiver<bool>,
    header_read_timeout: Duration,
    stats: Arc<Stats>,
) {
    // hyper's header deadline starts once it serves the connection, which needs the
    // protocol, told from the first bytes: a connection that sends none is held to the
    // deadline here. It has no request to finish either: a stopping server closes it.
    let told = tokio::select! {
        told = first_bytes(&tcp, header_read_timeout) => told,
        _ = stop.wait_for(|stopped| *stopped) => return,
    };
    let Some(protocol) = told else {
        // Counted, and logged at debug only: a browser's unused preconnect does this, and
        // a line per connection would let anyone flood the log.
        stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            %peer,
            timeout = ?header_read_timeout,
            "closed a connection that sent no request in time"
        );
        return;
    };
    let (tcp, returned) = linger::Returning::new(tcp);
    // A sync connection this becomes writes to the stream directly at times (see
    // `sync::outbox`): an upgrade request carries a handle on it. Never over HTTP/2, whose
    // streams share the connection (h2 refuses an `Upgrade` header anyway).
    let wire = (protocol == Protocol::Http1).then(|| tcp.shared());
    // Whether the connection got as far as a request: a header deadline hit before that
    // is a client that never sent one; after it, an idle keep-alive connection.
    let served = Arc::new(AtomicBool::new(false));
    let seen = served.clone();
    let idle = idle::Idle::new();
    let requests = idle.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        seen.store(true, Ordering::Relaxed);
        let in_flight = requests.begin();
        // The client's address, for per-client limits (as `axum::serve` provides it).
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        // Only a WebSocket upgrade needs the stream (every other request would pay for
        // the extension's allocation).
        if let Some(wire) = wire
            .as_ref()
            .filter(|_| request.headers().contains_key(axum::http::header::UPGRADE))
        {
            request
                .extensions_mut()
                .insert(super::sync_route::TcpStreamOf(wire.clone()));
        }
        // A body that stops arriving fails after the same deadline as slow headers,
        // instead of holding the connection and its task forever.
        let request = request.map(|body| {
            axum::body::Body::new(tower_http::timeout::TimeoutBody::new(
                header_read_timeout,
                body,
            ))
        });
        let response = tower::ServiceExt::oneshot(app.clone(), request);
        async move {
            let response = response.await;
            if matches!(&response, Ok(r) if r.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS)
            {
                in_flight.upgraded();
            }
            response.map(|r| r.map(|body| idle::Guarded::new(body, in_flight)))
        }
    });
    let io = TokioIo::new(tcp);
    // Awaited in its own statement, so hyper's connection (and with it the stream) is
    // dropped before the linger.
    let result = match protocol {
        Protocol::Http1 => {
            let connection = builders.http1.serve_connection(io, service).with_upgrades();
            let shutdown = http1::UpgradeableConnection::graceful_shutdown;
            until_done(
                connection,
                shutdown,
                &idle,
                &mut stop,
                peer,
                header_read_timeout,
            )
            .await
        }
        Protocol::Http2 => {
            let connection = builders.http2.serve_connection(io, service);
            let shutdown = http2::Connection::graceful_shutdown;
            // Boxed: inline, HTTP/2's larger connection would grow every connection's task.
            Box::pin(until_done(
                connection,
                shutdown,
                &idle,
                &mut stop,
                peer,
                header_read_timeout,
            ))
            .await
        }
    };
    match result {
        Err(e) if e.is_timeout() && !served.load(Ordering::Relaxed) => {
            stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                %peer,
                timeout = ?header_read_timeout,
                "closed a connection that sent no complete request headers in time"
            );
        }
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        Ok(()) => {}
    }
    linger::linger(&returned, &mut stop).await;
}

/// Drives `connection` until it ends; when the server stops, or no request is in flight
/// for `header_read_timeout` (HTTP/2 has no deadline of hyper's for a connection without
/// requests), asks it to finish and close (`graceful_shutdown`, hyper's method of its kind
/// of connection).
async fn until_done<C: Future<Output = Result<(), hyper::Error>>>(
    connection: C,
    graceful_shutdown: fn(Pin<&mut C>),
    idle: &idle::Idle,
    stop: &mut watch::Receiver<bool>,
    peer: SocketAddr,
    header_read_timeout: Duration,
) -> Result<(), hyper::Error> {
    let mut connection = pin!(connection);
    let finished = tokio::select! {
        result = connection.as_mut() => Ok(result),
        _ = stop.wait_for(|stopped| *stopped) => Err(false),
        _ = idle.elapsed(header_read_timeout) => Err(true),
    };
    match finished {
        Ok(result) => result,
        Err(idle) => {
            graceful_shutdown(connection.as_mut());
            if idle {
                // A graceful HTTP/2 close waits for the peer's answer: bounded.
                tracing::debug!(%peer, "closing a connection idle for too long");
                match tokio::time::timeout(header_read_timeout, connection).await {
                    Ok(result) => result,
                    Err(_) => Ok(()),
                }
            } else {
                connection.await
            }
        }
    }
}

/// Waits until `tcp` has sent enough to tell HTTP/1 from HTTP/2 (its first bytes, or the
/// whole HTTP/2 preface if they start like it), or has closed, and tells which it is;
/// `None` if that takes longer than `timeout`. Only peeks: hyper reads the bytes.
async fn first_bytes(tcp: &TcpStream, timeout: Duration) -> Option<Protocol> {
    let wait = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let Ok(ready) = tcp.ready(Interest::READABLE).await else {
                return Protocol::Http1;
            };
            // Peeked inside `try_io`, which then takes the socket for not readable (so
            // the next `ready` waits for more bytes instead of returning at once) unless
            // bytes came in since `ready`.
            let peeked = tcp.try_io(Interest::READABLE, || {
                let n = try_peek(tcp, &mut buf)?;
                if n > 0 && n < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf[..n]) {
                    // A partial preface: wait for the rest.
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match peeked {
                Ok(n) if n == H2_PREFACE.len() && buf == H2_PREFACE => return Protocol::Http2,
                // Nothing yet, or a partial preface from a client still sending.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !ready.is_read_closed() => {}
                // Anything else (a closed or failed socket included) is hyper's to answer
                // as HTTP/1.
                _ => return Protocol::Http1,
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.ok()
}

/// Peeks at the bytes `tcp` has received, without waiting (`WouldBlock` when there are
/// none): tokio's `poll_peek`, with a waker that does nothing, as tokio has no `try_peek`
/// for TCP.
fn try_peek(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut buf = ReadBuf::new(buf);
    match tcp.poll_peek(&mut Context::from_waker(Waker::noop()), &mut buf) {
        Poll::Ready(peeked) => peeked,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_first_bytes_tell_http1_from_http2() {
        let wait = Duration::from_secs(5);
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(first_bytes(&server, wait).await, Some(Protocol::Http1));

        let (mut client, server) = pair().await;
        client.write_all(H2_PREFACE).await.unwrap();
        assert_eq!(first_bytes(&server, wait).await, Some(Protocol::Http2));

        // The preface in two pieces is still HTTP/2.
        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let told = tokio::spawn(async move { first_bytes(&server, wait).await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        assert_eq!(told.await.unwrap(), Some(Protocol::Http2));

        // A byte at a time too, however the reads fall between the writes: each new byte
        // wakes the wait.
        let (mut client, server) = pair().await;
        client.set_nodelay(true).unwrap();
        let told = tokio::spawn(async move { first_bytes(&server, wait).await });
        for byte in H2_PREFACE.chunks(1) {
            client.write_all(byte).await.unwrap();
        }
        assert_eq!(told.await.unwrap(), Some(Protocol::Http2));

        // Half a preface that turns out to be an HTTP/1 request (`P`, then `OST`) is HTTP/1.
        let (mut client, server) = pair().await;
        client.set_nodelay(true).unwrap();
        client.write_all(b"P").await.unwrap();
        let told = tokio::spawn(async move { first_bytes(&server, wait).await });
        client.write_all(b"OST / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(told.await.unwrap(), Some(Protocol::Http1));

        // Half a preface, then the end of the stream: HTTP/1, for hyper to answer at once.
        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(first_bytes(&server, wait).await, Some(Protocol::Http1));

        // Silence is held to the deadline.
        let (_client, server) = pair().await;
        assert_eq!(first_bytes(&server, Duration::from_millis(50)).await, None);
    }
}
