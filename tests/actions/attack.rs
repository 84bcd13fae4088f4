//! From an attacker's side: inputs built to make the answer or the work big, handlers
//! that fail or hang, and storage that fails under a mutation.

use epicenter_server::server::{ServerOptions, MAX_ISSUES, MAX_ISSUE_TEXT};
use reqwest::StatusCode;
use serde_json::json;

use super::*;

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

#[derive(Deserialize, ToSchema)]
pub struct Numbers {
    #[serde(default)]
    pub n: Vec<u32>,
}

async fn sum(_: ActionContext, input: Vec<u32>) -> Result<u64, ApiError> {
    Ok(input.iter().map(|&n| u64::from(n)).sum())
}

async fn sum_query(_: ActionContext, input: Numbers) -> Result<u64, ApiError> {
    Ok(input.n.iter().map(|&n| u64::from(n)).sum())
}

/// The test actions and `sum` (a mutation taking a list of numbers) and `sum_query` (the
/// same from `?n=`).
async fn start() -> Harness {
    let (mut server, created) = Harness::server(ServerOptions::default()).await;
    server
        .actions(
            "blog",
            Actions::new().mutation("sum", "Adds numbers.", sum).query(
                "sum_query",
                "Adds numbers.",
                sum_query,
            ),
        )
        .expect("the actions mount");
    let addr = server.start().await.expect("the server starts");
    Harness {
        server,
        base: format!("http://{addr}"),
        http: http_client(),
        created,
    }
}

/// Sends `body` as JSON and reads the reply as text, so its size can be checked.
async fn post_raw(h: &Harness, path: &str, body: String) -> (StatusCode, String) {
    let response = h
        .request(Method::POST, path)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("answered");
    (response.status(), response.text().await.expect("read"))
}

/// A 422 of many issues lists `MAX_ISSUES` and counts the rest, with short paths and
/// messages; the whole answer stays small.
#[track_caller]
fn assert_bounded(status: StatusCode, text: &str, issues_in_input: usize) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{:.300}", text);
    assert!(
        text.len() < 64 * 1024,
        "a 422 of {} bytes for a bad input",
        text.len()
    );
    let body: Value = serde_json::from_str(text).expect("JSON");
    let listed = body["error"]["issues"].as_array().expect("issues");
    assert_eq!(listed.len(), MAX_ISSUES);
    assert_eq!(
        body["error"]["more_issues"],
        json!(issues_in_input - MAX_ISSUES),
        "{:.300}",
        text
    );
    for issue in listed {
        for part in ["path", "message"] {
            let chars = issue[part].as_str().expect("a string").chars().count();
            assert!(chars <= MAX_ISSUE_TEXT + 1, "{part} of {chars} characters");
        }
    }
}

/// The input is checked before the handler, but its 422 must not be an amplifier: a
/// body (or query string) with a wrong value in every item, thousands of unknown fields,
/// huge keys or a huge wrong value is answered with a bounded list.
#[tokio::test]
async fn a_422_is_bounded_however_bad_the_input() {
    let h = start().await;
    // Every item of a list is wrong: `{}` is not a number.
    let items = 50_000;
    let body = format!("[{}{{}}]", "{},".repeat(items - 1));
    let (status, text) = post_raw(&h, &format!("{ACTIONS}/sum"), body).await;
    assert_bounded(status, &text, items);

    // Thousands of fields an input without them refuses.
    let fields = 20_000;
    let mut body = serde_json::Map::new();
    for i in 0..fields {
        body.insert(format!("f{i}"), json!(0));
    }
    body.insert("title".into(), json!("t"));
    body.insert("status".into(), json!("live"));
    let (status, text) = post_raw(
        &h,
        &format!("{ACTIONS}/posts/create"),
        Value::Object(body).to_string(),
    )
    .await;
    assert_bounded(status, &text, fields);

    // A huge unknown key and a huge value of the wrong type: neither is echoed whole.
    let huge = "k".repeat(200_000);
    let body = json!({ huge.clone(): 1, "title": { huge.clone(): [huge] }, "status": "live" });
    let (status, text) = post_raw(&h, &format!("{ACTIONS}/posts/create"), body.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text:.300}");
    assert!(text.len() < 4096, "a 422 of {} bytes", text.len());
    let body: Value = serde_json::from_str(&text).unwrap();
    let found = issues(status, &body);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        found[1],
        ("title".into(), "value is not of type \"string\"".into())
    );
    assert!(
        found[0].0.starts_with("kkk") && found[0].0.ends_with('…'),
        "{found:?}"
    );

    // The same from a query string: every repeated value is wrong.
    let values = 5_000;
    let query = "n=x&".repeat(values);
    let response = h
        .request(Method::GET, &format!("{ACTIONS}/sum_query?{query}"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_bounded(status, &response.text().await.unwrap(), values);

    // A short value is still quoted, and a few issues are all listed without a count.
    let (status, body) = h.post(&format!("{ACTIONS}/sum"), json!([1, "x"])).await;
    assert_eq!(
        issues(status, &body),
        [("1".into(), "\"x\" is not of type \"integer\"".into())]
    );
    assert!(body["error"].get("more_issues").is_none(), "{body}");
    h.stop().await;
}

async fn compact(cx: ActionContext, _: Empty) -> Result<Empty, ApiError> {
    cx.client.compact().await?;
    Ok(Empty {})
}

/// While storage fails, mutations (and REST writes) are answered 503 or 500 as documented,
/// but the answer never carries the storage's error: it names the server's files.
#[tokio::test]
async fn storage_failures_are_answered_without_the_storage_s_files() {
    use epicenter_server::storage::{SqliteOptions, SqliteStorage};
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        max_pending_bytes: 1,
        ..SqliteOptions::default()
    };
    let storage = SqliteStorage::with_options(dir.path(), options);
    let client = blog().with_storage(storage.clone()).create().await.unwrap();
    let options = ServerOptions::default()
        .port(0)
        .write_durability_timeout(Duration::from_millis(100));
    let mut server = epicenter_server::server::create_server([client.clone()], options).unwrap();
    let created = Arc::new(AtomicUsize::new(0));
    server
        .actions(
            "blog",
            actions(created).mutation("compact", "Compacts.", compact),
        )
        .unwrap();
    let addr = server.start().await.unwrap();
    let http = http_client();
    let dir_name = dir.path().to_string_lossy().to_string();
    let answer = |path: &str, body: Value| {
        let request = http.post(format!("http://{addr}{path}")).json(&body);
        async move {
            let response = request.send().await.expect("answered");
            let status = response.status();
            (status, response.text().await.expect("read"))
        }
    };
    let post = json!({"title": "t", "status": "live"});
    let row = json!({"id": "r", "title": "t"});

    storage.fault_switch().set(true);
    let mut answers = vec![
        // Applied, not durable in time.
        answer(&format!("{ACTIONS}/posts/create"), post.clone()).await,
        // Past the bound: refused before it is applied, by a mutation and by REST.
        answer(&format!("{ACTIONS}/posts/create"), post.clone()).await,
        answer("/workspaces/blog/tables/posts", row).await,
    ];
    let expected = [
        (StatusCode::SERVICE_UNAVAILABLE, "\"applied\":true"),
        (StatusCode::SERVICE_UNAVAILABLE, "\"applied\":false"),
        (StatusCode::SERVICE_UNAVAILABLE, "\"applied\":false"),
    ];
    for ((status, text), (want, applied)) in answers.iter().zip(expected) {
        assert_eq!(*status, want, "{text}");
        assert!(text.contains(applied), "{text}");
    }
    // A storage error a handler passes on with `?`: a 500 that says nothing of it.
    answers.push(answer(&format!("{ACTIONS}/compact"), json!({})).await);
    let (status, text) = answers.last().unwrap();
    assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    assert_eq!(text, r#"{"error":{"message":"internal error"}}"#);
    for (_, text) in &answers {
        for internal in [dir_name.as_str(), "blog.db", "sqlite", "I/O"] {
            assert!(!text.contains(internal), "`{internal}` in {text}");
        }
    }

    storage.fault_switch().set(false);
    tokio::time::timeout(GUARD, client.flush())
        .await
        .expect("the fault heals")
        .expect("flushed");
    server.destroy().await.unwrap();
}

/// Signals when dropped: the handler's future, and what it holds, is gone.
struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

type Signal = Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>;

/// A handler that says it started, then waits forever holding a `Dropped`.
fn hanging(
    started: Signal,
    dropped: Signal,
) -> impl Fn(ActionContext, Empty) -> BoxFuture<Result<Empty, ApiError>> + Send + Sync {
    move |_, _| {
        let started = started.lock().unwrap().take();
        let held = Dropped(dropped.lock().unwrap().take());
        Box::pin(async move {
            let _held = held;
            if let Some(started) = started {
                let _ = started.send(());
            }
            std::future::pending().await
        })
    }
}

/// A mutation that says it started, waits for `go`, then writes row `late` and says so.
fn waiting_writer(
    started: Signal,
    go: Arc<tokio::sync::Notify>,
    done: Signal,
) -> impl Fn(ActionContext, Empty) -> BoxFuture<Result<Empty, ApiError>> + Send + Sync {
    move |cx, _| {
        let started = started.lock().unwrap().take();
        let done = done.lock().unwrap().take();
        let go = go.clone();
        Box::pin(async move {
            if let Some(started) = started {
                let _ = started.send(());
            }
            go.notified().await;
            let posts = cx.client.table("posts")?;
            cx.blocking(move |_| posts.upsert(json!({"id": "late", "title": "t"})))
                .await??;
            if let Some(done) = done {
                let _ = done.send(());
            }
            Ok(Empty {})
        })
    }
}

fn signal() -> (Signal, tokio::sync::oneshot::Receiver<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    (Arc::new(std::sync::Mutex::new(Some(tx))), rx)
}

/// Sends a request on its own connection, waits until its handler started, then hangs up.
async fn hang_up_once_started(
    request: reqwest::RequestBuilder,
    started: tokio::sync::oneshot::Receiver<()>,
) {
    let call = tokio::spawn(request.send());
    tokio::time::timeout(GUARD, started)
        .await
        .expect("the handler starts")
        .unwrap();
    call.abort();
    let _ = call.await;
}

/// A query's work is for its client alone: when the client hangs up, the handler is
/// dropped with its request instead of running on, unseen, for as long as it likes. A
/// mutation runs to its end: stopping it between two writes would leave half of it.
#[tokio::test]
async fn a_query_stops_when_its_client_hangs_up_and_a_mutation_finishes() {
    let (started, query_started) = signal();
    let (dropped, query_dropped) = signal();
    let (writing, mutation_started) = signal();
    let (wrote, mutation_done) = signal();
    let go = Arc::new(tokio::sync::Notify::new());
    let (mut server, _) = Harness::server(ServerOptions::default()).await;
    server
        .actions(
            "blog",
            Actions::new()
                .query("hang", "Never answers.", hanging(started, dropped))
                .mutation(
                    "write_later",
                    "Writes when told.",
                    waiting_writer(writing, go.clone(), wrote),
                ),
        )
        .unwrap();
    let addr = server.start().await.unwrap();
    let url = |path: &str| format!("http://{addr}{ACTIONS}/{path}");

    hang_up_once_started(http_client().get(url("hang")), query_started).await;
    tokio::time::timeout(Duration::from_secs(5), query_dropped)
        .await
        .expect("the query was dropped when its client hung up")
        .unwrap();

    let request = http_client().post(url("write_later")).json(&json!({}));
    hang_up_once_started(request, mutation_started).await;
    go.notify_one();
    tokio::time::timeout(GUARD, mutation_done)
        .await
        .expect("the mutation finished after its client hung up")
        .unwrap();
    let posts = server.client("blog").unwrap().table("posts").unwrap();
    assert!(posts.has("late"));
    server.destroy().await.unwrap();
}
