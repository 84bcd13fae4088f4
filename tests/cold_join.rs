//! The first connection to a cold room (none loaded, or evicted) races whatever else holds
//! the doc at that moment: REST writes, a metrics scrape. A join waits for the doc; it is
//! never refused because the doc is busy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::sync::RoomEvent;
use epicenter_server::workspace::{id, text, WorkspaceDefinition};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;

const GUARD: Duration = Duration::from_secs(10);
/// Evict → join cycles. Before the fix, about one join in ten under this load was closed
/// with 1011.
const CYCLES: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_to_a_cold_room_wait_for_a_busy_doc() {
    let blog = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .unwrap();
    let client = blog.in_memory().create().await.unwrap();
    let options = ServerOptions::default()
        .port(0)
        .metrics(true)
        .room_idle_timeout(Duration::ZERO);
    let server = create_server([client], options).unwrap();
    let addr = server.start().await.unwrap();

    // REST writers and a metrics scraper keep the doc busy until the joins are done.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for writer in 0..3 {
        let (stop, writes) = (stop.clone(), writes.clone());
        load.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let url = format!("http://{addr}/workspaces/blog/tables/posts");
            for n in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let row = json!({"id": format!("w{writer}-{}", n % 50), "title": n.to_string()});
                let response = http.post(&url).json(&row).send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                writes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let scraper = stop.clone();
    load.push(tokio::spawn(async move {
        while !scraper.load(Ordering::Relaxed) {
            let got = reqwest::get(format!("http://{addr}/metrics"))
                .await
                .unwrap();
            assert!(got.status().is_success());
        }
    }));

    let url = format!("ws://{addr}/workspaces/blog/sync");
    let mut events = server.sync().events();
    for cycle in 0..CYCLES {
        let (mut ws, _) = tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(&url))
            .await
            .unwrap()
            .unwrap();
        let first = tokio::time::timeout(GUARD, ws.next()).await.unwrap();
        match first {
            Some(Ok(Ws::Binary(frame))) => assert!(
                matches!(
                    Message::decode_v1(&frame),
                    Ok(Message::Sync(SyncMessage::SyncStep1(_)))
                ),
                "cycle {cycle}: the first frame is not step1"
            ),
            other => panic!(
                "cycle {cycle} (after {} REST writes): the join was refused: {other:?}",
                writes.load(Ordering::Relaxed)
            ),
        }
        drop(ws);
        // The room is evicted as soon as its last connection has left.
        loop {
            match tokio::time::timeout(GUARD, events.recv()).await.unwrap() {
                Ok(RoomEvent::Evicted(id)) if id == "blog" => break,
                Ok(_) => {}
                Err(e) => panic!("room events: {e}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(writes.load(Ordering::Relaxed) > 0);
    server.destroy().await.unwrap();
}
