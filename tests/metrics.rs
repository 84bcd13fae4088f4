//! The opt-in `/metrics` route.

use std::time::Duration;

use epicenter_server::server::{create_server, Auth, ServerOptions};
use epicenter_server::storage::SqliteStorage;
use epicenter_server::workspace::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::StateVector;

const GUARD: Duration = Duration::from_secs(10);

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap()
}

/// The text of `/metrics` (no auth).
async fn scrape(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample line that starts with `name` (labels included).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no sample `{name}` in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rooms_connections_messages_requests_commits_and_doc_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let client = blog()
        .with_storage(SqliteStorage::new(dir.path()))
        .create()
        .await
        .unwrap();
    let server = create_server([client], ServerOptions::default().port(0).metrics(true)).unwrap();
    let addr = server.start().await.unwrap();
    let http = reqwest::Client::new();
    let posts = format!("http://{addr}/workspaces/blog/tables/posts");
    let created = http
        .post(&posts)
        .json(&json!({"id": "p1", "title": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let missing = http.get(format!("{posts}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // One sync connection: step1 and a SYNC_STATUS, answered.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/workspaces/blog/sync"))
        .await
        .unwrap();
    let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
    let status = Message::Custom(102, vec![1]).encode_v1();
    ws.send(Ws::Binary(step1.into())).await.unwrap();
    ws.send(Ws::Binary(status.clone().into())).await.unwrap();
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) if b[..] == status[..] => break,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    let response = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    assert_eq!(
        sample(&text, r#"epicenter_http_requests_total{status="201"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"epicenter_http_requests_total{status="404"}"#),
        1.0
    );
    assert_eq!(sample(&text, "epicenter_sync_rooms"), 1.0);
    assert_eq!(sample(&text, "epicenter_sync_connections"), 1.0);
    assert_eq!(
        sample(&text, "epicenter_sync_connections_opened_total"),
        1.0
    );
    assert_eq!(sample(&text, "epicenter_sync_messages_received_total"), 2.0);
    // step1, step2 and the echo at least.
    assert!(sample(&text, "epicenter_sync_messages_sent_total") >= 3.0);
    assert!(sample(&text, "epicenter_sync_bytes_received_total") >= 5.0);
    assert!(sample(&text, "epicenter_sync_bytes_sent_total") > 0.0);
    assert_eq!(
        sample(&text, "epicenter_sync_slow_consumer_closes_total"),
        0.0
    );
    assert_eq!(sample(&text, "epicenter_auth_failures_total"), 0.0);
    assert!(sample(&text, "epicenter_storage_commit_seconds_count") >= 1.0);
    assert!(
        sample(
            &text,
            r#"epicenter_storage_commit_seconds_bucket{le="+Inf"}"#
        ) >= 1.0
    );
    assert_eq!(
        sample(&text, "epicenter_storage_commit_failures_total"),
        0.0
    );
    assert!(sample(&text, r#"epicenter_doc_bytes{doc="blog"}"#) > 10.0);
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_by_default_and_behind_auth() {
    let client = blog().in_memory().create().await.unwrap();
    let server = create_server([client], ServerOptions::default().port(0)).unwrap();
    let addr = server.start().await.unwrap();
    let off = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(off.status(), 404);
    server.destroy().await.unwrap();

    let client = blog().in_memory().create().await.unwrap();
    let options = ServerOptions::default()
        .port(0)
        .metrics(true)
        .auth(Auth::token("t"))
        .public_docs(true);
    let server = create_server([client], options).unwrap();
    let addr = server.start().await.unwrap();
    let http = reqwest::Client::new();
    let refused = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let text = http
        .get(format!("http://{addr}/metrics"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sample(&text, "epicenter_auth_failures_total"), 1.0);
    assert_eq!(
        sample(&text, r#"epicenter_http_requests_total{status="401"}"#),
        1.0
    );
    server.destroy().await.unwrap();
}

/// Connections that send no request, or only part of its headers, in time are counted
/// (they are logged at debug only: a line each would let anyone flood the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_in_time_are_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let client = blog().in_memory().create().await.unwrap();
    let options = ServerOptions::default()
        .port(0)
        .metrics(true)
        .header_read_timeout(Duration::from_millis(200));
    let server = create_server([client], options).unwrap();
    let addr = server.start().await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Each is closed by the server once the deadline passes.
    for tcp in [&mut silent, &mut partial] {
        let mut rest = Vec::new();
        tokio::time::timeout(GUARD, tcp.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .ok();
    }
    assert_eq!(server.sync().stats().header_timeouts, 2);
    let text = scrape(addr).await;
    assert_eq!(sample(&text, "epicenter_http_header_timeouts_total"), 2.0);
    server.destroy().await.unwrap();
}

/// Connects to room `room` (already percent-encoded) and writes `text` into its doc,
/// waiting for the SYNC_STATUS echo so it is applied.
async fn write_room(addr: std::net::SocketAddr, room: &str, text: &str) {
    use yrs::{ReadTxn, Text, Transact};
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/workspaces/{room}/sync"))
            .await
            .unwrap();
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("t");
    t.insert(&mut doc.transact_mut(), 0, text);
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let update = Message::Sync(SyncMessage::Update(update)).encode_v1();
    let status = Message::Custom(102, vec![1]).encode_v1();
    ws.send(Ws::Binary(update.into())).await.unwrap();
    ws.send(Ws::Binary(status.clone().into())).await.unwrap();
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) if b[..] == status[..] => break,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// The close code a connection to room `room` (percent-encoded) gets first.
async fn close_code(addr: std::net::SocketAddr, room: &str) -> u16 {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/workspaces/{room}/sync"))
            .await
            .unwrap();
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Ws::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_room_names_neither_break_the_scrape_nor_add_series() {
    use openmetrics_parser::{openmetrics::parse_openmetrics, OpenMetricsValue};
    // A workspace id is the server's choice, but may hold any character: escaped.
    let odd = "odd\"}\\ws\nx";
    let client = WorkspaceDefinition::builder(odd)
        .table("posts", [("id", id())])
        .build()
        .unwrap()
        .in_memory()
        .create()
        .await
        .unwrap();
    let options = ServerOptions::default()
        .port(0)
        .metrics(true)
        .dynamic_docs(true);
    let server = create_server([client], options).unwrap();
    let addr = server.start().await.unwrap();
    // `x"} 1\nepicenter_forged 1\n` and `a\b` are not dynamic doc names (4400, nothing
    // created); then 32 client-chosen names that are.
    for hostile in ["x%22%7D%201%0Aepicenter_forged%201%0A", "a%5Cb"] {
        assert_eq!(close_code(addr, hostile).await, 4400, "{hostile}");
    }
    for i in 0..32 {
        write_room(addr, &format!("room-{i}"), "plain").await;
    }

    let text = scrape(addr).await;
    let scrape = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e:?} in:\n{text}"));
    assert!(
        !scrape.families.keys().any(|name| name.contains("forged")),
        "{text}"
    );
    let docs = &scrape.families["epicenter_doc_bytes"];
    let series: Vec<_> = docs.iter_samples().collect();
    assert_eq!(series.len(), 1, "only the workspace has a series: {text}");
    let labels = series[0].get_labelset().unwrap();
    assert_eq!(
        labels.get_label_value("doc"),
        Some(odd),
        "read back unescaped"
    );
    let dynamic = &scrape.families["epicenter_dynamic_doc_bytes"];
    let samples: Vec<_> = dynamic.iter_samples().collect();
    assert_eq!(samples.len(), 1, "{text}");
    let OpenMetricsValue::Gauge(total) = &samples[0].value else {
        panic!("{:?}", samples[0].value)
    };
    // 32 docs of at least their text each.
    assert!(total.as_f64() >= 32.0 * 5.0, "{text}");
    server.destroy().await.unwrap();
}
