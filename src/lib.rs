//! # epicenter-server
//!
//! Keeps collaborative workspaces alive on a server. A workspace is a Yjs document
//! (`yrs::Doc`) holding typed tables and KV values; this crate loads it from durable
//! storage, keeps it in memory, and exposes it.
//!
//! ## Layers
//!
//! Dependencies point one way, each layer usable without the ones above it:
//!
//! | layer | what it owns |
//! |---|---|
//! | [`server`] | `create_server(clients, options)`: REST CRUD, typed workspace actions, discovery, OpenAPI + Scalar, custom routes, auth per matched route, metrics, the accept loop and lifecycle; hands upgraded WebSockets to `sync` |
//! | [`sync`] | y-websocket rooms: protocol, awareness, fan-out, the room registry (eviction, dynamic docs), one task per connection. Knows sockets, not HTTP |
//! | [`workspace`] | [`workspace::WorkspaceClient`]: the Y.Doc data model (last-write-wins cells), table and KV handles, the single write path |
//! | [`storage`] | where a doc lives between runs: [`storage::MemoryStorage`], [`storage::SqliteStorage`] (log, snapshot, compaction, SQL mirror) |
//! | [`schema`] | definitions, field types, row values, validation: the bottom layer |
//!
//! [`access`] holds the verdict auth reaches ([`access::Access`]), which `server` decides and
//! `sync` acts on. [`client`] (the `client` feature, on by default) is the Rust sync
//! provider, [`client::SyncProvider`]; it needs only the protocol. A WebSocket frame goes
//! `server::sync_route` → `sync::hub` → `sync::connection` → `sync::room` → the doc; a
//! REST write goes `server::rest` → `workspace::table` → `workspace::core` → the doc, whose
//! commit hands the update to `storage` and the room's fan-out.

//! ## Quick start
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use epicenter_server::workspace::{WorkspaceDefinition, id, text};
//! use serde_json::json;
//!
//! let blog = WorkspaceDefinition::builder("blog")
//!     .table("posts", [("id", id()), ("title", text())])
//!     .build()?;
//! // With the `sqlite` feature: `.with_storage(SqliteStorage::new("./data"))`.
//! let client = blog.in_memory().create().await?;
//! let posts = client.table("posts")?;
//! posts.upsert(json!({ "id": "1", "title": "Hello" }))?;
//! assert_eq!(posts.get_all_valid().len(), 1);
//! client.destroy().await?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

#![warn(missing_docs)]

pub mod access;
#[cfg(feature = "client")]
pub mod client;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod lock;
pub mod schema;
pub mod server;
pub mod storage;
pub mod sync;
pub mod workspace;

pub use error::{DefinitionError, StorageError, WorkspaceError};
pub use workspace::{WorkspaceClient, WorkspaceDefinition};
