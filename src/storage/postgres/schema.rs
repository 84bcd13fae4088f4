//! The tables, created and migrated at startup. Every node runs the migration; an advisory
//! lock makes them take turns, and a version table says what is already there.
//!
//! - `epicenter_docs(doc, next_seq, folded)`: one row per doc (`folded`: the number the
//!   snapshot covers, so the log holds `next_seq - folded` updates). Writers lock it to number their
//!   updates, so a doc's sequence numbers are gap-free and visible in commit order: a node
//!   that has applied everything up to `n` catches up with `seq > n`.
//! - `epicenter_updates(doc, seq, data, node)`: the log.
//! - `epicenter_snapshots(doc, upto, data)`: the log up to `upto` folded into one update.
//! - `epicenter_mirrors(ws, definition)` and `epicenter_mirror_rows(ws, tbl, id, version)`:
//!   the definition each workspace's SQL mirror was built for, and the version of each
//!   mirrored row (see `mirror.rs`).

use tokio_postgres::Client;

/// Key of the advisory lock migrations take (any constant of ours).
const MIGRATION_LOCK: i64 = 0x4570_6963_656e_7431;

/// Each step brings the schema from its index to the next version.
const STEPS: &[&str] = &[
    "
    CREATE TABLE epicenter_docs (
        doc TEXT PRIMARY KEY,
        next_seq BIGINT NOT NULL DEFAULT 0);
    CREATE TABLE epicenter_updates (
        doc TEXT NOT NULL,
        seq BIGINT NOT NULL,
        data BYTEA NOT NULL,
        node TEXT NOT NULL,
        PRIMARY KEY (doc, seq));
    CREATE TABLE epicenter_snapshots (
        doc TEXT PRIMARY KEY,
        upto BIGINT NOT NULL,
        data BYTEA NOT NULL);
",
    "
    CREATE TABLE epicenter_mirrors (
        ws TEXT PRIMARY KEY,
        definition TEXT NOT NULL);
    CREATE TABLE epicenter_mirror_rows (
        ws TEXT NOT NULL,
        tbl TEXT NOT NULL,
        id TEXT NOT NULL,
        version BIGINT NOT NULL,
        PRIMARY KEY (ws, tbl, id));
",
    "
    ALTER TABLE epicenter_docs ADD COLUMN folded BIGINT NOT NULL DEFAULT 0;
    UPDATE epicenter_docs d SET folded = s.upto FROM epicenter_snapshots s WHERE s.doc = d.doc;
",
];

/// The schema version this code writes.
pub(super) const VERSION: i32 = STEPS.len() as i32;

/// Creates or migrates the tables; refuses a database a newer version made.
pub(super) async fn migrate(client: &mut Client) -> Result<(), String> {
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| e.to_string())?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS epicenter_schema (version INT NOT NULL)")
        .await
        .map_err(|e| e.to_string())?;
    let row = tx
        .query_opt("SELECT version FROM epicenter_schema", &[])
        .await
        .map_err(|e| e.to_string())?;
    let have: i32 = match row {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO epicenter_schema (version) VALUES (0)", &[])
                .await
                .map_err(|e| e.to_string())?;
            0
        }
    };
    if have > VERSION {
        return Err(format!(
            "the database has schema version {have}, newer than this server's {VERSION}"
        ));
    }
    for step in &STEPS[have as usize..] {
        tx.batch_execute(step).await.map_err(|e| e.to_string())?;
    }
    tx.execute("UPDATE epicenter_schema SET version = $1", &[&VERSION])
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}
