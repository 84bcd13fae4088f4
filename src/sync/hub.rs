//! The room registry: one room per doc id, created on the first connection, evicted a
//! while after the last one leaves; and the server's sync connections, tracked so
//! shutdown can close and wait for them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dynamic::DynamicDoc;
use super::limits::{check_room_name, OpenRate};
use super::options::SyncOptions;
use super::protocol::close;
use super::room::{Outbox, Room, RoomDoc};
use crate::access::Access;
use crate::lock::lock;
use crate::workspace::WorkspaceClient;

/// Something that happened to a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A room was loaded for its first connection.
    Opened(String),
    /// An idle room was released (a dynamic doc flushed and closed first).
    Evicted(String),
}

/// Counters of the sync side.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub connections_opened: AtomicU64,
    pub connections_open: AtomicUsize,
    pub slow_consumer_closes: AtomicU64,
    /// Requests and sync connections refused for lack of a valid token.
    pub auth_failures: AtomicU64,
    /// Connections closed because they sent no complete request headers within
    /// `header_read_timeout`.
    pub header_timeouts: AtomicU64,
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// A snapshot of the sync counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncStats {
    /// Connections accepted since the server started.
    pub connections_opened: u64,
    /// Connections open now.
    pub connections_open: usize,
    /// Connections closed because their send queue overflowed.
    pub slow_consumer_closes: u64,
    /// Requests and sync connections refused for lack of a valid token.
    pub auth_failures: u64,
    /// Connections closed because they sent no complete request headers within
    /// `header_read_timeout` (a browser's unused preconnect, or a slow-headers attack).
    pub header_timeouts: u64,
    /// Rooms loaded now.
    pub rooms_open: usize,
}

enum Slot {
    /// Not loaded (a workspace room between connections).
    Empty,
    Live(Arc<Room>),
    /// Evicted and removed from the registry: look the id up again.
    Gone,
}

pub(crate) struct Entry {
    dynamic: bool,
    slot: tokio::sync::Mutex<Slot>,
}

/// Why a connection could not join a room.
pub(crate) enum JoinError {
    NotFound,
    /// The room has `max_room_connections` connections.
    RoomFull,
    /// `max_dynamic_rooms` dynamic rooms exist.
    TooManyRooms,
    /// The client's address opened `max_new_rooms_per_minute` rooms this minute.
    TooManyNewRooms,
    /// Not a valid dynamic doc name (why).
    BadName(String),
    ShuttingDown,
    LoadFailed,
}

impl JoinError {
    pub fn close_frame(&self, id: &str) -> (u16, String) {
        match self {
            JoinError::NotFound => (close::ROOM_NOT_FOUND, format!("Room not found: {id}")),
            JoinError::RoomFull => (
                close::TRY_AGAIN_LATER,
                "room full: too many connections".into(),
            ),
            JoinError::TooManyRooms => (close::TRY_AGAIN_LATER, "too many rooms".into()),
            JoinError::TooManyNewRooms => (
                close::TRY_AGAIN_LATER,
                "too many new rooms from this address: try again in a minute".into(),
            ),
            JoinError::BadName(why) => (close::BAD_ROOM_NAME, format!("Bad room name: {why}")),
            JoinError::ShuttingDown => (close::GOING_AWAY, "server shutting down".into()),
            JoinError::LoadFailed => (close::INTERNAL_ERROR, "cannot load the doc".into()),
        }
    }
}

/// The server's sync rooms and connections. Reach it with
/// [`Server::sync`](crate::server::Server::sync).
pub struct SyncHub {
    /// The server's options (ping interval, idle timeout, sizes, dynamic-doc storage).
    pub(crate) options: SyncOptions,
    /// Whether unknown ids get a dynamic doc (the option, else: no workspaces).
    dynamic_docs: bool,
    clients: BTreeMap<String, WorkspaceClient>,
    rooms: Mutex<HashMap<String, Arc<Entry>>>,
    /// Ids of the loaded rooms.
    live: Mutex<BTreeSet<String>>,
    next_conn: AtomicU64,
    /// Dynamic rooms registered now (loaded, or loading).
    dynamic_rooms: AtomicUsize,
    /// Dynamic rooms opened per client address this minute.
    opens: OpenRate,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    events: broadcast::Sender<RoomEvent>,
    pub(crate) stats: Arc<Stats>,
    /// Where rooms send their connections' awareness for other nodes (set by the bus).
    relay: std::sync::OnceLock<super::room::Relay>,
    /// The bus to other nodes, which dynamic docs join while their rooms are loaded.
    #[cfg(feature = "redis")]
    bus: std::sync::OnceLock<Arc<super::bus::BusHandle>>,
}

impl std::fmt::Debug for SyncHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHub")
            .field("rooms", &self.rooms())
            .finish_non_exhaustive()
    }
}

impl SyncHub {
    pub(crate) fn new(options: SyncOptions, clients: BTreeMap<String, WorkspaceClient>) -> Self {
        SyncHub {
            dynamic_docs: options.dynamic_docs.unwrap_or(clients.is_empty()),
            opens: OpenRate::new(options.max_new_rooms_per_minute),
            options,
            clients,
            rooms: Mutex::default(),
            live: Mutex::default(),
            next_conn: AtomicU64::new(1),
            dynamic_rooms: AtomicUsize::new(0),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            events: broadcast::channel(256).0,
            stats: Arc::default(),
            relay: std::sync::OnceLock::new(),
            #[cfg(feature = "redis")]
            bus: std::sync::OnceLock::new(),
        }
    }

    /// Every workspace doc and every loaded dynamic doc, with its id and whether it is
    /// dynamic (for the metrics, which measure them off the async workers).
    pub(crate) fn docs(&self) -> Vec<(String, bool, yrs::Doc)> {
        let mut docs: Vec<(String, bool, yrs::Doc)> = self
            .clients
            .iter()
            .map(|(id, client)| (id.clone(), false, client.doc().clone()))
            .collect();
        let entries: Vec<(String, Arc<Entry>)> = lock(&self.rooms)
            .iter()
            .filter(|(_, entry)| entry.dynamic)
            .map(|(id, entry)| (id.clone(), entry.clone()))
            .collect();
        for (id, entry) in entries {
            // A room being loaded or evicted is skipped this time.
            if let Ok(slot) = entry.slot.try_lock() {
                if let Slot::Live(room) = &*slot {
                    docs.push((id, true, room.doc().clone()));
                }
            }
        }
        docs
    }

    /// Sends the awareness of rooms opened from now on to `relay` (the bus to other nodes).
    #[cfg(feature = "redis")]
    pub(crate) fn set_relay(&self, relay: super::room::Relay) {
        let _ = self.relay.set(relay);
    }

    /// Puts the dynamic docs of rooms loaded from now on on `bus`.
    #[cfg(feature = "redis")]
    pub(crate) fn set_bus(&self, bus: Arc<super::bus::BusHandle>) {
        let _ = self.bus.set(bus);
    }

    /// The room `id`, if it is loaded and not being loaded or evicted right now.
    #[cfg(any(test, feature = "redis"))]
    pub(crate) fn live_room(&self, id: &str) -> Option<Arc<Room>> {
        let entry = lock(&self.rooms).get(id).cloned()?;
        let slot = entry.slot.try_lock().ok()?;
        match &*slot {
            Slot::Live(room) => Some(room.clone()),
            _ => None,
        }
    }

    /// Ids of the rooms loaded now, sorted.
    pub fn rooms(&self) -> Vec<String> {
        lock(&self.live).iter().cloned().collect()
    }

    /// Whether dynamic docs are on.
    pub fn dynamic_docs(&self) -> bool {
        self.dynamic_docs
    }

    /// Room events (opened, evicted) from now on.
    pub fn events(&self) -> broadcast::Receiver<RoomEvent> {
        self.events.subscribe()
    }

    /// The sync counters.
    pub fn stats(&self) -> SyncStats {
        SyncStats {
            connections_opened: self.stats.connections_opened.load(Ordering::Relaxed),
            connections_open: self.stats.connections_open.load(Ordering::Relaxed),
            slow_consumer_closes: self.stats.slow_consumer_closes.load(Ordering::Relaxed),
            auth_failures: self.stats.auth_failures.load(Ordering::Relaxed),
            header_timeouts: self.stats.header_timeouts.load(Ordering::Relaxed),
            rooms_open: lock(&self.live).len(),
        }
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Serves a sync connection of room `id` over `transport` (an upgrade the server has
    /// answered with 101) once it resolves, as one of the hub's tracked tasks. `wire` is
    /// the TCP stream under `transport`, when it is a plain one (not HTTP/2): the
    /// connection's queue writes to it directly while the connection is quiet.
    pub(crate) fn serve<T>(
        self: &Arc<Self>,
        transport: T,
        id: String,
        access: Access,
        peer: Option<std::net::SocketAddr>,
        wire: Option<super::wire::Wire>,
    ) where
        T: std::future::Future<Output = Option<Box<dyn super::Transport>>> + Send + 'static,
    {
        let hub = self.clone();
        let config =
            super::connection::config(self.options.max_message_size, self.options.max_frame_size);
        self.tracker.spawn(async move {
            let Some(transport) = transport.await else {
                return;
            };
            // Boxed: the socket is moved into the connection's task, not copied along with it.
            let socket = Box::new(
                tokio_tungstenite::WebSocketStream::from_raw_socket(
                    transport,
                    tungstenite::protocol::Role::Server,
                    Some(config),
                )
                .await,
            );
            super::connection::run(socket, hub, id, access, peer, wire).await;
        });
    }

    /// Joins connection `conn` (from `peer`, when known) to room `id`, loading the room if
    /// needed (once, however many connections arrive together). A dynamic room that is not
    /// registered needs a valid name and counts against `peer`'s rooms per minute.
    pub(crate) async fn join(
        &self,
        id: &str,
        conn: u64,
        out: Outbox,
        peer: Option<IpAddr>,
    ) -> Result<(Arc<Entry>, Arc<Room>), JoinError> {
        loop {
            let entry = {
                let mut rooms = lock(&self.rooms);
                if self.shutdown.is_cancelled() {
                    return Err(JoinError::ShuttingDown);
                }
                match rooms.get(id) {
                    Some(entry) => entry.clone(),
                    None => {
                        let dynamic = if self.clients.contains_key(id) {
                            false
                        } else if self.dynamic_docs {
                            true
                        } else {
                            return Err(JoinError::NotFound);
                        };
                        if dynamic {
                            check_room_name(id, self.options.max_room_name_len)
                                .map_err(JoinError::BadName)?;
                            let count = self.dynamic_rooms.load(Ordering::Acquire);
                            if count >= self.options.max_dynamic_rooms {
                                tracing::warn!(room = id, count, "dynamic room limit reached");
                                return Err(JoinError::TooManyRooms);
                            }
                            // Counted last: only a room that is then opened uses the budget.
                            if peer.is_some_and(|peer| !self.opens.allow(peer)) {
                                tracing::warn!(room = id, ?peer, "new room rate limit reached");
                                return Err(JoinError::TooManyNewRooms);
                            }
                            self.dynamic_rooms.fetch_add(1, Ordering::AcqRel);
                        }
                        let entry = Arc::new(Entry {
                            dynamic,
                            slot: tokio::sync::Mutex::new(Slot::Empty),
                        });
                        rooms.insert(id.to_string(), entry.clone());
                        entry
                    }
                }
            };
            let mut slot = entry.slot.lock().await;
            let room = match &*slot {
                Slot::Gone => continue,
                Slot::Live(room) => room.clone(),
                Slot::Empty => {
                    let doc = if entry.dynamic {
                        match DynamicDoc::open(self.options.storage.clone(), id.to_string()).await {
                            Ok(doc) => RoomDoc::Dynamic(doc),
                            Err(e) => {
                                tracing::error!(room = id, error = %e, "cannot load a dynamic doc");
                                *slot = Slot::Gone;
                                self.forget(id, &entry);
                                return Err(JoinError::LoadFailed);
                            }
                        }
                    } else {
                        match self.clients.get(id) {
                            Some(client) => RoomDoc::Workspace(client.clone()),
                            None => return Err(JoinError::NotFound),
                        }
                    };
                    let relay = self.relay.get().cloned();
                    let opened =
                        Room::open(id, doc, self.options.max_awareness_states, relay).await;
                    let room = match opened {
                        Ok(room) => room,
                        Err(e) => {
                            tracing::error!(room = id, error = %e, "cannot open a room");
                            if entry.dynamic {
                                *slot = Slot::Gone;
                                self.forget(id, &entry);
                            }
                            return Err(JoinError::LoadFailed);
                        }
                    };
                    #[cfg(feature = "redis")]
                    if let (true, Some(bus)) = (entry.dynamic, self.bus.get()) {
                        bus.register_room(room.clone());
                    }
                    *slot = Slot::Live(room.clone());
                    lock(&self.live).insert(id.to_string());
                    tracing::debug!(room = id, dynamic = entry.dynamic, "room opened");
                    let _ = self.events.send(RoomEvent::Opened(id.to_string()));
                    room
                }
            };
            if self.shutdown.is_cancelled() {
                return Err(JoinError::ShuttingDown);
            }
            if room.len() >= self.options.max_room_connections {
                tracing::warn!(room = id, "room connection limit reached");
                return Err(JoinError::RoomFull);
            }
            room.add(conn, out).await;
            return Ok((entry.clone(), room));
        }
    }

    /// Removes a connection from its room; the last one out starts the eviction timer.
    pub(crate) fn leave(self: &Arc<Self>, entry: Arc<Entry>, room: Arc<Room>, conn: u64) {
        if room.remove(conn) > 0 || self.shutdown.is_cancelled() {
            return;
        }
        let epoch = room.epoch();
        let hub = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(hub.options.room_idle_timeout) => {}
                // Shutdown evicts every room itself.
                _ = hub.shutdown.cancelled() => return,
            }
            hub.evict(&entry, &room, Some(epoch)).await;
        });
    }

    /// Releases `room` if it is still the entry's live room and (unless `epoch` is `None`)
    /// nobody joined since `epoch`.
    async fn evict(&self, entry: &Arc<Entry>, room: &Arc<Room>, epoch: Option<u64>) {
        let mut slot = entry.slot.lock().await;
        match &*slot {
            Slot::Live(live) if Arc::ptr_eq(live, room) => {}
            _ => return,
        }
        if let Some(epoch) = epoch {
            if room.len() > 0 || room.epoch() != epoch {
                return;
            }
        }
        #[cfg(feature = "redis")]
        if let (true, Some(bus)) = (entry.dynamic, self.bus.get()) {
            bus.unregister(&room.id);
        }
        room.release().await;
        lock(&self.live).remove(&room.id);
        if entry.dynamic {
            *slot = Slot::Gone;
            self.forget(&room.id, entry);
        } else {
            *slot = Slot::Empty;
        }
        tracing::debug!(room = %room.id, "room evicted");
        let _ = self.events.send(RoomEvent::Evicted(room.id.clone()));
    }

    /// Drops `entry` from the registry (if it is still the one registered under `id`).
    fn forget(&self, id: &str, entry: &Arc<Entry>) {
        let mut rooms = lock(&self.rooms);
        if rooms.get(id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            rooms.remove(id);
            if entry.dynamic {
                self.dynamic_rooms.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Closes every connection with 1001, waits for them (up to `timeout`), then releases
    /// every room (dynamic docs are flushed and closed).
    pub(crate) async fn shutdown(&self, timeout: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("sync connections still open after the shutdown timeout");
        }
        let entries: Vec<Arc<Entry>> = lock(&self.rooms).values().cloned().collect();
        for entry in entries {
            let room = match &*entry.slot.lock().await {
                Slot::Live(room) => room.clone(),
                _ => continue,
            };
            self.evict(&entry, &room, None).await;
        }
    }
}
