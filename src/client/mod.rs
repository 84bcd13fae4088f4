//! The Rust sync provider: keeps a local doc (a plain `yrs::Doc`, or a
//! [`WorkspaceClient`]'s, so a local SQLite-backed workspace syncs too) in sync with a
//! server's room at `ws://host/workspaces/{id}/sync`, in the y-websocket protocol.
//!
//! - **Status**: [`Status`] goes offline → connecting → handshaking → connected (after the
//!   server's step2); [`SyncProvider::status`] is a `watch` of the latest, and
//!   [`SyncProvider::status_events`] a stream of every change.
//! - **Reconnect** with backoff `500 ms × min(10, 1.1^failures)`, reset once a session
//!   reaches connected. Close codes 4400–4499 (auth refused, a read-only connection that
//!   sent an edit, unknown room, bad room name) are final: status [`Status::Error`], no
//!   more attempts until [`SyncProvider::connect`] is called.
//! - **Auth**: none, a static token, or an async callback asked again after every 3 failed
//!   attempts; the token goes in `?token=`.
//! - **Heartbeat**: after 2 s without a frame the provider sends a SYNC_STATUS (102)
//!   probe; once the server has echoed 102, no frame within 3 s of a probe means the link
//!   is dead (5 s worst case): the provider reconnects.
//! - **`has_local_changes`**: every local update bumps a version, sent in 102 after the
//!   updates; the server echoes it once they are durable. Clean means the server holds
//!   every local change durably. After a reconnect the version is sent only after the
//!   offline edits (the answer to the server's step1), so clean is never reported early.
//! - **Awareness**: [`SyncProvider::set_awareness`], [`SyncProvider::peers`]; the local
//!   state is renewed every 15 s and removed (sent before the socket closes) on destroy.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use epicenter_server::client::{ProviderOptions, Status, SyncProvider};
//! use yrs::{Doc, Text, Transact};
//!
//! let doc = Doc::new();
//! let provider = SyncProvider::new(
//!     doc.clone(),
//!     "ws://127.0.0.1:3913/workspaces/notes/sync",
//!     ProviderOptions::default(),
//! )?;
//! provider.connect()?;
//! provider.status().wait_for(|s| *s == Status::Connected).await?;
//! let text = doc.get_or_insert_text("t");
//! text.push(&mut doc.transact_mut(), "hello");
//! // Resolves once the server has the edit durably.
//! provider.has_local_changes().wait_for(|dirty| !dirty).await?;
//! provider.destroy().await;
//! # Ok(())
//! # }
//! ```

mod backoff;
mod session;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use yrs::sync::Awareness;
use yrs::{Doc, Origin, ReadTxn, StateVector, Transact};

pub use crate::error::ClientError;
use crate::lock::lock;
use crate::storage::BoxFuture;
use crate::sync::protocol;
use crate::workspace::WorkspaceClient;

/// A provider's connection state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not connected, and not trying (before `connect()`, after `disconnect()`).
    Offline,
    /// Opening a connection, or waiting to retry.
    Connecting,
    /// Connected; waiting for the server's state (step2).
    Handshaking,
    /// In sync: the server's state is applied, and local changes go out as they happen.
    Connected,
    /// The server refused for good (close code 4400–4499): no more attempts until
    /// `connect()` is called again. The codes are in
    /// [`sync::close`](crate::sync::close): 4401 no valid token; 4403 the connection is
    /// read-only and sent a local edit, which the server refused (it stays a local change:
    /// `has_local_changes` remains true); 4404 no such room; 4400 a bad room name.
    Error {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
}

/// A token callback's future.
pub type TokenFuture = BoxFuture<Result<String, String>>;

/// How the provider authenticates; the token is sent as `?token=`.
#[derive(Clone, Default)]
pub enum Auth {
    /// No token.
    #[default]
    None,
    /// The same token every time.
    Token(String),
    /// Asked before the first attempt and again after every 3 failed attempts in a row.
    Callback(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

impl Auth {
    /// A static token.
    pub fn token(token: impl Into<String>) -> Auth {
        Auth::Token(token.into())
    }

    /// An async token callback (an error counts as a failed attempt).
    pub fn callback<F, Fut, E>(callback: F) -> Auth
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        Auth::Callback(Arc::new(move || {
            let future = callback();
            Box::pin(async move { future.await.map_err(|e| e.to_string()) })
        }))
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(..)"),
            Auth::Callback(_) => f.write_str("Callback(..)"),
        }
    }
}

/// Settings of a [`SyncProvider`]; the defaults follow the y-websocket conventions.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProviderOptions {
    /// How to authenticate (default: no token).
    pub auth: Auth,
    /// Longest wait for the TCP connection and WebSocket handshake, and then for the
    /// server's first message (default 10 s).
    pub connect_timeout: Duration,
    /// The backoff base: waits are `base × min(10, 1.1^failures)` (default 500 ms).
    pub backoff_base: Duration,
    /// Silence after which a SYNC_STATUS probe is sent (default 2 s).
    pub heartbeat_idle: Duration,
    /// Silence after a probe that means the link is dead, once the server has echoed a
    /// probe (default 3 s).
    pub heartbeat_timeout: Duration,
    /// How often the local awareness state is renewed; peers drop states not renewed
    /// for 30 s (default 15 s).
    pub awareness_renewal: Duration,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            auth: Auth::None,
            connect_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(500),
            heartbeat_idle: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(3),
            awareness_renewal: Duration::from_secs(15),
        }
    }
}

impl ProviderOptions {
    /// Sets [`ProviderOptions::auth`].
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Sets [`ProviderOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ProviderOptions::backoff_base`].
    pub fn backoff_base(mut self, base: Duration) -> Self {
        self.backoff_base = base;
        self
    }

    /// Sets [`ProviderOptions::heartbeat_idle`] and [`ProviderOptions::heartbeat_timeout`].
    pub fn heartbeat(mut self, idle: Duration, timeout: Duration) -> Self {
        self.heartbeat_idle = idle;
        self.heartbeat_timeout = timeout;
        self
    }

    /// Sets [`ProviderOptions::awareness_renewal`].
    pub fn awareness_renewal(mut self, every: Duration) -> Self {
        self.awareness_renewal = every;
        self
    }
}

/// Something for the session to send.
pub(crate) enum Outbound {
    /// A local doc update (already encoded as a frame) and its version.
    Update(bytes::Bytes, u64),
    /// A local awareness update frame.
    Awareness(bytes::Bytes),
}

/// Keeps a local doc in sync with a server's room. See the [module docs](self).
///
/// Dropping the provider stops it (without removing its awareness state first: use
/// [`SyncProvider::destroy`] for that).
pub struct SyncProvider {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub url: String,
    pub doc: Doc,
    pub workspace: Option<WorkspaceClient>,
    pub options: ProviderOptions,
    /// Origin of the updates applied from the server (not sent back).
    pub origin: Origin,
    /// Key of the doc observer.
    observer: Origin,
    status: watch::Sender<Status>,
    status_events: broadcast::Sender<Status>,
    dirty: watch::Sender<bool>,
    /// Local updates so far.
    pub version: AtomicU64,
    /// The highest version the server has echoed (it holds those updates durably).
    acked: AtomicU64,
    pub awareness: Mutex<Awareness>,
    peers: watch::Sender<BTreeMap<u64, serde_json::Value>>,
    /// Where local updates go while a session is open.
    pub outbound: Mutex<Option<mpsc::UnboundedSender<Outbound>>>,
    run: Mutex<Run>,
    /// Set by `destroy()`: the session removes the local awareness state before closing.
    pub destroying: AtomicBool,
}

#[derive(Default)]
struct Run {
    task: Option<JoinHandle<()>>,
    stop: CancellationToken,
    destroyed: bool,
}

static NEXT_PROVIDER: AtomicU64 = AtomicU64::new(1);

impl SyncProvider {
    /// A provider for `doc` and the sync URL of a room (`ws://host:port/workspaces/{id}/sync`;
    /// `wss://` is not supported yet). It starts offline: call
    /// [`SyncProvider::connect`].
    pub fn new(
        doc: Doc,
        url: impl Into<String>,
        options: ProviderOptions,
    ) -> Result<SyncProvider, ClientError> {
        SyncProvider::build(doc, None, url.into(), options)
    }

    /// A provider for a workspace client's doc (remote updates go through
    /// [`WorkspaceClient::apply_update`], so they are stored and settled locally), synced
    /// with the workspace of the same id on `server` (`ws://host:port` or
    /// `http://host:port`, optionally with a path prefix).
    pub fn for_workspace(
        client: &WorkspaceClient,
        server: &str,
        options: ProviderOptions,
    ) -> Result<SyncProvider, ClientError> {
        let base = server.trim_end_matches('/');
        let base = if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            base.to_string()
        };
        let url = format!("{base}/workspaces/{}/sync", client.id());
        SyncProvider::build(client.doc().clone(), Some(client.clone()), url, options)
    }

    fn build(
        doc: Doc,
        workspace: Option<WorkspaceClient>,
        url: String,
        options: ProviderOptions,
    ) -> Result<SyncProvider, ClientError> {
        if url.starts_with("wss://") {
            return Err(ClientError::InvalidUrl(format!(
                "{url}: this build has no TLS support; use ws:// (e.g. behind a TLS-terminating proxy)"
            )));
        }
        if !url.starts_with("ws://") {
            return Err(ClientError::InvalidUrl(format!(
                "{url}: a sync URL starts with ws://"
            )));
        }
        let n = NEXT_PROVIDER.fetch_add(1, Ordering::Relaxed);
        // Content from before the provider (a local workspace's stored edits) counts as a
        // local change until a handshake has sent it.
        let existing = u64::from(doc.transact().state_vector() != StateVector::default());
        let shared = Arc::new(Shared {
            url,
            awareness: Mutex::new(Awareness::new(doc.clone())),
            doc,
            workspace,
            options,
            origin: Origin::from(format!("epicenter-sync-provider-{n}").as_str()),
            observer: Origin::from(format!("epicenter-sync-provider-observer-{n}").as_str()),
            status: watch::channel(Status::Offline).0,
            status_events: broadcast::channel(64).0,
            dirty: watch::channel(existing == 1).0,
            version: AtomicU64::new(existing),
            acked: AtomicU64::new(0),
            peers: watch::channel(BTreeMap::new()).0,
            outbound: Mutex::new(None),
            run: Mutex::default(),
            destroying: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        shared
            .doc
            .observe_update_v1(shared.observer.clone(), move |txn, event| {
                if let Some(shared) = weak.upgrade() {
                    if txn.origin() != Some(&shared.origin) {
                        shared.local_update(&event.update);
                    }
                }
            })
            .map_err(|e| ClientError::Doc(e.to_string()))?;
        Ok(SyncProvider { shared })
    }

    /// Starts connecting (and reconnecting) in the background. Idempotent: does nothing
    /// while the provider is already running. Must be called inside a Tokio runtime.
    pub fn connect(&self) -> Result<(), ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let mut run = lock(&self.shared.run);
        if run.destroyed {
            return Err(ClientError::Destroyed);
        }
        if run.task.as_ref().is_some_and(|task| !task.is_finished()) {
            return Ok(());
        }
        run.stop = CancellationToken::new();
        run.task = Some(runtime.spawn(session::supervise(self.shared.clone(), run.stop.clone())));
        Ok(())
    }

    /// Closes the connection and stops reconnecting; the status becomes offline.
    /// Idempotent. `connect()` starts again.
    pub async fn disconnect(&self) {
        let (task, stop) = {
            let mut run = lock(&self.shared.run);
            (run.task.take(), run.stop.clone())
        };
        stop.cancel();
        if let Some(task) = task {
            let _ = task.await;
        }
        if !matches!(self.shared.status.borrow().clone(), Status::Offline) {
            self.shared.set_status(Status::Offline);
        }
    }

    /// Removes the local awareness state (the removal is sent before the socket closes),
    /// closes the connection and stops the provider for good. Idempotent.
    pub async fn destroy(&self) {
        self.shared.destroying.store(true, Ordering::Release);
        {
            let mut awareness = lock(&self.shared.awareness);
            awareness.clean_local_state();
        }
        lock(&self.shared.run).destroyed = true;
        self.disconnect().await;
        let _ = self
            .shared
            .doc
            .unobserve_update_v1(self.shared.observer.clone());
    }

    /// The latest status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// Every status change from now on, in order (a receiver that falls 64 changes
    /// behind skips the oldest).
    pub fn status_events(&self) -> broadcast::Receiver<Status> {
        self.shared.status_events.subscribe()
    }

    /// Whether some local change is not yet durable on the server.
    pub fn has_local_changes(&self) -> watch::Receiver<bool> {
        self.shared.dirty.subscribe()
    }

    /// The local doc.
    pub fn doc(&self) -> &Doc {
        &self.shared.doc
    }

    /// The sync URL.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Sets the local awareness state and sends it.
    pub fn set_awareness(&self, state: serde_json::Value) -> Result<(), ClientError> {
        let frame = {
            let mut awareness = lock(&self.shared.awareness);
            awareness
                .set_local_state(state)
                .map_err(|e| ClientError::Awareness(e.to_string()))?;
            session::own_awareness(&awareness)
        };
        if let Some(frame) = frame {
            self.shared.send(Outbound::Awareness(frame));
        }
        Ok(())
    }

    /// The other clients' awareness states by client id, kept current.
    pub fn peers(&self) -> watch::Receiver<BTreeMap<u64, serde_json::Value>> {
        self.shared.peers.subscribe()
    }
}

impl Drop for SyncProvider {
    fn drop(&mut self) {
        // Stops tracking local changes even if the observer cannot be removed right now
        // (another transaction holds the doc).
        self.shared.destroying.store(true, Ordering::Release);
        lock(&self.shared.run).stop.cancel();
        let _ = self
            .shared
            .doc
            .unobserve_update_v1(self.shared.observer.clone());
    }
}

impl fmt::Debug for SyncProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncProvider")
            .field("url", &self.shared.url)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A local doc update: bump the version, mark dirty, send it if a session is open.
    ///
    /// Runs inside the doc's commit, so versions follow commit order, and a reader holding
    /// a read transaction sees a version that matches the doc's state.
    fn local_update(&self, update: &[u8]) {
        if self.destroying.load(Ordering::Acquire) {
            return;
        }
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        self.dirty
            .send_if_modified(|dirty| !std::mem::replace(dirty, true));
        self.send(Outbound::Update(protocol::update(update), version));
    }

    /// Queues a frame for the open session, if there is one (otherwise the next session's
    /// handshake carries the change).
    pub fn send(&self, out: Outbound) {
        if let Some(tx) = &*lock(&self.outbound) {
            let _ = tx.send(out);
        }
    }

    pub fn set_status(&self, status: Status) {
        if *self.status.borrow() == status {
            return;
        }
        tracing::debug!(url = %self.url, ?status, "sync provider status");
        self.status.send_replace(status.clone());
        let _ = self.status_events.send(status);
    }

    /// The server echoed `version`: everything up to it is durable there.
    pub fn acknowledged(&self, version: u64) {
        let acked = self.acked.fetch_max(version, Ordering::AcqRel).max(version);
        let clean = acked >= self.version.load(Ordering::Acquire);
        self.dirty.send_if_modified(|dirty| {
            let changed = *dirty == clean;
            *dirty = !clean;
            changed
        });
    }

    /// Publishes the other clients' awareness states.
    pub fn publish_peers(&self, awareness: &Awareness) {
        let own = awareness.client_id();
        let peers: BTreeMap<u64, serde_json::Value> = awareness
            .iter()
            .filter(|(id, _)| *id != own)
            .filter_map(|(id, state)| {
                let json = state.data.as_deref()?;
                serde_json::from_str(json)
                    .ok()
                    .map(|value| (id.get(), value))
            })
            .collect();
        self.peers.send_if_modified(|current| {
            let changed = *current != peers;
            *current = peers;
            changed
        });
    }
}
