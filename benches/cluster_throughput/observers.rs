//! Many observers of one doc over three nodes: `--clients` sync clients (spread evenly)
//! read; one writer on node 0 sends `--rate` updates/s for `--seconds`. Each observer
//! records every update's delivery latency; reported per node (node 0 is the writer's).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{self, markers, Lat, Writer};
use crate::{ws, Args};

const ROOM: &str = "observed";

/// What one observer saw: each update's delivery latency in µs, and how it ended.
struct Observed {
    node: usize,
    latencies_us: Vec<(u32, u32)>,
    ended: Option<String>,
}

async fn observe(
    node: usize,
    mut socket: ws::Socket,
    base: Instant,
    sent: Arc<Vec<AtomicU64>>,
    deadline: tokio::time::Instant,
) -> Observed {
    let total = sent.len();
    let mut seen = vec![false; total];
    let mut latencies_us = Vec::with_capacity(total);
    let mut ended = None;
    while latencies_us.len() < total {
        let frame = match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Ws::Binary(b)))) => b,
            Ok(Some(Ok(Ws::Close(c)))) => {
                ended = Some(format!("closed {c:?}"));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(other) => {
                ended = Some(format!("{other:?}"));
                break;
            }
            Err(_) => {
                ended = Some("deadline".into());
                break;
            }
        };
        let now = base.elapsed().as_micros() as u64;
        for i in markers(&frame) {
            let i = i as usize;
            if i < total && !seen[i] {
                seen[i] = true;
                let at = sent[i].load(Ordering::Acquire);
                latencies_us.push((i as u32, now.saturating_sub(at) as u32));
            }
        }
    }
    Observed {
        node,
        latencies_us,
        ended,
    }
}

pub async fn run(args: &Args) {
    let clients: usize = args.num("clients", 1500);
    // 1,000/s (1.5 M deliveries/s) is far past what 2 shared cores do; see BENCHMARKS.md.
    let rate: u64 = args.num("rate", 50);
    let seconds: u64 = args.num("seconds", 10);
    let total = (rate * seconds) as usize;
    let Some((pg, redis)) = common::services() else {
        return;
    };
    // Each node on a runtime of its own (`--own-runtimes 1`, the default), or all nodes
    // and clients on this one (0, as cluster_latency runs).
    let own: u8 = args.num("own-runtimes", 1);
    let mut nodes = Vec::new();
    let mut shared = Vec::new();
    for i in 0..3 {
        let name = format!("n{i}");
        if own == 1 {
            nodes.push(common::OwnRuntime::pg_node(&pg, &redis, &name).await);
        } else {
            shared.push(common::pg_node(&pg, &redis, &name, None).await);
        }
    }
    let addrs: Vec<SocketAddr> = match own {
        1 => nodes.iter().map(|n| n.addr).collect(),
        _ => shared.iter().map(|(_, a)| *a).collect(),
    };
    let joining = Instant::now();
    let sockets: Vec<(usize, ws::Socket)> = futures_util::stream::iter(0..clients)
        .map(|c| {
            let node = c % addrs.len();
            let addr = addrs[node];
            async move { (node, common::client(addr, ROOM).await) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    eprintln!(
        "observers: {clients} joined in {:.1} s",
        joining.elapsed().as_secs_f64()
    );
    let mut writer = common::client(addrs[0], ROOM).await;
    // Let the other nodes' bus read the room before the first update.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds + 30);
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|(node, socket)| tokio::spawn(observe(node, socket, base, sent.clone(), deadline)))
        .collect();
    let tapped = crate::breakdown::tap_thread(redis.url(), ROOM, total);
    let cpu = common::cpu();
    let doc = Writer::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    for i in 0..total {
        tick.tick().await;
        let frame = doc.update(i as u32);
        sent[i].store(base.elapsed().as_micros() as u64, Ordering::Release);
        writer.send(Ws::Binary(frame.into())).await.unwrap();
    }
    let sending = base.elapsed();
    let ms = |v: &[u32]| -> Vec<f64> {
        v.iter()
            .filter(|&&us| us != u32::MAX)
            .map(|&us| us as f64 / 1e3)
            .collect()
    };
    let mut per_node: Vec<Vec<f64>> = vec![Vec::new(); addrs.len()];
    // Per node and update: the first and the last of its observers to get it.
    let mut first = vec![vec![u32::MAX; total]; addrs.len()];
    let mut last = vec![vec![0u32; total]; addrs.len()];
    let mut ended = Vec::new();
    for task in tasks {
        let seen = task.await.unwrap();
        for &(i, us) in &seen.latencies_us {
            let (f, l) = (
                &mut first[seen.node][i as usize],
                &mut last[seen.node][i as usize],
            );
            *f = (*f).min(us);
            *l = (*l).max(us);
        }
        per_node[seen.node].extend(seen.latencies_us.iter().map(|&(_, us)| us as f64 / 1e3));
        ended.extend(seen.ended);
    }
    let cpu_after = common::cpu();
    // When each update was in Redis, in µs after `base` (as the observers' times).
    let tapped: Vec<u32> = tokio::task::block_in_place(|| tapped.join().unwrap())
        .iter()
        .map(|t| {
            t.map_or(u32::MAX, |t| {
                t.saturating_duration_since(base).as_micros() as u32
            })
        })
        .collect();
    let to_tap: Vec<u32> = (0..total)
        .map(|i| match tapped[i] {
            u32::MAX => u32::MAX,
            t => t.saturating_sub(sent[i].load(Ordering::Acquire) as u32),
        })
        .collect();
    println!(
        "{{\"section\":\"observers\",\"sent_to_redis\":{}}}",
        Lat::of(ms(&to_tap)).json()
    );
    let deliveries: usize = per_node.iter().map(Vec::len).sum();
    for (node, latencies) in per_node.into_iter().enumerate() {
        // The median of each second's first arrivals: does a backlog build up?
        let by_second: Vec<String> = first[node]
            .chunks(rate as usize)
            .map(|s| format!("{:.1}", Lat::of(ms(s)).p50))
            .collect();
        println!(
            "{{\"section\":\"observers\",\"own_runtimes\":{own},\"clients\":{clients},\"rate\":{rate},\"updates\":{total},\"node\":{node},\"delivery\":{},\"first_observer\":{},\"last_observer\":{},\"first_observer_p50_by_second_ms\":[{}]}}",
            Lat::of(latencies).json(),
            Lat::of(ms(&first[node])).json(),
            Lat::of(ms(&last[node])).json(),
            by_second.join(","),
        );
    }
    println!(
        "{{\"section\":\"observers\",\"deliveries\":{deliveries},\"expected\":{},\"sending_s\":{:.2},\"ended_early\":{},\"cpu_s\":{}}}",
        clients * total,
        sending.as_secs_f64(),
        ended.len(),
        common::cpu_json(&cpu, &cpu_after),
    );
    if let Some(why) = ended.first() {
        eprintln!("observers: {} ended early, e.g. {why}", ended.len());
    }
    for node in nodes {
        node.destroy().await;
    }
    for (server, _) in shared {
        server.destroy().await.unwrap();
    }
}
