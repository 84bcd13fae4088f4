//! Property: random concurrent edits on three docs, exchanged in random orders, converge
//! to the same rows, with exactly one array entry per live key on every doc.

use std::collections::HashMap;

use epicenter_server::workspace::*;
use proptest::prelude::*;
use serde_json::json;
use yrs::{Array, Out, ReadTxn, StateVector, Transact};

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        doc: usize,
        id: u8,
        title: u8,
    },
    Update {
        doc: usize,
        id: u8,
        views: u8,
    },
    Delete {
        doc: usize,
        id: u8,
    },
    SetKv {
        doc: usize,
        value: u8,
    },
    /// Sends what `to` is missing from `from`.
    Sync {
        from: usize,
        to: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let doc = 0..3usize;
    let id = 0..6u8;
    prop_oneof![
        (doc.clone(), id.clone(), any::<u8>()).prop_map(|(doc, id, title)| Op::Upsert {
            doc,
            id,
            title
        }),
        (doc.clone(), id.clone(), any::<u8>()).prop_map(|(doc, id, views)| Op::Update {
            doc,
            id,
            views
        }),
        (doc.clone(), id).prop_map(|(doc, id)| Op::Delete { doc, id }),
        (doc.clone(), any::<u8>()).prop_map(|(doc, value)| Op::SetKv { doc, value }),
        (doc.clone(), doc).prop_map(|(from, to)| Op::Sync { from, to }),
    ]
}

fn definition() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("conv")
        .table(
            "posts",
            [
                ("id", id()),
                ("title", text()),
                ("views", integer().default(0)),
            ],
        )
        .kv("n", integer().nullable())
        .build()
        .unwrap()
}

fn sync(from: &WorkspaceClient, to: &WorkspaceClient) {
    let sv: StateVector = to.doc().transact().state_vector();
    let update = from.doc().transact().encode_state_as_update_v1(&sv);
    to.apply_update(&update, "peer").unwrap();
}

/// Number of entries per key in a root array.
fn entries_per_key(client: &WorkspaceClient, name: &str) -> HashMap<String, usize> {
    let array = client.doc().get_or_insert_array(name);
    let txn = client.doc().transact();
    let mut counts = HashMap::new();
    for item in array.iter(&txn) {
        let Out::Any(yrs::Any::Map(m)) = item else {
            panic!("non-map entry in {name}")
        };
        let Some(yrs::Any::String(key)) = m.get("key") else {
            panic!("entry without key")
        };
        *counts.entry(key.to_string()).or_default() += 1;
    }
    counts
}

fn run(ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut docs = Vec::new();
        for _ in 0..3 {
            docs.push(definition().in_memory().create().await.unwrap());
        }
        for op in ops {
            match op {
                Op::Upsert { doc, id, title } => {
                    let row = json!({"id": format!("r{id}"), "title": format!("t{title}")});
                    docs[doc]
                        .table("posts")
                        .unwrap()
                        .upsert(row.as_object().unwrap().clone())
                        .unwrap();
                }
                Op::Update { doc, id, views } => {
                    let patch = json!({ "views": views });
                    // A missing row is NotFound, and a partial row (left by a delete
                    // concurrent with an update) cannot be completed by a patch: Invalid.
                    match docs[doc]
                        .table("posts")
                        .unwrap()
                        .update(&format!("r{id}"), patch.as_object().unwrap().clone())
                    {
                        Ok(_)
                        | Err(epicenter_server::WorkspaceError::NotFound { .. })
                        | Err(epicenter_server::WorkspaceError::Invalid { .. }) => {}
                        Err(e) => panic!("update failed: {e}"),
                    }
                }
                Op::Delete { doc, id } => {
                    docs[doc]
                        .table("posts")
                        .unwrap()
                        .delete(&format!("r{id}"))
                        .unwrap();
                }
                Op::SetKv { doc, value } => docs[doc].kv().set("n", json!(value)).unwrap(),
                Op::Sync { from, to } if from != to => sync(&docs[from], &docs[to]),
                Op::Sync { .. } => {}
            }
        }
        // Full exchange until every doc has every update (settling can add deletions).
        for _ in 0..4 {
            for a in 0..3 {
                for b in 0..3 {
                    if a != b {
                        sync(&docs[a], &docs[b]);
                    }
                }
            }
        }
        let rows0 = docs[0].table("posts").unwrap().get_all_valid();
        let kv0 = docs[0].kv().get("n").unwrap();
        for d in &docs[1..] {
            assert_eq!(d.table("posts").unwrap().get_all_valid(), rows0);
            assert_eq!(d.kv().get("n").unwrap(), kv0);
            // A delete concurrent with an update leaves a partial (invalid) row, as with any
            // cell-level LWW store; it must still be the same everywhere.
            assert_eq!(
                d.table("posts").unwrap().get_all_invalid(),
                docs[0].table("posts").unwrap().get_all_invalid()
            );
        }
        for d in &docs {
            for name in ["table:posts", "kv"] {
                for (key, n) in entries_per_key(d, name) {
                    assert_eq!(n, 1, "{name}: key {key} has {n} entries");
                }
            }
            // Every live cell belongs to a listed row.
            let live = entries_per_key(d, "table:posts").len();
            let cells: usize = rows0.iter().map(|r| r.len()).sum();
            assert!(
                live >= cells,
                "{live} live keys for {cells} cells of valid rows"
            );
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn three_docs_converge(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

#[test]
fn concurrent_writes_of_one_cell_converge() {
    // All three write the same cell before any exchange: a three-way conflict.
    run(vec![
        Op::Upsert {
            doc: 0,
            id: 1,
            title: 1,
        },
        Op::Upsert {
            doc: 1,
            id: 1,
            title: 2,
        },
        Op::Upsert {
            doc: 2,
            id: 1,
            title: 3,
        },
        Op::Delete { doc: 2, id: 1 },
        Op::Upsert {
            doc: 2,
            id: 1,
            title: 4,
        },
    ]);
}
