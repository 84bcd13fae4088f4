//! Authentication and access control: none (the default), a fixed token, or an async
//! verify callback that grants read-write or read-only access, or denies.
//!
//! The token comes from `Authorization: Bearer <token>` or, for WebSockets (browsers cannot
//! set headers on them), from `?token=<token>`. REST answers 401 without a valid token and
//! 403 when read-only access tries to write. A sync connection without access is accepted
//! and closed at once with 4401 `Unauthorized` (a browser sees close codes, not HTTP
//! statuses); a read-only one receives updates and may use awareness, but a doc update that
//! would change the doc is refused (not applied, not broadcast, logged) and closes it with
//! 4403 (see [`close::FORBIDDEN`](crate::sync::close::FORBIDDEN)).
//!
//! Access is decided per matched route: every route of the server's router carries a
//! [`Policy`] as a route layer (REST and custom routes by method, the sync upgrade and the
//! docs routes their own), so no raw-path test can let a request past its route's check.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use axum::extract::{RawPathParams, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use subtle::ConstantTimeEq;
use tower::util::Either;

use super::{ApiError, ServerState};
pub use crate::access::Access;
use crate::storage::BoxFuture;

/// What a verify callback sees.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthRequest {
    /// The token (`Authorization: Bearer` or `?token=`), if any.
    pub token: Option<String>,
    /// The workspace (room) id, for `/workspaces/{id}/...` paths.
    pub workspace: Option<String>,
    /// The request method.
    pub method: Method,
    /// The request URI (as the server's router sees it).
    pub uri: Uri,
    /// The request headers.
    pub headers: HeaderMap,
}

/// How requests are authenticated.
///
/// The token comes from `Authorization: Bearer <token>` or `?token=<token>`. REST answers
/// 401 without a valid token and 403 when read-only access writes; a sync connection
/// without access is closed with 4401 `Unauthorized`, and a read-only one may read and use
/// awareness, but a doc update that would change the doc closes it with 4403 `Forbidden`.
#[derive(Clone, Default)]
pub enum Auth {
    /// Everyone may read and write (the default).
    #[default]
    None,
    /// Requests carrying this token may read and write; others are denied. Compared in
    /// constant time.
    Token(String),
    /// An async callback decides for each request.
    Verify(Arc<dyn Fn(AuthRequest) -> BoxFuture<Access> + Send + Sync>),
}

impl Auth {
    /// Fixed-token auth.
    pub fn token(token: impl Into<String>) -> Auth {
        Auth::Token(token.into())
    }

    /// Auth by an async callback.
    ///
    /// ```
    /// use epicenter_server::server::{Access, Auth, ServerOptions};
    /// let auth = Auth::verify(|request| async move {
    ///     match request.token.as_deref() {
    ///         Some("writer") => Access::ReadWrite,
    ///         Some("reader") => Access::ReadOnly,
    ///         _ => Access::Denied,
    ///     }
    /// });
    /// let options = ServerOptions::default().auth(auth);
    /// ```
    pub fn verify<F, Fut>(verify: F) -> Auth
    where
        F: Fn(AuthRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Access> + Send + 'static,
    {
        Auth::Verify(Arc::new(move |request| Box::pin(verify(request))))
    }

    /// Whether requests are checked at all.
    pub fn is_on(&self) -> bool {
        !matches!(self, Auth::None)
    }

    async fn decide(&self, request: AuthRequest) -> Access {
        match self {
            Auth::None => Access::ReadWrite,
            Auth::Token(expected) => match &request.token {
                Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => {
                    Access::ReadWrite
                }
                _ => Access::Denied,
            },
            Auth::Verify(verify) => verify(request).await,
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(..)"),
            Auth::Verify(_) => f.write_str("Verify(..)"),
        }
    }
}

/// The token of a request: the bearer token, else `?token=`.
fn token_of(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    let query = request.uri().query()?;
    form_urlencoded_token(query)
}

/// The `token` parameter of a query string, percent-decoded.
fn form_urlencoded_token(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "token").then(|| {
            let value = value.replace('+', " ");
            percent_encoding::percent_decode_str(&value)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The workspace id of `/workspaces/{id}/...`, for log fields only: access is decided from
/// the matched route's parameters (see [`Policy`]).
pub(crate) fn workspace_of(uri: &Uri) -> Option<String> {
    let rest = uri.path().strip_prefix("/workspaces/")?;
    let id = rest.split('/').next().filter(|id| !id.is_empty())?;
    Some(
        percent_encoding::percent_decode_str(id)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// What a route requires, attached to the route itself (as a `route_layer`), so access is
/// decided from the route that matched and never from a string test on the raw path.
/// With auth on, every route of [`Server::router`](super::Server::router) gets one; routes
/// without an explicit policy (custom routes, metrics, anything added later) get
/// [`Policy::ByMethod`]. Without auth, see [`open_access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Reads (`GET`, `HEAD`, `OPTIONS`) need read access, every other method read-write.
    ByMethod,
    /// The sync upgrade: the verdict goes to the handler, which closes a denied socket
    /// with 4401 (browsers see close codes, not statuses) and refuses a read-only one's
    /// doc updates.
    Sync,
    /// Discovery, the OpenAPI document and the Scalar page: open with `public_docs`,
    /// otherwise as [`Policy::ByMethod`].
    Docs,
}

impl Policy {
    /// The middleware enforcing this policy on the routes of `router`. Without auth there
    /// is nothing to enforce, and the routes are left as they are: [`open_access`] gives
    /// every request its verdict instead, once around the whole app.
    pub(crate) fn guard(
        self,
        state: &ServerState,
        router: Router<ServerState>,
    ) -> Router<ServerState> {
        if !state.inner.options.auth.is_on() {
            return router;
        }
        let layer = if self == Policy::Docs && state.inner.options.public_docs {
            // Open: the verdict `check` would attach, without running it on each request.
            Either::Left(axum::Extension(Access::ReadWrite))
        } else {
            Either::Right(axum::middleware::from_fn_with_state(
                (state.clone(), self),
                check,
            ))
        };
        router.route_layer(layer)
    }
}

/// Without auth, the layer giving every request (routes and fallbacks alike) the
/// read-write verdict [`check`] would give it: applied once around the app instead of a
/// middleware on every route, as each layer on a router wraps every route once more.
pub(crate) fn open_access(state: &ServerState) -> Option<axum::Extension<Access>> {
    (!state.inner.options.auth.is_on()).then_some(axum::Extension(Access::ReadWrite))
}

/// The same guard around a handler, for the fallbacks (404, 405): without a token, even
/// a wrong path gets 401, so paths cannot be probed. Without auth, the handler as it is
/// (see [`open_access`]).
pub(crate) fn guard_handler<H, T>(
    state: &ServerState,
    handler: H,
) -> impl axum::handler::Handler<T, ServerState>
where
    H: axum::handler::Handler<T, ServerState>,
    T: 'static,
{
    let layer = if state.inner.options.auth.is_on() {
        Either::Right(axum::middleware::from_fn_with_state(
            (state.clone(), Policy::ByMethod),
            check,
        ))
    } else {
        Either::Left(tower::layer::util::Identity::new())
    };
    axum::handler::Handler::layer(handler, layer)
}

/// Whether a method only reads.
fn reads(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The middleware of a route: decides access under the route's [`Policy`], refuses what
/// the access does not allow, and hands the verdict to the handler as an
/// `Extension<Access>`.
async fn check(
    State((state, policy)): State<(ServerState, Policy)>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut request: Request,
    next: Next,
) -> Response {
    let options = &state.inner.options;
    if !options.auth.is_on() || (policy == Policy::Docs && options.public_docs) {
        request.extensions_mut().insert(Access::ReadWrite);
        return next.run(request).await;
    }
    let workspace = params.ok().and_then(|params| {
        params
            .iter()
            .find(|(name, _)| *name == "ws")
            .map(|(_, value)| value.to_string())
    });
    let asked = AuthRequest {
        token: token_of(&request),
        workspace,
        method: request.method().clone(),
        uri: request.uri().clone(),
        headers: request.headers().clone(),
    };
    let access = options.auth.decide(asked).await;
    if access != Access::ReadWrite {
        tracing::info!(
            method = %request.method(),
            path = %request.uri().path(),
            ?access,
            ?policy,
            "restricted request"
        );
    }
    if policy == Policy::Sync {
        request.extensions_mut().insert(access);
        return next.run(request).await;
    }
    match access {
        Access::Denied => {
            state
                .inner
                .sync
                .stats
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "a valid token is required")
                .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Access::ReadOnly if !reads(request.method()) => {
            ApiError::new(StatusCode::FORBIDDEN, "this token may only read").into_response()
        }
        Access::ReadOnly | Access::ReadWrite => {
            request.extensions_mut().insert(access);
            next.run(request).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_bearer_header_or_the_query() {
        let request = |uri: &str, auth: Option<&str>| {
            let mut builder = Request::builder().uri(uri);
            if let Some(auth) = auth {
                builder = builder.header(header::AUTHORIZATION, auth);
            }
            builder.body(axum::body::Body::empty()).unwrap()
        };
        assert_eq!(
            token_of(&request("/x", Some("Bearer abc"))),
            Some("abc".into())
        );
        assert_eq!(
            token_of(&request("/x", Some("bearer  abc "))),
            Some("abc".into())
        );
        assert_eq!(token_of(&request("/x", Some("Basic abc"))), None);
        assert_eq!(
            token_of(&request("/x?a=1&token=s3%2Fc+t", None)),
            Some("s3/c t".into())
        );
        assert_eq!(token_of(&request("/x?tokens=1", None)), None);
        assert_eq!(token_of(&request("/x", None)), None);
    }

    #[test]
    fn workspace_ids_come_from_the_path() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(
            workspace_of(&uri("/workspaces/blog/sync")),
            Some("blog".into())
        );
        assert_eq!(
            workspace_of(&uri("/workspaces/a%20b/tables/t")),
            Some("a b".into())
        );
        assert_eq!(workspace_of(&uri("/workspaces/")), None);
        assert_eq!(workspace_of(&uri("/openapi")), None);
    }

    #[tokio::test]
    async fn fixed_tokens_must_match_exactly() {
        let auth = Auth::token("secret");
        let ask = |token: Option<&str>| AuthRequest {
            token: token.map(str::to_string),
            workspace: None,
            method: Method::GET,
            uri: Uri::from_static("/"),
            headers: HeaderMap::new(),
        };
        assert_eq!(auth.decide(ask(Some("secret"))).await, Access::ReadWrite);
        assert_eq!(auth.decide(ask(Some("secret2"))).await, Access::Denied);
        assert_eq!(auth.decide(ask(Some("secre"))).await, Access::Denied);
        assert_eq!(auth.decide(ask(None)).await, Access::Denied);
        assert_eq!(Auth::None.decide(ask(None)).await, Access::ReadWrite);
    }
}
