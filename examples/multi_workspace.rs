//! Two workspaces on one server: `blog` (posts) and `auth` (users). Routes are namespaced by
//! workspace id: `/workspaces/blog/tables/posts`, `/workspaces/auth/tables/users`.
//!
//! ```sh
//! cargo run --example multi_workspace
//! curl localhost:3913/
//! ```

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::{boolean, date, id, select, tags, text, WorkspaceDefinition};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let data_dir = std::env::var("EPICENTER_DATA_DIR").unwrap_or_else(|_| "./data".into());
    let storage = SqliteStorage::new(&data_dir);

    let blog = WorkspaceDefinition::builder("blog")
        .table(
            "posts",
            [
                ("id", id()),
                ("title", text()),
                ("status", select(["draft", "published"]).default("draft")),
                ("tags", tags().default(serde_json::json!([]))),
                ("published_at", date().nullable()),
            ],
        )
        .build()?;
    let auth = WorkspaceDefinition::builder("auth")
        .table(
            "users",
            [
                ("id", id()),
                ("email", text()),
                ("admin", boolean().default(false)),
            ],
        )
        .build()?;

    // Each workspace gets its own file in the data directory (blog.db, auth.db).
    let blog = blog.with_storage(storage.clone()).create().await?;
    let auth = auth.with_storage(storage).create().await?;

    let server = create_server([blog, auth], ServerOptions::default())?;
    let addr = server.start().await?;
    println!("Serving blog and auth on http://{addr}");
    server.run_until_shutdown().await?;
    Ok(())
}
