//! Nodes as real processes (the `blog` example running as a node) over a PostgreSQL and
//! a Redis server of the test's own: a node killed with SIGKILL while it answers writes
//! loses none it acknowledged; its clients go on with another node, which has them all.
//! Skipped when PostgreSQL or Redis is not installed.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::services::{free_port, Postgres, Redis};
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{AwarenessUpdate, Message};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

const GUARD: Duration = Duration::from_secs(30);

/// The `blog` example, built with this test (`cargo test` builds the examples).
fn blog_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join("blog");
    path.is_file().then_some(path)
}

struct Node {
    child: Child,
    port: u16,
}

impl Node {
    fn start(blog: &PathBuf, pg: &Postgres, redis: &Redis) -> Node {
        let port = free_port();
        let child = Command::new(blog)
            .env("EPICENTER_POSTGRES_URL", pg.url())
            .env("EPICENTER_REDIS_URL", redis.url())
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .env("EPICENTER_NODE_TIMEOUT_MS", "1000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the blog example starts");
        let deadline = std::time::Instant::now() + GUARD;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "node did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Node { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn ids_on(node: &Node) -> Vec<String> {
    let body: Value = reqwest::get(node.url("/workspaces/blog/tables/posts"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_acknowledged_write() {
    let Some(blog) = blog_binary() else {
        eprintln!("skipped: build the examples first (cargo test builds them)");
        return;
    };
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let mut a = Node::start(&blog, &pg, &redis);
    let b = Node::start(&blog, &pg, &redis);

    // Writes to A until it is killed; every one it acknowledged is recorded.
    let http = reqwest::Client::new();
    let writer = {
        let (http, url) = (http.clone(), a.url("/workspaces/blog/tables/posts"));
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                let id = format!("w{i:05}");
                let sent = http
                    .post(&url)
                    .json(&json!({"id": id, "title": "t"}))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => acked.push(id),
                    _ => break,
                }
            }
            acked
        })
    };
    // Let it acknowledge a good number, then kill it mid-stream.
    tokio::time::timeout(GUARD, async {
        while ids_on(&b).await.len() < 50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("writes reach node B");
    a.kill();
    let acked = writer.await.unwrap();
    assert!(acked.len() >= 50, "{} acknowledged", acked.len());

    // The client goes on with node B, which has every acknowledged write.
    tokio::time::timeout(GUARD, async {
        loop {
            let on_b = ids_on(&b).await;
            if acked.iter().all(|id| on_b.contains(id)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("node B has every write node A acknowledged");
    let status = http
        .post(b.url("/workspaces/blog/tables/posts"))
        .json(&json!({"id": "after", "title": "t"}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success());
    // A node started afterwards loads them all from the database.
    let c = Node::start(&blog, &pg, &redis);
    let on_c = ids_on(&c).await;
    assert!(acked.iter().all(|id| on_c.contains(id)));
    assert!(on_c.contains(&"after".to_string()));
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join(node: &Node) -> Socket {
    let url = format!("ws://127.0.0.1:{}/workspaces/blog/sync", node.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(_))) => return ws,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

fn awareness(client: u64, clock: u32, state: &str) -> Vec<u8> {
    let mut update = AwarenessUpdate {
        clients: Default::default(),
    };
    update.clients.insert(
        yrs::ClientID::new(client),
        yrs::sync::awareness::AwarenessUpdateEntry {
            clock,
            json: state.into(),
        },
    );
    Message::Awareness(update).encode_v1()
}

/// The state of `client` in the next awareness message that has it.
async fn awareness_of(ws: &mut Socket, client: u64) -> String {
    loop {
        let frame = match ws.next().await {
            Some(Ok(Ws::Binary(b))) => b,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        };
        if let Ok(Message::Awareness(update)) = Message::decode_v1(&frame) {
            if let Some(entry) = update.clients.get(&yrs::ClientID::new(client)) {
                return entry.json.to_string();
            }
        }
    }
}

/// The presence of a killed node's clients disappears from the other nodes once its
/// heartbeat lapses (here 1 s; 30 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_presence_disappears_elsewhere() {
    let Some(blog) = blog_binary() else {
        eprintln!("skipped: build the examples first (cargo test builds them)");
        return;
    };
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let mut a = Node::start(&blog, &pg, &redis);
    let b = Node::start(&blog, &pg, &redis);
    let mut on_b = join(&b).await;
    let mut on_a = join(&a).await;
    tokio::time::timeout(GUARD, async {
        let mut clock = 1;
        loop {
            on_a.send(Ws::Binary(awareness(7, clock, r#"{"user":"ann"}"#).into()))
                .await
                .unwrap();
            clock += 1;
            let seen = tokio::time::timeout(Duration::from_millis(300), awareness_of(&mut on_b, 7));
            if seen.await.is_ok() {
                return;
            }
        }
    })
    .await
    .expect("presence reached node B");
    a.kill();
    let state = tokio::time::timeout(GUARD, awareness_of(&mut on_b, 7))
        .await
        .expect("the dead node's presence is removed");
    assert_eq!(state, "null");
}
