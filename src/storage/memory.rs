//! The in-memory provider: no files, but docs survive being closed and opened again for
//! as long as the provider lives (what dynamic rooms need between evictions).
//!
//! Appends only push the update (they run inside the doc's commit, under its lock). Once
//! the log has grown as large as what came before it, it is sealed and a background fold
//! merges everything sealed into one update, off the commit path: a big doc's commit never
//! replays the doc.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{BoxFuture, DocStorage, RowChange, StorageProvider};
use crate::error::StorageError;
use crate::lock::lock;
use crate::schema::WorkspaceDefinition;

/// The log is sealed for folding once it holds at least this many bytes and at least as
/// many as what was sealed before: merging then costs O(total size) over the doc's life.
const MERGE_MIN_BYTES: usize = 64 << 10;

/// Folds updates into one by replaying them through a doc (which also drops deleted
/// content). `None` if one does not decode or apply.
fn fold<'a>(updates: impl Iterator<Item = &'a Vec<u8>>) -> Option<Vec<u8>> {
    use yrs::Transact;
    #[cfg(test)]
    tests::FOLDS_HERE.with(|n| n.set(n.get() + 1));
    let doc = yrs::Doc::new();
    super::replay(&doc, updates).ok()?;
    let folded = super::full_state(&doc.transact());
    Some(folded)
}

/// A sealed run of updates, shared with a fold in progress.
type Segment = Arc<Vec<Vec<u8>>>;

#[derive(Default)]
struct Stored {
    /// Sealed runs, oldest first (one, once a fold has merged them).
    sealed: Vec<Segment>,
    sealed_bytes: usize,
    /// Whether a fold of the first sealed runs is in progress.
    folding: bool,
    /// Updates appended since the last seal.
    log: Vec<Vec<u8>>,
    log_bytes: usize,
}

impl Stored {
    fn updates(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.sealed.iter().flat_map(|s| s.iter()).chain(&self.log)
    }

    /// Whether the doc holds nothing: no update, or only updates with no content.
    fn is_empty(&self) -> bool {
        self.updates().all(|u| u.as_slice() == [0, 0])
    }
}

#[derive(Default)]
struct Docs {
    updates: HashMap<String, Stored>,
    open: HashSet<String>,
    /// Folds running now (tests wait for them).
    folds: usize,
}

/// Keeps docs in memory. Clones share the same docs. A doc that holds nothing when it is
/// closed is forgotten, so ids that were opened and never written cost nothing.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    docs: Arc<Mutex<Docs>>,
    folded: Arc<tokio::sync::Notify>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many docs hold data (open or not).
    pub fn stored_docs(&self) -> usize {
        lock(&self.docs).updates.len()
    }

    /// Waits until no background fold is running (for tests).
    #[doc(hidden)]
    pub async fn folds_done(&self) {
        loop {
            let notified = self.folded.notified();
            if lock(&self.docs).folds == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl StorageProvider for MemoryStorage {
    fn open(
        &self,
        doc_id: &str,
        _definition: Option<&WorkspaceDefinition>,
    ) -> Result<Box<dyn DocStorage>, StorageError> {
        let mut docs = lock(&self.docs);
        if !docs.open.insert(doc_id.to_string()) {
            return Err(StorageError::InUse {
                path: format!("memory:{doc_id}"),
            });
        }
        Ok(Box::new(MemoryDoc {
            store: self.clone(),
            id: doc_id.to_string(),
            closed: Mutex::new(false),
            dropped: AtomicBool::new(false),
        }))
    }
}

struct MemoryDoc {
    store: MemoryStorage,
    id: String,
    closed: Mutex<bool>,
    /// Set when an update arrived after close: later flushes fail.
    dropped: AtomicBool,
}

impl MemoryDoc {
    fn release(&self) {
        let mut closed = lock(&self.closed);
        if !*closed {
            *closed = true;
            let mut docs = lock(&self.store.docs);
            docs.open.remove(&self.id);
            if docs.updates.get(&self.id).is_some_and(Stored::is_empty) {
                docs.updates.remove(&self.id);
            }
        }
    }
}

/// Seals the log of `id` and starts a background fold if one is due and none is running.
fn maybe_fold(store: &MemoryStorage, docs: &mut Docs, id: &str) {
    let Some(stored) = docs.updates.get_mut(id) else {
        return;
    };
    if stored.log_bytes < MERGE_MIN_BYTES.max(stored.sealed_bytes) {
        return;
    }
    stored.sealed_bytes += stored.log_bytes;
    stored.log_bytes = 0;
    stored
        .sealed
        .push(Arc::new(std::mem::take(&mut stored.log)));
    if stored.folding || stored.sealed.iter().map(|s| s.len()).sum::<usize>() < 2 {
        return;
    }
    stored.folding = true;
    docs.folds += 1;
    let parts = stored.sealed.clone();
    let (store, id) = (store.clone(), id.to_string());
    let job = move || {
        let merged = fold(parts.iter().flat_map(|s| s.iter()));
        let mut docs = lock(&store.docs);
        docs.folds -= 1;
        if let Some(stored) = docs.updates.get_mut(&id) {
            stored.folding = false;
            // Sealed runs only ever grow at the end, so the first `parts.len()` are ours.
            let ours = stored.sealed.len() >= parts.len()
                && stored
                    .sealed
                    .iter()
                    .zip(&parts)
                    .all(|(a, b)| Arc::ptr_eq(a, b));
            if let (true, Some(merged)) = (ours, merged) {
                let rest = stored.sealed.split_off(parts.len());
                stored.sealed = std::iter::once(Arc::new(vec![merged]))
                    .chain(rest)
                    .collect();
                stored.sealed_bytes = stored
                    .sealed
                    .iter()
                    .flat_map(|s| s.iter())
                    .map(Vec::len)
                    .sum();
            }
        }
        drop(docs);
        store.folded.notify_waiters();
    };
    // On a blocking thread: never on the thread that is committing.
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(job);
        }
        Err(_) => {
            if let Err(e) = std::thread::Builder::new()
                .name("epicenter-memory-fold".into())
                .spawn(job)
            {
                tracing::warn!(error = %e, "cannot start a fold; the log stays as it is");
            }
        }
    }
}

impl DocStorage for MemoryDoc {
    fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        Ok(lock(&self.store.docs)
            .updates
            .get(&self.id)
            .map(|s| s.updates().cloned().collect())
            .unwrap_or_default())
    }

    fn append(&self, update: Vec<u8>, _rows: Vec<RowChange>) {
        if *lock(&self.closed) {
            self.dropped.store(true, Ordering::Release);
            tracing::error!(doc = %self.id, "an update arrived after the storage was closed; it is not stored");
            return;
        }
        let mut docs = lock(&self.store.docs);
        let stored = docs.updates.entry(self.id.clone()).or_default();
        stored.log_bytes += update.len();
        stored.log.push(update);
        maybe_fold(&self.store, &mut docs, &self.id);
    }

    fn flush(&self) -> BoxFuture<Result<(), StorageError>> {
        let dropped = self.dropped.load(Ordering::Acquire);
        Box::pin(async move {
            if dropped {
                Err(StorageError::Closed)
            } else {
                Ok(())
            }
        })
    }

    fn close(&self) -> BoxFuture<Result<(), StorageError>> {
        self.release();
        self.flush()
    }
}

impl Drop for MemoryDoc {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use yrs::{Array, ReadTxn, Transact};

    thread_local! {
        /// Folds run on this thread.
        pub(super) static FOLDS_HERE: Cell<usize> = const { Cell::new(0) };
    }

    /// Updates that each push `size` bytes into one array, as a doc emits them.
    fn updates(count: usize, size: usize) -> (yrs::Doc, Vec<Vec<u8>>) {
        let doc = yrs::Doc::new();
        let array = doc.get_or_insert_array("a");
        let mut out = Vec::new();
        for i in 0..count {
            let mut txn = doc.transact_mut();
            let before = txn.state_vector();
            array.push_back(&mut txn, format!("{i}:{}", "x".repeat(size)));
            out.push(txn.encode_state_as_update_v1(&before));
        }
        (doc, out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_never_fold_on_the_committing_thread_and_the_fold_keeps_everything() {
        let store = MemoryStorage::new();
        let storage = store.open("d", None).unwrap();
        let (doc, updates) = updates(400, 1024);
        FOLDS_HERE.with(|n| n.set(0));
        for update in updates {
            storage.append(update, Vec::new());
        }
        assert_eq!(
            FOLDS_HERE.with(Cell::get),
            0,
            "an append folded the log inside the commit"
        );
        store.folds_done().await;
        let loaded = storage.load().unwrap();
        assert!(
            loaded.len() < 400,
            "no fold merged the log: {} updates",
            loaded.len()
        );
        let replica = yrs::Doc::new();
        crate::storage::replay(&replica, &loaded).unwrap();
        let content = |d: &yrs::Doc| {
            let array = d.get_or_insert_array("a");
            let txn = d.transact();
            array
                .iter(&txn)
                .map(|v| v.to_string(&txn))
                .collect::<Vec<_>>()
        };
        assert_eq!(content(&replica), content(&doc));
    }

    #[tokio::test]
    async fn an_append_after_close_makes_flush_fail() {
        let store = MemoryStorage::new();
        let storage = store.open("d", None).unwrap();
        storage.append(vec![1, 2], Vec::new());
        storage.close().await.unwrap();
        storage.append(vec![3, 4], Vec::new());
        assert!(matches!(storage.flush().await, Err(StorageError::Closed)));
    }

    #[tokio::test]
    async fn a_doc_that_holds_nothing_is_forgotten_on_close() {
        let store = MemoryStorage::new();
        let storage = store.open("never-written", None).unwrap();
        storage.close().await.unwrap();
        let storage = store.open("written", None).unwrap();
        let (_, updates) = updates(1, 1);
        storage.append(updates[0].clone(), Vec::new());
        storage.close().await.unwrap();
        assert_eq!(store.stored_docs(), 1);
        let reopened = store.open("written", None).unwrap();
        assert_eq!(reopened.load().unwrap(), updates);
    }
}
