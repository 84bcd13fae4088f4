//! The SQL mirror in Postgres: each workspace table as a real table with typed columns, in
//! a schema named after the workspace (`SELECT * FROM blog.posts`). It holds the valid rows.
//!
//! Several nodes write it, each from its own copy of the doc, which may lack updates other
//! nodes committed a moment ago. So every row write carries a version: the number through
//! which the writing node's doc held every stored update (its "through"). A write lands only
//! if no write with a higher version did (`epicenter_mirror_rows` keeps each row's version,
//! deleted rows included). Why that converges: a row's state depends only on the updates
//! that touched it; the bus applies other nodes' updates in number order, so a node applying
//! the last update `m` that touched a row holds every update up to `m` and writes the row,
//! right, with a version of at least `m`. A write with a lower version may be stale but can
//! no longer land. The node that wrote `m` itself writes the row in the same transaction as
//! the update; alone (no other node has the doc open) its doc holds everything that touched
//! the row, and its own writes come in order.
//!
//! Opening a workspace rewrites the whole mirror from the loaded doc (version: the last
//! update loaded), which also repairs anything a crash of every node left behind. A node
//! that opens the workspace with a different definition rebuilds its tables. The mirror
//! never holds the log back: a write the database refuses for its data (a value out of a
//! column's range, a table someone dropped) is logged and skipped; the log still commits.

use std::collections::{BTreeMap, HashSet};

use deadpool_postgres::Transaction as Tx;
use serde_json::Value;
use tokio_postgres::Client;

use crate::schema::{FieldType, Row, TableDefinition, WorkspaceDefinition};
use crate::storage::RowChange;

/// Postgres truncates longer identifiers (63 bytes), which could make two names one.
const MAX_IDENT: usize = 63;

/// Columns every Postgres table has already.
const SYSTEM_COLUMNS: &[&str] = &["tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"];

/// Quotes an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn column_type(kind: &FieldType) -> &'static str {
    match kind {
        FieldType::Id => "TEXT PRIMARY KEY",
        FieldType::Integer => "BIGINT",
        FieldType::Real => "DOUBLE PRECISION",
        FieldType::Boolean => "BOOLEAN",
        FieldType::Tags { .. } | FieldType::Json { .. } => "JSONB",
        FieldType::Text | FieldType::Date | FieldType::Select { .. } => "TEXT",
    }
}

/// A row's value as its column takes it from `jsonb_populate_recordset` (integers are
/// floats in the doc).
fn column_value(kind: &FieldType, value: Option<&Value>) -> Value {
    match (kind, value) {
        (_, None) => Value::Null,
        (FieldType::Integer, Some(Value::Number(n))) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Value::from(f as i64),
            _ => Value::Number(n.clone()),
        },
        (_, Some(v)) => v.clone(),
    }
}

/// What the writer does to the mirror, in order.
pub(super) enum MirrorOp {
    /// A row, and the version of the doc it was computed from.
    Change((u64, RowChange)),
    Reset(u64, Vec<(String, Vec<Row>)>),
}

struct MirrorTable {
    def: TableDefinition,
    upsert: String,
    delete: String,
    /// Deletes rows a reset's doc lacks (`$1` ws, `$2` table, `$3` version, `$4` ids),
    /// unless a newer write put them there.
    delete_others: String,
}

/// Why a mirror cannot be prepared.
pub(super) enum Refusal {
    /// The definition cannot be mirrored (a name Postgres cannot take, a table that is
    /// not the mirror's): no retry helps.
    Definition(String),
    /// The database failed.
    Database(String),
}

impl Refusal {
    fn database(e: tokio_postgres::Error) -> Refusal {
        Refusal::Database(super::describe(&e))
    }
}

pub(super) struct Mirror {
    ws: String,
    tables: Vec<MirrorTable>,
}

impl Mirror {
    /// Creates the workspace's schema and tables, or rebuilds them when the stored
    /// definition differs, under an advisory lock (nodes opening it at once take turns).
    pub async fn prepare(
        client: &mut Client,
        def: &WorkspaceDefinition,
    ) -> Result<Mirror, Refusal> {
        def.check()
            .map_err(|e| Refusal::Definition(format!("the definition cannot be mirrored: {e}")))?;
        let long = std::iter::once(def.id.as_str())
            .chain(def.tables.iter().map(|t| t.name.as_str()))
            .chain(
                def.tables
                    .iter()
                    .flat_map(|t| t.fields.iter().map(|f| f.name.as_str())),
            )
            .find(|n| n.len() > MAX_IDENT);
        if let Some(name) = long {
            return Err(Refusal::Definition(format!(
                "`{name}` is longer than Postgres names may be ({MAX_IDENT} bytes); \
                 it cannot be mirrored"
            )));
        }
        let system = def
            .tables
            .iter()
            .flat_map(|t| t.fields.iter().map(move |f| (t, f)))
            .find(|(_, f)| SYSTEM_COLUMNS.contains(&f.name.as_str()));
        if let Some((table, field)) = system {
            return Err(Refusal::Definition(format!(
                "field `{}` of table `{}` is named like a Postgres system column, which a \
                 table cannot have; rename it or set PostgresOptions::mirror_tables to false",
                field.name, table.name
            )));
        }
        let ws = def.id.clone();
        let schema = ident(&ws);
        let wanted = def.to_json();
        let tx = client.transaction().await.map_err(Refusal::database)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 11))",
            &[&ws],
        )
        .await
        .map_err(Refusal::database)?;
        let stored: Option<String> = tx
            .query_opt(
                "SELECT definition FROM epicenter_mirrors WHERE ws = $1",
                &[&ws],
            )
            .await
            .map_err(Refusal::database)?
            .map(|r| r.get(0));
        // Our own tables live in the current schema; a mirror there could take their
        // names. System schemas are not ours to write.
        let current: Option<String> = tx
            .query_one("SELECT current_schema()::TEXT", &[])
            .await
            .map_err(Refusal::database)?
            .get(0);
        if current.as_deref() == Some(ws.as_str())
            || ws.starts_with("pg_")
            || ws == "information_schema"
        {
            return Err(Refusal::Definition(format!(
                "schema `{ws}` is not free for a mirror (it holds the server's own or the \
                 system's tables): give the workspace another id, or set \
                 PostgresOptions::mirror_tables to false"
            )));
        }
        // Only tables the mirror made (those of the stored definition) are ever dropped;
        // a table of the same name made by anyone else is left alone, and refused.
        let old = stored
            .as_deref()
            .and_then(|s| WorkspaceDefinition::from_json(s).ok());
        let ours = |name: &str| old.iter().flat_map(|d| &d.tables).any(|t| t.name == name);
        for table in &def.tables {
            let qualified = format!("{schema}.{}", ident(&table.name));
            let exists: bool = tx
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
                .await
                .map_err(Refusal::database)?
                .get(0);
            if exists && !ours(&table.name) {
                return Err(Refusal::Definition(format!(
                    "table {qualified} exists and was not made by the mirror; it is left \
                     alone: drop or rename it, or set PostgresOptions::mirror_tables to false"
                )));
            }
        }
        let mut ddl = format!("CREATE SCHEMA IF NOT EXISTS {schema};");
        if stored.as_deref() != Some(wanted.as_str()) {
            for table in old.iter().flat_map(|d| &d.tables) {
                ddl += &format!("DROP TABLE IF EXISTS {schema}.{};", ident(&table.name));
            }
            tx.execute("DELETE FROM epicenter_mirror_rows WHERE ws = $1", &[&ws])
                .await
                .map_err(Refusal::database)?;
            tx.execute(
                "INSERT INTO epicenter_mirrors (ws, definition) VALUES ($1, $2)
                 ON CONFLICT (ws) DO UPDATE SET definition = $2",
                &[&ws, &wanted],
            )
            .await
            .map_err(Refusal::database)?;
        }
        let mut tables = Vec::new();
        for table in &def.tables {
            let name = format!("{schema}.{}", ident(&table.name));
            let columns: Vec<String> = table
                .fields
                .iter()
                .map(|f| format!("{} {}", ident(&f.name), column_type(&f.spec.kind)))
                .collect();
            ddl += &format!(
                "CREATE TABLE IF NOT EXISTS {name} ({});",
                columns.join(", ")
            );
            let id = ident(table.id_field());
            let set: Vec<String> = table
                .fields
                .iter()
                .filter(|f| f.spec.kind != FieldType::Id)
                .map(|f| format!("{0} = EXCLUDED.{0}", ident(&f.name)))
                .collect();
            let on_conflict = if set.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", set.join(", "))
            };
            tables.push(MirrorTable {
                upsert: format!(
                    "INSERT INTO {name} SELECT * FROM jsonb_populate_recordset(NULL::{name}, $1)
                     ON CONFLICT ({id}) {on_conflict}"
                ),
                delete: format!("DELETE FROM {name} WHERE {id} = ANY($1)"),
                delete_others: format!(
                    "DELETE FROM {name} t WHERE NOT (t.{id} = ANY($4)) AND NOT EXISTS (
                         SELECT 1 FROM epicenter_mirror_rows m
                         WHERE m.ws = $1 AND m.tbl = $2 AND m.id = t.{id} AND m.version > $3)"
                ),
                def: table.clone(),
            });
        }
        tx.batch_execute(&ddl).await.map_err(Refusal::database)?;
        tx.commit().await.map_err(Refusal::database)?;
        Ok(Mirror { ws, tables })
    }

    /// Applies `ops` in `tx`, in a savepoint: a write the database refuses for its data is
    /// logged and dropped, and the caller's transaction (the log) goes on. Errors that a
    /// retry may cure (the connection, a deadlock) fail the whole transaction; the caller
    /// keeps `ops` for the retry.
    pub async fn write(&self, tx: &mut Tx<'_>, ops: &[MirrorOp]) -> Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.try_write(tx, ops).await? {
            return Ok(());
        }
        // Something in there is refused: one row at a time, so only that stays out.
        for unit in self.one_by_one(ops) {
            self.try_write(tx, std::slice::from_ref(&unit)).await?;
        }
        Ok(())
    }

    /// `ops` as units of one row each: a reset becomes its deletions (a reset with no rows)
    /// followed by each of its rows.
    fn one_by_one(&self, ops: &[MirrorOp]) -> Vec<MirrorOp> {
        let mut out = Vec::new();
        for op in ops {
            match op {
                MirrorOp::Change((version, change)) => {
                    out.push(MirrorOp::Change((*version, change.clone())))
                }
                MirrorOp::Reset(version, tables) => {
                    let empty = tables
                        .iter()
                        .map(|(t, _)| (t.clone(), Vec::new()))
                        .collect();
                    out.push(MirrorOp::Reset(*version, empty));
                    for (name, rows) in tables {
                        let Some(table) = self.tables.iter().find(|t| &t.def.name == name) else {
                            continue;
                        };
                        let id_field = table.def.id_field();
                        for row in rows {
                            let Some(id) = row.get(id_field).and_then(Value::as_str) else {
                                continue;
                            };
                            let change = RowChange {
                                table: name.clone(),
                                id: id.to_string(),
                                row: Some(row.clone()),
                            };
                            out.push(MirrorOp::Change((*version, change)));
                        }
                    }
                }
            }
        }
        out
    }

    /// Writes `ops` in a savepoint. Ok(false) when the database refused their data (rolled
    /// back and logged); errors a retry may cure are returned.
    async fn try_write(&self, tx: &mut Tx<'_>, ops: &[MirrorOp]) -> Result<bool, String> {
        let sp = tx.savepoint("mirror").await.map_err(|e| e.to_string())?;
        match self.write_ops(&sp, ops).await {
            Ok(()) => sp.commit().await.map(|_| true).map_err(|e| e.to_string()),
            Err(e) if is_data_error(&e) => {
                let e = super::describe(&e);
                tracing::error!(workspace = %self.ws, error = %e,
                    "the SQL mirror refused a row; it is left out (the doc keeps it)");
                sp.rollback()
                    .await
                    .map(|_| false)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(super::describe(&e)),
        }
    }

    async fn write_ops(&self, tx: &Tx<'_>, ops: &[MirrorOp]) -> Result<(), tokio_postgres::Error> {
        let mut changes: Changes = BTreeMap::new();
        for op in ops {
            match op {
                MirrorOp::Change((version, change)) => {
                    let key = (change.table.as_str(), change.id.as_str());
                    changes.insert(key, (*version, change));
                }
                MirrorOp::Reset(version, tables) => {
                    self.write_changes(tx, std::mem::take(&mut changes)).await?;
                    self.reset(tx, *version, tables).await?;
                }
            }
        }
        self.write_changes(tx, changes).await
    }

    /// Writes the latest change of each row (sorted, so nodes lock rows in one order).
    async fn write_changes(
        &self,
        tx: &Tx<'_>,
        changes: Changes<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        let mut by_table: BTreeMap<&str, Vec<(u64, &RowChange)>> = BTreeMap::new();
        for ((table, _), change) in changes {
            by_table.entry(table).or_default().push(change);
        }
        for (name, changes) in by_table {
            let Some(table) = self.tables.iter().find(|t| t.def.name == name) else {
                continue;
            };
            let ids: Vec<&str> = changes.iter().map(|(_, c)| c.id.as_str()).collect();
            let versions: Vec<i64> = changes.iter().map(|(v, _)| *v as i64).collect();
            let won: HashSet<String> = tx
                .query(
                    &tx.prepare_cached(
                        "INSERT INTO epicenter_mirror_rows (ws, tbl, id, version)
                     SELECT $1, $2, i, v FROM UNNEST($3::TEXT[], $4::BIGINT[]) AS t(i, v)
                     ON CONFLICT (ws, tbl, id) DO UPDATE SET version = EXCLUDED.version
                     WHERE epicenter_mirror_rows.version <= EXCLUDED.version
                     RETURNING id",
                    )
                    .await?,
                    &[&self.ws, &name, &ids, &versions],
                )
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            let mut rows = Vec::new();
            let mut gone = Vec::new();
            for (_, change) in changes.iter().filter(|(_, c)| won.contains(&c.id)) {
                match &change.row {
                    Some(row) => rows.push(row),
                    None => gone.push(change.id.as_str()),
                }
            }
            table.put(tx, &rows).await?;
            if !gone.is_empty() {
                tx.execute(&tx.prepare_cached(&table.delete).await?, &[&gone])
                    .await?;
            }
        }
        Ok(())
    }

    /// Rewrites every table from `tables` (the whole doc at `version`): its rows are put,
    /// and rows it lacks are deleted, each unless a write with a higher version landed.
    async fn reset(
        &self,
        tx: &Tx<'_>,
        version: u64,
        tables: &[(String, Vec<Row>)],
    ) -> Result<(), tokio_postgres::Error> {
        for (name, rows) in tables {
            let Some(table) = self.tables.iter().find(|t| &t.def.name == name) else {
                continue;
            };
            let id_field = table.def.id_field();
            let owned: Vec<RowChange> = rows
                .iter()
                .filter_map(|r| {
                    Some(RowChange {
                        table: name.clone(),
                        id: r.get(id_field)?.as_str()?.to_string(),
                        row: Some(r.clone()),
                    })
                })
                .collect();
            let changes: Changes = owned
                .iter()
                .map(|c| ((c.table.as_str(), c.id.as_str()), (version, c)))
                .collect();
            let ids: Vec<&str> = owned.iter().map(|c| c.id.as_str()).collect();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&self.ws, name, &(version as i64), &ids];
            tx.execute(&tx.prepare_cached(&table.delete_others).await?, &params)
                .await?;
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE epicenter_mirror_rows SET version = $3
                 WHERE ws = $1 AND tbl = $2 AND version <= $3 AND NOT (id = ANY($4))",
                )
                .await?,
                &params,
            )
            .await?;
            self.write_changes(tx, changes).await?;
        }
        Ok(())
    }
}

/// The latest change of each row, by table and id (the order rows are locked in).
type Changes<'a> = BTreeMap<(&'a str, &'a str), (u64, &'a RowChange)>;

impl MirrorTable {
    async fn put(&self, tx: &Tx<'_>, rows: &[&Row]) -> Result<(), tokio_postgres::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let json: Vec<Value> = rows
            .iter()
            .map(|row| {
                let cells = self
                    .def
                    .fields
                    .iter()
                    .map(|f| (f.name.clone(), column_value(&f.spec.kind, row.get(&f.name))))
                    .collect();
                Value::Object(cells)
            })
            .collect();
        tx.execute(
            &tx.prepare_cached(&self.upsert).await?,
            &[&Value::Array(json)],
        )
        .await?;
        Ok(())
    }
}

/// Whether the database refused the data itself (SQLSTATE classes 22: data exception,
/// 23: integrity, 42: a table or column that is not there, 54: a limit such as an id too
/// long for an index), which no retry cures.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        ["22", "23", "42", "54"]
            .iter()
            .any(|class| c.code().starts_with(class))
    })
}
