//! The awareness states of one room, with the y-protocols rules for which update wins.
//!
//! Not yrs's `Awareness`: that one keeps an entry for every client id it has ever seen, and
//! lists them all to find the present ones, so a room that many short connections pass
//! through (each page load is a new awareness client id) grows and slows with every one of
//! them until it is evicted. Here a removed client's clock is kept only for
//! [`TOMBSTONE_TTL`], long enough to refuse a stale update that was in flight when it left.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::AwarenessUpdate;
use yrs::ClientID;

/// How long a removed client's clock is remembered. y-protocols drops a state that has
/// not been renewed for 30 s; an update older than that is stale anyway.
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(30);

/// Most removed clients' clocks a room remembers. Peers choose client ids freely and may
/// announce and remove states as fast as they can send: without a bound, one connection
/// could fill memory within a TTL. Past it, a removal is still applied but its clock is not
/// kept: a stale state in flight could come back, counted against the connection that
/// sends it, until that connection leaves.
pub(crate) const MAX_TOMBSTONES: usize = 16 * 1024;

/// The JSON of a removed state, as y-protocols encodes it.
const NULL: &str = "null";

#[derive(Default)]
pub(crate) struct AwarenessStates {
    /// Present states: clock and JSON.
    present: HashMap<ClientID, AwarenessUpdateEntry>,
    /// Removed states: their last clock and when they were removed.
    removed: HashMap<ClientID, (u32, Instant)>,
    /// When `removed` was last swept of expired entries.
    swept: Option<Instant>,
}

/// What applying an update did to each client id it named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The state is present now (added or renewed).
    Present,
    /// The state was removed.
    Removed,
    /// The update was older than what the room has: nothing changed.
    Stale,
}

impl Change {
    /// Keeps `announced` (the client ids a connection controls) in step with `changes`
    /// from that connection's update.
    pub fn track(changes: Vec<(ClientID, Change)>, announced: &mut HashSet<ClientID>) {
        for (id, change) in changes {
            match change {
                Change::Present => {
                    announced.insert(id);
                }
                Change::Removed => {
                    announced.remove(&id);
                }
                Change::Stale => {}
            }
        }
    }
}

impl AwarenessStates {
    /// y-protocols' rule: an entry wins with a higher clock than the one known, or with the
    /// same clock when it removes a present state.
    fn wins(&self, id: &ClientID, entry: &AwarenessUpdateEntry) -> bool {
        let removing = &*entry.json == NULL;
        match (self.present.get(id), self.removed.get(id)) {
            (Some(state), _) => {
                state.clock < entry.clock || (state.clock == entry.clock && removing)
            }
            (None, Some((clock, _))) => *clock < entry.clock,
            (None, None) => true,
        }
    }

    /// How many states a connection that has `announced` present would have once `update`
    /// (from it) is applied: the ids it makes present that are not announced yet are added,
    /// the announced ones it removes taken away. Changes nothing.
    pub fn announced_after(
        &self,
        update: &AwarenessUpdate,
        announced: &HashSet<ClientID>,
    ) -> usize {
        let mut count = announced.len();
        for (id, entry) in &update.clients {
            if !self.wins(id, entry) {
                continue;
            }
            match (&*entry.json == NULL, announced.contains(id)) {
                (false, false) => count += 1,
                (true, true) => count -= 1,
                _ => {}
            }
        }
        count
    }

    /// Applies a peer's update with y-protocols' rule (see `wins`).
    pub fn apply(&mut self, update: AwarenessUpdate) -> Vec<(ClientID, Change)> {
        let now = Instant::now();
        let changes = update
            .clients
            .into_iter()
            .map(|(id, entry)| {
                let removing = &*entry.json == NULL;
                if !self.wins(&id, &entry) {
                    return (id, Change::Stale);
                }
                if removing {
                    // Removing a state the room never had (or already forgot) changes
                    // nothing, and leaves nothing behind.
                    if self.present.remove(&id).is_none() && !self.removed.contains_key(&id) {
                        return (id, Change::Stale);
                    }
                    self.remember(id, entry.clock, now);
                    (id, Change::Removed)
                } else {
                    self.removed.remove(&id);
                    self.present.insert(id, entry);
                    (id, Change::Present)
                }
            })
            .collect();
        self.sweep(now);
        changes
    }

    /// Removes the present states among `ids` (their connection left) and returns the
    /// update that tells the peers, if any was present.
    pub fn remove(&mut self, ids: impl IntoIterator<Item = ClientID>) -> Option<AwarenessUpdate> {
        let now = Instant::now();
        let mut clients = HashMap::new();
        for id in ids {
            if let Some(state) = self.present.remove(&id) {
                let clock = state.clock.wrapping_add(1);
                self.remember(id, clock, now);
                let json = Arc::from(NULL);
                clients.insert(id, AwarenessUpdateEntry { clock, json });
            }
        }
        self.sweep(now);
        (!clients.is_empty()).then_some(AwarenessUpdate { clients })
    }

    /// Every present state (no clients when there are none).
    pub fn all(&self) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: self.present.clone(),
        }
    }

    /// How many states are present.
    #[cfg_attr(not(feature = "fuzzing"), allow(dead_code))]
    pub fn len(&self) -> usize {
        self.present.len()
    }

    /// How many removed clients' clocks are remembered.
    #[cfg(test)]
    fn tombstones(&self) -> usize {
        self.removed.len()
    }

    /// Keeps a removed client's clock (within [`MAX_TOMBSTONES`]).
    fn remember(&mut self, id: ClientID, clock: u32, now: Instant) {
        if self.removed.len() < MAX_TOMBSTONES || self.removed.contains_key(&id) {
            self.removed.insert(id, (clock, now));
        }
    }

    /// Forgets removed clients older than [`TOMBSTONE_TTL`], at most once per TTL (a
    /// sweep costs one pass over the removed ones).
    fn sweep(&mut self, now: Instant) {
        let due = self
            .swept
            .is_none_or(|at| now.duration_since(at) >= TOMBSTONE_TTL);
        if !due {
            return;
        }
        self.swept = Some(now);
        self.removed
            .retain(|_, (_, at)| now.duration_since(*at) < TOMBSTONE_TTL);
    }

    #[cfg(test)]
    fn age_tombstones(&mut self, by: Duration) {
        for (_, at) in self.removed.values_mut() {
            *at -= by;
        }
        if let Some(at) = &mut self.swept {
            *at -= by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(entries: &[(u64, u32, &str)]) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: entries
                .iter()
                .map(|&(id, clock, json)| {
                    let json = Arc::from(json);
                    (ClientID::new(id), AwarenessUpdateEntry { clock, json })
                })
                .collect(),
        }
    }

    fn id(n: u64) -> ClientID {
        ClientID::new(n)
    }

    #[test]
    fn higher_clocks_win_and_removals_win_ties() {
        let mut states = AwarenessStates::default();
        let a = r#"{"user":"a"}"#;
        assert_eq!(
            states.apply(update(&[(1, 1, a)])),
            [(id(1), Change::Present)]
        );
        assert_eq!(
            states.apply(update(&[(1, 1, "{}")])),
            [(id(1), Change::Stale)]
        );
        assert_eq!(
            states.apply(update(&[(1, 0, "{}")])),
            [(id(1), Change::Stale)]
        );
        assert_eq!(states.all().clients[&id(1)].json.as_ref(), a);
        // A removal at the same clock wins over a present state.
        assert_eq!(
            states.apply(update(&[(1, 1, NULL)])),
            [(id(1), Change::Removed)]
        );
        assert!(states.all().clients.is_empty());
        // A stale state for a removed client does not bring it back; a newer one does.
        assert_eq!(states.apply(update(&[(1, 1, a)])), [(id(1), Change::Stale)]);
        assert_eq!(
            states.apply(update(&[(1, 2, a)])),
            [(id(1), Change::Present)]
        );
        assert_eq!(states.len(), 1);
        assert_eq!(states.tombstones(), 0);
    }

    #[test]
    fn removing_a_connections_states_bumps_their_clocks() {
        let mut states = AwarenessStates::default();
        states.apply(update(&[(1, 4, "{}"), (2, 7, "{}"), (3, 1, "{}")]));
        let removal = states.remove([id(1), id(2), id(9)]).unwrap();
        assert_eq!(removal.clients.len(), 2, "only present states are removed");
        assert_eq!(removal.clients[&id(1)].clock, 5);
        assert_eq!(removal.clients[&id(2)].clock, 8);
        assert_eq!(removal.clients[&id(2)].json.as_ref(), NULL);
        assert_eq!(states.len(), 1);
        assert!(states.remove([id(1)]).is_none(), "already removed");
        // The peer's own earlier renewal, still in flight, is refused.
        assert_eq!(
            states.apply(update(&[(1, 5, "{}")])),
            [(id(1), Change::Stale)]
        );
    }

    #[test]
    fn announced_after_counts_the_states_an_update_would_add_or_remove() {
        let mut states = AwarenessStates::default();
        let mut mine = HashSet::new();
        Change::track(
            states.apply(update(&[(1, 1, "{}"), (2, 1, "{}")])),
            &mut mine,
        );
        states.apply(update(&[(9, 5, "{}")])); // another connection's
        assert_eq!(states.announced_after(&update(&[]), &mine), 2);
        // A new id, a renewal, a removal of one of mine; a stale update changes nothing.
        let next = update(&[(3, 1, "{}"), (1, 2, "{}"), (2, 1, NULL)]);
        assert_eq!(states.announced_after(&next, &mine), 2);
        assert_eq!(states.announced_after(&update(&[(1, 0, "{}")]), &mine), 2);
        assert_eq!(states.announced_after(&update(&[(4, 1, "{}")]), &mine), 3);
        // Another connection's state renewed by this one counts too; removing it does not
        // take one of mine away.
        assert_eq!(states.announced_after(&update(&[(9, 6, "{}")]), &mine), 3);
        assert_eq!(states.announced_after(&update(&[(9, 6, NULL)]), &mine), 2);
        assert_eq!(states.len(), 3, "nothing was applied");
    }

    #[test]
    fn removals_of_unknown_clients_leave_nothing_and_tombstones_are_bounded() {
        let mut states = AwarenessStates::default();
        // One update removing many client ids the room never saw.
        let removals: Vec<_> = (0..10_000).map(|n| (n, 1, NULL)).collect();
        let changes = states.apply(update(&removals));
        assert!(changes.iter().all(|(_, c)| *c == Change::Stale));
        assert_eq!(states.tombstones(), 0);
        // Announcing and removing states in a loop (as fast as a peer can send) keeps at
        // most MAX_TOMBSTONES clocks.
        for n in 0..(MAX_TOMBSTONES as u64 + 1000) {
            states.apply(update(&[(n, 1, "{}")]));
            assert_eq!(
                states.apply(update(&[(n, 2, NULL)])),
                [(id(n), Change::Removed)]
            );
        }
        assert_eq!(states.len(), 0);
        assert_eq!(states.tombstones(), MAX_TOMBSTONES);
        // A remembered one is still updated once the bound is reached.
        assert_eq!(
            states.apply(update(&[(0, 3, "{}")])),
            [(id(0), Change::Present)]
        );
        assert_eq!(
            states.apply(update(&[(0, 4, NULL)])),
            [(id(0), Change::Removed)]
        );
        assert_eq!(
            states.apply(update(&[(0, 4, "{}")])),
            [(id(0), Change::Stale)]
        );
    }

    #[test]
    fn removed_clients_are_forgotten_after_the_ttl() {
        let mut states = AwarenessStates::default();
        for n in 0..1000 {
            states.apply(update(&[(n, 1, "{}")]));
            states.remove([id(n)]);
        }
        assert_eq!(states.len(), 0);
        assert_eq!(states.tombstones(), 1000);
        states.age_tombstones(TOMBSTONE_TTL);
        states.apply(update(&[(5000, 1, "{}")]));
        assert_eq!(states.tombstones(), 0, "expired tombstones are swept");
        assert_eq!(states.len(), 1);
    }
}
