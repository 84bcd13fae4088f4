//! The server layer: `create_server(clients, options)` wraps workspace clients in an axum
//! app (REST CRUD, discovery, OpenAPI + Scalar) and owns its lifecycle.
//!
//! The clients stay alive until the server is destroyed. `start()` binds and serves in the
//! background; `destroy()` stops accepting, lets in-flight requests finish, then flushes
//! and destroys every client. Custom routes and nesting into an existing axum app go through
//! plain axum `Router`s with [`ServerState`] as their state.

mod accept;
pub mod actions;
mod auth;
mod discovery;
mod doc_sizes;
mod docs;
mod error;
mod idle;
mod linger;
mod listen;
mod metrics;
pub(crate) mod openapi;
mod options;
mod rest;
mod state;
mod sync_route;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, MethodRouter};
use axum::Router;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

pub use auth::{Access, Auth, AuthRequest};
pub use error::{ApiError, MAX_ISSUES, MAX_ISSUE_TEXT};
pub use options::{ScalarAssets, ServerOptions, DEFAULT_PORT};
pub use state::ServerState;

use crate::sync::SyncHub;
use crate::workspace::{WorkspaceClient, WorkspaceDefinition};

/// Why a server could not be created or started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Two clients share a workspace id.
    #[error("two clients have the workspace id `{0}`; each workspace can be served once")]
    DuplicateWorkspace(String),
    /// A client was already destroyed.
    #[error("the client of workspace `{0}` was destroyed")]
    DestroyedClient(String),
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `start()` was called on a running server.
    #[error("the server is already started")]
    AlreadyStarted,
    /// The server was destroyed.
    #[error("the server was destroyed")]
    Destroyed,
    /// Actions were given for a workspace the server does not serve.
    #[error("no workspace `{0}` to mount actions on")]
    UnknownWorkspace(String),
    /// An action cannot be mounted (a bad path, a path taken, an input a query string
    /// cannot carry, a schema that clashes with another of its name).
    #[error("action `{path}` of workspace `{workspace}`: {reason}")]
    Action {
        /// The workspace.
        workspace: String,
        /// The action's path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Destroying a client failed (its storage could not flush).
    #[error("destroying workspace `{id}` failed: {source}")]
    Client {
        /// The workspace.
        id: String,
        /// Why.
        #[source]
        source: crate::WorkspaceError,
    },
}

struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Lifecycle {
    running: Option<Running>,
    destroyed: bool,
}

/// A server over workspace clients. See [`create_server`].
pub struct Server {
    state: ServerState,
    options: ServerOptions,
    /// Routes added with [`Server::route`] / [`Server::merge`].
    custom: Router<ServerState>,
    lifecycle: Arc<Mutex<Lifecycle>>,
}

/// Wraps `clients` (any number, zero included) in a server. Each workspace id may appear
/// once. Nothing is bound until [`Server::start`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use epicenter_server::server::{create_server, ServerOptions};
/// use epicenter_server::storage::SqliteStorage;
/// use epicenter_server::workspace::{id, text, WorkspaceDefinition};
///
/// let blog = WorkspaceDefinition::builder("blog")
///     .table("posts", [("id", id()), ("title", text())])
///     .build()?;
/// let client = blog.with_storage(SqliteStorage::new("./data")).create().await?;
/// let server = create_server([client], ServerOptions::default())?;
/// server.run_until_shutdown().await?;
/// # Ok(()) }
/// ```
pub fn create_server(
    clients: impl IntoIterator<Item = WorkspaceClient>,
    options: ServerOptions,
) -> Result<Server, ServerError> {
    let mut map = BTreeMap::new();
    for client in clients {
        if client.is_destroyed() {
            return Err(ServerError::DestroyedClient(client.id().to_string()));
        }
        let id = client.id().to_string();
        if map.insert(id.clone(), client).is_some() {
            return Err(ServerError::DuplicateWorkspace(id));
        }
    }
    let definitions: Vec<&WorkspaceDefinition> = map.values().map(|c| c.definition()).collect();
    let mut document = openapi::openapi_document(
        &definitions,
        openapi::DocInfo {
            title: options.title.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: None,
        },
    );
    if options.auth.is_on() {
        openapi::document_auth(&mut document, options.public_docs);
    }
    let scalar_html = docs::scalar_page(&options.title, &options.scalar);
    let sync = Arc::new(SyncHub::new(options.sync_options(), map.clone()));
    #[cfg(feature = "redis")]
    if let Some(bus) = &options.bus {
        crate::sync::bus::start(
            bus,
            map.values().cloned().collect(),
            sync.clone(),
            sync.shutdown.clone(),
        );
    }
    Ok(Server {
        state: ServerState::new(
            map,
            document,
            scalar_html.into(),
            sync,
            options.clone(),
            BTreeMap::new(),
        ),
        options,
        custom: Router::new(),
        lifecycle: Arc::default(),
    })
}

impl Server {
    /// The shared state (clients, documents) handlers see.
    pub fn state(&self) -> &ServerState {
        &self.state
    }

    /// The client of workspace `id`.
    pub fn client(&self, id: &str) -> Option<&WorkspaceClient> {
        self.state.client(id)
    }

    /// The sync side: loaded rooms, room events, counters.
    pub fn sync(&self) -> &SyncHub {
        self.state.sync()
    }

    /// The options the server was created with.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Adds a custom route (the seed's `server.app.get('/health', ...)`). Handlers can take
    /// `State<ServerState>` to reach the clients. Add routes before [`Server::start`].
    pub fn route(&mut self, path: &str, method_router: MethodRouter<ServerState>) -> &mut Self {
        self.custom = std::mem::take(&mut self.custom).route(path, method_router);
        self
    }

    /// Adds the documentation of custom routes to the OpenAPI document (and so to the
    /// Scalar page): paths, components and tags of `doc` are merged in, e.g. from a
    /// `#[derive(utoipa::OpenApi)]` struct's `openapi()`.
    pub fn describe(&mut self, doc: utoipa::openapi::OpenApi) -> &mut Self {
        let mut document = self.state.inner.openapi.clone();
        document.merge(doc);
        self.state = self
            .state
            .rebuilt(document, self.state.inner.actions.clone());
        self
    }

    /// Mounts the [`actions`](actions::Actions) of workspace `workspace`: each query at
    /// `GET /workspaces/{ws}/actions/{path}` and each mutation at `POST`, validated,
    /// documented in the OpenAPI document and listed by discovery, behind auth like every
    /// route (read access for a query, read-write for a mutation). Call it again to add
    /// more; mount before [`Server::start`] or [`Server::router`].
    ///
    /// Fails, changing nothing, when the server has no such workspace or an action cannot
    /// be mounted ([`ServerError::Action`] says which and why).
    ///
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use epicenter_server::server::actions::{ActionContext, Actions};
    /// use epicenter_server::server::{create_server, ApiError, ServerOptions};
    /// use epicenter_server::workspace::{id, text, WorkspaceDefinition};
    /// use serde::{Deserialize, Serialize};
    /// use serde_json::json;
    /// use utoipa::ToSchema;
    ///
    /// #[derive(Deserialize, ToSchema)]
    /// struct Rename {
    ///     id: String,
    ///     title: String,
    /// }
    ///
    /// #[derive(Serialize, ToSchema)]
    /// struct Renamed {
    ///     id: String,
    /// }
    ///
    /// async fn rename(cx: ActionContext, input: Rename) -> Result<Renamed, ApiError> {
    ///     let posts = cx.client.table("posts")?;
    ///     let Rename { id, title } = input;
    ///     // A missing row is a 404 (`WorkspaceError` converts to the error envelope).
    ///     cx.blocking(move |_| posts.update(&id, json!({ "title": title })).map(|_| id))
    ///         .await?
    ///         .map(|id| Renamed { id })
    ///         .map_err(ApiError::from)
    /// }
    ///
    /// let blog = WorkspaceDefinition::builder("blog")
    ///     .table("posts", [("id", id()), ("title", text())])
    ///     .build()?;
    /// let client = blog.in_memory().create().await?;
    /// let mut server = create_server([client], ServerOptions::default())?;
    /// server.actions("blog", Actions::new().mutation("posts/rename", "Renames a post.", rename))?;
    /// // POST /workspaces/blog/actions/posts/rename {"id": "p1", "title": "New"}
    /// # Ok(()) }
    /// ```
    pub fn actions(
        &mut self,
        workspace: &str,
        actions: actions::Actions,
    ) -> Result<&mut Self, ServerError> {
        if self.state.client(workspace).is_none() {
            return Err(ServerError::UnknownWorkspace(workspace.to_string()));
        }
        let mut all = self.state.inner.actions.clone();
        let mounted = actions::mount(workspace, all.get(workspace), &actions)?;
        let mut document = self.state.inner.openapi.clone();
        actions::document(&mut document, workspace, &mounted)?;
        if self.options.auth.is_on() {
            // The new operations get their 401 and 403 answers and the security schemes.
            openapi::document_auth(&mut document, self.options.public_docs);
        }
        let entry = all.entry(workspace.to_string()).or_default();
        for m in mounted {
            entry.insert(m.path.clone(), m);
        }
        self.state = self.state.rebuilt(document, all);
        Ok(self)
    }

    /// Merges a router of custom routes.
    pub fn merge(&mut self, router: Router<ServerState>) -> &mut Self {
        self.custom = std::mem::take(&mut self.custom).merge(router);
        self
    }

    /// The whole app as a plain `Router`, to serve yourself or to nest into an existing
    /// axum app (`app.nest("/api", server.router())`). Call [`Server::destroy`] when your
    /// app stops, so the clients are flushed and released.
    pub fn router(&self) -> Router {
        use auth::Policy;
        let state = &self.state;
        // Every route added here is guarded by method (reads need read access, other
        // methods read-write); the routes below with another policy are added after it.
        let mut guarded = Router::new()
            .merge(rest::routes())
            .merge(actions::routes())
            .merge(self.custom.clone());
        if self.options.metrics {
            guarded = guarded.route("/metrics", get(metrics::scrape));
        }
        let mut docs = Router::new()
            .route("/", get(discovery::discovery))
            .route("/openapi", get(docs::scalar))
            .route("/openapi/json", get(docs::openapi_json));
        if let ScalarAssets::File(path) = &self.options.scalar {
            docs = docs.route_service(
                "/openapi/scalar.js",
                tower_http::services::ServeFile::new(path),
            );
        }
        let sync = Router::new().route("/workspaces/{ws}/sync", get(sync_route::sync_route));
        let mut app = Policy::ByMethod
            .guard(state, guarded)
            .merge(Policy::Docs.guard(state, docs))
            .merge(Policy::Sync.guard(state, sync))
            .fallback(auth::guard_handler(state, error::no_route))
            .method_not_allowed_fallback(auth::guard_handler(state, error::wrong_method));
        // A span per request, with the workspace it is about, around the body limit (and,
        // without auth, the verdict every request gets): one layer, as each
        // `Router::layer` wraps every route once more.
        let trace = tower_http::trace::TraceLayer::new_for_http().make_span_with(
            |request: &axum::http::Request<axum::body::Body>| {
                // The fields are worked out only when the span is enabled.
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    workspace = auth::workspace_of(request.uri()).as_deref().unwrap_or_default(),
                )
            },
        );
        app = app.layer(
            tower::ServiceBuilder::new()
                .layer(trace)
                .layer(DefaultBodyLimit::max(self.options.body_limit))
                .option_layer(auth::open_access(state)),
        );
        if self.options.metrics {
            // Outside auth, so refused requests are counted too.
            app = app.layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                metrics::count,
            ));
        }
        if let Some(cors) = &self.options.cors {
            app = app.layer(cors.clone());
        }
        app.with_state(self.state.clone())
    }

    /// Binds `host:port` (with an accept queue of 4,096 connections, capped by the kernel)
    /// and serves in the background. Returns the bound address (useful with port 0).
    pub async fn start(&self) -> Result<SocketAddr, ServerError> {
        let mut life = self.lifecycle.lock().await;
        if life.destroyed {
            return Err(ServerError::Destroyed);
        }
        if life.running.is_some() {
            return Err(ServerError::AlreadyStarted);
        }
        let wanted = SocketAddr::new(self.options.host, self.options.resolved_port());
        let listener = listen::bind(wanted).map_err(|source| ServerError::Bind {
            addr: wanted,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: wanted,
            source,
        })?;
        let (stop, stopped) = watch::channel(false);
        let app = self.router();
        let task = tokio::spawn(accept::serve(
            listener,
            app,
            stopped,
            self.options.header_read_timeout,
            self.state.sync().stats.clone(),
        ));
        tracing::info!(%addr, "serving");
        life.running = Some(Running { addr, stop, task });
        Ok(addr)
    }

    /// The bound address while running.
    pub async fn local_addr(&self) -> Option<SocketAddr> {
        self.lifecycle.lock().await.running.as_ref().map(|r| r.addr)
    }

    /// Stops the server: stops accepting, lets in-flight requests finish (up to the
    /// shutdown timeout), closes every sync connection with 1001 and waits for it,
    /// releases the rooms (flushing dynamic docs), then flushes and destroys every client. Calling it again does
    /// nothing. Errors from clients are reported after all were destroyed.
    pub async fn destroy(&self) -> Result<(), ServerError> {
        let mut life = self.lifecycle.lock().await;
        if life.destroyed {
            return Ok(());
        }
        life.destroyed = true;
        if let Some(running) = life.running.take() {
            let _ = running.stop.send(true);
            let mut task = running.task;
            if tokio::time::timeout(self.options.shutdown_timeout, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("requests still running after the shutdown timeout; closing them");
                task.abort();
                let _ = task.await;
            }
        }
        self.state
            .inner
            .sync
            .shutdown(self.options.shutdown_timeout)
            .await;
        let mut first_error = None;
        for client in self.state.clients() {
            if let Err(source) = client.destroy().await {
                tracing::error!(workspace = client.id(), error = %source, "destroying a client failed");
                first_error.get_or_insert(ServerError::Client {
                    id: client.id().to_string(),
                    source,
                });
            }
        }
        tracing::info!("server destroyed");
        first_error.map_or(Ok(()), Err)
    }

    /// Starts (unless already started), serves until SIGINT (Ctrl+C) or SIGTERM, then
    /// destroys the server.
    pub async fn run_until_shutdown(&self) -> Result<(), ServerError> {
        if self.local_addr().await.is_none() {
            self.start().await?;
        }
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        self.destroy().await
    }
}

/// Resolves on SIGINT or (on Unix) SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
