//! Presence in a busy room goes out in batches: when the room's awareness messages would
//! make more than `BATCH_ABOVE` deliveries a second (500 people moving their cursors once
//! a second is 250,000), they are merged for `WINDOW` and sent as one message, so each
//! connection gets a few messages a second instead of hundreds. A quieter room sends each
//! message on at once, as received.
//!
//! A merged message holds, for each client id, the entry with the highest clock it was
//! sent (the one y-protocols keeps). Entries may reach a peer after a newer one sent on its
//! own (the room turned quiet in between); y-protocols ignores an entry whose clock is not
//! newer than what it has, so the peer keeps the newer one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::AwarenessUpdate;
use yrs::ClientID;

use super::{broadcast, protocol, Room};
use crate::lock::lock;

/// Deliveries a second (messages a second times connections) above which a room's
/// presence is batched.
const BATCH_ABOVE: f32 = 50_000.0;
/// How long presence is gathered before it goes out, in a busy room.
const WINDOW: Duration = Duration::from_millis(20);

#[derive(Default)]
pub(crate) struct Presence(Mutex<Batch>);

#[derive(Default)]
struct Batch {
    /// When the last awareness message came, and the average time between them
    /// (microseconds, a moving average).
    last: Option<Instant>,
    gap_us: Option<f32>,
    /// The entries gathered for the next message; `Some` while a send is scheduled.
    pending: Option<HashMap<ClientID, AwarenessUpdateEntry>>,
}

impl Presence {
    /// Notes an awareness message for a room of `members` connections. Returns it back
    /// when it goes out at once; `None` when it joined a batch. `schedule` is called when
    /// a new batch starts: it must send the batch (`take`) after `WINDOW`.
    pub fn offer(&self, update: &AwarenessUpdate, members: usize, schedule: impl FnOnce()) -> bool {
        let mut batch = lock(&self.0);
        let now = Instant::now();
        if let Some(last) = batch.last {
            let gap = (now - last).as_secs_f32() * 1e6;
            batch.gap_us = Some(match batch.gap_us {
                None => gap,
                Some(average) => 0.75 * average + 0.25 * gap,
            });
        }
        batch.last = Some(now);
        let busy = batch
            .gap_us
            .is_some_and(|gap| members as f32 * 1e6 / gap.max(1.0) > BATCH_ABOVE);
        // While a batch is open, everything joins it (so nothing overtakes it).
        if batch.pending.is_none() && !busy {
            return false;
        }
        let pending = batch.pending.get_or_insert_with(|| {
            schedule();
            HashMap::new()
        });
        merge(pending, update);
        true
    }

    /// The batch to send now, as one awareness message (if it holds anything).
    fn take(&self) -> Option<Bytes> {
        let clients = lock(&self.0).pending.take()?;
        (!clients.is_empty()).then(|| protocol::awareness(AwarenessUpdate { clients }))
    }
}

/// Keeps, for each client of `update`, its entry unless `pending` has a newer one.
fn merge(pending: &mut HashMap<ClientID, AwarenessUpdateEntry>, update: &AwarenessUpdate) {
    for (id, entry) in &update.clients {
        match pending.get(id) {
            Some(kept) if kept.clock >= entry.clock => {}
            _ => {
                pending.insert(*id, entry.clone());
            }
        }
    }
}

impl Room {
    /// Sends an awareness message to every connection now, or batches it (see the
    /// module's docs). Call with the room's members locked, so batches and messages go
    /// out in the order they came. Removals go this way too: one sent while a batch waits
    /// would be followed by the batch's older entries for the same clients, which a
    /// connection that joined in between (and never heard of them) would show until they
    /// time out.
    pub(super) fn send_presence(
        self: &Arc<Self>,
        update: &AwarenessUpdate,
        frame: &Bytes,
        members: &HashMap<u64, super::Member>,
    ) {
        let room = Arc::downgrade(self);
        let batched = self.presence.offer(update, members.len(), || {
            tokio::spawn(async move {
                tokio::time::sleep(WINDOW).await;
                if let Some(room) = room.upgrade() {
                    // Taken under the members' lock, so nothing (a removal) goes out
                    // between the take and the send.
                    let members = lock(&room.members);
                    if let Some(frame) = room.presence.take() {
                        broadcast(members.values(), &frame);
                    }
                }
            });
        });
        if !batched {
            broadcast(members.values(), frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc as StdArc;

    fn update(id: u64, clock: u32, json: &str) -> AwarenessUpdate {
        let mut clients = HashMap::new();
        clients.insert(
            ClientID::new(id),
            AwarenessUpdateEntry {
                clock,
                json: StdArc::from(json),
            },
        );
        AwarenessUpdate { clients }
    }

    #[test]
    fn a_quiet_room_sends_at_once_and_a_busy_one_batches_keeping_the_newest_entries() {
        let presence = Presence::default();
        let mut scheduled = 0;
        // Two messages far apart in a small room: sent at once.
        assert!(!presence.offer(&update(1, 1, "{}"), 3, || scheduled += 1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!presence.offer(&update(1, 2, "{}"), 3, || scheduled += 1));
        // Many messages in a big room: batched, one send scheduled.
        let mut batched = 0;
        for clock in 3..40 {
            if presence.offer(&update(1, clock, "{\"a\":1}"), 500, || scheduled += 1) {
                batched += 1;
            }
        }
        assert!(batched > 0);
        assert_eq!(scheduled, 1);
        // An older entry does not replace a newer one; other clients join.
        presence.offer(&update(1, 2, "{\"old\":1}"), 500, || scheduled += 1);
        presence.offer(&update(2, 7, "null"), 500, || scheduled += 1);
        let frame = presence.take().expect("a batch");
        let Ok(yrs::sync::Message::Awareness(sent)) =
            <yrs::sync::Message as yrs::updates::decoder::Decode>::decode_v1(&frame)
        else {
            panic!("an awareness message");
        };
        assert_eq!(sent.clients.len(), 2);
        assert_eq!(sent.clients[&ClientID::new(1)].clock, 39);
        assert_eq!(&*sent.clients[&ClientID::new(2)].json, "null");
        assert!(presence.take().is_none());
    }
}
