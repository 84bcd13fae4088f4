//! `ServerOptions`: everything `create_server` can be told, with sane defaults.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use tower_http::cors::CorsLayer;

use super::auth::Auth;
use crate::storage::{MemoryStorage, StorageProvider};

/// The default port, as in Epicenter.
pub const DEFAULT_PORT: u16 = 3913;

/// Where the Scalar page loads its JavaScript from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScalarAssets {
    /// A URL (by default the jsDelivr CDN; needs internet access in the browser).
    Url(String),
    /// A local file (the `standalone.js` of the npm package `@scalar/api-reference`),
    /// served at `/openapi/scalar.js`, so the page works offline.
    File(PathBuf),
}

impl Default for ScalarAssets {
    fn default() -> Self {
        ScalarAssets::Url("https://cdn.jsdelivr.net/npm/@scalar/api-reference".into())
    }
}

/// Options for [`create_server`](super::create_server). Every field has a default; set
/// fields directly or with the chainable setters.
///
/// ```
/// use epicenter_server::server::ServerOptions;
/// let options = ServerOptions::default().port(0).body_limit(64 * 1024);
/// assert_eq!(options.port, Some(0));
/// ```
#[derive(Clone)]
pub struct ServerOptions {
    /// The port; `None` means `PORT` from the environment, else 3913. `Some(0)` picks a free
    /// port (see the address [`Server::start`](super::Server::start) returns).
    pub port: Option<u16>,
    /// The interface to bind. Default `127.0.0.1`: serving other interfaces is a choice.
    pub host: IpAddr,
    /// Largest request body accepted, in bytes (413 beyond). Default 1 MiB.
    pub body_limit: usize,
    /// CORS for the REST routes. Off by default.
    pub cors: Option<CorsLayer>,
    /// Where the Scalar page at `/openapi` gets its JavaScript.
    pub scalar: ScalarAssets,
    /// Title of the API in the OpenAPI document and Scalar page.
    pub title: String,
    /// How long `destroy()` lets in-flight requests finish before closing connections.
    pub shutdown_timeout: Duration,
    /// Whether a sync connection to an unknown workspace id creates a doc on demand (a
    /// *dynamic doc*, stored by [`ServerOptions::storage`]). `None` (the default) turns
    /// them on exactly when the server has no workspaces. When off, unknown ids are closed
    /// with 4404 `Room not found: <id>`.
    pub dynamic_docs: Option<bool>,
    /// Where dynamic docs are stored (each under its room id). Default: in memory, for
    /// as long as the server lives. Use `SqliteStorage::new(dir)` to keep them.
    pub storage: Arc<dyn StorageProvider>,
    /// Interval of WebSocket pings; a connection that has not answered (or sent anything)
    /// by the next ping is closed. Default 30 s.
    pub ping_interval: Duration,
    /// How long a room stays loaded after its last connection leaves. Default 60 s.
    pub room_idle_timeout: Duration,
    /// Largest inbound WebSocket message, in bytes; a larger one closes that connection
    /// with 1009. Default 64 MiB.
    pub max_message_size: usize,
    /// Largest inbound WebSocket frame, in bytes (a message may arrive in several frames);
    /// a larger one closes that connection with 1009. Never more than `max_message_size`.
    /// Default 16 MiB.
    pub max_frame_size: usize,
    /// How many outputs may be pending for one connection: frames queued or not yet
    /// written, and SYNC_STATUS echoes waiting for durability or ready to send. A connection
    /// that falls this far behind (a peer that stops reading, however it keeps the
    /// connection busy) is closed with 1013 (try again later) and resyncs when it
    /// reconnects. Default 4096.
    pub send_queue: usize,
    /// How requests are authenticated (see [`Auth`]). Default: none.
    pub auth: Auth,
    /// Whether discovery, the OpenAPI document and the Scalar page stay open when auth is
    /// on. Default false: they need a token too.
    pub public_docs: bool,
    /// Origins allowed to open sync WebSockets (e.g. `https://app.example.com`), against
    /// cross-site WebSocket hijacking: an upgrade whose `Origin` is not listed gets 403.
    /// Requests without `Origin` (not from a browser) are allowed. Default `None`: any.
    pub allowed_origins: Option<Vec<String>>,
    /// Most sync connections at once; more are closed with 1013. Default 100,000.
    pub max_connections: usize,
    /// Most connections in one room; more are closed with 1013. Default 20,000.
    pub max_room_connections: usize,
    /// Most dynamic rooms at once; a new one beyond is closed with 1013. Default 10,000.
    pub max_dynamic_rooms: usize,
    /// Longest name of a dynamic doc (the `{id}` of `/workspaces/{id}/sync` when no
    /// workspace has it), in bytes. A dynamic doc's name is 1 to this many ASCII letters,
    /// digits, `-`, `_` and `.`, not starting with `.`: it is also its storage name (a file
    /// name with `SqliteStorage`). A connection to another unknown name is closed with
    /// 4400 `Bad room name: ...`, before any doc is created. Workspace ids are not
    /// checked. Default 128.
    pub max_room_name_len: usize,
    /// Most dynamic rooms one client address may open (create, or load again after
    /// eviction) per minute; joining a room that is loaded is not counted. Beyond it the
    /// connection is closed with 1013 (try again later). An IPv6 address counts by its /64
    /// prefix. Behind a reverse proxy every client has the proxy's address: raise it
    /// there. Without a peer address (a router served by another accept loop without
    /// `ConnectInfo<SocketAddr>`) it does not apply. `usize::MAX` turns it off. Default 60.
    pub max_new_rooms_per_minute: usize,
    /// Most awareness states one sync connection may have present at once (a y-websocket
    /// client has one). An awareness update that would take a connection past it is not
    /// applied and closes the connection with 1008 (policy violation); the states the
    /// connection had are removed as when it leaves. Default 16.
    pub max_awareness_states: usize,
    /// How long a new sync connection may stay silent before its first message; then it
    /// is closed with 1008. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long an HTTP/1 connection may take to send a request's headers (counted from
    /// when the server is ready to read them, so an idle keep-alive connection is closed
    /// after it too); then the connection is closed. Bounds slow-header clients
    /// ("slowloris"). The same deadline closes any connection (HTTP/2 included) that has
    /// had no request in flight that long, and fails a request whose body pauses that long.
    /// Default 30 s.
    pub header_read_timeout: Duration,
    /// Serves `GET /metrics` (Prometheus text; behind auth like every route). Default off.
    pub metrics: bool,
    /// How long a REST write waits for its change to be durable before answering. A
    /// write still not durable by then (storage is failing and retrying) is answered 503
    /// with `Retry-After`; the change stays applied and is stored once storage recovers.
    /// Default 5 s.
    pub write_durability_timeout: Duration,
    /// The bus to the other nodes (feature `redis`), when this server is one of several.
    #[cfg(feature = "redis")]
    pub bus: Option<crate::sync::RedisBus>,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("port", &self.port)
            .field("host", &self.host)
            .field("body_limit", &self.body_limit)
            .field("cors", &self.cors)
            .field("scalar", &self.scalar)
            .field("title", &self.title)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("dynamic_docs", &self.dynamic_docs)
            .field("ping_interval", &self.ping_interval)
            .field("room_idle_timeout", &self.room_idle_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("max_frame_size", &self.max_frame_size)
            .field("send_queue", &self.send_queue)
            .field("auth", &self.auth)
            .field("public_docs", &self.public_docs)
            .field("allowed_origins", &self.allowed_origins)
            .field("max_connections", &self.max_connections)
            .field("max_room_connections", &self.max_room_connections)
            .field("max_dynamic_rooms", &self.max_dynamic_rooms)
            .field("max_room_name_len", &self.max_room_name_len)
            .field("max_new_rooms_per_minute", &self.max_new_rooms_per_minute)
            .field("max_awareness_states", &self.max_awareness_states)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("metrics", &self.metrics)
            .field("write_durability_timeout", &self.write_durability_timeout)
            .field("bus", &{
                #[cfg(feature = "redis")]
                let on = self.bus.is_some();
                #[cfg(not(feature = "redis"))]
                let on = false;
                on
            })
            .finish_non_exhaustive()
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            port: None,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            body_limit: 1 << 20,
            cors: None,
            scalar: ScalarAssets::default(),
            title: "Epicenter API".into(),
            shutdown_timeout: Duration::from_secs(10),
            dynamic_docs: None,
            storage: Arc::new(MemoryStorage::new()),
            ping_interval: Duration::from_secs(30),
            room_idle_timeout: Duration::from_secs(60),
            max_message_size: 64 << 20,
            max_frame_size: 16 << 20,
            send_queue: 4096,
            auth: Auth::None,
            public_docs: false,
            allowed_origins: None,
            max_connections: 100_000,
            max_room_connections: 20_000,
            max_dynamic_rooms: 10_000,
            max_room_name_len: 128,
            max_new_rooms_per_minute: 60,
            max_awareness_states: 16,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            metrics: false,
            write_durability_timeout: Duration::from_secs(5),
            #[cfg(feature = "redis")]
            bus: None,
        }
    }
}

impl ServerOptions {
    /// Sets the port (0: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Sets the interface to bind.
    pub fn host(mut self, host: impl Into<IpAddr>) -> Self {
        self.host = host.into();
        self
    }

    /// Sets the largest request body, in bytes.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Turns CORS on for the REST routes.
    pub fn cors(mut self, cors: CorsLayer) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Serves Scalar's JavaScript from a local file instead of the CDN.
    pub fn scalar_js_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.scalar = ScalarAssets::File(path.into());
        self
    }

    /// Sets the API title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Turns dynamic docs on or off (default: on exactly when there are no workspaces).
    pub fn dynamic_docs(mut self, on: bool) -> Self {
        self.dynamic_docs = Some(on);
        self
    }

    /// Stores dynamic docs with this provider (default: memory).
    pub fn storage(mut self, storage: impl StorageProvider) -> Self {
        self.storage = Arc::new(storage);
        self
    }

    /// Sets the WebSocket ping interval.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets how long an empty room stays loaded.
    pub fn room_idle_timeout(mut self, timeout: Duration) -> Self {
        self.room_idle_timeout = timeout;
        self
    }

    /// Sets the largest inbound WebSocket message, in bytes.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the largest inbound WebSocket frame, in bytes.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets how many outgoing frames may wait for one connection.
    pub fn send_queue(mut self, frames: usize) -> Self {
        self.send_queue = frames.max(1);
        self
    }

    /// Runs this server as one node of several (see [`crate::sync::RedisBus`]): the
    /// workspaces' commits are told to the other nodes, and theirs applied here. The
    /// workspaces must use shared storage (`PostgresStorage`).
    #[cfg(feature = "redis")]
    pub fn redis_bus(mut self, bus: crate::sync::RedisBus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// The part of these options the sync layer uses.
    pub(crate) fn sync_options(&self) -> crate::sync::SyncOptions {
        crate::sync::SyncOptions {
            dynamic_docs: self.dynamic_docs,
            storage: self.storage.clone(),
            ping_interval: self.ping_interval,
            room_idle_timeout: self.room_idle_timeout,
            max_message_size: self.max_message_size,
            max_frame_size: self.max_frame_size,
            send_queue: self.send_queue,
            max_connections: self.max_connections,
            max_room_connections: self.max_room_connections,
            max_dynamic_rooms: self.max_dynamic_rooms,
            handshake_timeout: self.handshake_timeout,
            max_room_name_len: self.max_room_name_len,
            max_new_rooms_per_minute: self.max_new_rooms_per_minute,
            max_awareness_states: self.max_awareness_states,
        }
    }

    /// Sets how requests are authenticated.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Keeps discovery, the OpenAPI document and the Scalar page open when auth is on.
    pub fn public_docs(mut self, open: bool) -> Self {
        self.public_docs = open;
        self
    }

    /// Allows sync WebSockets only from these origins (see
    /// [`ServerOptions::allowed_origins`]).
    pub fn allow_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the most sync connections at once.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets the most connections in one room.
    pub fn max_room_connections(mut self, n: usize) -> Self {
        self.max_room_connections = n;
        self
    }

    /// Sets the most dynamic rooms at once.
    pub fn max_dynamic_rooms(mut self, n: usize) -> Self {
        self.max_dynamic_rooms = n;
        self
    }

    /// Sets the longest dynamic doc name, in bytes.
    pub fn max_room_name_len(mut self, bytes: usize) -> Self {
        self.max_room_name_len = bytes;
        self
    }

    /// Sets how many dynamic rooms one client address may open per minute.
    pub fn max_new_rooms_per_minute(mut self, n: usize) -> Self {
        self.max_new_rooms_per_minute = n;
        self
    }

    /// Sets how many awareness states one sync connection may have present at once.
    pub fn max_awareness_states(mut self, n: usize) -> Self {
        self.max_awareness_states = n;
        self
    }

    /// Sets how long a new sync connection may stay silent before its first message.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets how long an HTTP/1 connection may take to send a request's headers (a new
    /// connection, its first bytes too). Connections closed for it are counted in
    /// [`SyncStats::header_timeouts`](crate::sync::SyncStats) and `/metrics`.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Turns the `/metrics` route on or off.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Sets how long a REST write waits for durability before answering 503.
    pub fn write_durability_timeout(mut self, timeout: Duration) -> Self {
        self.write_durability_timeout = timeout;
        self
    }

    /// The port to bind: the option, else `PORT`, else 3913.
    pub fn resolved_port(&self) -> u16 {
        self.port
            .or_else(|| std::env::var("PORT").ok().and_then(|p| p.parse().ok()))
            .unwrap_or(DEFAULT_PORT)
    }
}
