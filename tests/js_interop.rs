//! Wire interop with real Yjs: JavaScript peers must read what this crate writes and the
//! other way round. `tests/js/cells.mjs` writes and reads docs in the workspace layout with
//! the pinned `yjs` package, so these tests catch encoding drift (numbers becoming BigInts,
//! entry shapes, LWW timestamps) that Rust-only tests cannot see.
//!
//! Needs `node` and `npm` on PATH; the JS dependencies are installed on first use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use epicenter_server::workspace::{
    boolean, id, integer, text, Row, WorkspaceClient, WorkspaceDefinition,
};
use serde_json::{json, Value};
use yrs::{Any, Array, Out, ReadTxn, Transact};

// ---------------------------------------------------------------------------------------
// Running the JS side
// ---------------------------------------------------------------------------------------

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Installs the JS dependencies once per test binary. Tests run in parallel threads, and
/// two `npm ci` runs in one directory would clobber each other's `node_modules`, so the
/// first caller installs while the others wait on the `OnceLock`.
fn ensure_js_deps() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = READY.get_or_init(install_js_deps) {
        panic!("{e}");
    }
}

fn install_js_deps() -> Result<(), String> {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Err(format!("`node --version` failed: {}", out.status)),
        Err(e) => return Err(format!("the JS interop tests need `node` on PATH: {e}")),
    }
    let dir = js_dir();
    if dir.join("node_modules/yjs").is_dir() {
        return Ok(());
    }
    // `npm ci` installs exactly the locked versions, so the Yjs we test against is pinned.
    let out = Command::new("npm")
        .arg("ci")
        .current_dir(&dir)
        .output()
        .map_err(|e| format!("the JS interop tests need `npm` on PATH: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`npm ci` in {} failed ({}):\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Runs `node cells.mjs <args>` and returns its stdout; panics with stderr on failure.
fn cells(args: &[&Path]) -> String {
    ensure_js_deps();
    let out = Command::new("node")
        .arg(js_dir().join("cells.mjs"))
        .args(args)
        .output()
        .expect("cannot run node");
    assert!(
        out.status.success(),
        "cells.mjs {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cells.mjs printed non-UTF-8")
}

/// Has Yjs build a doc from `spec` (see `cells.mjs`) and returns its full-state v1 update.
fn js_write(spec: &Value) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (spec_path, out_path) = (dir.path().join("spec.json"), dir.path().join("doc.bin"));
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    cells(&[Path::new("write"), &out_path, &spec_path]);
    std::fs::read(out_path).unwrap()
}

/// One array entry as Yjs decoded it, with the JS `typeof` of each field.
#[derive(Debug)]
struct JsEntry {
    val: Value,
    ts: f64,
    /// `typeof` of key, val and ts, e.g. `["string", "number", "number"]`.
    types: [String; 3],
}

/// Root array name → key → entry, as Yjs reads `update`. Panics if a key occurs twice in
/// one array: after every write or settle, each live key must have exactly one entry.
fn js_read(update: &[u8]) -> BTreeMap<String, BTreeMap<String, JsEntry>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc.bin");
    std::fs::write(&path, update).unwrap();
    let out: Value = serde_json::from_str(&cells(&[Path::new("read"), &path])).unwrap();
    let mut roots = BTreeMap::new();
    for (root, entries) in out["arrays"].as_object().expect("arrays") {
        let types = out["types"][root].as_array().expect("types");
        let mut by_key = BTreeMap::new();
        for (e, t) in entries.as_array().expect("entries").iter().zip(types) {
            let key = e["key"].as_str().expect("string key").to_string();
            let ty = |f: &str| t[f].as_str().unwrap_or_default().to_string();
            let entry = JsEntry {
                val: e["val"].clone(),
                ts: e["ts"].as_f64().unwrap_or(f64::NAN),
                types: [ty("key"), ty("val"), ty("ts")],
            };
            if let Some(old) = by_key.insert(key.clone(), entry) {
                panic!("{root}: key `{key}` has more than one entry (one was {old:?})");
            }
        }
        roots.insert(root.clone(), by_key);
    }
    roots
}

/// The values of one array as a JSON object `{key: val}`, for whole-array comparisons.
fn vals(entries: &BTreeMap<String, JsEntry>) -> Value {
    entries
        .iter()
        .map(|(k, e)| (k.clone(), e.val.clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The JS `typeof` a JSON value must have after the trip through Yjs.
fn js_typeof(v: &Value) -> &'static str {
    match v {
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        _ => "object",
    }
}

/// Checks every entry's JS types: keys are strings, timestamps and numbers are plain JS
/// numbers (a BigInt would break `ts` comparisons and `JSON.stringify` in JS peers).
fn assert_js_types(root: &str, entries: &BTreeMap<String, JsEntry>) {
    for (key, e) in entries {
        let want = ["string", js_typeof(&e.val), "number"];
        assert_eq!(e.types, want, "{root} `{key}`: JS typeof key/val/ts");
    }
}

// ---------------------------------------------------------------------------------------
// The Rust side
// ---------------------------------------------------------------------------------------

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table(
            "posts",
            [
                ("id", id()),
                ("title", text()),
                ("views", integer()),
                ("published", boolean()),
            ],
        )
        .table(
            "authors",
            [("id", id()), ("name", text()), ("bio", text().nullable())],
        )
        .kv("theme", text().nullable())
        .kv("pageSize", integer().nullable())
        .build()
        .unwrap()
}

fn row(v: Value) -> Row {
    v.as_object().cloned().expect("a row literal is an object")
}

fn encode(client: &WorkspaceClient) -> Vec<u8> {
    client
        .doc()
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default())
}

/// The keys of every entry of a root array of the Rust doc, sorted (duplicates kept, so
/// comparing with a list of distinct keys also checks there is one entry per key).
fn doc_keys(client: &WorkspaceClient, root: &str) -> Vec<String> {
    let array = client.doc().get_or_insert_array(root);
    let txn = client.doc().transact();
    let mut keys: Vec<String> = array
        .iter(&txn)
        .map(|out| match out {
            Out::Any(Any::Map(m)) => match m.get("key") {
                Some(Any::String(k)) => k.to_string(),
                other => panic!("{root}: entry without a string key: {other:?}"),
            },
            other => panic!("{root}: element is not a {{key, val, ts}} map: {other:?}"),
        })
        .collect();
    keys.sort();
    keys
}

/// `<id>:<field>` for each field, sorted like [`doc_keys`].
fn cell_keys(rows: &[(&str, &[&str])]) -> Vec<String> {
    let mut keys: Vec<String> = rows
        .iter()
        .flat_map(|(id, fields)| fields.iter().map(move |f| format!("{id}:{f}")))
        .collect();
    keys.sort();
    keys
}

const POST_FIELDS: &[&str] = &["id", "title", "views", "published"];

/// Whole numbers past the small-integer encoding of Yjs: 5e9 is exact as a float32, and
/// 2^53 - 1 (the largest integer a JS number holds exactly) needs a float64.
const BIG: i64 = 5_000_000_000;
const MAX_SAFE: i64 = (1 << 53) - 1;

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn js_writes_rust_reads() {
    let update = js_write(&json!({
        "guid": "blog",
        "tables": {
            "posts": [
                {"id": "p1", "title": "Hello", "views": 3, "published": false},
                {"id": "p2", "title": "Doomed", "views": 0, "published": true},
                // Yjs encodes numbers by size (varint, float32, float64): each must come back
                // as the same JSON integer.
                {"id": "p3", "title": "Big", "views": BIG, "published": true},
                {"id": "p4", "title": "Huge", "views": MAX_SAFE, "published": true},
                {"id": "p5", "title": "Negative", "views": -7, "published": false},
            ],
            // `bio` is left out: a nullable field JS never wrote reads as null.
            "authors": [{"id": "a1", "name": "Ada"}],
        },
        "kv": {"theme": "dark", "pageSize": 20},
        // A later JS write of some fields of p1: its entries replace the old ones.
        "overwrite": {"posts": [{"id": "p1", "title": "Hello again", "views": 4}]},
        "deleteRows": {"posts": ["p2"]},
    }));

    let client = blog().in_memory().create().await.unwrap();
    client.apply_update(&update, "js").unwrap();

    // Rows compare as serde_json values, where the integer 4 differs from the float 4.0,
    // so this also checks that integers come back as JSON integers.
    let posts = client.table("posts").unwrap().get_all_valid();
    assert_eq!(
        posts,
        vec![
            row(json!({"id": "p1", "title": "Hello again", "views": 4, "published": false})),
            row(json!({"id": "p3", "title": "Big", "views": BIG, "published": true})),
            row(json!({"id": "p4", "title": "Huge", "views": MAX_SAFE, "published": true})),
            row(json!({"id": "p5", "title": "Negative", "views": -7, "published": false})),
        ]
    );
    assert!(posts.iter().all(|r| r["views"].is_i64()), "{posts:?}");
    assert!(!client.table("posts").unwrap().has("p2"));
    assert_eq!(
        client.table("authors").unwrap().get_all_valid(),
        vec![row(json!({"id": "a1", "name": "Ada", "bio": null}))]
    );
    assert_eq!(client.kv().get("theme").unwrap(), Some(json!("dark")));
    assert_eq!(client.kv().get("pageSize").unwrap(), Some(json!(20)));

    // Exactly one entry per live key: no stale p1 cells, nothing left of p2.
    assert_eq!(
        doc_keys(&client, "table:posts"),
        cell_keys(&[
            ("p1", POST_FIELDS),
            ("p3", POST_FIELDS),
            ("p4", POST_FIELDS),
            ("p5", POST_FIELDS),
        ])
    );
    assert_eq!(
        doc_keys(&client, "table:authors"),
        cell_keys(&[("a1", &["id", "name"])])
    );
    assert_eq!(doc_keys(&client, "kv"), ["pageSize", "theme"]);
}

#[tokio::test]
async fn rust_writes_js_reads() {
    let client = blog().in_memory().create().await.unwrap();
    let posts = client.table("posts").unwrap();
    // Write 1: three rows in one transaction. Rust stores numbers as floats, which go out
    // as float32 (1, BIG) or float64 (MAX_SAFE, below); JS must see plain numbers.
    posts
        .upsert_many([
            row(json!({"id": "p1", "title": "First", "views": 1, "published": false})),
            row(json!({"id": "p2", "title": "Doomed", "views": 2, "published": false})),
            row(json!({"id": "p3", "title": "Third", "views": BIG, "published": true})),
        ])
        .unwrap();
    let first = js_read(&encode(&client));
    // Write 2: overwrite all of p1. Write 3: delete p2.
    posts
        .upsert(row(json!({
            "id": "p1", "title": "First, edited", "views": MAX_SAFE, "published": true,
        })))
        .unwrap();
    assert!(posts.delete("p2").unwrap());
    // Writes 4 and 5: a KV value, set twice.
    client.kv().set("theme", json!("light")).unwrap();
    client.kv().set("theme", json!("dark")).unwrap();
    // Write 6: one cell of p3.
    posts
        .update("p3", row(json!({"title": "Third, edited"})))
        .unwrap();

    let js = js_read(&encode(&client));
    // `js_read` already failed if any key had two entries; here the sets of keys and values
    // must be exactly the live ones (no p2 cell, no stale p1 or theme entry).
    let table = &js["table:posts"];
    assert_eq!(
        vals(table),
        json!({
            "p1:id": "p1", "p1:title": "First, edited", "p1:views": MAX_SAFE,
            "p1:published": true,
            "p3:id": "p3", "p3:title": "Third, edited", "p3:views": BIG,
            "p3:published": true,
        })
    );
    assert_eq!(vals(&js["kv"]), json!({"theme": "dark"}));
    assert_js_types("table:posts", table);
    assert_js_types("kv", &js["kv"]);
    // The untouched authors table, if it shows up at all, holds nothing.
    assert!(js.get("table:authors").is_none_or(|a| a.is_empty()));

    // Timestamps follow write order, so every rewrite beats what it replaced on any peer:
    // each rewritten cell got a higher ts than its first version...
    let ts = |key: &str| table[key].ts;
    for key in ["p1:id", "p1:title", "p1:views", "p1:published", "p3:title"] {
        let was = first["table:posts"][key].ts;
        assert!(ts(key) > was, "{key}: ts {} after {was}", ts(key));
    }
    // ...and across writes: write 1 < write 2 < write 5 (KV) < write 6.
    let max = |keys: &[&str]| keys.iter().map(|k| ts(k)).fold(f64::MIN, f64::max);
    let min = |keys: &[&str]| keys.iter().map(|k| ts(k)).fold(f64::MAX, f64::min);
    let write1 = ["p3:id", "p3:views", "p3:published"];
    let write2 = ["p1:id", "p1:title", "p1:views", "p1:published"];
    let theme = js["kv"]["theme"].ts;
    assert!(max(&write1) < min(&write2), "{js:?}");
    assert!(max(&write2) < theme, "{js:?}");
    assert!(theme < ts("p3:title"), "{js:?}");
}

#[tokio::test]
async fn js_to_rust_to_js_round_trip() {
    let from_js = js_write(&json!({
        "guid": "blog",
        "tables": {"posts": [
            {"id": "p1", "title": "From JS", "views": 1, "published": false},
            {"id": "p2", "title": "Other", "views": 5, "published": true},
        ]},
        "kv": {"theme": "dark"},
    }));
    let before = js_read(&from_js);

    let client = blog().in_memory().create().await.unwrap();
    client.apply_update(&from_js, "js").unwrap();
    client
        .table("posts")
        .unwrap()
        .update("p1", row(json!({"title": "From Rust"})))
        .unwrap();
    client.kv().set("theme", json!("light")).unwrap();

    let after = js_read(&encode(&client));
    let (old, new) = (&before["table:posts"], &after["table:posts"]);
    // The Rust value won, and `js_read` saw one entry for the key: the JS one was deleted.
    assert_eq!(new["p1:title"].val, json!("From Rust"));
    assert_eq!(after["kv"]["theme"].val, json!("light"));
    // Rust stamped above what JS wrote (its clock adopts timestamps it sees), so every JS
    // peer agrees the Rust value is the newest.
    assert!(
        new["p1:title"].ts > old["p1:title"].ts,
        "{before:?} {after:?}"
    );
    assert!(after["kv"]["theme"].ts > before["kv"]["theme"].ts);
    // Every cell Rust did not touch is still JS's entry, unchanged.
    for (key, was) in old.iter().filter(|(k, _)| *k != "p1:title") {
        let now = &new[key];
        assert_eq!((&now.val, now.ts), (&was.val, was.ts), "{key}");
    }
    assert_eq!(new.len(), old.len());
    assert_js_types("table:posts", new);
}

#[tokio::test]
async fn concurrent_js_writers_converge_in_rust() {
    // Two JS peers that never synced write the same cell: merged, the array holds both
    // entries, and Rust must pick the higher `ts` and delete the loser for everyone.
    let spec = |title: &str| {
        json!({"guid": "blog", "tables": {"posts": [
            {"id": "p1", "title": title, "views": 1, "published": false},
        ]}})
    };
    let (a, b) = (js_write(&spec("from A")), js_write(&spec("from B")));
    let (ts_a, ts_b) = (
        js_read(&a)["table:posts"]["p1:title"].ts,
        js_read(&b)["table:posts"]["p1:title"].ts,
    );
    assert_ne!(ts_a, ts_b, "the two runs should not share a millisecond");
    let winner = if ts_a > ts_b { "from A" } else { "from B" };

    let client = blog().in_memory().create().await.unwrap();
    client.apply_update(&a, "js-a").unwrap();
    client.apply_update(&b, "js-b").unwrap();

    let p1 = client.table("posts").unwrap().get_all_valid();
    assert_eq!(p1.len(), 1);
    assert_eq!(p1[0]["title"], json!(winner));
    assert_eq!(
        doc_keys(&client, "table:posts"),
        cell_keys(&[("p1", POST_FIELDS)])
    );
    let js = js_read(&encode(&client));
    assert_eq!(js["table:posts"]["p1:title"].val, json!(winner));
}
