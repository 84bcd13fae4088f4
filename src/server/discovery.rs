//! `GET /`: what this server serves, with links: each workspace with its tables and
//! actions, and every action by `<ws>/<path>`.

use axum::extract::{OriginalUri, State};
use axum::http::Uri;
use axum::Json;
use serde_json::{json, Value};

use super::openapi::path_segment;
use super::state::ServerState;

/// The path prefix the server is nested under (empty when it is not).
pub(crate) fn prefix(original: &Uri, uri: &Uri) -> String {
    let (full, inner) = (original.path(), uri.path());
    full.strip_suffix(inner)
        .unwrap_or_else(|| full.trim_end_matches('/'))
        .to_string()
}

pub(crate) async fn discovery(
    State(state): State<ServerState>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
) -> Json<Value> {
    let base = prefix(&original, &uri);
    let workspaces: Vec<Value> = state
        .clients()
        .map(|client| {
            let ws = client.id();
            // Names as URL segments: a workspace or table name with `/`, `?` or a space
            // still gives a URL that reaches it.
            let ws_url = format!("{base}/workspaces/{}", path_segment(ws));
            let tables: Vec<Value> = client
                .definition()
                .tables
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "url": format!("{ws_url}/tables/{}", path_segment(&t.name)),
                        "fields": t.fields.iter().map(|f| json!({
                            "name": f.name,
                            "type": f.spec.kind.name(),
                            "nullable": f.spec.nullable,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let actions: Vec<Value> = state
                .inner
                .actions
                .get(ws)
                .into_iter()
                .flat_map(|actions| actions.values())
                .map(|m| {
                    json!({
                        "path": m.path,
                        "kind": m.action.kind.name(),
                        "method": m.action.kind.method().as_str(),
                        "url": format!("{ws_url}/actions/{}", m.path),
                        "description": m.action.description,
                    })
                })
                .collect();
            json!({
                "id": ws,
                "sync": format!("{ws_url}/sync"),
                "tables": tables,
                "actions": actions,
            })
        })
        .collect();
    let actions: Vec<String> = state
        .inner
        .actions
        .iter()
        .flat_map(|(ws, actions)| actions.keys().map(move |path| format!("{ws}/{path}")))
        .collect();
    Json(json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "docs": format!("{base}/openapi"),
        "openapi": format!("{base}/openapi/json"),
        "workspaces": workspaces,
        "actions": actions,
    }))
}
