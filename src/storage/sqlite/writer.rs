//! The writer thread: the only code that writes to a doc's SQLite file.
//!
//! It blocks for one message, then takes everything else already queued and writes it in
//! transactions of up to `max_batch` updates, so under load one fsync covers many updates.
//! After each commit it publishes the highest durable sequence number, which is what
//! `flush()` waits on.
//!
//! A commit that fails for a reason that can pass (disk full, I/O error, database busy or
//! locked, read-only file system) is rolled back and kept: the writer retries it, with
//! what arrives meanwhile, after 10 ms, doubling up to 1 s, until it succeeds. The fault is
//! published while it lasts (`flush()` keeps waiting; `admit()` refuses new writes once
//! `max_pending_bytes` wait). A commit that fails for any other reason (damaged data) is
//! final: the doc then holds changes the file does not, so nothing may claim durability
//! any more. On close, retrying goes on for at most `close_timeout`; what still cannot be
//! committed then is reported lost (the close fails, never silently).

use std::fs::File;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use tokio::sync::{oneshot, watch};
use yrs::Transact;

use super::faults::FaultSwitch;
use super::mirror::Mirror;
use super::{read_all, sql_err, SqliteOptions};
use crate::error::StorageError;
use crate::schema::Row;
use crate::storage::RowChange;

/// The first retry delay of a failing commit; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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

impl Msg {
    fn seq(&self) -> Option<u64> {
        match self {
            Msg::Append { seq, .. } | Msg::Reset { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Msg::Append { update, .. } => update.len() as u64,
            _ => 0,
        }
    }
}

/// What is durable so far, and how the writer is doing.
#[derive(Debug, Clone, Default)]
pub(super) struct Committed {
    /// Every append with a sequence number up to this one is committed.
    pub seq: u64,
    /// Bytes of updates committed so far (to tell how much waits).
    pub bytes: u64,
    /// Set while commits fail and are retried: the last error.
    pub retrying: Option<String>,
    /// Set when a write failed for good; final.
    pub error: Option<String>,
}

/// Whether a failed write may succeed if tried again later (the disk may get space back,
/// an I/O fault pass, a lock be released); damaged data and misuse never heal.
fn transient(e: &StorageError) -> bool {
    use rusqlite::ErrorCode::*;
    match e {
        StorageError::Io { .. } => true,
        StorageError::Sqlite { source, .. } => matches!(
            source.sqlite_error_code(),
            Some(
                DiskFull
                    | SystemIoFailure
                    | DatabaseBusy
                    | DatabaseLocked
                    | CannotOpen
                    | OutOfMemory
                    | ReadOnly
                    | FileLockingProtocolFailed
            )
        ),
        _ => false,
    }
}

pub(super) struct Writer {
    pub conn: Connection,
    pub path: PathBuf,
    pub options: SqliteOptions,
    pub mirror: Option<Mirror>,
    pub committed: Arc<watch::Sender<Committed>>,
    pub faults: FaultSwitch,
    /// The log's next row id (continues after what is stored).
    pub next_seq: i64,
    pub log_count: u64,
    pub log_bytes: u64,
    /// Held until the thread ends: the exclusive-ownership lock.
    pub lock_file: File,
}

/// What the writer has received and not yet finished.
#[derive(Default)]
struct Inbox {
    /// Appends and resets not yet committed, in order.
    work: Vec<Msg>,
    compact_acks: Vec<oneshot::Sender<Result<(), String>>>,
    closing: bool,
    close_ack: Option<oneshot::Sender<()>>,
}

impl Inbox {
    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Compact(ack) => self.compact_acks.push(ack),
            Msg::Close(ack) => {
                self.closing = true;
                self.close_ack = self.close_ack.take().or(ack);
            }
            msg => self.work.push(msg),
        }
    }
}

impl Writer {
    pub fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut inbox = Inbox::default();
        let mut failed = false;
        let mut backoff: Option<Duration> = None;
        let mut give_up_at: Option<Instant> = None;
        loop {
            self.receive(&rx, &mut inbox, backoff);
            if failed {
                // Nothing more can be durable; flushes already fail with the error.
                inbox.work.clear();
            }
            while !failed && !inbox.work.is_empty() {
                let n = inbox.work.len().min(self.options.max_batch.max(1));
                let started = Instant::now();
                match self.write_batch(&inbox.work[..n]) {
                    Ok(()) => {
                        let took = started.elapsed();
                        crate::storage::COMMITS.committed(took);
                        tracing::trace!(elapsed = ?took, "storage commit");
                        let done: Vec<Msg> = inbox.work.drain(..n).collect();
                        let seq = done.iter().filter_map(Msg::seq).max();
                        let bytes: u64 = done.iter().map(Msg::bytes).sum();
                        if backoff.take().is_some() {
                            tracing::info!(path = %self.path.display(), "storage commits again; what waited is stored");
                        }
                        self.committed.send_modify(|c| {
                            c.seq = seq.unwrap_or(c.seq);
                            c.bytes += bytes;
                            c.retrying = None;
                        });
                    }
                    Err(e) if transient(&e) => {
                        crate::storage::COMMITS.failed();
                        let next = backoff.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                        if backoff.is_none() {
                            tracing::error!(path = %self.path.display(), error = %e, "storage write failed; retrying (the writes wait in memory)");
                        }
                        backoff = Some(next);
                        self.committed
                            .send_if_modified(|c| replace(&mut c.retrying, e.to_string()));
                        break;
                    }
                    Err(e) => {
                        crate::storage::COMMITS.failed();
                        tracing::error!(path = %self.path.display(), error = %e, "storage write failed for good; later writes are not durable");
                        self.fail(&mut inbox, &mut failed, e.to_string());
                    }
                }
            }
            self.maybe_compact(&mut inbox, failed || backoff.is_some());
            if !inbox.closing {
                continue;
            }
            if failed || inbox.work.is_empty() {
                break;
            }
            let deadline =
                *give_up_at.get_or_insert_with(|| Instant::now() + self.options.close_timeout);
            if Instant::now() >= deadline {
                let lost = inbox
                    .work
                    .iter()
                    .filter(|m| matches!(m, Msg::Append { .. }))
                    .count();
                let why = self.committed.borrow().retrying.clone().unwrap_or_default();
                let message = format!(
                    "closed while storage was failing: {lost} updates were not stored ({why})"
                );
                tracing::error!(path = %self.path.display(), "{message}");
                self.fail(&mut inbox, &mut failed, message);
                break;
            }
        }
        self.finish(inbox.close_ack, failed);
    }

    /// Waits for work: blocks for the first message when there is nothing to do, or, while
    /// retrying, collects what arrives until the next attempt is due; then takes whatever
    /// else is queued.
    fn receive(&self, rx: &mpsc::Receiver<Msg>, inbox: &mut Inbox, backoff: Option<Duration>) {
        match backoff {
            Some(delay) => {
                let due = Instant::now() + delay;
                while let Some(left) = due.checked_duration_since(Instant::now()) {
                    match rx.recv_timeout(left) {
                        Ok(msg) => inbox.take(msg),
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            inbox.closing = true;
                            // Nothing more can arrive: wait out the delay anyway.
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                            break;
                        }
                    }
                }
            }
            None if inbox.work.is_empty() && !inbox.closing => match rx.recv() {
                Ok(msg) => inbox.take(msg),
                Err(_) => inbox.closing = true,
            },
            None => {}
        }
        while inbox.work.len() < self.options.max_batch.max(1) || backoff.is_some() {
            match rx.try_recv() {
                Ok(msg) => inbox.take(msg),
                Err(_) => break,
            }
        }
    }

    /// Marks the writer failed for good: publishes `error` (flushes fail with it) and drops
    /// the work that cannot be stored.
    fn fail(&self, inbox: &mut Inbox, failed: &mut bool, error: String) {
        *failed = true;
        inbox.work.clear();
        self.committed.send_modify(|c| {
            c.error = Some(error);
            c.retrying = None;
        });
    }

    /// Compacts when due (or asked), unless commits are failing.
    fn maybe_compact(&mut self, inbox: &mut Inbox, unhealthy: bool) {
        let due = self.log_count >= self.options.compact_after_updates
            || self.log_bytes >= self.options.compact_after_bytes;
        let acks = std::mem::take(&mut inbox.compact_acks);
        if unhealthy {
            for ack in acks {
                let _ = ack.send(Err("storage cannot commit now".into()));
            }
            return;
        }
        if !due && acks.is_empty() {
            return;
        }
        let result = self.compact().map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(path = %self.path.display(), error = %e, "compaction failed");
            // Not due again before the log has grown as much once more.
            self.log_count = self
                .log_count
                .saturating_sub(self.options.compact_after_updates);
            self.log_bytes = self
                .log_bytes
                .saturating_sub(self.options.compact_after_bytes);
        }
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }

    /// Releases the file and the lock; a doc opened without a definition that holds
    /// nothing leaves no file behind.
    fn finish(self, close_ack: Option<oneshot::Sender<()>>, failed: bool) {
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        let empty = !failed && self.mirror.is_none() && self.holds_nothing();
        let Writer {
            conn,
            lock_file,
            path,
            ..
        } = self;
        drop(conn);
        if empty {
            super::files::remove_doc(&path, lock_file);
        } else {
            drop(lock_file);
        }
        if let Some(ack) = close_ack {
            let _ = ack.send(());
        }
    }

    fn holds_nothing(&self) -> bool {
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM _epicenter_log) + (SELECT count(*) FROM _epicenter_snapshot)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .is_ok_and(|n| n == 0)
    }

    /// Writes `work` in one transaction. Counters change only once it committed, so a
    /// failed attempt can be retried as it is.
    fn write_batch(&mut self, work: &[Msg]) -> Result<(), StorageError> {
        let err = sql_err(&self.path);
        self.faults.check().map_err(&err)?;
        let tx = self.conn.transaction().map_err(&err)?;
        let (mut seq, mut count, mut bytes) = (self.next_seq, 0u64, 0u64);
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO _epicenter_log (seq, data, crc) VALUES (?1, ?2, ?3)")
                .map_err(&err)?;
            for msg in work {
                match msg {
                    Msg::Append { update, rows, .. } => {
                        let crc = crc32fast::hash(update) as i64;
                        insert.execute(params![seq, update, crc]).map_err(&err)?;
                        seq += 1;
                        count += 1;
                        bytes += update.len() as u64;
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
        tx.commit().map_err(&err)?;
        self.next_seq = seq;
        self.log_count += count;
        self.log_bytes += bytes;
        Ok(())
    }

    /// Folds snapshot + log into a new snapshot (replayed through a doc, so deleted content
    /// is dropped), replacing both in one transaction.
    fn compact(&mut self) -> Result<(), StorageError> {
        let err = sql_err(&self.path);
        self.faults.check().map_err(&err)?;
        let started = Instant::now();
        let tx = self.conn.transaction().map_err(&err)?;
        let stored = read_all(&tx, &self.path)?;
        let (updates, last) = (stored.updates, stored.last_seq);
        let doc = yrs::Doc::new();
        super::super::replay(&doc, &updates).map_err(|detail| StorageError::Damaged {
            path: self.path.display().to_string(),
            detail,
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

/// Sets `slot` to `value`; whether it changed (so watchers wake only on news).
fn replace(slot: &mut Option<String>, value: String) -> bool {
    if slot.as_deref() == Some(value.as_str()) {
        return false;
    }
    *slot = Some(value);
    true
}
