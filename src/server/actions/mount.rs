//! Checking actions against the server they are mounted on, before anything is served:
//! paths, duplicates, whether a query's input can come from a query string, and whether
//! each input schema compiles. A mistake is an error at startup, never a broken route.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::input::InputSchema;
use super::{Action, ActionKind, Actions, TypeSchema};
use crate::server::ServerError;

/// An action ready to serve.
pub(crate) struct Mounted {
    /// Its path below `/workspaces/{ws}/actions/`.
    pub path: String,
    pub action: Arc<Action>,
    pub input: InputSchema,
}

/// The mounted actions of one workspace, by path.
pub(crate) type WorkspaceActions = BTreeMap<String, Arc<Mounted>>;

/// Checks `actions` of workspace `ws`, next to the ones it already has (`existing`).
pub(crate) fn mount(
    ws: &str,
    existing: Option<&WorkspaceActions>,
    actions: &Actions,
) -> Result<Vec<Arc<Mounted>>, ServerError> {
    let mut mounted: Vec<Arc<Mounted>> = Vec::new();
    for (path, action) in &actions.entries {
        let refuse = |reason: String| ServerError::Action {
            workspace: ws.to_string(),
            path: path.clone(),
            reason,
        };
        check_path(path).map_err(refuse)?;
        let taken = existing.is_some_and(|e| e.contains_key(path))
            || mounted.iter().any(|m| &m.path == path);
        if taken {
            return Err(refuse("another action has this path".into()));
        }
        for (what, schema) in [("input", &action.input), ("output", &action.output)] {
            dangling_ref(schema).map_or(Ok(()), |name| {
                Err(refuse(format!(
                    "its {what} schema refers to `{name}`, which its types do not define"
                )))
            })?;
        }
        let input = InputSchema::new(to_value(&action.input.root), components(&action.input))
            .map_err(refuse)?;
        if action.kind == ActionKind::Query {
            if let Some(problem) = input.query_problem() {
                return Err(refuse(problem));
            }
        }
        mounted.push(Arc::new(Mounted {
            path: path.clone(),
            action: action.clone(),
            input,
        }));
    }
    Ok(mounted)
}

/// One or more `/`-separated segments of ASCII letters, digits, `_` and `-`: each is a
/// literal URL segment, the same in the route, the document and every client.
fn check_path(path: &str) -> Result<(), String> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if path.split('/').all(segment_ok) {
        Ok(())
    } else {
        Err(
            "a path is one or more `/`-separated segments of ASCII letters, digits, `_` and `-`"
                .into(),
        )
    }
}

pub(super) fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The named schemas a type refers to, as JSON.
pub(super) fn components(schema: &TypeSchema) -> Map<String, Value> {
    schema
        .components
        .iter()
        .map(|(name, schema)| (name.clone(), to_value(schema)))
        .collect()
}

/// A `$ref` that names no schema of the type's own, if there is one (a hand-written
/// `ToSchema` that forgot to list one).
fn dangling_ref(schema: &TypeSchema) -> Option<String> {
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(members) => {
                for (key, member) in members {
                    match member.as_str() {
                        Some(target) if key == "$ref" => out.push(target),
                        _ => refs(member, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
            _ => {}
        }
    }
    let components = components(schema);
    let root = to_value(&schema.root);
    let mut targets = Vec::new();
    refs(&root, &mut targets);
    components.values().for_each(|c| refs(c, &mut targets));
    targets.into_iter().find_map(|target| {
        let known = target
            .strip_prefix("#/components/schemas/")
            .is_some_and(|name| components.contains_key(name));
        (!known).then(|| target.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_literal_url_segments() {
        for good in ["a", "posts/create", "a-b/c_d/E9"] {
            assert!(check_path(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "a b", "a.b", "../x", "a/{b}", "é", "a?b",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
