//! A local `blog` workspace kept in sync with a running server by a `SyncProvider`: writes a
//! post locally, waits until the server holds it durably, and prints where to fetch it.
//!
//! ```sh
//! cargo run --example blog                # in one terminal
//! cargo run --example sync_client         # in another
//! cargo run --example sync_client -- http://127.0.0.1:3913   # or EPICENTER_URL=...
//! ```
//!
//! `EPICENTER_TOKEN`, if set, is sent as the token (as the blog example expects).
//! The server URL is the first argument, else `EPICENTER_URL`, else
//! `http://127.0.0.1:<PORT or 3913>` (where the blog example listens).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use epicenter_server::client::{Auth, ProviderOptions, Status, SyncProvider};
use epicenter_server::server::DEFAULT_PORT;
use epicenter_server::workspace::{id, text, WorkspaceClient, WorkspaceDefinition};
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{sleep_until, Instant};

/// How long to wait for the connection, and then for the server to hold the post.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let server = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("EPICENTER_URL").ok())
        .unwrap_or_else(|| {
            let port = std::env::var("PORT").unwrap_or_else(|_| DEFAULT_PORT.to_string());
            format!("http://127.0.0.1:{port}")
        });

    // The same definition as the blog example's, in memory on this side.
    let blog = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()?;
    let client = blog.in_memory().create().await?;
    // A server started with EPICENTER_TOKEN wants the same token.
    let mut options = ProviderOptions::default();
    if let Some(token) = std::env::var("EPICENTER_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        options = options.auth(Auth::token(token));
    }
    let provider = SyncProvider::for_workspace(&client, &server, options)?;
    println!("Syncing workspace `blog` with {}", provider.url());

    let result = sync_a_post(&client, &provider, &server).await;

    // Removes this client's awareness state on the server, then closes the connection.
    provider.destroy().await;
    client.destroy().await?;
    result
}

async fn sync_a_post(
    client: &WorkspaceClient,
    provider: &SyncProvider,
    server: &str,
) -> Result<(), Error> {
    // Subscribed before connecting, so no change is missed.
    let mut events = provider.status_events();
    provider.connect()?;

    let deadline = Instant::now() + GIVE_UP_AFTER;
    loop {
        tokio::select! {
            _ = sleep_until(deadline) => {
                return Err(format!(
                    "could not connect to {server} within {GIVE_UP_AFTER:?} (status: {:?}). \
                     Is the blog example running? Start it with `cargo run --example blog`, \
                     or pass the server's URL as the first argument or in EPICENTER_URL.",
                    *provider.status().borrow()
                )
                .into());
            }
            event = next_status(&mut events) => match event? {
                Status::Connected => break,
                Status::Error { code, reason } => {
                    return Err(format!(
                        "{server} refused the connection for good ({code} {reason}). Does it \
                         serve a workspace `blog`?"
                    )
                    .into());
                }
                _ => {}
            },
        }
    }

    let posts = client.table("posts")?;
    println!(
        "Connected: {} post(s) came from the server",
        posts.get_all_valid().len()
    );

    let millis = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let id = format!("sync-client-{millis}");
    posts.upsert(json!({ "id": id, "title": "Hello from the Rust sync client" }))?;
    println!("Wrote post {id} locally; waiting for the server to store it");

    // Clean means the server echoed the version of our last change: it holds it durably.
    let mut dirty = provider.has_local_changes();
    let deadline = Instant::now() + GIVE_UP_AFTER;
    while *dirty.borrow_and_update() {
        tokio::select! {
            _ = sleep_until(deadline) => {
                return Err(format!(
                    "the server did not confirm post {id} within {GIVE_UP_AFTER:?} \
                     (status: {:?})",
                    *provider.status().borrow()
                )
                .into());
            }
            changed = dirty.changed() => changed?,
            event = next_status(&mut events) => {
                if let Status::Error { code, reason } = event? {
                    return Err(format!("{server} refused the connection ({code} {reason})").into());
                }
            }
        }
    }

    let http = server
        .trim_end_matches('/')
        .replacen("ws://", "http://", 1)
        .replacen("wss://", "https://", 1);
    println!("The server holds post {id} durably. Fetch it with:");
    println!("  curl {http}/workspaces/blog/tables/posts/{id}");
    Ok(())
}

/// The next status change, printed.
async fn next_status(events: &mut broadcast::Receiver<Status>) -> Result<Status, Error> {
    loop {
        match events.recv().await {
            Ok(status) => {
                println!("status: {status:?}");
                return Ok(status);
            }
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return Err("the sync provider stopped".into()),
        }
    }
}
