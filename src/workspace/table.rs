//! Table handles: validated row reads and writes over the LWW cell store.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;

use super::core::{try_lock, Core, RowResult, Subscription, TableCore, TableState, WritePlan};
use crate::error::WorkspaceError;
use crate::lock::lock;
use crate::schema::definition::TableDefinition;
use crate::schema::validate::{complete_row, validate_row, Issue, Row};
use crate::schema::value::json_to_any;

/// A handle on one table of a workspace. Cheap to clone.
#[derive(Clone)]
pub struct TableHandle {
    pub(crate) core: Arc<Core>,
    pub(crate) index: usize,
}

impl std::fmt::Debug for TableHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableHandle")
            .field("table", &self.table().def.name)
            .finish()
    }
}

/// What table writes accept: a [`Row`], or a JSON value that must be an object.
pub trait IntoRow {
    /// The row, or [`WorkspaceError::Invalid`] when the value is not an object.
    fn into_row(self) -> Result<Row, WorkspaceError>;
}

impl IntoRow for Row {
    fn into_row(self) -> Result<Row, WorkspaceError> {
        Ok(self)
    }
}

impl IntoRow for Value {
    fn into_row(self) -> Result<Row, WorkspaceError> {
        match self {
            Value::Object(row) => Ok(row),
            other => Err(WorkspaceError::Invalid {
                issues: vec![Issue::new(
                    "",
                    format!(
                        "a row must be a JSON object, got {}",
                        crate::schema::validate::kind_of(&other)
                    ),
                )],
            }),
        }
    }
}

/// The id of a row (its `id` field), checked.
fn row_id(def: &TableDefinition, row: &Row) -> Result<String, Vec<Issue>> {
    let field = def.id_field();
    match row.get(field) {
        Some(Value::String(s)) if !s.is_empty() && !s.contains(':') => Ok(s.clone()),
        Some(Value::String(s)) if s.is_empty() => {
            Err(vec![Issue::new(field, "an id must not be empty")])
        }
        Some(Value::String(_)) => Err(vec![Issue::new(field, "an id must not contain `:`")]),
        Some(_) => Err(vec![Issue::new(field, "expected a string id")]),
        None => Err(vec![Issue::new(field, "is required")]),
    }
}

/// Checks a whole row and returns its id and the row with defaults filled in.
pub(crate) fn prepare_upsert(
    def: &TableDefinition,
    row: Row,
) -> Result<(String, Row), WorkspaceError> {
    let full = complete_row(def, row);
    let issues = validate_row(def, &full);
    if !issues.is_empty() {
        return Err(WorkspaceError::Invalid { issues });
    }
    let id = row_id(def, &full).map_err(|issues| WorkspaceError::Invalid { issues })?;
    Ok((id, full))
}

impl TableHandle {
    fn table(&self) -> &TableCore {
        &self.core.tables[self.index]
    }

    /// The table's definition.
    pub fn definition(&self) -> &TableDefinition {
        &self.table().def
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.table().def.name
    }

    fn put_row(plan: &mut WritePlan, index: usize, id: &str, row: &Row) {
        let w = plan.table(index);
        // One buffer for every cell's key, copied once into its shared string.
        let mut key = String::with_capacity(id.len() + 16);
        for (field, value) in row {
            key.clear();
            key.push_str(id);
            key.push(':');
            key.push_str(field);
            w.puts.push((Arc::from(key.as_str()), json_to_any(value)));
        }
    }

    /// Validates the whole row, then writes every field (creating or overwriting the row).
    /// Returns `true` when the row is new, `false` when it replaced a stored one.
    pub fn upsert(&self, row: impl IntoRow) -> Result<bool, WorkspaceError> {
        Ok(self.upsert_many(std::iter::once(row))? == 1)
    }

    /// Upserts several rows in one transaction: all are validated first, and a single
    /// invalid row writes nothing (its issues are prefixed with its position: `[3].title`).
    /// Returns how many of the rows are new.
    pub fn upsert_many<I>(&self, rows: I) -> Result<usize, WorkspaceError>
    where
        I: IntoIterator,
        I::Item: IntoRow,
    {
        let def = &self.table().def;
        let mut prepared = Vec::new();
        let mut issues = Vec::new();
        for (n, row) in rows.into_iter().enumerate() {
            match row.into_row().and_then(|row| prepare_upsert(def, row)) {
                Ok(p) => prepared.push(p),
                Err(WorkspaceError::Invalid { issues: found }) => issues.extend(
                    found
                        .into_iter()
                        .map(|i| Issue::new(format!("[{n}].{}", i.path), i.message)),
                ),
                Err(e) => return Err(e),
            }
        }
        if !issues.is_empty() {
            if prepared.is_empty() && issues.iter().all(|i| i.path.starts_with("[0].")) {
                // A single row: report plain field paths.
                issues = issues
                    .into_iter()
                    .map(|i| Issue::new(i.path.trim_start_matches("[0]."), i.message))
                    .collect();
            }
            return Err(WorkspaceError::Invalid { issues });
        }
        let index = self.index;
        let mut created = 0;
        self.core.write(|core| {
            // Inside the transaction: no other write can create these rows meanwhile.
            let state = lock(&core.tables[index].state);
            let mut plan = WritePlan::default();
            let mut seen = foldhash::HashSet::default();
            for (id, row) in &prepared {
                if !state.rows.contains_key(id) && seen.insert(id.as_str()) {
                    created += 1;
                }
                Self::put_row(&mut plan, index, id, row);
            }
            Ok(plan)
        })?;
        Ok(created)
    }

    /// Writes the given fields of an existing row; the merged row must be valid.
    /// Returns the merged row. The id field of `partial`, if present, must match `id`.
    pub fn update(&self, id: &str, partial: impl IntoRow) -> Result<Row, WorkspaceError> {
        let partial = partial.into_row()?;
        let index = self.index;
        let mut merged_out = Row::new();
        self.core.write(|core| {
            let table = &core.tables[index];
            let def = &table.def;
            let current = {
                let state = lock(&table.state);
                table.read(id, state.rows.get(id))
            };
            let mut merged = match current {
                RowResult::NotFound => {
                    return Err(WorkspaceError::NotFound {
                        table: def.name.clone(),
                        id: id.to_string(),
                    })
                }
                RowResult::Valid(row) => row,
                RowResult::Invalid { row, .. } => row,
            };
            let id_field = def.id_field();
            if let Some(v) = partial.get(id_field) {
                if v.as_str() != Some(id) {
                    return Err(WorkspaceError::Invalid {
                        issues: vec![Issue::new(id_field, "does not match the id of the row")],
                    });
                }
            }
            merged.retain(|k, _| def.field(k).is_some());
            for (k, v) in &partial {
                merged.insert(k.clone(), v.clone());
            }
            let issues = validate_row(def, &merged);
            if !issues.is_empty() {
                return Err(WorkspaceError::Invalid { issues });
            }
            let mut plan = WritePlan::default();
            Self::put_row(&mut plan, index, id, &partial);
            merged_out = merged;
            Ok(plan)
        })?;
        Ok(merged_out)
    }

    /// Reads one row: valid, invalid (with every issue), or not found.
    pub fn get(&self, id: &str) -> RowResult {
        let table = self.table();
        let state = lock(&table.state);
        table.read(id, state.rows.get(id))
    }

    /// Every row that matches the schema, ordered by id.
    pub fn get_all_valid(&self) -> Vec<Row> {
        self.page_valid(0, usize::MAX)
    }

    /// Valid rows ordered by id, skipping `offset` and returning at most `limit`.
    pub fn page_valid(&self, offset: usize, limit: usize) -> Vec<Row> {
        let table = self.table();
        page(table, &lock(&table.state), offset, limit)
    }

    /// [`TableHandle::get`] if the rows are free now: `None` while a commit is indexing
    /// this table (a big one takes a while), so an async task can go elsewhere to wait.
    pub(crate) fn try_get(&self, id: &str) -> Option<RowResult> {
        let table = self.table();
        let state = try_lock(&table.state)?;
        Some(table.read(id, state.rows.get(id)))
    }

    /// [`TableHandle::page_valid`] if the rows are free now (see [`TableHandle::try_get`]).
    pub(crate) fn try_page_valid(&self, offset: usize, limit: usize) -> Option<Vec<Row>> {
        let table = self.table();
        let state = try_lock(&table.state)?;
        Some(page(table, &state, offset, limit))
    }

    /// Every stored row that does not match the schema, as [`RowResult::Invalid`].
    pub fn get_all_invalid(&self) -> Vec<RowResult> {
        let table = self.table();
        let state = lock(&table.state);
        state
            .rows
            .iter()
            .map(|(id, cells)| table.read(id, Some(cells)))
            .filter(|r| matches!(r, RowResult::Invalid { .. }))
            .collect()
    }

    /// Number of stored rows (valid or not).
    pub fn count(&self) -> usize {
        lock(&self.table().state).rows.len()
    }

    /// Whether a row with this id is stored.
    pub fn has(&self, id: &str) -> bool {
        lock(&self.table().state).rows.contains_key(id)
    }

    /// Deletes a row (all its cells). Returns whether it existed.
    pub fn delete(&self, id: &str) -> Result<bool, WorkspaceError> {
        Ok(self.delete_many([id])? == 1)
    }

    /// Deletes rows in one transaction. Returns how many existed.
    pub fn delete_many<I, S>(&self, ids: I) -> Result<usize, WorkspaceError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ids: Vec<String> = ids.into_iter().map(|s| s.as_ref().to_string()).collect();
        let index = self.index;
        let mut found = 0;
        self.core.write(|core| {
            let mut plan = WritePlan::default();
            let state = lock(&core.tables[index].state);
            for id in &ids {
                if let Some(cells) = state.rows.get(id) {
                    found += 1;
                    let w = plan.table(index);
                    w.removes.extend(
                        cells
                            .keys()
                            .map(|f| Arc::from(format!("{id}:{f}").as_str())),
                    );
                }
            }
            Ok(plan)
        })?;
        Ok(found)
    }

    /// Deletes every row.
    pub fn clear(&self) -> Result<(), WorkspaceError> {
        let ids: Vec<String> = lock(&self.table().state).rows.keys().cloned().collect();
        self.delete_many(ids).map(|_| ())
    }

    /// Calls `f` with the ids of the rows each transaction changed (local or remote).
    ///
    /// `f` runs inside the doc's commit: it must not write to the workspace (that would
    /// deadlock); send the ids to a channel and act on them elsewhere.
    pub fn observe<F>(&self, f: F) -> Subscription
    where
        F: Fn(&BTreeSet<String>) + Send + Sync + 'static,
    {
        self.table().observers.add(Arc::new(f))
    }
}

fn page(table: &TableCore, state: &TableState, offset: usize, limit: usize) -> Vec<Row> {
    state
        .rows
        .iter()
        .filter_map(|(id, cells)| match table.read(id, Some(cells)) {
            RowResult::Valid(row) => Some(row),
            _ => None,
        })
        .skip(offset)
        .take(limit)
        .collect()
}
