//! # epicenter-server
//!
//! Keeps collaborative workspaces alive on a server. A workspace is a Yjs document
//! (`yrs::Doc`) holding typed tables and KV values; this crate loads it from durable
//! storage, keeps it in memory, and exposes it.
//!
//! Three layers, each usable alone:
//! 1. [`workspace`]: definitions, the Y.Doc data model (last-write-wins cells), table and
//!    KV handles, and [`workspace::WorkspaceClient`], which ties a doc to a
//!    [`storage`] provider.
//! 2. [`server`]: `create_server(clients, options)`: REST CRUD, discovery, OpenAPI +
//!    Scalar, custom routes, lifecycle, and [`sync`]: WebSocket rooms in the y-websocket
//!    protocol.
//! 3. [`client`] (the `client` feature, on by default): [`client::SyncProvider`] keeps a
//!    local doc, or a local workspace, in sync with a server.
//!
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
