//! The quick start: a `blog` workspace with a `posts` table, stored in SQLite under
//! `EPICENTER_DATA_DIR` (default `./data`).
//!
//! ```sh
//! cargo run --example blog
//! sqlite3 data/blog.db 'select * from posts'
//! ```

use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
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

    // 3. Use it.
    let posts = client.table("posts")?;
    let n = posts.count() + 1;
    let row = json!({ "id": format!("post-{n}"), "title": format!("Hello #{n}") });
    posts.upsert(row)?;
    client.flush().await?;

    for post in posts.get_all_valid() {
        println!("{}", serde_json::Value::Object(post));
    }
    println!(
        "{} post(s) in {}/blog.db (try: sqlite3 {}/blog.db 'select * from posts')",
        posts.count(),
        data_dir,
        data_dir
    );
    client.destroy().await?;
    Ok(())
}
