//! The SQLite provider: one WAL-mode SQLite file per doc in a data directory.
//!
//! Layout of `<dir>/<doc id>.db`:
//! - `_epicenter_log(seq, data, crc)`: every doc update, appended by one writer thread that
//!   commits whatever has queued up in one transaction (group commit: one fsync serves many
//!   updates), each update checksummed;
//! - `_epicenter_snapshot`: the log folded into one update, replaced atomically with the
//!   log rows it covers (compaction);
//! - `_epicenter_meta`: the definition the mirror was built for;
//! - one table per workspace table, one column per field: the SQL mirror, written in the same
//!   transactions as the log, so `sqlite3 <dir>/blog.db 'select * from posts'` shows the rows.
//!
//! Exclusive ownership is an OS file lock on `<doc id>.db.lock`, held for as long as the
//! storage is open, by this process or any other. A doc opened without a definition (a
//! dynamic room) that holds nothing when it is closed leaves neither file behind.
//!
//! A commit that fails for a reason that can pass (disk full, I/O error, busy) is retried
//! until it succeeds, with what arrived meanwhile; see [`writer`] for the details.

mod doc;
mod faults;
mod files;
mod mirror;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::watch;

use super::{DocStorage, StorageProvider};
use crate::error::StorageError;
use crate::schema::WorkspaceDefinition;
use doc::SqliteDoc;
#[doc(hidden)]
pub use faults::FaultSwitch;
use writer::{Committed, Writer};

/// Tuning for [`SqliteStorage`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// `synchronous=FULL` (fsync on every commit: durable across power loss) when true,
    /// `NORMAL` (durable across process crashes only) when false. Default: true.
    pub fsync: bool,
    /// Compact once the log holds this many updates. Default: 10,000.
    pub compact_after_updates: u64,
    /// Compact once the log holds this many bytes. Default: 16 MiB.
    pub compact_after_bytes: u64,
    /// Most updates one write transaction takes. Default: 10,000.
    pub max_batch: usize,
    /// Most bytes of updates that may wait in memory for the disk (while commits fail and
    /// are retried, or fall behind). A write arriving when this much waits is refused
    /// before it is applied, with [`StorageError::Unavailable`]: REST answers 503 with
    /// `Retry-After`, a sync connection is closed with 1013. Default: 64 MiB.
    pub max_pending_bytes: u64,
    /// How long closing a doc keeps retrying updates that cannot be committed (the disk
    /// is full, say) before giving up on them; `close()` then fails, saying how many were
    /// not stored. Default: 10 s.
    pub close_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            fsync: true,
            compact_after_updates: 10_000,
            compact_after_bytes: 16 << 20,
            max_batch: 10_000,
            max_pending_bytes: 64 << 20,
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// Stores each doc in `<dir>/<doc id>.db` (see the module docs for the layout).
///
/// ```no_run
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use epicenter_server::storage::SqliteStorage;
/// use epicenter_server::workspace::{WorkspaceDefinition, id, text};
///
/// let blog = WorkspaceDefinition::builder("blog")
///     .table("posts", [("id", id()), ("title", text())])
///     .build()?;
/// let client = blog.with_storage(SqliteStorage::new("./data")).create().await?;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    dir: PathBuf,
    options: SqliteOptions,
    faults: FaultSwitch,
}

impl SqliteStorage {
    /// Stores docs under `dir` (created when missing) with default options.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_options(dir, SqliteOptions::default())
    }

    /// Stores docs under `dir` with `options`.
    pub fn with_options(dir: impl Into<PathBuf>, options: SqliteOptions) -> Self {
        SqliteStorage {
            dir: dir.into(),
            options,
            faults: FaultSwitch::default(),
        }
    }

    /// The switch that makes every commit of the docs opened from this provider (and its
    /// clones) fail with an I/O error while on; for tests of storage faults.
    #[doc(hidden)]
    pub fn fault_switch(&self) -> FaultSwitch {
        self.faults.clone()
    }

    /// The file a doc is stored in: the id with characters outside `[A-Za-z0-9_.-]`
    /// percent-encoded, plus `.db`.
    pub fn path_for(&self, doc_id: &str) -> PathBuf {
        let mut name = String::new();
        for (i, b) in doc_id.bytes().enumerate() {
            let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
            if plain {
                name.push(b as char);
            } else {
                name.push_str(&format!("%{b:02X}"));
            }
        }
        self.dir.join(format!("{name}.db"))
    }
}

pub(super) fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> StorageError + '_ {
    move |source| match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            StorageError::Damaged {
                path: path.display().to_string(),
                detail: source.to_string(),
            }
        }
        _ => StorageError::Sqlite {
            path: path.display().to_string(),
            source,
        },
    }
}

fn damaged(path: &Path, detail: impl Into<String>) -> StorageError {
    StorageError::Damaged {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

pub(super) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS _epicenter_log (
        seq INTEGER PRIMARY KEY, data BLOB NOT NULL, crc INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS _epicenter_snapshot (
        id INTEGER PRIMARY KEY CHECK (id = 1), data BLOB NOT NULL, crc INTEGER NOT NULL,
        upto INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS _epicenter_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// What [`read_all`] read.
pub(super) struct Stored {
    /// The snapshot (if any), then the logged updates in order.
    pub updates: Vec<Vec<u8>>,
    /// The sequence number of the last logged update (0 without any).
    pub last_seq: i64,
    /// How many updates the log holds, and their bytes.
    pub log_count: u64,
    pub log_bytes: u64,
}

/// Reads the snapshot and log, checking every checksum.
pub(super) fn read_all(conn: &Connection, path: &Path) -> Result<Stored, StorageError> {
    let err = sql_err(path);
    let mut out = Vec::new();
    let snapshot: Option<(Vec<u8>, i64)> = conn
        .query_row(
            "SELECT data, crc FROM _epicenter_snapshot WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(&err)?;
    if let Some((data, crc)) = snapshot {
        if crc32fast::hash(&data) as i64 != crc {
            return Err(damaged(path, "the snapshot fails its checksum"));
        }
        out.push(data);
    }
    let mut stmt = conn
        .prepare("SELECT seq, data, crc FROM _epicenter_log ORDER BY seq")
        .map_err(&err)?;
    let mut rows = stmt.query([]).map_err(&err)?;
    let mut last = 0i64;
    let (mut log_count, mut log_bytes) = (0u64, 0u64);
    while let Some(row) = rows.next().map_err(&err)? {
        let seq: i64 = row.get(0).map_err(&err)?;
        let data: Vec<u8> = row.get(1).map_err(&err)?;
        let crc: i64 = row.get(2).map_err(&err)?;
        if crc32fast::hash(&data) as i64 != crc {
            return Err(damaged(
                path,
                format!("logged update {seq} fails its checksum"),
            ));
        }
        last = seq;
        log_count += 1;
        log_bytes += data.len() as u64;
        out.push(data);
    }
    Ok(Stored {
        updates: out,
        last_seq: last,
        log_count,
        log_bytes,
    })
}

impl StorageProvider for SqliteStorage {
    fn open(
        &self,
        doc_id: &str,
        definition: Option<&WorkspaceDefinition>,
    ) -> Result<Box<dyn DocStorage>, StorageError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| StorageError::Io {
            path: self.dir.display().to_string(),
            source,
        })?;
        let path = self.path_for(doc_id);
        let lock_file = files::take_lock(&path)?;
        let err = sql_err(&path);
        let conn = Connection::open(&path).map_err(&err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(&err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(damaged(
                &path,
                format!("cannot switch to WAL mode (got {mode})"),
            ));
        }
        let sync = if self.options.fsync { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!("PRAGMA synchronous={sync};"))
            .map_err(&err)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(&err)?;
        if check != "ok" {
            return Err(damaged(&path, format!("integrity check: {check}")));
        }
        conn.execute_batch(SCHEMA).map_err(&err)?;
        // The log's size is counted while reading it (no second scan of the log).
        let Stored {
            updates,
            last_seq,
            log_count,
            log_bytes,
        } = read_all(&conn, &path)?;
        let mirror = match definition {
            Some(def) => Some(mirror::Mirror::prepare(&conn, &path, def)?),
            None => None,
        };
        let mirror_fresh = mirror.as_ref().is_some_and(|m| m.fresh);
        let (tx, rx) = mpsc::channel();
        let (committed, _) = watch::channel(Committed::default());
        let committed = Arc::new(committed);
        let writer = Writer {
            conn,
            path: path.clone(),
            options: self.options.clone(),
            mirror,
            committed: committed.clone(),
            faults: self.faults.clone(),
            next_seq: last_seq + 1,
            log_count,
            log_bytes,
            lock_file,
        };
        std::thread::Builder::new()
            .name("epicenter-sqlite".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| StorageError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Box::new(SqliteDoc {
            mirrors: definition.is_some(),
            mirror_fresh,
            loaded: Mutex::new(Some(updates)),
            sender: Mutex::new(Some(tx)),
            appended: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            dropped: AtomicBool::new(false),
            committed,
            max_pending_bytes: self.options.max_pending_bytes,
        }))
    }
}
