//! Serves workspaces described by JSON definition files: no Rust code per workspace.
//!
//! ```sh
//! cargo run --example serve_definitions -- examples/blog.json [more.json ...]
//! ```
//!
//! Each file is a definition as `WorkspaceDefinition::from_json` reads it (see
//! `examples/blog.json`); data goes to `EPICENTER_DATA_DIR` (default `./data`), the port is
//! `PORT` (default 3913).

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::WorkspaceDefinition;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        return Err("usage: serve_definitions <definition.json> [...]".into());
    }
    let data_dir = std::env::var("EPICENTER_DATA_DIR").unwrap_or_else(|_| "./data".into());
    let storage = SqliteStorage::new(&data_dir);
    let mut clients = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let definition =
            WorkspaceDefinition::from_json(&text).map_err(|e| format!("{file}: {e}"))?;
        clients.push(definition.with_storage(storage.clone()).create().await?);
    }
    let server = create_server(clients, ServerOptions::default())?;
    let addr = server.start().await?;
    println!("Serving {} workspace(s) on http://{addr}", files.len());
    server.run_until_shutdown().await?;
    Ok(())
}
