//! The writer task of one open doc: takes what has queued up, numbers it under the doc's
//! row lock and commits it in one transaction; retries a failing commit with backoff; folds
//! the log into the snapshot once it has grown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use yrs::Transact;

use super::mirror::{Mirror, MirrorOp};
use super::{PostgresOptions, Shared};
use crate::lock::lock;
use crate::schema::Row;
use crate::storage::RowChange;

pub(crate) enum Msg {
    /// An update to store, with the rows it changed (computed from a doc holding every
    /// update numbered up to `version`).
    Append {
        number: u64,
        update: Vec<u8>,
        rows: Vec<RowChange>,
        version: u64,
    },
    /// Rows that other nodes' updates changed, for the mirror only.
    Rows {
        version: u64,
        rows: Vec<RowChange>,
    },
    /// The whole mirror, from the doc just loaded (numbered like appends: flushes wait
    /// for it).
    Reset {
        number: u64,
        version: u64,
        tables: Vec<(String, Vec<Row>)>,
    },
    Close,
}

/// Stores a batch of one doc's updates (`$1` doc, `$2` how many, `$3` their bytes, `$4`
/// this node) and returns the doc's last number and what its snapshot covers. Numbering
/// locks the doc's row until commit, so numbers are gap-free and appear in commit order.
const STORE: &str = "
    WITH d AS (
        INSERT INTO epicenter_docs (doc, next_seq) VALUES ($1, $2)
        ON CONFLICT (doc) DO UPDATE SET next_seq = epicenter_docs.next_seq + $2
        RETURNING next_seq, folded),
    u AS (
        INSERT INTO epicenter_updates (doc, seq, data, node)
        SELECT $1, d.next_seq - $2 + t.ord, t.data, $4
        FROM d, UNNEST($3::BYTEA[]) WITH ORDINALITY AS t(data, ord))
    SELECT next_seq, folded FROM d";

/// Gives the rows of a batch's own updates the best version they can claim, now that the
/// batch's numbers are known (from `first`): a row computed when the doc held every update
/// before the batch was computed from a doc holding every update up to its own, so it
/// claims its own update's number. Without that, its version would tie with a reset from a
/// load just before it, which could then overwrite it. Others keep the version they had.
/// The doc held every update before the batch when its version reaches the run of this
/// writer's own numbers that ends just before the batch (`own_run`: its own updates are in
/// the doc whatever the version says).
fn own_versions(
    ops: &mut [MirrorOp],
    own: &[(usize, u64, u64)],
    first: u64,
    own_run: Option<(u64, u64)>,
) {
    let lowest = match own_run {
        Some((from, to)) if to + 1 == first => from,
        _ => first,
    };
    for &(at, version, index) in own {
        if let MirrorOp::Change((v, _)) = &mut ops[at] {
            *v = if version + 1 >= lowest {
                version.max(first + index)
            } else {
                version
            };
        }
    }
}

/// Most bytes of updates one commit takes (a single update may be larger).
const MAX_BATCH_BYTES: usize = 64 << 20;

/// Why a commit failed, and whether a retry may cure it.
#[derive(Debug)]
pub(super) struct Failure {
    pub message: String,
    pub permanent: bool,
}

impl Failure {
    /// A failure a retry may cure (the pool, the connection, the mirror's transient errors).
    pub fn transient(e: impl std::fmt::Display) -> Failure {
        Failure {
            message: e.to_string(),
            permanent: false,
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    /// Permanent when the database refused the data or the statement itself (SQLSTATE
    /// classes 22 data exception, 23 integrity, 42 syntax or a missing table, 54 a limit
    /// exceeded, XX internal error); a lost connection, a restart, a deadlock, a full disk
    /// (53) and the like are worth retrying.
    fn from(e: tokio_postgres::Error) -> Failure {
        let permanent = e.code().is_some_and(|c| {
            ["22", "23", "42", "54", "XX"]
                .iter()
                .any(|class| c.code().starts_with(class))
        });
        Failure {
            message: super::describe(&e),
            permanent,
        }
    }
}

/// What is durable so far.
#[derive(Debug, Clone, Default)]
pub(crate) struct Committed {
    /// Every append numbered up to this one is committed.
    pub number: u64,
    /// Set when writing stopped for good.
    pub error: Option<String>,
}

pub(super) struct Writer {
    pub pool: Pool,
    pub shared: Arc<Shared>,
    pub options: PostgresOptions,
    pub mirror: Option<Arc<Mirror>>,
}

impl Writer {
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        // No fold is tried before this number (after one that failed or found another
        // node folding).
        let mut fold_after = 0u64;
        // The numbers of this writer's last commits, while they follow each other.
        let mut own_run: Option<(u64, u64)> = None;
        let mut closing = false;
        while !closing {
            let Some(first) = rx.recv().await else { break };
            let mut batch = Vec::new();
            let mut ops = Vec::new();
            // The rows of this batch's own updates: (op index, version at append, index
            // of the update in the batch); see `own_versions`.
            let mut own = Vec::new();
            // The highest number in this round (appends and resets).
            let mut numbered = 0;
            let mut batch_bytes = 0usize;
            let mut remote_rows = 0usize;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append {
                        number,
                        update,
                        rows,
                        version,
                    } => {
                        numbered = numbered.max(number);
                        batch_bytes += update.len();
                        for row in rows {
                            own.push((ops.len(), version, batch.len() as u64));
                            ops.push(MirrorOp::Change((version, row)));
                        }
                        batch.push((number, update));
                    }
                    Msg::Rows { version, rows } => {
                        remote_rows += rows.len();
                        ops.extend(rows.into_iter().map(|r| MirrorOp::Change((version, r))));
                    }
                    Msg::Reset {
                        number,
                        version,
                        tables,
                    } => {
                        numbered = numbered.max(number);
                        ops.push(MirrorOp::Reset(version, tables));
                    }
                    Msg::Close => closing = true,
                }
                // Bounded in bytes too: one statement must stay far below Postgres's 1 GB
                // message limit, or a retried batch could never go through.
                if batch.len() < self.options.max_batch && batch_bytes < MAX_BATCH_BYTES && !closing
                {
                    next = rx.try_recv().ok();
                }
            }
            if self.mirror.is_none() {
                ops.clear();
            }
            if batch.is_empty() && ops.is_empty() {
                continue;
            }
            let mut backoff = Duration::from_millis(10);
            let (stored_through, logged) = loop {
                match self.commit_numbered(&batch, &mut ops, &own, own_run).await {
                    Ok(stored) => break stored,
                    Err(Failure {
                        message,
                        permanent: true,
                    }) => {
                        // No retry cures it: every waiting flush fails, and so does every
                        // later write (the doc is refused until it is reopened).
                        tracing::error!(doc = %self.shared.doc, error = %message,
                            "the database refuses this doc's updates for good");
                        self.shared
                            .committed
                            .send_modify(|c| c.error = Some(message));
                        return;
                    }
                    Err(Failure { message: e, .. }) => {
                        tracing::warn!(doc = %self.shared.doc, error = %e, ?backoff, "commit failed; retrying");
                        *lock(&self.shared.retrying) = Some(e);
                        crate::storage::COMMITS.failed();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            };
            *lock(&self.shared.retrying) = None;
            self.shared
                .remote_rows
                .fetch_sub(remote_rows, Ordering::AcqRel);
            if batch.is_empty() {
                self.shared
                    .committed
                    .send_modify(|c| c.number = c.number.max(numbered));
                continue;
            }
            // The doc holds its own updates: if it held everything before them, it now
            // holds everything through them.
            let first = stored_through + 1 - batch.len() as u64;
            own_run = match own_run {
                Some((from, to)) if to + 1 == first => Some((from, stored_through)),
                _ => Some((first, stored_through)),
            };
            let _ = self
                .shared
                .through
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    (t + 1 >= first && t < stored_through).then_some(stored_through)
                });
            let bytes: u64 = batch.iter().map(|(_, u)| u.len() as u64).sum();
            self.shared.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
            // Only forward: a flush waits for its own number, never a later one's.
            self.shared
                .committed
                .send_modify(|c| c.number = c.number.max(numbered));
            self.tell(stored_through, batch);
            // The log's length in the database, whoever wrote it and in how many sessions.
            if logged >= self.options.compact_after_updates && stored_through >= fold_after {
                let folded = compact(&self.pool, &self.shared.doc).await;
                if !matches!(folded, Ok(true)) {
                    if let Err(e) = folded {
                        tracing::warn!(doc = %self.shared.doc, error = %e, "compaction failed");
                    }
                    fold_after = stored_through + (self.options.compact_after_updates / 4).max(1);
                }
            }
        }
    }

    /// Numbers and stores `batch` in one transaction.
    /// Tells the commit listener, if any, of a stored batch (moved, not copied): its
    /// updates numbered up to `last`.
    fn tell(&self, last: u64, batch: Vec<(u64, Vec<u8>)>) {
        let Some(listener) = lock(&self.shared.listener).clone() else {
            return;
        };
        let first = last + 1 - batch.len() as u64;
        let numbered = batch
            .into_iter()
            .enumerate()
            .map(|(i, (_, update))| (first + i as u64, update))
            .collect();
        listener(&self.shared.doc, numbered);
    }

    /// Stores `batch` and the mirror's `ops` in one transaction; returns the number of the
    /// batch's last update and how many updates the doc's log holds (not folded yet).
    async fn commit_numbered(
        &self,
        batch: &[(u64, Vec<u8>)],
        ops: &mut [MirrorOp],
        own: &[(usize, u64, u64)],
        own_run: Option<(u64, u64)>,
    ) -> Result<(u64, u64), Failure> {
        let started = std::time::Instant::now();
        let mut client = self.pool.get().await.map_err(Failure::transient)?;
        let n = batch.len() as i64;
        let data: Vec<&[u8]> = batch.iter().map(|(_, u)| u.as_slice()).collect();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&self.shared.doc, &n, &data, &self.options.node];
        let row = if ops.is_empty() {
            // One statement is one transaction: one round trip (the statement is prepared
            // once per connection).
            let store = client.prepare_cached(STORE).await.map_err(Failure::from)?;
            client
                .query_one(&store, &params)
                .await
                .map_err(Failure::from)?
        } else {
            let mut tx = client.transaction().await.map_err(Failure::from)?;
            let row = if batch.is_empty() {
                None
            } else {
                let store = tx.prepare_cached(STORE).await.map_err(Failure::from)?;
                let row = tx.query_one(&store, &params).await.map_err(Failure::from)?;
                own_versions(
                    ops,
                    own,
                    row.get::<_, i64>(0) as u64 + 1 - batch.len() as u64,
                    own_run,
                );
                Some(row)
            };
            self.write_mirror(&mut tx, ops)
                .await
                .map_err(Failure::transient)?;
            tx.commit().await.map_err(Failure::from)?;
            match row {
                Some(row) => row,
                None => return Ok((0, 0)),
            }
        };
        let last: i64 = row.get(0);
        let folded: i64 = row.get(1);
        crate::storage::COMMITS.committed(started.elapsed());
        Ok((last as u64, (last - folded).max(0) as u64))
    }

    /// Writes the mirror's ops in `tx`.
    async fn write_mirror(
        &self,
        tx: &mut deadpool_postgres::Transaction<'_>,
        ops: &[MirrorOp],
    ) -> Result<(), String> {
        match &self.mirror {
            Some(mirror) => mirror.write(tx, ops).await,
            None => Ok(()),
        }
    }
}

/// Folds a doc's snapshot and log into a new snapshot, under an advisory lock on the doc
/// (another node folding it at the same time skips: false). Updates committed meanwhile
/// keep their place after the new snapshot.
pub(super) async fn compact(pool: &Pool, doc: &str) -> Result<bool, String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 7))",
            &[&doc],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if !locked {
        return Ok(false);
    }
    let numbered = super::read_numbered(&tx, doc, 0)
        .await
        .map_err(|e| super::describe(&e))?;
    let Some(upto) = numbered.last().map(|(n, _)| *n as i64) else {
        return Ok(true);
    };
    if numbered.len() < 2 {
        // Only a snapshot: nothing to fold.
        return Ok(true);
    }
    let updates: Vec<Vec<u8>> = numbered.into_iter().map(|(_, u)| u).collect();
    let folded = tokio::task::spawn_blocking(move || {
        let doc = yrs::Doc::new();
        // Every node skips what does not apply; the fold leaves it out.
        crate::storage::replay_skipping(&doc, &updates);
        let state = crate::storage::full_state(&doc.transact());
        Ok::<_, String>(state)
    })
    .await
    .map_err(|e| e.to_string())??;
    tx.execute(
        "INSERT INTO epicenter_snapshots (doc, upto, data) VALUES ($1, $2, $3)
         ON CONFLICT (doc) DO UPDATE SET upto = $2, data = $3",
        &[&doc, &upto, &folded],
    )
    .await
    .map_err(|e| e.to_string())?;
    tx.execute(
        "DELETE FROM epicenter_updates WHERE doc = $1 AND seq <= $2",
        &[&doc, &upto],
    )
    .await
    .map_err(|e| e.to_string())?;
    tx.execute(
        "UPDATE epicenter_docs SET folded = $2 WHERE doc = $1",
        &[&doc, &upto],
    )
    .await
    .map_err(|e| e.to_string())?;
    tx.commit().await.map(|_| true).map_err(|e| e.to_string())
}
