//! `WorkspaceClient`: a loaded, live workspace (doc + tables + KV + storage).
//!
//! `create()` returns only after the stored state is loaded into the doc, so nothing can
//! ever read or serve an empty doc over stored data. From then on every committed
//! transaction is handed to the storage, and [`WorkspaceClient::flush`] tells when it is
//! durable. `destroy()` flushes and releases the storage; dropping a client without it
//! still lets the storage finish its queued writes in the background.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use yrs::{Doc, Options, ReadTxn, Transact};

use super::core::{Core, LOCAL_ORIGIN};
use super::kv::KvHandle;
use super::table::TableHandle;
use crate::error::{StorageError, WorkspaceError};
use crate::schema::definition::WorkspaceDefinition;
use crate::storage::{DocStorage, MemoryStorage, StorageProvider};

const UPDATE_OBSERVER: &str = "epicenter-storage";

/// Creates a [`WorkspaceClient`] from a definition and a storage provider.
pub struct ClientBuilder {
    definition: WorkspaceDefinition,
    storage: Arc<dyn StorageProvider>,
}

impl WorkspaceDefinition {
    /// Starts a client of this workspace stored by `storage` (the seed's
    /// `withProviders({ sqlite })`).
    pub fn with_storage(self, storage: impl StorageProvider) -> ClientBuilder {
        ClientBuilder {
            definition: self,
            storage: Arc::new(storage),
        }
    }

    /// Starts a client of this workspace kept in memory only.
    pub fn in_memory(self) -> ClientBuilder {
        self.with_storage(MemoryStorage::new())
    }
}

impl ClientBuilder {
    /// Opens the storage, loads the doc, and returns the live client.
    pub async fn create(self) -> Result<WorkspaceClient, WorkspaceError> {
        self.definition.check()?;
        let ClientBuilder {
            definition,
            storage,
        } = self;
        let task = tokio::task::spawn_blocking(move || open_and_load(definition, storage));
        match task.await {
            Ok(result) => result,
            Err(e) => Err(WorkspaceError::Storage(StorageError::WriterFailed(
                format!("loading panicked: {e}"),
            ))),
        }
    }
}

fn open_and_load(
    definition: WorkspaceDefinition,
    provider: Arc<dyn StorageProvider>,
) -> Result<WorkspaceClient, WorkspaceError> {
    let storage: Arc<dyn DocStorage> = Arc::from(provider.open(&definition.id, Some(&definition))?);
    let updates = storage.load()?;
    let doc = Doc::with_options(Options {
        guid: definition.id.as_str().into(),
        ..Options::default()
    });
    let core = Core::new(definition, doc);
    crate::storage::replay_loaded(&core.doc, &updates, &*storage)
        .map_err(|e| WorkspaceError::BadUpdate(format!("stored {e}")))?;
    if core.doc.transact().store().pending_update().is_some() {
        tracing::warn!(
            workspace = %core.definition.id,
            "stored updates refer to missing earlier updates; that part waits for them"
        );
    }
    core.index_all();
    core.attach();
    // From here on every commit goes to storage (with the rows it changed, for a mirror).
    if storage.mirrors_rows() {
        core.mirror_rows.store(true, Ordering::Release);
    }
    let (s, weak) = (storage.clone(), Arc::downgrade(&core));
    core.doc
        .observe_update_v1(UPDATE_OBSERVER, move |txn, event| {
            let rows = match weak.upgrade() {
                Some(core) if s.mirrors_rows() => core.take_row_changes(),
                _ => Vec::new(),
            };
            // Already stored by the node that committed it: only its rows, for a mirror.
            if let Some(through) = crate::storage::remote_through(txn.origin()) {
                s.remote_rows(through, rows);
                return;
            }
            s.append(event.update.clone(), rows);
        })
        .map_err(|e| WorkspaceError::BadUpdate(format!("cannot observe the doc: {e}")))?;
    let _ = core.storage.set(storage.clone());
    // Arrays index_all could not read are rebuilt now, so the repair is stored.
    core.settle();
    if storage.mirrors_rows() && storage.wants_row_reset() {
        // Rows changed by settle() are already queued; the reset below supersedes them.
        storage.reset_rows(core.all_valid_rows());
    }
    Ok(WorkspaceClient {
        inner: Arc::new(ClientInner {
            core,
            storage,
            destroy: tokio::sync::Mutex::new(false),
        }),
    })
}

/// Dropped without `destroy()`: the storage stays hooked to the doc for as long as the doc
/// lives (table handles and clones of the doc keep it), so whatever it commits is still
/// stored; it is closed when the doc goes.
struct ClientInner {
    core: Arc<Core>,
    storage: Arc<dyn DocStorage>,
    destroy: tokio::sync::Mutex<bool>,
}

/// A live workspace: its doc, table and KV handles, and its storage. Cheap to clone; all
/// clones share one workspace.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use epicenter_server::workspace::{WorkspaceDefinition, id, text};
/// use serde_json::json;
///
/// let blog = WorkspaceDefinition::builder("blog")
///     .table("posts", [("id", id()), ("title", text())])
///     .build()
///     .unwrap();
/// let client = blog.in_memory().create().await.unwrap();
/// let posts = client.table("posts").unwrap();
/// posts.upsert(json!({"id": "1", "title": "Hello"})).unwrap();
/// assert_eq!(posts.count(), 1);
/// client.destroy().await.unwrap();
/// # });
/// ```
#[derive(Clone)]
pub struct WorkspaceClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for WorkspaceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceClient")
            .field("id", &self.id())
            .finish()
    }
}

impl WorkspaceClient {
    /// The workspace id (also the doc guid and the sync room).
    pub fn id(&self) -> &str {
        &self.inner.core.definition.id
    }

    /// The workspace definition.
    pub fn definition(&self) -> &WorkspaceDefinition {
        &self.inner.core.definition
    }

    /// The workspace's doc. Changes made to it directly (by a sync layer, say) reach the
    /// tables, observers and storage like any other.
    pub fn doc(&self) -> &Doc {
        &self.inner.core.doc
    }

    /// A handle on a table.
    pub fn table(&self, name: &str) -> Result<TableHandle, WorkspaceError> {
        Ok(TableHandle {
            core: self.inner.core.clone(),
            index: self.inner.core.table_index(name)?,
        })
    }

    /// Handles on every table, in definition order.
    pub fn tables(&self) -> Vec<TableHandle> {
        (0..self.inner.core.tables.len())
            .map(|index| TableHandle {
                core: self.inner.core.clone(),
                index,
            })
            .collect()
    }

    /// The KV handle.
    pub fn kv(&self) -> KvHandle {
        KvHandle {
            core: self.inner.core.clone(),
        }
    }

    /// Applies a Yjs (v1) update from elsewhere, with `origin`, then deletes any LWW
    /// losers it revealed (in a second, local transaction).
    pub fn apply_update(
        &self,
        update: &[u8],
        origin: impl Into<yrs::Origin>,
    ) -> Result<(), WorkspaceError> {
        self.apply_update_from(update, origin).map(|_| ())
    }

    /// [`WorkspaceClient::apply_update`], returning whether the update the doc emitted for
    /// it (what storage got and observers see) may leave part of it out: items after a hole
    /// in their client's clocks, or waiting for missing dependencies (see
    /// `storage::apply_untrusted`). Storage then also gets the update as received; the
    /// caller forwards it as received too.
    pub(crate) fn apply_update_from(
        &self,
        bytes: &[u8],
        origin: impl Into<yrs::Origin>,
    ) -> Result<bool, WorkspaceError> {
        let core = &self.inner.core;
        core.check_alive()?;
        let update = crate::storage::decode_update(bytes).map_err(WorkspaceError::BadUpdate)?;
        let incomplete = self.apply_in(&mut core.doc.transact_mut_with(origin), bytes, update)?;
        self.settle();
        Ok(incomplete)
    }

    /// [`WorkspaceClient::apply_update_from`] if no transaction is open on the doc now;
    /// `None` (nothing done) otherwise, so an async worker never waits for the doc. It does
    /// not settle: see [`WorkspaceClient::is_settled`].
    pub(crate) fn try_apply_update_from(
        &self,
        bytes: &[u8],
        origin: impl Into<yrs::Origin>,
    ) -> Option<Result<bool, WorkspaceError>> {
        let core = &self.inner.core;
        if let Err(e) = core.check_alive() {
            return Some(Err(e));
        }
        let update = match crate::storage::decode_update(bytes) {
            Ok(update) => update,
            Err(e) => return Some(Err(WorkspaceError::BadUpdate(e))),
        };
        let mut txn = core.doc.try_transact_mut_with(origin).ok()?;
        Some(self.apply_in(&mut txn, bytes, update))
    }

    /// Applies a decoded update in `txn` (the doc's write lock), checking first, under that
    /// lock, that the client is alive and its storage admits the write, so destroy() cannot
    /// be halfway (see `Core::admit_write`); an update the emitted one may leave part of is
    /// stored as received, still under the lock.
    fn apply_in(
        &self,
        txn: &mut yrs::TransactionMut,
        bytes: &[u8],
        update: yrs::Update,
    ) -> Result<bool, WorkspaceError> {
        self.inner.core.admit_write()?;
        let incomplete =
            crate::storage::apply_untrusted(txn, update).map_err(WorkspaceError::BadUpdate)?;
        if incomplete {
            self.inner.storage.append(bytes.to_vec(), Vec::new());
        }
        Ok(incomplete)
    }

    /// Applies an update another node has already stored (see
    /// `storage::REMOTE_ORIGIN`): it changes the doc, its indexes and observers like any
    /// other, and every sync connection gets it, but it is not stored again and never
    /// refused for want of local storage. LWW losers it reveals are settled (a local
    /// transaction, stored as usual).
    #[cfg(any(test, feature = "redis"))]
    /// Once it is in, the doc holds every stored update numbered up to `through`.
    pub(crate) fn apply_remote(&self, bytes: &[u8], through: u64) -> Result<(), WorkspaceError> {
        let core = &self.inner.core;
        core.check_alive()?;
        let update = crate::storage::decode_update(bytes).map_err(WorkspaceError::BadUpdate)?;
        {
            let mut txn = core
                .doc
                .transact_mut_with(crate::storage::remote_origin(through));
            crate::storage::apply_untrusted(&mut txn, update).map_err(WorkspaceError::BadUpdate)?;
        }
        self.settle();
        Ok(())
    }

    /// The client's storage.
    #[cfg(feature = "redis")]
    pub(crate) fn storage(&self) -> &Arc<dyn DocStorage> {
        &self.inner.storage
    }

    /// Whether [`WorkspaceClient::settle`] has nothing to do, if that can be told without
    /// waiting for the doc (`None` while a transaction is open).
    pub(crate) fn is_settled(&self) -> Option<bool> {
        self.inner.core.is_settled()
    }

    /// Deletes LWW losers left by updates applied to the doc directly. Table and KV writes
    /// and [`WorkspaceClient::apply_update`] do this on their own.
    pub fn settle(&self) {
        self.inner.core.settle()
    }

    /// Resolves once every change made so far is durable in storage. While commits fail
    /// and are retried (disk full, say) it keeps waiting; it fails only when a change can
    /// no longer become durable (damaged storage, or a storage that was closed).
    pub async fn flush(&self) -> Result<(), WorkspaceError> {
        Ok(self.inner.storage.flush().await?)
    }

    /// A future that resolves once every change made before this call is durable (unlike
    /// the `async fn`, the point it waits for is fixed now, not when first polled).
    pub(crate) fn flushed(&self) -> crate::storage::BoxFuture<Result<(), StorageError>> {
        self.inner.storage.flush()
    }

    /// How the storage is doing: how much waits for the disk, and whether commits are
    /// failing (and being retried) or failed for good. For health checks.
    pub fn storage_status(&self) -> crate::storage::StorageStatus {
        self.inner.storage.status()
    }

    /// Folds the storage's update log into a snapshot now (it also happens on its own).
    pub async fn compact(&self) -> Result<(), WorkspaceError> {
        Ok(self.inner.storage.compact().await?)
    }

    /// Whether [`WorkspaceClient::destroy`] has been called.
    pub fn is_destroyed(&self) -> bool {
        self.inner.core.destroyed.load(Ordering::Acquire)
    }

    /// Flushes everything to storage and releases it. Later writes fail with
    /// [`WorkspaceError::Destroyed`]. Calling it again does nothing.
    ///
    /// A write racing it either commits first, and is then flushed before this returns (so
    /// its own `flush()` succeeds), or fails with [`WorkspaceError::Destroyed`] without
    /// touching the doc: writes check the flag with the doc's write lock held, and the flag
    /// is set and the storage unhooked under that same lock.
    ///
    /// While storage is failing it keeps retrying (for SQLite, up to
    /// `SqliteOptions::close_timeout`), then fails saying how many updates were not stored.
    pub async fn destroy(&self) -> Result<(), WorkspaceError> {
        let mut done = self.inner.destroy.lock().await;
        if *done {
            return Ok(());
        }
        {
            // Waits for a write in progress to commit (and reach the storage).
            let txn = self.inner.core.doc.transact_mut_with(LOCAL_ORIGIN);
            self.inner.core.destroyed.store(true, Ordering::Release);
            // Under the lock: `Doc::unobserve_update_v1` only tries the lock and may fail.
            txn.unobserve_update_v1(UPDATE_OBSERVER);
        }
        *done = true;
        self.inner.storage.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use yrs::{ReadTxn, StateVector, Transact};

    use crate::storage::{MemoryStorage, StorageProvider};
    use crate::workspace::{id, text, RowResult, WorkspaceDefinition};

    #[tokio::test]
    async fn remote_updates_change_the_doc_and_are_not_stored_again() {
        let blog = || {
            WorkspaceDefinition::builder("blog")
                .table("posts", [("id", id()), ("title", text())])
                .build()
                .unwrap()
        };
        // The update another node committed.
        let other = blog().in_memory().create().await.unwrap();
        other
            .table("posts")
            .unwrap()
            .upsert(json!({"id": "1", "title": "from another node"}))
            .unwrap();
        let update = other
            .doc()
            .transact()
            .encode_state_as_update_v1(&StateVector::default());

        let storage = MemoryStorage::new();
        let here = blog().with_storage(storage.clone()).create().await.unwrap();
        here.apply_remote(&update, 1).unwrap();
        assert!(matches!(
            here.table("posts").unwrap().get("1"),
            RowResult::Valid(row) if row["title"] == "from another node"
        ));
        here.destroy().await.unwrap();
        let stored = storage.open("blog", None).unwrap().load().unwrap();
        assert!(
            stored.is_empty(),
            "a remote update was stored again: {stored:?}"
        );
        other.destroy().await.unwrap();
    }
}
