//! The last-write-wins cell store over one root `Y.Array` of `{key, val, ts}` entries.
//!
//! [`LwwIndex`] keeps a copy of the array's entries in array order (`slots`), fed only by
//! the array's change deltas, plus the winning entry per key. Keeping the order lets us
//! (a) apply a delta without rescanning the whole array, and (b) know the exact array
//! position of every entry, which is what yrs needs to delete one. The winner of a key is
//! the entry with the highest `ts`; on equal `ts` the one further right. Keys that hold
//! more than one entry are remembered so the losers can be deleted in a later transaction
//! (deletion needs a write transaction, and deltas arrive inside someone else's commit).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use yrs::types::Change;
use yrs::{Any, Out};

use crate::schema::value::any_as_f64;

/// One array entry, as seen by the index. `key` is `None` for entries that are not
/// `{key: string, ts: number, ...}` maps; they keep their place but take no part.
#[derive(Debug, Clone)]
struct Slot {
    key: Option<Arc<str>>,
    ts: f64,
    val: Any,
}

type FastMap<K, V> = foldhash::HashMap<K, V>;
type FastSet<K> = foldhash::HashSet<K>;

#[derive(Debug, Clone)]
struct KeyState {
    /// The interned key: every slot of this key shares this `Arc`, so scans compare
    /// pointers instead of hashing strings.
    key: Arc<str>,
    /// How many entries the array holds for this key.
    count: u32,
    ts: f64,
    val: Any,
    /// The delta that last touched this key (see `LwwIndex::generation`).
    touched_in: u64,
    /// The key's place in the list `bulk_load` returns, or in the keys the current delta
    /// touched.
    listed_at: u32,
}

impl KeyState {
    /// The state of a key seen for the first time, in `slot`.
    fn first(key: &Arc<str>, slot: &Slot) -> Self {
        KeyState {
            key: key.clone(),
            count: 1,
            ts: slot.ts,
            val: slot.val.clone(),
            touched_in: 0,
            listed_at: 0,
        }
    }
}

/// A key touched by a delta, as `LwwIndex::apply_delta` lists them.
struct Touched {
    key: Arc<str>,
    /// Its winning value before the delta (`None`: it did not exist).
    before: Option<Any>,
    /// For a key the delta created, its value while nothing else in the delta touched it:
    /// then the outcome is known without looking the key up again.
    fresh: Option<Any>,
}

/// Records the first touch of an existing key in this delta (its value before it), or, on
/// a later touch of a key the delta created, that its outcome must be worked out.
fn touch(touched: &mut Vec<Touched>, state: &mut KeyState, generation: u64) {
    if state.touched_in != generation {
        state.touched_in = generation;
        state.listed_at = touched.len() as u32;
        touched.push(Touched {
            key: state.key.clone(),
            before: (state.count > 0).then(|| state.val.clone()),
            fresh: None,
        });
    } else if let Some(t) = touched.get_mut(state.listed_at as usize) {
        t.fresh = None;
    }
}

/// A key whose winning value changed in a delta: `Some(val)` or `None` when removed.
pub(crate) type WinnerChange = (Arc<str>, Option<Any>);

/// The entry list and winners of one LWW array.
#[derive(Debug, Default)]
pub(crate) struct LwwIndex {
    slots: Vec<Slot>,
    keys: FastMap<Arc<str>, KeyState>,
    /// Keys with more than one entry: their losers await deletion.
    duplicates: FastSet<Arc<str>>,
    /// Counts deltas, so a key's first touch in a delta is one comparison, not a lookup.
    generation: u64,
}

/// Parses an array element as an entry.
fn parse(out: &Out) -> Slot {
    let mut slot = Slot {
        key: None,
        ts: 0.0,
        val: Any::Undefined,
    };
    if let Out::Any(Any::Map(map)) = out {
        // One pass over the (three-entry) map is cheaper than three hashed lookups.
        let (mut key, mut ts) = (None, None);
        for (k, v) in map.iter() {
            match (k.as_str(), v) {
                ("key", Any::String(s)) => key = Some(s.clone()),
                ("ts", v) => ts = any_as_f64(v),
                ("val", v) => slot.val = v.clone(),
                _ => {}
            }
        }
        if let (Some(key), Some(ts)) = (key, ts) {
            slot.key = Some(key);
            slot.ts = ts;
        }
    }
    slot
}

/// The shape every entry map has, cloned per entry: cloning a table copies it as laid out,
/// which is cheaper than hashing three keys into a fresh one (and a batch builds thousands).
static ENTRY_SHAPE: LazyLock<HashMap<String, Any>> = LazyLock::new(|| {
    ["key", "val", "ts"]
        .into_iter()
        .map(|k| (k.to_string(), Any::Null))
        .collect()
});

/// Builds the `{key, val, ts}` entry written to the array.
pub(crate) fn entry(key: impl Into<Arc<str>>, val: Any, ts: f64) -> Any {
    let mut map = ENTRY_SHAPE.clone();
    let (mut key, mut val) = (Some(key.into()), Some(val));
    for (name, slot) in map.iter_mut() {
        *slot = match name.as_str() {
            "key" => key.take().map_or(Any::Null, Any::String),
            "val" => val.take().unwrap_or(Any::Null),
            _ => Any::Number(yrs::any::Number::Float(ts)),
        };
    }
    Any::Map(Arc::new(map))
}

impl LwwIndex {
    /// The winning value of `key`.
    pub fn get(&self, key: &str) -> Option<&Any> {
        self.keys.get(key).map(|k| &k.val)
    }

    /// Number of entries in the array (live and loser).
    #[cfg(test)]
    pub fn entry_count(&self) -> usize {
        self.slots.len()
    }

    /// Number of distinct keys.
    #[cfg(test)]
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Whether some key holds more than one entry.
    pub fn has_duplicates(&self) -> bool {
        !self.duplicates.is_empty()
    }

    /// Applies one transaction's delta of the array. Returns the keys whose winner changed
    /// (in the order the delta first touched them) and the largest `ts` among added entries
    /// (for the clock).
    pub fn apply_delta(&mut self, delta: &[Change]) -> (Vec<WinnerChange>, f64) {
        self.generation += 1;
        let generation = self.generation;
        let mut cursor = 0usize;
        // Keys in the order first touched (so one row's cells stay together). A key whose
        // count drops to zero stays in `keys` until the end, so that an entry removed and
        // re-added in one delta (an overwrite) is still one touch.
        let mut touched: Vec<Touched> = Vec::new();
        let mut recompute: FastSet<Arc<str>> = FastSet::default();
        let mut max_ts = 0.0f64;
        for change in delta {
            match change {
                Change::Retain(n) => cursor += *n as usize,
                Change::Removed(n) => {
                    let end = (cursor + *n as usize).min(self.slots.len());
                    for slot in self.slots.drain(cursor..end) {
                        let Some(key) = slot.key else { continue };
                        let Some(state) = self.keys.get_mut(&key) else {
                            continue;
                        };
                        touch(&mut touched, state, generation);
                        state.count = state.count.saturating_sub(1);
                        if state.count == 0 {
                            if !recompute.is_empty() {
                                recompute.remove(&key);
                            }
                        } else if slot.ts >= state.ts {
                            // The winner (or a tie with it) left: find the new one.
                            recompute.insert(key);
                        }
                    }
                }
                Change::Added(values) => {
                    let at = cursor.min(self.slots.len());
                    self.keys.reserve(values.len());
                    touched.reserve(values.len());
                    // Each entry is parsed and indexed in one go, while its key is still in
                    // the cache (a separate pass over thousands of entries misses on each).
                    let mut added: Vec<Slot> = Vec::with_capacity(values.len());
                    for value in values {
                        let mut slot = parse(value);
                        if let Some(key) = &slot.key {
                            max_ts = max_ts.max(slot.ts);
                            match self.keys.get_mut(key) {
                                None => {
                                    let mut state = KeyState::first(key, &slot);
                                    state.touched_in = generation;
                                    state.listed_at = touched.len() as u32;
                                    touched.push(Touched {
                                        key: key.clone(),
                                        before: None,
                                        fresh: Some(slot.val.clone()),
                                    });
                                    self.keys.insert(key.clone(), state);
                                }
                                Some(state) => {
                                    touch(&mut touched, state, generation);
                                    slot.key = Some(state.key.clone());
                                    if state.count == 0 || slot.ts > state.ts {
                                        state.ts = slot.ts;
                                        state.val = slot.val.clone();
                                    } else if slot.ts == state.ts {
                                        // Equal ts: the rightmost wins; positions decide.
                                        recompute.insert(state.key.clone());
                                    }
                                    state.count += 1;
                                }
                            }
                        }
                        added.push(slot);
                    }
                    let n = added.len();
                    self.slots.splice(at..at, added);
                    cursor = at + n;
                }
            }
        }
        if !recompute.is_empty() {
            self.recompute_winners(&recompute);
        }
        let mut changes = Vec::with_capacity(touched.len());
        for Touched { key, before, fresh } in touched {
            if let Some(val) = fresh {
                // New in this delta and not touched again: one entry, this value.
                changes.push((key, Some(val)));
                continue;
            }
            let now = match self.keys.get(&key) {
                Some(state) if state.count > 0 => Some(state),
                Some(_) => {
                    self.keys.remove(&key);
                    None
                }
                None => None,
            };
            match now {
                Some(state) if state.count > 1 => {
                    self.duplicates.insert(state.key.clone());
                }
                _ => {
                    if !self.duplicates.is_empty() {
                        self.duplicates.remove(&key);
                    }
                }
            }
            let changed = match (before, now) {
                (None, None) => false,
                (Some(old), Some(now)) => old != now.val,
                _ => true,
            };
            if changed {
                changes.push((key, now.map(|s| s.val.clone())));
            }
        }
        (changes, max_ts)
    }

    /// Fills an empty index from a whole array at once (after a load), in one pass.
    /// Returns every key's winner, listed in the order keys first appear (so one row's
    /// cells stay together), and the largest `ts`. Cheaper than [`LwwIndex::apply_delta`],
    /// which must also work out what changed.
    pub fn bulk_load(&mut self, entries: &[Out]) -> (Vec<WinnerChange>, f64) {
        debug_assert!(self.slots.is_empty(), "bulk_load fills an empty index");
        let mut max_ts = 0.0f64;
        self.slots = entries.iter().map(parse).collect();
        self.keys.reserve(self.slots.len());
        let mut listed: Vec<WinnerChange> = Vec::with_capacity(self.slots.len());
        for slot in &mut self.slots {
            let Some(key) = &slot.key else { continue };
            max_ts = max_ts.max(slot.ts);
            match self.keys.get_mut(key) {
                Some(state) => {
                    slot.key = Some(state.key.clone());
                    state.count += 1;
                    if state.count == 2 {
                        self.duplicates.insert(state.key.clone());
                    }
                    // Left to right, `>=` makes the rightmost of equal timestamps win.
                    if slot.ts >= state.ts {
                        state.ts = slot.ts;
                        state.val = slot.val.clone();
                        listed[state.listed_at as usize].1 = Some(slot.val.clone());
                    }
                }
                None => {
                    listed.push((key.clone(), Some(slot.val.clone())));
                    let mut state = KeyState::first(key, slot);
                    state.listed_at = (listed.len() - 1) as u32;
                    self.keys.insert(key.clone(), state);
                }
            }
        }
        (listed, max_ts)
    }

    /// Finds the winners of `keys` by scanning the entries in order.
    fn recompute_winners(&mut self, keys: &FastSet<Arc<str>>) {
        let mut best: FastMap<&Arc<str>, &Slot> = FastMap::default();
        for slot in &self.slots {
            let Some(key) = &slot.key else { continue };
            if !keys.contains(key) {
                continue;
            }
            match best.get(key) {
                Some(b) if b.ts > slot.ts => {}
                _ => {
                    best.insert(key, slot);
                }
            }
        }
        for (key, slot) in best {
            if let Some(state) = self.keys.get_mut(key) {
                state.ts = slot.ts;
                state.val = slot.val.clone();
            }
        }
    }

    /// Array positions (ascending) of every entry of the keys in `remove`, plus the losing
    /// entries of every key that holds duplicates. Deleting them (from the highest position
    /// down, before inserting anything) leaves at most one entry per key.
    pub fn positions_to_delete<'a, I>(&self, remove: I) -> Vec<u32>
    where
        I: IntoIterator<Item = &'a str>,
    {
        // Only keys that exist have entries; compare their interned pointers while scanning.
        let remove: FastSet<*const u8> = remove
            .into_iter()
            .filter_map(|k| self.keys.get(k))
            .map(|s| Arc::as_ptr(&s.key) as *const u8)
            .collect();
        let mut out = Vec::new();
        if remove.is_empty() && self.duplicates.is_empty() {
            return out;
        }
        let ptr = |k: &Arc<str>| Arc::as_ptr(k) as *const u8;
        // Winner position per duplicated key: highest ts, rightmost on ties.
        let dups: FastSet<*const u8> = self
            .duplicates
            .iter()
            .filter_map(|k| self.keys.get(k))
            .map(|s| ptr(&s.key))
            .filter(|p| !remove.contains(p))
            .collect();
        let mut winner: FastMap<*const u8, (usize, f64)> = FastMap::default();
        if !dups.is_empty() {
            for (i, slot) in self.slots.iter().enumerate() {
                let Some(key) = &slot.key else { continue };
                let p = ptr(key);
                if dups.contains(&p) {
                    match winner.get(&p) {
                        Some((_, ts)) if *ts > slot.ts => {}
                        _ => {
                            winner.insert(p, (i, slot.ts));
                        }
                    }
                }
            }
        }
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(key) = &slot.key else { continue };
            let p = ptr(key);
            if remove.contains(&p) {
                out.push(i as u32);
            } else if let Some((w, _)) = winner.get(&p) {
                if *w != i {
                    out.push(i as u32);
                }
            }
        }
        out
    }
}

/// Turns ascending positions into `(start, len)` runs, last run first: deleting in this
/// order keeps the earlier positions valid.
pub(crate) fn runs_descending(positions: &[u32]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &p in positions {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == p => *len += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs.reverse();
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Array, Doc, Observable, ReadTxn, Transact};

    /// An index fed by a real doc's array deltas.
    struct Fixture {
        doc: Doc,
        array: yrs::ArrayRef,
        index: Arc<std::sync::Mutex<LwwIndex>>,
    }

    fn fixture(client: u64) -> Fixture {
        let doc = Doc::with_client_id(client);
        let array = doc.get_or_insert_array("table:t");
        let index = Arc::new(std::sync::Mutex::new(LwwIndex::default()));
        let i2 = index.clone();
        array.observe("lww-test", move |txn, e| {
            i2.lock().unwrap().apply_delta(e.delta(txn));
        });
        Fixture { doc, array, index }
    }

    fn push(f: &Fixture, key: &str, val: &str, ts: f64) {
        let mut txn = f.doc.transact_mut();
        f.array.push_back(&mut txn, entry(key, Any::from(val), ts));
    }

    fn value(f: &Fixture, key: &str) -> Option<Any> {
        f.index.lock().unwrap().get(key).cloned()
    }

    fn sync(a: &Fixture, b: &Fixture) {
        let ua = a
            .doc
            .transact()
            .encode_state_as_update_v1(&Default::default());
        let ub = b
            .doc
            .transact()
            .encode_state_as_update_v1(&Default::default());
        b.doc
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(&ua).unwrap())
            .unwrap();
        a.doc
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(&ub).unwrap())
            .unwrap();
    }

    use yrs::updates::decoder::Decode;

    #[test]
    fn higher_ts_wins_regardless_of_order() {
        let f = fixture(1);
        push(&f, "k", "new", 20.0);
        push(&f, "k", "old", 10.0);
        assert_eq!(value(&f, "k"), Some(Any::from("new")));
        let idx = f.index.lock().unwrap();
        assert!(idx.has_duplicates());
        assert_eq!(idx.positions_to_delete([]), vec![1]);
    }

    #[test]
    fn equal_ts_rightmost_wins() {
        let f = fixture(1);
        push(&f, "k", "left", 10.0);
        push(&f, "k", "right", 10.0);
        assert_eq!(value(&f, "k"), Some(Any::from("right")));
        assert_eq!(f.index.lock().unwrap().positions_to_delete([]), vec![0]);
        // Remove the right one: the left becomes the winner again.
        f.array.remove_range(&mut f.doc.transact_mut(), 1, 1);
        assert_eq!(value(&f, "k"), Some(Any::from("left")));
        assert!(!f.index.lock().unwrap().has_duplicates());
    }

    #[test]
    fn equal_ts_from_two_peers_converges() {
        let a = fixture(1);
        let b = fixture(2);
        push(&a, "k", "from-a", 10.0);
        push(&b, "k", "from-b", 10.0);
        sync(&a, &b);
        // Both sides agree on which one is rightmost.
        assert_eq!(value(&a, "k"), value(&b, "k"));
        assert!(value(&a, "k").is_some());
    }

    #[test]
    fn removing_all_entries_removes_the_key() {
        let f = fixture(1);
        push(&f, "a", "1", 1.0);
        push(&f, "b", "2", 2.0);
        let idx_positions = f.index.lock().unwrap().positions_to_delete(["a"]);
        assert_eq!(idx_positions, vec![0]);
        f.array.remove_range(&mut f.doc.transact_mut(), 0, 1);
        assert_eq!(value(&f, "a"), None);
        assert_eq!(value(&f, "b"), Some(Any::from("2")));
        assert_eq!(f.index.lock().unwrap().entry_count(), 1);
    }

    #[test]
    fn malformed_entries_are_kept_in_place_and_ignored() {
        let f = fixture(1);
        {
            let mut txn = f.doc.transact_mut();
            f.array.push_back(&mut txn, Any::from("not a map"));
        }
        push(&f, "k", "v", 1.0);
        let idx = f.index.lock().unwrap();
        assert_eq!(idx.entry_count(), 2);
        assert_eq!(idx.key_count(), 1);
        assert_eq!(idx.positions_to_delete(["k"]), vec![1]);
    }

    #[test]
    fn bulk_load_agrees_with_incremental() {
        let f = fixture(1);
        push(&f, "a", "1", 5.0);
        push(&f, "b", "x", 1.0);
        push(&f, "a", "2", 5.0); // equal ts: rightmost wins
        push(&f, "a", "0", 3.0);
        let entries: Vec<Out> = {
            let txn = f.doc.transact();
            f.array.iter(&txn).collect()
        };
        let mut bulk = LwwIndex::default();
        let (changes, max_ts) = bulk.bulk_load(&entries);
        assert_eq!(max_ts, 5.0);
        let incremental = f.index.lock().unwrap();
        for key in ["a", "b"] {
            assert_eq!(bulk.get(key), incremental.get(key), "{key}");
        }
        assert_eq!(bulk.get("a"), Some(&Any::from("2")));
        assert_eq!(changes.len(), 2);
        assert!(bulk.has_duplicates());
        assert_eq!(
            bulk.positions_to_delete([]),
            incremental.positions_to_delete([])
        );
    }

    /// A delta that creates a key and touches it again (two entries of one new key, a
    /// later and an earlier one) reports the winner once, and the loser awaits deletion.
    #[test]
    fn a_key_created_twice_in_one_delta_reports_its_winner() {
        let doc = Doc::with_client_id(1);
        let array = doc.get_or_insert_array("table:t");
        let index = Arc::new(std::sync::Mutex::new(LwwIndex::default()));
        let seen: Arc<std::sync::Mutex<Vec<WinnerChange>>> = Arc::default();
        let (i2, s2) = (index.clone(), seen.clone());
        array.observe("lww-test", move |txn, e| {
            let (changes, _) = i2.lock().unwrap().apply_delta(e.delta(txn));
            s2.lock().unwrap().extend(changes);
        });
        {
            let mut txn = doc.transact_mut();
            array.insert_range(
                &mut txn,
                0,
                [
                    entry("a", Any::from("later"), 5.0),
                    entry("b", Any::from("only"), 1.0),
                    entry("a", Any::from("earlier"), 3.0),
                ],
            );
        }
        let changes = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(
            changes,
            vec![
                (Arc::from("a"), Some(Any::from("later"))),
                (Arc::from("b"), Some(Any::from("only"))),
            ]
        );
        let idx = index.lock().unwrap();
        assert!(idx.has_duplicates());
        assert_eq!(idx.positions_to_delete([]), vec![2]);
        drop(idx);
        // Deleting the loser changes no winner.
        array.remove_range(&mut doc.transact_mut(), 2, 1);
        assert!(seen.lock().unwrap().is_empty());
        assert!(!index.lock().unwrap().has_duplicates());
    }

    #[test]
    fn runs_are_merged_and_reversed() {
        assert_eq!(
            runs_descending(&[1, 2, 3, 7, 9, 10]),
            vec![(9, 2), (7, 1), (1, 3)]
        );
        assert!(runs_descending(&[]).is_empty());
    }
}
