//! The Postgres provider (feature `postgres`): docs stored in a database that several
//! nodes share. Opening is shared, not exclusive: every node may hold the same doc.
//!
//! Each doc has an update log (`epicenter_updates`) numbered per doc under a lock on the
//! doc's row, so the numbers are gap-free and appear in commit order, and a snapshot the
//! log is folded into once it grows (compaction, under an advisory lock, so only one node
//! folds a doc at a time). One writer task per open doc commits whatever has queued up in
//! one transaction (group commit, `synchronous_commit` on): `flush()` resolves once
//! everything appended before it is committed. A failing commit (the database restarting,
//! a network fault) is kept and retried with backoff; writes keep being accepted until
//! `max_pending_bytes` wait, then refused with [`StorageError::Unavailable`].
//!
//! `open` and `load` block (they are called on blocking threads, as the trait says); they
//! must not be called on an async worker.

mod mirror;
mod schema;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, watch};
use tokio_postgres::NoTls;

use super::{BoxFuture, DocStorage, RowChange, StorageProvider, StorageStatus};
use crate::error::StorageError;
use crate::lock::lock;
use crate::schema::WorkspaceDefinition;
use writer::{Committed, Msg, Writer};

/// Tuning for [`PostgresStorage`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most updates one commit takes. Default 1,000.
    pub max_batch: usize,
    /// Fold a doc's log into its snapshot once this node has committed this many updates
    /// to it since opening or the last fold. Default 10,000.
    pub compact_after_updates: u64,
    /// Bytes of updates that may wait for a failing database before new writes are
    /// refused. Default 64 MiB.
    pub max_pending_bytes: u64,
    /// How long closing a doc keeps retrying what waits before it gives up with an error.
    /// Default 10 s.
    pub close_timeout: Duration,
    /// Connections in the pool. Default 16.
    pub pool_size: usize,
    /// This node's name, stored with each update it writes. Default: host name and
    /// process id.
    pub node: String,
    /// Keep a queryable SQL mirror of each workspace's tables: a schema named after the
    /// workspace, a table per workspace table, a typed column per field
    /// (`SELECT * FROM blog.posts`). Default true.
    pub mirror_tables: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "node".into());
        PostgresOptions {
            max_batch: 1000,
            compact_after_updates: 10_000,
            max_pending_bytes: 64 << 20,
            close_timeout: Duration::from_secs(10),
            pool_size: 16,
            node: format!("{host}-{}", std::process::id()),
            mirror_tables: true,
        }
    }
}

/// Stores docs in a Postgres database that several nodes may share.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use epicenter_server::storage::PostgresStorage;
/// use epicenter_server::workspace::{id, text, WorkspaceDefinition};
///
/// let storage = PostgresStorage::connect("host=127.0.0.1 user=postgres dbname=app").await?;
/// let blog = WorkspaceDefinition::builder("blog")
///     .table("posts", [("id", id()), ("title", text())])
///     .build()?;
/// let client = blog.with_storage(storage).create().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStorage {
    pool: Pool,
    /// Tells this database's docs from another's (`DocStorage::store_id`).
    store: Arc<()>,
    options: PostgresOptions,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("node", &self.options.node)
            .finish_non_exhaustive()
    }
}

/// A Postgres error with what the server said (its `Display` alone is "db error").
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{db}"),
        None => e.to_string(),
    }
}

fn unavailable(e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable {
        reason: format!("postgres: {e}"),
    }
}

impl PostgresStorage {
    /// Connects to the database at `url` (a `tokio-postgres` connection string) and
    /// creates or migrates the tables. Call it inside a Tokio runtime.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// [`PostgresStorage::connect`] with options.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StorageError> {
        if options.node.contains('\0') {
            return Err(StorageError::Damaged {
                path: "postgres".into(),
                detail: "the node name has a NUL character, which Postgres text cannot hold".into(),
            });
        }
        let config: tokio_postgres::Config = url.parse().map_err(|e| StorageError::Damaged {
            path: "postgres".into(),
            detail: format!("bad connection string: {e}"),
        })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .build()
            .map_err(unavailable)?;
        let mut client = pool.get().await.map_err(unavailable)?;
        schema::migrate(&mut client).await.map_err(unavailable)?;
        Ok(PostgresStorage {
            pool,
            store: Arc::new(()),
            options,
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

impl StorageProvider for PostgresStorage {
    fn open(
        &self,
        doc_id: &str,
        definition: Option<&WorkspaceDefinition>,
    ) -> Result<Box<dyn DocStorage>, StorageError> {
        if doc_id.contains('\0') {
            // Postgres text cannot hold it: every commit would fail.
            return Err(StorageError::Refused {
                doc: format!("{doc_id:?}"),
                reason: "Postgres text cannot hold a NUL character".into(),
            });
        }
        let mirror = match definition {
            Some(def) if self.options.mirror_tables => {
                let pool = self.pool.clone();
                let prepared = self.runtime.block_on(async move {
                    let mut client = pool.get().await.map_err(unavailable)?;
                    mirror::Mirror::prepare(&mut client, def)
                        .await
                        .map_err(|refusal| match refusal {
                            mirror::Refusal::Definition(reason) => StorageError::Refused {
                                doc: def.id.clone(),
                                reason: format!("its SQL mirror in Postgres: {reason}"),
                            },
                            mirror::Refusal::Database(why) => {
                                unavailable(format!("preparing the mirror of {}: {why}", def.id))
                            }
                        })
                })?;
                Some(Arc::new(prepared))
            }
            _ => None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            doc: doc_id.to_string(),
            tx: Mutex::new(Some(tx)),
            appended: AtomicU64::new(0),
            committed: watch::channel(Committed::default()).0,
            pending_bytes: AtomicU64::new(0),
            retrying: Mutex::new(None),
            closed: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            max_pending_bytes: self.options.max_pending_bytes,
            listener: Mutex::new(None),
            loaded: AtomicU64::new(0),
            through: AtomicU64::new(0),
            remote_rows: Default::default(),
            remote_rows_dropped: AtomicBool::new(false),
        });
        let mirrors = mirror.is_some();
        let writer = Writer {
            pool: self.pool.clone(),
            shared: shared.clone(),
            options: self.options.clone(),
            mirror,
        };
        let task = self.runtime.spawn(writer.run(rx));
        Ok(Box::new(PostgresDoc {
            shared,
            pool: self.pool.clone(),
            runtime: self.runtime.clone(),
            close_timeout: self.options.close_timeout,
            task: Mutex::new(Some(task)),
            mirrors,
            store: Arc::as_ptr(&self.store) as usize,
        }))
    }
}

/// What a doc's handle and its writer share.
pub(super) struct Shared {
    pub doc: String,
    /// To the writer; `None` once closed. Sending under the lock means nothing is sent
    /// after the close message, where the writer would never see it.
    pub tx: Mutex<Option<mpsc::UnboundedSender<Msg>>>,
    /// Updates appended so far (the number of the last one).
    pub appended: AtomicU64,
    pub committed: watch::Sender<Committed>,
    pub pending_bytes: AtomicU64,
    /// The error commits fail with while they are being retried.
    pub retrying: Mutex<Option<String>>,
    pub closed: AtomicBool,
    /// Set when an update arrived after close: it is not stored, and flushes fail.
    pub lost: AtomicBool,
    pub max_pending_bytes: u64,
    /// Told of each commit (see `DocStorage::on_commit`).
    pub listener: Mutex<Option<super::CommitListener>>,
    /// The number of the last update `load` returned.
    pub loaded: AtomicU64,
    /// The doc holds every update numbered up to this one: the version of the rows it
    /// hands the mirror (see `mirror.rs`).
    pub through: AtomicU64,
    /// Rows of other nodes' updates queued for the mirror, and whether some were dropped
    /// (see `remote_rows`).
    pub remote_rows: std::sync::atomic::AtomicUsize,
    pub remote_rows_dropped: AtomicBool,
}

/// Most rows of other nodes' updates that wait for the mirror.
const MAX_REMOTE_ROWS: usize = 100_000;

impl Shared {
    /// Sends to the writer; false once the storage is closed (or its writer stopped).
    fn send(&self, msg: Msg) -> bool {
        lock(&self.tx)
            .as_ref()
            .is_some_and(|tx| tx.send(msg).is_ok())
    }
}

struct PostgresDoc {
    shared: Arc<Shared>,
    pool: Pool,
    runtime: tokio::runtime::Handle,
    close_timeout: Duration,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    mirrors: bool,
    store: usize,
}

impl PostgresDoc {
    /// The snapshot and log of `doc` (from a consistent view), numbered; with `after`,
    /// only what comes after it (the snapshot when it covers anything after it).
    async fn read_async(
        pool: &Pool,
        doc: &str,
        after: i64,
    ) -> Result<super::Numbered, StorageError> {
        let mut client = pool.get().await.map_err(unavailable)?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| unavailable(describe(&e)))?;
        let out = read_numbered(&tx, doc, after)
            .await
            .map_err(|e| unavailable(describe(&e)))?;
        tx.commit().await.map_err(|e| unavailable(describe(&e)))?;
        Ok(out)
    }
}

/// The snapshot (when it covers something after `after`) and the log after it, numbered,
/// read in `tx`. Only a snapshot that covers something new is read: its bytes can be large,
/// and nodes ask every second.
pub(super) async fn read_numbered(
    tx: &tokio_postgres::Transaction<'_>,
    doc: &str,
    after: i64,
) -> Result<super::Numbered, tokio_postgres::Error> {
    let snapshot = tx
        .query_opt(
            "SELECT upto, data FROM epicenter_snapshots WHERE doc = $1 AND upto > $2",
            &[&doc, &after],
        )
        .await?;
    let mut out = Vec::new();
    let mut from = after;
    if let Some(row) = snapshot {
        let upto: i64 = row.get(0);
        out.push((upto as u64, row.get::<_, Vec<u8>>(1)));
        from = upto;
    }
    let rows = tx
        .query(
            "SELECT seq, data FROM epicenter_updates WHERE doc = $1 AND seq > $2 ORDER BY seq",
            &[&doc, &from],
        )
        .await?;
    out.extend(
        rows.into_iter()
            .map(|row| (row.get::<_, i64>(0) as u64, row.get::<_, Vec<u8>>(1))),
    );
    Ok(out)
}

impl DocStorage for PostgresDoc {
    fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        let (pool, doc) = (self.pool.clone(), self.shared.doc.clone());
        let numbered = self
            .runtime
            .block_on(async move { Self::read_async(&pool, &doc, 0).await })?;
        if let Some((last, _)) = numbered.last() {
            self.shared.loaded.store(*last, Ordering::Release);
            self.shared.through.fetch_max(*last, Ordering::AcqRel);
        }
        Ok(numbered.into_iter().map(|(_, update)| update).collect())
    }

    fn loaded_through(&self) -> Option<u64> {
        Some(self.shared.loaded.load(Ordering::Acquire))
    }

    fn updates_after(&self, after: u64) -> BoxFuture<Result<super::Numbered, StorageError>> {
        let (pool, doc) = (self.pool.clone(), self.shared.doc.clone());
        Box::pin(async move { Self::read_async(&pool, &doc, after as i64).await })
    }

    fn mirrors_rows(&self) -> bool {
        self.mirrors
    }

    fn wants_row_reset(&self) -> bool {
        self.mirrors
    }

    fn reset_rows(&self, tables: Vec<(String, Vec<crate::schema::Row>)>) {
        let shared = &self.shared;
        let version = shared.through.load(Ordering::Acquire);
        let number = shared.appended.fetch_add(1, Ordering::AcqRel) + 1;
        let msg = Msg::Reset {
            number,
            version,
            tables,
        };
        if !shared.send(msg) {
            shared.lost.store(true, Ordering::Release);
        }
    }

    fn remote_rows(&self, through: u64, rows: Vec<RowChange>) {
        self.shared.through.fetch_max(through, Ordering::AcqRel);
        if rows.is_empty() {
            return;
        }
        // Bounded: the node that committed these updates wrote their rows itself; these
        // writes only repair rows it computed from a doc that lacked something, which the
        // next open repairs too. While the database is away they are dropped past a bound.
        let queued = self.shared.remote_rows.load(Ordering::Acquire);
        if queued + rows.len() > MAX_REMOTE_ROWS {
            if !self.shared.remote_rows_dropped.swap(true, Ordering::AcqRel) {
                tracing::warn!(doc = %self.shared.doc, "the database is behind: rows of other nodes' updates are left to them");
            }
            return;
        }
        self.shared
            .remote_rows_dropped
            .store(false, Ordering::Release);
        self.shared
            .remote_rows
            .fetch_add(rows.len(), Ordering::AcqRel);
        let version = self.shared.through.load(Ordering::Acquire);
        self.shared.send(Msg::Rows { version, rows });
    }

    fn store_id(&self) -> usize {
        self.store
    }

    fn stored_through(
        &self,
        docs: Vec<String>,
    ) -> BoxFuture<Result<std::collections::HashMap<String, u64>, StorageError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(unavailable)?;
            let rows = client
                .query(
                    "SELECT doc, next_seq FROM epicenter_docs WHERE doc = ANY($1)",
                    &[&docs],
                )
                .await
                .map_err(|e| unavailable(describe(&e)))?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                .collect())
        })
    }

    fn on_commit(&self, listener: super::CommitListener) {
        *lock(&self.shared.listener) = Some(listener);
    }

    fn admit(&self) -> Result<(), StorageError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        if let Some(e) = &shared.committed.borrow().error {
            return Err(StorageError::WriterFailed(e.clone()));
        }
        let pending = shared.pending_bytes.load(Ordering::Acquire);
        if pending >= shared.max_pending_bytes {
            let why = lock(&shared.retrying).clone().unwrap_or_default();
            return Err(StorageError::Unavailable {
                reason: format!("{pending} bytes wait for the database ({why})"),
            });
        }
        Ok(())
    }

    fn status(&self) -> StorageStatus {
        StorageStatus {
            pending_bytes: self.shared.pending_bytes.load(Ordering::Acquire),
            retrying: lock(&self.shared.retrying).clone(),
            failed: self.shared.committed.borrow().error.clone(),
        }
    }

    fn append(&self, update: Vec<u8>, rows: Vec<RowChange>) {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            shared.lost.store(true, Ordering::Release);
            return;
        }
        shared
            .pending_bytes
            .fetch_add(update.len() as u64, Ordering::AcqRel);
        let number = shared.appended.fetch_add(1, Ordering::AcqRel) + 1;
        let version = shared.through.load(Ordering::Acquire);
        let msg = Msg::Append {
            number,
            update,
            rows,
            version,
        };
        if !shared.send(msg) {
            shared.lost.store(true, Ordering::Release);
            tracing::error!(doc = %shared.doc, "an update arrived after the storage was closed; it is not stored");
        }
    }

    fn flush(&self) -> BoxFuture<Result<(), StorageError>> {
        let shared = self.shared.clone();
        let target = shared.appended.load(Ordering::Acquire);
        Box::pin(async move {
            if shared.lost.load(Ordering::Acquire) {
                return Err(StorageError::Closed);
            }
            let mut committed = shared.committed.subscribe();
            let done = committed
                .wait_for(|c| c.number >= target || c.error.is_some())
                .await
                .map_err(|_| StorageError::Closed)?;
            match &done.error {
                Some(e) if done.number < target => Err(StorageError::WriterFailed(e.clone())),
                _ => Ok(()),
            }
        })
    }

    fn compact(&self) -> BoxFuture<Result<(), StorageError>> {
        let (pool, doc) = (self.pool.clone(), self.shared.doc.clone());
        Box::pin(async move {
            writer::compact(&pool, &doc)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn close(&self) -> BoxFuture<Result<(), StorageError>> {
        let shared = self.shared.clone();
        let flushed = self.flush();
        let timeout = self.close_timeout;
        let task = lock(&self.task).take();
        Box::pin(async move {
            let result = match tokio::time::timeout(timeout, flushed).await {
                Ok(result) => result,
                Err(_) => {
                    let waiting =
                        shared.appended.load(Ordering::Acquire) - shared.committed.borrow().number;
                    let why = format!(
                        "{waiting} updates were not stored: the database did not take them \
                         within {timeout:?}"
                    );
                    // Flushes still waiting learn it too, instead of waiting for good.
                    shared
                        .committed
                        .send_modify(|c| c.error = Some(why.clone()));
                    Err(StorageError::WriterFailed(why))
                }
            };
            shared.closed.store(true, Ordering::Release);
            if let Some(tx) = lock(&shared.tx).take() {
                let _ = tx.send(Msg::Close);
            }
            if let Some(task) = task {
                if result.is_ok() {
                    let _ = task.await;
                } else {
                    // Still retrying what the database would not take: the error above
                    // says how much is lost; the writer must not outlive the doc.
                    task.abort();
                }
            }
            result
        })
    }
}
