//! The workspace layer: definitions, the Y.Doc data model, table and KV handles, and the
//! client that ties a doc to its storage. Nothing here knows about HTTP or sockets.
//!
//! Data layout (wire-compatible with Epicenter's JavaScript workspaces): each table is a
//! root `Y.Array` named `table:<name>`, KV is the root `Y.Array` `kv`, and each element is
//! a plain `{key, val, ts}` map. A table cell's key is `<rowId>:<fieldId>`. Per key the
//! entry with the highest `ts` wins (equal `ts`: the one further right), and losers are
//! deleted by whoever sees them.

mod client;
mod clock;
pub(crate) mod core;
mod json;
mod kv;
mod lww;
mod rows;
mod table;

pub use self::core::{RowResult, Subscription, LOCAL_ORIGIN};
pub use crate::schema::{any_to_json, json_to_any};
pub use crate::schema::{
    boolean, date, id, integer, json, json_with_schema, real, select, tags, tags_of, text, Field,
    FieldSpec, FieldType, KvDefinition, TableDefinition, WorkspaceBuilder, WorkspaceDefinition,
};
pub use crate::schema::{validate_row, Issue, Row};
pub use client::{ClientBuilder, WorkspaceClient};
pub use clock::Clock;
pub use kv::KvHandle;
pub use table::{IntoRow, TableHandle};
