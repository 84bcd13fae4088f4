//! Auth by kind: a query needs read access, a mutation read-write; the handler sees the
//! access it was given; the document says which answers auth adds.

use epicenter_server::server::{Access, Auth, ServerOptions};
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::*;

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

#[tokio::test]
async fn queries_need_read_access_and_mutations_read_write() {
    let h = Harness::start_with(ServerOptions::default().auth(auth())).await;
    let create = format!("{ACTIONS}/posts/create");
    let search = format!("{ACTIONS}/posts/search?q=");
    let new_post = json!({"title": "t", "status": "live"});
    let call = |method: Method, path: &str, token: Option<&str>| {
        let mut request = h.request(method.clone(), path);
        if method == Method::POST {
            request = request.json(&new_post);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        json_reply(request)
    };

    // No token, or a wrong one: 401 for both kinds, and nothing runs.
    for token in [None, Some("wrong")] {
        let (status, _) = call(Method::GET, &search, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        let (status, _) = call(Method::POST, &create, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    // Also for unknown actions and wrong methods: paths cannot be probed.
    let (status, _) = call(Method::GET, &format!("{ACTIONS}/nope"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Read-only: queries run, mutations are refused before they run.
    let (status, body) = call(Method::GET, &search, Some(READER)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"data": []})));
    let (status, body) = call(Method::POST, &create, Some(READER)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(h.created.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The token may come in the query string too (it is no input field).
    let (status, body) = call(Method::GET, &format!("{search}&token={READER}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Read-write: both.
    let (status, body) = call(Method::POST, &create, Some(WRITER)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(Method::GET, &search, Some(WRITER)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);

    // The handler is told the access the request has.
    let ping = format!("{ACTIONS}/ping");
    for (token, access) in [(READER, "ReadOnly"), (WRITER, "ReadWrite")] {
        let (status, body) = call(Method::GET, &ping, Some(token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["data"]["access"], access);
    }
    assert_eq!(h.posts().count(), 1);
    h.stop().await;
}

/// Mounted after `create_server`, the actions still get auth's answers in the document.
#[tokio::test]
async fn the_document_lists_auth_answers_for_actions() {
    let h = Harness::start_with(ServerOptions::default().auth(auth()).public_docs(true)).await;
    let (status, doc) = h.get("/openapi/json").await;
    assert_eq!(status, StatusCode::OK);
    let path = |p: &str| &doc["paths"][format!("{ACTIONS}/{p}")];
    let search = &path("posts/search")["get"]["responses"];
    assert!(search["401"].is_object(), "{search}");
    assert!(search.get("403").is_none(), "a query needs no write access");
    let create = &path("posts/create")["post"]["responses"];
    assert!(
        create["401"].is_object() && create["403"].is_object(),
        "{create}"
    );
    h.stop().await;
}
