//! What the sync layer needs to know, apart from the server's other options: timings,
//! sizes, limits and where dynamic docs are stored. The server builds it from its
//! `ServerOptions` (see `ServerOptions::sync_options`), so this layer depends on nothing
//! above it.

use std::sync::Arc;
use std::time::Duration;

use crate::storage::StorageProvider;

/// The sync side's settings; every field is documented on the `ServerOptions` field of the
/// same name.
#[derive(Clone)]
pub(crate) struct SyncOptions {
    pub dynamic_docs: Option<bool>,
    pub storage: Arc<dyn StorageProvider>,
    pub ping_interval: Duration,
    pub room_idle_timeout: Duration,
    pub max_message_size: usize,
    pub max_frame_size: usize,
    pub send_queue: usize,
    pub max_connections: usize,
    pub max_room_connections: usize,
    pub max_dynamic_rooms: usize,
    pub handshake_timeout: Duration,
    pub max_room_name_len: usize,
    pub max_new_rooms_per_minute: usize,
    pub max_awareness_states: usize,
}
