//! The sync route with stock JavaScript clients: the pinned `y-websocket` `WebsocketProvider`
//! (with `ws` as its WebSocket) talks to a server started in-process on port 0. The scripts in
//! `tests/js/sync/` check that two providers converge, that a late joiner gets the state and
//! the awareness states already there (and an answer to query-awareness), that the others see
//! a leaver's awareness removed however it leaves, that 50 providers converge, that a 4 MiB
//! update arrives intact, that rows written as `table:posts` cells in JS show up over
//! REST and REST writes show up in JS as cells, and that the Rust `SyncProvider` and a stock
//! provider in one room converge and see each other's awareness states.
//!
//! Needs `node` on PATH and the JS dependencies in `tests/js/node_modules` (`npm ci` in
//! `tests/js`). Without them the tests are skipped, unless `EPICENTER_CI` is set, where they
//! fail.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use epicenter_server::server::{create_server, Access, Auth, Server, ServerOptions};
use epicenter_server::workspace::{
    boolean, id, integer, text, WorkspaceClient, WorkspaceDefinition,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Guard for each script, enforced by the script itself (it then reports the step it was
/// waiting for). A normal run takes well under a second, 50 providers a few seconds.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Guard on the Rust side, for a script that hangs without reporting.
const GUARD: Duration = Duration::from_secs(90);

/// Guard for a REST read to show a change made over sync.
const REST_GUARD: Duration = Duration::from_secs(10);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Why the JS side cannot run, or `None` when it can.
fn missing_js() -> Option<&'static str> {
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    MISSING
        .get_or_init(|| {
            match Command::new("node").arg("--version").output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => return Some(format!("`node --version` failed ({})", out.status)),
                Err(e) => return Some(format!("`node` is not on PATH ({e})")),
            }
            let modules = js_dir().join("node_modules");
            ["yjs", "y-websocket", "y-protocols", "ws", "lib0"]
                .into_iter()
                .find(|p| !modules.join(p).join("package.json").is_file())
                .map(|p| {
                    format!(
                        "{} lacks `{p}` (run `npm ci` in tests/js)",
                        modules.display()
                    )
                })
        })
        .as_deref()
}

/// False (with a note) when the JS side cannot run; panics instead under `EPICENTER_CI`.
fn js_ready(test: &str) -> bool {
    let Some(why) = missing_js() else {
        return true;
    };
    if std::env::var_os("EPICENTER_CI").is_some() {
        panic!("{why}, and EPICENTER_CI is set: the JS sync tests must run");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// A running `node tests/js/sync/<script>`, read line by line.
struct Script {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Script {
    fn start(script: &str, args: &[&str]) -> Script {
        let mut child = Command::new("node")
            .arg(js_dir().join("sync").join(script))
            .args(args)
            .current_dir(js_dir())
            .env("SYNC_JS_TIMEOUT_MS", SCRIPT_TIMEOUT.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node {script}: {e}"));

        // Plain threads read the pipes, so a hung script cannot block the runtime.
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Script {
            name: script.to_string(),
            child,
            lines,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next JSON line the script prints; panics on a failure line, an early exit or a
    /// hang.
    async fn next(&mut self) -> Value {
        let line = match tokio::time::timeout(GUARD, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                let status = self.wait();
                panic!(
                    "{} exited ({status}) without a result; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            Err(_) => panic!(
                "{} printed nothing for {GUARD:?}; stderr:\n{}",
                self.name,
                self.stderr()
            ),
        };
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{} printed a non-JSON line ({e}): {line}", self.name));
        if value["ok"] == json!(false) {
            let error = value["error"].as_str().unwrap_or_default();
            panic!("{} failed: {error}\nstderr:\n{}", self.name, self.stderr());
        }
        value
    }

    /// Waits for the `{"event": event}` line.
    async fn event(&mut self, event: &str) -> Value {
        let value = self.next().await;
        assert_eq!(value["event"], json!(event), "{}: {value}", self.name);
        value
    }

    /// The final `{"ok": true, ...}` line; also checks the exit status.
    async fn finish(mut self) -> Value {
        let value = self.next().await;
        assert_eq!(value["ok"], json!(true), "{}: {value}", self.name);
        let status = self.wait();
        assert!(
            status.success(),
            "{} exited with {status}; stderr:\n{}",
            self.name,
            self.stderr()
        );
        value
    }

    /// Waits for the process, which exits right after its last line.
    fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("waiting for node")
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // A panicking test leaves the script running; stop it.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a script to its end and returns its result line.
async fn run(script: &str, args: &[&str]) -> Value {
    Script::start(script, args).finish().await
}

/// A server with no workspaces: every room is a dynamic doc created on demand.
async fn dynamic_server() -> (Server, SocketAddr) {
    let server = create_server(
        Vec::<WorkspaceClient>::new(),
        ServerOptions::default().port(0),
    )
    .expect("a server");
    let addr = server.start().await.expect("the server starts");
    (server, addr)
}

/// The provider's server URL for room `room`; its room name is always `sync`.
fn server_url(addr: SocketAddr, room: &str) -> String {
    format!("ws://{addr}/workspaces/{room}")
}

/// Checks the sync counters once the script is done: each provider connected once (no
/// reconnects) and nobody was closed for falling behind.
fn assert_connections(server: &Server, providers: u64) {
    let stats = server.sync().stats();
    assert_eq!(stats.connections_opened, providers, "{stats:?}");
    assert_eq!(stats.slow_consumer_closes, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_converge() {
    if !js_ready("two_providers_converge") {
        return;
    }
    let (server, addr) = dynamic_server().await;
    let out = run(
        "two_providers.mjs",
        &[&server_url(addr, "two-providers"), "sync"],
    )
    .await;
    assert_eq!(
        out["props"],
        json!(["a-live", "a-offline", "b-live", "b-offline"])
    );
    assert_eq!(out["log"], json!(["a1", "b0"]));
    let text = out["text"].as_str().expect("text");
    assert!(
        text == "[A][B]from A. " || text == "[B][A]from A. ",
        "{text}"
    );
    assert_connections(&server, 2);
    server.destroy().await.expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_state_and_awareness() {
    if !js_ready("late_joiner_gets_state_and_awareness") {
        return;
    }
    let (server, addr) = dynamic_server().await;
    let out = run(
        "late_joiner.mjs",
        &[
            &server_url(addr, "late-joiner"),
            "sync",
            "--query-awareness",
        ],
    )
    .await;
    assert_eq!(out["queryAnswered"], json!(true), "{out}");
    assert_connections(&server, 3);
    server.destroy().await.expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_removed_when_a_provider_leaves() {
    if !js_ready("awareness_removed_when_a_provider_leaves") {
        return;
    }
    let (server, addr) = dynamic_server().await;
    let out = run(
        "awareness_removal.mjs",
        &[&server_url(addr, "awareness-removal"), "sync"],
    )
    .await;
    for how in ["destroy", "close", "drop"] {
        assert!(out["removalMs"][how].is_number(), "{how}: {out}");
    }
    assert_connections(&server, 4);
    server.destroy().await.expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_providers_converge() {
    if !js_ready("fifty_providers_converge") {
        return;
    }
    let (server, addr) = dynamic_server().await;
    let out = run(
        "many_providers.mjs",
        &[&server_url(addr, "fifty"), "sync", "50"],
    )
    .await;
    assert_eq!(out["providers"], json!(50));
    eprintln!("50 providers converged in {} ms", out["convergedMs"]);
    assert_connections(&server, 50);
    server.destroy().await.expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_update_arrives_intact() {
    if !js_ready("four_mib_update_arrives_intact") {
        return;
    }
    let (server, addr) = dynamic_server().await;
    let bytes = 4 << 20;
    let out = run(
        "large_update.mjs",
        &[&server_url(addr, "large"), "sync", &bytes.to_string()],
    )
    .await;
    let sent = out["updateBytes"].as_u64().expect("updateBytes");
    assert!(sent >= bytes, "{out}");
    eprintln!(
        "{sent} byte update: live in {} ms, to a late joiner in {} ms",
        out["liveMs"], out["lateMs"]
    );
    assert_connections(&server, 3);
    server.destroy().await.expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_providers_read_and_one_that_edits_is_refused_for_good() {
    if !js_ready("read_only_providers_read_and_one_that_edits_is_refused_for_good") {
        return;
    }
    let auth = Auth::verify(|request| async move {
        match request.token.as_deref() {
            Some("rw") => Access::ReadWrite,
            Some("ro") => Access::ReadOnly,
            _ => Access::Denied,
        }
    });
    let options = ServerOptions::default().port(0).auth(auth);
    let server = create_server(Vec::<WorkspaceClient>::new(), options).expect("a server");
    let addr = server.start().await.expect("the server starts");
    let out = run("read_only.mjs", &[&server_url(addr, "read-only"), "sync"]).await;
    assert_eq!(out["code"], json!(4403), "{out}");
    assert_eq!(
        out["reason"],
        json!("Forbidden: this connection may only read")
    );
    assert_eq!(out["text"], json!("from the writer and marker"));
    // Writer, reader, editor (once: it did not reconnect) and the late writer.
    assert_connections(&server, 4);
    server.destroy().await.expect("the server stops");
}

/// A REST client and the blog workspace's base URL.
struct Rest {
    http: reqwest::Client,
    posts: String,
}

impl Rest {
    /// `GET posts/{id}`: the row, or `None` on 404.
    async fn row(&self, id: &str) -> Option<Value> {
        let res = self
            .http
            .get(format!("{}/{id}", self.posts))
            .send()
            .await
            .expect("GET a row");
        match res.status() {
            StatusCode::NOT_FOUND => None,
            StatusCode::OK => Some(res.json::<Value>().await.expect("JSON")["data"].clone()),
            other => panic!(
                "GET {id}: {other}: {}",
                res.text().await.unwrap_or_default()
            ),
        }
    }

    /// Polls `GET posts/{id}` until `done(row)`; a change made over sync reaches REST once
    /// the server applied it, which the JS side cannot signal.
    async fn row_when(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let poll = async {
            loop {
                if let Some(row) = self.row(id).await.filter(|r| done(r)) {
                    return row;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        match tokio::time::timeout(REST_GUARD, poll).await {
            Ok(row) => row,
            Err(_) => panic!(
                "row {id} over REST after {REST_GUARD:?}: {:?}",
                self.row(id).await
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_written_in_js_and_rows_written_over_rest_meet() {
    if !js_ready("cells_written_in_js_and_rows_written_over_rest_meet") {
        return;
    }
    let blog = WorkspaceDefinition::builder("blog")
        .table(
            "posts",
            [
                ("id", id()),
                ("title", text()),
                ("views", integer()),
                ("published", boolean()),
            ],
        )
        .build()
        .expect("a valid definition");
    let client = blog.in_memory().create().await.expect("a client");
    let server = create_server([client], ServerOptions::default().port(0)).expect("a server");
    let addr = server.start().await.expect("the server starts");
    let rest = Rest {
        http: reqwest::Client::builder()
            .timeout(REST_GUARD)
            .build()
            .expect("an HTTP client"),
        posts: format!("http://{addr}/workspaces/blog/tables/posts"),
    };

    let from_js = json!({"id": "p-js", "title": "From JS", "views": 7, "published": true});
    let from_rest = json!({"id": "p-rest", "title": "From REST", "views": 42, "published": false});
    let spec = json!({
        "table": "posts",
        "write": from_js,
        "expect": from_rest,
        "editTitle": "Edited in JS",
    });
    let mut js = Script::start(
        "workspace_cells.mjs",
        &[&server_url(addr, "blog"), "sync", &spec.to_string()],
    );

    // JS pushed the cells of p-js: REST serves the row, with integers as JSON integers.
    js.event("written").await;
    let row = rest.row_when("p-js", |_| true).await;
    assert_eq!(row, from_js);
    assert!(row["views"].is_i64(), "{row}");

    // A REST write reaches the connected provider as cells, and a fresh one in the handshake.
    let res = rest
        .http
        .post(&rest.posts)
        .json(&from_rest)
        .send()
        .await
        .expect("POST a row");
    assert_eq!(res.status(), StatusCode::CREATED);
    let seen = js.event("seen").await;
    for (field, val) in from_rest.as_object().unwrap() {
        assert_eq!(&seen["cells"][field]["val"], val, "{seen}");
        assert!(seen["cells"][field]["ts"].is_number(), "{seen}");
    }

    // JS overwrote the title with a higher ts: REST serves the new title, the rest unchanged.
    js.event("edited").await;
    let edited = json!({"id": "p-rest", "title": "Edited in JS", "views": 42, "published": false});
    let row = rest
        .row_when("p-rest", |r| r["title"] == json!("Edited in JS"))
        .await;
    assert_eq!(row, edited);

    let out = js.finish().await;
    assert_eq!(out["rows"]["p-rest"]["title"]["val"], json!("Edited in JS"));
    let res = rest.http.get(&rest.posts).send().await.expect("GET rows");
    assert_eq!(res.status(), StatusCode::OK);
    let mut rows = res.json::<Value>().await.expect("JSON")["data"]
        .as_array()
        .expect("a list of rows")
        .clone();
    rows.sort_by_key(|r| r["id"].as_str().map(str::to_string));
    assert_eq!(rows, vec![from_js, edited]);
    assert_connections(&server, 2);
    server.destroy().await.expect("the server stops");
}

/// Guard for each wait of the Rust provider test.
#[cfg(feature = "client")]
const PROVIDER_GUARD: Duration = Duration::from_secs(10);

/// `future`'s output, or a panic naming `what` after [`PROVIDER_GUARD`].
#[cfg(feature = "client")]
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PROVIDER_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PROVIDER_GUARD:?} waiting for {what}"))
}

#[cfg(feature = "client")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_provider_and_js_provider_converge() {
    use epicenter_server::client::{ProviderOptions, Status, SyncProvider};
    use tokio::sync::Notify;
    use yrs::types::ToJson;
    use yrs::{Doc, Map, Transact};

    if !js_ready("rust_provider_and_js_provider_converge") {
        return;
    }
    let (server, addr) = dynamic_server().await;
    let room = "rust-provider";

    // The Rust side: a fresh doc, observed so the test can wait for remote edits.
    let doc = Doc::new();
    let m = doc.get_or_insert_map("m");
    let changed = Arc::new(Notify::new());
    let notify = changed.clone();
    doc.observe_update_v1("sync-js-test", move |_, _| notify.notify_one())
        .expect("observe the doc");
    let provider = SyncProvider::new(
        doc.clone(),
        format!("{}/sync", server_url(addr, room)),
        ProviderOptions::default(),
    )
    .expect("a provider");
    provider.connect().expect("connect");
    within(
        "the Rust provider to connect",
        provider.status().wait_for(|s| *s == Status::Connected),
    )
    .await
    .expect("status channel open");

    m.insert(&mut doc.transact_mut(), "from-rust", "hello from rust");
    within(
        "the server to hold the Rust write durably",
        provider.has_local_changes().wait_for(|dirty| !dirty),
    )
    .await
    .expect("dirty channel open");

    // The JS side joins, writes, sees the Rust write and reports its client id.
    let mut js = Script::start("rust_provider.mjs", &[&server_url(addr, room), "sync"]);
    let ready = js.event("ready").await;
    let js_id = ready["clientId"].as_u64().expect("clientId");

    // JS's awareness state reaches the Rust provider; then the Rust state goes the other way.
    within(
        "the JS awareness state in peers()",
        provider
            .peers()
            .wait_for(|peers| peers.get(&js_id) == Some(&json!({"user": "js"}))),
    )
    .await
    .expect("peers channel open");
    provider
        .set_awareness(json!({"user": "rust"}))
        .expect("set the awareness state");

    let has_js = || m.contains_key(&doc.transact(), "from-js");
    within("the JS write in the Rust doc", async {
        while !has_js() {
            changed.notified().await;
        }
    })
    .await;

    let out = js.finish().await;
    assert_eq!(
        out["rust"],
        json!({"clientId": doc.client_id().get(), "state": {"user": "rust"}}),
        "{out}"
    );
    let rust_map = serde_json::to_value(m.to_json(&doc.transact())).expect("map as JSON");
    assert_eq!(
        rust_map,
        json!({
            "from-rust": "hello from rust",
            "from-js": {"lang": "js", "tags": ["a", "b"], "ok": true},
        })
    );
    assert_eq!(out["map"], rust_map, "both sides hold the same map");

    // The JS provider left: the server tells the Rust provider its state is gone.
    within(
        "the JS awareness state to leave peers()",
        provider.peers().wait_for(|peers| peers.is_empty()),
    )
    .await
    .expect("peers channel open");

    assert_connections(&server, 2);
    provider.destroy().await;
    assert_eq!(*provider.status().borrow(), Status::Offline);
    server.destroy().await.expect("the server stops");
}
