//! The quick start: a `blog` workspace with a `posts` table, stored in SQLite under
//! `EPICENTER_DATA_DIR` (default `./data`), served on `PORT` (default 3913) until Ctrl+C.
//!
//! ```sh
//! cargo run --example blog
//! curl -X POST localhost:3913/workspaces/blog/tables/posts \
//!      -H 'content-type: application/json' -d '{"id":"1","title":"Hello"}'
//! curl localhost:3913/workspaces/blog/tables/posts
//! ```
//!
//! With `EPICENTER_TOKEN` set, every request needs that token (`Authorization: Bearer <token>`,
//! or `?token=<token>` for WebSockets); the OpenAPI document and Scalar page stay open.
//!
//! With `EPICENTER_POSTGRES_URL` and `EPICENTER_REDIS_URL` set (and the `postgres` and
//! `redis` features on), it runs as one node of several: the workspace is stored in that
//! Postgres database and the nodes tell each other of their writes over that Redis server.
//! `EPICENTER_NODE_TIMEOUT_MS` sets how soon the others drop a dead node's presence
//! (default 30,000); `EPICENTER_BUS_SECRET`, the secret the nodes sign their bus entries
//! with (every node the same; entries without a valid signature are ignored).
//!
//! ```sh
//! cargo run --features postgres,redis --example blog   # with the variables above, and PORT
//! ```

use epicenter_server::server::{create_server, Auth, ServerOptions};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};

// A server allocates many small, short-lived objects (rows, JSON, frames); mimalloc handles
// that faster than the system allocator. Optional: remove these lines to use the default.
// Built with mimalloc's `no_thp` feature (see Cargo.toml): many small connection states
// are served better by ordinary pages than by huge ones.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let data_dir = std::env::var("EPICENTER_DATA_DIR").unwrap_or_else(|_| "./data".into());

    // 1. Define the workspace.
    let blog = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()?;

    let mut options = ServerOptions::default();
    let cluster = (
        std::env::var("EPICENTER_POSTGRES_URL").ok(),
        std::env::var("EPICENTER_REDIS_URL").ok(),
    );
    // 2. Create the client: loads its stored state before returning.
    let client = match cluster {
        (Some(postgres), Some(redis)) => {
            let (client, node_options) = node(blog, &postgres, &redis).await?;
            options = node_options;
            client
        }
        (None, None) => {
            // `<data dir>/blog.db`.
            blog.with_storage(SqliteStorage::new(&data_dir))
                .create()
                .await?
        }
        _ => {
            return Err(
                "set both EPICENTER_POSTGRES_URL and EPICENTER_REDIS_URL, or neither".into(),
            )
        }
    };

    // 3. Create and run the server until Ctrl+C / SIGTERM, then flush and stop.
    let token = std::env::var("EPICENTER_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(token) = &token {
        options = options.auth(Auth::token(token)).public_docs(true);
    }
    let server = create_server([client], options)?;
    let addr = server.start().await?;
    println!("Serving blog on http://{addr} (docs at http://{addr}/openapi)");
    if token.is_some() {
        println!(
            "Requests need the token from EPICENTER_TOKEN (Authorization: Bearer, or ?token=)"
        );
    }
    server.run_until_shutdown().await?;
    Ok(())
}

/// The client and options of a node of several (features `postgres` and `redis`).
#[cfg(all(feature = "postgres", feature = "redis"))]
async fn node(
    blog: WorkspaceDefinition,
    postgres: &str,
    redis: &str,
) -> Result<(epicenter_server::WorkspaceClient, ServerOptions), Box<dyn std::error::Error>> {
    use epicenter_server::storage::PostgresStorage;
    use epicenter_server::sync::RedisBus;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "node".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3913".into());
    let name = format!("{}-{port}", host.trim());
    let client = blog
        .with_storage(PostgresStorage::connect(postgres).await?)
        .create()
        .await?;
    println!("Node {name}: storage in Postgres, writes shared over Redis");
    let mut bus = RedisBus::new(redis, name);
    if let Some(ms) = std::env::var("EPICENTER_NODE_TIMEOUT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
    {
        bus = bus.node_timeout(std::time::Duration::from_millis(ms));
    }
    if let Ok(secret) = std::env::var("EPICENTER_BUS_SECRET") {
        bus = bus.secret(secret);
    }
    let options = ServerOptions::default().redis_bus(bus);
    Ok((client, options))
}

#[cfg(not(all(feature = "postgres", feature = "redis")))]
async fn node(
    _blog: WorkspaceDefinition,
    _postgres: &str,
    _redis: &str,
) -> Result<(epicenter_server::WorkspaceClient, ServerOptions), Box<dyn std::error::Error>> {
    Err("running as a node needs the postgres and redis features: cargo run --features postgres,redis --example blog".into())
}
