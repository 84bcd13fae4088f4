//! The accept loop out of file descriptors (EMFILE): it neither spins nor stops, and
//! serves the clients that waited once descriptors are free again. A test binary of its
//! own, as it uses up every descriptor of the process.

#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use epicenter_server::server::ServerOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GUARD: Duration = Duration::from_secs(10);

/// The CPU time this thread has used, in clock ticks, read from `stat`, this thread's
/// `/proc/thread-self/stat` opened beforehand (reading it again takes no descriptor).
fn thread_cpu_ticks(stat: &mut std::fs::File) -> u64 {
    use std::io::{Read, Seek};
    let mut text = String::new();
    stat.rewind().unwrap();
    stat.read_to_string(&mut text).unwrap();
    // utime and stime: fields 14 and 15, the 12th and 13th after the command's `)`.
    let after_command = &text[text.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_command.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Opens files until the process has no descriptor left; returns them.
fn use_up_descriptors() -> Vec<std::fs::File> {
    let mut files = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => files.push(file),
            Err(e) if e.raw_os_error() == Some(24) => return files,
            Err(e) => panic!("{e}"),
        }
    }
}

/// (The server runs on this test's one thread, whose CPU time is measured.)
#[tokio::test]
async fn out_of_descriptors_the_loop_waits_then_serves() {
    let (server, addr) = support::ws::blog_server(ServerOptions::default()).await;
    // The client's socket exists before the descriptors run out; connecting needs none.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    let mut stat = std::fs::File::open("/proc/thread-self/stat").unwrap();
    let files = use_up_descriptors();
    let mut tcp = socket.connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // The loop cannot accept it: it waits between attempts instead of spinning.
    let before = thread_cpu_ticks(&mut stat);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spent = thread_cpu_ticks(&mut stat) - before;
    assert!(spent < 5, "{spent} ticks spent in 300 ms failing to accept");
    drop(files);
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, tcp.read_to_end(&mut answer))
        .await
        .expect("the waiting client is served once descriptors are free")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.destroy().await.unwrap();
}
