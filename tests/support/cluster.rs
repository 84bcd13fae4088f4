//! Nodes over one PostgreSQL database and one Redis server, in this process, for the
//! attack tests (`tests/cluster_attack*.rs`): a `blog` workspace, a server on the bus, raw
//! access to both services.

#![cfg(all(feature = "postgres", feature = "redis"))]
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use epicenter_server::server::{create_server, Server, ServerOptions};
use epicenter_server::storage::{PostgresOptions, PostgresStorage};
use epicenter_server::sync::RedisBus;
use epicenter_server::workspace::{id, text, RowResult, WorkspaceClient, WorkspaceDefinition};
use serde_json::json;

use super::services::{Postgres, Redis};

/// How long a test waits for something that should happen within milliseconds.
pub const GUARD: Duration = Duration::from_secs(5);

/// The secret the nodes of a test share to sign their bus entries.
pub const SECRET: &str = "shared by the nodes";

pub fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap()
}

/// A client of `def` stored in `pg`, written as node `node`.
pub async fn open_with(pg: &Postgres, node: &str, def: WorkspaceDefinition) -> WorkspaceClient {
    let options = PostgresOptions {
        node: node.into(),
        ..PostgresOptions::default()
    };
    let storage = PostgresStorage::connect_with(&pg.url(), options)
        .await
        .unwrap();
    def.with_storage(storage).create().await.unwrap()
}

/// A client of [`blog`] stored in `pg`.
pub async fn open(pg: &Postgres, node: &str) -> WorkspaceClient {
    open_with(pg, node, blog()).await
}

/// A node serving `client`, on the bus `bus`.
pub async fn serve_on(client: WorkspaceClient, bus: RedisBus) -> (Server, SocketAddr) {
    let server = create_server([client], ServerOptions::default().port(0).redis_bus(bus)).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

/// A node serving `client`, on the bus as `name`, its entries unsigned.
pub async fn serve(
    client: WorkspaceClient,
    redis: &Redis,
    name: &str,
    catch_up: Duration,
) -> (Server, SocketAddr) {
    let bus = RedisBus::new(redis.url(), name).catch_up_interval(catch_up);
    serve_on(client, bus).await
}

/// [`serve`], with bus entries signed with [`SECRET`].
pub async fn serve_signed(
    client: WorkspaceClient,
    redis: &Redis,
    name: &str,
    catch_up: Duration,
) -> (Server, SocketAddr) {
    let bus = RedisBus::new(redis.url(), name)
        .catch_up_interval(catch_up)
        .secret(SECRET);
    serve_on(client, bus).await
}

pub async fn sql(pg: &Postgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

pub async fn redis_conn(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Adds an entry to a stream of the bus, as anything with access to Redis can.
pub async fn xadd(c: &mut redis::aio::MultiplexedConnection, key: &str, fields: &[(&str, &[u8])]) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: String = cmd.query_async(c).await.unwrap();
}

/// Whether `client` has a valid row `id` in `posts`.
pub fn has(client: &WorkspaceClient, id: &str) -> bool {
    matches!(client.table("posts").unwrap().get(id), RowResult::Valid(_))
}

/// Whether `client` gets row `id` within [`GUARD`].
pub async fn gets(client: &WorkspaceClient, id: &str) -> bool {
    tokio::time::timeout(GUARD, async {
        while !has(client, id) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok()
}

/// A REST write of row `id` to node `addr`, acknowledged (2xx).
pub async fn rest_post(addr: SocketAddr, id: &str) {
    let status = reqwest::Client::new()
        .post(format!("http://{addr}/workspaces/blog/tables/posts"))
        .json(&json!({"id": id, "title": "t"}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
}

/// The stored bytes of update `seq` of doc `blog`.
pub async fn stored_update(db: &tokio_postgres::Client, seq: i64) -> Vec<u8> {
    db.query_one(
        "SELECT data FROM epicenter_updates WHERE doc = 'blog' AND seq = $1",
        &[&seq],
    )
    .await
    .unwrap()
    .get(0)
}
