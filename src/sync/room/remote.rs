//! What a room exchanges with the same room on other nodes (feature `redis`): the
//! awareness updates of its own connections go out through the relay; those of other
//! nodes' connections come in here, are told to every local connection, and are
//! remembered by node, so a node's states can be removed when it is gone.

use std::collections::HashSet;

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
    /// connection.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn apply_remote_awareness(&self, node: &str, update: AwarenessUpdate, frame: Bytes) {
        let changes = lock(&self.awareness).apply(update);
        Change::track(
            changes,
            lock(&self.remote_awareness)
                .entry(node.to_string())
                .or_default(),
        );
        super::broadcast(lock(&self.members).values(), &frame);
    }

    /// Removes the awareness states node `node`'s connections had (the node is gone) and
    /// tells every local connection.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn drop_remote_node(&self, node: &str) {
        let ids: HashSet<_> = lock(&self.remote_awareness)
            .remove(node)
            .unwrap_or_default();
        if ids.is_empty() {
            return;
        }
        if let Some(update) = lock(&self.awareness).remove(ids) {
            let frame = protocol::awareness(update);
            super::broadcast(lock(&self.members).values(), &frame);
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
