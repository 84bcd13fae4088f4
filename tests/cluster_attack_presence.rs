//! Attacks on presence across nodes (awareness over the bus, heartbeats, nodes that die,
//! restart or lose Redis). Each test is an attack from a review, kept as a regression
//! test. One runs the `blog` example as a real process: build it first (`cargo build
//! --features postgres,redis --example blog`; `cargo test` builds it). Skipped when
//! PostgreSQL or Redis is not installed.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod support;

use std::time::Duration;

use epicenter_server::sync::RedisBus;
use support::cluster::{gets, open, redis_conn, rest_post, serve, xadd, GUARD};
use support::services::{Postgres, Redis};
use yrs::StateVector;

/// The nodes' `node_timeout`: long enough for a killed node to be back before it ends.
const NODE_TIMEOUT_MS: u64 = 3000;

/// The `blog` example (built by `cargo test`) as a node on `port`; it names itself on the
/// bus after the host and the port, so a node restarted on its port keeps its name.
fn blog_node(pg: &Postgres, redis: &Redis, port: u16) -> Option<ChildGuard> {
    let exe = std::env::current_exe().ok()?;
    let blog = exe.parent()?.parent()?.join("examples").join("blog");
    if !blog.is_file() {
        eprintln!("skipped: build the examples first (cargo test builds them)");
        return None;
    }
    let child = std::process::Command::new(blog)
        .env("EPICENTER_POSTGRES_URL", pg.url())
        .env("EPICENTER_REDIS_URL", redis.url())
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .env("EPICENTER_NODE_TIMEOUT_MS", NODE_TIMEOUT_MS.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the blog example starts");
    let deadline = std::time::Instant::now() + GUARD;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "node did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(ChildGuard(child))
}

/// Sends step 1, so the server's handshake deadline (a first message within 10 s) does not
/// close a connection that only listens.
async fn hello(ws: &mut support::ws::Socket) {
    use futures_util::SinkExt;
    use yrs::updates::encoder::Encode;
    let step1 = yrs::sync::Message::Sync(yrs::sync::SyncMessage::SyncStep1(StateVector::default()));
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        step1.encode_v1().into(),
    ))
    .await
    .unwrap();
}

/// Kills (SIGKILL) the process when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node killed with SIGKILL and started again on its port (a supervisor restarting it)
/// under the same name, before `node_timeout` runs out: the presence of the clients it had
/// before the kill still goes (the new process knows nothing of them, so it must not
/// renew the old one's heartbeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_a_killed_node_goes_even_when_it_restarts_at_once() {
    use support::services::free_port;
    use support::ws::{announce_until_heard, awareness_of, join};
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let (a_port, b_port) = (free_port(), free_port());
    let Some(a) = blog_node(&pg, &redis, a_port) else {
        return;
    };
    let _b = blog_node(&pg, &redis, b_port).unwrap();
    let mut on_b = join(format!("127.0.0.1:{b_port}"), "blog").await;
    hello(&mut on_b).await;
    let mut on_a = join(format!("127.0.0.1:{a_port}"), "blog").await;
    announce_until_heard(&mut on_a, &mut on_b, 7, r#"{"user":"ann"}"#).await;
    drop(a); // SIGKILL
    let _a = blog_node(&pg, &redis, a_port).unwrap();
    // Past twice the node timeout, the removal should long be there.
    let wait = Duration::from_millis(NODE_TIMEOUT_MS * 2 + 2000);
    let state = tokio::time::timeout(wait, awareness_of(&mut on_b, 7)).await;
    assert_eq!(
        state.ok().as_deref(),
        Some("null"),
        "the killed node's client is still present"
    );
}

/// Redis restarted empty holds no heartbeat until each node's next beat (a third of
/// `node_timeout`, 10 s by default): the other nodes must not take the live nodes whose
/// keys are missing for a moment for gone, and remove their clients' presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_live_nodes_survives_a_redis_restart() {
    use support::ws::{announce_until_heard, join};
    let (Some(pg), Some(mut redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let quick = Duration::from_millis(100);
    let (a, a_addr) = serve(open(&pg, "a").await, &redis, "a", quick).await;
    let (b, b_addr) = serve(open(&pg, "b").await, &redis, "b", quick).await;
    let mut on_b = join(b_addr, "blog").await;
    hello(&mut on_b).await;
    let mut on_a = join(a_addr, "blog").await;
    announce_until_heard(&mut on_a, &mut on_b, 7, r#"{"user":"ann"}"#).await;
    redis.restart();
    // The nodes go on: a write crosses again.
    rest_post(a_addr, "after").await;
    assert!(gets(b.client("blog").unwrap(), "after").await);
    // Every state of client 7 node b's connection hears in the next seconds.
    let mut heard = Vec::new();
    let _ = tokio::time::timeout(GUARD, async {
        loop {
            heard.push(support::ws::awareness_of(&mut on_b, 7).await);
        }
    })
    .await;
    assert!(
        !heard.iter().any(|s| s == "null"),
        "node a is alive, yet its client's presence was removed: {heard:?}"
    );
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}

/// After Redis restarts, a node's publisher still holds its connection to the old server:
/// the first entries it sends fail and are dropped. Updates are caught up from the
/// database, but a presence removal (a client leaving) is not: the other nodes keep the
/// client's state for as long as its node lives, and hand it to every connection that joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_just_after_a_redis_restart_leaves_everywhere() {
    use support::ws::{announce_until_heard, awareness_of, join};
    let (Some(pg), Some(mut redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let quick = Duration::from_millis(100);
    let (a, a_addr) = serve(open(&pg, "a").await, &redis, "a", quick).await;
    let (b, b_addr) = serve(open(&pg, "b").await, &redis, "b", quick).await;
    let mut on_b = join(b_addr, "blog").await;
    hello(&mut on_b).await;
    let mut on_a = join(a_addr, "blog").await;
    announce_until_heard(&mut on_a, &mut on_b, 7, r#"{"user":"ann"}"#).await;
    redis.restart();
    futures_util::SinkExt::close(&mut on_a).await.unwrap();
    let removal = tokio::time::timeout(GUARD, awareness_of(&mut on_b, 7)).await;
    assert_eq!(
        removal.ok().as_deref(),
        Some("null"),
        "the client left node a; node b still shows it"
    );
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}

/// A node's presence is removed by the periodic check, which runs every
/// `catch_up_interval`: with that set longer than `node_timeout` (fewer database queries),
/// a dead node's clients stay present for up to that long, not `node_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_presence_goes_within_node_timeout_whatever_the_catch_up_interval() {
    use support::ws::{awareness, awareness_of, join};
    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let bus = RedisBus::new(redis.url(), "b")
        .catch_up_interval(Duration::from_secs(3600))
        .node_timeout(Duration::from_millis(500));
    let (b, b_addr) = support::cluster::serve_on(open(&pg, "b").await, bus).await;
    let mut on_b = join(b_addr, "blog").await;
    hello(&mut on_b).await;
    // Node x announces a client, then dies at once (it never renews a heartbeat).
    let mut c = redis_conn(&redis).await;
    let frame = awareness(7, 1, r#"{"user":"ann"}"#);
    xadd(
        &mut c,
        "epicenter:{blog}:a",
        &[("node", b"x"), ("a", &frame)],
    )
    .await;
    let heard = tokio::time::timeout(GUARD, awareness_of(&mut on_b, 7)).await;
    assert_eq!(heard.ok().as_deref(), Some(r#"{"user":"ann"}"#));
    let removal = tokio::time::timeout(GUARD, awareness_of(&mut on_b, 7)).await;
    assert_eq!(
        removal.ok().as_deref(),
        Some("null"),
        "a dead node's client is still present ten node timeouts later"
    );
    b.destroy().await.unwrap();
}
