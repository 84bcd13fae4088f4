//! `-- rest`: a REST write answered by node A, visible on node B. Two nodes serve workspace
//! `blog` (stored in Postgres, mirror on); a client POSTs rows to A at `--rate` (default
//! 50/s) for `--seconds` (default 20). For each, the time from A's 2xx answer until node B's
//! workspace holds the row (B's table observer: what B's REST reads and sync clients see from
//! then on). Also the POST's own latency (answered once durable).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::storage::{PostgresOptions, PostgresStorage};
use epicenter_server::sync::RedisBus;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};

use crate::common::{services, Lat};
use crate::services::{Postgres, Redis};
use crate::Args;

async fn node(pg: &Postgres, redis: &Redis, name: &str) -> (Server, std::net::SocketAddr) {
    let options = PostgresOptions {
        node: name.into(),
        ..PostgresOptions::default()
    };
    let storage = PostgresStorage::connect_with(&pg.url(), options)
        .await
        .unwrap();
    let client = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap()
        .with_storage(storage)
        .create()
        .await
        .unwrap();
    let bus = RedisBus::new(redis.url(), name);
    let server = create_server([client], ServerOptions::default().port(0).redis_bus(bus)).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

pub async fn run(args: &Args) {
    let Some((pg, redis)) = services() else {
        return;
    };
    let rate: f64 = args.num("rate", 50.0);
    let seconds: f64 = args.num("seconds", 20.0);
    let (a, a_addr) = node(&pg, &redis, "a").await;
    let (b, _) = node(&pg, &redis, "b").await;
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let _subscription = {
        let seen = seen.clone();
        b.client("blog")
            .unwrap()
            .table("posts")
            .unwrap()
            .observe(move |ids| {
                let now = Instant::now();
                let mut seen = seen.lock().unwrap();
                for id in ids {
                    seen.entry(id.clone()).or_insert(now);
                }
            })
    };
    let http = reqwest::Client::new();
    let url = format!("http://{a_addr}/workspaces/blog/tables/posts");
    let total = (rate * seconds) as usize;
    let mut answered: HashMap<String, Instant> = HashMap::new();
    let mut post_ms = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for i in 0..total {
        tick.tick().await;
        let id = format!("r{i}");
        let sent = Instant::now();
        let status = http
            .post(&url)
            .json(&serde_json::json!({"id": id, "title": "t"}))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "{status}");
        let now = Instant::now();
        post_ms.push((now - sent).as_secs_f64() * 1e3);
        answered.insert(id, now);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let visible: Vec<f64> = answered
        .iter()
        .filter_map(|(id, at)| {
            seen.get(id)
                .map(|s| s.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    println!(
        "{{\"section\":\"rest\",\"rate\":{rate},\"writes\":{total},\"visible_on_b\":{},\"post\":{},\"visible_after_answer\":{}}}",
        visible.len(),
        Lat::of(post_ms).json(),
        Lat::of(visible).json()
    );
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}
