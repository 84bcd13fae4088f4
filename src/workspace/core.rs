//! The shared state of one workspace: its doc, the LWW index of each root array, and the
//! single write path every table and KV change goes through.
//!
//! Reads never touch the doc: they are answered from the indexes, which yrs keeps current
//! by calling our array observers inside every commit (local, remote or loaded). Writes
//! open one doc transaction, delete the entries they replace (and any LWW losers still
//! around), then append the new entries, so each batch is one transaction and one update.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use yrs::{Any, Array, ArrayRef, Doc, Observable, Transact};

use super::clock::Clock;
use super::lww::{entry, runs_descending, LwwIndex};
use crate::error::WorkspaceError;
use crate::lock::lock;
use crate::schema::definition::WorkspaceDefinition;
use crate::schema::validate::Row;

pub use super::rows::RowResult;
pub(crate) use super::rows::{Cells, TableCore, TableState};

/// The origin attached to transactions made through table and KV handles.
pub const LOCAL_ORIGIN: &str = "epicenter-local";

/// [`lock`] without waiting: `None` while another thread holds the mutex.
pub(crate) fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

type RowCallback = Arc<dyn Fn(&BTreeSet<String>) + Send + Sync>;

/// A registered observer; dropping it unregisters the callback.
#[must_use = "dropping the subscription stops the observer"]
pub struct Subscription {
    list: std::sync::Weak<Observers>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(list) = self.list.upgrade() {
            lock(&list.callbacks).retain(|(id, _)| *id != self.id);
        }
    }
}

#[derive(Default)]
pub(crate) struct Observers {
    next: AtomicU64,
    callbacks: Mutex<Vec<(u64, RowCallback)>>,
}

impl Observers {
    pub(crate) fn add(self: &Arc<Self>, f: RowCallback) -> Subscription {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.callbacks).push((id, f));
        Subscription {
            list: Arc::downgrade(self),
            id,
        }
    }

    /// Whether any callback is registered.
    fn any(&self) -> bool {
        !lock(&self.callbacks).is_empty()
    }

    fn notify(&self, changed: &BTreeSet<String>) {
        let callbacks: Vec<RowCallback> = lock(&self.callbacks)
            .iter()
            .map(|(_, f)| f.clone())
            .collect();
        for f in callbacks {
            f(changed);
        }
    }
}

pub(crate) struct KvCore {
    pub array: ArrayRef,
    pub state: Mutex<LwwIndex>,
    pub observers: Arc<Observers>,
}

/// Row changes waiting for the storage's mirror, collected during a commit.
pub(crate) type PendingRows = Mutex<BTreeMap<usize, BTreeSet<String>>>;

/// Everything one workspace's handles share.
pub(crate) struct Core {
    pub definition: WorkspaceDefinition,
    pub doc: Doc,
    pub clock: Arc<Clock>,
    pub tables: Vec<Arc<TableCore>>,
    pub kv: Arc<KvCore>,
    /// Set once the storage wants row changes (after the initial load).
    pub mirror_rows: Arc<AtomicBool>,
    pub pending_rows: Arc<PendingRows>,
    /// Set (with the doc's write transaction held) by `destroy()`.
    pub destroyed: AtomicBool,
    /// The storage, once loading is done: asked before every write whether it can take it.
    pub storage: OnceLock<Arc<dyn crate::storage::DocStorage>>,
}

/// One array's share of a write: entries to add and keys whose entries go.
#[derive(Default)]
pub(crate) struct ArrayWrite {
    pub puts: Vec<(Arc<str>, Any)>,
    pub removes: HashSet<Arc<str>>,
}

/// A write over several arrays, done in one transaction. Key `None` is the KV array.
#[derive(Default)]
pub(crate) struct WritePlan {
    pub arrays: BTreeMap<Option<usize>, ArrayWrite>,
}

impl WritePlan {
    pub fn table(&mut self, index: usize) -> &mut ArrayWrite {
        self.arrays.entry(Some(index)).or_default()
    }
    pub fn kv(&mut self) -> &mut ArrayWrite {
        self.arrays.entry(None).or_default()
    }
}

impl Core {
    /// Builds the core. Its indexes are empty until [`Core::index_all`] and stay current
    /// once [`Core::attach`] has wired the array observers.
    pub fn new(definition: WorkspaceDefinition, doc: Doc) -> Arc<Core> {
        let tables = definition
            .tables
            .iter()
            .map(|def| {
                Arc::new(TableCore {
                    def: def.clone(),
                    field_names: def
                        .fields
                        .iter()
                        .map(|f| Arc::from(f.name.as_str()))
                        .collect(),
                    array: doc.get_or_insert_array(format!("table:{}", def.name)),
                    state: Mutex::default(),
                    observers: Arc::default(),
                })
            })
            .collect();
        let kv = Arc::new(KvCore {
            array: doc.get_or_insert_array("kv"),
            state: Mutex::default(),
            observers: Arc::default(),
        });
        Arc::new(Core {
            definition,
            doc,
            clock: Arc::new(Clock::new()),
            tables,
            kv,
            mirror_rows: Arc::new(AtomicBool::new(false)),
            pending_rows: Arc::default(),
            destroyed: AtomicBool::new(false),
            storage: OnceLock::new(),
        })
    }

    /// Builds every index from the arrays in one pass each: after loading, this is far
    /// cheaper than following the load one transaction at a time.
    /// An array holding wide text (see [`holds_wide_text`]) is left out: it cannot be read
    /// until [`Core::repair`] has rebuilt it.
    pub fn index_all(&self) {
        let txn = self.doc.transact();
        for table in &self.tables {
            if holds_wide_text(&table.array) {
                continue;
            }
            let entries: Vec<yrs::Out> = table.array.iter(&txn).collect();
            let mut state = lock(&table.state);
            let (winners, max_ts) = state.index.bulk_load(&entries);
            self.clock.observe(max_ts);
            table.load_rows(&mut state, winners);
        }
        if holds_wide_text(&self.kv.array) {
            return;
        }
        let entries: Vec<yrs::Out> = self.kv.array.iter(&txn).collect();
        let (_, max_ts) = lock(&self.kv.state).bulk_load(&entries);
        self.clock.observe(max_ts);
    }

    /// The workspace arrays that hold wide text, by name.
    fn arrays_with_wide_text(&self) -> Vec<(String, ArrayRef)> {
        let _txn = self.doc.transact();
        self.tables
            .iter()
            .map(|t| (format!("table:{}", t.def.name), &t.array))
            .chain(std::iter::once(("kv".to_string(), &self.kv.array)))
            .filter(|(_, array)| holds_wide_text(array))
            .map(|(name, array)| (name, array.clone()))
            .collect()
    }

    /// Rebuilds every workspace array that holds wide text (see [`holds_wide_text`]) from
    /// its entries, in one local transaction each: every item is deleted and the entries
    /// (the `{key, val, ts}` maps, in order) are inserted again, so storage and peers get
    /// the repair like any other write, and the index (fed by the deltas) ends up with
    /// exactly the entries. The text, and anything else that is not an entry, is dropped.
    pub fn repair(&self) {
        let broken = self.arrays_with_wide_text();
        for (name, array) in &broken {
            let entries = entries_of(&self.doc, name);
            tracing::warn!(
                workspace = %self.definition.id,
                array = %name,
                entries = entries.len(),
                "the array held text, which no workspace writes (a peer wrote it as a Y.Text); \
                 rebuilt it from its entries"
            );
            let mut txn = self.doc.transact_mut_with(LOCAL_ORIGIN);
            if self.admit_write().is_err() {
                // Not now (destroyed, or storage cannot take it): the next write or load
                // rebuilds it, and no write goes through until then.
                return;
            }
            let len = AsRef::<yrs::branch::Branch>::as_ref(array).content_len();
            array.remove_range(&mut txn, 0, len);
            array.insert_range(&mut txn, 0, entries);
        }
    }

    /// Wires the array observers that keep the indexes current from here on (local,
    /// remote and applied transactions alike). They hold the parts they need, not the
    /// core, so the doc does not keep the core alive.
    pub fn attach(&self) {
        for (i, table) in self.tables.iter().enumerate() {
            let (t, clock, mirror, pending) = (
                table.clone(),
                self.clock.clone(),
                self.mirror_rows.clone(),
                self.pending_rows.clone(),
            );
            table.array.observe("epicenter-index", move |txn, event| {
                // The ids of the rows changed are only collected for someone to tell.
                let report = mirror.load(Ordering::Acquire) || t.observers.any();
                let touched = {
                    let mut state = lock(&t.state);
                    let (changes, max_ts) = state.index.apply_delta(event.delta(txn));
                    clock.observe(max_ts);
                    t.apply_changes(&mut state, changes, report)
                };
                if touched.is_empty() {
                    return;
                }
                if mirror.load(Ordering::Acquire) {
                    lock(&pending)
                        .entry(i)
                        .or_default()
                        .extend(touched.iter().cloned());
                }
                t.observers.notify(&touched);
            });
        }
        let (k, c) = (self.kv.clone(), self.clock.clone());
        self.kv.array.observe("epicenter-index", move |txn, event| {
            let (changes, max_ts) = lock(&k.state).apply_delta(event.delta(txn));
            c.observe(max_ts);
            if !changes.is_empty() {
                let keys: BTreeSet<String> = changes.iter().map(|(k, _)| k.to_string()).collect();
                k.observers.notify(&keys);
            }
        });
    }

    pub fn table_index(&self, name: &str) -> Result<usize, WorkspaceError> {
        self.tables
            .iter()
            .position(|t| t.def.name == name)
            .ok_or_else(|| WorkspaceError::UnknownTable(name.to_string()))
    }

    pub fn check_alive(&self) -> Result<(), WorkspaceError> {
        if self.destroyed.load(Ordering::Acquire) {
            Err(WorkspaceError::Destroyed)
        } else {
            Ok(())
        }
    }

    /// Whether a write may be applied now: the client is alive and its storage can take
    /// it (see [`crate::storage::DocStorage::admit`]). Called with the doc's write
    /// transaction held: `destroy()` sets the flag and unhooks the storage under that same
    /// lock, so a write that passes here is handed to the storage before it closes.
    pub fn admit_write(&self) -> Result<(), WorkspaceError> {
        self.check_alive()?;
        if let Some(storage) = self.storage.get() {
            storage.admit()?;
        }
        Ok(())
    }

    /// Runs `plan` in one transaction. `prepare` runs first inside the transaction (the
    /// doc is then stable), so read-modify-write checks see exactly what they replace.
    pub fn write<F>(&self, prepare: F) -> Result<(), WorkspaceError>
    where
        F: FnOnce(&Core) -> Result<WritePlan, WorkspaceError>,
    {
        self.check_alive()?;
        // Positions in an array with wide text are not the index's: rebuild it first.
        self.repair();
        let mut txn = self.doc.transact_mut_with(LOCAL_ORIGIN);
        self.admit_write()?;
        let plan = prepare(self)?;
        let targets: Vec<(Option<usize>, &ArrayRef)> = self
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (Some(i), &t.array))
            .chain(std::iter::once((None, &self.kv.array)))
            .collect();
        let mut plan = plan;
        for (slot, array) in targets {
            let write = plan.arrays.remove(&slot).unwrap_or_default();
            let positions = {
                let gone = write
                    .removes
                    .iter()
                    .map(|k| &**k)
                    .chain(write.puts.iter().map(|(k, _)| &**k));
                match slot {
                    Some(i) => lock(&self.tables[i].state).index.positions_to_delete(gone),
                    None => lock(&self.kv.state).positions_to_delete(gone),
                }
            };
            for (start, len) in runs_descending(&positions) {
                array.remove_range(&mut txn, start, len);
            }
            if !write.puts.is_empty() {
                let stamps = self.clock.run(write.puts.len());
                let entries: Vec<Any> = write
                    .puts
                    .into_iter()
                    .zip(stamps)
                    .map(|((k, v), ts)| entry(k, v, ts))
                    .collect();
                let len = array.len(&txn);
                array.insert_range(&mut txn, len, entries);
            }
        }
        Ok(())
    }

    /// Whether [`Core::settle`] has nothing to do (no array holds wide text, no index holds
    /// LWW losers), if that can be told without waiting: `None` while a transaction is open.
    /// With the read transaction held no commit runs, so the index locks are free but for
    /// a reader's moment.
    pub fn is_settled(&self) -> Option<bool> {
        let _txn = self.doc.try_transact().ok()?;
        let wide = self
            .tables
            .iter()
            .map(|t| &t.array)
            .chain(std::iter::once(&self.kv.array))
            .any(holds_wide_text);
        let dirty = self
            .tables
            .iter()
            .any(|t| lock(&t.state).index.has_duplicates())
            || lock(&self.kv.state).has_duplicates();
        Some(!wide && !dirty)
    }

    /// Deletes LWW losers left by remote or loaded updates (one transaction, if any).
    pub fn settle(&self) {
        if !self.destroyed.load(Ordering::Acquire) {
            self.repair();
        }
        let dirty = self
            .tables
            .iter()
            .any(|t| lock(&t.state).index.has_duplicates())
            || lock(&self.kv.state).has_duplicates();
        if dirty && !self.destroyed.load(Ordering::Acquire) {
            let _ = self.write(|_| Ok(WritePlan::default()));
        }
    }

    /// Takes the row changes collected for the mirror, with their current rows.
    pub fn take_row_changes(&self) -> Vec<crate::storage::RowChange> {
        let pending = std::mem::take(&mut *lock(&self.pending_rows));
        let mut out = Vec::new();
        for (i, ids) in pending {
            let table = &self.tables[i];
            let state = lock(&table.state);
            for id in ids {
                let row = match table.read(&id, state.rows.get(&id)) {
                    RowResult::Valid(row) => Some(row),
                    _ => None,
                };
                out.push(crate::storage::RowChange {
                    table: table.def.name.clone(),
                    id,
                    row,
                });
            }
        }
        out
    }

    /// Every valid row of every table, for rebuilding a mirror.
    pub fn all_valid_rows(&self) -> Vec<(String, Vec<Row>)> {
        self.tables
            .iter()
            .map(|t| {
                let state = lock(&t.state);
                let rows = state
                    .rows
                    .iter()
                    .filter_map(|(id, cells)| match t.read(id, Some(cells)) {
                        RowResult::Valid(row) => Some(row),
                        _ => None,
                    })
                    .collect();
                (t.def.name.clone(), rows)
            })
            .collect()
    }
}

/// Whether `array` holds text with characters outside ASCII: a peer wrote a Y.Text into a
/// workspace array (no workspace writes text items; entries are `Any` maps). yrs cannot
/// read such an array by index (the doc counts text in UTF-8 bytes, its readers in chars:
/// `ArrayRef::iter` loops forever), and its positions are not the index's. The array's
/// length in items and in bytes differ exactly when it holds such text. Read inside a
/// transaction.
pub(crate) fn holds_wide_text(array: &ArrayRef) -> bool {
    let branch: &yrs::branch::Branch = array.as_ref();
    branch.len() != branch.content_len()
}

/// The `{key, val, ts}` entries of the root array `name`, in order, read without indexing
/// into it: the doc's state is applied to a fresh doc and the entries are taken from the
/// change the array reports.
fn entries_of(doc: &Doc, name: &str) -> Vec<Any> {
    use yrs::updates::decoder::Decode;
    use yrs::ReadTxn;
    let state = doc
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    let fresh = Doc::new();
    let array = fresh.get_or_insert_array(name);
    let entries: Arc<Mutex<Vec<Any>>> = Arc::default();
    let sink = entries.clone();
    array.observe("epicenter-repair", move |txn, event| {
        for change in event.delta(txn) {
            if let yrs::types::Change::Added(values) = change {
                lock(&sink).extend(values.iter().filter_map(|v| match v {
                    yrs::Out::Any(entry @ Any::Map(_)) => Some(entry.clone()),
                    _ => None,
                }));
            }
        }
    });
    match yrs::Update::decode_v1(&state) {
        Ok(update) => {
            if let Err(e) = fresh.transact_mut().apply_update(update) {
                tracing::error!(error = %e, "the doc's own state does not apply to a fresh doc");
            }
        }
        Err(e) => tracing::error!(error = %e, "the doc's own state does not decode"),
    }
    let entries = std::mem::take(&mut *lock(&entries));
    entries
}
