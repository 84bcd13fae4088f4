//! What a read-only connection may send as a doc update: nothing the doc lacks.
//!
//! A stock y-websocket client answers the server's step1 with a step2 whether or not it has
//! edits: usually empty, or holding only what the server already has (its whole delete set
//! comes along every time). Such an update changes nothing and is let through. An update
//! with items past the doc's state vector, or deletions the doc has not made, is a write:
//! the connection is closed with 4403 (`close::FORBIDDEN`), so the client learns its edits
//! were refused instead of being acknowledged by the next SYNC_STATUS echo.

use yrs::{Doc, ReadTxn, Transact};

/// Whether applying `bytes` (a v1 update from a peer) would change `doc`. Malformed input is
/// an error, as it is for a connection that may write.
#[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))]
pub(crate) fn changes(doc: &Doc, bytes: &[u8]) -> Result<bool, String> {
    let update = crate::storage::decode_update(bytes)?;
    Ok(changes_in(&doc.transact(), &update))
}

/// Whether applying `update` would change the doc `txn` reads. An update with deletions
/// costs a pass over the doc's blocks (see below); the caller runs those off the async
/// workers.
pub(crate) fn changes_in(txn: &yrs::Transaction, update: &yrs::Update) -> bool {
    let have = txn.state_vector();
    // Items, deleted ones and garbage-collected ranges included: any clock past what the
    // doc has is new to it.
    let inserts = update.insertions(true);
    for (client, ranges) in inserts.iter() {
        let known = have.get(client);
        if ranges.iter().any(|range| range.end > known) {
            return true;
        }
    }
    let deletes = update.delete_set();
    if deletes.is_empty() {
        return false;
    }
    // The doc's own delete set costs one pass over its blocks; only updates that carry
    // deletions pay it.
    let deleted = txn.snapshot().delete_set;
    for client in deletes.client_ids() {
        let covered = match (deletes.get(&client), deleted.get(&client)) {
            (Some(theirs), Some(ours)) => theirs.subset_of(ours),
            (Some(theirs), None) => theirs.is_empty(),
            (None, _) => true,
        };
        if !covered {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, StateVector, Text};

    fn text_doc(s: &str) -> Doc {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, s);
        doc
    }

    fn full_state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn sync(from: &Doc, to: &Doc) {
        let update = from
            .transact()
            .encode_state_as_update_v1(&to.transact().state_vector());
        to.transact_mut()
            .apply_update(crate::storage::decode_update(&update).unwrap())
            .unwrap();
    }

    #[test]
    fn what_the_doc_already_has_changes_nothing() {
        let server = text_doc("hello");
        let text = server.get_or_insert_text("t");
        text.remove_range(&mut server.transact_mut(), 0, 1);
        // An empty update, the server's own state, and a synced peer's answer to step1.
        assert!(!changes(&server, &[0, 0]).unwrap());
        assert!(!changes(&server, &full_state(&server)).unwrap());
        let peer = Doc::new();
        sync(&server, &peer);
        assert_eq!(
            peer.get_or_insert_text("t").get_string(&peer.transact()),
            "ello"
        );
        let answer = peer
            .transact()
            .encode_state_as_update_v1(&server.transact().state_vector());
        assert!(!changes(&server, &answer).unwrap());
        assert!(!changes(&server, &full_state(&peer)).unwrap());
    }

    #[test]
    fn new_items_and_new_deletions_are_changes() {
        let server = text_doc("hello");
        let peer = Doc::new();
        sync(&server, &peer);
        let text = peer.get_or_insert_text("t");
        // A deletion alone.
        let before = peer.transact().state_vector();
        text.remove_range(&mut peer.transact_mut(), 0, 2);
        let deletion = peer.transact().encode_state_as_update_v1(&before);
        assert!(changes(&server, &deletion).unwrap());
        assert!(changes(&server, &full_state(&peer)).unwrap());
        // An insertion alone, and one that only a later update would make integrable.
        let other = text_doc("x");
        assert!(changes(&server, &full_state(&other)).unwrap());
        let before = other.transact().state_vector();
        let t = other.get_or_insert_text("t");
        t.push(&mut other.transact_mut(), "y");
        let after_a_hole = other.transact().encode_state_as_update_v1(&before);
        assert!(changes(&server, &after_a_hole).unwrap());
        // Malformed input is an error.
        assert!(changes(&server, &[0, 2, 5]).is_err());
    }
}
