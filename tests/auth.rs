//! Auth matrix: no auth, a fixed token, a verify callback (read-write, read-only, deny),
//! over REST and WebSockets, with missing, wrong and right tokens.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use epicenter_server::server::{create_server, Access, Auth, Server, ServerOptions};
use epicenter_server::workspace::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, Text, Transact};

const GUARD: Duration = Duration::from_secs(10);

async fn blog_server(options: ServerOptions) -> (Server, SocketAddr) {
    let blog = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap();
    let client = blog.in_memory().create().await.unwrap();
    let server = create_server([client], options.port(0)).unwrap();
    let addr = server.start().await.unwrap();
    (server, addr)
}

/// Sends a request with an optional bearer token; returns the status and JSON body.
async fn call(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> StatusCode {
    call(
        reqwest::Method::GET,
        format!("http://{addr}{path}"),
        token,
        None,
    )
    .await
    .0
}

async fn post(addr: SocketAddr, token: Option<&str>, id: &str) -> StatusCode {
    let url = format!("http://{addr}/workspaces/blog/tables/posts");
    call(
        reqwest::Method::POST,
        url,
        token,
        Some(json!({"id": id, "title": "t"})),
    )
    .await
    .0
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a sync connection (`?token=` in the query, or a bearer header).
async fn socket(addr: SocketAddr, query_token: Option<&str>, bearer: Option<&str>) -> Socket {
    let mut url = format!("ws://{addr}/workspaces/blog/sync");
    if let Some(token) = query_token {
        url.push_str(&format!("?token={token}"));
    }
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
        .unwrap();
    ws
}

/// The first thing the server says: a message, or a close code.
enum First {
    Frame(Message),
    Closed(u16, String),
}

async fn next(ws: &mut Socket) -> First {
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) => return First::Frame(Message::decode_v1(&b).unwrap()),
            Some(Ok(Ws::Close(Some(f)))) => {
                return First::Closed(f.code.into(), f.reason.to_string())
            }
            Some(Ok(_)) => continue,
            other => panic!("unexpected: {other:?}"),
        }
    }
}

async fn refused_with_4401(mut ws: Socket) {
    match next(&mut ws).await {
        First::Closed(code, reason) => {
            assert_eq!((code, reason.as_str()), (4401, "Unauthorized"));
        }
        First::Frame(m) => panic!("served without a valid token: {m:?}"),
    }
}

async fn served(mut ws: Socket) -> Socket {
    match next(&mut ws).await {
        First::Frame(Message::Sync(SyncMessage::SyncStep1(_))) => ws,
        First::Frame(m) => panic!("expected step1, got {m:?}"),
        First::Closed(code, reason) => panic!("refused: {code} {reason}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_lets_everyone_in() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    assert_eq!(
        get(addr, "/workspaces/blog/tables/posts", None).await,
        StatusCode::OK
    );
    assert_eq!(post(addr, None, "p1").await, StatusCode::CREATED);
    assert_eq!(get(addr, "/openapi/json", None).await, StatusCode::OK);
    served(socket(addr, None, None).await).await;
    assert_eq!(server.sync().stats().auth_failures, 0);
    server.destroy().await.unwrap();
}

/// Custom routes see the verdict as an `Access` extension: read-write for everyone
/// without auth, whatever the check grants with it.
#[tokio::test]
async fn custom_routes_see_the_access_verdict() {
    for (auth, token, expected) in [
        (Auth::None, None, "Some(ReadWrite)"),
        (Auth::token("s3cret"), Some("s3cret"), "Some(ReadWrite)"),
        (
            Auth::verify(|_| async { Access::ReadOnly }),
            Some("any"),
            "Some(ReadOnly)",
        ),
    ] {
        let blog = WorkspaceDefinition::builder("blog")
            .table("posts", [("id", id()), ("title", text())])
            .build()
            .unwrap();
        let client = blog.in_memory().create().await.unwrap();
        let mut server =
            create_server([client], ServerOptions::default().auth(auth).port(0)).unwrap();
        server.route(
            "/whoami",
            axum::routing::get(|access: Option<axum::Extension<Access>>| async move {
                format!("{:?}", access.map(|axum::Extension(a)| a))
            }),
        );
        let addr = server.start().await.unwrap();
        let (status, body) = call(
            reqwest::Method::GET,
            format!("http://{addr}/whoami"),
            token,
            None,
        )
        .await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, Value::String(expected.into()))
        );
        server.destroy().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_token_is_required_everywhere_but_open_docs() {
    let (server, addr) = blog_server(ServerOptions::default().auth(Auth::token("s3cret"))).await;
    let list = "/workspaces/blog/tables/posts";
    // Missing and wrong tokens: 401 in the JSON envelope, with a Bearer challenge.
    let (status, body) = call(
        reqwest::Method::GET,
        format!("http://{addr}{list}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].is_string(), "{body}");
    let response = reqwest::get(format!("http://{addr}{list}")).await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        get(addr, list, Some("wrong")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(addr, list, Some("s3cre")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(addr, Some("wrong"), "p1").await,
        StatusCode::UNAUTHORIZED
    );
    // Docs and unknown routes are protected too (no probing without a token).
    assert_eq!(
        get(addr, "/openapi/json", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(addr, "/", None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(get(addr, "/nope", None).await, StatusCode::UNAUTHORIZED);
    // The right token, as a header or in the query.
    assert_eq!(get(addr, list, Some("s3cret")).await, StatusCode::OK);
    assert_eq!(
        get(addr, &format!("{list}?token=s3cret&limit=5"), None).await,
        StatusCode::OK
    );
    assert_eq!(post(addr, Some("s3cret"), "p1").await, StatusCode::CREATED);
    assert_eq!(
        get(addr, "/openapi/json", Some("s3cret")).await,
        StatusCode::OK
    );
    // WebSockets: 4401 without it, served with it (query or header).
    refused_with_4401(socket(addr, None, None).await).await;
    refused_with_4401(socket(addr, Some("wrong"), None).await).await;
    served(socket(addr, Some("s3cret"), None).await).await;
    served(socket(addr, None, Some("s3cret")).await).await;
    assert!(server.sync().stats().auth_failures >= 9);
    server.destroy().await.unwrap();

    // Docs can be left open.
    let options = ServerOptions::default()
        .auth(Auth::token("s3cret"))
        .public_docs(true);
    let (server, addr) = blog_server(options).await;
    assert_eq!(get(addr, "/openapi/json", None).await, StatusCode::OK);
    assert_eq!(get(addr, "/", None).await, StatusCode::OK);
    assert_eq!(get(addr, list, None).await, StatusCode::UNAUTHORIZED);
    server.destroy().await.unwrap();
}

/// A verify callback: "rw" may write, "ro" may read, anything else is denied; records
/// the workspace ids it was asked about.
fn verify(seen: Arc<Mutex<Vec<Option<String>>>>) -> Auth {
    Auth::verify(move |request| {
        seen.lock().unwrap().push(request.workspace.clone());
        async move {
            match request.token.as_deref() {
                Some("rw") => Access::ReadWrite,
                Some("ro") => Access::ReadOnly,
                _ => Access::Denied,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_callback_grants_read_write_read_only_or_nothing_over_rest() {
    let seen = Arc::default();
    let (server, addr) =
        blog_server(ServerOptions::default().auth(verify(Arc::clone(&seen)))).await;
    let list = "/workspaces/blog/tables/posts";
    assert_eq!(get(addr, list, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(addr, list, Some("other")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(post(addr, Some("rw"), "p1").await, StatusCode::CREATED);
    // Read-only: reads work, every write is 403 and changes nothing.
    assert_eq!(get(addr, list, Some("ro")).await, StatusCode::OK);
    assert_eq!(
        get(addr, &format!("{list}/p1"), Some("ro")).await,
        StatusCode::OK
    );
    assert_eq!(post(addr, Some("ro"), "p2").await, StatusCode::FORBIDDEN);
    let one = format!("http://{addr}{list}/p1");
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        let (status, body) = call(
            method.clone(),
            one.clone(),
            Some("ro"),
            Some(json!({"title": "x"})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method}");
        assert!(body["error"]["message"].is_string());
    }
    let posts = server.client("blog").unwrap().table("posts").unwrap();
    assert_eq!(posts.get_all_valid().len(), 1);
    assert_eq!(posts.get_all_valid()[0]["title"], json!("t"));
    // The callback saw the workspace id, and none for the root.
    assert_eq!(get(addr, "/", Some("rw")).await, StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&Some("blog".to_string())));
    assert_eq!(seen.last(), Some(&None));
    server.destroy().await.unwrap();
}

fn update_frame(text: &str) -> Ws {
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    t.push(&mut doc.transact_mut(), text);
    let update = doc
        .transact()
        .encode_state_as_update_v1(&Default::default());
    Ws::Binary(
        Message::Sync(SyncMessage::Update(update))
            .encode_v1()
            .into(),
    )
}

/// Sends a SYNC_STATUS and collects what arrives before its echo.
async fn round_trip(ws: &mut Socket, tag: u8) -> Vec<Message> {
    let status = Message::Custom(102, vec![tag]).encode_v1();
    ws.send(Ws::Binary(status.clone().into())).await.unwrap();
    let mut before = Vec::new();
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) if b[..] == status[..] => return before,
            Some(Ok(Ws::Binary(b))) => before.push(Message::decode_v1(&b).unwrap()),
            Some(Ok(_)) => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_sockets_receive_and_use_awareness_but_cannot_write() {
    let (server, addr) = blog_server(ServerOptions::default().auth(verify(Arc::default()))).await;
    refused_with_4401(socket(addr, Some("other"), None).await).await;
    refused_with_4401(socket(addr, None, None).await).await;
    let mut reader = served(socket(addr, Some("ro"), None).await).await;
    let mut writer = served(socket(addr, Some("rw"), None).await).await;
    round_trip(&mut reader, 1).await;
    round_trip(&mut writer, 1).await;

    // The reader's update is neither applied nor broadcast, and closes it with 4403 (more
    // in tests/read_only.rs); a new read-only connection goes on reading.
    reader.send(update_frame("from the reader")).await.unwrap();
    loop {
        match next(&mut reader).await {
            First::Closed(code, reason) => {
                assert_eq!(code, 4403, "{reason}");
                break;
            }
            First::Frame(m) => assert!(!matches!(m, Message::Custom(102, _)), "acknowledged"),
        }
    }
    let mut reader = served(socket(addr, Some("ro"), None).await).await;
    round_trip(&mut reader, 2).await;
    let got = round_trip(&mut writer, 2).await;
    assert!(
        !got.iter()
            .any(|m| matches!(m, Message::Sync(SyncMessage::Update(_)))),
        "the read-only update was broadcast: {got:?}"
    );
    let doc = server.client("blog").unwrap().doc().clone();
    assert_eq!(
        doc.transact().state_vector().len(),
        0,
        "the read-only update was applied"
    );

    // The writer's update reaches the reader.
    writer.send(update_frame("from the writer")).await.unwrap();
    // Once the writer's echo is back, the update is queued for the reader.
    round_trip(&mut writer, 3).await;
    let got = round_trip(&mut reader, 3).await;
    assert!(got
        .iter()
        .any(|m| matches!(m, Message::Sync(SyncMessage::Update(_)))));

    // Awareness from the reader reaches the writer.
    let awareness = Message::Awareness(yrs::sync::AwarenessUpdate {
        clients: [(
            yrs::ClientID::new(77),
            yrs::sync::awareness::AwarenessUpdateEntry {
                clock: 1,
                json: r#"{"user":"reader"}"#.into(),
            },
        )]
        .into(),
    });
    reader
        .send(Ws::Binary(awareness.encode_v1().into()))
        .await
        .unwrap();
    // Once the reader's echo is back, its awareness is queued for the writer.
    round_trip(&mut reader, 4).await;
    let got = round_trip(&mut writer, 4).await;
    assert!(
        got.iter().any(|m| matches!(m, Message::Awareness(_))),
        "{got:?}"
    );
    server.destroy().await.unwrap();
}

#[cfg(feature = "client")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_client_gets_in_with_the_right_token_and_stops_on_a_wrong_one() {
    use epicenter_server::client::{self, ProviderOptions, Status, SyncProvider};
    let (server, addr) = blog_server(ServerOptions::default().auth(Auth::token("s3cret"))).await;
    let url = format!("ws://{addr}/workspaces/blog/sync");
    let good = SyncProvider::new(
        Doc::new(),
        url.clone(),
        ProviderOptions::default().auth(client::Auth::token("s3cret")),
    )
    .unwrap();
    good.connect().unwrap();
    let bad = SyncProvider::new(
        Doc::new(),
        url,
        ProviderOptions::default().auth(client::Auth::token("nope")),
    )
    .unwrap();
    bad.connect().unwrap();
    tokio::time::timeout(GUARD, good.status().wait_for(|s| *s == Status::Connected))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(
        GUARD,
        bad.status().wait_for(|s| matches!(s, Status::Error { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        *bad.status().borrow(),
        Status::Error {
            code: 4401,
            reason: "Unauthorized".into()
        }
    );
    good.destroy().await;
    bad.destroy().await;
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_auth_when_it_is_on() {
    let options = ServerOptions::default()
        .auth(Auth::token("s3cret"))
        .public_docs(true);
    let (server, addr) = blog_server(options).await;
    let (status, doc) = call(
        reqwest::Method::GET,
        format!("http://{addr}/openapi/json"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["token"]["in"], "query");
    assert_eq!(doc["security"].as_array().map(Vec::len), Some(2));
    let collection = &doc["paths"]["/workspaces/blog/tables/posts"];
    assert!(collection["get"]["responses"]["401"].is_object());
    assert!(collection["get"]["responses"]["403"].is_null());
    assert!(collection["post"]["responses"]["403"].is_object());
    assert_eq!(
        doc["paths"]["/openapi/json"]["get"]["security"],
        json!([{}])
    );
    assert!(doc["paths"]["/openapi/json"]["get"]["responses"]["401"].is_null());
    server.destroy().await.unwrap();

    // Without auth, none of it.
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let (_, doc) = call(
        reqwest::Method::GET,
        format!("http://{addr}/openapi/json"),
        None,
        None,
    )
    .await;
    assert!(doc["components"]["securitySchemes"].is_null());
    assert!(doc["paths"]["/workspaces/blog/tables/posts"]["get"]["responses"]["401"].is_null());
    server.destroy().await.unwrap();
}
