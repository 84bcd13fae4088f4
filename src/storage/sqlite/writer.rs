//! The writer thread: the only code that writes to a doc's SQLite file.
//!
//! It blocks for one message, then takes everything else already queued (up to
//! `max_batch`) and writes it all in one transaction, so under load one fsync covers many
//! updates. After each commit it publishes the highest durable sequence number, which is
//! what `flush()` waits on. A failed commit is published too and is final: the in-memory
//! doc then holds changes the file does not, so nothing may claim durability any more.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use rusqlite::{params, Connection};
use tokio::sync::{oneshot, watch};
use yrs::Transact;

use super::mirror::Mirror;
use super::{read_all, sql_err, SqliteOptions};
use crate::storage::RowChange;
use crate::workspace::Row;

pub(super) enum Msg {
    Append {
        seq: u64,
        update: Vec<u8>,
        rows: Vec<RowChange>,
    },
    Reset {
        seq: u64,
        tables: Vec<(String, Vec<Row>)>,
    },
    Compact(oneshot::Sender<Result<(), String>>),
    Close(Option<oneshot::Sender<()>>),
}

/// What is durable so far.
#[derive(Debug, Clone, Default)]
pub(super) struct Committed {
    /// Every append with a sequence number up to this one is committed.
    pub seq: u64,
    /// Set when a write failed; final.
    pub error: Option<String>,
}

pub(super) struct Writer {
    pub conn: Connection,
    pub path: PathBuf,
    pub options: SqliteOptions,
    pub mirror: Option<Mirror>,
    pub committed: Arc<watch::Sender<Committed>>,
    /// The log's next row id (continues after what is stored).
    pub next_seq: i64,
    pub log_count: u64,
    pub log_bytes: u64,
    /// Held until the thread ends: the exclusive-ownership lock.
    pub lock_file: File,
}

impl Writer {
    pub fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut close_ack = None;
        let mut failed = false;
        'outer: while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < self.options.max_batch {
                match rx.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            let mut compact_acks = Vec::new();
            let mut closing = false;
            let mut max_seq = None;
            let mut work = Vec::new();
            for msg in batch {
                match msg {
                    Msg::Append { seq, .. } | Msg::Reset { seq, .. } => {
                        max_seq = Some(seq);
                        work.push(msg);
                    }
                    Msg::Compact(ack) => compact_acks.push(ack),
                    Msg::Close(ack) => {
                        close_ack = ack;
                        closing = true;
                    }
                }
            }
            if !failed && !work.is_empty() {
                let started = std::time::Instant::now();
                match self.write_batch(work) {
                    Ok(()) => {
                        let took = started.elapsed();
                        crate::storage::COMMITS.committed(took);
                        tracing::trace!(elapsed = ?took, "storage commit");
                        if let Some(seq) = max_seq {
                            self.committed.send_modify(|c| c.seq = seq);
                        }
                    }
                    Err(e) => {
                        crate::storage::COMMITS.failed();
                        failed = true;
                        tracing::error!(path = %self.path.display(), error = %e, "storage write failed; later writes are not durable");
                        self.committed
                            .send_modify(|c| c.error = Some(e.to_string()));
                    }
                }
            }
            let due = self.log_count >= self.options.compact_after_updates
                || self.log_bytes >= self.options.compact_after_bytes;
            if !failed && (due || !compact_acks.is_empty()) {
                let result = self.compact().map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::error!(path = %self.path.display(), error = %e, "compaction failed");
                }
                for ack in compact_acks {
                    let _ = ack.send(result.clone());
                }
            } else {
                for ack in compact_acks {
                    let _ = ack.send(Err("the storage writer has failed".into()));
                }
            }
            if closing {
                break 'outer;
            }
        }
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        let Writer {
            conn, lock_file, ..
        } = self;
        drop(conn);
        drop(lock_file);
        if let Some(ack) = close_ack {
            let _ = ack.send(());
        }
    }

    fn write_batch(&mut self, work: Vec<Msg>) -> Result<(), crate::error::StorageError> {
        let err = sql_err(&self.path);
        let tx = self.conn.transaction().map_err(&err)?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO _epicenter_log (seq, data, crc) VALUES (?1, ?2, ?3)")
                .map_err(&err)?;
            for msg in &work {
                match msg {
                    Msg::Append { update, rows, .. } => {
                        let crc = crc32fast::hash(update) as i64;
                        insert
                            .execute(params![self.next_seq, update, crc])
                            .map_err(&err)?;
                        self.next_seq += 1;
                        self.log_count += 1;
                        self.log_bytes += update.len() as u64;
                        if let Some(mirror) = &self.mirror {
                            mirror.apply(&tx, rows).map_err(&err)?;
                        }
                    }
                    Msg::Reset { tables, .. } => {
                        if let Some(mirror) = &self.mirror {
                            mirror.reset(&tx, tables).map_err(&err)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        tx.commit().map_err(&err)
    }

    /// Folds snapshot + log into a new snapshot (replayed through a doc, so deleted content
    /// is dropped), replacing both in one transaction.
    fn compact(&mut self) -> Result<(), crate::error::StorageError> {
        let err = sql_err(&self.path);
        let started = std::time::Instant::now();
        let tx = self.conn.transaction().map_err(&err)?;
        let (updates, last) = read_all(&tx, &self.path)?;
        let doc = yrs::Doc::new();
        super::super::replay(&doc, &updates).map_err(|detail| {
            crate::error::StorageError::Damaged {
                path: self.path.display().to_string(),
                detail,
            }
        })?;
        let snapshot = super::super::full_state(&doc.transact());
        let crc = crc32fast::hash(&snapshot) as i64;
        tx.execute(
            "INSERT OR REPLACE INTO _epicenter_snapshot (id, data, crc, upto) VALUES (1, ?1, ?2, ?3)",
            params![snapshot, crc, last],
        )
        .map_err(&err)?;
        tx.execute("DELETE FROM _epicenter_log WHERE seq <= ?1", params![last])
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        tracing::debug!(
            path = %self.path.display(),
            folded = updates.len(),
            snapshot_bytes = snapshot.len(),
            elapsed = ?started.elapsed(),
            "compacted"
        );
        self.log_count = 0;
        self.log_bytes = 0;
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);");
        Ok(())
    }
}
