//! Auth by kind: a query needs read access, a mutation read-write; the handler sees the
//! access it was given; the document says which answers auth adds.

use epicenter_server::server::{Access, Auth, ServerOptions};

use super::GUARD;
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

/// Sends `request` as raw bytes (so odd paths and methods arrive as written) and returns
/// the status code.
async fn raw_status(addr: &str, request: String) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, tcp.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

/// A read-only token cannot run a mutation by any trick of method or path, no token runs
/// a query, and a token for one workspace runs no action of another (however its name is
/// spelled).
#[tokio::test]
async fn no_method_or_path_trick_gets_past_the_access_an_action_needs() {
    let per_workspace = Auth::verify(|request| async move {
        match (request.token.as_deref(), request.workspace.as_deref()) {
            (Some(WRITER), _) => Access::ReadWrite,
            (Some(READER), _) => Access::ReadOnly,
            (Some("notes-writer"), Some("notes")) => Access::ReadWrite,
            _ => Access::Denied,
        }
    });
    let h = Harness::start_with(ServerOptions::default().auth(per_workspace)).await;
    let addr = h.base.trim_start_matches("http://").to_string();
    let body = r#"{"title":"t","status":"live"}"#;
    let request = |method: &str, target: &str, headers: &str| {
        format!(
            "{method} {target} HTTP/1.1\r\nHost: x\r\n{headers}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let reader = format!("Authorization: Bearer {READER}\r\n");
    let create = format!("{ACTIONS}/posts/create");
    let cases = [
        ("POST", create.clone(), reader.clone()),
        ("POST", format!("{ACTIONS}/posts%2Fcreate"), reader.clone()),
        ("POST", format!("{ACTIONS}/posts/%63reate"), reader.clone()),
        (
            "POST",
            "/workspaces/%62log/actions/posts/create".to_string(),
            reader.clone(),
        ),
        ("POST", format!("{ACTIONS}//posts/create"), reader.clone()),
        ("POST", format!("{ACTIONS}/posts/create/"), reader.clone()),
        (
            "POST",
            format!("{ACTIONS}/posts/search/../create"),
            reader.clone(),
        ),
        (
            "POST",
            "/Workspaces/blog/actions/posts/create".to_string(),
            reader.clone(),
        ),
        ("POST", format!("http://x{create}"), reader.clone()),
        ("PoST", create.clone(), reader.clone()),
        (
            "GET",
            create.clone(),
            format!("{reader}X-HTTP-Method-Override: POST\r\n"),
        ),
        ("HEAD", create.clone(), reader.clone()),
        ("OPTIONS", create.clone(), reader.clone()),
        ("PUT", create.clone(), reader.clone()),
        // A read-only token in the query, a read-write one in a header it does not read.
        (
            "POST",
            format!("{create}?token={READER}"),
            format!("Authorization: Basic {WRITER}\r\n"),
        ),
        // Another workspace's writer.
        (
            "POST",
            create.clone(),
            "Authorization: Bearer notes-writer\r\n".into(),
        ),
        (
            "GET",
            format!("{ACTIONS}/ping"),
            "Authorization: Bearer notes-writer\r\n".into(),
        ),
        // No token at all, for a query.
        ("GET", format!("{ACTIONS}/ping"), String::new()),
        ("GET", format!("{ACTIONS}/ping?token"), String::new()),
        (
            "GET",
            format!("{ACTIONS}/ping?tok%65n={WRITER}"),
            String::new(),
        ),
        ("HEAD", format!("{ACTIONS}/ping"), String::new()),
    ];
    for (method, target, headers) in cases {
        let status = raw_status(&addr, request(method, &target, &headers)).await;
        assert!(
            (400..500).contains(&status),
            "{method} {target} with `{}`: {status}",
            headers.trim()
        );
    }
    assert_eq!(h.created.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(h.posts().count(), 0);
    h.stop().await;
}
