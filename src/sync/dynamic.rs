//! Dynamic docs: plain Yjs docs created on demand for sync rooms that are not workspaces,
//! loaded from and stored by the server's storage provider.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use yrs::{Doc, Options, Origin, Transact};

use crate::error::{StorageError, WorkspaceError};
use crate::storage::{BoxFuture, DocStorage, StorageProvider};

const STORAGE_OBSERVER: &str = "epicenter-storage";

/// A loaded dynamic doc and its storage.
pub(crate) struct DynamicDoc {
    doc: Doc,
    storage: Arc<dyn DocStorage>,
    /// Set by `close()` with the doc's write lock held; updates check it under that lock.
    closed: Arc<AtomicBool>,
}

impl DynamicDoc {
    /// Opens the storage of `id` and loads the doc (on a blocking thread).
    pub async fn open(provider: Arc<dyn StorageProvider>, id: String) -> Result<Self, String> {
        let task = tokio::task::spawn_blocking(move || Self::open_blocking(&*provider, &id));
        task.await.map_err(|e| format!("loading panicked: {e}"))?
    }

    fn open_blocking(provider: &dyn StorageProvider, id: &str) -> Result<Self, String> {
        let storage: Arc<dyn DocStorage> = Arc::from(
            provider
                .open(id, None)
                .map_err(|e| format!("cannot open the doc's storage: {e}"))?,
        );
        let updates = storage
            .load()
            .map_err(|e| format!("cannot load the doc: {e}"))?;
        let doc = Doc::with_options(Options {
            guid: id.into(),
            ..Options::default()
        });
        crate::storage::replay_loaded(&doc, &updates, &*storage)
            .map_err(|e| format!("stored {e}"))?;
        let s = storage.clone();
        doc.observe_update_v1(STORAGE_OBSERVER, move |txn, event| {
            // Already stored by the node that committed it.
            if !crate::storage::is_remote(txn.origin()) {
                s.append(event.update.clone(), Vec::new());
            }
        })
        .map_err(|e| format!("cannot observe the doc: {e}"))?;
        Ok(DynamicDoc {
            doc,
            storage,
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The doc.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// Applies a v1 update with `origin`. Returns whether the update the doc emitted may
    /// leave part of it out (see `storage::apply_untrusted`); it is then stored as received
    /// too. Refused, without touching the doc, once the doc is closed
    /// ([`WorkspaceError::Destroyed`]) or while its storage cannot take more
    /// ([`StorageError::Unavailable`]).
    pub fn apply(&self, bytes: &[u8], origin: Origin) -> Result<bool, WorkspaceError> {
        apply_and_keep(&self.doc, self.storage.as_ref(), bytes, origin, || {
            self.alive()
        })
    }

    /// [`DynamicDoc::apply`] if no transaction is open on the doc now; `None` (nothing
    /// done) otherwise.
    pub fn try_apply(&self, bytes: &[u8], origin: Origin) -> Option<Result<bool, WorkspaceError>> {
        let update = match crate::storage::decode_update(bytes) {
            Ok(update) => update,
            Err(e) => return Some(Err(WorkspaceError::BadUpdate(e))),
        };
        let mut txn = self.doc.try_transact_mut_with(origin).ok()?;
        Some(keep_in(
            &mut txn,
            self.storage.as_ref(),
            bytes,
            update,
            || self.alive(),
        ))
    }

    fn alive(&self) -> Result<(), WorkspaceError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(WorkspaceError::Destroyed);
        }
        Ok(())
    }

    /// The doc's storage.
    #[cfg(feature = "redis")]
    pub fn storage(&self) -> &Arc<dyn DocStorage> {
        &self.storage
    }

    /// Applies an update another node has already stored: not stored again (see
    /// `storage::REMOTE_ORIGIN`), refused once the doc is closed.
    #[cfg(feature = "redis")]
    pub fn apply_remote(&self, bytes: &[u8], through: u64) -> Result<(), WorkspaceError> {
        let update = crate::storage::decode_update(bytes).map_err(WorkspaceError::BadUpdate)?;
        let mut txn = self
            .doc
            .transact_mut_with(crate::storage::remote_origin(through));
        self.alive()?;
        crate::storage::apply_untrusted(&mut txn, update).map_err(WorkspaceError::BadUpdate)?;
        Ok(())
    }

    /// Resolves once everything applied so far is durable.
    pub fn flushed(&self) -> BoxFuture<Result<(), StorageError>> {
        self.storage.flush()
    }

    /// Flushes and closes the storage; the doc can be opened again afterwards. An update
    /// racing it is either stored before the storage closes or refused.
    pub async fn close(&self) -> Result<(), StorageError> {
        // Waits for the doc on a blocking thread (a metrics scrape may be reading it):
        // `Doc::unobserve_update_v1` only tries the lock, and would leave the observer
        // writing to a closed storage. The flag is set under the same lock, so an update
        // racing the close is either stored before it or refused.
        let closed = self.closed.clone();
        let unobserved = super::room::in_write_txn(&self.doc, move |txn| {
            closed.store(true, Ordering::Release);
            txn.unobserve_update_v1(STORAGE_OBSERVER);
        });
        if let Err(e) = unobserved.await {
            tracing::error!(error = %e, "cannot stop storing the doc's updates");
        }
        self.storage.close().await
    }
}

/// Applies an untrusted update to a plain doc whose storage gets what the doc emits; an
/// update the emitted one may leave part of is stored as received too. `alive` is checked,
/// and the storage asked to admit the write, with the doc's write lock held, before the
/// update touches the doc. Returns whether the update was stored as received.
pub(crate) fn apply_and_keep(
    doc: &Doc,
    storage: &dyn DocStorage,
    bytes: &[u8],
    origin: Origin,
    alive: impl FnOnce() -> Result<(), WorkspaceError>,
) -> Result<bool, WorkspaceError> {
    let update = crate::storage::decode_update(bytes).map_err(WorkspaceError::BadUpdate)?;
    keep_in(
        &mut doc.transact_mut_with(origin),
        storage,
        bytes,
        update,
        alive,
    )
}

/// [`apply_and_keep`] in an open write transaction.
fn keep_in(
    txn: &mut yrs::TransactionMut,
    storage: &dyn DocStorage,
    bytes: &[u8],
    update: yrs::Update,
    alive: impl FnOnce() -> Result<(), WorkspaceError>,
) -> Result<bool, WorkspaceError> {
    alive()?;
    storage.admit()?;
    let incomplete =
        crate::storage::apply_untrusted(txn, update).map_err(WorkspaceError::BadUpdate)?;
    if incomplete {
        storage.append(bytes.to_vec(), Vec::new());
    }
    Ok(incomplete)
}
