//! Durable updates/s with many concurrent sync writers: each keeps `window` batches in
//! flight (a batch: `batch` updates, then SYNC_STATUS); an update counts as durable when
//! its batch's echo arrives. One doc and one doc per writer, on one node and over two.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use epicenter_server::storage::COMMITS;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{self, echoed, status, Lat, Writer};
use crate::Args;

struct Load {
    writers: usize,
    docs: usize,
    window: usize,
    batch: usize,
    warm_up: Duration,
    measure: Duration,
}

/// What one writer saw in the measured window.
#[derive(Default)]
struct Seen {
    durable: u64,
    latencies_ms: Vec<f64>,
    failed: Option<String>,
}

async fn writer(
    addr: SocketAddr,
    room: String,
    load: Arc<Load>,
    window: (Instant, Instant),
    stop: Arc<AtomicBool>,
) -> Seen {
    let socket = common::client(addr, &room).await;
    let (mut sink, mut stream) = socket.split();
    let in_flight: Arc<Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(load.window));
    let sender = {
        let (in_flight, permits, stop, load) = (
            in_flight.clone(),
            permits.clone(),
            stop.clone(),
            load.clone(),
        );
        tokio::spawn(async move {
            let doc = Writer::new();
            let mut next = 0u32;
            for seq in 0u64.. {
                permits.acquire().await.unwrap().forget();
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let frames: Vec<Vec<u8>> = (0..load.batch)
                    .map(|_| {
                        next += 1;
                        doc.update(next)
                    })
                    .collect();
                in_flight.lock().unwrap().push_back((seq, Instant::now()));
                for frame in frames {
                    if sink.feed(Ws::Binary(frame.into())).await.is_err() {
                        return sink;
                    }
                }
                if sink.send(Ws::Binary(status(seq).into())).await.is_err() {
                    return sink;
                }
            }
            sink
        })
    };
    let mut seen = Seen::default();
    loop {
        let done = stop.load(Ordering::Relaxed) && in_flight.lock().unwrap().is_empty();
        if done {
            break;
        }
        let frame = match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(Ws::Binary(b)))) => b,
            Ok(Some(Ok(Ws::Close(c)))) => {
                seen.failed = Some(format!("closed: {c:?}"));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(other) => {
                seen.failed = Some(format!("{other:?}"));
                break;
            }
            Err(_) => {
                seen.failed = Some("no echo for 10 s".into());
                break;
            }
        };
        let Some(seq) = echoed(&frame) else { continue };
        let now = Instant::now();
        let (expected, sent) = in_flight.lock().unwrap().pop_front().expect("an echo sent");
        assert_eq!(seq, expected, "echoes come in order");
        permits.add_permits(1);
        if now >= window.0 && now < window.1 {
            seen.durable += load.batch as u64;
            seen.latencies_ms
                .push(now.duration_since(sent).as_secs_f64() * 1e3);
        }
    }
    stop.store(true, Ordering::Relaxed);
    permits.add_permits(1);
    if let Ok(mut sink) = sender.await {
        let _ = sink.close().await;
    }
    seen
}

/// Calls of XADD the Redis server has answered so far.
async fn xadds(redis: &redis::Client) -> u64 {
    let Ok(mut c) = redis.get_multiplexed_async_connection().await else {
        return 0;
    };
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xadd:calls="))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `load` against `addrs` (writer `w` on node `w % nodes`, doc `w % docs`).
async fn measure(name: &str, addrs: &[SocketAddr], load: Load, redis: Option<&redis::Client>) {
    let load = Arc::new(load);
    let started = Instant::now() + Duration::from_millis(500);
    let window = (
        started + load.warm_up,
        started + load.warm_up + load.measure,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..load.writers {
        let room = format!("{name}-{}", w % load.docs);
        let addr = addrs[w % addrs.len()];
        tasks.push(tokio::spawn(writer(
            addr,
            room,
            load.clone(),
            window,
            stop.clone(),
        )));
    }
    tokio::time::sleep_until(window.0.into()).await;
    let (commits, cpu) = (COMMITS.snapshot(), common::cpu());
    let xadd = match redis {
        Some(r) => xadds(r).await,
        None => 0,
    };
    tokio::time::sleep_until(window.1.into()).await;
    let (commits_after, cpu_after) = (COMMITS.snapshot(), common::cpu());
    let xadd = match redis {
        Some(r) => xadds(r).await - xadd,
        None => 0,
    };
    stop.store(true, Ordering::Relaxed);
    let mut durable = 0;
    let mut latencies = Vec::new();
    let mut failed = Vec::new();
    for task in tasks {
        let seen = task.await.unwrap();
        durable += seen.durable;
        latencies.extend(seen.latencies_ms);
        failed.extend(seen.failed);
    }
    let secs = load.measure.as_secs_f64();
    let commit_ms = (commits_after.seconds - commits.seconds) * 1e3
        / (commits_after.commits - commits.commits).max(1) as f64;
    let commits = commits_after.commits - commits.commits;
    println!(
        "{{\"section\":\"writers\",\"case\":\"{name}\",\"nodes\":{},\"writers\":{},\"docs\":{},\"window\":{},\"batch\":{},\"durable_per_s\":{:.0},\"ack\":{},\"commits_per_s\":{:.0},\"updates_per_commit\":{:.1},\"mean_commit_ms\":{commit_ms:.2},\"xadd_per_s\":{:.0},\"cpu_s\":{},\"failed\":{}}}",
        addrs.len(),
        load.writers,
        load.docs,
        load.window,
        load.batch,
        durable as f64 / secs,
        Lat::of(latencies).json(),
        commits as f64 / secs,
        durable as f64 / commits.max(1) as f64,
        xadd as f64 / secs,
        common::cpu_json(&cpu, &cpu_after),
        failed.len(),
    );
    if let Some(why) = failed.first() {
        eprintln!("writers {name}: {} failed, e.g. {why}", failed.len());
    }
}

pub async fn run(args: &Args) {
    let load = |docs: usize| Load {
        writers: args.num("writers", 64),
        docs,
        window: args.num("window", 8),
        batch: args.num("batch", 1),
        warm_up: Duration::from_secs(2),
        measure: Duration::from_secs(args.num("seconds", 6)),
    };
    let writers = load(1).writers;
    let pool: usize = args.num("pool", 16);
    let only: String = args.num("only", String::new());
    let Some((pg, redis)) = common::services() else {
        return;
    };
    let tap = redis::Client::open(redis.url()).unwrap();
    for nodes in [1, 2] {
        for docs in [1, writers] {
            let name = format!("pg-{nodes}n-{docs}d");
            if !name.contains(&only) {
                continue;
            }
            let mut servers = Vec::new();
            for i in 0..nodes {
                let name = format!("n{i}");
                let node = common::pg_node_with(pg.url(), redis.url(), name, None, pool);
                servers.push(node.await);
            }
            let addrs: Vec<SocketAddr> = servers.iter().map(|(_, a)| *a).collect();
            measure(&name, &addrs, load(docs), Some(&tap)).await;
            for (server, _) in servers {
                server.destroy().await.unwrap();
            }
        }
    }
    for docs in [1, writers] {
        let name = format!("sqlite-{docs}d");
        if !name.contains(&only) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let (server, addr) = common::sqlite_node(dir.path()).await;
        measure(&name, &[addr], load(docs), None).await;
        server.destroy().await.unwrap();
    }
}
