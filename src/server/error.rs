//! The REST error envelope, and the one place where errors become HTTP responses.
//!
//! Every failure, ours or an axum extractor's rejection, leaves as
//! `{"error": {"message": ..., "issues"?: [...], "row"?: {...}}}` with the status SPEC §3
//! gives, so clients never see a plain-text error.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::error::{StorageError, WorkspaceError};
use crate::storage::StorageStatus;
use crate::workspace::Issue;

/// The most issues a 422 lists; the others are only counted (`more_issues`). A body can
/// have as many problems as it has values, and a message may quote its value: listed in
/// full, a 1 MiB body of wrong items would be answered with tens of MiB.
pub const MAX_ISSUES: usize = 100;

/// The most characters of an issue's path or message in a 422; a longer one is cut and
/// ends in `…` (a path holds names the client chose, a message may quote a value).
pub const MAX_ISSUE_TEXT: usize = 200;

/// The `Retry-After` of a write refused or not durable because storage is failing: about
/// the longest wait between two retries of a failing commit.
const STORAGE_RETRY_AFTER: u64 = 1;

/// An HTTP error with its JSON envelope.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The status sent.
    pub status: StatusCode,
    /// The human-readable message.
    pub message: String,
    /// Extra members of the `error` object (`issues`, `row`, ...).
    pub details: Map<String, Value>,
    /// Seconds to send in a `Retry-After` header, if any.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            details: Map::new(),
            retry_after: None,
        }
    }

    /// Sends `Retry-After: <seconds>` with the error.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 503 for a write that was applied but is not durable within the server's
    /// `write_durability_timeout`: storage is failing and retrying. The change stays
    /// applied (readers see it) and is stored once storage recovers; `"applied": true`
    /// tells it from a write refused before it was applied.
    ///
    /// The storage's error (which names its files) is logged, not sent.
    pub fn not_durable(status: &StorageStatus) -> Self {
        let (why, detail) = match &status.retrying {
            Some(error) => ("storage is failing and retrying", error.as_str()),
            None => ("the disk is slower than the writes", ""),
        };
        tracing::warn!(
            reason = why,
            error = detail,
            "a write is not durable in time; answered 503"
        );
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the change is applied but not durable yet ({why}); it is stored once storage \
                 recovers"
            ),
        )
        .with("applied", Value::Bool(true))
        .retry_after(STORAGE_RETRY_AFTER)
    }

    /// 500 for a failure whose details are not for the client (they may name files,
    /// queries or other internals): `error` is logged, and the answer only says that the
    /// request failed.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "a request failed on the server side");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    /// 404 with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Adds a detail member to the `error` object.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.details.insert(key.to_string(), value);
        self
    }

    /// 422 listing the issues: the first [`MAX_ISSUES`], each path and message cut to
    /// [`MAX_ISSUE_TEXT`] characters; past them, `more_issues` says how many were left
    /// out.
    pub fn invalid(message: impl Into<String>, issues: &[Issue]) -> Self {
        let mut listed = Issues::default();
        for issue in issues {
            if listed.is_full() {
                listed.skip(1);
            } else {
                listed.push(issue.clone());
            }
        }
        listed.into_error(message)
    }

    /// Maps an extractor rejection, keeping axum's status (400 malformed JSON, 413 body
    /// too large, 415 wrong content type, ...) and its explanation.
    pub fn from_rejection(rejection: impl IntoResponse + std::fmt::Display) -> Self {
        let message = rejection.to_string();
        let status = rejection.into_response().status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            tracing::warn!(%message, "request body over the body limit; answered 413");
        }
        Self::new(status, message)
    }
}

impl From<WorkspaceError> for ApiError {
    fn from(e: WorkspaceError) -> Self {
        match &e {
            WorkspaceError::UnknownTable(_)
            | WorkspaceError::UnknownKey(_)
            | WorkspaceError::NotFound { .. } => ApiError::not_found(e.to_string()),
            WorkspaceError::Invalid { issues } => {
                ApiError::invalid("the data does not match the schema", issues)
            }
            WorkspaceError::BadUpdate(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
            WorkspaceError::Destroyed | WorkspaceError::Storage(StorageError::Closed) => {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is shutting down",
                )
            }
            // The reasons name the storage's files and its errors: logged, not sent.
            WorkspaceError::Storage(StorageError::Unavailable { .. }) => {
                tracing::warn!(error = %e, "a write refused: storage is unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage is unavailable (failing, with too much waiting); try again later",
                )
                .with("applied", Value::Bool(false))
                .retry_after(STORAGE_RETRY_AFTER)
            }
            WorkspaceError::Storage(_) | WorkspaceError::Definition(_) => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = Map::new();
        error.insert("message".into(), Value::String(self.message));
        error.extend(self.details);
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// The JSON 404 for paths no route matches.
pub(crate) async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// The JSON 405 for known paths with another method.
pub(crate) async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The issues of a 422 as they are answered: at most [`MAX_ISSUES`] listed, each cut to
/// [`MAX_ISSUE_TEXT`] characters, and how many more there were.
#[derive(Debug, Default)]
pub(crate) struct Issues {
    listed: Vec<Issue>,
    more: usize,
}

impl Issues {
    /// Whether no more are listed: what comes now is only counted.
    pub fn is_full(&self) -> bool {
        self.listed.len() >= MAX_ISSUES
    }

    /// Lists `issue` (cut to size), or counts it once the list is full.
    pub fn push(&mut self, issue: Issue) {
        if self.is_full() {
            self.more += 1;
        } else {
            self.listed
                .push(Issue::new(cut(issue.path), cut(issue.message)));
        }
    }

    /// Counts `n` issues that are not listed.
    pub fn skip(&mut self, n: usize) {
        self.more += n;
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty() && self.more == 0
    }

    /// The 422.
    pub fn into_error(self, message: impl Into<String>) -> ApiError {
        let error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
            .with("issues", json!(self.listed));
        if self.more == 0 {
            error
        } else {
            error.with("more_issues", json!(self.more))
        }
    }
}

/// `text` cut to [`MAX_ISSUE_TEXT`] characters, ending in `…` if it was longer.
fn cut(mut text: String) -> String {
    if let Some((end, _)) = text.char_indices().nth(MAX_ISSUE_TEXT) {
        text.truncate(end);
        text.push('…');
    }
    text
}
