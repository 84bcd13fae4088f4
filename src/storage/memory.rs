//! The in-memory provider: no files, but docs survive being closed and opened again for
//! as long as the provider lives (what dynamic rooms need between evictions).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::{BoxFuture, DocStorage, RowChange, StorageProvider};
use crate::error::StorageError;
use crate::workspace::core::lock;
use crate::workspace::WorkspaceDefinition;

/// A doc's log is merged into its base once it holds at least this many bytes and at
/// least as many as the base: merging then costs O(total size) over the doc's life.
const MERGE_MIN_BYTES: usize = 64 << 10;

/// Folds updates into one by replaying them through a doc (which also drops deleted
/// content). `None` if one does not decode or apply.
fn fold<'a>(updates: impl Iterator<Item = &'a Vec<u8>>) -> Option<Vec<u8>> {
    use yrs::Transact;
    let doc = yrs::Doc::new();
    super::replay(&doc, updates).ok()?;
    let folded = super::full_state(&doc.transact());
    Some(folded)
}

#[derive(Default)]
struct Stored {
    base: Vec<Vec<u8>>,
    log: Vec<Vec<u8>>,
    base_bytes: usize,
    log_bytes: usize,
}

#[derive(Default)]
struct Docs {
    updates: HashMap<String, Stored>,
    open: HashSet<String>,
}

/// Keeps docs in memory. Clones share the same docs.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    docs: Arc<Mutex<Docs>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
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
            docs: self.docs.clone(),
            id: doc_id.to_string(),
            closed: Mutex::new(false),
        }))
    }
}

struct MemoryDoc {
    docs: Arc<Mutex<Docs>>,
    id: String,
    closed: Mutex<bool>,
}

impl MemoryDoc {
    fn release(&self) {
        let mut closed = lock(&self.closed);
        if !*closed {
            *closed = true;
            lock(&self.docs).open.remove(&self.id);
        }
    }
}

impl DocStorage for MemoryDoc {
    fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        Ok(lock(&self.docs)
            .updates
            .get(&self.id)
            .map(|s| s.base.iter().chain(&s.log).cloned().collect())
            .unwrap_or_default())
    }

    fn append(&self, update: Vec<u8>, _rows: Vec<RowChange>) {
        if *lock(&self.closed) {
            return;
        }
        let mut docs = lock(&self.docs);
        let stored = docs.updates.entry(self.id.clone()).or_default();
        stored.log_bytes += update.len();
        stored.log.push(update);
        if stored.log.len() + stored.base.len() > 1
            && stored.log_bytes >= MERGE_MIN_BYTES.max(stored.base_bytes)
        {
            if let Some(merged) = fold(stored.base.iter().chain(&stored.log)) {
                stored.base_bytes = merged.len();
                stored.base = vec![merged];
                stored.log.clear();
                stored.log_bytes = 0;
            }
        }
    }

    fn flush(&self) -> BoxFuture<Result<(), StorageError>> {
        Box::pin(async { Ok(()) })
    }

    fn close(&self) -> BoxFuture<Result<(), StorageError>> {
        self.release();
        Box::pin(async { Ok(()) })
    }
}

impl Drop for MemoryDoc {
    fn drop(&mut self) {
        self.release();
    }
}
