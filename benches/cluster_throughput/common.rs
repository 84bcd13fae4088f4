//! What the sections share: nodes, message helpers, percentiles, CPU and memory readings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::storage::{
    MemoryStorage, PostgresOptions, PostgresStorage, SqliteStorage, StorageProvider,
};
use epicenter_server::sync::RedisBus;
use epicenter_server::WorkspaceClient;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Map, Transact};

use crate::services::{Postgres, Redis};

/// A server with no workspaces: every room is a dynamic doc stored by `storage`. Rooms
/// may be opened freely from 127.0.0.1 (the writers open 64 within a minute).
async fn serve(storage: Arc<dyn StorageProvider>, bus: Option<RedisBus>) -> (Server, SocketAddr) {
    let mut options = ServerOptions::default().port(0);
    if let Some(bus) = bus {
        options = options.redis_bus(bus);
    }
    options.storage = storage;
    options.max_new_rooms_per_minute = 1_000_000;
    let server = create_server(Vec::<WorkspaceClient>::new(), options).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

/// A node storing its dynamic docs in `pg`, on the bus of `redis` (default options, or
/// this catch-up interval).
pub async fn pg_node(
    pg: &Postgres,
    redis: &Redis,
    name: &str,
    catch_up: Option<Duration>,
) -> (Server, SocketAddr) {
    let pool = PostgresOptions::default().pool_size;
    pg_node_with(pg.url(), redis.url(), name.into(), catch_up, pool).await
}

/// [`pg_node`] from the services' URLs, with `pool` connections to Postgres.
pub async fn pg_node_with(
    pg: String,
    redis: String,
    name: String,
    catch_up: Option<Duration>,
    pool: usize,
) -> (Server, SocketAddr) {
    let options = PostgresOptions {
        node: name.clone(),
        pool_size: pool,
        ..PostgresOptions::default()
    };
    let storage = PostgresStorage::connect_with(&pg, options).await.unwrap();
    let mut bus = RedisBus::new(redis, name);
    if let Some(interval) = catch_up {
        bus = bus.catch_up_interval(interval);
    }
    serve(Arc::new(storage), Some(bus)).await
}

/// A node on a runtime of its own (one worker thread), as if it were a process of its
/// own: its tasks do not queue behind the clients' or the other nodes' tasks.
pub struct OwnRuntime {
    runtime: tokio::runtime::Runtime,
    pub server: Arc<Server>,
    pub addr: SocketAddr,
}

impl OwnRuntime {
    pub async fn pg_node(pg: &Postgres, redis: &Redis, name: &str) -> OwnRuntime {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap();
        let pool = PostgresOptions::default().pool_size;
        let started = pg_node_with(pg.url(), redis.url(), name.into(), None, pool);
        let (server, addr) = runtime.spawn(started).await.unwrap();
        OwnRuntime {
            runtime,
            server: Arc::new(server),
            addr,
        }
    }

    pub async fn destroy(self) {
        let server = self.server.clone();
        let destroyed = self.runtime.spawn(async move { server.destroy().await });
        destroyed.await.unwrap().unwrap();
        self.runtime.shutdown_background();
    }
}

/// A single node storing its dynamic docs in SQLite (fsync on) under `dir`.
pub async fn sqlite_node(dir: &std::path::Path) -> (Server, SocketAddr) {
    serve(Arc::new(SqliteStorage::new(dir)), None).await
}

/// A single node with the default storage (memory).
pub async fn memory_node() -> (Server, SocketAddr) {
    serve(Arc::new(MemoryStorage::new()), None).await
}

/// Both services, or `None` (said why) when one is not installed.
pub fn services() -> Option<(Postgres, Redis)> {
    Some((Postgres::start()?, Redis::start()?))
}

/// A sync connection to `room` on `addr` that has done its part of the handshake, as a
/// y-websocket client does (the server closes a connection that sends nothing within
/// `handshake_timeout`): the server's step 1 read, an empty step 1 sent.
pub async fn client(addr: SocketAddr, room: &str) -> crate::ws::Socket {
    use futures_util::SinkExt;
    let mut socket = crate::ws::join(addr, room).await;
    let step1 = Message::Sync(SyncMessage::SyncStep1(Default::default())).encode_v1();
    socket
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            step1.into(),
        ))
        .await
        .unwrap();
    socket
}

/// SYNC_STATUS carrying `seq`; the server echoes it unchanged.
pub fn status(seq: u64) -> Vec<u8> {
    Message::Custom(
        epicenter_server::sync::MSG_SYNC_STATUS,
        seq.to_le_bytes().to_vec(),
    )
    .encode_v1()
}

/// The `seq` of a SYNC_STATUS echo made by [`status`].
pub fn echoed(frame: &[u8]) -> Option<u64> {
    (frame.len() == 10 && frame[0] == epicenter_server::sync::MSG_SYNC_STATUS && frame[1] == 8)
        .then(|| u64::from_le_bytes(frame[2..].try_into().unwrap()))
}

/// A client doc that makes small updates, each setting one key `K<8 digits>` that a
/// receiver finds in the bytes without decoding them (see [`markers`]).
pub struct Writer {
    doc: yrs::Doc,
    map: yrs::MapRef,
}

impl Writer {
    pub fn new() -> Writer {
        let doc = yrs::Doc::new();
        let map = doc.get_or_insert_map("m");
        Writer { doc, map }
    }

    /// The sync message setting key `i`.
    pub fn update(&self, i: u32) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        self.map.insert(&mut txn, key(i), i as f64);
        Message::Sync(SyncMessage::Update(txn.encode_update_v1())).encode_v1()
    }
}

pub fn key(i: u32) -> String {
    format!("K{i:08}")
}

/// The keys `K<8 digits>` in a frame (an update holds its keys as plain strings).
pub fn markers(frame: &[u8]) -> impl Iterator<Item = u32> + '_ {
    frame.windows(9).filter_map(|w| {
        if w[0] != b'K' || !w[1..].iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(&w[1..]).ok()?.parse().ok()
    })
}

/// Latency figures of a sample, in ms.
pub struct Lat {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Lat {
    pub fn of(mut ms: Vec<f64>) -> Lat {
        ms.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| {
            if ms.is_empty() {
                f64::NAN
            } else {
                ms[((ms.len() as f64 - 1.0) * p).round() as usize]
            }
        };
        Lat {
            n: ms.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: ms.last().copied().unwrap_or(f64::NAN),
            mean: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
        }
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"n\":{},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2},\"mean_ms\":{:.2}}}",
            self.n, self.p50, self.p99, self.max, self.mean
        )
    }
}

/// CPU seconds used so far by this process and by each kind of process it started
/// (`postgres`, `redis-server`), by command name.
pub fn cpu() -> HashMap<String, f64> {
    let tick = 100.0; // USER_HZ on Linux
    let mut stats = HashMap::new();
    let mut parents = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces, so split after the ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ppid: u32 = fields[1].parse().unwrap_or(0);
        let secs = (fields[11].parse::<f64>().unwrap_or(0.0)
            + fields[12].parse::<f64>().unwrap_or(0.0))
            / tick;
        parents.insert(pid, ppid);
        stats.insert(pid, (comm, secs));
    }
    let me = std::process::id();
    let mine = |mut pid: u32| loop {
        if pid == me {
            return true;
        }
        match parents.get(&pid) {
            Some(&p) if p > 1 => pid = p,
            _ => return false,
        }
    };
    let mut out: HashMap<String, f64> = HashMap::new();
    out.insert("machine".into(), machine_cpu());
    for (pid, (comm, secs)) in stats {
        if mine(pid) {
            let name = if pid == me { "bench".to_string() } else { comm };
            *out.entry(name).or_default() += secs;
        }
    }
    out
}

/// CPU seconds each process kind used between two [`cpu`] readings, and what the whole
/// machine used (`machine`: other work on it included).
pub fn cpu_json(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> String {
    let mut names: Vec<&String> = after.keys().collect();
    names.sort();
    let parts: Vec<String> = names
        .into_iter()
        .filter(|n| ["bench", "postgres", "redis-server", "machine"].contains(&n.as_str()))
        .map(|n| {
            let used = after[n] - before.get(n).copied().unwrap_or(0.0);
            format!("\"{n}\":{used:.2}")
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// CPU seconds the whole machine has used since boot (all but idle and iowait).
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy / 100.0
}

/// Microseconds in which some runnable task waited for a CPU, since boot (Linux PSI).
pub fn cpu_pressure_us() -> u64 {
    std::fs::read_to_string("/proc/pressure/cpu")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("some"))
        .and_then(|l| l.rsplit("total=").next()?.trim().parse().ok())
        .unwrap_or(0)
}

/// This process's resident memory, in MB.
pub fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Prints the run's conditions: cores, load, the services' versions.
pub fn conditions() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let version = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let postgres = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .max()
        .unwrap_or_default();
    println!(
        "{{\"conditions\":{{\"cores\":{},\"loadavg\":\"{}\",\"postgres\":\"{postgres}\",\"redis\":\"{}\"}}}}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.trim(),
        version("redis-server", "--version")
            .split_whitespace()
            .nth(2)
            .unwrap_or("")
    );
}
