//! Workspace and storage benchmarks (results and targets in BENCHMARKS.md).
//!
//! `cargo bench --bench workspace`
//!
//! Like the example servers, the benchmarks use mimalloc as the global allocator (with
//! glibc's, reads that build many small rows spend a quarter of their time in malloc and
//! free). BENCHMARKS.md gives both.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use epicenter_server::storage::{SqliteOptions, SqliteStorage};
use epicenter_server::workspace::*;
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn definition() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("bench")
        .table(
            "posts",
            [
                ("id", id()),
                ("title", text()),
                ("views", integer()),
                ("draft", boolean()),
            ],
        )
        .build()
        .unwrap()
}

fn rows(n: usize, prefix: &str) -> Vec<Row> {
    (0..n)
        .map(|i| {
            json!({"id": format!("{prefix}{i}"), "title": format!("Post number {i}"), "views": i, "draft": i % 2 == 0})
                .as_object()
                .unwrap()
                .clone()
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn memory_client(rt: &tokio::runtime::Runtime) -> WorkspaceClient {
    rt.block_on(definition().in_memory().create()).unwrap()
}

fn no_compaction(dir: &Path) -> SqliteStorage {
    SqliteStorage::with_options(
        dir,
        SqliteOptions {
            compact_after_updates: u64::MAX,
            compact_after_bytes: u64::MAX,
            ..SqliteOptions::default()
        },
    )
}

/// A data dir whose log holds `n` single-row updates.
fn logged_updates(rt: &tokio::runtime::Runtime, n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let c = definition()
            .with_storage(no_compaction(dir.path()))
            .create()
            .await
            .unwrap();
        let posts = c.table("posts").unwrap();
        for (i, row) in rows(n, "p").into_iter().enumerate() {
            posts.upsert(row).unwrap();
            if i % 10_000 == 0 {
                c.flush().await.unwrap();
            }
        }
        c.destroy().await.unwrap();
    });
    dir
}

fn tables(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("table");
    g.sample_size(10);
    g.bench_function("upsert_many 10k rows (one transaction)", |b| {
        b.iter_batched(
            || (memory_client(&rt), rows(10_000, "p")),
            |(client, rows)| {
                client.table("posts").unwrap().upsert_many(rows).unwrap();
                client // dropped outside the measurement
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("upsert 10k rows one by one", |b| {
        b.iter_batched(
            || (memory_client(&rt), rows(10_000, "p")),
            |(client, rows)| {
                let posts = client.table("posts").unwrap();
                for row in rows {
                    posts.upsert(row).unwrap();
                }
                client
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("overwrite 10k existing rows (one transaction)", |b| {
        b.iter_batched(
            || {
                let client = memory_client(&rt);
                client
                    .table("posts")
                    .unwrap()
                    .upsert_many(rows(10_000, "p"))
                    .unwrap();
                (client, rows(10_000, "p"))
            },
            |(client, rows)| {
                client.table("posts").unwrap().upsert_many(rows).unwrap();
                client
            },
            BatchSize::PerIteration,
        )
    });
    let client = memory_client(&rt);
    let posts = client.table("posts").unwrap();
    posts.upsert_many(rows(10_000, "p")).unwrap();
    assert_eq!(posts.get_all_valid().len(), 10_000);
    // The caller owns (and frees) the rows: freeing them is not part of reading them.
    g.bench_function("get_all_valid over 10k rows", |b| {
        b.iter_with_large_drop(|| posts.get_all_valid())
    });
    g.bench_function("get one row of 10k", |b| b.iter(|| posts.get("p5000")));
    g.finish();
}

fn storage(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("sqlite");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));

    g.bench_function("load 100k logged updates", |b| {
        // Made here, so that filtering this benchmark out skips it.
        let dir = logged_updates(&rt, 100_000);
        // Open, replay and index; the client is destroyed (its storage released, so the
        // next load can open it) but freed outside the measurement, like the rows of the
        // table benchmarks: freeing a loaded doc is not part of loading it.
        b.iter_with_large_drop(|| {
            rt.block_on(async {
                let c = definition()
                    .with_storage(no_compaction(dir.path()))
                    .create()
                    .await
                    .unwrap();
                assert_eq!(c.table("posts").unwrap().count(), 100_000);
                c.destroy().await.unwrap();
                c
            })
        })
    });

    g.bench_function("compact 100k logged updates", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = logged_updates(&rt, 100_000);
                rt.block_on(async {
                    let c = definition()
                        .with_storage(no_compaction(dir.path()))
                        .create()
                        .await
                        .unwrap();
                    c.flush().await.unwrap();
                    let t = Instant::now();
                    c.compact().await.unwrap();
                    total += t.elapsed();
                    c.destroy().await.unwrap();
                });
            }
            total
        })
    });

    // Concurrent writers, each: upsert one row, wait until durable, repeat. Group commit
    // lets one fsync acknowledge everything queued at that moment.
    for writers in [16usize, 64] {
        g.bench_function(
            format!("10k durable upserts from {writers} concurrent writers"),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = tempfile::tempdir().unwrap();
                        total += rt.block_on(async {
                            let c = definition()
                                .with_storage(no_compaction(dir.path()))
                                .create()
                                .await
                                .unwrap();
                            let t = Instant::now();
                            let mut tasks = Vec::new();
                            for w in 0..writers {
                                let c = c.clone();
                                tasks.push(tokio::spawn(async move {
                                    let posts = c.table("posts").unwrap();
                                    for row in rows(10_000 / writers, &format!("w{w}-")) {
                                        posts.upsert(row).unwrap();
                                        c.flush().await.unwrap();
                                    }
                                }));
                            }
                            for t in tasks {
                                t.await.unwrap();
                            }
                            let elapsed = t.elapsed();
                            c.destroy().await.unwrap();
                            elapsed
                        });
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

/// The slowest of 2,000 single-row upserts into a 20k-row in-memory doc (the first one
/// after loading is where the memory provider's log used to be folded, inside the commit).
fn memory(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("memory");
    g.sample_size(10);
    g.bench_function("slowest of 2k upserts into a 20k-row doc", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let c = memory_client(&rt);
                let posts = c.table("posts").unwrap();
                posts.upsert_many(rows(20_000, "p")).unwrap();
                let mut slowest = Duration::ZERO;
                for row in rows(2_000, "q") {
                    let t = Instant::now();
                    posts.upsert(row).unwrap();
                    slowest = slowest.max(t.elapsed());
                }
                total += slowest;
                rt.block_on(c.destroy()).unwrap();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, tables, storage, memory);
criterion_main!(benches);
