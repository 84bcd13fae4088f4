//! Workspace actions: typed queries and mutations next to a workspace, served with no
//! route code.
//!
//! An action is a path (`posts/create`), a kind, a description and an async handler that
//! takes the workspace client and a typed input and returns a typed output. Input and
//! output are plain serde types that also derive `utoipa::ToSchema`, so the same types give
//! the validation, the deserialization and the OpenAPI document; nothing is written twice.
//! [`Server::actions`](super::Server::actions) mounts them:
//!
//! - a query at `GET /workspaces/{ws}/actions/{path}`, its input from the query string
//!   (read access);
//! - a mutation at `POST /workspaces/{ws}/actions/{path}`, its input the JSON body
//!   (read-write access), answered once what it wrote is durable, like a REST write.
//!
//! This module holds the definitions; `input` turns a request into a checked input,
//! `mount` checks definitions against the server, `route` serves them and `openapi`
//! documents them.

mod input;
#[cfg(test)]
mod input_tests;
mod mount;
mod openapi;
mod route;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::{RefOr, Schema};
use utoipa::ToSchema;

use super::ApiError;
use crate::access::Access;
use crate::storage::BoxFuture;
use crate::workspace::WorkspaceClient;

pub(crate) use mount::{mount, Mounted, WorkspaceActions};
pub(crate) use openapi::document;
pub(crate) use route::routes;

/// Whether an action reads or writes; it decides the method, where the input comes from,
/// the access needed and whether the answer waits for durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// `GET`, input from the query string, read access.
    Query,
    /// `POST`, input from the JSON body, read-write access; answered once durable.
    Mutation,
}

impl ActionKind {
    /// The HTTP method it is served on.
    pub fn method(self) -> Method {
        match self {
            ActionKind::Query => Method::GET,
            ActionKind::Mutation => Method::POST,
        }
    }

    /// `"query"` or `"mutation"`.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Query => "query",
            ActionKind::Mutation => "mutation",
        }
    }
}

/// What a handler gets besides its input: the workspace's client and the access the
/// request was granted (always at least read access; read-write for a mutation).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ActionContext {
    /// The client of the workspace the action belongs to.
    pub client: WorkspaceClient,
    /// What the request may do (`Access::ReadWrite` when auth is off).
    pub access: Access,
}

impl ActionContext {
    /// Runs `work` on a blocking thread. Table and KV calls wait for the doc's lock, which
    /// a big sync update can hold for seconds; run them here so the async workers never
    /// wait for a doc (a read that must be quick can also use `TableHandle::try_get`).
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&WorkspaceClient) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || work(&client))
            .await
            .map_err(ApiError::internal)
    }
}

/// A handler with its types erased: checked JSON in, JSON out.
type Handler =
    Arc<dyn Fn(ActionContext, Value) -> BoxFuture<Result<Value, ApiError>> + Send + Sync>;

/// A type's schema and the named schemas it refers to (`#/components/schemas/<name>`).
#[derive(Clone)]
pub(crate) struct TypeSchema {
    pub root: RefOr<Schema>,
    pub components: Vec<(String, RefOr<Schema>)>,
}

impl TypeSchema {
    fn of<T: ToSchema>() -> Self {
        let mut components = Vec::new();
        T::schemas(&mut components);
        TypeSchema {
            root: T::schema(),
            components,
        }
    }
}

/// One action as defined.
pub(crate) struct Action {
    pub kind: ActionKind,
    pub description: String,
    pub input: TypeSchema,
    pub output: TypeSchema,
    pub handler: Handler,
}

/// The actions of one workspace, by path. Mount them with
/// [`Server::actions`](super::Server::actions).
///
/// A path is one or more segments of ASCII letters, digits, `_` and `-`, separated by `/`
/// (`posts/create`); it is checked when mounted. An input is any `Deserialize + ToSchema`
/// type, and a query's is a struct whose fields the query string can carry (strings,
/// numbers, booleans, enums, and lists of them; `token` is the auth token's name, so not
/// a field). An output is any `Serialize + ToSchema` type.
///
/// ```
/// use epicenter_server::server::actions::{ActionContext, Actions};
/// use epicenter_server::server::ApiError;
/// use serde::{Deserialize, Serialize};
/// use utoipa::ToSchema;
///
/// #[derive(Deserialize, ToSchema)]
/// struct Count {
///     /// The table to count.
///     table: String,
/// }
///
/// #[derive(Serialize, ToSchema)]
/// struct Counted {
///     rows: usize,
/// }
///
/// async fn count(cx: ActionContext, input: Count) -> Result<Counted, ApiError> {
///     let table = cx.client.table(&input.table)?; // an unknown table: 404
///     let rows = cx.blocking(move |_| table.count()).await?;
///     Ok(Counted { rows })
/// }
///
/// let actions = Actions::new().query("tables/count", "Counts a table's rows.", count);
/// # let _ = actions;
/// ```
#[derive(Clone, Default)]
pub struct Actions {
    entries: Vec<(String, Arc<Action>)>,
}

impl Actions {
    /// No actions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a query: served on `GET`, its input from the query string, needing read
    /// access.
    pub fn query<I, O, F, Fut>(self, path: &str, description: &str, handler: F) -> Self
    where
        I: DeserializeOwned + ToSchema + Send + 'static,
        O: Serialize + ToSchema + 'static,
        F: Fn(ActionContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, ApiError>> + Send + 'static,
    {
        self.add(path, ActionKind::Query, description, handler)
    }

    /// Adds a mutation: served on `POST`, its input the JSON body, needing read-write
    /// access; a success is answered once what it wrote through `cx.client` is durable
    /// (past the server's `write_durability_timeout`, 503 `"applied": true`), an error at
    /// once. It is not a transaction: writes made before an error or a panic stay applied.
    pub fn mutation<I, O, F, Fut>(self, path: &str, description: &str, handler: F) -> Self
    where
        I: DeserializeOwned + ToSchema + Send + 'static,
        O: Serialize + ToSchema + 'static,
        F: Fn(ActionContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, ApiError>> + Send + 'static,
    {
        self.add(path, ActionKind::Mutation, description, handler)
    }

    fn add<I, O, F, Fut>(
        mut self,
        path: &str,
        kind: ActionKind,
        description: &str,
        handler: F,
    ) -> Self
    where
        I: DeserializeOwned + ToSchema + Send + 'static,
        O: Serialize + ToSchema + 'static,
        F: Fn(ActionContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, ApiError>> + Send + 'static,
    {
        let action = Action {
            kind,
            description: description.to_string(),
            input: TypeSchema::of::<I>(),
            output: TypeSchema::of::<O>(),
            handler: erase(handler),
        };
        self.entries.push((path.to_string(), Arc::new(action)));
        self
    }

    /// The paths and kinds, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, ActionKind)> {
        self.entries.iter().map(|(path, a)| (path.as_str(), a.kind))
    }

    /// How many actions there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Wraps a typed handler: the input is deserialized first (a failure is a 422 naming
/// where), and the output serialized after.
fn erase<I, O, F, Fut>(handler: F) -> Handler
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + 'static,
    F: Fn(ActionContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, ApiError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |cx, input| {
        let handler = handler.clone();
        Box::pin(async move {
            let input: I = input::deserialize(input)?;
            let output = handler(cx, input).await?;
            serde_json::to_value(output).map_err(|e| {
                tracing::error!(error = %e, "an action's output cannot be encoded as JSON");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode the response",
                )
            })
        })
    })
}
