//! Mistakes refused when mounting, before anything is served, and the server left as it
//! was.

use epicenter_server::server::{create_server, ServerError, ServerOptions};

use super::*;

/// Another type called `Post`, with another shape.
mod other {
    #[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
    pub struct Post {
        pub body: String,
    }

    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct Wrapped {
        pub post: Post,
    }
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // refused before it is ever read
struct WithObject {
    post: Post,
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // refused before it is ever read
struct WithToken {
    token: String,
}

#[derive(Deserialize, Serialize, ToSchema)]
struct Wrapped {
    post: Post,
}

async fn echo_wrapped(_: ActionContext, _: Empty) -> Result<Wrapped, ApiError> {
    Err(ApiError::internal("not called"))
}

async fn other_wrapped(_: ActionContext, _: Empty) -> Result<other::Wrapped, ApiError> {
    Err(ApiError::internal("not called"))
}

async fn with_object(_: ActionContext, _: WithObject) -> Result<Empty, ApiError> {
    Ok(Empty {})
}

async fn with_token(_: ActionContext, _: WithToken) -> Result<Empty, ApiError> {
    Ok(Empty {})
}

async fn with_list(_: ActionContext, _: Vec<String>) -> Result<Empty, ApiError> {
    Ok(Empty {})
}

#[tokio::test]
async fn mistakes_are_refused_when_mounting_and_change_nothing() {
    let client = blog().in_memory().create().await.unwrap();
    let mut server = create_server([client], ServerOptions::default().port(0)).unwrap();
    server
        .actions("blog", Actions::new().query("ping", "Pings.", ping))
        .unwrap();
    let refused = |result: Result<_, ServerError>| -> (String, String) {
        match result {
            Err(ServerError::Action { path, reason, .. }) => (path, reason),
            Err(other) => panic!("another error: {other}"),
            Ok(_) => panic!("mounted"),
        }
    };

    match server.actions("nope", Actions::new().query("ping", "Pings.", ping)) {
        Err(ServerError::UnknownWorkspace(ws)) => assert_eq!(ws, "nope"),
        _ => panic!("actions for an unknown workspace were mounted"),
    }
    for bad in ["", "/ping", "ping/", "a//b", "a b", "../x", "a.b", "{x}"] {
        let (path, reason) = refused(
            server
                .actions("blog", Actions::new().query(bad, "Bad.", ping))
                .map(|_| ()),
        );
        assert_eq!(path, bad);
        assert!(reason.contains("segments"), "{bad}: {reason}");
    }
    let (_, reason) = refused(
        server
            .actions("blog", Actions::new().mutation("ping", "Again.", ping))
            .map(|_| ()),
    );
    assert!(reason.contains("another action has this path"), "{reason}");
    let twice = Actions::new()
        .query("a", "A.", ping)
        .query("a", "A again.", ping);
    let (path, _) = refused(server.actions("blog", twice).map(|_| ()));
    assert_eq!(path, "a");

    let cases = [
        (
            Actions::new().query("object", "Object.", with_object),
            "field `post`",
        ),
        (
            Actions::new().query("token", "Token.", with_token),
            "`token` field",
        ),
        (
            Actions::new().query("list", "List.", with_list),
            "must be a struct",
        ),
        // Two types of one name: one of them would be documented wrongly.
        (
            Actions::new()
                .query("wrapped", "Ours.", echo_wrapped)
                .query("other", "Theirs.", other_wrapped),
            "`Post` has another schema",
        ),
    ];
    for (actions, needle) in cases {
        let (_, reason) = refused(server.actions("blog", actions).map(|_| ()));
        assert!(reason.contains(needle), "`{needle}` not in: {reason}");
    }
    // A mutation's input may be anything JSON: a list is fine there.
    server
        .actions("blog", Actions::new().mutation("list", "List.", with_list))
        .unwrap();

    // Nothing refused was mounted or documented.
    let h = Harness {
        base: format!("http://{}", server.start().await.unwrap()),
        server,
        http: http_client(),
        created: Default::default(),
    };
    let (_, discovery) = h.get("/").await;
    assert_eq!(discovery["actions"], json!(["blog/list", "blog/ping"]));
    let (_, doc) = h.get("/openapi/json").await;
    let actions: Vec<&String> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|p| p.contains("/actions/"))
        .collect();
    assert_eq!(
        actions,
        [&format!("{ACTIONS}/list"), &format!("{ACTIONS}/ping")]
    );
    assert!(doc["components"]["schemas"]
        .get("blog.actions.wrapped.output")
        .is_none());
    h.stop().await;
}
