//! The crate's error types, one per layer.

use crate::workspace::Issue;

/// A workspace definition breaks a rule; the message names the table, field or key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DefinitionError {
    /// About the workspace as a whole.
    #[error("workspace definition: {0}")]
    Workspace(String),
    /// The JSON is not a definition.
    #[error("workspace definition JSON: {0}")]
    Json(String),
    /// About one table.
    #[error("table `{table}`: {message}")]
    Table {
        /// The table.
        table: String,
        /// What is wrong.
        message: String,
    },
    /// About one field of a table.
    #[error("table `{table}`, field `{field}`: {message}")]
    Field {
        /// The table.
        table: String,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// About one KV key.
    #[error("kv key `{key}`: {message}")]
    Kv {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A storage provider failed, or refused to open.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another client (in this or another process) has the storage open.
    #[error("storage {path} is in use by another client (only one client may open it at a time; use the running server's API instead)")]
    InUse {
        /// The storage file.
        path: String,
    },
    /// The stored data cannot be read back; nothing is served from it.
    #[error("storage {path} is damaged: {detail}")]
    Damaged {
        /// The storage file.
        path: String,
        /// What was found.
        detail: String,
    },
    /// The storage cannot hold this doc as it is defined (a name it cannot take, a table
    /// of the same name it did not make); no retry helps.
    #[error("storage cannot hold {doc}: {reason}")]
    Refused {
        /// The doc (workspace id).
        doc: String,
        /// Why, and what to change.
        reason: String,
    },
    /// An SQLite call failed.
    #[cfg(feature = "sqlite")]
    #[error("sqlite storage {path}: {source}")]
    Sqlite {
        /// The storage file.
        path: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file system call failed.
    #[error("storage {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The storage's writer stopped after an error; later writes are not durable.
    #[error("storage writer failed: {0}")]
    WriterFailed(String),
    /// The storage cannot take more writes for now: commits are failing and are being
    /// retried, and as much as it may hold in memory already waits. Nothing was applied;
    /// try again later (REST answers 503 with `Retry-After`, sync closes with 1013).
    #[error("storage is unavailable, try again later: {reason}")]
    Unavailable {
        /// Why (the error commits are failing with, and how much waits).
        reason: String,
    },
    /// The storage was closed (or an update arrived after it was).
    #[error("storage is closed")]
    Closed,
}

/// A table, KV or client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The definition is not valid.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No such table in the definition.
    #[error("unknown table `{0}`")]
    UnknownTable(String),
    /// No such KV key in the definition.
    #[error("unknown kv key `{0}`")]
    UnknownKey(String),
    /// No row with this id.
    #[error("no row `{id}` in table `{table}`")]
    NotFound {
        /// The table.
        table: String,
        /// The row id.
        id: String,
    },
    /// The data does not match the schema; every problem is listed.
    #[error("invalid data: {}", .issues.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// Every problem found.
        issues: Vec<Issue>,
    },
    /// A Yjs update could not be decoded or applied.
    #[error("bad update: {0}")]
    BadUpdate(String),
    /// The client was destroyed.
    #[error("the workspace client was destroyed")]
    Destroyed,
}

/// Errors of the sync provider ([`crate::client::SyncProvider`]).
#[cfg(feature = "client")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The sync URL is not a `ws://` URL (`wss://` needs TLS support this build lacks).
    #[error("invalid sync URL: {0}")]
    InvalidUrl(String),
    /// `connect()` was called outside a Tokio runtime.
    #[error("the sync provider needs a Tokio runtime: call connect() inside one")]
    NoRuntime,
    /// The provider was destroyed.
    #[error("the sync provider was destroyed")]
    Destroyed,
    /// The doc could not be observed.
    #[error("cannot observe the doc: {0}")]
    Doc(String),
    /// The awareness state could not be set.
    #[error("awareness: {0}")]
    Awareness(String),
}
