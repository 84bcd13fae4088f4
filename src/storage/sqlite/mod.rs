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
//! storage is open, by this process or any other.

mod mirror;
mod writer;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{oneshot, watch};

use super::{BoxFuture, DocStorage, RowChange, StorageProvider};
use crate::error::StorageError;
use crate::workspace::core::lock;
use crate::workspace::{Row, WorkspaceDefinition};
use writer::{Committed, Msg, Writer};

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
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            fsync: true,
            compact_after_updates: 10_000,
            compact_after_bytes: 16 << 20,
            max_batch: 10_000,
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
        }
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

/// Takes the exclusive lock beside the database file.
fn take_lock(path: &Path) -> Result<File, StorageError> {
    let lock_path = path.with_extension("db.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| StorageError::Io {
            path: lock_path.display().to_string(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::InUse {
            path: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StorageError::Io {
            path: lock_path.display().to_string(),
            source,
        }),
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

/// Reads the snapshot and log, checking every checksum.
pub(super) fn read_all(
    conn: &Connection,
    path: &Path,
) -> Result<(Vec<Vec<u8>>, i64), StorageError> {
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
        out.push(data);
    }
    Ok((out, last))
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
        let lock_file = take_lock(&path)?;
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
        let (updates, last_seq) = read_all(&conn, &path)?;
        let (log_count, log_bytes): (i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM _epicenter_log",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(&err)?;
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
            next_seq: last_seq + 1,
            log_count: log_count as u64,
            log_bytes: log_bytes as u64,
            lock_file,
        };
        std::thread::Builder::new()
            .name(format!("epicenter-sqlite-{doc_id}"))
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
            committed,
        }))
    }
}

struct SqliteDoc {
    mirrors: bool,
    mirror_fresh: bool,
    loaded: Mutex<Option<Vec<Vec<u8>>>>,
    /// `None` once closed. The mutex also keeps sequence numbers in channel order.
    sender: Mutex<Option<mpsc::Sender<Msg>>>,
    appended: AtomicU64,
    committed: Arc<watch::Sender<Committed>>,
}

impl SqliteDoc {
    fn send(&self, msg: Msg) -> bool {
        match &*lock(&self.sender) {
            Some(tx) => tx.send(msg).is_ok(),
            None => false,
        }
    }

    /// Sends a message that `flush()` waits for, numbered in channel order.
    fn send_numbered(&self, msg: impl FnOnce(u64) -> Msg) {
        let sender = lock(&self.sender);
        if let Some(tx) = &*sender {
            let seq = self
                .appended
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
                + 1;
            let _ = tx.send(msg(seq));
        }
    }

    fn wait_for(&self, target: u64) -> BoxFuture<Result<(), StorageError>> {
        let mut rx = self.committed.subscribe();
        Box::pin(async move {
            let state = rx
                .wait_for(|c| c.seq >= target || c.error.is_some())
                .await
                .map_err(|_| StorageError::Closed)?;
            match &state.error {
                Some(e) => Err(StorageError::WriterFailed(e.clone())),
                None => Ok(()),
            }
        })
    }
}

impl DocStorage for SqliteDoc {
    fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        Ok(lock(&self.loaded).take().unwrap_or_default())
    }

    fn mirrors_rows(&self) -> bool {
        self.mirrors
    }

    fn wants_row_reset(&self) -> bool {
        self.mirror_fresh
    }

    fn reset_rows(&self, tables: Vec<(String, Vec<Row>)>) {
        self.send_numbered(|seq| Msg::Reset { seq, tables });
    }

    fn append(&self, update: Vec<u8>, rows: Vec<RowChange>) {
        self.send_numbered(|seq| Msg::Append { seq, update, rows });
    }

    fn flush(&self) -> BoxFuture<Result<(), StorageError>> {
        let target = self.appended.load(std::sync::atomic::Ordering::Acquire);
        self.wait_for(target)
    }

    fn compact(&self) -> BoxFuture<Result<(), StorageError>> {
        let (ack, done) = oneshot::channel();
        let sent = self.send(Msg::Compact(ack));
        Box::pin(async move {
            if !sent {
                return Err(StorageError::Closed);
            }
            done.await
                .map_err(|_| StorageError::Closed)?
                .map_err(StorageError::WriterFailed)
        })
    }

    fn close(&self) -> BoxFuture<Result<(), StorageError>> {
        let (ack, done) = oneshot::channel();
        let flushed = self.flush();
        let sent = match lock(&self.sender).take() {
            Some(tx) => tx.send(Msg::Close(Some(ack))).is_ok(),
            None => false,
        };
        Box::pin(async move {
            let result = flushed.await;
            if sent {
                // The writer acknowledges after it released the file and the lock.
                let _ = done.await;
            }
            result
        })
    }
}

impl Drop for SqliteDoc {
    fn drop(&mut self) {
        if let Some(tx) = lock(&self.sender).take() {
            let _ = tx.send(Msg::Close(None));
        }
    }
}
