//! The in-memory provider: no files, but docs survive being closed and opened again for
//! as long as the provider lives (what dynamic rooms need between evictions).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::{BoxFuture, DocStorage, RowChange, StorageProvider};
use crate::error::StorageError;
use crate::workspace::core::lock;
use crate::workspace::WorkspaceDefinition;

/// Merges a doc's updates into one once it holds this many.
const MERGE_AFTER: usize = 256;

#[derive(Default)]
struct Docs {
    updates: HashMap<String, Vec<Vec<u8>>>,
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
            .cloned()
            .unwrap_or_default())
    }

    fn append(&self, update: Vec<u8>, _rows: Vec<RowChange>) {
        if *lock(&self.closed) {
            return;
        }
        let mut docs = lock(&self.docs);
        let log = docs.updates.entry(self.id.clone()).or_default();
        log.push(update);
        if log.len() >= MERGE_AFTER {
            if let Ok(merged) = yrs::merge_updates_v1(log.iter()) {
                *log = vec![merged];
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
