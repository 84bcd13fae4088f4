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
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::services::{Postgres, Redis};
use support::ws::{announce_until_heard, awareness_of, join, Socket};
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::Message;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

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
    let client = blog().with_storage(storage).create().await.unwrap();
    let bus = RedisBus::new(redis.url(), name).catch_up_interval(catch_up);
    let server = create_server([client], ServerOptions::default().port(0).redis_bus(bus)).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap()
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

/// A connection's presence on one node is seen by the other node's connections, and so is
/// its removal when it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_crosses_nodes_and_so_does_its_removal() {
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let quick = Duration::from_millis(200);
    let (a, a_addr) = node(&pg, &redis, "a", quick).await;
    let (b, b_addr) = node(&pg, &redis, "b", quick).await;
    let mut on_b = join(b_addr, "blog").await;
    let mut on_a = join(a_addr, "blog").await;
    let state = announce_until_heard(&mut on_a, &mut on_b, 42, r#"{"user":"ann"}"#).await;
    assert_eq!(state, r#"{"user":"ann"}"#);
    on_a.close(None).await.unwrap();
    let removal = tokio::time::timeout(GUARD, awareness_of(&mut on_b, 42)).await;
    assert_eq!(
        removal.expect("the removal in time"),
        "null",
        "the removal reached it too"
    );
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}

/// A node with no workspaces, so every room is a dynamic doc, stored in Postgres.
async fn dynamic_node(pg: &Postgres, redis: &Redis, name: &str) -> (Server, SocketAddr) {
    let options = PostgresOptions {
        node: name.into(),
        ..PostgresOptions::default()
    };
    let storage = PostgresStorage::connect_with(&pg.url(), options)
        .await
        .unwrap();
    let bus = RedisBus::new(redis.url(), name).catch_up_interval(Duration::from_millis(200));
    let mut options = ServerOptions::default().port(0).redis_bus(bus);
    options.storage = std::sync::Arc::new(storage);
    let server = create_server(Vec::<epicenter_server::WorkspaceClient>::new(), options).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

/// A text insert as a sync update message, from a doc of its own.
fn insert(text: &str) -> Vec<u8> {
    use yrs::{ReadTxn, Text, Transact};
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("t");
    t.insert(&mut doc.transact_mut(), 0, text);
    let update = doc
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    Message::Sync(yrs::sync::SyncMessage::Update(update)).encode_v1()
}

/// Waits for a sync message whose update holds `needle` (applied to a scratch doc).
async fn until_update_with(ws: &mut Socket, needle: &str) {
    use yrs::{GetString, Transact};
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("t");
    tokio::time::timeout(GUARD, async {
        loop {
            let frame = match ws.next().await {
                Some(Ok(Ws::Binary(b))) => b,
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            };
            if let Ok(Message::Sync(
                yrs::sync::SyncMessage::Update(u) | yrs::sync::SyncMessage::SyncStep2(u),
            )) = Message::decode_v1(&frame)
            {
                let update = yrs::Update::decode_v1(&u).unwrap();
                doc.transact_mut().apply_update(update).unwrap();
                if t.get_string(&doc.transact()).contains(needle) {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle} never arrived"));
}

/// A dynamic doc loads on demand on any node, and a write on one node reaches the same
/// room's connections on another live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_docs_live_on_every_node() {
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let (a, a_addr) = dynamic_node(&pg, &redis, "a").await;
    let (b, b_addr) = dynamic_node(&pg, &redis, "b").await;
    let mut on_a = join(a_addr, "notes").await;
    on_a.send(Ws::Binary(insert("first").into())).await.unwrap();
    let status = Message::Custom(102, vec![1]).encode_v1();
    on_a.send(Ws::Binary(status.clone().into())).await.unwrap();
    loop {
        match tokio::time::timeout(GUARD, on_a.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) if b[..] == status[..] => break,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    // Node B loads the room from the database for its first connection...
    let mut on_b = join(b_addr, "notes").await;
    on_b.send(Ws::Binary(
        Message::Sync(yrs::sync::SyncMessage::SyncStep1(Default::default()))
            .encode_v1()
            .into(),
    ))
    .await
    .unwrap();
    until_update_with(&mut on_b, "first").await;
    // ...and from then on gets node A's writes live.
    on_a.send(Ws::Binary(insert("second").into()))
        .await
        .unwrap();
    until_update_with(&mut on_b, "second").await;
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}
