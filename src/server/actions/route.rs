//! Serving actions: `GET` and `POST /workspaces/{ws}/actions/{path}`.
//!
//! One route serves every action; the auth guard has already decided by method (a query's
//! `GET` needs read access, a mutation's `POST` read-write). The input is read, checked
//! (every problem listed in a 422) and deserialized before the handler runs. The handler
//! runs as a task of its own, so a panic is a 500 that says nothing of it, and a client
//! that hangs up does not cut a mutation off halfway (a query's task is aborted then: its
//! answer has no one to go to). A mutation is answered once what
//! it wrote is durable, as REST writes are (an error is answered at once).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use tokio_util::task::AbortOnDropHandle;

use super::{ActionContext, ActionKind, Mounted};
use crate::access::Access;
use crate::server::rest::{data, durable};
use crate::server::{ApiError, ServerState};

/// The action route.
pub(crate) fn routes() -> Router<ServerState> {
    Router::new().route("/workspaces/{ws}/actions/{*path}", get(call).post(call))
}

async fn call(
    State(state): State<ServerState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path((ws, path)) = params.map_err(ApiError::from_rejection)?;
    let client = state
        .client(&ws)
        .ok_or_else(|| ApiError::not_found(format!("unknown workspace `{ws}`")))?
        .clone();
    let mounted = state
        .action(&ws, &path)
        .ok_or_else(|| ApiError::not_found(format!("no action `{path}` in workspace `{ws}`")))?
        .clone();
    let kind = mounted.action.kind;
    let method = request.method();
    let served = match kind {
        ActionKind::Query => method == Method::GET || method == Method::HEAD,
        ActionKind::Mutation => method == Method::POST,
    };
    if !served {
        return Ok(wrong_method(method, &path, kind));
    }
    // The guard hands every request its verdict; without one, assume the least.
    let access = request
        .extensions()
        .get::<Access>()
        .copied()
        .unwrap_or(Access::ReadOnly);
    let input = match kind {
        ActionKind::Query => mounted.input.read_query(request.uri().query())?,
        ActionKind::Mutation => {
            let body: Result<Json<Value>, JsonRejection> =
                Json::from_request(request, &state).await;
            body.map_err(ApiError::from_rejection)?.0
        }
    };
    let input = checked(&mounted, input).await?;
    let cx = ActionContext {
        client: client.clone(),
        access,
    };
    let task = tokio::spawn((mounted.action.handler)(cx, input));
    let output = match kind {
        // A query's work is for its client alone: if the client hangs up (this future is
        // dropped), the task is aborted with it instead of running on unseen.
        ActionKind::Query => AbortOnDropHandle::new(task).await,
        // A mutation runs to its end: stopping it between two writes would leave half.
        ActionKind::Mutation => task.await,
    }
    .map_err(ApiError::internal)??;
    if kind == ActionKind::Mutation {
        durable(&state, &client).await?;
    }
    Ok(data(StatusCode::OK, output))
}

/// `input` if it matches the action's schema, else the 422 listing its problems. Checking
/// stops at the first problem, but listing them finds every one, which for a big input
/// with a problem in every item takes long (~0.2 s per MiB): that is done on a blocking
/// thread, so a bad input never holds an async worker longer than a good one.
async fn checked(mounted: &Arc<Mounted>, input: Value) -> Result<Value, ApiError> {
    if mounted.input.is_valid(&input) {
        return Ok(input);
    }
    let mounted = mounted.clone();
    tokio::task::spawn_blocking(move || mounted.input.check(&input).map(|()| input))
        .await
        .map_err(ApiError::internal)?
}

/// 405 with `Allow`: a query is only served on `GET`, a mutation on `POST`.
fn wrong_method(method: &Method, path: &str, kind: ActionKind) -> Response {
    let (allowed, allow) = match kind {
        ActionKind::Query => (Method::GET, "GET, HEAD"),
        ActionKind::Mutation => (Method::POST, "POST"),
    };
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on action `{path}`: it is a {}, served on {allowed}",
            kind.name()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
