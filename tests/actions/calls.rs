//! Calling actions: paths, methods, input checks, handler errors, durability.

use std::sync::atomic::Ordering;
use std::time::Duration;

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::storage::{SqliteOptions, SqliteStorage};
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::*;

#[tokio::test]
async fn queries_and_mutations_run_at_flat_and_nested_paths() {
    let h = Harness::start().await;
    let (status, body) = h.get(&format!("{ACTIONS}/ping")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"data": {"pong": true, "access": "ReadWrite"}}));

    let create = format!("{ACTIONS}/posts/create");
    let (status, body) = h
        .post(&create, json!({"title": "Hello", "status": "live"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"data": {"id": "p1", "title": "Hello", "views": 0, "status": "live"}})
    );
    h.post(
        &create,
        json!({"title": "Hello again", "views": 3, "status": "draft"}),
    )
    .await;
    h.post(&create, json!({"title": "Other", "status": "draft"}))
        .await;
    // What the mutation wrote is in the table, as REST reads it.
    let (status, body) = h.get("/workspaces/blog/tables/posts/p2").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"data": {"id": "p2", "title": "Hello again", "views": 3, "status": "draft"}})
        )
    );

    let search = format!("{ACTIONS}/posts/search");
    let titles = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap_or_else(|| panic!("not a list: {body}"))
            .iter()
            .map(|p| p["title"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, body) = h.get(&format!("{search}?q=Hello")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(titles(&body), ["Hello", "Hello again"]);
    // Query strings are read into the input's types: a number, an enum, a boolean, a list.
    let (_, body) = h
        .get(&format!("{search}?q=Hello&limit=1&newest_first=true"))
        .await;
    assert_eq!(titles(&body), ["Hello again"]);
    let (_, body) = h.get(&format!("{search}?q=&status=draft")).await;
    assert_eq!(titles(&body), ["Hello again", "Other"]);
    let (_, body) = h.get(&format!("{search}?q=&ids=p1&ids=p3")).await;
    assert_eq!(titles(&body), ["Hello", "Other"]);
    let (_, body) = h.get(&format!("{search}?q=%20again")).await;
    assert_eq!(titles(&body), ["Hello again"]);

    // Three segments deep.
    let (status, body) = h
        .post(&format!("{ACTIONS}/admin/posts/purge"), json!({}))
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"data": {"deleted": 3}}))
    );
    assert_eq!(h.posts().count(), 0);
    h.stop().await;
}

#[tokio::test]
async fn each_kind_is_served_on_its_method_only() {
    let h = Harness::start().await;
    let cases = [
        (Method::POST, "ping", "GET, HEAD"),
        (Method::GET, "posts/create", "POST"),
        (Method::GET, "admin/posts/purge", "POST"),
        (Method::POST, "posts/search", "GET, HEAD"),
        (Method::PUT, "posts/create", ""),
        (Method::DELETE, "ping", ""),
    ];
    for (method, path, allow) in cases {
        let mut request = h.request(method.clone(), &format!("{ACTIONS}/{path}"));
        if method != Method::GET {
            request = request.json(&json!({"title": "x", "status": "live"}));
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        if !allow.is_empty() {
            assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        }
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{method} is not allowed")),
            "{message}"
        );
    }
    assert_eq!(h.created.load(Ordering::SeqCst), 0, "no handler ran");
    assert_eq!(h.posts().count(), 0);
    h.stop().await;
}

#[tokio::test]
async fn unknown_actions_and_workspaces_are_json_404s() {
    let h = Harness::start().await;
    for (path, message) in [
        (
            format!("{ACTIONS}/posts/nope"),
            "no action `posts/nope` in workspace `blog`",
        ),
        (
            format!("{ACTIONS}/posts"),
            "no action `posts` in workspace `blog`",
        ),
        (
            format!("{ACTIONS}/ping/"),
            "no action `ping/` in workspace `blog`",
        ),
        (
            "/workspaces/nope/actions/ping".to_string(),
            "unknown workspace `nope`",
        ),
        (ACTIONS.to_string(), "no route for /workspaces/blog/actions"),
    ] {
        for method in [Method::GET, Method::POST] {
            let (status, body) =
                json_reply(h.request(method.clone(), &path).json(&json!({}))).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
            assert_eq!(
                body,
                json!({"error": {"message": message}}),
                "{method} {path}"
            );
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn a_bad_body_is_422_listing_every_issue_before_the_handler_runs() {
    let h = Harness::start().await;
    let create = format!("{ACTIONS}/posts/create");
    let (status, body) = h
        .post(
            &create,
            json!({"title": "", "views": -1, "status": "gone", "extra": 1, "more": 2}),
        )
        .await;
    let found = issues(status, &body);
    let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["extra", "more", "status", "title", "views"],
        "{body}"
    );
    assert_eq!(found[0].1, "is not a field of this input");
    assert!(found[4].1.contains("minimum"), "{found:?}");

    let (status, body) = h.post(&create, json!({})).await;
    assert_eq!(
        issues(status, &body),
        [
            ("status".to_string(), "is required".to_string()),
            ("title".to_string(), "is required".to_string())
        ]
    );
    let (status, body) = h.post(&create, json!(["not", "an", "object"])).await;
    let found = issues(status, &body);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "");

    // What the schema lets through but serde refuses (a u8 of 256) is a 422 too.
    let (status, body) = h
        .post(
            &create,
            json!({"title": "t", "status": "live", "priority": 256}),
        )
        .await;
    let found = issues(status, &body);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "priority");
    assert!(found[0].1.contains("256"), "{found:?}");

    // Bodies that are not JSON get the REST answers.
    let response = h
        .request(Method::POST, &create)
        .header("content-type", "application/json")
        .body("{\"title\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = h
        .request(Method::POST, &create)
        .body("title=x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    assert_eq!(h.created.load(Ordering::SeqCst), 0, "no handler ran");
    assert_eq!(h.posts().count(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_bad_query_string_is_422_listing_every_issue() {
    let h = Harness::start().await;
    let search = format!("{ACTIONS}/posts/search");
    let (status, body) = h
        .get(&format!(
            "{search}?limit=abc&status=gone&newest_first=maybe"
        ))
        .await;
    let found = issues(status, &body);
    let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["limit", "newest_first", "q", "status"], "{body}");
    assert!(found[0].1.contains("\"abc\""), "{found:?}");

    let (status, body) = h.get(&format!("{search}?q=a&limit=0")).await;
    let found = issues(status, &body);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "limit");
    assert!(found[0].1.contains("minimum"), "{found:?}");
    let (status, body) = h.get(&format!("{search}?q=a&limit=1.5")).await;
    assert_eq!(issues(status, &body)[0].0, "limit");
    // One value where one is expected: a repeated parameter is refused, not truncated.
    let (status, body) = h.get(&format!("{search}?q=a&q=b")).await;
    assert_eq!(issues(status, &body)[0].0, "q");
    // `token` is the auth token's, never an input field.
    let (status, body) = h.get(&format!("{search}?q=a&token=x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.stop().await;
}

#[tokio::test]
async fn handler_errors_are_answered_in_the_envelope_without_internals() {
    let h = Harness::start().await;
    let fail = |how: &str| format!("{ACTIONS}/fail?how={how}");
    let (status, body) = h.get(&fail("conflict")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        json!({"error": {"message": "that title is taken", "title": "Hello"}})
    );
    // A `WorkspaceError` maps as in REST: an unknown table is a 404.
    let (status, body) = h.get(&fail("workspace")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for how in ["internal", "panic"] {
        let (status, body) = h.get(&fail(how)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{how}");
        assert_eq!(
            body,
            json!({"error": {"message": "internal error"}}),
            "{how}"
        );
    }
    // The server goes on serving.
    let (status, _) = h.get(&format!("{ACTIONS}/ping")).await;
    assert_eq!(status, StatusCode::OK);
    h.stop().await;
}

/// A mutation is answered like a REST write: once durable. While commits fail it waits
/// for `write_durability_timeout`, then answers 503 `"applied": true`.
#[tokio::test]
async fn a_mutation_is_answered_once_what_it_wrote_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::with_options(dir.path(), SqliteOptions::default());
    let client = blog().with_storage(storage.clone()).create().await.unwrap();
    let options = ServerOptions::default()
        .port(0)
        .write_durability_timeout(Duration::from_millis(200));
    let mut server = create_server([client.clone()], options).unwrap();
    let created = Arc::new(AtomicUsize::new(0));
    server.actions("blog", actions(created)).unwrap();
    let addr = server.start().await.unwrap();
    let http = http_client();
    let create = format!("http://{addr}{ACTIONS}/posts/create");

    storage.fault_switch().set(true);
    let response = http
        .post(&create)
        .json(&json!({"title": "Held", "status": "live"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["applied"], json!(true), "{body}");
    // A query does not wait for the disk.
    let (status, body) =
        json_reply(http.get(format!("http://{addr}{ACTIONS}/posts/search?q=Held"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["id"], "p1");

    storage.fault_switch().set(false);
    // Once what waited is stored, the next mutation waits only for its own commit.
    tokio::time::timeout(GUARD, client.flush())
        .await
        .expect("the fault heals")
        .expect("flushed");
    let (status, body) = json_reply(
        http.post(&create)
            .json(&json!({"title": "Stored", "status": "live"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.destroy().await.unwrap();

    // Both rows are on disk.
    let reopened = blog()
        .with_storage(SqliteStorage::new(dir.path()))
        .create()
        .await
        .unwrap();
    let mut ids: Vec<String> = reopened
        .table("posts")
        .unwrap()
        .get_all_valid()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["p1", "p2"]);
    reopened.destroy().await.unwrap();
}
