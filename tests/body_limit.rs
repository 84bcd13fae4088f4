//! A body over `body_limit` is answered 413, and a client that sends its whole body before
//! reading (no `Expect: 100-continue`, like Python's urllib and requests) reads that 413
//! instead of a broken pipe or a reset.

use std::net::SocketAddr;
use std::time::Duration;

use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GUARD: Duration = Duration::from_secs(20);
const BODY: usize = 64 << 20;

async fn server() -> (Server, SocketAddr) {
    let blog = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap()
        .in_memory()
        .create()
        .await
        .unwrap();
    let server = create_server([blog], ServerOptions::default().port(0)).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

/// Sends `head`, then `BODY` bytes of JSON-ish filler framed by `frame` (as a plain
/// `Content-Length` body or as chunks), all of it before reading anything; then reads the
/// answer to the end.
async fn send_then_read(addr: SocketAddr, head: String, chunked: bool) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(head.as_bytes()).await?;
    let part = vec![b' '; 1 << 20];
    for _ in 0..BODY / part.len() {
        if chunked {
            tcp.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .await?;
            tcp.write_all(&part).await?;
            tcp.write_all(b"\r\n").await?;
        } else {
            tcp.write_all(&part).await?;
        }
    }
    if chunked {
        tcp.write_all(b"0\r\n\r\n").await?;
    }
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_a_64_mib_body_reads_the_413() {
    let (server, addr) = server().await;
    let path = "/workspaces/blog/tables/posts";
    let sized = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {BODY}\r\n\r\n"
    );
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    for (head, is_chunked) in [(sized, false), (chunked, true)] {
        let answer = tokio::time::timeout(GUARD, send_then_read(addr, head, is_chunked))
            .await
            .expect("the exchange ends");
        let answer = answer.unwrap_or_else(|e| panic!("chunked {is_chunked}: {e}"));
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "chunked {is_chunked}: {answer}"
        );
        assert!(answer.contains("\"error\""), "the JSON envelope: {answer}");
    }
    // The server goes on serving.
    let ok = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    assert_eq!(ok.status(), 200);
    server.destroy().await.unwrap();
}
