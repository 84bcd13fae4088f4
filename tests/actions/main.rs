//! Workspace actions over real sockets: queries and mutations at flat and nested paths,
//! each served on its method only, input checked with every issue listed, handler errors
//! in the envelope, durability, the OpenAPI document and discovery, auth by kind, nesting,
//! custom routes and metrics, and the mistakes refused when mounting.

mod attack;
mod auth;
mod calls;
mod docs;
mod mount;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use epicenter_server::server::actions::{ActionContext, Actions};
use epicenter_server::server::{create_server, ApiError, Server, ServerOptions};
use epicenter_server::workspace::*;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

/// A guard against a hung request or shutdown; nothing waits for it to elapse.
pub const GUARD: Duration = Duration::from_secs(20);

pub const ACTIONS: &str = "/workspaces/blog/actions";

pub fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
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
        .expect("valid definition")
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Draft,
    Live,
}

/// A new post; the server picks its id.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPost {
    /// The title.
    #[schema(min_length = 1)]
    pub title: String,
    /// How often it was read.
    #[serde(default)]
    pub views: u32,
    pub status: Status,
    /// A byte: the schema says "an integer of at least 0", serde also refuses 256.
    #[serde(default)]
    pub priority: u8,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Post {
    pub id: String,
    pub title: String,
    pub views: u32,
    pub status: Status,
}

/// What to look for.
#[derive(Deserialize, ToSchema)]
pub struct Search {
    /// Text the title contains.
    pub q: String,
    /// The most posts to return.
    #[schema(minimum = 1, maximum = 50)]
    pub limit: Option<u32>,
    pub status: Option<Status>,
    /// Only these ids (repeat the parameter).
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub newest_first: bool,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Empty {}

#[derive(Serialize, ToSchema)]
pub struct Pong {
    pub pong: bool,
    /// The access the handler was given.
    pub access: String,
}

#[derive(Serialize, ToSchema)]
pub struct Purged {
    pub deleted: usize,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailHow {
    Conflict,
    Internal,
    Panic,
    Workspace,
}

#[derive(Deserialize, ToSchema)]
pub struct Fail {
    pub how: FailHow,
}

fn row(post: &Post) -> Value {
    serde_json::to_value(post).expect("a post is JSON")
}

fn post_of(row: &Row) -> Post {
    serde_json::from_value(Value::Object(row.clone())).expect("a stored post")
}

pub async fn ping(cx: ActionContext, _: Empty) -> Result<Pong, ApiError> {
    Ok(Pong {
        pong: true,
        access: format!("{:?}", cx.access),
    })
}

pub async fn search(cx: ActionContext, input: Search) -> Result<Vec<Post>, ApiError> {
    let posts = cx.client.table("posts")?;
    let mut found: Vec<Post> = cx
        .blocking(move |_| posts.get_all_valid())
        .await?
        .iter()
        .map(post_of)
        .filter(|p| p.title.contains(&input.q))
        .filter(|p| input.status.is_none_or(|s| s == p.status))
        .filter(|p| input.ids.is_empty() || input.ids.contains(&p.id))
        .collect();
    if input.newest_first {
        found.reverse();
    }
    found.truncate(input.limit.map_or(usize::MAX, |l| l as usize));
    Ok(found)
}

pub async fn purge(cx: ActionContext, _: Empty) -> Result<Purged, ApiError> {
    let posts = cx.client.table("posts")?;
    let deleted = cx
        .blocking(move |_| {
            let n = posts.count();
            posts.clear().map(|_| n)
        })
        .await??;
    Ok(Purged { deleted })
}

pub async fn fail(cx: ActionContext, input: Fail) -> Result<Empty, ApiError> {
    match input.how {
        FailHow::Conflict => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "that title is taken",
        )
        .with("title", json!("Hello"))),
        FailHow::Internal => Err(ApiError::internal(
            "cannot open /var/secret/db.sqlite: permission denied",
        )),
        FailHow::Panic => panic!("the secret is 42"),
        FailHow::Workspace => {
            cx.client.table("nope")?;
            Ok(Empty {})
        }
    }
}

/// The test actions; `created` counts the calls that reached `posts/create`.
pub fn actions(created: Arc<AtomicUsize>) -> Actions {
    Actions::new()
        .query("ping", "Answers with the caller's access.", ping)
        .mutation(
            "posts/create",
            "Creates a post with a generated id and returns it.",
            move |cx: ActionContext, input: NewPost| {
                let n = created.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let post = Post {
                        id: format!("p{n}"),
                        title: input.title,
                        views: input.views,
                        status: input.status,
                    };
                    let posts = cx.client.table("posts")?;
                    let written = row(&post);
                    cx.blocking(move |_| posts.upsert(written)).await??;
                    Ok(post)
                }
            },
        )
        .query("posts/search", "Posts whose title contains `q`.", search)
        .mutation("admin/posts/purge", "Deletes every post.", purge)
        .query("fail", "Fails the way it is asked to.", fail)
}

/// A running server with the test actions and an HTTP client (`base` may include a prefix).
pub struct Harness {
    pub server: Server,
    pub base: String,
    pub http: reqwest::Client,
    /// Calls that reached `posts/create`.
    pub created: Arc<AtomicUsize>,
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(GUARD)
        .build()
        .expect("HTTP client")
}

impl Harness {
    /// The server (not started) over an in-memory blog with the test actions.
    pub async fn server(options: ServerOptions) -> (Server, Arc<AtomicUsize>) {
        let client = blog().in_memory().create().await.expect("client");
        let mut server = create_server([client], options.port(0)).expect("server");
        let created = Arc::new(AtomicUsize::new(0));
        server
            .actions("blog", actions(created.clone()))
            .expect("the actions mount");
        (server, created)
    }

    pub async fn start_with(options: ServerOptions) -> Self {
        let (server, created) = Self::server(options).await;
        let addr = server.start().await.expect("the server starts");
        Harness {
            server,
            base: format!("http://{addr}"),
            http: http_client(),
            created,
        }
    }

    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        json_reply(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        json_reply(self.request(Method::POST, path).json(&body)).await
    }

    pub fn posts(&self) -> TableHandle {
        self.server
            .client("blog")
            .expect("the blog client")
            .table("posts")
            .expect("the posts table")
    }

    pub async fn stop(self) {
        tokio::time::timeout(GUARD, self.server.destroy())
            .await
            .expect("destroy finishes")
            .expect("destroy succeeds");
    }
}

/// Sends the request and reads a JSON reply (asserting the content type says so).
pub async fn json_reply(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the request is answered");
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
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

/// The `issues` of a 422, as `(path, message)` pairs, sorted.
#[track_caller]
pub fn issues(status: StatusCode, body: &Value) -> Vec<(String, String)> {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["message"], "the input does not match the action's schema",
        "{body}"
    );
    let mut issues: Vec<(String, String)> = body["error"]["issues"]
        .as_array()
        .unwrap_or_else(|| panic!("no issues: {body}"))
        .iter()
        .map(|i| {
            (
                i["path"].as_str().expect("a path").to_string(),
                i["message"].as_str().expect("a message").to_string(),
            )
        })
        .collect();
    issues.sort();
    issues
}
