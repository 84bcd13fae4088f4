//! Access is decided from the route that matched, never from the raw path: every REST verb
//! on a row named `sync`, on a table named `sync`, percent-encoded, with trailing and
//! doubled slashes, and custom routes ending in `/sync`, each with no token, a wrong
//! token, a read-only token and a read-write one; also through a router nested in an app.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::{get, post};
use epicenter_server::server::{create_server, Access, Auth, Server, ServerOptions};
use epicenter_server::workspace::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const WRITER: &str = "writer-token";
const READER: &str = "reader-token";

fn auth() -> Auth {
    Auth::verify(|request| async move {
        match request.token.as_deref() {
            Some(WRITER) => Access::ReadWrite,
            Some(READER) => Access::ReadOnly,
            _ => Access::Denied,
        }
    })
}

/// A blog with a row named `sync` in `posts`, a table named `sync`, and two custom routes
/// ending in `/sync` that count the calls that reach them.
async fn server(calls: Arc<AtomicUsize>) -> Server {
    let blog = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .table("sync", [("id", id()), ("title", text())])
        .build()
        .unwrap();
    let client = blog.in_memory().create().await.unwrap();
    client
        .table("posts")
        .unwrap()
        .upsert(json!({"id": "sync", "title": "original"}))
        .unwrap();
    client
        .table("sync")
        .unwrap()
        .upsert(json!({"id": "r1", "title": "original"}))
        .unwrap();
    let mut server = create_server([client], ServerOptions::default().auth(auth())).unwrap();
    let (a, b) = (calls.clone(), calls);
    server.route(
        "/hooks/sync",
        post(move || async move {
            a.fetch_add(1, Ordering::SeqCst);
            "hooked"
        })
        .get(|| async { "hook" }),
    );
    server.route(
        "/workspaces/{ws}/custom/sync",
        post(move || async move {
            b.fetch_add(1, Ordering::SeqCst);
            "custom"
        }),
    );
    server
}

async fn call(base: &str, method: Method, path: &str, token: Option<&str>) -> StatusCode {
    let mut request = reqwest::Client::new().request(method.clone(), format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == Method::POST || method == Method::PUT || method == Method::PATCH {
        let id = path.rsplit('/').next().unwrap_or_default();
        request = request.json(&json!({"id": id, "title": "changed"}));
    }
    request.send().await.unwrap().status()
}

/// Every way to reach the row `posts/sync` and the table `sync`, with the verbs each
/// route serves.
fn rest_targets() -> Vec<(Method, &'static str)> {
    let rows = [
        "/workspaces/blog/tables/posts/sync",
        "/workspaces/blog/tables/posts/%73ync",
        "/workspaces/blog/tables/posts/sy%6Ec",
        "/workspaces/blog/tables/sync/r1",
        "/workspaces/blog/tables/%73ync/r1",
        "/workspaces/bl%6Fg/tables/sync/r1",
    ];
    let tables = [
        "/workspaces/blog/tables/sync",
        "/workspaces/blog/tables/%73ync",
    ];
    let mut targets = Vec::new();
    for path in rows {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            targets.push((method, path));
        }
    }
    for path in tables {
        targets.push((Method::GET, path));
        targets.push((Method::POST, path));
    }
    targets
}

/// Paths that match no route (trailing and doubled slashes): never served, whoever asks.
fn unmatched_targets() -> Vec<(Method, &'static str)> {
    let paths = [
        "/workspaces/blog/tables/posts/sync/",
        "/workspaces/blog/tables/sync/",
        "/workspaces/blog/tables/sync/r1/",
        "//workspaces/blog/tables/posts/sync",
        "/workspaces//blog/tables/posts/sync",
        "/workspaces/blog/tables/posts//sync",
        "/workspaces/blog//tables/sync",
        "/workspaces/blog/tables/posts/sync/sync",
    ];
    let mut targets = Vec::new();
    for path in paths {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            targets.push((method, path));
        }
    }
    targets
}

fn custom_targets() -> Vec<(Method, &'static str)> {
    vec![
        (Method::GET, "/hooks/sync"),
        (Method::POST, "/hooks/sync"),
        (Method::POST, "/workspaces/blog/custom/sync"),
        (Method::POST, "/workspaces/blog/custom/%73ync"),
    ]
}

fn reads(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// What the stored rows look like now, read without auth through the client.
fn snapshot(server: &Server) -> Value {
    let client = server.client("blog").unwrap();
    json!({
        "posts": client.table("posts").unwrap().get_all_valid(),
        "sync": client.table("sync").unwrap().get_all_valid(),
    })
}

/// Runs the whole matrix against `base` (the server's root, or a nested prefix).
async fn matrix(server: &Server, base: &str, calls: &AtomicUsize) {
    let before = snapshot(server);
    for token in [None, Some("wrong")] {
        for (method, path) in rest_targets().into_iter().chain(custom_targets()) {
            let status = call(base, method.clone(), path, token).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with token {token:?}"
            );
        }
        for (method, path) in unmatched_targets() {
            let status = call(base, method.clone(), path, token).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with token {token:?}"
            );
        }
    }
    assert_eq!(snapshot(server), before, "refused requests changed data");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "a custom route ran");

    // Read-only: reads are served, every write is 403 before the handler runs.
    for (method, path) in rest_targets().into_iter().chain(custom_targets()) {
        let status = call(base, method.clone(), path, Some(READER)).await;
        if reads(&method) {
            assert_eq!(status, StatusCode::OK, "{method} {path} read-only");
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} read-only");
        }
    }
    for (method, path) in unmatched_targets() {
        let status = call(base, method.clone(), path, Some(READER)).await;
        assert!(
            status.is_client_error(),
            "{method} {path} read-only: {status}"
        );
    }
    assert_eq!(snapshot(server), before, "read-only requests changed data");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "a custom route ran");

    // The paths above are real routes: a writer reaches them.
    for path in [
        "/workspaces/blog/tables/posts/%73ync",
        "/workspaces/blog/tables/sync/r1",
        "/workspaces/blog/tables/%73ync",
    ] {
        assert_eq!(
            call(base, Method::GET, path, Some(WRITER)).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        call(
            base,
            Method::PATCH,
            "/workspaces/blog/tables/posts/sync",
            Some(WRITER)
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        call(base, Method::POST, "/hooks/sync", Some(WRITER)).await,
        StatusCode::OK
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let posts = server.client("blog").unwrap().table("posts").unwrap();
    assert!(
        matches!(posts.get("sync"), RowResult::Valid(row) if row["title"] == "changed"),
        "the writer's update landed"
    );
    assert_eq!(
        call(
            base,
            Method::DELETE,
            "/workspaces/blog/tables/posts/sync",
            Some(WRITER)
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(posts.get("sync"), RowResult::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_follows_the_matched_route_not_the_path_suffix() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = server(calls.clone()).await;
    let addr: SocketAddr = server.start().await.unwrap();
    matrix(&server, &format!("http://{addr}"), &calls).await;
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_follows_the_matched_route_in_a_nested_router() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = server(calls.clone()).await;
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .nest("/api", server.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    matrix(&server, &format!("http://{addr}/api"), &calls).await;
    serving.abort();
    server.destroy().await.unwrap();
}
