//! Does long work in one room stall the rest of the server? (Results in BENCHMARKS.md.)
//!
//! `cargo bench --bench stall` (flags after `--`: `--pushes N` updates of `--mb M` MB each,
//! default 4 × 30; `--baseline S` seconds measured before the first push, default 3;
//! `--join-every S` seconds between joins of the busy room, default 2, 0 for none)
//!
//! The server runs in this process on its own runtime (one worker per core, as
//! `#[tokio::main]` gives), with SQLite storage and metrics on, serving two workspaces:
//! - `busy`: one client pushes updates of ~M MB (many small map entries, sent as 1 MiB
//!   fragments), each followed by SYNC_STATUS, waiting for the echo before the next; three
//!   more clients in the room write small updates 20 times a second each (so its doc is
//!   contended), a client joins with an empty state every S s (a full step 2 of the growing
//!   doc), a REST writer upserts a row every 50 ms, and `/metrics` is scraped every second.
//! - `quiet`: what is measured: four REST readers each `GET` one row every 10 ms, and 20
//!   sync connections in its room each send a WebSocket ping every 50 ms and time the pong.
//!
//! The load and the measurements run on two more runtimes of one thread each, so a
//! measurement never waits for the load's client work. Reported: p50 / p99 / max of the
//! REST reads and of the pings, before the first push (baseline) and while pushing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message as Ws};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, ReadTxn, StateVector, Transact};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Samples = Arc<Mutex<Vec<(Instant, Duration)>>>;

const SYNC_STATUS: &[u8] = &[102, 1, 0];

struct Args {
    pushes: usize,
    mb: usize,
    baseline: Duration,
    join_every: Duration,
}

fn args() -> Args {
    let mut args = Args {
        pushes: 4,
        mb: 30,
        baseline: Duration::from_secs(3),
        join_every: Duration::from_secs(2),
    };
    let list: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        list.iter()
            .position(|a| a == flag)
            .and_then(|i| list.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if let Some(n) = value("--pushes") {
        args.pushes = n as usize;
    }
    if let Some(mb) = value("--mb") {
        args.mb = mb as usize;
    }
    if let Some(s) = value("--baseline") {
        args.baseline = Duration::from_secs(s);
    }
    if let Some(s) = value("--join-every") {
        args.join_every = Duration::from_secs(s);
    }
    args
}

fn definition(name: &str) -> WorkspaceDefinition {
    WorkspaceDefinition::builder(name)
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap()
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
}

async fn open(url: &str) -> Socket {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true)
        .await
        .expect("connect");
    ws
}

fn step1(sv: &StateVector) -> Ws {
    Ws::Binary(
        Message::Sync(SyncMessage::SyncStep1(sv.clone()))
            .encode_v1()
            .into(),
    )
}

fn update_frame(update: Vec<u8>) -> Vec<u8> {
    Message::Sync(SyncMessage::Update(update)).encode_v1()
}

/// `pushes` updates of ~`mb` MB each: map entries of ~100 bytes, so each is a few hundred
/// thousand items for the server to integrate.
fn big_updates(pushes: usize, mb: usize) -> Vec<Vec<u8>> {
    let doc = Doc::new();
    let map = doc.get_or_insert_map("load");
    let value = "v".repeat(100);
    let per_push = mb * 1_000_000 / 112;
    (0..pushes)
        .map(|p| {
            let before = doc.transact().state_vector();
            {
                let mut txn = doc.transact_mut();
                for i in 0..per_push {
                    map.insert(&mut txn, format!("p{p}-{i:07}"), value.as_str());
                }
            }
            update_frame(doc.transact().encode_state_as_update_v1(&before))
        })
        .collect()
}

async fn send_fragmented(ws: &mut Socket, message: &[u8]) {
    let parts: Vec<&[u8]> = message.chunks(1 << 20).collect();
    for (i, part) in parts.iter().enumerate() {
        let opcode = OpCode::Data(if i == 0 { Data::Binary } else { Data::Continue });
        let frame = Frame::message(Bytes::copy_from_slice(part), opcode, i + 1 == parts.len());
        ws.feed(Ws::Frame(frame)).await.expect("send");
    }
    ws.flush().await.expect("flush");
}

/// Reads until the SYNC_STATUS echo (everything else is dropped).
async fn until_echo(ws: &mut Socket) {
    while let Some(message) = ws.next().await {
        if let Ws::Binary(b) = message.expect("read") {
            if b[..] == *SYNC_STATUS {
                return;
            }
        }
    }
    panic!("the connection ended before the echo");
}

/// Drops what arrives until `stop`.
async fn drain(mut ws: Socket, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(_) => return,
        }
    }
}

/// Small updates into the busy room, 20 a second, while reading what arrives.
async fn small_writer(url: String, n: usize, stop: Arc<AtomicBool>) {
    let mut ws = open(&url).await;
    ws.send(step1(&StateVector::default())).await.unwrap();
    let doc = Doc::new();
    let map = doc.get_or_insert_map("small");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {
                let before = doc.transact().state_vector();
                map.insert(&mut doc.transact_mut(), format!("w{n}-{seq}"), seq as f64);
                seq += 1;
                let update = doc.transact().encode_state_as_update_v1(&before);
                if ws.send(Ws::Binary(update_frame(update).into())).await.is_err() {
                    return;
                }
            }
            message = ws.next() => if !matches!(message, Some(Ok(_))) { return },
        }
    }
}

/// Joins the busy room with an empty state every `every` and reads its step 2.
async fn joiner(url: String, every: Duration, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        let mut ws = open(&url).await;
        ws.send(step1(&StateVector::default())).await.unwrap();
        // The server's step 1 comes first, then its step 2 (tag 0, 1).
        while let Some(Ok(message)) = ws.next().await {
            if matches!(&message, Ws::Binary(b) if b.len() > 1 && b[0] == 0 && b[1] == 1) {
                break;
            }
        }
        let _ = ws.close(None).await;
    }
}

async fn rest_writer(base: String, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let _ = http
            .post(format!("{base}/workspaces/busy/tables/posts"))
            .json(&json!({"id": format!("r{i}"), "title": "x"}))
            .send()
            .await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scraper(base: String, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(r) = http.get(format!("{base}/metrics")).send().await {
            let _ = r.bytes().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn rest_reader(base: String, samples: Samples, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    let url = format!("{base}/workspaces/quiet/tables/posts/q1");
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let response = http.get(&url).send().await.expect("GET");
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await;
        samples.lock().unwrap().push((start, start.elapsed()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn pinger(url: String, samples: Samples, stop: Arc<AtomicBool>) {
    let mut ws = open(&url).await;
    ws.send(step1(&StateVector::default())).await.unwrap();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        ws.send(Ws::Ping(Bytes::from_static(b"p")))
            .await
            .expect("ping");
        loop {
            match ws.next().await {
                Some(Ok(Ws::Pong(_))) => break,
                Some(Ok(_)) => {}
                other => panic!("ping connection ended: {other:?}"),
            }
        }
        samples.lock().unwrap().push((start, start.elapsed()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// p50 / p99 / max (ms) of the samples started in `[from, to)`.
fn stats(samples: &Samples, from: Instant, to: Instant) -> (usize, f64, f64, f64) {
    let mut ms: Vec<f64> = samples
        .lock()
        .unwrap()
        .iter()
        .filter(|(start, _)| *start >= from && *start < to)
        .map(|(_, d)| d.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return (0, 0.0, 0.0, 0.0);
    }
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (ms.len(), at(0.5), at(0.99), ms[ms.len() - 1])
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let args = args();
    let dir = tempfile::tempdir().unwrap();
    // One worker per core, as `#[tokio::main]` gives.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let storage = SqliteStorage::new(dir.path());
    let (server, addr) = server_rt.block_on(async {
        let busy = definition("busy")
            .with_storage(storage.clone())
            .create()
            .await
            .unwrap();
        let quiet = definition("quiet")
            .with_storage(storage)
            .create()
            .await
            .unwrap();
        quiet
            .table("posts")
            .unwrap()
            .upsert(json!({"id": "q1", "title": "quiet"}))
            .unwrap();
        let options = ServerOptions::default().port(0).metrics(true);
        let server = create_server([busy, quiet], options).unwrap();
        let addr = server.start().await.unwrap();
        (server, addr)
    });
    let base = format!("http://{addr}");
    let busy_url = format!("ws://{addr}/workspaces/busy/sync");
    let quiet_url = format!("ws://{addr}/workspaces/quiet/sync");
    eprintln!("encoding {} updates of ~{} MB", args.pushes, args.mb);
    let updates = big_updates(args.pushes, args.mb);

    let stop = Arc::new(AtomicBool::new(false));
    let rest: Samples = Arc::default();
    let pings: Samples = Arc::default();
    let measure_rt = runtime(1);
    for _ in 0..4 {
        measure_rt.spawn(rest_reader(base.clone(), rest.clone(), stop.clone()));
    }
    for _ in 0..20 {
        measure_rt.spawn(pinger(quiet_url.clone(), pings.clone(), stop.clone()));
    }
    let load_rt = runtime(1);
    for n in 0..3 {
        load_rt.spawn(small_writer(busy_url.clone(), n, stop.clone()));
    }
    load_rt.spawn(rest_writer(base.clone(), stop.clone()));
    load_rt.spawn(scraper(base.clone(), stop.clone()));

    let started = Instant::now();
    std::thread::sleep(args.baseline);
    let pushing = Instant::now();
    if !args.join_every.is_zero() {
        load_rt.spawn(joiner(busy_url.clone(), args.join_every, stop.clone()));
    }
    let push_times = load_rt.block_on(async {
        let mut ws = open(&busy_url).await;
        ws.send(step1(&StateVector::default())).await.unwrap();
        let mut times = Vec::new();
        for update in &updates {
            let start = Instant::now();
            send_fragmented(&mut ws, update).await;
            ws.send(Ws::Binary(Bytes::from_static(SYNC_STATUS)))
                .await
                .unwrap();
            until_echo(&mut ws).await;
            times.push(start.elapsed().as_secs_f64());
        }
        tokio::spawn(drain(ws, stop.clone()));
        times
    });
    let done = Instant::now();
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));

    let line = |name: &str, samples: &Samples| {
        let (n0, p50a, p99a, maxa) = stats(samples, started, pushing);
        let (n1, p50b, p99b, maxb) = stats(samples, pushing, done);
        println!(
            "{name:<10} baseline ({n0:>5}): p50 {p50a:7.2} ms  p99 {p99a:7.2} ms  max {maxa:7.2} ms | \
             pushing ({n1:>5}): p50 {p50b:7.2} ms  p99 {p99b:7.2} ms  max {maxb:7.2} ms"
        );
        json!({"n": n1, "p50_ms": p50b, "p99_ms": p99b, "max_ms": maxb,
               "baseline": {"n": n0, "p50_ms": p50a, "p99_ms": p99a, "max_ms": maxa}})
    };
    let rest_json = line("REST GET", &rest);
    let ping_json = line("ws ping", &pings);
    let mean = push_times.iter().sum::<f64>() / push_times.len().max(1) as f64;
    println!(
        "{} pushes of ~{} MB: {:.2} s each (sent, applied and durable), {:.1} s in all",
        push_times.len(),
        args.mb,
        mean,
        (done - pushing).as_secs_f64()
    );
    println!(
        "{}",
        json!({"bench": "stall", "pushes": push_times.len(), "mb": args.mb,
               "join_every_s": args.join_every.as_secs(),
               "push_s": push_times, "rest_get": rest_json, "ping": ping_json})
    );
    drop(load_rt);
    drop(measure_rt);
    server_rt.block_on(server.destroy()).unwrap();
}
