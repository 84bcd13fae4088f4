//! Dynamic docs: plain Yjs docs created on demand for sync rooms that are not workspaces,
//! loaded from and stored by the server's storage provider.

use std::sync::Arc;

use yrs::{Doc, Options, Origin, Transact};

use crate::error::StorageError;
use crate::storage::{BoxFuture, DocStorage, StorageProvider};

const STORAGE_OBSERVER: &str = "epicenter-storage";

/// A loaded dynamic doc and its storage.
pub(crate) struct DynamicDoc {
    doc: Doc,
    storage: Arc<dyn DocStorage>,
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
        crate::storage::replay(&doc, &updates).map_err(|e| format!("stored {e}"))?;
        let s = storage.clone();
        doc.observe_update_v1(STORAGE_OBSERVER, move |_, event| {
            s.append(event.update.clone(), Vec::new());
        })
        .map_err(|e| format!("cannot observe the doc: {e}"))?;
        Ok(DynamicDoc { doc, storage })
    }

    /// The doc.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// Applies a v1 update with `origin`. Returns whether the update the doc emitted may
    /// leave part of it out (see `storage::apply_untrusted`); it is then stored as received
    /// too.
    pub fn apply(&self, bytes: &[u8], origin: Origin) -> Result<bool, String> {
        apply_and_keep(&self.doc, self.storage.as_ref(), bytes, origin)
    }

    /// [`DynamicDoc::apply`] if no transaction is open on the doc now; `None` (nothing
    /// done) otherwise.
    pub fn try_apply(&self, bytes: &[u8], origin: Origin) -> Option<Result<bool, String>> {
        let applied = {
            let mut txn = self.doc.try_transact_mut_with(origin).ok()?;
            crate::storage::decode_update(bytes)
                .and_then(|update| crate::storage::apply_untrusted(&mut txn, update))
        };
        if let Ok(true) = applied {
            self.storage.append(bytes.to_vec(), Vec::new());
        }
        Some(applied)
    }

    /// Resolves once everything applied so far is durable.
    pub fn flushed(&self) -> BoxFuture<Result<(), StorageError>> {
        self.storage.flush()
    }

    /// Flushes and closes the storage; the doc can be opened again afterwards.
    pub async fn close(&self) -> Result<(), StorageError> {
        let _ = self.doc.unobserve_update_v1(STORAGE_OBSERVER);
        self.storage.close().await
    }
}

/// Applies an untrusted update to a plain doc whose storage gets what the doc emits; an
/// update the emitted one may leave part of is stored as received too. Returns whether it
/// was.
pub(crate) fn apply_and_keep(
    doc: &Doc,
    storage: &dyn DocStorage,
    bytes: &[u8],
    origin: Origin,
) -> Result<bool, String> {
    let update = crate::storage::decode_update(bytes)?;
    let incomplete = crate::storage::apply_untrusted(&mut doc.transact_mut_with(origin), update)?;
    if incomplete {
        storage.append(bytes.to_vec(), Vec::new());
    }
    Ok(incomplete)
}
