//! Doc sizes for `/metrics`, without encoding every doc at every scrape.
//!
//! A doc's size is its full state, encoded, measured when the doc is first seen and again
//! at most once per `REMEASURE_AFTER` while it changes; in between it is the last measure
//! plus the bytes of the updates the doc emitted since (counted by an update observer), an
//! upper bound: deletions shrink the encoded state. A doc busy with a transaction is not
//! waited for: it keeps its estimate until a later scrape. Scrapes run off the async
//! workers, since a measure of a big doc takes a while.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use yrs::{Doc, ReadTxn, StateVector, Transact};

use crate::lock::lock;

/// Key of the metrics' update observer on each doc.
const SIZE_OBSERVER: &str = "epicenter-metrics";
/// The least time between two measures of a doc that keeps changing.
const REMEASURE_AFTER: Duration = Duration::from_secs(60);

struct Tracked {
    doc: Doc,
    /// Bytes of the updates the doc emitted since the last measure.
    since: Arc<AtomicU64>,
    observed: bool,
    /// The encoded size at the last measure, and when it was taken.
    measured: Option<(usize, Instant)>,
}

impl Tracked {
    fn new(doc: Doc) -> Tracked {
        Tracked {
            doc,
            since: Arc::default(),
            observed: false,
            measured: None,
        }
    }

    /// The doc's size now (measured or estimated).
    fn size(&mut self) -> usize {
        if !self.observed {
            let since = self.since.clone();
            // Fails only while a transaction is open: tried again at the next scrape.
            self.observed = self
                .doc
                .observe_update_v1(SIZE_OBSERVER, move |_, event| {
                    since.fetch_add(event.update.len() as u64, Ordering::Relaxed);
                })
                .is_ok();
        }
        let due = match self.measured {
            None => true,
            Some((_, at)) => {
                self.since.load(Ordering::Relaxed) > 0 && at.elapsed() >= REMEASURE_AFTER
            }
        };
        if due && self.observed {
            if let Ok(txn) = self.doc.try_transact() {
                // No update commits while the read transaction is open.
                self.since.store(0, Ordering::Relaxed);
                let size = txn.encode_state_as_update_v1(&StateVector::default()).len();
                self.measured = Some((size, Instant::now()));
            }
        }
        let base = self.measured.map_or(0, |(size, _)| size);
        base + self.since.load(Ordering::Relaxed) as usize
    }
}

/// The sizes of the docs a server has, kept between scrapes.
#[derive(Default)]
pub(crate) struct DocSizes {
    tracked: Mutex<HashMap<String, Tracked>>,
}

impl DocSizes {
    /// The size of each of `docs` (id, dynamic, doc), in the same order. Blocking: a doc
    /// may have to be measured.
    pub fn sizes(&self, docs: Vec<(String, bool, Doc)>) -> Vec<(String, bool, usize)> {
        let mut tracked = lock(&self.tracked);
        // Docs gone since the last scrape (evicted dynamic docs) are let go: one map
        // lookup each, not a scan of every doc (there may be thousands).
        let current: std::collections::HashMap<&str, &Doc> =
            docs.iter().map(|(id, _, doc)| (id.as_str(), doc)).collect();
        tracked.retain(|id, t| {
            current
                .get(id.as_str())
                .is_some_and(|doc| Doc::ptr_eq(doc, &t.doc))
        });
        docs.into_iter()
            .map(|(id, dynamic, doc)| {
                let size = tracked
                    .entry(id.clone())
                    .or_insert_with(|| Tracked::new(doc))
                    .size();
                (id, dynamic, size)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Text, WriteTxn};

    fn add(doc: &Doc, text: &str) {
        let mut txn = doc.transact_mut();
        let t = txn.get_or_insert_text("t");
        let len = t.len(&txn);
        t.insert(&mut txn, len, text);
    }

    #[test]
    fn sizes_are_measured_once_then_estimated_from_the_updates() {
        let sizes = DocSizes::default();
        let doc = Doc::new();
        add(&doc, &"a".repeat(1000));
        let first = sizes.sizes(vec![("d".into(), true, doc.clone())])[0].2;
        let exact = |doc: &Doc| {
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default())
                .len()
        };
        assert_eq!(first, exact(&doc));
        add(&doc, &"b".repeat(500));
        let second = sizes.sizes(vec![("d".into(), true, doc.clone())])[0].2;
        assert!(second >= exact(&doc) && second < first + 600, "{second}");
        // A busy doc is not waited for.
        let other = Doc::new();
        let txn = other.transact_mut();
        let busy = sizes.sizes(vec![("o".into(), false, other.clone())]);
        assert_eq!(busy[0].2, 0);
        drop(txn);
    }
}
