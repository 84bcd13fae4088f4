//! Connections that hold the server without getting anywhere: an HTTP/2 connection that
//! never sends a request, and a request whose body never finishes. Each holds a task, a
//! socket and its buffers; with no deadline, a client can open them until the server runs
//! out of file descriptors.

use std::net::SocketAddr;
use std::time::Duration;

use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::workspace::WorkspaceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GUARD: Duration = Duration::from_secs(10);

async fn server(deadline: Duration) -> (Server, SocketAddr) {
    let options = ServerOptions::default()
        .header_read_timeout(deadline)
        .port(0);
    let server = create_server(Vec::<WorkspaceClient>::new(), options).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

/// Reads until the server closes the connection; false if it is still open after GUARD.
async fn closed_by_server(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let drained = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(GUARD, drained).await.is_ok()
}

/// An HTTP/2 (prior knowledge) connection that sends the preface and its settings, then
/// nothing, is closed like an idle HTTP/1 keep-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed() {
    let (server, addr) = server(Duration::from_millis(300)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame.
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    assert!(
        closed_by_server(&mut tcp).await,
        "an HTTP/2 connection with no request is held open"
    );
    server.destroy().await.unwrap();
}

/// A request whose body stops arriving is cut off, like one whose headers stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_arriving_is_cut_off() {
    let (server, addr) = server(Duration::from_millis(300)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"POST /workspaces/w/tables/t HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":",
    )
    .await
    .unwrap();
    assert!(
        closed_by_server(&mut tcp).await,
        "a request with a stalled body is held open"
    );
    server.destroy().await.unwrap();
}
