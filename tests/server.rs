//! The HTTP API over real sockets: discovery, REST CRUD with its JSON envelopes and status
//! codes, OpenAPI and the Scalar page, custom routes and nesting, CORS, and the server's
//! lifecycle (start, destroy, persistence).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use epicenter_server::server::{create_server, Server, ServerError, ServerOptions, ServerState};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::*;
use reqwest::header::{CONTENT_TYPE, ORIGIN};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

/// A guard against a hung request or shutdown; nothing waits for it to elapse.
const GUARD: Duration = Duration::from_secs(20);

const POSTS: &str = "/workspaces/blog/tables/posts";

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table(
            "posts",
            [
                ("id", id()),
                ("title", text()),
                ("views", integer().default(0)),
                ("published", boolean().default(false)),
                ("status", select(["draft", "live"]).default("draft")),
            ],
        )
        .table("authors", [("id", id()), ("name", text())])
        .build()
        .expect("valid definition")
}

async fn memory_client() -> WorkspaceClient {
    blog().in_memory().create().await.expect("client")
}

fn options() -> ServerOptions {
    ServerOptions::default().port(0)
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(GUARD)
        .build()
        .expect("HTTP client")
}

/// A running server and an HTTP client pointed at it (`base` may include a prefix).
struct Harness {
    server: Server,
    base: String,
    http: reqwest::Client,
}

impl Harness {
    async fn start(server: Server) -> Self {
        let addr = server.start().await.expect("the server starts");
        Harness {
            server,
            base: format!("http://{addr}"),
            http: http_client(),
        }
    }

    /// The blog workspace in memory, served with `options`.
    async fn blog_with(options: ServerOptions) -> Self {
        let server = create_server([memory_client().await], options).expect("server");
        Self::start(server).await
    }

    async fn blog() -> Self {
        Self::blog_with(options()).await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        json_reply(request).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    async fn stop(self) {
        destroy(&self.server).await;
    }
}

async fn destroy(server: &Server) {
    tokio::time::timeout(GUARD, server.destroy())
        .await
        .expect("destroy finishes")
        .expect("destroy succeeds");
}

/// Sends the request and reads a JSON reply (asserting the content type says so).
async fn json_reply(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the request is answered");
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.expect("the body is read");
    assert!(
        content_type.starts_with("application/json"),
        "{status}: content type `{content_type}`, body: {text}"
    );
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: the body is not JSON ({e}): {text}"));
    (status, body)
}

/// Asserts `{"error": {"message": ...}}` with nothing else, the message mentioning `needle`.
/// Used where the message comes from axum's extractors rather than from this crate.
#[track_caller]
fn assert_message_only(body: &Value, needle: &str) {
    let error = body
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("error"))
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("not an error envelope: {body}"));
    assert_eq!(error.keys().collect::<Vec<_>>(), ["message"], "{body}");
    let message = error["message"].as_str().expect("the message is a string");
    assert!(
        message.contains(needle),
        "`{message}` should mention `{needle}`"
    );
}

/// The ids of a `{"data": [rows]}` list.
#[track_caller]
fn ids(body: &Value) -> Vec<&str> {
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list envelope: {body}"))
        .iter()
        .map(|row| row["id"].as_str().expect("a row id"))
        .collect()
}

fn post_row(id: &str, title: &str) -> Value {
    json!({
        "id": id, "title": title, "views": 0, "published": false, "status": "draft"
    })
}

fn invalid(issues: Value) -> Value {
    json!({"error": {"message": "the data does not match the schema", "issues": issues}})
}

#[tokio::test]
async fn discovery_lists_workspaces_tables_and_urls() {
    let h = Harness::blog().await;
    let (status, body) = h.get("/").await;
    assert_eq!(status, StatusCode::OK);
    let field = |name: &str, kind: &str| json!({"name": name, "type": kind, "nullable": false});
    assert_eq!(
        body,
        json!({
            "name": "epicenter-server",
            "version": env!("CARGO_PKG_VERSION"),
            "docs": "/openapi",
            "openapi": "/openapi/json",
            "workspaces": [{
                "id": "blog",
                "sync": "/workspaces/blog/sync",
                "tables": [
                    {
                        "name": "posts",
                        "url": POSTS,
                        "fields": [
                            field("id", "id"),
                            field("title", "text"),
                            field("views", "integer"),
                            field("published", "boolean"),
                            field("status", "select"),
                        ],
                    },
                    {
                        "name": "authors",
                        "url": "/workspaces/blog/tables/authors",
                        "fields": [field("id", "id"), field("name", "text")],
                    },
                ],
                "actions": [],
            }],
            "actions": [],
        })
    );
    // Every advertised URL answers.
    for table in body["workspaces"][0]["tables"].as_array().unwrap() {
        let (status, list) = h.get(table["url"].as_str().unwrap()).await;
        assert_eq!((status, list), (StatusCode::OK, json!({"data": []})));
    }
    let (status, _) = h.get(body["openapi"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn post_creates_then_upserts_by_body_id() {
    let h = Harness::blog().await;
    let (status, body) = h.post(POSTS, json!({"id": "p1", "title": "Hello"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, json!({"data": post_row("p1", "Hello")}));

    let (status, body) = h
        .post(POSTS, json!({"id": "p1", "title": "Again", "views": 3}))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a second POST with the same id upserts"
    );
    let mut again = post_row("p1", "Again");
    again["views"] = json!(3);
    assert_eq!(body, json!({"data": again}));

    // The body's id is the key: one row, under that id.
    let (status, body) = h.get(&format!("{POSTS}/p1")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"data": again})));
    let (_, list) = h.get(POSTS).await;
    assert_eq!(ids(&list), ["p1"]);

    // Ids that need percent-encoding in a URL still round-trip.
    let (status, _) = h.post(POSTS, json!({"id": "hé llo", "title": "x"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = h.get(&format!("{POSTS}/h%C3%A9%20llo")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["id"], "hé llo");
    h.stop().await;
}

#[tokio::test]
async fn post_without_id_is_422_on_id() {
    let h = Harness::blog().await;
    let (status, body) = h.post(POSTS, json!({"title": "No id"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        invalid(json!([{"path": "id", "message": "is required"}]))
    );
    let (status, body) = h.post(POSTS, json!({"id": "a:b", "title": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        invalid(json!([{"path": "id", "message": "an id must not contain `:`"}]))
    );
    let (_, list) = h.get(POSTS).await;
    assert!(ids(&list).is_empty(), "nothing was written");
    h.stop().await;
}

#[tokio::test]
async fn post_reports_every_schema_issue_at_once() {
    let h = Harness::blog().await;
    let (status, body) = h
        .post(
            POSTS,
            json!({"id": "p1", "title": 5, "views": 1.5, "published": "yes", "status": "gone"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        invalid(json!([
            {"path": "title", "message": "expected a string, got a number"},
            {"path": "views", "message": "expected an integer (within ±2^53), got a fraction or a larger number"},
            {"path": "published", "message": "expected a boolean, got a string"},
            {"path": "status", "message": "`gone` is not one of: draft, live"},
        ]))
    );

    // An unknown field is a violation too.
    let (status, body) = h
        .post(POSTS, json!({"id": "p1", "title": "ok", "extra": true}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        invalid(json!([{"path": "extra", "message": "is not a field of this table"}]))
    );

    // Valid JSON that is not an object.
    let (status, body) = h.post(POSTS, json!([1, 2])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        invalid(json!([{"path": "", "message": "a row must be a JSON object, got an array"}]))
    );

    let (status, body) = h.get(&format!("{POSTS}/p1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was written: {body}");
    h.stop().await;
}

/// A body with thousands of problems (here unknown fields, one with a huge name) is
/// answered with the first `MAX_ISSUES`, cut short, and a count of the rest: a 422 is never
/// many times the size of the body that caused it.
#[tokio::test]
async fn a_422_lists_at_most_max_issues() {
    use epicenter_server::server::{MAX_ISSUES, MAX_ISSUE_TEXT};
    let h = Harness::blog().await;
    let mut row = post_row("p1", "t");
    let fields = 20_000;
    let huge = "x".repeat(100_000);
    for name in (0..fields - 1).map(|i| format!("f{i}")).chain([huge]) {
        row[name] = json!(0);
    }
    let response = h
        .request(Method::POST, POSTS)
        .json(&row)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = response.text().await.unwrap();
    assert!(text.len() < 64 * 1024, "a 422 of {} bytes", text.len());
    let body: Value = serde_json::from_str(&text).unwrap();
    let issues = body["error"]["issues"].as_array().unwrap();
    assert_eq!(issues.len(), MAX_ISSUES);
    assert_eq!(body["error"]["more_issues"], json!(fields - MAX_ISSUES));
    for issue in issues {
        let path = issue["path"].as_str().unwrap();
        assert!(path.chars().count() <= MAX_ISSUE_TEXT + 1, "{path:.50}...");
    }
    let (status, _) = h.get(&format!("{POSTS}/p1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was written");
    h.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_json_errors() {
    let h = Harness::blog_with(options().body_limit(1024)).await;
    let with_body = |method: Method, path: &str, content_type: Option<&str>, body: String| {
        let mut request = h.request(method, path).body(body);
        if let Some(ct) = content_type {
            request = request.header(CONTENT_TYPE, ct);
        }
        json_reply(request)
    };
    let item = format!("{POSTS}/p1");

    // Malformed JSON: 400.
    for (method, path) in [(Method::POST, POSTS), (Method::PATCH, item.as_str())] {
        let (status, body) = with_body(
            method,
            path,
            Some("application/json"),
            r#"{"id": "p1","#.into(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_message_only(&body, "JSON");
    }

    // Wrong or missing content type: 415.
    let row = json!({"id": "p1", "title": "x"}).to_string();
    for (method, path, content_type) in [
        (Method::POST, POSTS, Some("text/plain")),
        (Method::POST, POSTS, None),
        (
            Method::PUT,
            item.as_str(),
            Some("application/x-www-form-urlencoded"),
        ),
    ] {
        let (status, body) = with_body(method, path, content_type, row.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert_message_only(&body, "Content-Type");
    }

    // Over the body limit: 413.
    let big = json!({"id": "p1", "title": "x".repeat(2000)}).to_string();
    for (method, path) in [(Method::POST, POSTS), (Method::PATCH, item.as_str())] {
        let (status, body) = with_body(method, path, Some("application/json"), big.clone()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_message_only(&body, "limit");
    }

    // A chunked body (no Content-Length) over the limit is refused the same way.
    let (status, body) = raw_chunked_post(&h.base, POSTS, &big).await;
    assert_eq!(status, 413, "{body}");
    assert_message_only(&serde_json::from_str(&body).unwrap(), "limit");

    // None of that wrote anything, and a body within the limit is fine (with a charset too).
    let (_, list) = h.get(POSTS).await;
    assert!(ids(&list).is_empty());
    let (status, body) = with_body(
        Method::POST,
        POSTS,
        Some("application/json; charset=utf-8"),
        row,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, json!({"data": post_row("p1", "x")}));
    h.stop().await;
}

/// POSTs `body` with `Transfer-Encoding: chunked` over a raw socket (reqwest always knows
/// the length of a buffered body). Returns the status and the response body.
async fn raw_chunked_post(base: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(GUARD, socket.read_to_string(&mut response))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    (status, body.to_string())
}

#[tokio::test]
async fn list_pages_by_id() {
    let h = Harness::blog().await;
    for id in ["p3", "p1", "p5", "p2", "p4"] {
        let (status, _) = h.post(POSTS, json!({"id": id, "title": id})).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, body) = h.get(POSTS).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&body), ["p1", "p2", "p3", "p4", "p5"]);
    assert_eq!(body["data"][0], post_row("p1", "p1"));

    for (query, expected) in [
        ("limit=2", vec!["p1", "p2"]),
        ("limit=2&offset=2", vec!["p3", "p4"]),
        ("offset=4", vec!["p5"]),
        ("offset=4&limit=10", vec!["p5"]),
        ("offset=9", vec![]),
        ("limit=0", vec![]),
    ] {
        let (status, body) = h.get(&format!("{POSTS}?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}");
        assert_eq!(ids(&body), expected, "{query}");
    }

    for query in ["limit=abc", "offset=-1", "limit=1.5"] {
        let (status, body) = h.get(&format!("{POSTS}?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_message_only(&body, "query");
    }
    h.stop().await;
}

#[tokio::test]
async fn unknown_things_are_json_404s_and_wrong_methods_405s() {
    let h = Harness::blog().await;
    h.post(POSTS, json!({"id": "p1", "title": "x"})).await;
    let (status, body) = h.get(&format!("{POSTS}/p1")).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"data": post_row("p1", "x")}))
    );

    let not_found = |message: &str| json!({"error": {"message": message}});
    let row = Some(json!({"id": "x", "title": "x"}));
    let cases = [
        (
            Method::GET,
            "/workspaces/nope/tables/posts",
            None,
            "unknown workspace `nope`",
        ),
        (
            Method::POST,
            "/workspaces/nope/tables/posts",
            row.clone(),
            "unknown workspace `nope`",
        ),
        (
            Method::GET,
            "/workspaces/nope/tables/posts/p1",
            None,
            "unknown workspace `nope`",
        ),
        (
            Method::DELETE,
            "/workspaces/nope/tables/posts/p1",
            None,
            "unknown workspace `nope`",
        ),
        (
            Method::GET,
            "/workspaces/blog/tables/nope",
            None,
            "unknown table `nope` in workspace `blog`",
        ),
        (
            Method::POST,
            "/workspaces/blog/tables/nope",
            row.clone(),
            "unknown table `nope` in workspace `blog`",
        ),
        (
            Method::PATCH,
            "/workspaces/blog/tables/nope/p1",
            row.clone(),
            "unknown table `nope` in workspace `blog`",
        ),
        (
            Method::GET,
            "/workspaces/blog/tables/posts/zz",
            None,
            "no row `zz` in table `posts`",
        ),
        (
            Method::GET,
            "/nothing/here",
            None,
            "no route for /nothing/here",
        ),
        (
            Method::GET,
            "/workspaces/blog",
            None,
            "no route for /workspaces/blog",
        ),
    ];
    for (method, path, body, message) in cases {
        let (status, reply) = h.call(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(reply, not_found(message), "{method} {path}");
    }

    // A path segment that is not UTF-8 once decoded is a client error, not a crash.
    let (status, body) = h.get(&format!("{POSTS}/%FF")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_message_only(&body, "UTF-8");

    for (method, path) in [
        (Method::DELETE, POSTS),
        (Method::PUT, POSTS),
        (Method::POST, "/workspaces/blog/tables/posts/p1"),
        (Method::POST, "/"),
        (Method::DELETE, "/openapi/json"),
    ] {
        let (status, reply) = h.call(method.clone(), path, None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(
            reply,
            json!({"error": {"message": format!("{method} is not allowed on {path}")}})
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn put_and_patch_update_given_fields() {
    let h = Harness::blog().await;
    h.post(POSTS, json!({"id": "p1", "title": "Hello", "views": 1}))
        .await;
    let item = format!("{POSTS}/p1");

    let (status, body) = h.patch(&item, json!({"title": "Patched"})).await;
    assert_eq!(status, StatusCode::OK);
    let mut expected = post_row("p1", "Patched");
    expected["views"] = json!(1);
    assert_eq!(body, json!({"data": expected}));

    let (status, body) = h.put(&item, json!({"views": 7, "status": "live"})).await;
    assert_eq!(status, StatusCode::OK);
    expected["views"] = json!(7);
    expected["status"] = json!("live");
    assert_eq!(body, json!({"data": expected}));
    let (_, stored) = h.get(&item).await;
    assert_eq!(stored, json!({"data": expected}));

    // The URL names the row: an id in the body does not move or copy it.
    let (status, body) = h
        .patch(&item, json!({"id": "other", "published": true}))
        .await;
    assert_eq!(status, StatusCode::OK);
    expected["published"] = json!(true);
    assert_eq!(body, json!({"data": expected}));
    let (status, _) = h.get(&format!("{POSTS}/other")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A missing row is a 404, and nothing is created.
    for method in [Method::PUT, Method::PATCH] {
        let (status, body) = h
            .call(
                method,
                &format!("{POSTS}/ghost"),
                Some(json!({"title": "boo"})),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            json!({"error": {"message": "no row `ghost` in table `posts`"}})
        );
    }
    let (_, list) = h.get(POSTS).await;
    assert_eq!(ids(&list), ["p1"]);

    // Invalid values are 422 with every issue, and change nothing.
    let (status, body) = h
        .patch(&item, json!({"views": "many", "status": "gone", "nope": 1}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        invalid(json!([
            {"path": "views", "message": "expected an integer, got a string"},
            {"path": "status", "message": "`gone` is not one of: draft, live"},
            {"path": "nope", "message": "is not a field of this table"},
        ]))
    );
    let (status, body) = h.put(&item, json!({"title": null})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        invalid(json!([{"path": "title", "message": "must not be null"}]))
    );
    let (_, stored) = h.get(&item).await;
    assert_eq!(stored, json!({"data": expected}));
    h.stop().await;
}

#[tokio::test]
async fn delete_then_404() {
    let h = Harness::blog().await;
    h.post(POSTS, json!({"id": "p1", "title": "x"})).await;
    h.post(POSTS, json!({"id": "p2", "title": "y"})).await;
    let item = format!("{POSTS}/p1");
    let (status, body) = h.delete(&item).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"data": {"id": "p1"}}))
    );
    let (status, body) = h.get(&item).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"error": {"message": "no row `p1` in table `posts`"}})
    );
    let (status, body) = h.delete(&item).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"error": {"message": "no row `p1` in table `posts`"}})
    );
    let (_, list) = h.get(POSTS).await;
    assert_eq!(ids(&list), ["p2"]);
    // A deleted id can be created again.
    let (status, _) = h.post(POSTS, json!({"id": "p1", "title": "back"})).await;
    assert_eq!(status, StatusCode::CREATED);
    h.stop().await;
}

#[tokio::test]
async fn invalid_stored_rows_are_reported_not_listed() {
    let h = Harness::blog().await;
    let authors = "/workspaces/blog/tables/authors";
    h.post(authors, json!({"id": "ok", "name": "Fine"})).await;

    // A peer with another schema writes a row this schema finds invalid.
    let other = WorkspaceDefinition::builder("blog")
        .table("authors", [("id", id()), ("name", integer())])
        .build()
        .unwrap()
        .in_memory()
        .create()
        .await
        .unwrap();
    other
        .table("authors")
        .unwrap()
        .upsert(json!({"id": "x", "name": 7}))
        .unwrap();
    use yrs::{ReadTxn, Transact};
    let update = other
        .doc()
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    other.destroy().await.unwrap();
    h.server
        .client("blog")
        .unwrap()
        .apply_update(&update, "peer")
        .unwrap();

    let (status, body) = h.get(&format!("{authors}/x")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({"error": {
            "message": "row `x` is stored but does not match the schema of `authors`",
            "issues": [{"path": "name", "message": "expected a string, got a number"}],
            "row": {"id": "x", "name": 7},
        }})
    );
    let (status, body) = h.get(authors).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&body), ["ok"], "the list leaves invalid rows out");

    // Fixing it over REST makes it valid again.
    let (status, body) = h
        .patch(&format!("{authors}/x"), json!({"name": "Seven"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"data": {"id": "x", "name": "Seven"}}));
    let (_, body) = h.get(authors).await;
    assert_eq!(ids(&body), ["ok", "x"]);
    h.stop().await;
}

#[tokio::test]
async fn rest_writes_reach_the_client_and_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let client = blog()
        .with_storage(SqliteStorage::new(dir.path()))
        .create()
        .await
        .unwrap();
    let h = Harness::start(create_server([client], options()).unwrap()).await;
    let (status, _) = h.post(POSTS, json!({"id": "p1", "title": "Hello"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = h.patch(&format!("{POSTS}/p1"), json!({"views": 2})).await;
    assert_eq!(status, StatusCode::OK);

    let posts = h.server.client("blog").unwrap().table("posts").unwrap();
    let mut expected = post_row("p1", "Hello");
    expected["views"] = json!(2);
    assert_eq!(
        posts.get("p1"),
        RowResult::Valid(expected.as_object().unwrap().clone())
    );
    // And the other way: a write through the handle is served over REST.
    posts
        .upsert(json!({"id": "p2", "title": "Direct"}))
        .unwrap();
    let (status, body) = h.get(&format!("{POSTS}/p2")).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"data": post_row("p2", "Direct")}))
    );
    h.stop().await;

    let reopened = blog()
        .with_storage(SqliteStorage::new(dir.path()))
        .create()
        .await
        .unwrap();
    let posts = reopened.table("posts").unwrap();
    assert_eq!(
        posts.get_all_valid(),
        [
            expected.as_object().unwrap().clone(),
            post_row("p2", "Direct").as_object().unwrap().clone(),
        ]
    );
    reopened.destroy().await.unwrap();
}

#[tokio::test]
async fn concurrent_writes_all_land() {
    let h = Harness::blog().await;
    let writes = (0..24).map(|i| {
        let id = format!("p{i:02}");
        let request = h
            .request(Method::POST, POSTS)
            .json(&json!({"id": id, "title": "t"}));
        json_reply(request)
    });
    for (status, _) in join_all(writes).await {
        assert_eq!(status, StatusCode::CREATED);
    }
    let (_, list) = h.get(POSTS).await;
    assert_eq!(ids(&list).len(), 24);
    h.stop().await;
}

/// Runs futures concurrently on this task (no extra dependency for `join_all`).
async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (n, f) in futures.enumerate() {
        set.spawn(async move { (n, f.await) });
    }
    let mut out: Vec<_> = set.join_all().await;
    out.sort_by_key(|(n, _)| *n);
    out.into_iter().map(|(_, v)| v).collect()
}

#[tokio::test]
async fn lifecycle_start_destroy_and_release_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let client = blog()
        .with_storage(SqliteStorage::new(dir.path()))
        .create()
        .await
        .unwrap();
    let server = create_server([client], options()).unwrap();
    assert_eq!(
        server.local_addr().await,
        None,
        "nothing is bound before start"
    );
    let addr = server.start().await.unwrap();
    assert!(addr.ip().is_loopback(), "127.0.0.1 by default: {addr}");
    assert_ne!(addr.port(), 0);
    assert_eq!(server.local_addr().await, Some(addr));
    assert!(matches!(
        server.start().await,
        Err(ServerError::AlreadyStarted)
    ));

    let h = Harness {
        server,
        base: format!("http://{addr}"),
        http: http_client(),
    };
    let (status, _) = h.get("/").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "still serving after the second start"
    );
    let (status, _) = h.post(POSTS, json!({"id": "p1", "title": "kept"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let handle = h.server.client("blog").unwrap().clone();

    // The pooled keep-alive connection must not hold destroy up until the shutdown timeout.
    let started = std::time::Instant::now();
    destroy(&h.server).await;
    assert!(
        started.elapsed() < h.server.options().shutdown_timeout,
        "destroy waited for idle connections"
    );
    assert!(handle.is_destroyed(), "destroy destroys the clients");
    assert_eq!(h.server.local_addr().await, None);

    // The port is released: nothing accepts there, and it can be bound again.
    let connect = tokio::time::timeout(GUARD, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect does not hang");
    assert!(connect.is_err(), "something still accepts on {addr}");
    let rebound = std::net::TcpListener::bind(addr);
    assert!(rebound.is_ok(), "cannot bind {addr} again: {rebound:?}");
    drop(rebound);

    // Destroying again is fine; starting again is not.
    destroy(&h.server).await;
    assert!(matches!(
        h.server.start().await,
        Err(ServerError::Destroyed)
    ));

    // The data is on disk.
    let reopened = blog()
        .with_storage(SqliteStorage::new(dir.path()))
        .create()
        .await
        .unwrap();
    assert_eq!(
        reopened.table("posts").unwrap().get("p1"),
        RowResult::Valid(post_row("p1", "kept").as_object().unwrap().clone())
    );
    reopened.destroy().await.unwrap();
}

#[tokio::test]
async fn start_twice_is_an_error_and_destroy_without_start_is_fine() {
    let h = Harness::blog().await;
    assert!(matches!(
        h.server.start().await,
        Err(ServerError::AlreadyStarted)
    ));
    let (status, _) = h.get("/").await;
    assert_eq!(status, StatusCode::OK);
    h.stop().await;

    let never_started = create_server([memory_client().await], options()).unwrap();
    let handle = never_started.client("blog").unwrap().clone();
    destroy(&never_started).await;
    assert!(handle.is_destroyed());
}

#[tokio::test]
async fn duplicate_and_destroyed_clients_are_refused() {
    let (a, b) = (memory_client().await, memory_client().await);
    match create_server([a, b], options()) {
        Err(ServerError::DuplicateWorkspace(id)) => assert_eq!(id, "blog"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("two clients with one workspace id were accepted"),
    }
    let c = memory_client().await;
    c.destroy().await.unwrap();
    match create_server([c], options()) {
        Err(ServerError::DestroyedClient(id)) => assert_eq!(id, "blog"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a destroyed client was accepted"),
    }
}

#[tokio::test]
async fn zero_clients_is_a_valid_server() {
    let server = create_server(Vec::<WorkspaceClient>::new(), options()).unwrap();
    let h = Harness::start(server).await;
    let (status, body) = h.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["workspaces"], json!([]));
    let (status, doc) = h.get("/openapi/json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let (status, body) = h.get(POSTS).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"error": {"message": "unknown workspace `blog`"}})
    );
    h.stop().await;
}

#[tokio::test]
async fn custom_routes_reach_the_clients() {
    let mut server = create_server([memory_client().await], options()).unwrap();
    server.route("/health", get(|| async { "OK" })).route(
        "/stats",
        get(|State(state): State<ServerState>| async move {
            let posts = state.client("blog").unwrap().table("posts").unwrap();
            axum::Json(json!({"posts": posts.count()}))
        }),
    );
    let h = Harness::start(server).await;

    let response = h.request(Method::GET, "/health").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "OK");

    assert_eq!(h.get("/stats").await, (StatusCode::OK, json!({"posts": 0})));
    h.post(POSTS, json!({"id": "p1", "title": "x"})).await;
    assert_eq!(h.get("/stats").await, (StatusCode::OK, json!({"posts": 1})));

    // Built-in routes and the JSON fallbacks still apply around custom ones.
    let (status, body) = h.call(Method::POST, "/health", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        body,
        json!({"error": {"message": "POST is not allowed on /health"}})
    );
    let (status, _) = h.get("/").await;
    assert_eq!(status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn described_custom_routes_appear_in_the_openapi_document() {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
    use utoipa::openapi::{OpenApiBuilder, ResponseBuilder};
    let mut server = create_server([memory_client().await], options()).unwrap();
    server.route("/health", get(|| async { "OK" }));
    let health = PathItem::new(
        HttpMethod::Get,
        OperationBuilder::new()
            .operation_id(Some("health"))
            .response("200", ResponseBuilder::new().description("Alive")),
    );
    server.describe(
        OpenApiBuilder::new()
            .paths(PathsBuilder::new().path("/health", health))
            .build(),
    );
    let h = Harness::start(server).await;
    let (status, doc) = h.get("/openapi/json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["paths"]["/health"]["get"]["operationId"], "health");
    // The generated table routes are still there.
    assert!(doc["paths"]["/workspaces/blog/tables/posts"]["get"].is_object());
    h.stop().await;
}

/// The blog server's router nested at `nest_at` in a host app served with `axum::serve`.
struct Hosted {
    h: Harness,
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Hosted {
    async fn new(nest_at: &str) -> Self {
        let server = create_server([memory_client().await], options()).unwrap();
        let app = Router::new()
            .route("/", get(|| async { "host app" }))
            .nest(nest_at, server.router());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        let h = Harness {
            server,
            base: format!("http://{addr}/api"),
            http: http_client(),
        };
        Hosted {
            h,
            addr,
            stop,
            serving,
        }
    }

    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(GUARD, self.serving)
            .await
            .expect("the host app stops")
            .unwrap()
            .unwrap();
        self.h.stop().await;
    }
}

#[track_caller]
fn assert_prefixed_discovery(body: &Value) {
    assert_eq!(body["docs"], "/api/openapi", "{body}");
    assert_eq!(body["openapi"], "/api/openapi/json");
    assert_eq!(body["workspaces"][0]["sync"], "/api/workspaces/blog/sync");
    assert_eq!(
        body["workspaces"][0]["tables"][0]["url"],
        format!("/api{POSTS}")
    );
}

#[tokio::test]
async fn the_router_nests_into_another_app() {
    let hosted = Hosted::new("/api").await;
    let h = &hosted.h;

    let (status, body) = h.post(POSTS, json!({"id": "p1", "title": "Nested"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = h.get(POSTS).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"data": [post_row("p1", "Nested")]}))
    );
    let (status, body) = h.get(&format!("{POSTS}/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"error": {"message": "no row `nope` in table `posts`"}})
    );
    assert_eq!(
        h.server
            .client("blog")
            .unwrap()
            .table("posts")
            .unwrap()
            .count(),
        1,
        "the nested router writes to the server's clients"
    );

    // Discovery at the prefix (axum maps the nested `/` to `/api`) reports prefixed URLs.
    let (status, body) = h.get("").await;
    assert_eq!(status, StatusCode::OK);
    assert_prefixed_discovery(&body);
    let (status, doc) = h.get("/openapi/json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");

    // The nested JSON fallbacks apply below the prefix.
    let (status, body) = h.get("/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"error": {"message": "no route for /nothing"}}));
    let (status, body) = h.call(Method::DELETE, POSTS, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_message_only(&body, "DELETE is not allowed");

    // The host app's own routes are untouched.
    let response = h
        .http
        .get(format!("http://{}/", hosted.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "host app");
    hosted.shutdown().await;
}

#[tokio::test]
async fn nested_with_a_trailing_slash_discovery_is_at_the_slash() {
    let hosted = Hosted::new("/api/").await;
    let (status, body) = hosted.h.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_prefixed_discovery(&body);
    let (status, body) = hosted
        .h
        .post(POSTS, json!({"id": "p1", "title": "x"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    hosted.shutdown().await;
}

#[tokio::test]
async fn openapi_document_and_scalar_page() {
    let h = Harness::blog_with(options().title("Blog API")).await;
    let response = h
        .request(Method::GET, "/openapi/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    let text = response.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Blog API");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    for table in ["posts", "authors"] {
        let list = format!("/workspaces/blog/tables/{table}");
        let item = format!("{list}/{{id}}");
        let methods = |path: &str| -> Vec<String> {
            let item = doc["paths"][path]
                .as_object()
                .unwrap_or_else(|| panic!("no path {path}"));
            let mut m: Vec<String> = item
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .cloned()
                .collect();
            m.sort();
            m
        };
        assert_eq!(methods(&list), ["get", "post"], "{list}");
        assert_eq!(methods(&item), ["delete", "get", "patch", "put"], "{item}");
    }
    // An independent OpenAPI 3.1 reader accepts it.
    let spec = oas3::from_json(&text).expect("oas3 parses the served document");
    assert_eq!(spec.validate_version().expect("3.1.x").minor, 1);

    let response = h.request(Method::GET, "/openapi").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = response.text().await.unwrap();
    assert!(
        page.contains(r#"<script id="api-reference" data-url="openapi/json">"#),
        "{page}"
    );
    assert!(page.contains("<title>Blog API</title>"), "{page}");
    h.stop().await;
}

#[tokio::test]
async fn cors_only_when_asked_for() {
    let origin = "http://app.example";
    for (options, allowed) in [
        (
            options().cors(tower_http::cors::CorsLayer::permissive()),
            true,
        ),
        (options(), false),
    ] {
        let h = Harness::blog_with(options).await;
        let response = h
            .request(Method::GET, POSTS)
            .header(ORIGIN, origin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let header = response.headers().get("access-control-allow-origin");
        if allowed {
            assert_eq!(header.map(|v| v.to_str().unwrap()), Some("*"));
        } else {
            assert_eq!(header, None);
        }
        // A preflight.
        let response = h
            .request(Method::OPTIONS, POSTS)
            .header(ORIGIN, origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        let header = response.headers().get("access-control-allow-origin");
        if allowed {
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(header.map(|v| v.to_str().unwrap()), Some("*"));
        } else {
            assert_eq!(header, None);
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn requests_after_destroy_through_a_nested_router_are_503_not_500() {
    let hosted = Hosted::new("/api").await;
    let h = &hosted.h;
    h.post(POSTS, json!({"id": "p1", "title": "x"})).await;
    destroy(&h.server).await;
    // The host app still routes to the (destroyed) server: writes say it is shutting down.
    let item = format!("{POSTS}/p1");
    let cases = [
        (Method::POST, POSTS, Some(json!({"id": "p2", "title": "y"}))),
        (Method::PATCH, item.as_str(), Some(json!({"title": "z"}))),
        (Method::DELETE, item.as_str(), None),
    ];
    for (method, path, body) in cases {
        let (status, reply) = h.call(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}");
        assert_eq!(
            reply,
            json!({"error": {"message": "the server is shutting down"}})
        );
    }
    hosted.shutdown().await;
}

#[tokio::test]
async fn nested_openapi_document_points_at_the_prefix() {
    let hosted = Hosted::new("/api").await;
    let (status, doc) = hosted.h.get("/openapi/json").await;
    assert_eq!(status, StatusCode::OK);
    let server_url = doc["servers"][0]["url"].as_str().unwrap_or("/");
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    let resolved: Vec<String> = paths
        .iter()
        .map(|p| format!("{}{p}", server_url.trim_end_matches('/')))
        .collect();
    assert!(
        resolved.contains(&format!("/api{POSTS}")),
        "the document served at /api/openapi/json resolves its paths to {resolved:?}"
    );
    hosted.shutdown().await;
}
