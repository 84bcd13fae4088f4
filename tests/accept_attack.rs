//! The accept path under attack from the network: connections that send nothing, half a
//! preface or odd first bytes, requests that carry `Upgrade` where no upgrade happens, and
//! a server stopping while connections are still being told apart.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use epicenter_server::server::{Server, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::ws::blog_server;

/// A guard against a hung test; nothing waits for it to elapse.
const GUARD: Duration = Duration::from_secs(10);
/// A header deadline no test waits for.
const LONG: Duration = Duration::from_secs(60);

async fn server() -> (Server, SocketAddr) {
    blog_server(ServerOptions::default().header_read_timeout(LONG)).await
}

/// Sends `request` on a new connection and reads until the server closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A whole request answered: the accept loop has taken every connection made before it.
async fn served(addr: SocketAddr) {
    let answer = exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Connections that have sent no request (nothing yet, or half an HTTP/2 preface: a
/// browser's preconnect, a stalled client) have nothing to finish: stopping the server
/// closes them at once instead of waiting for their header deadline or the shutdown
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_does_not_wait_for_connections_without_a_request() {
    let (server, addr) = server().await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    served(addr).await;
    // The shutdown timeout is 10 s; the header deadline longer still.
    tokio::time::timeout(Duration::from_secs(3), server.destroy())
        .await
        .expect("destroy waited for connections that sent no request")
        .unwrap();
    for tcp in [&mut silent, &mut half] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(GUARD, tcp.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

/// Half an HTTP/2 preface, then the client closes: the server closes too, at once, not at
/// the header deadline (a socket the client gave up on is not held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_preface_then_close_is_closed_at_once() {
    let (server, addr) = server().await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, tcp.read_to_end(&mut answer))
        .await
        .expect("the server holds a connection its client closed")
        .unwrap();
    server.destroy().await.unwrap();
}

/// The CPU time this thread has used, in clock ticks (Linux).
#[cfg(target_os = "linux")]
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // utime and stime: fields 14 and 15, the 12th and 13th after the command's `)`.
    let after_command = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_command.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Connections stalled in the middle of an HTTP/2 preface wait for their next bytes
/// without costing the server CPU: a byte each must not buy an attacker a share of a core
/// for the whole header deadline. (The server runs on this test's one thread, whose CPU
/// time is measured.)
#[cfg(target_os = "linux")]
#[tokio::test]
async fn stalled_prefaces_cost_no_cpu() {
    let (server, addr) = server().await;
    let mut stalled = Vec::new();
    for _ in 0..400 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"P").await.unwrap();
        stalled.push(tcp);
    }
    served(addr).await;
    let before = thread_cpu_ticks();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spent = thread_cpu_ticks() - before;
    // Waiting costs nothing; polling every connection every few milliseconds costs tens
    // of ticks (of 10 ms) here.
    assert!(
        spent < 5,
        "{spent} ticks spent in 500 ms by stalled connections"
    );
    // They are still waiting, not closed: a preface completed now is served as HTTP/2.
    let mut tcp = stalled.pop().unwrap();
    tcp.write_all(b"RI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(GUARD, tcp.read_exact(&mut frame))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame[3], 4, "the server's first frame is its SETTINGS");
    drop((tcp, stalled));
    server.destroy().await.unwrap();
}
