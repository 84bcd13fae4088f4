//! `GET /workspaces/{ws}/sync`: the WebSocket handshake (RFC 6455, HTTP/1.1) of the sync
//! route, the Origin check, and the hand-over of the upgraded connection to the sync layer
//! (which knows nothing of HTTP). The connection then owns its `tokio-tungstenite`
//! stream, which lets it send big messages in fragments (no per-connection copy of a whole
//! message) and serve both directions from one task.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use super::{Access, ApiError, ServerState};
use crate::sync::wire::Wire;
use crate::sync::Transport;

/// A valid WebSocket upgrade request.
pub(crate) struct SyncUpgrade {
    /// The request's `Origin`, if it has one.
    pub origin: Option<String>,
    /// The client's address, when the server put it in the request (as `ConnectInfo`).
    pub peer: Option<SocketAddr>,
    /// The connection's TCP stream, when the server put it in the request.
    wire: Option<Wire>,
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// The TCP stream a request came on, which the server's accept loop puts in each
/// request's extensions: once upgraded, a sync connection's queue writes to it directly
/// while the connection is quiet.
#[derive(Clone)]
pub(crate) struct TcpStreamOf(pub Wire);

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
        let wire = parts
            .extensions
            .remove::<TcpStreamOf>()
            .map(|TcpStreamOf(wire)| wire);
        Ok(SyncUpgrade {
            origin,
            peer,
            wire,
            key,
            on_upgrade,
        })
    }
}

impl SyncUpgrade {
    /// Answers 101 and hands the connection, once upgraded, to the sync hub as a
    /// connection of room `id`.
    fn accept(self, state: &ServerState, id: String, access: Access) -> Response {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        let transport = async move {
            match on_upgrade.await {
                Ok(upgraded) => Some(Box::new(TokioIo::new(upgraded)) as Box<dyn Transport>),
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket upgrade failed");
                    None
                }
            }
        };
        state
            .inner
            .sync
            .serve(transport, id, access, self.peer, self.wire);
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

/// `GET /workspaces/{ws}/sync`: upgrades to a y-websocket connection of room `ws` (a
/// request that is not a WebSocket upgrade gets 426; an Origin not allowed, 403).
pub(crate) async fn sync_route(
    State(state): State<ServerState>,
    Path(ws): Path<String>,
    access: Option<axum::Extension<Access>>,
    upgrade: SyncUpgrade,
) -> Response {
    // Set by the route's auth policy; without it (never expected), nothing is allowed.
    let access = access.map_or(Access::Denied, |axum::Extension(access)| access);
    let allowed_origins = &state.inner.options.allowed_origins;
    if let (Some(allowed), Some(origin)) = (allowed_origins, &upgrade.origin) {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
            tracing::warn!(%origin, room = %ws, "WebSocket from an origin not allowed");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("origin `{origin}` may not open sync connections"),
            )
            .into_response();
        }
    }
    upgrade.accept(&state, ws, access)
}
