//! Custom routes next to the generated ones, and the whole server nested under `/api` in an
//! existing axum app.
//!
//! ```sh
//! cargo run --example custom_routes
//! curl localhost:3913/health
//! curl -X POST localhost:3913/api/posts -H 'content-type: application/json' -d '{"title":"Hi"}'
//! curl localhost:3913/api/workspaces/blog/tables/posts
//! ```

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use epicenter_server::server::{create_server, ApiError, ServerOptions, ServerState};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct NewPost {
    title: String,
}

/// A function that uses the client, exposed as a route: creates a post with a fresh id.
async fn create_post(
    State(state): State<ServerState>,
    Json(body): Json<NewPost>,
) -> Result<Json<Value>, ApiError> {
    let client = state
        .client("blog")
        .ok_or_else(|| ApiError::not_found("no blog workspace"))?;
    let id = format!("post-{}", client.table("posts")?.count() + 1);
    client
        .table("posts")?
        .upsert(json!({ "id": id, "title": body.title }))?;
    client.flush().await?; // answer only once it is durable
    Ok(Json(json!({ "data": { "id": id } })))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let data_dir = std::env::var("EPICENTER_DATA_DIR").unwrap_or_else(|_| "./data".into());
    let blog = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()?
        .with_storage(SqliteStorage::new(&data_dir))
        .create()
        .await?;

    let mut server = create_server([blog], ServerOptions::default())?;
    server.route("/posts", post(create_post));

    // An existing app: its own routes, with the Epicenter server nested under /api.
    let app = Router::new()
        .route("/health", get(|| async { "OK" }))
        .nest("/api", server.router());

    let port = ServerOptions::default().resolved_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("Serving on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Our own serve loop stopped: flush and release the workspaces.
    server.destroy().await?;
    Ok(())
}
