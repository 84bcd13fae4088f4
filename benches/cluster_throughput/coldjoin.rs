//! Join of a big doc on a node that does not have it open: the doc is written through
//! node A (1 MiB updates of 1 KiB map entries, then SYNC_STATUS until durable); an empty
//! client then joins it on node B, which never loaded it, and gets the whole state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Map, ReadTxn, Transact};

use crate::common::{self, echoed, status};
use crate::Args;

const ROOM: &str = "big";
const ENTRY: usize = 1024;
const PER_UPDATE: usize = 1024;

/// A value of exactly `ENTRY` bytes, different for each entry.
fn value(i: usize) -> String {
    let mut v = format!("{i}:");
    while v.len() < ENTRY {
        v.push((b'a' + ((v.len() + i) % 26) as u8) as char);
    }
    v
}

/// Writes `entries` entries through the node at `addr` and waits until they are durable.
async fn write(addr: SocketAddr, entries: usize) -> (usize, Duration) {
    let started = Instant::now();
    let mut socket = common::client(addr, ROOM).await;
    let doc = yrs::Doc::new();
    let map = doc.get_or_insert_map("m");
    let mut bytes = 0;
    for first in (0..entries).step_by(PER_UPDATE) {
        let mut txn = doc.transact_mut();
        for i in first..(first + PER_UPDATE).min(entries) {
            map.insert(&mut txn, format!("e{i:07}"), value(i));
        }
        let update = txn.encode_update_v1();
        bytes += update.len();
        let frame = Message::Sync(SyncMessage::Update(update)).encode_v1();
        socket.send(Ws::Binary(frame.into())).await.unwrap();
    }
    socket.send(Ws::Binary(status(1).into())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), socket.next()).await {
            Ok(Some(Ok(Ws::Binary(b)))) if echoed(&b) == Some(1) => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("no echo: {other:?}"),
        }
    }
    socket.close(None).await.unwrap();
    (bytes, started.elapsed())
}

/// What one empty joiner saw, from the start of its connect.
struct Joined {
    step1: Duration,
    step2: Duration,
    applied: Duration,
    step2_bytes: usize,
    /// This process's RSS when the step 2 had arrived (before it was decoded).
    rss_at_step2: f64,
}

/// Joins `ROOM` on `addr` with an empty state, checks that every entry arrived intact.
async fn join(addr: SocketAddr, entries: usize) -> Joined {
    let started = Instant::now();
    let url = format!("ws://{addr}/workspaces/{ROOM}/sync");
    // A browser has no frame limit; tungstenite's default (16 MiB) is below the step 2.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_frame_size(Some(256 << 20))
        .max_message_size(Some(256 << 20));
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .unwrap();
    let mut step1 = None;
    let update = loop {
        let frame = match tokio::time::timeout(Duration::from_secs(60), socket.next()).await {
            Ok(Some(Ok(Ws::Binary(b)))) => b,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no step 2: {other:?}"),
        };
        match Message::decode_v1(&frame) {
            Ok(Message::Sync(SyncMessage::SyncStep1(_))) if step1.is_none() => {
                step1 = Some(started.elapsed());
                let empty = Message::Sync(SyncMessage::SyncStep1(Default::default()));
                socket
                    .send(Ws::Binary(empty.encode_v1().into()))
                    .await
                    .unwrap();
            }
            Ok(Message::Sync(SyncMessage::SyncStep2(u))) => break u,
            _ => {}
        }
    };
    let step2 = started.elapsed();
    let rss_at_step2 = common::rss_mb();
    let step2_bytes = update.len();
    let doc = yrs::Doc::new();
    let map = doc.get_or_insert_map("m");
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(&update).unwrap())
        .unwrap();
    drop(update);
    let applied = started.elapsed();
    let txn = doc.transact();
    assert_eq!(map.len(&txn) as usize, entries, "every entry arrived");
    for i in (0..entries).step_by(97) {
        let got = map
            .get(&txn, &format!("e{i:07}"))
            .map(|v| v.to_string(&txn));
        assert_eq!(got.as_deref(), Some(value(i).as_str()), "entry {i} intact");
    }
    assert!(txn.store().pending_update().is_none(), "nothing missing");
    drop(txn);
    socket.close(None).await.unwrap();
    Joined {
        step1: step1.unwrap(),
        step2,
        applied,
        step2_bytes,
        rss_at_step2,
    }
}

/// Samples this process's RSS every 5 ms until stopped; returns the peak.
fn rss_peak() -> (Arc<AtomicBool>, std::thread::JoinHandle<f64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let handle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let kb = (common::rss_mb() * 1024.0) as u64;
                peak.fetch_max(kb, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
            peak.load(Ordering::Relaxed) as f64 / 1024.0
        })
    };
    (stop, handle)
}

fn report(case: &str, j: &Joined, rss_before: f64, rss_peak: f64) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{{\"section\":\"coldjoin\",\"case\":\"{case}\",\"step1_ms\":{:.1},\"step2_received_ms\":{:.1},\"applied_ms\":{:.1},\"step2_mb\":{:.2},\"rss_before_mb\":{rss_before:.1},\"rss_at_step2_mb\":{:.1},\"rss_peak_mb\":{rss_peak:.1}}}",
        ms(j.step1),
        ms(j.step2),
        ms(j.applied),
        j.step2_bytes as f64 / 1048576.0,
        j.rss_at_step2,
    );
}

/// How long the bare parts of B's load take: reading the rows from Postgres, replaying
/// them into a doc, encoding its whole state.
async fn parts(pg: &crate::services::Postgres) -> String {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let rows = client
        .query(
            "SELECT seq, data FROM epicenter_updates WHERE doc = $1 AND seq > 0 ORDER BY seq",
            &[&ROOM],
        )
        .await
        .unwrap();
    let read = started.elapsed();
    let updates: Vec<Vec<u8>> = rows.iter().map(|r| r.get(1)).collect();
    let started = Instant::now();
    let doc = yrs::Doc::new();
    for u in &updates {
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(u).unwrap())
            .unwrap();
    }
    let replay = started.elapsed();
    let started = Instant::now();
    let state = doc
        .transact()
        .encode_state_as_update_v1(&Default::default());
    let encode = started.elapsed();
    format!(
        "{{\"section\":\"coldjoin\",\"case\":\"parts\",\"rows\":{},\"pg_read_ms\":{:.1},\"replay_ms\":{:.1},\"encode_ms\":{:.1},\"state_mb\":{:.2}}}",
        rows.len(),
        read.as_secs_f64() * 1e3,
        replay.as_secs_f64() * 1e3,
        encode.as_secs_f64() * 1e3,
        state.len() as f64 / 1048576.0
    )
}

pub async fn run(args: &Args) {
    let mb: f64 = args.num("mb", 20.0);
    let entries = (mb * 1048576.0 / ENTRY as f64).ceil() as usize;
    let Some((pg, redis)) = common::services() else {
        return;
    };
    let (a, a_addr) = common::pg_node(&pg, &redis, "a", None).await;
    let (b, b_addr) = common::pg_node(&pg, &redis, "b", None).await;
    let (bytes, took) = write(a_addr, entries).await;
    println!(
        "{{\"section\":\"coldjoin\",\"case\":\"write\",\"entries\":{entries},\"update_mb\":{:.2},\"durable_after_ms\":{:.0}}}",
        bytes as f64 / 1048576.0,
        took.as_secs_f64() * 1e3
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (case, addr) in [
        ("cold on B", b_addr),
        ("warm on B", b_addr),
        ("warm on A", a_addr),
    ] {
        let before = common::rss_mb();
        let (stop, peak) = rss_peak();
        let joined = join(addr, entries).await;
        stop.store(true, Ordering::Relaxed);
        report(case, &joined, before, peak.join().unwrap());
    }
    println!("{}", parts(&pg).await);
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}
