//! An update followed by SYNC_STATUS, then wait for the echo (sent once the update is
//! durable), one at a time: Postgres, then SQLite and memory storage for comparison.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use epicenter_server::storage::{CommitSnapshot, COMMITS};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{self, echoed, status, Lat, Writer};
use crate::Args;

const WARM_UP: u32 = 100;

/// The round trips after a warm-up, and the commit counters when the warm-up ended.
async fn round_trips(addr: SocketAddr, count: u32) -> (Lat, CommitSnapshot) {
    let mut socket = common::client(addr, "roundtrip").await;
    let writer = Writer::new();
    let mut ms = Vec::with_capacity(count as usize);
    let mut warm = COMMITS.snapshot();
    for i in 0..WARM_UP + count {
        if i == WARM_UP {
            warm = COMMITS.snapshot();
        }
        let started = Instant::now();
        socket
            .feed(Ws::Binary(writer.update(i).into()))
            .await
            .unwrap();
        socket
            .send(Ws::Binary(status(i as u64).into()))
            .await
            .unwrap();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), socket.next()).await;
            match next.expect("an echo within 30 s") {
                Some(Ok(Ws::Binary(b))) if echoed(&b) == Some(i as u64) => break,
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        if i >= WARM_UP {
            ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    (Lat::of(ms), warm)
}

fn report(storage: &str, (lat, before): (Lat, CommitSnapshot)) {
    let after = COMMITS.snapshot();
    let commits = after.commits - before.commits;
    let mean_commit_ms = (after.seconds - before.seconds) * 1e3 / commits.max(1) as f64;
    println!(
        "{{\"section\":\"roundtrip\",\"storage\":\"{storage}\",\"round_trip\":{},\"commits\":{commits},\"mean_commit_ms\":{mean_commit_ms:.3}}}",
        lat.json()
    );
}

pub async fn run(args: &Args) {
    let count: u32 = args.num("count", 2000);
    let Some((pg, redis)) = common::services() else {
        return;
    };
    let (server, addr) = common::pg_node(&pg, &redis, "n0", None).await;
    report("postgres", round_trips(addr, count).await);
    server.destroy().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = common::sqlite_node(dir.path()).await;
    report("sqlite", round_trips(addr, count).await);
    server.destroy().await.unwrap();

    let (server, addr) = common::memory_node().await;
    report("memory", round_trips(addr, count).await);
    server.destroy().await.unwrap();
}
