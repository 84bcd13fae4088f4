//! The WebSocket handshake (RFC 6455, HTTP/1.1) of the sync route. The connection then
//! owns its `tokio-tungstenite` stream, which lets it send big messages in fragments
//! (no per-connection copy of a whole message) and serve both directions from one task.

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::server::ApiError;

/// A sync connection's socket.
pub(crate) type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A valid WebSocket upgrade request.
pub(crate) struct SyncUpgrade {
    /// The request's `Origin`, if it has one.
    pub origin: Option<String>,
    /// The client's address, when the server put it in the request (as `ConnectInfo`).
    pub peer: Option<SocketAddr>,
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Why a request is not a WebSocket upgrade: answered with 426 in the JSON envelope.
pub(crate) struct NotAnUpgrade(&'static str);

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            format!(
                "this route speaks the y-websocket protocol over a WebSocket ({})",
                self.0
            ),
        )
        .into_response()
    }
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for SyncUpgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotAnUpgrade> {
        if parts.version != Version::HTTP_11 || parts.method != Method::GET {
            return Err(NotAnUpgrade("an HTTP/1.1 GET upgrade request is required"));
        }
        if !header_has(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(NotAnUpgrade(
                "`Connection` header did not include `upgrade`",
            ));
        }
        if !header_has(&parts.headers, header::UPGRADE, "websocket") {
            return Err(NotAnUpgrade("`Upgrade` header did not include `websocket`"));
        }
        if !header_has(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(NotAnUpgrade("`Sec-WebSocket-Version` header must be `13`"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(NotAnUpgrade("`Sec-WebSocket-Key` header is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(NotAnUpgrade("this connection cannot be upgraded"))?;
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned());
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| *peer);
        Ok(SyncUpgrade {
            origin,
            peer,
            key,
            on_upgrade,
        })
    }
}

impl SyncUpgrade {
    /// Answers 101 and runs `serve` on the socket once the upgrade completes.
    pub fn accept<F, Fut>(
        self,
        tracker: &TaskTracker,
        config: WebSocketConfig,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Box<Socket>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        let task = async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    // Boxed: the socket is moved into the connection's task, not copied
                    // along with it.
                    let socket = Box::new(
                        WebSocketStream::from_raw_socket(
                            TokioIo::new(upgraded),
                            Role::Server,
                            Some(config),
                        )
                        .await,
                    );
                    serve(socket).await;
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        };
        tracker.spawn(task);
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(value) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
        }
        response
    }
}
