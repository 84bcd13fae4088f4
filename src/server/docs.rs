//! `/openapi` (the Scalar page) and `/openapi/json` (the generated OpenAPI 3.1 document).

use axum::extract::{OriginalUri, State};
use axum::http::{header, Uri};
use axum::response::{Html, IntoResponse, Response};

use super::options::ScalarAssets;
use super::state::ServerState;

/// The page template. The document is loaded by URL rather than inlined, so nothing in a
/// definition can break out of the page's markup. Both URLs are relative, so the page also
/// works when the server is nested under a prefix.
const PAGE: &str = r#"<!doctype html>
<html>
<head>
    <title>$title</title>
    <meta charset="utf-8"/>
    <meta name="viewport" content="width=device-width, initial-scale=1"/>
</head>
<body>
<script id="api-reference" data-url="$spec_url"></script>
<script src="$script"></script>
</body>
</html>
"#;

/// Renders the Scalar page with utoipa-scalar (the title is escaped for HTML).
pub(crate) fn scalar_page(title: &str, assets: &ScalarAssets) -> String {
    let script = match assets {
        ScalarAssets::Url(url) => html_escape(url),
        ScalarAssets::File(_) => "openapi/scalar.js".to_string(),
    };
    let template = PAGE
        .replace("$spec_url", "openapi/json")
        .replace("$script", &script);
    utoipa_scalar::Scalar::new(serde_json::Value::Null)
        .custom_html(template)
        .title(html_escape(title))
        .to_html()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The document; when the server is nested under a prefix, with that prefix as its
/// server URL so "try it" and generated clients reach the real routes.
pub(crate) async fn openapi_json(
    State(state): State<ServerState>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
) -> Response {
    let prefix = super::discovery::prefix(&original, &uri);
    let body = if prefix.is_empty() {
        state.inner.openapi_json.clone()
    } else {
        let mut doc = state.inner.openapi.clone();
        doc.servers = Some(vec![utoipa::openapi::server::Server::new(prefix)]);
        serde_json::to_vec(&doc).unwrap_or_default().into()
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(crate) async fn scalar(State(state): State<ServerState>) -> Html<axum::body::Bytes> {
    Html(state.inner.scalar_html.clone())
}
