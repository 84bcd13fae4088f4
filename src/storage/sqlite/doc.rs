//! `SqliteDoc`: the open storage of one doc, as the workspace sees it. Appends go to the
//! writer thread over a channel; flushes wait on what the writer publishes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::{oneshot, watch};

use super::writer::{Committed, Msg};
use crate::error::StorageError;
use crate::lock::lock;
use crate::schema::Row;
use crate::storage::{BoxFuture, DocStorage, RowChange, StorageStatus};

pub(super) struct SqliteDoc {
    pub mirrors: bool,
    pub mirror_fresh: bool,
    pub loaded: Mutex<Option<Vec<Vec<u8>>>>,
    /// `None` once closed. The mutex also keeps sequence numbers in channel order.
    pub sender: Mutex<Option<mpsc::Sender<Msg>>>,
    /// The last sequence number sent, and the bytes of all updates sent.
    pub appended: AtomicU64,
    pub appended_bytes: AtomicU64,
    /// Set when an update arrived after close: it is not stored, and flushes fail.
    pub dropped: AtomicBool,
    pub committed: Arc<watch::Sender<Committed>>,
    /// Most bytes of updates that may wait for the disk (see `SqliteOptions`).
    pub max_pending_bytes: u64,
}

impl SqliteDoc {
    fn send(&self, msg: Msg) -> bool {
        match &*lock(&self.sender) {
            Some(tx) => tx.send(msg).is_ok(),
            None => false,
        }
    }

    /// Sends a message that `flush()` waits for, numbered in channel order. Returns false
    /// when the storage is closed.
    fn send_numbered(&self, bytes: usize, msg: impl FnOnce(u64) -> Msg) -> bool {
        let sender = lock(&self.sender);
        let Some(tx) = &*sender else {
            return false;
        };
        let seq = self.appended.fetch_add(1, Ordering::AcqRel) + 1;
        self.appended_bytes
            .fetch_add(bytes as u64, Ordering::AcqRel);
        // The writer only stops after Close, which takes the sender first.
        let _ = tx.send(msg(seq));
        true
    }

    fn wait_for(&self, target: u64) -> BoxFuture<Result<(), StorageError>> {
        let mut rx = self.committed.subscribe();
        let dropped = self.dropped.load(Ordering::Acquire);
        Box::pin(async move {
            if dropped {
                return Err(StorageError::Closed);
            }
            let state = rx
                .wait_for(|c| c.seq >= target || c.error.is_some())
                .await
                .map_err(|_| StorageError::Closed)?;
            match &state.error {
                Some(e) if state.seq < target => Err(StorageError::WriterFailed(e.clone())),
                _ => Ok(()),
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
        self.send_numbered(0, |seq| Msg::Reset { seq, tables });
    }

    fn admit(&self) -> Result<(), StorageError> {
        if lock(&self.sender).is_none() {
            return Err(StorageError::Closed);
        }
        let committed = self.committed.borrow();
        if let Some(e) = &committed.error {
            return Err(StorageError::WriterFailed(e.clone()));
        }
        let pending = self
            .appended_bytes
            .load(Ordering::Acquire)
            .saturating_sub(committed.bytes);
        if pending < self.max_pending_bytes {
            return Ok(());
        }
        let why = committed
            .retrying
            .as_deref()
            .unwrap_or("the disk is slower than the writes");
        Err(StorageError::Unavailable {
            reason: format!(
                "{pending} bytes of updates wait for the disk (at most {} may): {why}",
                self.max_pending_bytes
            ),
        })
    }

    fn status(&self) -> StorageStatus {
        let committed = self.committed.borrow();
        StorageStatus {
            pending_bytes: self
                .appended_bytes
                .load(Ordering::Acquire)
                .saturating_sub(committed.bytes),
            retrying: committed.retrying.clone(),
            failed: committed.error.clone(),
        }
    }

    fn append(&self, update: Vec<u8>, rows: Vec<RowChange>) {
        let bytes = update.len();
        if !self.send_numbered(bytes, |seq| Msg::Append { seq, update, rows }) {
            self.dropped.store(true, Ordering::Release);
            tracing::error!("an update arrived after the storage was closed; it is not stored");
        }
    }

    fn flush(&self) -> BoxFuture<Result<(), StorageError>> {
        let target = self.appended.load(Ordering::Acquire);
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
