//! What a room exchanges with the same room on other nodes (feature `redis`): the
//! awareness updates of its own connections go out through the relay; those of other
//! nodes' connections come in here, are told to every local connection, and are
//! remembered by node, so a node's states can be removed when it is gone.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use yrs::sync::AwarenessUpdate;

use super::Room;
use crate::lock::lock;
use crate::sync::awareness::Change;
use crate::sync::protocol;

/// Where a room sends the awareness frames of its own connections (room id, frame).
pub(crate) type Relay = tokio::sync::mpsc::UnboundedSender<(String, Bytes)>;

impl Room {
    /// Tells the other nodes of an awareness frame of this node's connections.
    pub(super) fn relay(&self, frame: &Bytes) {
        if let Some(relay) = &self.relay {
            let _ = relay.send((self.id.clone(), frame.clone()));
        }
    }

    /// Applies an awareness update from a connection of node `node` and tells every local
    /// connection; in a busy room, merged with the others for a moment, like local ones
    /// (see `presence`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn apply_remote_awareness(
        self: &Arc<Self>,
        node: &str,
        update: AwarenessUpdate,
        frame: Bytes,
    ) {
        // Lock order: awareness, then members (as for local updates).
        let mut awareness = lock(&self.awareness);
        let members = lock(&self.members);
        // Sent (or batched) before it is applied, under both locks (see `apply_awareness`).
        self.send_presence(&update, &frame, &members);
        drop(members);
        let changes = awareness.apply(update);
        drop(awareness);
        Change::track(
            changes,
            lock(&self.remote_awareness)
                .entry(node.to_string())
                .or_default(),
        );
    }

    /// Removes the awareness states node `node`'s connections had (the node is gone) and
    /// tells every local connection.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn drop_remote_node(self: &Arc<Self>, node: &str) {
        let ids: HashSet<_> = lock(&self.remote_awareness)
            .remove(node)
            .unwrap_or_default();
        if ids.is_empty() {
            return;
        }
        if let Some(update) = lock(&self.awareness).remove(ids) {
            let frame = protocol::awareness(update.clone());
            self.send_presence(&update, &frame, &lock(&self.members));
        }
    }

    /// Applies an update another node has already stored, through the doc's one way in
    /// for such updates; every connection gets it. Then the doc holds every stored update
    /// numbered up to `through`.
    #[cfg(feature = "redis")]
    pub fn apply_remote(&self, update: &[u8], through: u64) -> Result<(), String> {
        match &self.doc {
            super::RoomDoc::Workspace(client) => client.apply_remote(update, through),
            super::RoomDoc::Dynamic(doc) => doc.apply_remote(update, through),
        }
        .map_err(|e| e.to_string())
    }

    /// The doc's storage.
    #[cfg(feature = "redis")]
    pub fn storage(&self) -> std::sync::Arc<dyn crate::storage::DocStorage> {
        match &self.doc {
            super::RoomDoc::Workspace(client) => client.storage().clone(),
            super::RoomDoc::Dynamic(doc) => doc.storage().clone(),
        }
    }

    /// The nodes whose connections have awareness states here.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn remote_nodes(&self) -> Vec<String> {
        lock(&self.remote_awareness).keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::time::Duration;

    use futures_util::StreamExt;
    use tungstenite::protocol::Role;
    use yrs::sync::awareness::AwarenessUpdateEntry;
    use yrs::sync::Message;
    use yrs::updates::decoder::Decode;
    use yrs::ClientID;

    use super::*;
    use crate::access::Access;
    use crate::server::ServerOptions;
    use crate::sync::hub::SyncHub;
    use crate::sync::Transport;

    /// A guard against a hung test; nothing waits for it to elapse.
    const GUARD: Duration = Duration::from_secs(10);

    type Client = tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>;

    fn update(id: u64, clock: u32) -> AwarenessUpdate {
        let entry = AwarenessUpdateEntry {
            clock,
            json: format!("{{\"clock\":{clock}}}").into(),
        };
        AwarenessUpdate {
            clients: HashMap::from([(ClientID::new(id), entry)]),
        }
    }

    /// Reads awareness messages until each of `ids` was seen at clock `last`; returns how
    /// many messages that took.
    async fn read_until(ws: &mut Client, ids: &[u64], last: u32) -> usize {
        let mut newest: HashMap<u64, u32> = HashMap::new();
        let mut messages = 0;
        while !ids.iter().all(|id| newest.get(id) == Some(&last)) {
            let frame = match tokio::time::timeout(GUARD, ws.next()).await {
                Ok(Some(Ok(tungstenite::Message::Binary(frame)))) => frame,
                Ok(Some(Ok(_))) => continue,
                other => panic!("{other:?}"),
            };
            if let Ok(Message::Awareness(update)) = Message::decode_v1(&frame) {
                messages += 1;
                for (id, entry) in update.clients {
                    let seen = newest.entry(id.get()).or_default();
                    *seen = (*seen).max(entry.clock);
                }
            }
        }
        messages
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn presence_from_other_nodes_is_batched_in_a_busy_room() {
        let options = ServerOptions::default().dynamic_docs(true);
        let hub = Arc::new(SyncHub::new(options.sync_options(), BTreeMap::new()));
        let mut clients = Vec::new();
        for _ in 0..100 {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let transport = Box::new(theirs) as Box<dyn Transport>;
            hub.serve(
                async move { Some(transport) },
                "room".into(),
                Access::ReadWrite,
                None,
                None,
            );
            let ws =
                tokio_tungstenite::WebSocketStream::from_raw_socket(ours, Role::Client, None).await;
            clients.push(ws);
        }
        let room = tokio::time::timeout(GUARD, async {
            loop {
                match hub.live_room("room") {
                    Some(room) if lock(&room.members).len() == 100 => break room,
                    _ => tokio::task::yield_now().await,
                }
            }
        })
        .await
        .expect("all 100 joined");
        // Five remote clients, 40 states each, as fast as the bus can deliver them.
        let ids = [11, 12, 13, 14, 15];
        for clock in 1..=40 {
            for id in ids {
                let frame = protocol::awareness(update(id, clock));
                room.apply_remote_awareness("node-b", update(id, clock), frame);
            }
        }
        // Every connection ends with every client's newest state, in far fewer than the
        // 200 messages sent one by one.
        for ws in &mut clients {
            let messages = read_until(ws, &ids, 40).await;
            assert!(messages < 50, "{messages} awareness messages");
        }
        assert_eq!(lock(&room.remote_awareness)["node-b"].len(), 5);
    }

    /// What a new connection makes of the awareness frames it got, as y-protocols does:
    /// per client, the newest clock and whether that entry is a state (not a removal).
    async fn states_until(
        out: &crate::sync::room::Outbox,
        marker: u64,
    ) -> HashMap<u64, (u32, bool)> {
        let mut states: HashMap<u64, (u32, bool)> = HashMap::new();
        while !states.contains_key(&marker) {
            let mut taken = std::collections::VecDeque::new();
            let frames = std::future::poll_fn(|cx| {
                out.poll_take(Some(cx), Some(&mut taken));
                if taken.is_empty() {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(std::mem::take(&mut taken))
                }
            });
            for item in tokio::time::timeout(GUARD, frames).await.expect("frames") {
                let crate::sync::room::Out::Frame(frame) = item else {
                    continue;
                };
                let Ok(Message::Awareness(update)) = Message::decode_v1(&frame) else {
                    continue;
                };
                for (id, entry) in update.clients {
                    let present = &*entry.json != "null";
                    let kept = states.get(&id.get()).map_or(0, |(clock, _)| *clock);
                    if entry.clock > kept || (entry.clock == kept && !present) {
                        states.insert(id.get(), (entry.clock, present));
                    }
                }
            }
        }
        states
    }

    /// A node is removed while its connections' presence waits in a batch (a busy room),
    /// and a connection joins right after: the batch must not bring the removed state back
    /// to it (it has no newer clock for the client, so it would show the state until it
    /// times out: a ghost cursor).
    #[tokio::test]
    async fn a_removed_node_stays_removed_for_those_who_join_before_its_batch_goes_out() {
        let options = ServerOptions::default().dynamic_docs(true);
        let hub = Arc::new(SyncHub::new(options.sync_options(), BTreeMap::new()));
        let outbox = || crate::sync::room::Outbox::new(1024, hub.stats.clone(), None);
        let mut room = None;
        for conn in 0..50 {
            match hub.join("room", conn, outbox(), None).await {
                Ok((_, joined)) => room = Some(joined),
                Err(_) => panic!("joined"),
            }
        }
        let room = room.expect("a room");
        // Fast enough to be batched: the first goes out at once, the rest wait.
        for clock in 1..=40 {
            let frame = protocol::awareness(update(21, clock));
            room.apply_remote_awareness("node-b", update(21, clock), frame);
        }
        // Nothing has run since: the batch is still waiting.
        room.drop_remote_node("node-b");
        let joiner = outbox();
        room.add(1000, joiner.clone()).await;
        // After everything else: the joiner has heard it all once it hears of this one.
        room.apply_remote_awareness("node-c", update(22, 1), protocol::awareness(update(22, 1)));
        let states = states_until(&joiner, 22).await;
        assert!(
            !states.get(&21).is_some_and(|(_, present)| *present),
            "the removed node's client came back: {states:?}"
        );
    }
}
