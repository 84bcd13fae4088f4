//! Persistence providers: where a workspace's doc lives between runs.
//!
//! A [`StorageProvider`] opens the [`DocStorage`] of one doc (a workspace id or a dynamic
//! room). The client hands it every update as the doc commits it, and waits on
//! [`DocStorage::flush`] when it needs to know the updates are durable; that is what the
//! sync layer waits on before it acknowledges, and what `destroy()` waits on before it
//! returns. Two providers ship: [`MemoryStorage`] and, with the `sqlite` feature,
//! [`SqliteStorage`].
//!
//! Before every write the client asks [`DocStorage::admit`], with the doc's write lock
//! held: a storage that cannot take more (commits failing and retried, too much waiting)
//! refuses the write before it touches the doc. A write that was admitted is applied and
//! visible at once, and the storage keeps it until it is durable: a failing commit that
//! can succeed later is retried, so what was visible is stored once storage recovers
//! (only a crash, or a close that gives up after its timeout and says so, loses it).

use std::future::Future;
use std::pin::Pin;

use crate::error::StorageError;
use crate::schema::{Row, WorkspaceDefinition};

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod stats;
pub(crate) mod untrusted;

pub use memory::MemoryStorage;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStorage};
#[cfg(feature = "sqlite")]
#[doc(hidden)]
pub use sqlite::FaultSwitch;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteStorage};
pub use stats::{CommitSnapshot, CommitStats, COMMITS};

/// Runs a pure decoder on untrusted bytes, turning a panic inside it into an error. Some
/// malformed inputs trip assertions in yrs's decoders (debug builds check that client ids
/// fit in 53 bits); decoding holds no lock and touches no shared state, so nothing is left
/// half-done.
pub(crate) fn decode_untrusted<T>(
    decode: impl FnOnce() -> Result<T, String> + std::panic::UnwindSafe,
) -> Result<T, String> {
    std::panic::catch_unwind(decode)
        .unwrap_or_else(|_| Err("malformed input (rejected by the decoder)".into()))
}

/// Decodes a v1 update from untrusted bytes: declared sizes are checked first (see
/// [`untrusted`]), then yrs decodes it.
pub(crate) fn decode_update(bytes: &[u8]) -> Result<yrs::Update, String> {
    use yrs::updates::decoder::Decode;
    untrusted::check_update(bytes)?;
    decode_untrusted(|| yrs::Update::decode_v1(bytes).map_err(|e| e.to_string()))
}

/// Applies an untrusted update in `txn`. Returns whether the update the doc emits for the
/// transaction (what storage keeps and the room fans out) may leave part of it out: yrs
/// integrates items that follow a hole in their client's clocks behind a placeholder the
/// state vector does not cover, and keeps items and deletions whose dependencies are
/// missing pending; neither is in the emitted update until the hole is filled. The caller
/// then stores and fans out the update as received, so nothing acknowledged is lost: a
/// peer (or a reload) applying it ends where this doc is.
pub(crate) fn apply_untrusted(
    txn: &mut yrs::TransactionMut,
    update: yrs::Update,
) -> Result<bool, String> {
    use yrs::ReadTxn;
    let gap = has_gap(&update, &txn.state_vector());
    let pending = pending_state(txn);
    txn.apply_update(update).map_err(|e| e.to_string())?;
    Ok(gap || pending_state(txn) != pending)
}

/// What a doc holds pending, to tell whether an update added to it.
type Pending = Option<(
    Option<(yrs::StateVector, yrs::StateVector, yrs::StateVector)>,
    Option<yrs::IdSet>,
)>;

fn pending_state(txn: &impl yrs::ReadTxn) -> Pending {
    let store = txn.store();
    let (update, ds) = (store.pending_update(), store.pending_ds());
    if update.is_none() && ds.is_none() {
        return None;
    }
    Some((
        update.map(|p| {
            (
                p.missing.clone(),
                p.update.state_vector(),
                p.update.state_vector_lower(),
            )
        }),
        ds.cloned(),
    ))
}

/// Whether `update` inserts items for a client past the clock `sv` has for it, with a hole
/// before them (from the doc's clock, or between the update's own ranges).
pub(crate) fn has_gap(update: &yrs::Update, sv: &yrs::StateVector) -> bool {
    update.insertions(true).iter().any(|(client, ranges)| {
        let mut clock = sv.get(client);
        let mut ranges: Vec<_> = ranges.iter().collect();
        ranges.sort_by_key(|r| r.start);
        ranges.into_iter().any(|r| {
            let gap = r.start > clock;
            clock = clock.max(r.end);
            gap
        })
    })
}

/// The doc's full state as one v1 update, including what it holds pending (waiting for
/// missing updates), which `encode_state_as_update_v1` leaves out: what compaction keeps.
pub(crate) fn full_state(txn: &impl yrs::ReadTxn) -> Vec<u8> {
    use yrs::encoding::write::Write;
    use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
    let state = txn.encode_state_as_update_v1(&yrs::StateVector::default());
    let store = txn.store();
    let mut parts = Vec::new();
    if let Some(pending) = store.pending_update() {
        parts.push(pending.update.encode_v1());
    }
    if let Some(ds) = store.pending_ds() {
        // An update with no blocks, only this delete set.
        let mut encoder = EncoderV1::new();
        encoder.write_var(0u32);
        ds.encode(&mut encoder);
        parts.push(encoder.to_vec());
    }
    if parts.is_empty() {
        return state;
    }
    parts.insert(0, state);
    match yrs::merge_updates_v1(&parts) {
        Ok(merged) => merged,
        Err(e) => {
            tracing::error!(error = %e, "cannot merge the pending updates into the state");
            parts.swap_remove(0)
        }
    }
}

/// Applies stored v1 updates to `doc` in order, one transaction each (many updates in one
/// transaction is quadratic in yrs). On failure, says which update and why.
pub(crate) fn replay<'a>(
    doc: &yrs::Doc,
    updates: impl IntoIterator<Item = &'a Vec<u8>>,
) -> Result<(), String> {
    use yrs::Transact;
    for (n, bytes) in updates.into_iter().enumerate() {
        let update =
            decode_update(bytes).map_err(|e| format!("update #{n} does not decode: {e}"))?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| format!("update #{n} does not apply: {e}"))?;
    }
    Ok(())
}

/// Applies stored v1 updates to `doc` like [`replay`], but skips, loudly, each one that
/// does not decode or apply. For shared storage: several nodes write it, a running node
/// skips such an update when it arrives, and a node opening the doc must not be stopped
/// by it either. Returns how many were skipped.
pub(crate) fn replay_skipping<'a>(
    doc: &yrs::Doc,
    updates: impl IntoIterator<Item = &'a Vec<u8>>,
) -> usize {
    use yrs::Transact;
    let mut skipped = 0;
    for (n, bytes) in updates.into_iter().enumerate() {
        let applied = decode_update(bytes).and_then(|u| {
            doc.transact_mut()
                .apply_update(u)
                .map_err(|e| e.to_string())
        });
        if let Err(e) = applied {
            tracing::error!(update = n, error = %e, "skipping a stored update that does not apply");
            skipped += 1;
        }
    }
    skipped
}

/// Replays what `storage` loaded: skipping what does not apply when the storage is shared
/// (see [`replay_skipping`]), failing on it otherwise (one node's storage checks its data;
/// an update that does not apply means damage).
pub(crate) fn replay_loaded(
    doc: &yrs::Doc,
    updates: &[Vec<u8>],
    storage: &dyn DocStorage,
) -> Result<(), String> {
    if storage.loaded_through().is_some() {
        replay_skipping(doc, updates);
        Ok(())
    } else {
        replay(doc, updates)
    }
}

/// How a doc's storage is doing, from [`DocStorage::status`] (and
/// [`WorkspaceClient::storage_status`](crate::workspace::WorkspaceClient::storage_status)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageStatus {
    /// Bytes of updates handed to the storage and not yet durable.
    pub pending_bytes: u64,
    /// Set while commits fail and are retried (disk full, I/O error, busy): the last
    /// error. Pending updates commit once a retry succeeds.
    pub retrying: Option<String>,
    /// Set once the storage failed for good (damaged data): nothing more becomes durable.
    pub failed: Option<String>,
}

impl StorageStatus {
    /// Whether commits go through (no retry in progress, no final failure).
    pub fn is_healthy(&self) -> bool {
        self.retrying.is_none() && self.failed.is_none()
    }
}

/// The transaction origin of updates that are already stored elsewhere: another node
/// committed them to the storage this node shares, and they reach this doc only to be
/// applied and passed on. The storage observers skip them, so nothing is stored twice;
/// every other origin (local writes, sync connections) is stored. The origin carries the
/// number through which the doc holds every stored update once the transaction commits
/// (see [`remote_origin`]).
pub(crate) const REMOTE_ORIGIN: &[u8] = b"\xECremote";

/// The origin of a transaction applying other nodes' updates, after which the doc holds
/// every update shared storage numbered up to `through`.
#[cfg(any(test, feature = "redis"))]
pub(crate) fn remote_origin(through: u64) -> yrs::Origin {
    let mut bytes = REMOTE_ORIGIN.to_vec();
    bytes.extend_from_slice(&through.to_be_bytes());
    yrs::Origin::from(bytes.as_slice())
}

/// Whether a transaction's origin is a [`remote_origin`].
pub(crate) fn is_remote(origin: Option<&yrs::Origin>) -> bool {
    origin.is_some_and(|o| o.as_ref().starts_with(REMOTE_ORIGIN))
}

/// The `through` of a [`remote_origin`].
pub(crate) fn remote_through(origin: Option<&yrs::Origin>) -> Option<u64> {
    let rest = origin?.as_ref().strip_prefix(REMOTE_ORIGIN)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// Updates with the numbers shared storage gave them, in order.
pub type Numbered = Vec<(u64, Vec<u8>)>;

/// Told of each commit of shared storage: the doc, and its updates with their numbers.
pub type CommitListener = std::sync::Arc<dyn Fn(&str, Numbered) + Send + Sync>;

/// A boxed future, as the object-safe storage traits return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One row's new state for a SQL mirror: `None` when the row is gone or no longer valid.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    /// The table name.
    pub table: String,
    /// The row id.
    pub id: String,
    /// The valid row, or `None`.
    pub row: Option<Row>,
}

/// Opens the storage of docs by id.
pub trait StorageProvider: Send + Sync + 'static {
    /// Opens (blocking) the storage of `doc_id`, exclusively: while the returned storage
    /// is alive, opening the same doc again fails with [`StorageError::InUse`].
    /// `definition` is given for workspace docs (a provider may mirror their tables).
    fn open(
        &self,
        doc_id: &str,
        definition: Option<&WorkspaceDefinition>,
    ) -> Result<Box<dyn DocStorage>, StorageError>;
}

impl<T: StorageProvider + ?Sized> StorageProvider for std::sync::Arc<T> {
    fn open(
        &self,
        doc_id: &str,
        definition: Option<&WorkspaceDefinition>,
    ) -> Result<Box<dyn DocStorage>, StorageError> {
        (**self).open(doc_id, definition)
    }
}

/// The open storage of one doc.
pub trait DocStorage: Send + Sync + 'static {
    /// The stored updates, in order (blocking). Applying them all rebuilds the doc.
    fn load(&self) -> Result<Vec<Vec<u8>>, StorageError>;

    /// Whether [`DocStorage::append`] wants row changes (a SQL mirror).
    fn mirrors_rows(&self) -> bool {
        false
    }

    /// Whether the mirror must be rebuilt after loading (it was just created, or may
    /// not match the stored doc). Default: whenever rows are mirrored.
    fn wants_row_reset(&self) -> bool {
        self.mirrors_rows()
    }

    /// Replaces the whole mirror with these valid rows (called once after loading when
    /// [`DocStorage::wants_row_reset`] says so).
    fn reset_rows(&self, _tables: Vec<(String, Vec<Row>)>) {}

    /// Whether a new write may be applied to the doc now. Asked with the doc's write
    /// transaction held, before the write touches the doc, so it must not block. Errs with
    /// [`StorageError::Unavailable`] while the storage cannot take more (the write is then
    /// refused, never applied), or with the error that stopped it for good. Default: yes.
    fn admit(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// How the storage is doing. Default: healthy, nothing pending.
    fn status(&self) -> StorageStatus {
        StorageStatus::default()
    }

    /// Queues one update (and the rows it changed) for writing. Called inside the doc's
    /// commit, so it must not block; durability is awaited with [`DocStorage::flush`].
    /// An update appended after [`DocStorage::close`] is not stored, and every later
    /// `flush()` fails with [`StorageError::Closed`] instead of claiming durability.
    fn append(&self, update: Vec<u8>, rows: Vec<RowChange>);

    /// Resolves once everything appended before the call is durable. While a provider
    /// retries a failing disk it keeps waiting; it fails only when something appended can
    /// no longer become durable.
    fn flush(&self) -> BoxFuture<Result<(), StorageError>>;

    /// Folds the update log into a snapshot now.
    fn compact(&self) -> BoxFuture<Result<(), StorageError>> {
        Box::pin(async { Ok(()) })
    }

    /// Flushes, then releases the storage (the doc can be opened again afterwards).
    fn close(&self) -> BoxFuture<Result<(), StorageError>>;

    /// Shared storage (several nodes) numbers each doc's updates in commit order. The
    /// number of the last update [`DocStorage::load`] returned (`None`: not numbered).
    fn loaded_through(&self) -> Option<u64> {
        None
    }

    /// Shared storage: every update numbered after `after`, in order, for a node catching
    /// up (a snapshot that folds some of them comes first, numbered as the last it covers).
    fn updates_after(&self, _after: u64) -> BoxFuture<Result<Numbered, StorageError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Shared storage: which store the doc is in. Docs with the same id are in one store,
    /// and any of them answers [`DocStorage::stored_through`] for all. Default 0.
    fn store_id(&self) -> usize {
        0
    }

    /// Shared storage: the number of the last update stored for each of `docs` (a doc with
    /// none is left out), in one question for all; any open doc of the storage answers
    /// for every doc. What a node compares with what it has applied, to catch up.
    fn stored_through(
        &self,
        _docs: Vec<String>,
    ) -> BoxFuture<Result<std::collections::HashMap<String, u64>, StorageError>> {
        Box::pin(async { Ok(std::collections::HashMap::new()) })
    }

    /// Shared storage with a mirror: the rows changed by updates other nodes committed,
    /// just applied here (never stored again), after which the doc holds every update
    /// numbered up to `through`. The mirror converges on rows computed by whichever node
    /// holds the most of the log. Called inside the doc's commit: must not block.
    fn remote_rows(&self, _through: u64, _rows: Vec<RowChange>) {}

    /// Shared storage: calls `listener` after each commit with the numbers and bytes of
    /// the updates it stored (what the node then tells the others).
    fn on_commit(&self, _listener: CommitListener) {}
}
