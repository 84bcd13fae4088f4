//! Cross-node delivery latency: nodes in this process over a PostgreSQL and a Redis server
//! of their own (started here, as the cluster tests do). A sync client on node 1 sends
//! updates at a fixed rate; a sync client on every node
//! (node 1 included) records when each update arrives. Prints p50/p99 per node count.
//!
//! ```sh
//! cargo bench --features postgres,redis --bench cluster_latency -- [rate] [seconds]
//! ```

#[path = "../tests/support/services.rs"]
mod services;
#[path = "../tests/support/ws.rs"]
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::storage::{PostgresOptions, PostgresStorage};
use epicenter_server::sync::RedisBus;
use futures_util::{SinkExt, StreamExt};
use services::{Postgres, Redis};
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Map, ReadTxn, Transact};

async fn node(pg: &Postgres, redis: &Redis, name: &str) -> (Server, SocketAddr) {
    let options = PostgresOptions {
        node: name.into(),
        ..PostgresOptions::default()
    };
    let storage = PostgresStorage::connect_with(&pg.url(), options)
        .await
        .unwrap();
    let mut options = ServerOptions::default()
        .port(0)
        .redis_bus(RedisBus::new(redis.url(), name));
    options.storage = std::sync::Arc::new(storage);
    let server = create_server(Vec::<epicenter_server::WorkspaceClient>::new(), options).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(nodes: usize, rate: u64, seconds: u64) {
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let mut servers = Vec::new();
    for i in 0..nodes {
        servers.push(node(&pg, &redis, &format!("n{i}")).await);
    }
    let mut writer = ws::join(servers[0].1, "bench").await;
    let total = rate * seconds;
    // One receiver per node: records the arrival time of each key.
    let mut receivers = Vec::new();
    for (_, addr) in &servers {
        let mut ws = ws::join(*addr, "bench").await;
        receivers.push(tokio::spawn(async move {
            let doc = yrs::Doc::new();
            let map = doc.get_or_insert_map("m");
            let mut seen: HashMap<String, Instant> = HashMap::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds + 10);
            while (seen.len() as u64) < total {
                let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(Ws::Binary(b)))) => b,
                    Ok(Some(Ok(_))) => continue,
                    _ => break,
                };
                let now = Instant::now();
                if let Ok(Message::Sync(SyncMessage::Update(u) | SyncMessage::SyncStep2(u))) =
                    Message::decode_v1(&frame)
                {
                    let mut txn = doc.transact_mut();
                    txn.apply_update(yrs::Update::decode_v1(&u).unwrap())
                        .unwrap();
                    for key in map.keys(&txn) {
                        seen.entry(key.to_string()).or_insert(now);
                    }
                }
            }
            seen
        }));
    }
    let doc = yrs::Doc::new();
    let map = doc.get_or_insert_map("m");
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    for i in 0..total {
        tick.tick().await;
        let sv = doc.transact().state_vector();
        let key = format!("k{i}");
        map.insert(&mut doc.transact_mut(), key.clone(), i as f64);
        let update = doc.transact().encode_state_as_update_v1(&sv);
        sent.insert(key, Instant::now());
        writer
            .send(Ws::Binary(
                Message::Sync(SyncMessage::Update(update))
                    .encode_v1()
                    .into(),
            ))
            .await
            .unwrap();
    }
    for (i, receiver) in receivers.into_iter().enumerate() {
        let seen = receiver.await.unwrap();
        let mut latencies: Vec<f64> = seen
            .iter()
            .filter_map(|(k, t)| {
                sent.get(k)
                    .map(|s| t.saturating_duration_since(*s).as_secs_f64() * 1e3)
            })
            .collect();
        latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{{\"nodes\":{nodes},\"receiver_node\":{i},\"rate\":{rate},\"updates\":{total},\"received\":{},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
            latencies.len(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
    }
    for (server, _) in servers {
        server.destroy().await.unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rate = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seconds = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for nodes in 1..=3 {
        runtime.block_on(run(nodes, rate, seconds));
    }
}
