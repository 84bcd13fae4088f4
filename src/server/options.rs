//! `ServerOptions`: everything `create_server` can be told, with sane defaults.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use tower_http::cors::CorsLayer;

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
#[derive(Debug, Clone)]
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

    /// The port to bind: the option, else `PORT`, else 3913.
    pub fn resolved_port(&self) -> u16 {
        self.port
            .or_else(|| std::env::var("PORT").ok().and_then(|p| p.parse().ok()))
            .unwrap_or(DEFAULT_PORT)
    }
}
