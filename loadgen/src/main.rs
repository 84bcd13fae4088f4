//! Load generator for y-websocket sync servers: this crate's sync route or the reference
//! Node server (`@y/websocket-server`). It takes a full room URL, so the same run can target
//! either one:
//!
//! ```sh
//! # our server (the `blog` example serves workspace `blog`)
//! cargo run --release -p epicenter-loadgen -- fanout --url ws://127.0.0.1:3913/workspaces/blog/sync
//! # the reference server: the room is the URL path
//! cargo run --release -p epicenter-loadgen -- fanout --url ws://127.0.0.1:1234/bench
//! ```
//!
//! `benches/sync/run.sh` starts either server and runs every scenario with the default sizes.
//!
//! Scenarios (the first argument), each printing a one-line JSON summary and a human line:
//!
//! - `connect --clients N`: opens N connections (at most `--concurrency` handshakes at a
//!   time, default 200), each completing the sync handshake (server step 1 and step 2
//!   received); reports the time to connect all, each connection's time from its first
//!   step 1 to synced (`handshake_ms`) and from its TCP connect (`connect_to_synced_ms`),
//!   and the server's RSS before and after (per connection), holds them for `--hold` seconds
//!   (default 2), then closes them. The clients are the minimal ones of `src/raw_ws.rs`, so
//!   the generator's own CPU per connection stays well below the server's.
//! - `fanout --clients N --writers W --rate R --duration S`: N clients in one room; W of
//!   them insert entries `<run>/w<writer>-<seq>` (value: send time, µs since the Unix epoch;
//!   with `--value-bytes B`, a string of B bytes, for bigger updates) into the Y.Map `--root`
//!   (default `load`), one per update, together R updates/s for S seconds. Each writer's doc
//!   has its own client id, so update `seq` is the item at clock `seq`: receivers decode
//!   every update and look up, for each item inserted, when its writer sent it (recorded just before sending; same process, same monotonic clock).
//!   Every client must receive every update it did not write: expected deliveries =
//!   updates × (N − 1); lost = expected − distinct deliveries. The run waits for all of
//!   them, or until `--drain` seconds (default 5) pass without one. Deliveries/s counts from
//!   the first send to the last delivery. At the end every client's doc is rebuilt from all
//!   it received (and its own writes) and must equal, in state vector and entries, the doc
//!   a newly connected client receives, which must hold every update.
//!   `--slow-clients M` adds M slow consumers: they join the same room and complete the
//!   handshake, then never read (their sockets stay open, so their TCP buffers fill and the
//!   server's send queue for them overflows). Once the run is over each reads what is left, to
//!   the end, and its outcome is reported: `close <code>` (1013 expected), `ended without a
//!   close frame (...)`, or `still open` (nothing for `--slow-quiet` seconds, default 3).
//!   With `--server-log FILE` (our server's output at `RUST_LOG=warn`) the server's own count
//!   of slow-consumer closes is reported too. Latency, lost and convergence are the N normal
//!   clients'; the server's peak RSS covers the run.
//! - `join --clients N --doc-mb M`: a seeder writes ~M MB into the Y.Map `--root` (entries of
//!   `--entry-bytes`, default 1024, sent as updates of about `--chunk-kb`, default 1024)
//!   and stays connected; once a second connection receives all of it, N empty clients
//!   connect at once. Reports the time until every one has received its step 2, and the
//!   server's peak RSS (VmHWM, reset as they start joining). The joiners stream their step 2
//!   (their own minimal WebSocket client over TCP, 64 KiB buffer each), keeping only its
//!   length and CRC-32: buffering 150 copies of a 20 MB message would cost the generator
//!   more CPU than the server spends. Afterwards one more client fetches the step 2 whole;
//!   it must hold every entry, and every joiner's must match it (length and CRC-32). The
//!   joiners stay connected (pings answered) until the measurement ends. Each joiner's
//!   socket gets a receive buffer of `--recv-buffer` bytes (default 4 MiB; 0: the kernel's
//!   autotuning). Over loopback, a receive window that starts small and grows as the reader
//!   reads clocks the server's transmission: each read's window update makes the kernel
//!   send the server's next segments in the reader's own system call, so the generator's
//!   one thread did the server's TCP work as well as its own copying, and was the limit
//!   (20 joiners of 2 MB: 22-29 ms autotuned, 10-19 ms with 4 MiB, for the same server).
//!   The probes leave the server with an encoding of the full state it can reuse; with
//!   `--cold 1` another client changes the doc after them, so the joiners' time includes
//!   encoding the state (once, by the first joiner, on our server).
//! - `awareness --clients N --duration S`: every client sets its awareness state every
//!   `--interval-ms` (default 1000), phases spread evenly; the state carries its send time.
//!   The server sends each state to every client, the sender included: expected = states
//!   sent × N. Reports awareness messages received/s and latency.
//! - `churn --workers K --duration S`: a memory soak (`benches/soak/run.sh`). K workers each
//!   loop: connect, send step 1 and an awareness state (a new awareness client id per
//!   connection, or the worker's with `--awareness-ids worker`), answer the server's step 1
//!   and apply its step 2, make `--edits` updates (default 3), send SYNC_STATUS (102) and wait
//!   for its echo, then close, or every `--abrupt-every`-th time (default 10) drop the TCP
//!   connection without a close frame. A worker keeps its doc and client id between
//!   connections. `--data list` (default): each worker replaces the single value of its own
//!   Y.Array, so the doc keeps its size (the deleted items merge into one tombstone);
//!   `--data map`: each edit overwrites one of `--keys` (100) keys of one Y.Map (bounded
//!   content, but one tombstone per edit). Phases: `--warmup` seconds of churn (default 60),
//!   `--idle` seconds without connections (default 65: rooms are evicted 60 s after their
//!   last connection leaves) ending in the baseline RSS, S seconds of churn, `--idle` again
//!   and the final RSS (both taken after 100 `GET /` requests: the allocator returns freed
//!   memory on later activity). The server's RSS and the connections made so far are sampled
//!   every `--sample-s` (default 5); connections/s in the first and last minute of the churn
//!   show whether the server slows down as it goes on. With
//!   `--rooms R` the URL's `{i}` is replaced by 0..R (servers with dynamic docs) and
//!   connections spread over them. Needs SYNC_STATUS, so our server only.
//!
//! - `floor --clients N --rate R --duration S --per-write K [--readers one|threads]`: no
//!   server; the floor of fan-out on this machine (one `write()` per delivery, or K updates
//!   per write), with the sender's CPU per delivery to compare a server's with, and the
//!   latency from each write to its read (see `src/floor.rs`).
//!
//! Common flags: `--url` (required but for `floor`), `--server-pid P` (report the server's RSS, peak RSS
//! and CPU time from `/proc/P`), `--threads` (runtime worker threads, default 1: the other
//! core is the server's), `--concurrency` (parallel handshakes, default 200).
//!
//! Rooms on our server hold a workspace: the generator writes only into its own root type
//! (`--root`, default `load`), never into `table:*` or `kv`, and prefixes its keys with a
//! random run id, so runs can repeat against the same room.
//!
//! Many connections need many file descriptors: raise the soft limit first
//! (`ulimit -n $(ulimit -Hn)`); the generator checks it. Exit status 1 means a correctness
//! check failed (failed connections, lost deliveries, no convergence, wrong content), 2 a
//! usage or setup error.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{stream, SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Any, Array, ClientID, Doc, Map, Out, ReadTxn, StateVector, Transact, Update};

mod floor;
mod raw_ws;

use raw_ws::{EmptyClient, RawWs, SyncStream, Target, OP_BINARY};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("sync_load: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let threads = match args.num("threads", 1usize) {
        Ok(t) => t.max(1),
        Err(e) => {
            eprintln!("sync_load: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
        match args.scenario.as_str() {
            // On a worker, with its connections' tasks: spawning them from outside the
            // runtime woke the worker thread for each (a futex call per connection).
            "connect" => {
                let args = args.clone();
                match tokio::spawn(async move { connect(&args).await }).await {
                    Ok(outcome) => outcome,
                    Err(e) => Err(e.to_string().into()),
                }
            }
            "fanout" => fanout(&args).await,
            "join" => join(&args).await,
            "awareness" => awareness(&args).await,
            "churn" => churn(&args).await,
            "floor" => floor::floor(&args),
            other => Err(format!("unknown scenario `{other}`\n\n{USAGE}").into()),
        }
    });
    // Connections still open in detached tasks must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("sync_load {}: {e}", args.scenario);
            std::process::exit(2);
        }
    }
}

const USAGE: &str =
    "usage: sync_load <connect|fanout|join|awareness|churn|floor> --url ws://HOST:PORT/ROOM [flags]
  connect   --clients 1000 [--concurrency 200] [--hold 2]
  fanout    --clients 100 --writers 10 --rate 1000 --duration 20 [--drain 5]
            [--value-bytes 0] [--slow-clients 0] [--slow-quiet 3] [--server-log FILE]
  join      --clients 150 --doc-mb 20 [--entry-bytes 1024] [--chunk-kb 1024]
            [--recv-buffer 4194304] [--cold 0]
  awareness --clients 200 --duration 10 [--interval-ms 1000]
  churn     --workers 50 --duration 600 [--warmup 60] [--idle 65] [--edits 3]
            [--data list|map] [--keys 100] [--rooms 1] [--awareness-ids connection|worker]
            [--abrupt-every 10] [--pause-ms 0] [--sample-s 5]
  floor     --clients 100 --rate 2000 --duration 10 [--per-write 1] [--frame-bytes 30]
            [--readers one|threads]
            (no server, no --url: loopback TCP writes, the floor of fan-out)
  common    [--server-pid P] [--threads 1] [--concurrency 200] [--root load]";

// ---------------------------------------------------------------------------------------
// Arguments

#[derive(Clone)]
struct Args {
    scenario: String,
    flags: HashMap<String, String>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut it = std::env::args().skip(1);
        let scenario = it.next().ok_or("missing scenario")?;
        if scenario == "-h" || scenario == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut flags = HashMap::new();
        while let Some(key) = it.next() {
            let name = key
                .strip_prefix("--")
                .ok_or_else(|| format!("expected a --flag, got `{key}`"))?;
            let value = it.next().ok_or_else(|| format!("{key} needs a value"))?;
            flags.insert(name.to_string(), value);
        }
        const KNOWN: &[&str] = &[
            "url",
            "clients",
            "per-write",
            "readers",
            "frame-bytes",
            "server-pid",
            "threads",
            "concurrency",
            "root",
            "hold",
            "writers",
            "rate",
            "duration",
            "drain",
            "doc-mb",
            "entry-bytes",
            "chunk-kb",
            "interval-ms",
            "slow-clients",
            "value-bytes",
            "slow-quiet",
            "server-log",
            "workers",
            "warmup",
            "idle",
            "edits",
            "data",
            "keys",
            "rooms",
            "awareness-ids",
            "abrupt-every",
            "pause-ms",
            "sample-s",
            "recv-buffer",
            "cold",
        ];
        if let Some(unknown) = flags.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!("unknown flag --{unknown}"));
        }
        Ok(Args { scenario, flags })
    }

    fn num<T: FromStr>(&self, key: &str, default: T) -> Res<T> {
        match self.flags.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key}: cannot parse `{v}`").into()),
        }
    }

    fn url(&self) -> Res<String> {
        let url = self.flags.get("url").ok_or("--url is required")?;
        if !url.starts_with("ws://") {
            return Err(format!("--url must be a ws:// room URL, got `{url}`").into());
        }
        Ok(url.clone())
    }

    fn pid(&self) -> Res<Option<u32>> {
        match self.flags.get("server-pid") {
            None => Ok(None),
            Some(v) => Ok(Some(v.parse().map_err(|_| "--server-pid: not a pid")?)),
        }
    }

    fn root(&self) -> String {
        self.flags
            .get("root")
            .cloned()
            .unwrap_or_else(|| "load".into())
    }

    fn secs(&self, key: &str, default: f64) -> Res<Duration> {
        let s: f64 = self.num(key, default)?;
        if !(s.is_finite() && s >= 0.0) {
            return Err(format!("--{key} must be a non-negative number of seconds").into());
        }
        Ok(Duration::from_secs_f64(s))
    }
}

// ---------------------------------------------------------------------------------------
// Process figures from /proc

/// Resident and peak resident memory of a process, in KiB.
fn mem_kib(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU seconds used by a process (assumes the usual 100 ticks per second).
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds all processes on this machine have used (every core's non-idle time, from
/// `/proc/stat`, in the usual 100 ticks per second).
fn machine_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((ticks.iter().sum::<f64>() - idle) / 100.0)
}

/// Memory of all TCP sockets on this machine (kernel buffers: not in any process's RSS), in
/// MB, from `/proc/net/sockstat` (counted in 4 KiB pages).
fn tcp_mem_mb() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = stat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut fields = tcp.split_whitespace();
    fields.find(|f| *f == "mem")?;
    let pages: f64 = fields.next()?.parse().ok()?;
    Some(round(pages * 4096.0 / MIB, 1))
}

/// Resets a process's peak RSS (VmHWM) to its current RSS; needs to own it or be root.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The server and this process, sampled at one moment.
#[derive(Clone, Copy)]
struct Sample {
    server: Option<(u64, u64)>,
    server_cpu: Option<f64>,
    client_rss: u64,
    client_cpu: f64,
    machine_cpu: Option<f64>,
}

impl Sample {
    fn take(pid: Option<u32>) -> Sample {
        let server = pid.and_then(|p| mem_kib(&p.to_string()));
        let server_cpu = pid.and_then(|p| cpu_secs(&p.to_string()));
        Sample {
            server,
            server_cpu,
            client_rss: mem_kib("self").map_or(0, |m| m.0),
            client_cpu: cpu_secs("self").unwrap_or(0.0),
            machine_cpu: machine_cpu_secs(),
        }
    }

    fn rss_mb(&self) -> Option<f64> {
        self.server.map(|m| round(m.0 as f64 / 1024.0, 1))
    }

    fn hwm_mb(&self) -> Option<f64> {
        self.server.map(|m| round(m.1 as f64 / 1024.0, 1))
    }
}

/// CPU seconds used between two samples, by the server, by this process, and by everything
/// else on the machine (the cores are shared: a busy neighbour skews a run, and this says so).
fn cpu_used(a: &Sample, b: &Sample) -> serde_json::Value {
    let server = a.server_cpu.zip(b.server_cpu).map(|(x, y)| y - x);
    let client = b.client_cpu - a.client_cpu;
    let machine = a.machine_cpu.zip(b.machine_cpu).map(|(x, y)| y - x);
    json!({
        "server_cpu_s": server.map(|s| round(s, 2)),
        "client_cpu_s": round(client, 2),
        "other_cpu_s": machine.map(|m| round((m - client - server.unwrap_or(0.0)).max(0.0), 2)),
    })
}

fn check_fd_limit(needed: usize) -> Res<()> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < needed => Err(format!(
            "{needed} file descriptors needed, the soft limit is {soft}: run `ulimit -n $(ulimit -Hn)` first"
        )
        .into()),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Percentiles (in ms) of latencies given in microseconds; sorts `us` in place.
fn latency_ms(us: &mut [u64]) -> serde_json::Value {
    us.sort_unstable();
    let at = |p: f64| {
        if us.is_empty() {
            return None;
        }
        let i = ((us.len() - 1) as f64 * p).round() as usize;
        Some(round(us[i] as f64 / 1000.0, 2))
    };
    json!({"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0), "n": us.len()})
}

fn fmt_ms(v: &serde_json::Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x} ms"))
}

fn fmt_mb(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x} MB"))
}

fn random_id() -> u64 {
    ClientID::random().get()
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn report(summary: serde_json::Value, human: String) {
    println!("{summary}");
    println!("{human}");
}

// ---------------------------------------------------------------------------------------
// WebSocket and y-websocket protocol

/// Client WebSocket settings. Frames of any size are accepted (a step 2 can be far larger
/// than tungstenite's default limits). `small` frames: a 4 KiB read buffer, which keeps idle
/// connections lean and is cheaper for small messages too (tungstenite zeroes a whole
/// read-buffer's worth of memory on every read); otherwise the default 128 KiB, for large
/// frames.
fn ws_config(small: bool) -> WebSocketConfig {
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    if small {
        config.read_buffer_size(4096).write_buffer_size(0)
    } else {
        config
    }
}

async fn open(url: &str, config: WebSocketConfig) -> Res<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    Ok(ws)
}

fn binary(msg: &Message) -> WsMessage {
    WsMessage::Binary(msg.encode_v1().into())
}

fn decode(frame: &[u8]) -> Res<Message> {
    Ok(Message::decode(&mut DecoderV1::from(frame))?)
}

/// Step 1 of a client that has nothing yet.
fn empty_step1() -> WsMessage {
    binary(&Message::Sync(SyncMessage::SyncStep1(
        StateVector::default(),
    )))
}

/// The answer to the server's step 1 from a client that has nothing yet.
fn empty_step2() -> WsMessage {
    binary(&Message::Sync(SyncMessage::SyncStep2(
        Update::new().encode_v1(),
    )))
}

fn read_varuint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// A sync frame's sub-type and payload, without copying the payload: for large step 2
/// frames. `None` if the frame is not a sync message; an error if its length prefix does
/// not match the frame exactly.
fn sync_payload(frame: &[u8]) -> Res<Option<(u64, &[u8])>> {
    let mut pos = 0;
    if read_varuint(frame, &mut pos) != Some(0) {
        return Ok(None);
    }
    let sub = read_varuint(frame, &mut pos).ok_or("truncated sync frame")?;
    let len = read_varuint(frame, &mut pos).ok_or("truncated sync frame")? as usize;
    if frame.len() - pos != len {
        return Err(format!(
            "sync frame says {len} payload bytes but carries {}",
            frame.len() - pos
        )
        .into());
    }
    Ok(Some((sub, &frame[pos..])))
}

/// What a client received while completing the handshake.
struct Handshake {
    /// The server's step 2: everything the room held.
    step2: Vec<u8>,
    /// Updates that arrived during the handshake.
    updates: Vec<Vec<u8>>,
    took: Duration,
}

/// Completes the client side of the sync handshake with an empty doc: sends step 1, answers
/// the server's step 1 with an (empty) step 2, and returns once both the server's step 1
/// and its step 2 have arrived.
async fn handshake(ws: &mut Ws) -> Res<Handshake> {
    let start = Instant::now();
    ws.send(empty_step1()).await?;
    let (mut got_step1, mut step2, mut updates) = (false, None, Vec::new());
    while !(got_step1 && step2.is_some()) {
        let frame = match ws.next().await {
            Some(Ok(WsMessage::Binary(b))) => b,
            Some(Ok(WsMessage::Close(c))) => return Err(format!("closed by server: {c:?}").into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err("connection ended during the handshake".into()),
        };
        match decode(&frame)? {
            Message::Sync(SyncMessage::SyncStep1(_)) => {
                got_step1 = true;
                ws.send(empty_step2()).await?;
            }
            Message::Sync(SyncMessage::SyncStep2(u)) => step2 = Some(u),
            Message::Sync(SyncMessage::Update(u)) => updates.push(u),
            _ => {}
        }
    }
    Ok(Handshake {
        step2: step2.unwrap_or_default(),
        updates,
        took: start.elapsed(),
    })
}

async fn open_synced(url: &str, config: WebSocketConfig) -> Res<(Ws, Handshake)> {
    let start = Instant::now();
    let mut ws = open(url, config).await?;
    let mut hs = handshake(&mut ws).await?;
    hs.took = start.elapsed();
    Ok((ws, hs))
}

/// Opens `n` synced connections, at most `concurrency` handshakes at a time; all must succeed.
async fn open_many(url: &str, n: usize, concurrency: usize) -> Res<Vec<(Ws, Handshake)>> {
    let results: Vec<Res<(Ws, Handshake)>> = stream::iter(0..n)
        .map(|_| async {
            tokio::time::timeout(Duration::from_secs(60), open_synced(url, ws_config(true)))
                .await
                .map_err(|_| Error::from("handshake timed out after 60 s"))?
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        return Err(format!("{failed} of {n} connections failed; first: {e}").into());
    }
    Ok(results.into_iter().map(|r| r.unwrap()).collect())
}

/// Keeps reading a connection (so pings are answered) until `stop`, then closes it.
/// Returns false if the server ended the connection first.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>) -> bool {
    let kept = loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break false,
                Some(Ok(_)) => {}
            },
            _ = stop.changed() => break true,
        }
    };
    if kept {
        close(ws).await;
    }
    kept
}

/// Sends a close frame and waits (briefly) for the server's.
async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// What a doc made of some updates holds: its state vector, and the entries of one root map
/// whose keys start with `prefix`.
#[derive(PartialEq, Eq, Debug)]
struct DocSummary {
    /// (client, clock) pairs, sorted: the encoded form's order depends on a hash map.
    state_vector: Vec<(u64, u32)>,
    entries: usize,
    string_bytes: usize,
    digest: u32,
    pending: bool,
}

fn summarize(updates: &[Vec<u8>], root: &str, prefix: &str) -> Res<DocSummary> {
    // One transaction per update, in the order received: cheap for updates that arrive in
    // order (merging thousands of small updates first is far slower).
    let doc = Doc::new();
    let map = doc.get_or_insert_map(root);
    for update in updates {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update)?)?;
    }
    let txn = doc.transact();
    let mut entries: Vec<(String, String, usize)> = map
        .iter(&txn)
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| {
            let len = match &v {
                Out::Any(Any::String(s)) => s.len(),
                _ => 0,
            };
            (k.to_string(), format!("{v:?}"), len)
        })
        .collect();
    entries.sort_unstable();
    let mut crc = crc32fast::Hasher::new();
    for (k, v, _) in &entries {
        crc.update(k.as_bytes());
        crc.update(&[0]);
        crc.update(v.as_bytes());
        crc.update(&[0]);
    }
    Ok(DocSummary {
        state_vector: {
            let mut sv: Vec<(u64, u32)> = txn
                .state_vector()
                .iter()
                .map(|(c, &clock)| (c.get(), clock))
                .collect();
            sv.sort_unstable();
            sv
        },
        entries: entries.len(),
        string_bytes: entries.iter().map(|e| e.2).sum(),
        digest: crc.finalize(),
        pending: txn.store().pending_update().is_some() || txn.store().pending_ds().is_some(),
    })
}

/// [`summarize`] for many clients, on all cores.
fn summarize_all(
    clients: &[Vec<Vec<u8>>],
    root: &str,
    prefix: &str,
) -> Vec<Result<DocSummary, String>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = clients.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|u| summarize(u, root, prefix).map_err(|e| e.to_string()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("summary thread"))
            .collect()
    })
}

// ---------------------------------------------------------------------------------------
// connect

async fn connect(args: &Args) -> Res<bool> {
    let url = args.url()?;
    let n: usize = args.num("clients", 1000)?;
    let concurrency: usize = args.num("concurrency", 200)?;
    let hold_for = args.secs("hold", 2.0)?;
    let pid = args.pid()?;
    check_fd_limit(n + 64)?;

    let peak_reset = pid.is_some_and(reset_peak);
    let target = Arc::new(Target::new(&url).await?);
    let client = Arc::new(EmptyClient::new());
    let before = Sample::take(pid);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Per connection: (from the TCP connect, from step 1 sent) to synced.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(Duration, Duration), String>>();
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let dropped = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let permit = permits.clone().acquire_owned().await?;
        let (target, client, done, stop, dropped) = (
            target.clone(),
            client.clone(),
            done_tx.clone(),
            stop_rx.clone(),
            dropped.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let synced = tokio::time::timeout(Duration::from_secs(60), async {
                let opening = Instant::now();
                let mut ws = RawWs::open(&target, raw_ws::CONNECT_BUFFER, None).await?;
                let syncing = Instant::now();
                client.sync(&mut ws).await?;
                Ok::<_, Error>((ws, (opening.elapsed(), syncing.elapsed())))
            })
            .await;
            drop(permit);
            match synced {
                Ok(Ok((ws, took))) => {
                    let _ = done.send(Ok(took));
                    if !ws.hold(stop).await {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Err(e)) => drop(done.send(Err(e.to_string()))),
                Err(_) => drop(done.send(Err("timed out after 60 s".into()))),
            }
        }));
    }
    drop(done_tx);
    let mut handshakes = Vec::with_capacity(n);
    let mut opens = Vec::with_capacity(n);
    let mut errors: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let Some(r) = done_rx.recv().await else { break };
        match r {
            Ok((open, sync)) => {
                opens.push(open.as_micros() as u64);
                handshakes.push(sync.as_micros() as u64);
            }
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    let connect_time = start.elapsed();
    let connected = handshakes.len();
    let failed = n - connected;
    let after_connect = Sample::take(pid);
    tokio::time::sleep(hold_for).await;
    let held = Sample::take(pid);
    let close_start = Instant::now();
    stop_tx.send_replace(true);
    for t in tasks {
        let _ = t.await;
    }
    let close_time = close_start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let closed = Sample::take(pid);

    let per_conn_kib = before
        .server
        .zip(held.server)
        .filter(|_| connected > 0)
        .map(|(b, h)| round((h.0 as f64 - b.0 as f64) / connected as f64, 1));
    let lat = latency_ms(&mut handshakes);
    let open_lat = latency_ms(&mut opens);
    let dropped = dropped.load(Ordering::Relaxed);
    let ok = failed == 0 && dropped == 0;
    let summary = json!({
        "scenario": "connect",
        "url": url,
        "clients": n,
        "concurrency": concurrency,
        "connected": connected,
        "failed": failed,
        "errors": errors,
        "dropped_while_held": dropped,
        "connect_all_s": round(connect_time.as_secs_f64(), 3),
        "connections_per_s": round(connected as f64 / connect_time.as_secs_f64(), 0),
        "handshake_ms": lat,
        "connect_to_synced_ms": open_lat,
        "server_rss_before_mb": before.rss_mb(),
        "server_rss_connected_mb": held.rss_mb(),
        "server_rss_per_connection_kib": per_conn_kib,
        "server_peak_rss_mb": held.hwm_mb(),
        "peak_since": if peak_reset { "scenario start" } else { "server start" },
        "server_rss_after_close_mb": closed.rss_mb(),
        "client_rss_mb": round(held.client_rss as f64 / 1024.0, 1),
        "close_all_s": round(close_time.as_secs_f64(), 3),
        "cpu": cpu_used(&before, &after_connect),
        "ok": ok,
    });
    let human = format!(
        "connect: {connected}/{n} connected in {:.2} s ({:.0}/s, handshake p50 {} p99 {}, from TCP connect p50 {} p99 {}); server RSS {} -> {} ({} KiB/connection, peak {}), {} after close; client RSS {:.0} MB; {failed} failed, {dropped} dropped",
        connect_time.as_secs_f64(),
        connected as f64 / connect_time.as_secs_f64(),
        fmt_ms(&lat["p50"]),
        fmt_ms(&lat["p99"]),
        fmt_ms(&open_lat["p50"]),
        fmt_ms(&open_lat["p99"]),
        fmt_mb(before.rss_mb()),
        fmt_mb(held.rss_mb()),
        per_conn_kib.map_or("-".into(), |k| k.to_string()),
        fmt_mb(held.hwm_mb()),
        fmt_mb(closed.rss_mb()),
        held.client_rss as f64 / 1024.0,
    );
    report(summary, human);
    Ok(ok)
}

// ---------------------------------------------------------------------------------------
// fanout

/// State shared by all clients of a fanout run.
struct Fanout {
    base: Instant,
    root: String,
    /// Every key this run writes starts with it.
    prefix: String,
    writers: usize,
    rate: f64,
    /// Client id of each writer's doc, and the reverse.
    writer_ids: Vec<u64>,
    writer_of: HashMap<u64, usize>,
    /// When each writer sent each of its updates (µs since `base`, plus one; 0 = not yet).
    sent_at: Vec<Box<[AtomicU64]>>,
    sent: AtomicU64,
    delivered: AtomicU64,
}

impl Fanout {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// Number of updates writer `w` sends when `total` are sent in all.
    fn count_for(&self, w: usize, total: u64) -> u64 {
        let w = w as u64;
        let k = self.writers as u64;
        if total > w {
            (total - w).div_ceil(k)
        } else {
            0
        }
    }
}

/// What one fanout client saw.
#[derive(Default)]
struct Received {
    /// Per writer, a bit per sequence number already received.
    seen: Vec<Vec<u64>>,
    latencies_us: Vec<u64>,
    unique: u64,
    duplicates: u64,
    echoes: u64,
    frames: u64,
    errors: Vec<String>,
    disconnected: bool,
    /// Everything received (the handshake's step 2 first), to rebuild the doc at the end.
    updates: Vec<Vec<u8>>,
}

impl Received {
    fn on_update(&mut self, update: Vec<u8>, me: Option<usize>, shared: &Fanout) {
        let now = shared.now_us();
        match Update::decode_v1(&update) {
            Ok(u) => {
                for (client, ranges) in u.insertions(true).iter() {
                    let Some(&w) = shared.writer_of.get(&client.get()) else {
                        continue;
                    };
                    for range in ranges.iter() {
                        for seq in range.clone() {
                            if Some(w) == me {
                                self.echoes += 1;
                                continue;
                            }
                            let (word, bit) = (seq as usize / 64, 1u64 << (seq % 64));
                            let bits = &mut self.seen[w];
                            if bits.len() <= word {
                                bits.resize(word + 1, 0);
                            }
                            if bits[word] & bit != 0 {
                                self.duplicates += 1;
                                continue;
                            }
                            bits[word] |= bit;
                            self.unique += 1;
                            shared.delivered.fetch_add(1, Ordering::Relaxed);
                            let sent = shared.sent_at[w]
                                .get(seq as usize)
                                .map_or(0, |t| t.load(Ordering::Acquire));
                            if sent > 0 {
                                self.latencies_us.push(now.saturating_sub(sent - 1));
                            }
                        }
                    }
                }
            }
            Err(e) => self.errors.push(format!("undecodable update: {e}")),
        }
        self.updates.push(update);
    }
}

async fn fanout(args: &Args) -> Res<bool> {
    let url = args.url()?;
    let n: usize = args.num("clients", 100)?;
    let writers: usize = args.num("writers", 10)?;
    let rate: f64 = args.num("rate", 1000.0)?;
    let duration = args.secs("duration", 20.0)?;
    let drain = args.secs("drain", 5.0)?;
    let concurrency: usize = args.num("concurrency", 200)?;
    let value_bytes: usize = args.num("value-bytes", 0)?;
    let slow: usize = args.num("slow-clients", 0)?;
    let slow_quiet = args.secs("slow-quiet", 3.0)?;
    let server_log = args.flags.get("server-log").cloned();
    let pid = args.pid()?;
    if writers == 0 || writers > n || n < 2 {
        return Err("need 2 or more clients and 1..=clients writers".into());
    }
    if rate.is_nan() || rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    check_fd_limit(n + slow + 64)?;
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let run = format!("{:x}", random_id());
    let writer_ids: Vec<u64> = (0..writers).map(|_| random_id()).collect();
    let mut shared = Fanout {
        base: Instant::now(),
        root: args.root(),
        prefix: format!("{run}/"),
        writers,
        rate,
        writer_of: writer_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i))
            .collect(),
        writer_ids,
        sent_at: Vec::new(),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
    };
    shared.sent_at = (0..writers)
        .map(|w| {
            (0..shared.count_for(w, total))
                .map(|_| AtomicU64::new(0))
                .collect()
        })
        .collect();
    let shared = Arc::new(shared);

    let connect_start = Instant::now();
    let conns = open_many(&url, n, concurrency).await?;
    // Slow consumers: they complete the handshake, then never read again until the run is
    // over (their sockets stay open, so their TCP buffers fill and the server's queue for
    // them grows).
    let slow_conns: Vec<Ws> = open_many(&url, slow, concurrency)
        .await?
        .into_iter()
        .map(|(ws, _)| ws)
        .collect();
    eprintln!(
        "fanout: {n} clients{} connected in {:.2} s; {total} updates from {writers} writers at {rate}/s",
        if slow > 0 { format!(" and {slow} slow ones (never reading)") } else { String::new() },
        connect_start.elapsed().as_secs_f64()
    );

    let peak_reset = pid.is_some_and(reset_peak);
    let before = Sample::take(pid);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    let (stop_tx, stop_rx) = watch::channel(false);
    let finished = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    for (i, (ws, hs)) in conns.into_iter().enumerate() {
        let me = (i < writers).then_some(i);
        let (shared, mut stop, finished) = (shared.clone(), stop_rx.clone(), finished.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Received {
                seen: vec![Vec::new(); shared.writers],
                ..Default::default()
            };
            got.updates.push(hs.step2);
            for u in hs.updates {
                got.on_update(u, me, &shared);
            }
            let (mut sink, mut source) = ws.split();
            let write = async {
                let Some(w) = me else { return Ok(None) };
                let doc = Doc::with_client_id(shared.writer_ids[w]);
                let map = doc.get_or_insert_map(shared.root.as_str());
                for seq in 0..shared.count_for(w, total) {
                    let g = seq * shared.writers as u64 + w as u64;
                    tokio::time::sleep_until(t0 + Duration::from_secs_f64(g as f64 / shared.rate))
                        .await;
                    let update = {
                        let mut txn = doc.transact_mut();
                        let key = format!("{}w{w}-{seq}", shared.prefix);
                        if value_bytes == 0 {
                            map.insert(&mut txn, key, unix_micros() as f64);
                        } else {
                            map.insert(&mut txn, key, entry_value(seq as usize, value_bytes));
                        }
                        txn.encode_update_v1()
                    };
                    let frame = binary(&Message::Sync(SyncMessage::Update(update)));
                    shared.sent_at[w][seq as usize].store(shared.now_us() + 1, Ordering::Release);
                    sink.send(frame).await?;
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                }
                let own = doc
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default());
                Ok::<_, Error>(Some(own))
            };
            let read = async {
                loop {
                    tokio::select! {
                        m = source.next() => match m {
                            Some(Ok(WsMessage::Binary(b))) => {
                                got.frames += 1;
                                match decode(&b) {
                                    Ok(Message::Sync(SyncMessage::Update(u)))
                                    | Ok(Message::Sync(SyncMessage::SyncStep2(u))) => got.on_update(u, me, &shared),
                                    Ok(_) => {}
                                    Err(e) => got.errors.push(format!("undecodable frame: {e}")),
                                }
                            }
                            Some(Ok(WsMessage::Close(_))) | None => { got.disconnected = true; break }
                            Some(Err(e)) => { got.errors.push(e.to_string()); got.disconnected = true; break }
                            Some(Ok(_)) => {}
                        },
                        _ = stop.changed() => break,
                    }
                }
            };
            let (own, ()) = tokio::join!(write, read);
            match own {
                Ok(Some(own)) => got.updates.push(own),
                Ok(None) => {}
                Err(e) => got.errors.push(format!("send failed: {e}")),
            }
            finished.fetch_add(1, Ordering::Relaxed);
            if let Ok(ws) = sink.reunite(source) {
                if !got.disconnected {
                    close(ws).await;
                }
            }
            got
        }));
    }

    // Wait for every update to be sent and delivered, or for deliveries to stall.
    let expected = total * (n as u64 - 1);
    let (mut last_delivered, mut last_progress) = (0, tokio::time::Instant::now());
    let mut next_note = t0 + Duration::from_secs(5);
    let hard_stop = t0 + duration + drain + Duration::from_secs(60);
    let mut last_delivery_at = Duration::ZERO;
    let tcp_mem_before = tcp_mem_mb();
    let mut tcp_mem_peak = tcp_mem_before;
    let mut next_tcp_sample = t0;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = tokio::time::Instant::now();
        if now >= next_tcp_sample {
            if let Some(mb) = tcp_mem_mb() {
                tcp_mem_peak = Some(tcp_mem_peak.map_or(mb, |p| p.max(mb)));
            }
            next_tcp_sample += Duration::from_secs(1);
        }
        let (sent, delivered) = (
            shared.sent.load(Ordering::Relaxed),
            shared.delivered.load(Ordering::Relaxed),
        );
        if delivered != last_delivered {
            last_delivered = delivered;
            last_progress = now;
            last_delivery_at = now.saturating_duration_since(t0);
        }
        if now >= next_note {
            eprintln!(
                "fanout: t={:.0} s sent {sent}/{total}, delivered {delivered}/{expected}",
                now.saturating_duration_since(t0).as_secs_f64()
            );
            next_note += Duration::from_secs(5);
        }
        let all_sent = sent == total;
        if (all_sent && (delivered >= expected || now - last_progress > drain))
            || finished.load(Ordering::Relaxed) == n
            || now > hard_stop
        {
            break;
        }
    }
    let after = Sample::take(pid);
    let send_time = {
        let last = shared
            .sent_at
            .iter()
            .flat_map(|ts| ts.iter())
            .map(|t| t.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let first = t0.into_std().saturating_duration_since(shared.base);
        Duration::from_micros(last.saturating_sub(1)).saturating_sub(first)
    };
    stop_tx.send_replace(true);
    let mut clients = Vec::with_capacity(n);
    for t in tasks {
        clients.push(t.await?);
    }

    // The slow clients now read what is left, to the end: how the server ended them.
    let slow_ends: Vec<SlowEnd> = stream::iter(slow_conns)
        .map(|ws| drain_slow(ws, slow_quiet))
        .buffer_unordered(slow.max(1))
        .collect()
        .await;
    let mut slow_outcomes: HashMap<String, usize> = HashMap::new();
    for end in &slow_ends {
        *slow_outcomes.entry(end.outcome.clone()).or_default() += 1;
    }
    let slow_1013 = slow_outcomes.get("close 1013").copied().unwrap_or(0);
    let slow_open = slow_outcomes.get(STILL_OPEN).copied().unwrap_or(0);
    let slow_frames: u64 = slow_ends.iter().map(|e| e.frames).sum();
    let slow_bytes: u64 = slow_ends.iter().map(|e| e.bytes).sum();
    // The server's own count of slow-consumer closes, from its log (warn level).
    let logged_closes = server_log
        .as_ref()
        .and_then(|path| match std::fs::read_to_string(path) {
            Ok(log) => Some(log.lines().filter(|l| l.contains(SLOW_CLOSE_LOG)).count()),
            Err(e) => {
                eprintln!("fanout: cannot read the server log {path}: {e}");
                None
            }
        });

    // Convergence: every client's doc, and that of a client joining now, must be the same.
    let check_start = Instant::now();
    let fresh = async {
        let (ws, hs) = open_synced(&url, ws_config(false)).await?;
        close(ws).await;
        let mut updates = vec![hs.step2];
        updates.extend(hs.updates);
        summarize(&updates, &shared.root, &shared.prefix)
    }
    .await;
    let (reference, fresh_error) = match fresh {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(format!("fresh client: {e}"))),
    };
    let all_updates: Vec<Vec<Vec<u8>>> = clients
        .iter_mut()
        .map(|c| std::mem::take(&mut c.updates))
        .collect();
    let (root, prefix) = (shared.root.clone(), shared.prefix.clone());
    let summaries =
        tokio::task::spawn_blocking(move || summarize_all(&all_updates, &root, &prefix)).await?;
    let mut diverged = 0;
    let mut divergence = None;
    for (i, s) in summaries.iter().enumerate() {
        if s.as_ref().ok() != reference.as_ref() {
            diverged += 1;
            divergence.get_or_insert_with(|| match (s, &reference) {
                (Ok(s), Some(r)) => format!(
                    "client {i}: {} entries, {} clients in its state vector, pending {} (fresh client: {}, {}, {})",
                    s.entries,
                    s.state_vector.len(),
                    s.pending,
                    r.entries,
                    r.state_vector.len(),
                    r.pending
                ),
                (Err(e), _) => format!("client {i}: {e}"),
                (Ok(_), None) => fresh_error.clone().unwrap_or_default(),
            });
        }
    }
    let check_time = check_start.elapsed();

    let unique: u64 = clients.iter().map(|c| c.unique).sum();
    let duplicates: u64 = clients.iter().map(|c| c.duplicates).sum();
    let echoes: u64 = clients.iter().map(|c| c.echoes).sum();
    let disconnected = clients.iter().filter(|c| c.disconnected).count();
    let errors: Vec<&String> = clients
        .iter()
        .flat_map(|c| c.errors.iter())
        .take(5)
        .collect();
    let mut lat: Vec<u64> = clients
        .iter()
        .flat_map(|c| c.latencies_us.iter().copied())
        .collect();
    let lat = latency_ms(&mut lat);
    let sent = shared.sent.load(Ordering::Relaxed);
    let lost = expected.saturating_sub(unique);
    let converged = diverged == 0
        && reference
            .as_ref()
            .is_some_and(|r| r.entries as u64 == total && !r.pending)
        && sent == total;
    let window = last_delivery_at.as_secs_f64().max(1e-9);
    let ok = lost == 0 && converged && disconnected == 0 && errors.is_empty();
    let summary = json!({
        "scenario": "fanout",
        "url": url,
        "clients": n,
        "writers": writers,
        "rate": rate,
        "duration_s": duration.as_secs_f64(),
        "value_bytes": value_bytes,
        "updates": total,
        "sent": sent,
        "send_rate_per_s": round(sent as f64 / send_time.as_secs_f64().max(1e-9), 1),
        "expected_deliveries": expected,
        "delivered": unique,
        "lost": lost,
        "duplicates": duplicates,
        "echoes_to_writer": echoes,
        "deliveries_per_s": round(unique as f64 / window, 0),
        "latency_ms": lat,
        "converged": converged,
        "clients_diverged": diverged,
        "first_divergence": divergence,
        "entries_in_room": reference.as_ref().map(|r| r.entries),
        "convergence_check_s": round(check_time.as_secs_f64(), 2),
        "clients_disconnected": disconnected,
        "errors": errors,
        "slow_clients": slow,
        "slow_outcomes": slow_outcomes,
        "slow_closed_1013": slow_1013,
        "slow_closed_by_server": slow - slow_open,
        "slow_drained_frames": slow_frames,
        "slow_drained_mb": round(slow_bytes as f64 / MIB, 2),
        "server_logged_slow_closes": logged_closes,
        "kernel_tcp_mem_before_mb": tcp_mem_before,
        "kernel_tcp_mem_peak_mb": tcp_mem_peak,
        "server_rss_before_mb": before.rss_mb(),
        "server_rss_mb": after.rss_mb(),
        "server_peak_rss_mb": after.hwm_mb(),
        "peak_since": if peak_reset { "scenario start" } else { "server start" },
        "client_rss_mb": round(after.client_rss as f64 / 1024.0, 1),
        "cpu": cpu_used(&before, &after),
        "ok": ok,
    });
    let slow_note = if slow > 0 {
        format!(
            "; {slow} slow clients: {slow_1013} closed with 1013, {} closed in all, {slow_open} still open{}",
            slow - slow_open,
            logged_closes.map_or(String::new(), |c| format!(
                " (the server logged {c} slow-consumer closes)"
            )),
        )
    } else {
        String::new()
    };
    // Server CPU per delivery: the figure the floor (`floor`) compares with.
    let per_delivery = before
        .server_cpu
        .zip(after.server_cpu)
        .filter(|_| unique > 0)
        .map_or(String::new(), |(a, b)| {
            format!(
                ", {:.2} µs of server CPU per delivery",
                (b - a) * 1e6 / unique as f64
            )
        });
    let human = format!(
        "fanout: {n} clients, {writers} writers, {sent}/{total} updates at {:.0}/s -> {unique}/{expected} deliveries ({:.0}/s{per_delivery}), latency p50 {} p99 {} max {}; lost {lost}, duplicates {duplicates}, converged {converged}; server RSS {} (peak {}){slow_note}",
        sent as f64 / send_time.as_secs_f64().max(1e-9),
        unique as f64 / window,
        fmt_ms(&lat["p50"]),
        fmt_ms(&lat["p99"]),
        fmt_ms(&lat["max"]),
        fmt_mb(after.rss_mb()),
        fmt_mb(after.hwm_mb()),
    );
    report(summary, human);
    Ok(ok)
}

/// What the server logs (warn) when it closes a connection whose send queue overflowed.
const SLOW_CLOSE_LOG: &str = "send queue full; closing";
/// The outcome of a slow client the server never closed.
const STILL_OPEN: &str = "still open";

/// How a slow fanout client ended, read once the run is over.
struct SlowEnd {
    /// `close <code>`, `ended without a close frame...`, or [`STILL_OPEN`].
    outcome: String,
    /// Frames (and their bytes) still buffered for it when it started reading again.
    frames: u64,
    bytes: u64,
}

/// Reads a slow client to the end: everything the server (and the kernel) still held for
/// it, then its close frame. `quiet` without a frame means the server never closed it: it
/// is closed here.
async fn drain_slow(mut ws: Ws, quiet: Duration) -> SlowEnd {
    let (mut frames, mut bytes) = (0, 0);
    let outcome = loop {
        match tokio::time::timeout(quiet, ws.next()).await {
            Err(_) => {
                close(ws).await;
                break STILL_OPEN.to_string();
            }
            Ok(Some(Ok(WsMessage::Close(Some(f))))) => {
                break format!("close {}", u16::from(f.code))
            }
            Ok(Some(Ok(WsMessage::Close(None)))) => break "close without a code".into(),
            Ok(Some(Ok(m))) => {
                frames += 1;
                bytes += m.len() as u64;
            }
            Ok(Some(Err(e))) => break format!("ended without a close frame ({e})"),
            Ok(None) => break "ended without a close frame".into(),
        }
    };
    SlowEnd {
        outcome,
        frames,
        bytes,
    }
}

/// A joiner: connects, sends an empty step 1, answers the server's step 1 with an empty
/// step 2, and streams the server's step 2 through [`SyncStream`]: when it was complete
/// (since `start`), its payload length and CRC-32.
async fn join_streaming(
    target: &Target,
    recv_buffer: Option<u32>,
    start: Instant,
) -> Res<(RawWs, Joined)> {
    let mut ws = RawWs::open(target, raw_ws::JOIN_BUFFER, recv_buffer).await?;
    ws.send(OP_BINARY, &empty_step1().into_data()).await?;
    loop {
        let mut message = SyncStream::new();
        ws.read_binary(|piece| message.feed(piece)).await?;
        match message.finish()? {
            Some((0, ..)) => ws.send(OP_BINARY, &empty_step2().into_data()).await?,
            Some((1, len, crc)) => {
                let at = start.elapsed();
                return Ok((ws, Joined { at, len, crc }));
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// join

/// A value of exactly `len` ASCII bytes, different for each entry.
fn entry_value(i: usize, len: usize) -> String {
    let mut v = format!("{i}:");
    while v.len() < len {
        v.push((b'a' + ((v.len() + i) % 26) as u8) as char);
    }
    v.truncate(len);
    v
}

/// One joining client's view of its step 2.
struct Joined {
    at: Duration,
    len: usize,
    crc: u32,
}

async fn join(args: &Args) -> Res<bool> {
    let url = args.url()?;
    let n: usize = args.num("clients", 150)?;
    let doc_mb: f64 = args.num("doc-mb", 20.0)?;
    let entry_bytes: usize = args.num("entry-bytes", 1024)?;
    let chunk_kb: usize = args.num("chunk-kb", 1024)?;
    let recv_buffer: u32 = args.num("recv-buffer", 4 * 1024 * 1024)?;
    let recv_buffer = (recv_buffer > 0).then_some(recv_buffer);
    let cold = args.num("cold", 0u8)? != 0;
    let pid = args.pid()?;
    let root = args.root();
    check_fd_limit(n + 64)?;
    if entry_bytes == 0 {
        return Err("--entry-bytes must be positive".into());
    }
    let entries = ((doc_mb * MIB) / entry_bytes as f64).ceil() as usize;
    let per_update = (chunk_kb * 1024 / entry_bytes).max(1);
    let prefix = format!("{:x}/", random_id());

    // Seed the room, and keep the seeder connected (draining what the server sends it).
    let seed_start = Instant::now();
    let (mut seeder, _) = open_synced(&url, ws_config(false)).await?;
    let doc = Doc::new();
    let map = doc.get_or_insert_map(root.as_str());
    let mut seed_bytes = 0;
    let mut first = 0;
    while first < entries {
        let last = (first + per_update).min(entries);
        let update = {
            let mut txn = doc.transact_mut();
            for i in first..last {
                map.insert(
                    &mut txn,
                    format!("{prefix}j{i:07}"),
                    entry_value(i, entry_bytes),
                );
            }
            txn.encode_update_v1()
        };
        seed_bytes += update.len();
        seeder
            .send(binary(&Message::Sync(SyncMessage::Update(update))))
            .await?;
        first = last;
    }
    drop(doc);
    let (stop_tx, stop_rx) = watch::channel(false);
    let seeder_task = tokio::spawn(hold(seeder, stop_rx.clone()));

    // Wait until a new connection receives all of it.
    let mut probes = 0;
    let seeded = loop {
        probes += 1;
        let (ws, hs) = open_synced(&url, ws_config(false)).await?;
        close(ws).await;
        let mut updates = vec![hs.step2];
        updates.extend(hs.updates);
        let s = summarize(&updates, &root, &prefix)?;
        if s.entries == entries {
            break s;
        }
        if seed_start.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "the server holds {} of {entries} seeded entries after 120 s",
                s.entries
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seed_time = seed_start.elapsed();
    eprintln!(
        "join: seeded {entries} entries ({:.1} MB in updates) in {:.2} s ({probes} probe(s)); {n} clients joining",
        seed_bytes as f64 / MIB,
        seed_time.as_secs_f64()
    );

    if cold {
        // One more entry, outside the checked ones: the doc changes after the probes, so
        // the first joiner has the full state encoded (the others share it).
        let (mut ws, _) = open_synced(&url, ws_config(false)).await?;
        let doc = Doc::new();
        let map = doc.get_or_insert_map(root.as_str());
        let update = {
            let mut txn = doc.transact_mut();
            map.insert(&mut txn, format!("{:x}-cold", random_id()), "changed");
            txn.encode_update_v1()
        };
        ws.send(binary(&Message::Sync(SyncMessage::Update(update))))
            .await?;
        close(ws).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak_reset = pid.is_some_and(reset_peak);
    let before = Sample::take(pid);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<Joined, String>>();
    let dropped = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(Target::new(&url).await?);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (target, done, stop, dropped) = (
            target.clone(),
            done_tx.clone(),
            stop_rx.clone(),
            dropped.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let joined = join_streaming(&target, recv_buffer, start);
            match tokio::time::timeout(Duration::from_secs(120), joined).await {
                Ok(Ok((ws, j))) => {
                    let _ = done.send(Ok(j));
                    if !ws.hold(stop).await {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Err(e)) => drop(done.send(Err(e.to_string()))),
                Err(_) => drop(done.send(Err("no step 2 within 120 s".into()))),
            }
        }));
    }
    drop(done_tx);
    let mut joined = Vec::with_capacity(n);
    let mut errors: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let Some(r) = done_rx.recv().await else { break };
        match r {
            Ok(j) => joined.push(j),
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    let all_time = start.elapsed();
    let after = Sample::take(pid);

    // The content check: one more client fetches the step 2 the buffered way, before the
    // others leave (the reference server drops a room's doc with its last connection). It
    // must hold every entry, and every joiner's step 2 must be the same bytes (by length
    // and CRC-32).
    let check = match tokio::time::timeout(
        Duration::from_secs(120),
        open_synced(&url, ws_config(false)),
    )
    .await
    {
        Ok(Ok((ws, hs))) => {
            close(ws).await;
            let good = summarize(std::slice::from_ref(&hs.step2), &root, &prefix).is_ok_and(|s| {
                s.entries == entries
                    && s.string_bytes == entries * entry_bytes
                    && s.digest == seeded.digest
            });
            if !good {
                eprintln!("join: the step 2 of the checking client lacks some of the content");
            }
            good.then(|| (hs.step2.len(), crc32fast::hash(&hs.step2)))
        }
        Ok(Err(e)) => {
            eprintln!("join: the checking client failed: {e}");
            None
        }
        Err(_) => {
            eprintln!("join: the checking client got no step 2 within 120 s");
            None
        }
    };
    stop_tx.send_replace(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = seeder_task.await;

    let variants: HashSet<(usize, u32)> = joined.iter().map(|j| (j.len, j.crc)).collect();
    let bad_clients = joined
        .iter()
        .filter(|j| Some((j.len, j.crc)) != check)
        .count();
    let mut at_us: Vec<u64> = joined.iter().map(|j| j.at.as_micros() as u64).collect();
    let lat = latency_ms(&mut at_us);
    let step2_mb = joined.first().map_or(0.0, |j| round(j.len as f64 / MIB, 2));
    let failed = n - joined.len();
    let dropped = dropped.load(Ordering::Relaxed);
    let ok = failed == 0 && bad_clients == 0;
    let summary = json!({
        "scenario": "join",
        "url": url,
        "joiner": "streaming",
        "joiner_recv_buffer": recv_buffer,
        "cold": cold,
        "clients": n,
        "doc_mb": doc_mb,
        "entries": entries,
        "entry_bytes": entry_bytes,
        "seed_update_mb": round(seed_bytes as f64 / MIB, 2),
        "seed_s": round(seed_time.as_secs_f64(), 2),
        "step2_mb": step2_mb,
        "step2_variants": variants.len(),
        "all_received_s": round(all_time.as_secs_f64(), 3),
        "received_ms": lat,
        "received": joined.len(),
        "failed": failed,
        "errors": errors,
        "incomplete": bad_clients,
        "dropped_while_held": dropped,
        "server_rss_before_mb": before.rss_mb(),
        "server_peak_rss_mb": after.hwm_mb(),
        "peak_since": if peak_reset { "clients joining (after seeding)" } else { "server start" },

        "server_rss_after_mb": after.rss_mb(),
        "client_rss_mb": round(after.client_rss as f64 / 1024.0, 1),
        "cpu": cpu_used(&before, &after),
        "ok": ok,
    });
    let human = format!(
        "join: {}/{n} clients received the {step2_mb} MB doc ({entries} entries) in {:.2} s (p50 {}), server peak RSS {}{} (RSS {} before); {} incomplete, {failed} failed",
        joined.len(),
        all_time.as_secs_f64(),
        fmt_ms(&lat["p50"]),
        fmt_mb(after.hwm_mb()),
        if peak_reset { " during the join" } else { " since start" },
        fmt_mb(before.rss_mb()),
        bad_clients,
    );
    report(summary, human);
    Ok(ok)
}

// ---------------------------------------------------------------------------------------
// awareness

#[derive(Default)]
struct AwarenessSeen {
    /// Last clock seen from each client of the run.
    last: Vec<u32>,
    latencies_us: Vec<u64>,
    frames: u64,
    entries: u64,
    echoes: u64,
    skipped: u64,
    stale: u64,
    errors: Vec<String>,
    disconnected: bool,
}

async fn awareness(args: &Args) -> Res<bool> {
    let url = args.url()?;
    let n: usize = args.num("clients", 200)?;
    let duration = args.secs("duration", 10.0)?;
    let interval = Duration::from_millis(args.num("interval-ms", 1000u64)?.max(1));
    let concurrency: usize = args.num("concurrency", 200)?;
    let pid = args.pid()?;
    check_fd_limit(n + 64)?;
    let rounds = (duration.as_secs_f64() / interval.as_secs_f64()).round() as u32;
    let ids: Arc<Vec<u64>> = Arc::new((0..n).map(|_| random_id()).collect());
    let index: Arc<HashMap<u64, usize>> =
        Arc::new(ids.iter().enumerate().map(|(i, &id)| (id, i)).collect());
    let base = Instant::now();

    let conns = open_many(&url, n, concurrency).await?;
    let peak_reset = pid.is_some_and(reset_peak);
    let before = Sample::take(pid);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    // Count what arrives until the last round had time to arrive.
    let end = t0 + interval * rounds + Duration::from_secs(2);
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    for (i, (ws, _)) in conns.into_iter().enumerate() {
        let (ids, index, sent) = (ids.clone(), index.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = AwarenessSeen {
                last: vec![0; ids.len()],
                ..Default::default()
            };
            let (mut sink, mut source) = ws.split();
            let phase = interval.mul_f64(i as f64 / ids.len() as f64);
            let write = async {
                for k in 0..rounds {
                    tokio::time::sleep_until(t0 + phase + interval * k).await;
                    let state = format!(
                        r#"{{"user":{{"name":"load-{i}"}},"t":{},"k":{k}}}"#,
                        base.elapsed().as_micros()
                    );
                    let update = AwarenessUpdate {
                        clients: HashMap::from([(
                            ClientID::new(ids[i]),
                            AwarenessUpdateEntry {
                                clock: k + 1,
                                json: state.into(),
                            },
                        )]),
                    };
                    sink.send(binary(&Message::Awareness(update))).await?;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Error>(())
            };
            let read = async {
                loop {
                    let m = tokio::select! {
                        m = source.next() => m,
                        _ = tokio::time::sleep_until(end) => break,
                    };
                    let frame = match m {
                        Some(Ok(WsMessage::Binary(b))) => b,
                        Some(Ok(WsMessage::Close(_))) | None => {
                            seen.disconnected = true;
                            break;
                        }
                        Some(Err(e)) => {
                            seen.errors.push(e.to_string());
                            seen.disconnected = true;
                            break;
                        }
                        Some(Ok(_)) => continue,
                    };
                    let now = base.elapsed().as_micros() as u64;
                    let update = match decode(&frame) {
                        Ok(Message::Awareness(u)) => u,
                        Ok(_) => continue,
                        Err(e) => {
                            seen.errors.push(format!("undecodable frame: {e}"));
                            continue;
                        }
                    };
                    seen.frames += 1;
                    for (client, entry) in update.clients {
                        let Some(&from) = index.get(&client.get()) else {
                            continue;
                        };
                        if &*entry.json == "null" {
                            continue;
                        }
                        let last = seen.last[from];
                        if entry.clock <= last {
                            seen.stale += 1;
                            continue;
                        }
                        seen.skipped += u64::from(entry.clock - last - 1);
                        seen.last[from] = entry.clock;
                        seen.entries += 1;
                        if from == i {
                            seen.echoes += 1;
                        }
                        let t = serde_json::from_str::<serde_json::Value>(&entry.json)
                            .ok()
                            .and_then(|v| v["t"].as_u64());
                        match t {
                            Some(t) => seen.latencies_us.push(now.saturating_sub(t)),
                            None => seen
                                .errors
                                .push(format!("state without time: {}", entry.json)),
                        }
                    }
                }
            };
            let (written, ()) = tokio::join!(write, read);
            if let Err(e) = written {
                seen.errors.push(format!("send failed: {e}"));
            }
            if let Ok(ws) = sink.reunite(source) {
                if !seen.disconnected {
                    close(ws).await;
                }
            }
            seen
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for t in tasks {
        clients.push(t.await?);
    }
    let after = Sample::take(pid);

    let sent = sent.load(Ordering::Relaxed);
    let expected = sent * n as u64;
    let entries: u64 = clients.iter().map(|c| c.entries).sum();
    let frames: u64 = clients.iter().map(|c| c.frames).sum();
    let echoes: u64 = clients.iter().map(|c| c.echoes).sum();
    let skipped: u64 = clients.iter().map(|c| c.skipped).sum();
    let stale: u64 = clients.iter().map(|c| c.stale).sum();
    let disconnected = clients.iter().filter(|c| c.disconnected).count();
    let errors: Vec<&String> = clients
        .iter()
        .flat_map(|c| c.errors.iter())
        .take(5)
        .collect();
    let mut lat: Vec<u64> = clients
        .iter()
        .flat_map(|c| c.latencies_us.iter().copied())
        .collect();
    let lat = latency_ms(&mut lat);
    let window = (interval * rounds).as_secs_f64().max(1e-9);
    let missing = expected.saturating_sub(entries);
    let ok = disconnected == 0 && errors.is_empty() && sent == u64::from(rounds) * n as u64;
    let summary = json!({
        "scenario": "awareness",
        "url": url,
        "clients": n,
        "interval_ms": interval.as_millis() as u64,
        "duration_s": round(window, 2),
        "sent": sent,
        "expected_states": expected,
        "received_states": entries,
        "missing_states": missing,
        "skipped_clocks": skipped,
        "stale_states": stale,
        "echoes": echoes,
        "messages_received": frames,
        "messages_received_per_s": round(frames as f64 / window, 0),
        "states_received_per_s": round(entries as f64 / window, 0),
        "latency_ms": lat,
        "clients_disconnected": disconnected,
        "errors": errors,
        "server_rss_mb": after.rss_mb(),
        "server_peak_rss_mb": after.hwm_mb(),
        "peak_since": if peak_reset { "scenario start" } else { "server start" },
        "cpu": cpu_used(&before, &after),
        "ok": ok,
    });
    let server_cpu = before
        .server_cpu
        .zip(after.server_cpu)
        .map_or(String::new(), |(a, b)| {
            format!(", server CPU {:.0} % of a core", (b - a) * 100.0 / window)
        });
    let human = format!(
        "awareness: {n} clients, {sent} states sent -> {frames} messages received ({:.0}/s), {entries}/{expected} states (missing {missing}), latency p50 {} p99 {} max {}; server RSS {}{server_cpu}",
        frames as f64 / window,
        fmt_ms(&lat["p50"]),
        fmt_ms(&lat["p99"]),
        fmt_ms(&lat["max"]),
        fmt_mb(after.rss_mb()),
    );
    report(summary, human);
    Ok(ok)
}

// ---------------------------------------------------------------------------------------
// churn

/// Message type of SYNC_STATUS (our server's extension): echoed unchanged once everything
/// the connection sent before it is applied and durable.
const MSG_SYNC_STATUS: u8 = 102;

/// What the churn workers write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ChurnData {
    /// Each worker owns one Y.Array (root `<root>-churn-<worker>`); an edit appends a value
    /// and deletes the previous one. The worker's deleted items are consecutive (its own
    /// clock, each one's origin the one before), so Yjs merges them into one tombstone:
    /// the doc stays the same size however many edits are made.
    List,
    /// One Y.Map (root `<root>-churn`) of `--keys` keys; an edit overwrites a random key.
    /// The content stays bounded, but every overwritten value leaves a tombstone item (Yjs
    /// cannot merge the deleted items of different map keys): the doc grows with every edit.
    Map,
}

/// Settings of a churn run, shared by its workers.
struct Churn {
    urls: Vec<String>,
    root: String,
    edits: usize,
    data: ChurnData,
    keys: usize,
    /// A new awareness client id per connection (a page load), or the worker's own.
    fresh_awareness: bool,
    abrupt_every: u64,
    pause: Duration,
    cycles: AtomicU64,
    failed: AtomicU64,
    updates: AtomicU64,
    abrupt: AtomicU64,
}

/// A churn worker: one client that connects, edits and disconnects over and over, keeping
/// its doc (and client id) between connections, as a client that reconnects does.
struct ChurnWorker {
    index: usize,
    id: u64,
    /// Its doc of each room, created on its first visit.
    docs: Vec<Option<Doc>>,
    cycle: u64,
    awareness_clock: u32,
    /// Of the current phase: connect + handshake, and whole-cycle times (µs).
    handshake_us: Vec<u64>,
    cycle_us: Vec<u64>,
    errors: HashMap<String, usize>,
}

fn apply_update(doc: &Doc, update: &[u8]) -> Res<()> {
    doc.transact_mut()
        .apply_update(Update::decode_v1(update)?)?;
    Ok(())
}

/// The next binary frame; a close frame or the end of the connection is an error.
async fn next_binary(ws: &mut Ws) -> Res<tokio_tungstenite::tungstenite::Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Binary(b))) => return Ok(b),
            Some(Ok(WsMessage::Close(c))) => {
                return Err(format!(
                    "closed by the server: {}",
                    c.map_or("no code".into(), |c| format!(
                        "{} {}",
                        u16::from(c.code),
                        c.reason
                    ))
                )
                .into())
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("the connection ended".into()),
        }
    }
}

/// One connection of a worker: connect; send step 1 and an awareness state; answer the
/// server's step 1 with what it lacks and apply its step 2; make `edits` updates (one
/// frame each); send SYNC_STATUS and wait for its echo (everything applied and durable);
/// then close (or, every `abrupt_every`-th time, drop the TCP connection without a close
/// frame). Returns the connect + handshake time.
async fn churn_cycle(shared: &Churn, w: &mut ChurnWorker) -> Res<Duration> {
    let start = Instant::now();
    let (index, cycle, id) = (w.index, w.cycle, w.id);
    let room = (index + cycle as usize) % shared.urls.len();
    let awareness_id = if shared.fresh_awareness {
        random_id()
    } else {
        id
    };
    // The server keeps a removed state's clock (+1): a returning id needs a larger one.
    w.awareness_clock += 2;
    let clock = w.awareness_clock;
    let doc = w.docs[room].get_or_insert_with(|| Doc::with_client_id(id));

    let mut ws = open(&shared.urls[room], ws_config(true)).await?;
    let sv = doc.transact().state_vector();
    let state = format!(
        r##"{{"user":{{"name":"churn-{index}","color":"#{:06x}"}},"cycle":{cycle},"cursor":{}}}"##,
        random_id() & 0xff_ffff,
        random_id() % 10_000
    );
    let awareness = AwarenessUpdate {
        clients: HashMap::from([(
            ClientID::new(awareness_id),
            AwarenessUpdateEntry {
                clock,
                json: state.into(),
            },
        )]),
    };
    ws.feed(binary(&Message::Sync(SyncMessage::SyncStep1(sv))))
        .await?;
    ws.feed(binary(&Message::Awareness(awareness))).await?;
    ws.flush().await?;
    let (mut got_step1, mut got_step2) = (false, false);
    while !(got_step1 && got_step2) {
        match decode(&next_binary(&mut ws).await?)? {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                got_step1 = true;
                let diff = doc.transact().encode_state_as_update_v1(&sv);
                ws.send(binary(&Message::Sync(SyncMessage::SyncStep2(diff))))
                    .await?;
            }
            Message::Sync(SyncMessage::SyncStep2(u)) => {
                got_step2 = true;
                apply_update(doc, &u)?;
            }
            Message::Sync(SyncMessage::Update(u)) => apply_update(doc, &u)?,
            _ => {}
        }
    }
    let handshake = start.elapsed();

    for e in 0..shared.edits {
        let value = format!("w{index} c{cycle} e{e} {:016x}", random_id());
        let update = match shared.data {
            ChurnData::List => {
                let list = doc.get_or_insert_array(format!("{}-churn-{index}", shared.root));
                let mut txn = doc.transact_mut();
                let before = list.len(&txn);
                list.push_back(&mut txn, value);
                if before > 0 {
                    list.remove_range(&mut txn, 0, before);
                }
                txn.encode_update_v1()
            }
            ChurnData::Map => {
                let map = doc.get_or_insert_map(format!("{}-churn", shared.root));
                let mut txn = doc.transact_mut();
                let key = random_id() as usize % shared.keys.max(1);
                map.insert(&mut txn, format!("k{key:03}"), value);
                txn.encode_update_v1()
            }
        };
        ws.feed(binary(&Message::Sync(SyncMessage::Update(update))))
            .await?;
    }
    let status = Message::Custom(MSG_SYNC_STATUS, cycle.to_le_bytes().to_vec()).encode_v1();
    ws.send(WsMessage::Binary(status.clone().into())).await?;
    shared
        .updates
        .fetch_add(shared.edits as u64, Ordering::Relaxed);
    loop {
        let frame = next_binary(&mut ws).await?;
        if frame[..] == status[..] {
            break;
        }
        match decode(&frame)? {
            Message::Sync(SyncMessage::Update(u)) | Message::Sync(SyncMessage::SyncStep2(u)) => {
                apply_update(doc, &u)?
            }
            _ => {}
        }
    }
    if shared.abrupt_every > 0 && (cycle + 1) % shared.abrupt_every == 0 {
        // A dropped network connection: no close frame (a reset if anything is unread).
        drop(ws);
        shared.abrupt.fetch_add(1, Ordering::Relaxed);
    } else {
        close(ws).await;
    }
    Ok(handshake)
}

/// Runs every worker's connect/edit/disconnect loop until `until`.
async fn churn_phase(
    shared: &Arc<Churn>,
    workers: Vec<ChurnWorker>,
    until: tokio::time::Instant,
) -> Res<Vec<ChurnWorker>> {
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            let shared = shared.clone();
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    let start = Instant::now();
                    let done =
                        tokio::time::timeout(Duration::from_secs(60), churn_cycle(&shared, &mut w))
                            .await;
                    match done {
                        Ok(Ok(handshake)) => {
                            w.handshake_us.push(handshake.as_micros() as u64);
                            w.cycle_us.push(start.elapsed().as_micros() as u64);
                            shared.cycles.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            *w.errors.entry(e.to_string()).or_default() += 1;
                            shared.failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(_) => {
                            *w.errors
                                .entry("no SYNC_STATUS echo within 60 s".into())
                                .or_default() += 1;
                            shared.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    w.cycle += 1;
                    if !shared.pause.is_zero() {
                        tokio::time::sleep(shared.pause).await;
                    }
                }
                w
            })
        })
        .collect();
    let mut workers = Vec::with_capacity(tasks.len());
    for t in tasks {
        workers.push(t.await?);
    }
    Ok(workers)
}

/// The size of every room's doc, as a new client receives it (its step 2), in bytes.
async fn doc_bytes(urls: &[String]) -> Option<usize> {
    let mut total = 0;
    for url in urls {
        match open_synced(url, ws_config(false)).await {
            Ok((ws, hs)) => {
                close(ws).await;
                total += hs.step2.len();
            }
            Err(e) => {
                eprintln!("churn: cannot fetch the doc of {url}: {e}");
                return None;
            }
        }
    }
    Some(total)
}

/// HTTP requests made before the baseline and final RSS samples.
const POKES: usize = 100;

/// The server's figures after [`POKES`] plain HTTP requests (`GET /`, its discovery
/// document) and a second: mimalloc gives freed memory back to the OS lazily, on later
/// allocator activity, so an idle server's RSS still counts memory it has freed.
async fn poked(url: &str, pid: Option<u32>) -> Sample {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut answered = 0;
    for _ in 0..POKES {
        let one = async {
            let mut tcp = TcpStream::connect(host).await?;
            tcp.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            tcp.read_to_end(&mut response).await?;
            Ok::<_, Error>(response.starts_with(b"HTTP/1.1 200"))
        };
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(5), one).await {
            answered += 1;
        }
    }
    if answered < POKES {
        eprintln!("churn: {answered} of {POKES} HTTP requests answered with 200");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Sample::take(pid)
}

/// Server RSS samples: seconds since the start, phase, MB, connections made so far.
type RssSamples = Arc<std::sync::Mutex<Vec<(f64, usize, f64, u64)>>>;

const CHURN_PHASES: [&str; 5] = ["start", "warm-up", "idle", "churn", "idle"];

/// What one phase of churn did.
fn phase_summary(
    workers: &mut [ChurnWorker],
    shared: &Churn,
    counts_before: (u64, u64, u64, u64),
    took: Duration,
) -> serde_json::Value {
    let mut cycle_us: Vec<u64> = workers
        .iter_mut()
        .flat_map(|w| w.cycle_us.drain(..))
        .collect();
    let mut handshake_us: Vec<u64> = workers
        .iter_mut()
        .flat_map(|w| w.handshake_us.drain(..))
        .collect();
    let mut errors: HashMap<String, usize> = HashMap::new();
    for w in workers.iter_mut() {
        for (e, c) in w.errors.drain() {
            *errors.entry(e).or_default() += c;
        }
    }
    let (cycles, failed, updates, abrupt) = (
        shared.cycles.load(Ordering::Relaxed) - counts_before.0,
        shared.failed.load(Ordering::Relaxed) - counts_before.1,
        shared.updates.load(Ordering::Relaxed) - counts_before.2,
        shared.abrupt.load(Ordering::Relaxed) - counts_before.3,
    );
    let secs = took.as_secs_f64().max(1e-9);
    json!({
        "seconds": round(secs, 1),
        "connections": cycles + failed,
        "completed": cycles,
        "failed": failed,
        "errors": errors,
        "connections_per_s": round((cycles + failed) as f64 / secs, 1),
        "updates": updates,
        "awareness_states": cycles,
        "abrupt_disconnects": abrupt,
        "handshake_ms": latency_ms(&mut handshake_us),
        "cycle_ms": latency_ms(&mut cycle_us),
    })
}

fn churn_counts(shared: &Churn) -> (u64, u64, u64, u64) {
    (
        shared.cycles.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        shared.updates.load(Ordering::Relaxed),
        shared.abrupt.load(Ordering::Relaxed),
    )
}

async fn churn(args: &Args) -> Res<bool> {
    let url = args.url()?;
    let k: usize = args.num("workers", 50)?;
    let duration = args.secs("duration", 600.0)?;
    let warmup = args.secs("warmup", 60.0)?;
    let idle = args.secs("idle", 65.0)?;
    let sample_every = args.secs("sample-s", 5.0)?.max(Duration::from_millis(100));
    let rooms: usize = args.num("rooms", 1)?;
    let data = match args.flags.get("data").map_or("list", |s| s.as_str()) {
        "list" => ChurnData::List,
        "map" => ChurnData::Map,
        other => return Err(format!("--data: `list` or `map`, not `{other}`").into()),
    };
    let fresh_awareness = match args
        .flags
        .get("awareness-ids")
        .map_or("connection", |s| s.as_str())
    {
        "connection" => true,
        "worker" => false,
        other => {
            return Err(format!("--awareness-ids: `connection` or `worker`, not `{other}`").into())
        }
    };
    let pid = args.pid()?;
    if k == 0 || rooms == 0 {
        return Err("--workers and --rooms must be positive".into());
    }
    if rooms > 1 && !url.contains("{i}") {
        return Err("--rooms above 1 needs `{i}` in --url (replaced by 0..rooms)".into());
    }
    check_fd_limit(k + 64)?;
    let urls: Vec<String> = (0..rooms)
        .map(|i| url.replace("{i}", &i.to_string()))
        .collect();
    let shared = Arc::new(Churn {
        urls: urls.clone(),
        root: args.root(),
        edits: args.num("edits", 3)?,
        data,
        keys: args.num("keys", 100)?,
        fresh_awareness,
        abrupt_every: args.num("abrupt-every", 10)?,
        pause: Duration::from_millis(args.num("pause-ms", 0)?),
        cycles: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        updates: AtomicU64::new(0),
        abrupt: AtomicU64::new(0),
    });

    // Server RSS every `sample_every`, tagged with the phase.
    let base = Instant::now();
    let phase = Arc::new(AtomicUsize::new(0));
    let samples: RssSamples = Arc::default();
    let sampler = {
        let (phase, samples, shared) = (phase.clone(), samples.clone(), shared.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sample_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut next_note = Duration::ZERO;
            loop {
                tick.tick().await;
                let Some(rss) = Sample::take(pid).rss_mb() else {
                    continue;
                };
                let t = base.elapsed();
                let p = phase.load(Ordering::Relaxed);
                let (done, failed) = (
                    shared.cycles.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed),
                );
                samples.lock().expect("samples").push((
                    round(t.as_secs_f64(), 1),
                    p,
                    rss,
                    done + failed,
                ));
                if t >= next_note {
                    eprintln!(
                        "churn: t={:.0} s {}: {done} connections, {failed} failed, server RSS {rss} MB",
                        t.as_secs_f64(),
                        CHURN_PHASES[p],
                    );
                    next_note = t + Duration::from_secs(30);
                }
            }
        })
    };
    let mark = |p: usize| phase.store(p, Ordering::Relaxed);
    let start = Sample::take(pid);
    let mut workers: Vec<ChurnWorker> = (0..k)
        .map(|index| ChurnWorker {
            index,
            id: random_id(),
            docs: (0..rooms).map(|_| None).collect(),
            cycle: 0,
            awareness_clock: 0,
            handshake_us: Vec::new(),
            cycle_us: Vec::new(),
            errors: HashMap::new(),
        })
        .collect();
    eprintln!(
        "churn: {k} workers, {rooms} room(s), {} s warm-up + {} s idle, {} s churn + {} s idle",
        warmup.as_secs_f64(),
        idle.as_secs_f64(),
        duration.as_secs_f64(),
        idle.as_secs_f64()
    );

    // Warm-up, then idle until the rooms are evicted: the baseline.
    let (warm, warm_end, doc_warm, (baseline_idle, baseline)) = if warmup.is_zero() {
        let doc = doc_bytes(&urls).await;
        (None, None, doc, (start, poked(&url, pid).await))
    } else {
        mark(1);
        let counts = churn_counts(&shared);
        let t = Instant::now();
        workers = churn_phase(&shared, workers, tokio::time::Instant::now() + warmup).await?;
        let warm = phase_summary(&mut workers, &shared, counts, t.elapsed());
        let warm_end = Sample::take(pid);
        let doc = doc_bytes(&urls).await;
        mark(2);
        tokio::time::sleep(idle).await;
        let idle_sample = Sample::take(pid);
        (
            Some(warm),
            Some(warm_end),
            doc,
            (idle_sample, poked(&url, pid).await),
        )
    };

    // The churn itself, then idle again.
    mark(3);
    let main_start = Sample::take(pid);
    let counts = churn_counts(&shared);
    let t = Instant::now();
    workers = churn_phase(&shared, workers, tokio::time::Instant::now() + duration).await?;
    let main = phase_summary(&mut workers, &shared, counts, t.elapsed());
    let main_end = Sample::take(pid);
    let main_end_t = base.elapsed().as_secs_f64();
    let doc_main = doc_bytes(&urls).await;
    mark(4);
    tokio::time::sleep(idle).await;
    let last_idle = Sample::take(pid);
    let last = poked(&url, pid).await;
    sampler.abort();
    let _ = sampler.await;

    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    let churn_rss: Vec<(f64, f64, u64)> = samples
        .iter()
        .filter(|s| s.1 == 3)
        .map(|s| (s.0, s.2, s.3))
        .collect();
    // Connections per second between the first sample at or after `from` and the last at
    // or before `to`: does the server slow down as the churn goes on?
    let rate_between = |from: f64, to: f64| {
        let a = churn_rss.iter().find(|s| s.0 >= from)?;
        let b = churn_rss.iter().rev().find(|s| s.0 <= to)?;
        (b.0 > a.0).then(|| round((b.2 - a.2) as f64 / (b.0 - a.0), 1))
    };
    let mean_of = |from: f64, to: f64| {
        let v: Vec<f64> = churn_rss
            .iter()
            .filter(|s| s.0 >= from && s.0 <= to)
            .map(|s| s.1)
            .collect();
        (!v.is_empty()).then(|| round(v.iter().sum::<f64>() / v.len() as f64, 1))
    };
    let churn_from = churn_rss.first().map_or(0.0, |s| s.0);
    let min = churn_rss.iter().map(|s| s.1).reduce(f64::min);
    let max = churn_rss.iter().map(|s| s.1).reduce(f64::max);
    let growth = baseline
        .rss_mb()
        .zip(last.rss_mb())
        .map(|(b, f)| (round(f - b, 1), round((f - b) / b * 100.0, 1)));
    let failed = shared.failed.load(Ordering::Relaxed);
    let ok = failed == 0 && doc_main.is_some();
    let summary = json!({
        "scenario": "churn",
        "url": url,
        "rooms": rooms,
        "workers": k,
        "edits_per_connection": shared.edits,
        "data": match data {
            ChurnData::List => "list: one Y.Array per worker, each edit replaces its value",
            ChurnData::Map => "map: one Y.Map, each edit overwrites one of --keys keys",
        },
        "keys": (data == ChurnData::Map).then_some(shared.keys),
        "awareness_ids": if fresh_awareness { "new per connection" } else { "one per worker" },
        "abrupt_every": shared.abrupt_every,
        "warmup": warm,
        "churn": main,
        "idle_wait_s": idle.as_secs_f64(),
        "baseline": if warmup.is_zero() {
            "fresh server, before any connection"
        } else {
            "idle after the warm-up (rooms evicted)"
        },
        "server_rss_start_mb": start.rss_mb(),
        "server_rss_warmup_end_mb": warm_end.and_then(|s| s.rss_mb()),
        "server_rss_baseline_idle_mb": baseline_idle.rss_mb(),
        "server_rss_baseline_mb": baseline.rss_mb(),
        "server_rss_churn_start_mb": main_start.rss_mb(),
        "server_rss_churn_min_mb": min,
        "server_rss_churn_max_mb": max,
        "connections_per_s_first_minute": rate_between(churn_from, churn_from + 60.0),
        "connections_per_s_last_minute": rate_between(main_end_t - 60.0, main_end_t),
        "server_rss_churn_first_minute_mean_mb": mean_of(churn_from, churn_from + 60.0),
        "server_rss_churn_last_minute_mean_mb": mean_of(main_end_t - 60.0, main_end_t),
        "server_rss_churn_end_mb": main_end.rss_mb(),
        "server_rss_final_idle_mb": last_idle.rss_mb(),
        "server_rss_final_mb": last.rss_mb(),
        "poked": format!("baseline and final RSS after {POKES} HTTP requests (GET /): the allocator returns freed memory lazily, on allocator activity"),
        "server_rss_growth_mb": growth.map(|g| g.0),
        "server_rss_growth_pct": growth.map(|g| g.1),
        "server_peak_rss_mb": last.hwm_mb(),
        "doc_bytes_after_warmup": doc_warm,
        "doc_bytes_after_churn": doc_main,
        "cpu_churn": cpu_used(&main_start, &main_end),
        "client_rss_mb": round(last.client_rss as f64 / 1024.0, 1),
        "samples": "[seconds, phase, server RSS MB, connections so far]",
        "rss_samples": samples.iter().map(|s| json!([s.0, CHURN_PHASES[s.1], s.2, s.3])).collect::<Vec<_>>(),
        "ok": ok,
    });
    let human = format!(
        "churn: {} connections in {:.0} s ({}/s; first minute {}/s, last minute {}/s; {} failed), {} updates; server RSS baseline {} ({}), during churn {}..{} (end {}), final after {:.0} s idle {} (growth {} MB; before the HTTP requests {} and {}); doc {} -> {} bytes",
        main["connections"],
        duration.as_secs_f64(),
        main["connections_per_s"],
        rate_between(churn_from, churn_from + 60.0).map_or("-".into(), |r| r.to_string()),
        rate_between(main_end_t - 60.0, main_end_t).map_or("-".into(), |r| r.to_string()),
        main["failed"],
        main["updates"],
        fmt_mb(baseline.rss_mb()),
        if warmup.is_zero() { "fresh server" } else { "idle after warm-up" },
        fmt_mb(min),
        fmt_mb(max),
        fmt_mb(main_end.rss_mb()),
        idle.as_secs_f64(),
        fmt_mb(last.rss_mb()),
        growth.map_or("-".into(), |g| format!("{:+}", g.0)),
        fmt_mb(baseline_idle.rss_mb()),
        fmt_mb(last_idle.rss_mb()),
        doc_warm.map_or("-".into(), |b| b.to_string()),
        doc_main.map_or("-".into(), |b| b.to_string()),
    );
    report(summary, human);
    Ok(ok)
}
