//! `ServerState`: what every handler (built-in or custom) can reach through axum's `State`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::sync::SyncHub;
use crate::workspace::WorkspaceClient;

/// Shared state of a server: its workspace clients and its generated documents. Cheap to
/// clone. Custom routes get it with `State<ServerState>`.
#[derive(Clone)]
pub struct ServerState {
    pub(crate) inner: Arc<StateInner>,
}

pub(crate) struct StateInner {
    pub clients: BTreeMap<String, WorkspaceClient>,
    /// The OpenAPI document, and its serialization when served at the root.
    pub openapi: utoipa::openapi::OpenApi,
    pub openapi_json: axum::body::Bytes,
    /// The Scalar page.
    pub scalar_html: axum::body::Bytes,
    /// Sync rooms and connections.
    pub sync: Arc<SyncHub>,
    /// The options the server was created with (auth, origins, timeouts).
    pub options: super::ServerOptions,
    /// The `/metrics` registry.
    pub metrics: super::metrics::Metrics,
    /// The mounted actions, by workspace.
    pub actions: BTreeMap<String, super::actions::WorkspaceActions>,
}

impl ServerState {
    /// The state for these clients and documents; the OpenAPI document is serialized here,
    /// once.
    pub(crate) fn new(
        clients: BTreeMap<String, WorkspaceClient>,
        openapi: utoipa::openapi::OpenApi,
        scalar_html: axum::body::Bytes,
        sync: Arc<SyncHub>,
        options: super::ServerOptions,
        actions: BTreeMap<String, super::actions::WorkspaceActions>,
    ) -> Self {
        let openapi_json = serde_json::to_vec(&openapi).unwrap_or_default().into();
        ServerState {
            inner: Arc::new(StateInner {
                clients,
                openapi,
                openapi_json,
                scalar_html,
                metrics: super::metrics::Metrics::new(sync.clone()),
                sync,
                options,
                actions,
            }),
        }
    }

    /// The client of workspace `id`.
    pub fn client(&self, id: &str) -> Option<&WorkspaceClient> {
        self.inner.clients.get(id)
    }

    /// The sync side: rooms, events, counters.
    pub fn sync(&self) -> &SyncHub {
        &self.inner.sync
    }

    /// The mounted action `path` of workspace `ws`.
    pub(crate) fn action(&self, ws: &str, path: &str) -> Option<&Arc<super::actions::Mounted>> {
        self.inner.actions.get(ws)?.get(path)
    }

    /// A copy of this state with another OpenAPI document and other actions (the metrics
    /// registry starts anew: call before serving).
    pub(crate) fn rebuilt(
        &self,
        openapi: utoipa::openapi::OpenApi,
        actions: BTreeMap<String, super::actions::WorkspaceActions>,
    ) -> Self {
        let inner = &self.inner;
        ServerState::new(
            inner.clients.clone(),
            openapi,
            inner.scalar_html.clone(),
            inner.sync.clone(),
            inner.options.clone(),
            actions,
        )
    }

    /// Every client, ordered by workspace id.
    pub fn clients(&self) -> impl Iterator<Item = &WorkspaceClient> {
        self.inner.clients.values()
    }
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("workspaces", &self.inner.clients.keys().collect::<Vec<_>>())
            .finish()
    }
}
