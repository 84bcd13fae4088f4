//! Nodes as real processes (the `blog` example running as a node) over a PostgreSQL and
//! a Redis server of the test's own: a node killed with SIGKILL while it answers writes
//! loses none it acknowledged; its clients go on with another node, which has them all.
//! Skipped when PostgreSQL or Redis is not installed.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::services::{free_port, Postgres, Redis};

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
