//! The quick start: a `blog` workspace with a `posts` table, stored in SQLite under
//! `EPICENTER_DATA_DIR` (default `./data`), served on `PORT` (default 3913) until Ctrl+C.
//!
//! ```sh
//! cargo run --example blog
//! curl -X POST localhost:3913/workspaces/blog/tables/posts \
//!      -H 'content-type: application/json' -d '{"id":"1","title":"Hello"}'
//! curl localhost:3913/workspaces/blog/tables/posts
//! curl -X POST localhost:3913/workspaces/blog/actions/posts/create \
//!      -H 'content-type: application/json' -d '{"title":"Hello"}'
//! curl 'localhost:3913/workspaces/blog/actions/posts/search?q=hello&limit=5'
//! ```
//!
//! Besides the table routes it has two actions: `posts/create`, a mutation that picks the
//! new post's id and returns the row, and `posts/search`, a query by title.
//!
//! With `EPICENTER_DATA_DIR=memory`, nothing is stored (the doc lives in memory only and is
//! gone at exit): what the sync benchmarks use to measure fan-out without the disk.
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

use epicenter_server::server::actions::{ActionContext, Actions};
use epicenter_server::server::{create_server, ApiError, Auth, ServerOptions};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

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
        (None, None) if data_dir == "memory" => blog.in_memory().create().await?,
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
    let mut server = create_server([client], options)?;
    server.actions("blog", actions())?;
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

/// The blog's actions: mounted at `/workspaces/blog/actions/...`, validated and documented
/// from these types.
fn actions() -> Actions {
    Actions::new()
        .mutation(
            "posts/create",
            "Creates a post with a new id and returns it.",
            create_post,
        )
        .query(
            "posts/search",
            "The posts whose title contains `q` (ignoring case), by id.",
            search_posts,
        )
}

/// A new post; the server picks its id.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewPost {
    /// The title.
    #[schema(min_length = 1)]
    title: String,
}

/// A post.
#[derive(Serialize, ToSchema)]
struct Post {
    id: String,
    title: String,
}

/// What to look for.
#[derive(Deserialize, ToSchema)]
struct Search {
    /// Text the title contains.
    q: String,
    /// The most posts to return.
    #[serde(default = "default_limit")]
    #[schema(default = 20, minimum = 1, maximum = 100)]
    limit: u32,
}

fn default_limit() -> u32 {
    20
}

async fn create_post(cx: ActionContext, input: NewPost) -> Result<Post, ApiError> {
    let post = Post {
        id: new_id(),
        title: input.title,
    };
    let posts = cx.client.table("posts")?;
    let row = json!({ "id": post.id, "title": post.title });
    // Writes wait for the doc, which a big sync update can hold: off the async workers.
    cx.blocking(move |_| posts.upsert(row)).await??;
    // Answered once durable: the server waits for the storage before sending this.
    Ok(post)
}

async fn search_posts(cx: ActionContext, input: Search) -> Result<Vec<Post>, ApiError> {
    let posts = cx.client.table("posts")?;
    let rows = cx.blocking(move |_| posts.get_all_valid()).await?;
    let q = input.q.to_lowercase();
    let found = rows.into_iter().filter_map(|row| {
        let title = row.get("title")?.as_str()?;
        let id = row.get("id")?.as_str()?;
        title.to_lowercase().contains(&q).then(|| Post {
            id: id.to_string(),
            title: title.to_string(),
        })
    });
    Ok(found.take(input.limit as usize).collect())
}

/// A new id: the time in milliseconds and 32 random bits, in hex, so ids sort by creation.
/// Any unique scheme works (a UUID crate, say); this one needs no dependency.
fn new_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // Each `RandomState` has its own random keys.
    let random = RandomState::new().hash_one(millis) as u32;
    format!("{millis:011x}{random:08x}")
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
