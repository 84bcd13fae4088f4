//! Actions in the OpenAPI document and discovery, and next to custom routes, a nesting app
//! and the metrics.

use axum::routing::get;
use axum::Router;
use reqwest::StatusCode;
use serde_json::json;

use super::*;

/// Checks that every `$ref` in the document points at something in it; returns the count.
fn assert_refs_resolve(doc: &Value) -> usize {
    fn walk<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(members) => {
                for (key, member) in members {
                    match member.as_str() {
                        Some(target) if key == "$ref" => out.push(target),
                        _ => walk(member, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    walk(doc, &mut refs);
    for target in &refs {
        let pointer = target.strip_prefix('#').expect("only local refs");
        assert!(
            doc.pointer(pointer).is_some(),
            "`{target}` does not resolve"
        );
    }
    refs.len()
}

/// A validator for `schema`, with the document's components around it for `$ref`s.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let root = json!({
        "$ref": "#/$defs/it",
        "$defs": { "it": schema },
        "components": doc["components"].clone(),
    });
    jsonschema::validator_for(&root).expect("a valid JSON Schema")
}

/// An independent OpenAPI 3.1 reader parses the document and resolves every response,
/// body and parameter schema of every operation.
fn assert_oas3_reads(text: &str) -> usize {
    let spec = oas3::from_json(text).expect("oas3 parses the document");
    assert_eq!(spec.validate_version().expect("a 3.1.x version").minor, 1);
    let mut count = 0;
    for (path, method, op) in spec.operations() {
        count += 1;
        let declared = op.responses.as_ref().map_or(0, |r| r.len());
        let responses = op.responses(&spec);
        assert_eq!(
            responses.len(),
            declared,
            "{method} {path}: a response is unresolvable"
        );
        for (code, response) in &responses {
            for media in response.content.values() {
                if let Err(e) = media.schema(&spec) {
                    panic!("{method} {path} {code}: {e}");
                }
            }
        }
        let body = op.request_body(&spec).expect("the request body resolves");
        for media in body.iter().flat_map(|b| b.content.values()) {
            let schema = media.schema(&spec).expect("the body schema resolves");
            assert!(schema.is_some(), "{method} {path}: a body without a schema");
        }
        for parameter in op.parameters(&spec).expect("the parameters resolve") {
            let schema = parameter.schema.as_ref().expect("a parameter schema");
            if let Err(e) = schema.resolve(&spec) {
                panic!("{method} {path} ?{}: {e}", parameter.name);
            }
        }
    }
    count
}

#[tokio::test]
async fn the_openapi_document_carries_every_action_with_its_schemas() {
    let h = Harness::start().await;
    let text = h
        .request(reqwest::Method::GET, "/openapi/json")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    // 3 docs routes, 6 table operations, sync, and 5 actions.
    assert_eq!(assert_oas3_reads(&text), 3 + 6 + 1 + 5);
    assert!(assert_refs_resolve(&doc) > 20);

    let op = |path: &str, method: &str| -> &Value {
        let item = doc["paths"][format!("{ACTIONS}/{path}")]
            .as_object()
            .unwrap_or_else(|| panic!("no path for {path}"));
        assert_eq!(item.len(), 1, "{path} has one method: {item:?}");
        &item[method]
    };
    let create = op("posts/create", "post");
    assert_eq!(create["tags"], json!(["posts", "mutation"]));
    assert_eq!(create["operationId"], "blog_posts_create");
    assert_eq!(create["summary"], "posts/create");
    assert_eq!(
        create["description"],
        "Creates a post with a generated id and returns it."
    );
    let body = &create["requestBody"];
    assert_eq!(body["required"], true);
    assert_eq!(
        body["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/blog.actions.posts.create.input"
    );
    let ok = &create["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(
        ok["properties"]["data"]["$ref"],
        "#/components/schemas/blog.actions.posts.create.output"
    );
    let codes = |op: &Value| -> Vec<String> {
        op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        codes(create),
        ["200", "400", "413", "415", "422", "default"]
    );

    let search = op("posts/search", "get");
    assert_eq!(search["tags"], json!(["posts", "query"]));
    assert!(search.get("requestBody").is_none());
    assert_eq!(codes(search), ["200", "422", "default"]);
    let parameters = search["parameters"].as_array().unwrap();
    let names: Vec<&str> = parameters
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["q", "limit", "status", "ids", "newest_first"]);
    for p in parameters {
        assert_eq!(p["in"], "query");
        assert_eq!(p["required"], p["name"] == "q", "{p}");
    }
    assert_eq!(parameters[0]["description"], "Text the title contains.");
    assert_eq!(parameters[1]["schema"]["minimum"], 1);
    assert_eq!(parameters[1]["schema"]["maximum"], 50);
    assert_eq!(parameters[3]["schema"]["type"], "array");
    assert_eq!(op("ping", "get")["tags"], json!(["ping", "query"]));
    assert_eq!(
        op("admin/posts/purge", "post")["tags"],
        json!(["admin", "mutation"])
    );
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for tag in ["ping", "posts", "admin", "fail", "query", "mutation"] {
        assert!(tags.contains(&tag), "no tag {tag} in {tags:?}");
    }

    // The schemas are valid JSON Schemas that agree with what the server does.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["Status"]["enum"], json!(["draft", "live"]));
    let input = validator(&doc, &schemas["blog.actions.posts.create.input"]);
    assert!(input.is_valid(&json!({"title": "t", "status": "live"})));
    assert!(!input.is_valid(&json!({"title": "t", "status": "gone"})));
    assert!(!input.is_valid(&json!({"title": "t", "status": "live", "extra": 1})));
    let (_, created) = h
        .post(
            &format!("{ACTIONS}/posts/create"),
            json!({"title": "t", "status": "live"}),
        )
        .await;
    let (_, found) = h.get(&format!("{ACTIONS}/posts/search?q=t")).await;
    let (_, pong) = h.get(&format!("{ACTIONS}/ping")).await;
    for (path, method, answer) in [
        ("posts/create", "post", created),
        ("posts/search", "get", found),
        ("ping", "get", pong),
    ] {
        let schema = &op(path, method)["responses"]["200"]["content"]["application/json"]["schema"];
        let check = validator(&doc, schema);
        assert!(
            check.is_valid(&answer),
            "{path}: {answer} does not match {schema}: {:?}",
            check
                .iter_errors(&answer)
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn discovery_lists_every_action_with_its_url() {
    let h = Harness::start().await;
    let (status, body) = h.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["actions"],
        json!([
            "blog/admin/posts/purge",
            "blog/fail",
            "blog/ping",
            "blog/posts/create",
            "blog/posts/search"
        ])
    );
    let listed = body["workspaces"][0]["actions"].as_array().unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(
        listed[3],
        json!({
            "path": "posts/create",
            "kind": "mutation",
            "method": "POST",
            "url": "/workspaces/blog/actions/posts/create",
            "description": "Creates a post with a generated id and returns it.",
        })
    );
    assert_eq!(listed[2]["kind"], "query");
    assert_eq!(listed[2]["method"], "GET");
    // The advertised URLs answer on the advertised methods.
    let (status, _) = h.get(listed[2]["url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    h.stop().await;
}

/// Nested under `/api` of a host app, next to a custom route, with metrics on: actions are
/// served under the prefix, discovery says so, and the metrics count their answers.
#[tokio::test]
async fn actions_work_nested_next_to_custom_routes_with_metrics() {
    let (mut server, _) = Harness::server(ServerOptions::default().metrics(true)).await;
    server.route("/health", get(|| async { "OK" }));
    let app = Router::new()
        .route("/", get(|| async { "host app" }))
        .nest("/api", server.router());
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
    let http = http_client();
    let url = |path: &str| format!("http://{addr}/api{path}");

    let (status, body) = json_reply(
        http.post(url(&format!("{ACTIONS}/posts/create")))
            .json(&json!({"title": "Nested", "status": "live"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = json_reply(http.get(url(&format!("{ACTIONS}/posts/search")))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = json_reply(http.get(url(&format!("{ACTIONS}/posts/create")))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let health = http.get(url("/health")).send().await.unwrap();
    assert_eq!(health.text().await.unwrap(), "OK");
    let (_, discovery) = json_reply(http.get(url(""))).await;
    assert_eq!(
        discovery["workspaces"][0]["actions"][3]["url"],
        "/api/workspaces/blog/actions/posts/create"
    );

    let metrics = http.get(url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    for status in ["200", "405", "422"] {
        let line = format!("epicenter_http_requests_total{{status=\"{status}\"}} ");
        assert!(text.contains(&line), "no {line} in:\n{text}");
    }

    stop.send(()).unwrap();
    tokio::time::timeout(GUARD, serving)
        .await
        .expect("the host app stops")
        .unwrap()
        .unwrap();
    server.destroy().await.unwrap();
}

/// Two workspaces with actions of the same path: each is served with its own client, and
/// the document tells them apart; the types they share are one component.
#[tokio::test]
async fn each_workspace_serves_its_own_actions() {
    let notes = WorkspaceDefinition::builder("notes")
        .table(
            "posts",
            [
                ("id", id()),
                ("title", text()),
                ("views", integer().default(0)),
                ("status", select(["draft", "live"]).default("draft")),
            ],
        )
        .build()
        .unwrap();
    let clients = [
        blog().in_memory().create().await.unwrap(),
        notes.in_memory().create().await.unwrap(),
    ];
    let mut server =
        epicenter_server::server::create_server(clients, ServerOptions::default().port(0)).unwrap();
    for ws in ["blog", "notes"] {
        server.actions(ws, actions(Default::default())).unwrap();
    }
    let addr = server.start().await.unwrap();
    let http = http_client();
    let (status, body) = json_reply(
        http.post(format!(
            "http://{addr}/workspaces/notes/actions/posts/create"
        ))
        .json(&json!({"title": "A note", "status": "live"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let count = |ws: &str| server.client(ws).unwrap().table("posts").unwrap().count();
    assert_eq!((count("blog"), count("notes")), (0, 1));

    let (_, doc) = json_reply(http.get(format!("http://{addr}/openapi/json"))).await;
    let id = |ws: &str| {
        doc["paths"][format!("/workspaces/{ws}/actions/posts/create")]["post"]["operationId"]
            .clone()
    };
    assert_eq!(
        (id("blog"), id("notes")),
        (json!("blog_posts_create"), json!("notes_posts_create"))
    );
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.contains_key("Status"));
    assert!(schemas.contains_key("notes.actions.posts.create.input"));
    let (_, discovery) = json_reply(http.get(format!("http://{addr}/"))).await;
    assert_eq!(discovery["actions"].as_array().unwrap().len(), 10);
    assert_eq!(
        discovery["workspaces"][1]["actions"][3]["url"],
        "/workspaces/notes/actions/posts/create"
    );
    server.destroy().await.unwrap();
}

/// A workspace whose id is not a plain URL segment (a space, `/`, `?`, non-ASCII): the
/// URLs discovery gives for its tables, actions and sync reach them.
#[tokio::test]
async fn discovery_urls_reach_a_workspace_whatever_its_name() {
    let ws = "my ws/ü{x}?";
    let definition = WorkspaceDefinition::builder(ws)
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap();
    let client = definition.in_memory().create().await.unwrap();
    let mut server = create_server([client], ServerOptions::default().port(0)).unwrap();
    server
        .actions(ws, Actions::new().query("ping", "Pings.", ping))
        .unwrap();
    let addr = server.start().await.unwrap();
    let http = http_client();
    let (_, discovery) = json_reply(http.get(format!("http://{addr}/"))).await;
    let workspace = &discovery["workspaces"][0];
    assert_eq!(workspace["id"], ws);
    let url = |value: &Value| format!("http://{addr}{}", value.as_str().expect("a URL"));

    let (status, body) = json_reply(http.get(url(&workspace["actions"][0]["url"]))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["pong"], true);
    let (status, body) = json_reply(http.get(url(&workspace["tables"][0]["url"]))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"data": []})));
    // The sync URL is the sync route of this workspace (a plain GET is no upgrade).
    let sync = workspace["sync"].as_str().unwrap();
    let (_, doc) = json_reply(http.get(format!("http://{addr}/openapi/json"))).await;
    assert!(doc["paths"][sync].is_object(), "{sync} is not documented");
    server.destroy().await.unwrap();
}
