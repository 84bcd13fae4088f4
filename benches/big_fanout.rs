//! How long does a big update's fan-out hold its doc? (Results in BENCHMARKS.md.)
//!
//! `cargo bench --bench big_fanout` (flags after `--`: `--receivers N` quiet connections
//! in the room, default 130; `--pushes P` updates of `--mb M` MB each, default 5 × 2)
//!
//! The server runs in this process (one async worker per core, memory storage). N
//! connections sit in room `blog`, each reading what comes (quiet: a quiet connection's
//! frames are written by the room's fan-out itself, inside the doc's commit). One client
//! pastes P texts of M MB, 1 s apart. Meanwhile a prober types into the same room every
//! 5 ms, and an observer times each keystroke from sent to received: a keystroke waits for
//! the doc as long as a commit holds it. Reported: p50 / p99 / max of the keystrokes
//! before the first paste and while pasting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::workspace::WorkspaceDefinition;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, Text, Transact};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn open(url: &str) -> Socket {
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .expect("connect");
    // The server's step 1.
    ws.next().await.expect("step 1").expect("step 1");
    ws
}

fn update_frame(update: Vec<u8>) -> Ws {
    Ws::Binary(
        Message::Sync(SyncMessage::Update(update))
            .encode_v1()
            .into(),
    )
}

fn stats(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{label}: {} keystrokes, p50 {:.2?} p99 {:.2?} max {:.2?}",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

#[tokio::main]
async fn main() {
    let (receivers, pushes, mb) = (
        flag("--receivers", 130),
        flag("--pushes", 5),
        flag("--mb", 2),
    );
    let client = WorkspaceDefinition::builder("blog")
        .build()
        .unwrap()
        .in_memory()
        .create()
        .await
        .unwrap();
    let options = ServerOptions::default()
        .port(0)
        .max_message_size(1 << 30)
        .max_frame_size(1 << 30);
    let server = create_server([client], options).unwrap();
    let addr = server.start().await.unwrap();
    let url = format!("ws://{addr}/workspaces/blog/sync");
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..receivers {
        let mut ws = open(&url).await;
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    // Keystrokes: a map entry each, its send time kept by its sequence number.
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let mut observer = open(&url).await;
    let observing = {
        let (sent, samples) = (sent.clone(), samples.clone());
        tokio::spawn(async move {
            let doc = Doc::new();
            let keys = doc.get_or_insert_map("keys");
            let mut seen = 0;
            while let Some(Ok(message)) = observer.next().await {
                let Ws::Binary(frame) = message else { continue };
                let Ok(Message::Sync(SyncMessage::Update(u))) = Message::decode_v1(&frame) else {
                    continue;
                };
                let _ = doc
                    .transact_mut()
                    .apply_update(yrs::Update::decode_v1(&u).unwrap());
                let now = keys.len(&doc.transact()) as usize;
                let sent = sent.lock().unwrap();
                for &at in &sent[seen..now.min(sent.len())] {
                    samples.lock().unwrap().push((at, at.elapsed()));
                }
                seen = seen.max(now.min(sent.len()));
            }
        })
    };
    let mut prober = open(&url).await;
    let probing = {
        let (sent, stop) = (sent.clone(), stop.clone());
        tokio::spawn(async move {
            let doc = Doc::new();
            let keys = doc.get_or_insert_map("keys");
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let update = {
                    let mut txn = doc.transact_mut();
                    keys.insert(&mut txn, format!("k{i}"), i as f64);
                    txn.encode_update_v1()
                };
                sent.lock().unwrap().push(Instant::now());
                prober.send(update_frame(update)).await.unwrap();
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pasting = Instant::now();
    let mut paster = open(&url).await;
    let doc = Doc::new();
    let text = doc.get_or_insert_text("paste");
    for _ in 0..pushes {
        let update = {
            let mut txn = doc.transact_mut();
            text.push(&mut txn, &"p".repeat(mb * 1_000_000));
            txn.encode_update_v1()
        };
        paster.send(update_frame(update)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    probing.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let (before, during): (Vec<_>, Vec<_>) = samples.iter().partition(|(at, _)| *at < pasting);
    println!("{receivers} quiet connections, {pushes} pastes of {mb} MB");
    stats("before", before.iter().map(|(_, d)| *d).collect());
    stats("pasting", during.iter().map(|(_, d)| *d).collect());
    observing.abort();
    for reader in readers {
        reader.abort();
    }
    drop(paster);
    server.destroy().await.unwrap();
}
