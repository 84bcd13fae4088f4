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

use epicenter_server::server::{create_server, Auth, ServerOptions};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};

// A server allocates many small, short-lived objects (rows, JSON, frames); mimalloc handles
// that faster than the system allocator. Optional: remove these lines to use the default.
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

    // 2. Create the client: loads `<data dir>/blog.db` before returning.
    let client = blog
        .with_storage(SqliteStorage::new(&data_dir))
        .create()
        .await?;

    // 3. Create and run the server until Ctrl+C / SIGTERM, then flush and stop.
    let mut options = ServerOptions::default();
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
