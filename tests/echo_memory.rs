//! A peer that sends SYNC_STATUS (102) without end and never reads what comes back: every
//! echo the server owes it counts against its send queue, so it is closed with 1013 and
//! the server's memory stays flat while it goes on sending. The server runs in a child
//! process (this test binary, re-run as `child_role`), so its resident memory is its own.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::sync::close;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::Message;
use yrs::updates::encoder::Encode;

/// How long the peer goes on sending once the server has decided to close it. The server
/// keeps such a socket (reading and dropping what arrives) for 30 s, so the close frame
/// can still be read afterwards.
const FLOOD_AFTER_CLOSE: Duration = Duration::from_secs(25);
/// Guard for the close decision, and for reading the close frame.
const GUARD: Duration = Duration::from_secs(20);
/// Most the server's resident memory may grow by. The queue's bound is 4096 outputs of at
/// most 1 KiB here (4 MiB); before the fix, echoes piled up at the rate the peer sent
/// them (hundreds of MiB within seconds).
const GROWTH_BOUND: u64 = 48 << 20;

/// Not a test on its own: the server child process (a no-op without the env var).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_role() {
    if std::env::var_os("EPICENTER_ECHO_CHILD").is_none() {
        return;
    }
    let blog = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap();
    let client = blog.in_memory().create().await.unwrap();
    let options = ServerOptions::default().port(0).metrics(true);
    let server = create_server([client], options).unwrap();
    let addr = server.start().await.unwrap();
    println!("listening {addr}");
    std::future::pending::<()>().await;
}

/// The server child process, killed when dropped (also when the test fails).
struct ServerProcess {
    child: Child,
    addr: String,
}

impl ServerProcess {
    fn spawn() -> ServerProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
            .env("EPICENTER_ECHO_CHILD", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                panic!("the server exited before printing its address");
            };
            if let Some((_, addr)) = line.unwrap().split_once("listening ") {
                break addr.trim().to_string();
            }
        };
        ServerProcess { child, addr }
    }

    /// The child's resident memory, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server process is alive");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS in /proc/<pid>/status");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmRSS in kB");
        kib * 1024
    }

    /// The server's count of connections closed for a full send queue, from `/metrics`.
    async fn slow_consumer_closes(&self) -> u64 {
        let body = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("a metrics body");
        body.lines()
            .find_map(|l| l.strip_prefix("epicenter_sync_slow_consumer_closes_total "))
            .and_then(|n| n.trim().parse().ok())
            .expect("the slow-consumer counter")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sends_sync_status_and_never_reads_is_closed_in_bounded_memory() {
    let server = ServerProcess::spawn();
    let url = format!("ws://{}/workspaces/blog/sync", server.addr);
    let (ws, _) = tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    let baseline = server.rss();

    // SYNC_STATUS messages of 1 KiB (the most the server accepts), sent flat out; the
    // stream is not read until the end.
    let status: bytes::Bytes = Message::Custom(102, vec![7; 1000]).encode_v1().into();
    assert!(status.len() <= 1024);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = tokio::spawn({
        let (stop, sent) = (stop.clone(), sent.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    if sink.feed(Ws::Binary(status.clone())).await.is_err() {
                        return sink;
                    }
                }
                if sink.flush().await.is_err() {
                    return sink;
                }
                sent.fetch_add(64, Ordering::Relaxed);
            }
            sink
        }
    });

    let start = Instant::now();
    let mut closed_at: Option<Instant> = None;
    let mut peak = baseline;
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    loop {
        ticks.tick().await;
        let rss = server.rss();
        peak = peak.max(rss);
        assert!(
            rss < baseline + GROWTH_BOUND,
            "the server grew from {} to {} MiB after {:?} ({} SYNC_STATUS sent)",
            baseline >> 20,
            rss >> 20,
            start.elapsed(),
            sent.load(Ordering::Relaxed)
        );
        match closed_at {
            None if server.slow_consumer_closes().await > 0 => closed_at = Some(Instant::now()),
            None => assert!(
                start.elapsed() < GUARD,
                "not closed after {} SYNC_STATUS",
                sent.load(Ordering::Relaxed)
            ),
            Some(at) if at.elapsed() >= FLOOD_AFTER_CLOSE => break,
            Some(_) => {}
        }
    }
    assert!(
        !sender.is_finished(),
        "the server dropped the socket within its grace period"
    );
    stop.store(true, Ordering::Relaxed);
    let _sink = sender.await.unwrap();
    eprintln!(
        "{} SYNC_STATUS sent over {:?}; server RSS {} MiB, peak {} MiB",
        sent.load(Ordering::Relaxed),
        start.elapsed(),
        baseline >> 20,
        peak >> 20
    );

    // Behind the echoes already on their way comes the close frame.
    let code = tokio::time::timeout(GUARD, async {
        while let Some(Ok(message)) = stream.next().await {
            if let Ws::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("the close frame in time");
    assert_eq!(code, Some(close::TRY_AGAIN_LATER));
}
