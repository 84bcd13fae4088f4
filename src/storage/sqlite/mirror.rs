//! The SQL mirror: each workspace table as a real SQL table, one column per field.
//!
//! It holds the valid rows only (what `get_all_valid` returns). It is filled whole when its
//! tables are (re)created for a new definition, and otherwise kept in step row by row, in the
//! same transactions as the log entries that changed those rows, so it cannot drift.

use std::path::Path;

use rusqlite::{params_from_iter, Connection, OptionalExtension, Transaction};
use serde_json::Value;

use crate::error::StorageError;
use crate::schema::{FieldType, Row, TableDefinition, WorkspaceDefinition};
use crate::storage::RowChange;

/// Quotes an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn column_type(kind: &FieldType) -> &'static str {
    match kind {
        FieldType::Id => "TEXT PRIMARY KEY",
        FieldType::Integer | FieldType::Boolean => "INTEGER",
        FieldType::Real => "REAL",
        _ => "TEXT",
    }
}

fn sql_value(kind: &FieldType, value: Option<&Value>) -> rusqlite::types::Value {
    use rusqlite::types::Value as Sql;
    match value {
        None | Some(Value::Null) => Sql::Null,
        Some(Value::Bool(b)) => Sql::Integer(*b as i64),
        Some(Value::Number(n)) => match (kind, n.as_i64()) {
            (FieldType::Integer, Some(i)) => Sql::Integer(i),
            _ => Sql::Real(n.as_f64().unwrap_or(0.0)),
        },
        Some(Value::String(s)) => Sql::Text(s.clone()),
        Some(other) => Sql::Text(other.to_string()),
    }
}

struct MirrorTable {
    def: TableDefinition,
    upsert: String,
    delete: String,
}

pub(super) struct Mirror {
    tables: Vec<MirrorTable>,
    /// The tables were just (re)created and need filling.
    pub fresh: bool,
}

impl Mirror {
    /// Creates the mirror tables, dropping those of an older definition first.
    pub fn prepare(
        conn: &Connection,
        path: &Path,
        def: &WorkspaceDefinition,
    ) -> Result<Mirror, StorageError> {
        let err = super::sql_err(path);
        // Built definitions are checked already; one put together by hand (its fields are
        // public) is checked here, so a name SQL confuses with another table (one of ours
        // included: SQL folds letter case) never reaches a DROP TABLE.
        def.check().map_err(|e| StorageError::Damaged {
            path: path.display().to_string(),
            detail: format!("the definition cannot be mirrored: {e}"),
        })?;
        let wanted = def.to_json();
        let stored: Option<String> = conn
            .query_row(
                "SELECT value FROM _epicenter_meta WHERE key = 'definition'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?;
        let fresh = stored.as_deref() != Some(wanted.as_str());
        if fresh {
            if let Some(old) = stored.and_then(|s| WorkspaceDefinition::from_json(&s).ok()) {
                for table in &old.tables {
                    conn.execute_batch(&format!("DROP TABLE IF EXISTS {};", ident(&table.name)))
                        .map_err(&err)?;
                }
            }
            for table in &def.tables {
                conn.execute_batch(&format!("DROP TABLE IF EXISTS {};", ident(&table.name)))
                    .map_err(&err)?;
            }
            conn.execute(
                "INSERT OR REPLACE INTO _epicenter_meta (key, value) VALUES ('definition', ?1)",
                [&wanted],
            )
            .map_err(&err)?;
        }
        let mut tables = Vec::new();
        for table in &def.tables {
            let columns: Vec<String> = table
                .fields
                .iter()
                .map(|f| format!("{} {}", ident(&f.name), column_type(&f.spec.kind)))
                .collect();
            conn.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {} ({});",
                ident(&table.name),
                columns.join(", ")
            ))
            .map_err(&err)?;
            let names: Vec<String> = table.fields.iter().map(|f| ident(&f.name)).collect();
            let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
            tables.push(MirrorTable {
                upsert: format!(
                    "INSERT OR REPLACE INTO {} ({}) VALUES ({})",
                    ident(&table.name),
                    names.join(", "),
                    marks.join(", ")
                ),
                delete: format!(
                    "DELETE FROM {} WHERE {} = ?1",
                    ident(&table.name),
                    ident(table.id_field())
                ),
                def: table.clone(),
            });
        }
        Ok(Mirror { tables, fresh })
    }

    fn table(&self, name: &str) -> Option<&MirrorTable> {
        self.tables.iter().find(|t| t.def.name == name)
    }

    fn put(tx: &Transaction, table: &MirrorTable, row: &Row) -> rusqlite::Result<()> {
        let values = table
            .def
            .fields
            .iter()
            .map(|f| sql_value(&f.spec.kind, row.get(&f.name)));
        tx.prepare_cached(&table.upsert)?
            .execute(params_from_iter(values))?;
        Ok(())
    }

    /// Applies row changes.
    pub fn apply(&self, tx: &Transaction, changes: &[RowChange]) -> rusqlite::Result<()> {
        for change in changes {
            let Some(table) = self.table(&change.table) else {
                continue;
            };
            match &change.row {
                Some(row) => Self::put(tx, table, row)?,
                None => {
                    tx.prepare_cached(&table.delete)?.execute([&change.id])?;
                }
            }
        }
        Ok(())
    }

    /// Replaces every mirror table's content.
    pub fn reset(&self, tx: &Transaction, tables: &[(String, Vec<Row>)]) -> rusqlite::Result<()> {
        for (name, rows) in tables {
            let Some(table) = self.table(name) else {
                continue;
            };
            tx.execute_batch(&format!("DELETE FROM {};", ident(name)))?;
            for row in rows {
                Self::put(tx, table, row)?;
            }
        }
        Ok(())
    }
}
