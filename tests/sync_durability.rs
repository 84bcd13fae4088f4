//! Crash test: an acknowledged write is never lost. Several raw y-websocket clients write to
//! the `blog` room continuously, each update followed by SYNC_STATUS (102), while a REST
//! client upserts rows into the same workspace. After a varied stretch of load the server
//! process is SIGKILLed and restarted, `EPICENTER_CRASH_CYCLES` times (default 20;
//! `benches/crash/run.sh` runs 100). After every restart, before any new load, each update
//! acknowledged so far must be served: a sync update once a 102 sent after it was echoed, a
//! REST row once its 201 arrived. `EPICENTER_CRASH_SEED` replays the kill timings of a run.

use std::io::{BufRead, BufReader};
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Any, Doc, Map, Number, Out, ReadTxn, StateVector, Transact, Update};

/// A guard against a hung test; nothing waits for it to elapse.
const GUARD: Duration = Duration::from_secs(30);
/// Raw sync clients writing to the room at once.
const SYNC_WRITERS: usize = 4;
/// SYNC_STATUS messages a sync writer may have unanswered (a client's bounded queue), so
/// that the writers stay ahead of the server without flooding it.
const WINDOW: u64 = 16;
/// How long the load runs, once every writer was acknowledged, before the SIGKILL.
const LOAD_MS: RangeInclusive<u64> = 50..=400;

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap()
}

/// Not a test on its own: the server child process (a no-op without the env var).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_role() {
    let Ok(dir) = std::env::var("EPICENTER_SYNC_CHILD_DIR") else {
        return;
    };
    let client = blog()
        .with_storage(SqliteStorage::new(&dir))
        .create()
        .await
        .unwrap();
    let server = create_server([client], ServerOptions::default().port(0)).unwrap();
    let addr = server.start().await.unwrap();
    println!("listening {addr}");
    std::future::pending::<()>().await;
}

/// A server child process, SIGKILLed when dropped (also when the test fails).
struct ServerProcess {
    child: Child,
    addr: String,
}

impl ServerProcess {
    /// Starts a server on `dir` and waits until it listens.
    fn spawn(dir: &Path) -> ServerProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
            .env("EPICENTER_SYNC_CHILD_DIR", dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                let status = child.wait().unwrap();
                panic!("the server exited ({status}) before printing its address");
            };
            // The test harness may print on the same line before it.
            if let Some((_, addr)) = line.unwrap().split_once("listening ") {
                break addr.trim().to_string();
            }
        };
        ServerProcess { child, addr }
    }

    /// SIGKILL (`Child::kill` on Unix): no chance to flush or clean up.
    fn kill(&mut self) {
        if self.child.try_wait().unwrap().is_some() {
            panic!("the server died before it was killed");
        }
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kill timings: splitmix64, seeded per run (printed, and replayable).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn within(&mut self, range: &RangeInclusive<u64>) -> u64 {
        range.start() + self.next() % (range.end() - range.start() + 1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

fn status(version: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    yrs::encoding::write::Write::write_var(&mut payload, version);
    Message::Custom(102, payload).encode_v1()
}

fn version_of(frame: &[u8]) -> Option<u64> {
    match Message::decode(&mut DecoderV1::from(frame)).ok()? {
        Message::Custom(102, payload) => {
            yrs::encoding::read::Read::read_var(&mut yrs::encoding::read::Cursor::new(&payload))
                .ok()
        }
        _ => None,
    }
}

/// The key sync writer `client` writes its `i`th update to, in the map `m` (the value is `i`).
fn key(client: usize, i: u64) -> String {
    format!("{client}:{i}")
}

/// What one sync writer's session got: the highest echoed SYNC_STATUS, and the first `i` it
/// did not send (the next session starts there, so every key is written once).
struct Session {
    acked: Option<u64>,
    next: u64,
}

/// One session of sync writer `client`: from `start`, sets `m[key(client, i)] = i`, each
/// update followed by SYNC_STATUS `i`, until the server is killed (the connection must not
/// end before `killed` is set). Sends on `served` once the first status is echoed.
async fn sync_writer(
    addr: String,
    client: usize,
    start: u64,
    served: mpsc::UnboundedSender<()>,
    killed: Arc<AtomicBool>,
) -> Session {
    let url = format!("ws://{addr}/workspaces/blog/sync");
    let (ws, _) = timeout(GUARD, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    let (mut tx, mut rx) = ws.split();
    let (acked_tx, mut acked_rx) = watch::channel(None::<u64>);
    let writer = tokio::spawn(async move {
        let doc = Doc::new();
        let map = doc.get_or_insert_map("m");
        let mut i = start;
        loop {
            // At most WINDOW statuses unanswered; stop once the reader is gone.
            loop {
                let unanswered_from = acked_rx.borrow_and_update().map_or(start, |a| a + 1);
                if i < unanswered_from + WINDOW {
                    break;
                }
                if acked_rx.changed().await.is_err() {
                    return i;
                }
            }
            let before = doc.transact().state_vector();
            map.insert(&mut doc.transact_mut(), key(client, i), i as f64);
            let update = doc.transact().encode_state_as_update_v1(&before);
            let frames = [
                Message::Sync(SyncMessage::Update(update)).encode_v1(),
                status(i),
            ];
            i += 1;
            for frame in frames {
                if tx.send(Ws::Binary(frame.into())).await.is_err() {
                    return i;
                }
            }
        }
    });
    let mut acked = None;
    let mut served = Some(served);
    loop {
        match timeout(GUARD, rx.next()).await.expect("frames in time") {
            Some(Ok(Ws::Binary(frame))) => {
                // The other writers' updates arrive too; only the echoes matter here.
                if let Some(v) = version_of(&frame) {
                    assert!(
                        acked < Some(v) && v >= start,
                        "writer {client}: echo {v} out of order (after {acked:?}, from {start})"
                    );
                    acked = Some(v);
                    acked_tx.send_replace(acked);
                    if let Some(served) = served.take() {
                        let _ = served.send(());
                    }
                }
            }
            Some(Ok(Ws::Close(frame))) => {
                panic!("writer {client}: the server closed the stream: {frame:?}")
            }
            Some(Ok(_)) => {}
            end @ (Some(Err(_)) | None) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "writer {client}: the connection ended before the SIGKILL: {end:?}"
                );
                break;
            }
        }
    }
    drop(acked_tx);
    let next = timeout(GUARD, writer)
        .await
        .expect("the writer stops")
        .unwrap();
    assert!(
        acked < Some(next),
        "writer {client}: {acked:?} echoed but never sent"
    );
    Session { acked, next }
}

/// One session of the REST writer: upserts rows `r{n}` from `start`, one at a time, until
/// the server is killed. Returns the `n` answered 201 (durable) and the first `n` not sent.
async fn rest_writer(
    addr: String,
    start: u64,
    served: mpsc::UnboundedSender<()>,
    killed: Arc<AtomicBool>,
) -> (Vec<u64>, u64) {
    let http = reqwest::Client::builder().timeout(GUARD).build().unwrap();
    let url = format!("http://{addr}/workspaces/blog/tables/posts");
    let mut acked = Vec::new();
    let mut served = Some(served);
    for n in start.. {
        let row = json!({"id": format!("r{n}"), "title": format!("row {n}")});
        match http.post(&url).json(&row).send().await {
            Ok(reply) if reply.status() == StatusCode::CREATED => {
                acked.push(n);
                if let Some(served) = served.take() {
                    let _ = served.send(());
                }
            }
            Ok(reply) => panic!(
                "REST upsert of r{n} answered {}: {}",
                reply.status(),
                reply.text().await.unwrap_or_default()
            ),
            Err(error) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "REST upsert of r{n} failed before the SIGKILL: {error}"
                );
                return (acked, n + 1);
            }
        }
    }
    unreachable!()
}

/// Every acknowledged update so far.
struct Ledger {
    /// Per sync writer: the `i` ranges echoed, one per session.
    sync: Vec<Vec<RangeInclusive<u64>>>,
    /// The REST rows `r{n}` answered 201.
    rest: Vec<u64>,
}

impl Ledger {
    fn sync_count(&self) -> u64 {
        self.sync
            .iter()
            .flatten()
            .map(|range| range.end() - range.start() + 1)
            .sum()
    }

    fn count(&self) -> u64 {
        self.sync_count() + self.rest.len() as u64
    }
}

/// The server's doc, through a fresh sync connection's step 2.
async fn server_doc(addr: &str) -> Doc {
    let url = format!("ws://{addr}/workspaces/blog/sync");
    let (mut ws, _) = timeout(GUARD, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    ws.send(Ws::Binary(
        Message::Sync(SyncMessage::SyncStep1(StateVector::default()))
            .encode_v1()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        let frame = match timeout(GUARD, ws.next()).await.expect("step2 in time") {
            Some(Ok(Ws::Binary(frame))) => frame,
            Some(Ok(_)) => continue,
            other => panic!("no step2: {other:?}"),
        };
        if let Ok(Message::Sync(SyncMessage::SyncStep2(update))) =
            Message::decode(&mut DecoderV1::from(&frame[..]))
        {
            let doc = Doc::new();
            doc.transact_mut()
                .apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
            return doc;
        }
    }
}

/// Fails (saying `when`) unless the server at `addr` serves everything in `ledger`.
async fn check(addr: &str, ledger: &Ledger, when: &str) {
    const SHOWN: usize = 10;
    let doc = server_doc(addr).await;
    let map = doc.get_or_insert_map("m");
    let txn = doc.transact();
    assert!(
        ledger.sync_count() == 0 || map.len(&txn) > 0,
        "{when}: the restarted server served an empty doc ({} sync updates acknowledged)",
        ledger.sync_count()
    );
    let mut missing = Vec::new();
    for (client, sessions) in ledger.sync.iter().enumerate() {
        for i in sessions.iter().flat_map(|range| range.clone()) {
            match map.get(&txn, &key(client, i)) {
                Some(Out::Any(Any::Number(v))) if v == Number::from(i as f64) => {}
                other => missing.push(format!("{} = {other:?}", key(client, i))),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{when}: {} of {} acknowledged sync updates are missing or wrong; the first {}: \
         {:?}; acknowledged ranges per writer: {:?}",
        missing.len(),
        ledger.sync_count(),
        missing.len().min(SHOWN),
        &missing[..missing.len().min(SHOWN)],
        ledger.sync
    );
    drop(txn);

    let http = reqwest::Client::builder().timeout(GUARD).build().unwrap();
    let rows: Value = http
        .get(format!("http://{addr}/workspaces/blog/tables/posts"))
        .send()
        .await
        .expect("the rows")
        .error_for_status()
        .expect("the rows")
        .json()
        .await
        .expect("JSON rows");
    let titles: std::collections::HashMap<&str, &str> = rows["data"]
        .as_array()
        .expect("a row list")
        .iter()
        .map(|row| {
            (
                row["id"].as_str().unwrap_or_default(),
                row["title"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let missing: Vec<u64> = ledger
        .rest
        .iter()
        .copied()
        .filter(|n| titles.get(format!("r{n}").as_str()) != Some(&format!("row {n}").as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{when}: {} of {} REST rows answered 201 are missing or wrong; the first {}: {:?}",
        missing.len(),
        ledger.rest.len(),
        missing.len().min(SHOWN),
        &missing[..missing.len().min(SHOWN)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_repeated_sigkill() {
    let started = Instant::now();
    let cycles = env_u64("EPICENTER_CRASH_CYCLES").unwrap_or(20);
    let seed = env_u64("EPICENTER_CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("crash test: {cycles} cycles, seed {seed} (EPICENTER_CRASH_SEED)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger {
        sync: vec![Vec::new(); SYNC_WRITERS],
        rest: Vec::new(),
    };
    let mut next = [0; SYNC_WRITERS];
    let mut next_row = 0;
    let mut checked = 0;
    for cycle in 0..cycles {
        let mut server = ServerProcess::spawn(dir.path());
        let addr = server.addr.clone();
        let when = format!("seed {seed}, start {cycle} (after {cycle} SIGKILLs)");
        check(&addr, &ledger, &when).await;
        checked += ledger.count();

        let (served_tx, mut served_rx) = mpsc::unbounded_channel();
        let killed = Arc::new(AtomicBool::new(false));
        let sync: Vec<_> = (0..SYNC_WRITERS)
            .map(|client| {
                let (served, killed) = (served_tx.clone(), killed.clone());
                tokio::spawn(sync_writer(
                    addr.clone(),
                    client,
                    next[client],
                    served,
                    killed,
                ))
            })
            .collect();
        let rest = tokio::spawn(rest_writer(
            addr.clone(),
            next_row,
            served_tx,
            killed.clone(),
        ));
        // The restarted server serves: every writer has an acknowledged write.
        for _ in 0..=SYNC_WRITERS {
            timeout(GUARD, served_rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{when}: not every writer was acknowledged in time"))
                .unwrap_or_else(|| panic!("{when}: a writer stopped before its first ack"));
        }
        let load = rng.within(&LOAD_MS);
        tokio::time::sleep(Duration::from_millis(load)).await;
        killed.store(true, Ordering::SeqCst);
        server.kill();

        let before = ledger.count();
        for (client, session) in sync.into_iter().enumerate() {
            let session = session.await.unwrap();
            let acked = session.acked.expect("served, so acknowledged");
            ledger.sync[client].push(next[client]..=acked);
            next[client] = session.next;
        }
        let (rows, next_n) = rest.await.unwrap();
        ledger.rest.extend(rows);
        next_row = next_n;
        println!(
            "cycle {cycle}: SIGKILL after {load} ms of load, {} updates acknowledged",
            ledger.count() - before
        );
    }
    let server = ServerProcess::spawn(dir.path());
    check(
        &server.addr,
        &ledger,
        &format!("seed {seed}, the final start after {cycles} SIGKILLs"),
    )
    .await;
    checked += ledger.count();
    drop(server);
    println!(
        "crash test passed: {cycles} SIGKILL cycles, {} acknowledged updates ({} sync from \
         {SYNC_WRITERS} clients, {} REST), {checked} presence checks over {} restarts, \
         elapsed {:.1?}, seed {seed}",
        ledger.count(),
        ledger.sync_count(),
        ledger.rest.len(),
        cycles + 1,
        started.elapsed()
    );
}
