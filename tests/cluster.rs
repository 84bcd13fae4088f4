//! Several nodes over one PostgreSQL database and one Redis server, each node a server
//! of its own in this process: a REST write answered by one node reaches the others'
//! workspaces; with Redis down, nodes catch up from the database; after Redis restarts,
//! delivery over it resumes by itself. Skipped when PostgreSQL or Redis is not installed.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::storage::{PostgresOptions, PostgresStorage};
use epicenter_server::sync::RedisBus;
use epicenter_server::workspace::{id, text, RowResult, WorkspaceDefinition};
use serde_json::json;
use support::services::{Postgres, Redis};

const GUARD: Duration = Duration::from_secs(20);

async fn node(
    pg: &Postgres,
    redis: &Redis,
    name: &str,
    catch_up: Duration,
) -> (Server, SocketAddr) {
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
    let bus = RedisBus::new(redis.url(), name).catch_up_interval(catch_up);
    let server = create_server([client], ServerOptions::default().port(0).redis_bus(bus)).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

async fn post(addr: SocketAddr, id: &str, title: &str) {
    let status = reqwest::Client::new()
        .post(format!("http://{addr}/workspaces/blog/tables/posts"))
        .json(&json!({"id": id, "title": title}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
}

/// Waits until node `server` has row `id` with `title`.
async fn until_seen(server: &Server, id: &str, title: &str) {
    let posts = server.client("blog").unwrap().table("posts").unwrap();
    tokio::time::timeout(GUARD, async {
        loop {
            if matches!(posts.get(id), RowResult::Valid(row) if row["title"] == title) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("row {id} never reached the other node"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_every_node_through_redis_or_the_database() {
    let (Some(pg), Some(mut redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let quick = Duration::from_millis(200);
    let (a, a_addr) = node(&pg, &redis, "a", quick).await;
    let (b, b_addr) = node(&pg, &redis, "b", quick).await;

    post(a_addr, "1", "from a").await;
    until_seen(&b, "1", "from a").await;
    post(b_addr, "2", "from b").await;
    until_seen(&a, "2", "from b").await;

    // Redis gone: acknowledged writes still reach the other node, from the database.
    redis.kill();
    post(a_addr, "3", "while redis is down").await;
    until_seen(&b, "3", "while redis is down").await;

    // Back, empty: delivery resumes by itself.
    redis.restart();
    post(b_addr, "4", "after redis is back").await;
    until_seen(&a, "4", "after redis is back").await;

    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}

/// With the periodic check out of the way, delivery is over Redis alone; an update missed
/// while Redis was down is found through the gap the next one shows, and read from the
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_delivers_and_a_gap_is_filled_from_the_database() {
    let (Some(pg), Some(mut redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let rare = Duration::from_secs(3600);
    let (a, a_addr) = node(&pg, &redis, "a", rare).await;
    let (b, _) = node(&pg, &redis, "b", rare).await;

    post(a_addr, "1", "over redis").await;
    until_seen(&b, "1", "over redis").await;

    redis.kill();
    post(a_addr, "2", "missed").await;
    redis.restart();
    post(a_addr, "3", "shows the gap").await;
    until_seen(&b, "3", "shows the gap").await;
    until_seen(&b, "2", "missed").await;

    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}
