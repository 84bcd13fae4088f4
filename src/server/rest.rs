//! REST CRUD over workspace tables: `/workspaces/{ws}/tables/{table}[/{id}]`.
//!
//! Handlers are thin: extract (mapping every rejection to the JSON envelope), call the
//! table handle, and for writes wait until the change is durable before answering, so a
//! 2xx means the row is on disk. While storage cannot commit, a write is refused before it
//! is applied (503, `"applied": false`) once too much waits, or answered 503
//! (`"applied": true`) when it is not durable within `write_durability_timeout`; both with
//! `Retry-After`.
//!
//! Writes wait for the doc's lock, which a big sync update can hold for seconds, so they
//! run on a blocking thread; reads run on the spot unless a commit is indexing the table,
//! and then on a blocking thread too. The async workers never wait for a doc.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::ServerState;
use crate::workspace::{RowResult, TableHandle, WorkspaceClient};

/// The table routes.
pub(crate) fn routes() -> Router<ServerState> {
    Router::new()
        .route("/workspaces/{ws}/tables/{table}", get(list).post(create))
        .route(
            "/workspaces/{ws}/tables/{table}/{id}",
            get(get_one).put(update).patch(update).delete(remove),
        )
}

fn client<'a>(state: &'a ServerState, ws: &str) -> Result<&'a WorkspaceClient, ApiError> {
    state
        .client(ws)
        .ok_or_else(|| ApiError::not_found(format!("unknown workspace `{ws}`")))
}

fn table(
    state: &ServerState,
    ws: &str,
    name: &str,
) -> Result<(WorkspaceClient, TableHandle), ApiError> {
    let client = client(state, ws)?;
    let table = client
        .table(name)
        .map_err(|_| ApiError::not_found(format!("unknown table `{name}` in workspace `{ws}`")))?;
    Ok((client.clone(), table))
}

/// Runs table work that may wait for the doc on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        tracing::error!(error = %e, "a table operation failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the operation failed")
    })
}

/// One row, read on the spot unless a commit holds the table's rows.
async fn get_row(table: &TableHandle, id: &str) -> Result<RowResult, ApiError> {
    if let Some(row) = table.try_get(id) {
        return Ok(row);
    }
    let (table, id) = (table.clone(), id.to_string());
    blocking(move || table.get(&id)).await
}

/// The start of the success envelope `{"data": ...}`, which [`envelope`] closes.
fn envelope_start() -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"{\"data\":");
    body
}

/// The answer whose body is `body` (from [`envelope_start`], the data written) closed.
fn envelope(status: StatusCode, mut body: Vec<u8>) -> Response {
    body.push(b'}');
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The success envelope `{"data": ...}`, written straight into the body.
pub(crate) fn data(status: StatusCode, value: Value) -> Response {
    let mut body = envelope_start();
    if serde_json::to_writer(&mut body, &value).is_err() {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the response",
        )
        .into_response();
    }
    envelope(status, body)
}

/// Waits until the client's changes so far are durable, for at most the server's
/// `write_durability_timeout`; past it, 503 with `Retry-After` (the change stays applied
/// and is stored once storage recovers).
pub(crate) async fn durable(state: &ServerState, client: &WorkspaceClient) -> Result<(), ApiError> {
    let timeout = state.inner.options.write_durability_timeout;
    match tokio::time::timeout(timeout, client.flushed()).await {
        Ok(flushed) => flushed.map_err(|e| crate::WorkspaceError::from(e).into()),
        Err(_) => Err(ApiError::not_durable(&client.storage_status())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<usize>,
    offset: Option<usize>,
    /// Read by the auth layer (`?token=`); accepted here so it is not an unknown parameter.
    #[serde(rename = "token")]
    _token: Option<String>,
}

async fn list(
    State(state): State<ServerState>,
    path: Result<Path<(String, String)>, PathRejection>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((ws, name)) = path.map_err(ApiError::from_rejection)?;
    let Query(page) = page.map_err(ApiError::from_rejection)?;
    let (_, table) = table(&state, &ws, &name)?;
    let (offset, limit) = (page.offset.unwrap_or(0), page.limit.unwrap_or(usize::MAX));
    let rows = match table.try_page_valid(offset, limit) {
        Some(rows) => rows,
        None => blocking(move || table.page_valid(offset, limit)).await?,
    };
    Ok(data(
        StatusCode::OK,
        Value::Array(rows.into_iter().map(Value::Object).collect()),
    ))
}

async fn get_one(
    State(state): State<ServerState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((ws, name, id)) = path.map_err(ApiError::from_rejection)?;
    let (_, table) = table(&state, &ws, &name)?;
    // A valid row goes straight from its cells into the body.
    let mut body = envelope_start();
    let found = match table.try_get_json(&id, &mut body) {
        Some(None) => return Ok(envelope(StatusCode::OK, body)),
        Some(Some(other)) => other,
        None => get_row(&table, &id).await?,
    };
    match found {
        RowResult::Valid(row) => Ok(data(StatusCode::OK, Value::Object(row))),
        RowResult::Invalid { row, issues, .. } => Err(ApiError::invalid(
            format!("row `{id}` is stored but does not match the schema of `{name}`"),
            &issues,
        )
        .with("row", Value::Object(row))),
        RowResult::NotFound => Err(ApiError::not_found(format!(
            "no row `{id}` in table `{name}`"
        ))),
    }
}

async fn create(
    State(state): State<ServerState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path((ws, name)) = path.map_err(ApiError::from_rejection)?;
    let (client, table) = table(&state, &ws, &name)?;
    let Json(body) = body.map_err(ApiError::from_rejection)?;
    let id_field = table.definition().id_field().to_string();
    let id = body
        .get(&id_field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_default();
    let writer = table.clone();
    let created = blocking(move || writer.upsert(body)).await??;
    durable(&state, &client).await?;
    let row = match get_row(&table, &id).await? {
        RowResult::Valid(row) => Value::Object(row),
        _ => Value::Null,
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(data(status, row))
}

async fn update(
    State(state): State<ServerState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path((ws, name, id)) = path.map_err(ApiError::from_rejection)?;
    let (client, table) = table(&state, &ws, &name)?;
    let Json(mut body) = body.map_err(ApiError::from_rejection)?;
    // The URL names the row: an id in the body is ignored.
    if let Value::Object(fields) = &mut body {
        fields.remove(table.definition().id_field());
    }
    let row = blocking(move || table.update(&id, body)).await??;
    durable(&state, &client).await?;
    Ok(data(StatusCode::OK, Value::Object(row)))
}

async fn remove(
    State(state): State<ServerState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((ws, name, id)) = path.map_err(ApiError::from_rejection)?;
    let (client, table) = table(&state, &ws, &name)?;
    let (writer, row) = (table.clone(), id.clone());
    if !blocking(move || writer.delete(&row)).await?? {
        return Err(ApiError::not_found(format!(
            "no row `{id}` in table `{name}`"
        )));
    }
    durable(&state, &client).await?;
    Ok(data(StatusCode::OK, json!({ "id": id })))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::lock::lock;
    use crate::workspace::{id, text, WorkspaceDefinition};

    const GUARD: Duration = Duration::from_secs(10);

    /// While a commit is indexing a table (here: its rows' lock held by another thread), a
    /// read of it waits off the only worker, which goes on serving other tasks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_read_of_a_table_a_commit_holds_waits_off_the_worker() {
        let client = WorkspaceDefinition::builder("blog")
            .table("posts", [("id", id()), ("title", text())])
            .build()
            .unwrap()
            .in_memory()
            .create()
            .await
            .unwrap();
        let table = client.table("posts").unwrap();
        table.upsert(json!({"id": "p1", "title": "t"})).unwrap();
        let (release, released) = mpsc::channel::<()>();
        let (held, is_held) = mpsc::channel();
        let core = table.core.clone();
        let holder = std::thread::spawn(move || {
            let _rows = lock(&core.tables[0].state);
            held.send(()).unwrap();
            let _ = released.recv();
        });
        is_held.recv().unwrap();
        let reader = table.clone();
        let read = tokio::spawn(async move { get_row(&reader, "p1").await });
        // Waited for on this (non-worker) thread: a parked worker would never run it.
        let (ran, has_run) = mpsc::channel();
        tokio::spawn(async move { ran.send(()).unwrap() });
        let other_task = has_run.recv_timeout(GUARD);
        release.send(()).unwrap();
        holder.join().unwrap();
        assert!(other_task.is_ok(), "the worker was parked by the read");
        let row = tokio::time::timeout(GUARD, read).await.unwrap().unwrap();
        assert!(matches!(row, Ok(RowResult::Valid(_))), "{row:?}");
        client.destroy().await.unwrap();
    }
}
