//! The SQL mirror in Postgres: workspace tables as typed tables in a schema named after
//! the workspace, kept in step with the doc; a write computed from a doc that lacks newer
//! updates cannot overwrite a newer row; opening repairs the mirror; a new definition
//! rebuilds it; and with several nodes writing the same rows at once it converges to the
//! doc's last-write-wins state. Skipped when PostgreSQL (or, for the last, Redis) is not
//! installed.
#![cfg(feature = "postgres")]

mod support;

use epicenter_server::storage::{PostgresOptions, PostgresStorage};
use epicenter_server::workspace::{
    boolean, id, integer, json as json_field, real, tags, text, WorkspaceClient,
    WorkspaceDefinition,
};
use serde_json::{json, Value};
use support::services::Postgres;
use tokio_postgres::NoTls;

#[cfg(feature = "redis")]
const GUARD: std::time::Duration = std::time::Duration::from_secs(30);

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table(
            "posts",
            [
                ("id", id()),
                ("title", text()),
                ("views", integer()),
                ("score", real()),
                ("draft", boolean()),
                ("labels", tags()),
                ("meta", json_field()),
            ],
        )
        .build()
        .unwrap()
}

async fn open(pg: &Postgres, node: &str, def: WorkspaceDefinition) -> WorkspaceClient {
    let options = PostgresOptions {
        node: node.into(),
        ..PostgresOptions::default()
    };
    let storage = PostgresStorage::connect_with(&pg.url(), options)
        .await
        .unwrap();
    def.with_storage(storage).create().await.unwrap()
}

async fn sql(pg: &Postgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The mirror's rows of `blog.posts` as JSON, by id.
async fn mirrored(db: &tokio_postgres::Client) -> Vec<Value> {
    db.query("SELECT to_jsonb(p) FROM blog.posts p ORDER BY id", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

fn post(id: &str, title: &str) -> Value {
    json!({"id": id, "title": title, "views": 3, "score": 1.5, "draft": false,
           "labels": ["a"], "meta": {"k": 1}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_mirrored_with_typed_columns() {
    let Some(pg) = Postgres::start() else { return };
    let client = open(&pg, "a", blog()).await;
    let posts = client.table("posts").unwrap();
    posts.upsert(post("1", "first")).unwrap();
    posts.upsert(post("2", "second")).unwrap();
    posts.update("1", json!({"views": 42})).unwrap();
    posts.delete("2").unwrap();
    client.flush().await.unwrap();

    let db = sql(&pg).await;
    let types: Vec<(String, String)> = db
        .query(
            "SELECT column_name::TEXT, data_type::TEXT FROM information_schema.columns
             WHERE table_schema = 'blog' AND table_name = 'posts' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let types: Vec<(&str, &str)> = types.iter().map(|(a, b)| (&**a, &**b)).collect();
    assert_eq!(
        types,
        [
            ("id", "text"),
            ("title", "text"),
            ("views", "bigint"),
            ("score", "double precision"),
            ("draft", "boolean"),
            ("labels", "jsonb"),
            ("meta", "jsonb"),
        ]
    );
    let mut want = post("1", "first");
    want["views"] = json!(42);
    assert_eq!(mirrored(&db).await, [want]);
    // Typed: SQL can compute on the columns.
    let views: i64 = db
        .query_one("SELECT sum(views)::BIGINT FROM blog.posts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(views, 42);
    client.destroy().await.unwrap();
}

/// Two nodes without a bus: the second writes a row from a doc that holds more of the log
/// than the first's; the first's later write of that row was computed without the
/// second's updates, so it must not overwrite it. Reopening rebuilds the mirror from the
/// whole log, where the later write (by its timestamp) wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_a_doc_that_lacks_newer_updates_does_not_land() {
    let Some(pg) = Postgres::start() else { return };
    let db = sql(&pg).await;
    let a = open(&pg, "a", blog()).await;
    a.table("posts").unwrap().upsert(post("r", "a1")).unwrap();
    a.flush().await.unwrap();

    let b = open(&pg, "b", blog()).await;
    let b_posts = b.table("posts").unwrap();
    b_posts.upsert(post("x", "b1")).unwrap();
    b.flush().await.unwrap();
    b_posts.update("r", json!({"title": "b2"})).unwrap();
    b.flush().await.unwrap();
    assert_eq!(mirrored(&db).await[0]["title"], "b2");

    // Node a never heard of b's updates: its doc lacks them.
    a.table("posts")
        .unwrap()
        .update("r", json!({"title": "a3"}))
        .unwrap();
    a.flush().await.unwrap();
    let rows = mirrored(&db).await;
    assert_eq!(rows[0]["title"], "b2", "a stale write replaced a newer row");
    assert_eq!(rows.len(), 2);
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();

    // Reopened: the whole log, where a3 is the last write of the title.
    let c = open(&pg, "c", blog()).await;
    c.flush().await.unwrap();
    assert_eq!(mirrored(&db).await[0]["title"], "a3");
    c.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_repairs_the_mirror_and_a_new_definition_rebuilds_it() {
    let Some(pg) = Postgres::start() else { return };
    let db = sql(&pg).await;
    let a = open(&pg, "a", blog()).await;
    a.table("posts").unwrap().upsert(post("1", "one")).unwrap();
    a.destroy().await.unwrap();

    // Someone edits the mirror by hand: the next open puts the doc's rows back.
    db.batch_execute(
        "DELETE FROM blog.posts; INSERT INTO blog.posts (id, title) VALUES ('junk', 'x');",
    )
    .await
    .unwrap();
    let a = open(&pg, "a", blog()).await;
    a.flush().await.unwrap();
    let rows = mirrored(&db).await;
    assert_eq!(rows, [post("1", "one")]);
    a.destroy().await.unwrap();

    // A new definition: the table is rebuilt with its columns.
    let narrow = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .table("tags", [("id", id()), ("name", text())])
        .build()
        .unwrap();
    let a = open(&pg, "a", narrow).await;
    a.table("tags")
        .unwrap()
        .upsert(json!({"id": "t", "name": "rust"}))
        .unwrap();
    a.flush().await.unwrap();
    assert_eq!(mirrored(&db).await, [json!({"id": "1", "title": "one"})]);
    let name: String = db
        .query_one("SELECT name FROM blog.tags WHERE id = 't'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "rust");
    a.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_postgres_would_truncate_are_refused() {
    let Some(pg) = Postgres::start() else { return };
    let long = "w".repeat(64);
    let def = WorkspaceDefinition::builder(long.as_str())
        .table("posts", [("id", id())])
        .build()
        .unwrap();
    let storage = PostgresStorage::connect(&pg.url()).await.unwrap();
    let err = def.with_storage(storage).create().await.unwrap_err();
    assert!(
        err.to_string().contains("longer than Postgres names"),
        "{err}"
    );
}

/// Several nodes over Redis write the same rows at once, different cells and the same
/// cells; once their docs agree, the mirror holds exactly the docs' rows.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_several_nodes_converge_in_the_mirror() {
    use epicenter_server::server::{create_server, ServerOptions};
    use epicenter_server::sync::RedisBus;
    use support::services::Redis;

    let (Some(pg), Some(redis)) = (Postgres::start(), Redis::start()) else {
        return;
    };
    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        let client = open(&pg, name, blog()).await;
        let bus = RedisBus::new(redis.url(), name)
            .catch_up_interval(std::time::Duration::from_millis(200));
        let server =
            create_server([client], ServerOptions::default().port(0).redis_bus(bus)).unwrap();
        server.start().await.unwrap();
        servers.push(server);
    }
    let clients: Vec<WorkspaceClient> = servers
        .iter()
        .map(|s| s.client("blog").unwrap().clone())
        .collect();
    let mut writers = Vec::new();
    for (n, client) in clients.iter().enumerate() {
        let client = client.clone();
        writers.push(tokio::task::spawn_blocking(move || {
            let posts = client.table("posts").unwrap();
            for i in 0..60 {
                let id = format!("r{}", i % 7);
                // Errors (updating a row another node just deleted) are fine here.
                let _ = match i % 3 {
                    0 => posts
                        .update(&id, json!({"title": format!("n{n}-{i}")}))
                        .map(|_| true),
                    1 => posts
                        .update(&id, json!({"views": n * 1000 + i}))
                        .map(|_| true),
                    _ => posts.upsert(post(&id, &format!("whole-n{n}-{i}"))),
                };
                if i % 20 == 19 && n == 0 {
                    posts.delete(&format!("r{}", i % 7)).unwrap();
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for c in &clients {
        c.flush().await.unwrap();
    }
    let db = sql(&pg).await;
    let rows_of = |c: &WorkspaceClient| -> Vec<Value> {
        let mut rows: Vec<Value> = c
            .table("posts")
            .unwrap()
            .get_all_valid()
            .into_iter()
            .map(Value::Object)
            .collect();
        rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        rows
    };
    let converged = tokio::time::timeout(GUARD, async {
        loop {
            let want = rows_of(&clients[0]);
            if clients.iter().all(|c| rows_of(c) == want) {
                let got = mirrored(&db).await;
                if normalise(&got) == normalise(&want) {
                    return want;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let want = converged.unwrap_or_else(|_| {
        panic!(
            "the mirror never matched the docs:\nmirror {:?}\ndoc {:?}",
            futures_util::FutureExt::now_or_never(mirrored(&db)),
            rows_of(&clients[0])
        )
    });
    assert!(!want.is_empty());
    for s in servers {
        s.destroy().await.unwrap();
    }
}

#[cfg(feature = "redis")]
/// Rows as the mirror shows them: every column present (absent ones null), numbers
/// compared as numbers.
fn normalise(rows: &[Value]) -> Vec<Value> {
    let fields = ["id", "title", "views", "score", "draft", "labels", "meta"];
    rows.iter()
        .map(|r| {
            let mut out = serde_json::Map::new();
            for f in fields {
                let v = match r.get(f) {
                    Some(Value::Number(n)) => json!(n.as_f64()),
                    Some(v) => v.clone(),
                    None => Value::Null,
                };
                out.insert(f.into(), v);
            }
            Value::Object(out)
        })
        .collect()
}

/// Writes queued while the previous commit waits (here on a lock held from outside) go in
/// a later batch, computed from a doc that lacked nothing but this node's own earlier
/// updates: their rows must still replace the earlier batch's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_batch_queued_behind_a_slow_commit_land() {
    let Some(pg) = Postgres::start() else { return };
    let client = open(&pg, "a", blog()).await;
    let posts = client.table("posts").unwrap();
    posts.upsert(post("0", "zero")).unwrap();
    client.flush().await.unwrap();

    let mut db = sql(&pg).await;
    let lock = db.transaction().await.unwrap();
    lock.execute(
        "SELECT * FROM epicenter_docs WHERE doc = 'blog' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    posts.upsert(post("1", "one")).unwrap();
    // The writer's commit of row 1 now waits for the lock.
    let watcher = sql(&pg).await;
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting > 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the commit never waited for the lock");
    posts.update("1", json!({"views": 42})).unwrap();
    lock.commit().await.unwrap();
    client.flush().await.unwrap();

    let rows = mirrored(&watcher).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[1]["views"], 42,
        "the later batch's row was refused: {rows:?}"
    );
    client.destroy().await.unwrap();
}
