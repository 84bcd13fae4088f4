//! The rows of a table: each row's winning cells, kept from the index's winner changes,
//! and read back as rows (valid, with their issues, or not found).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use yrs::{Any, ArrayRef};

use super::core::Observers;
use super::lww::{LwwIndex, WinnerChange};
use crate::schema::definition::TableDefinition;
use crate::schema::validate::{check_field, Issue, Row};
use crate::schema::value::any_to_json;

/// The winning cells of one row: field id → value. Rows have few fields, so a vector
/// beats a hash map here (no hashing, one allocation).
#[derive(Debug, Default, Clone)]
pub(crate) struct Cells(Vec<(Arc<str>, Any)>);

impl Cells {
    pub fn get(&self, field: &str) -> Option<&Any> {
        self.0.iter().find(|(f, _)| &**f == field).map(|(_, v)| v)
    }

    /// Sets a cell. `names` are the table's field names: a known field shares its name
    /// instead of allocating one per cell.
    fn set(&mut self, field: &str, value: Any, names: &[Arc<str>]) {
        match self.0.iter_mut().find(|(f, _)| &**f == field) {
            Some((_, v)) => *v = value,
            None => {
                let name = names
                    .iter()
                    .find(|n| &***n == field)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(field));
                self.0.push((name, value));
            }
        }
    }

    fn remove(&mut self, field: &str) {
        self.0.retain(|(f, _)| &**f != field);
    }

    /// Sets (`Some`) or removes (`None`) a cell.
    fn put(&mut self, field: &str, value: Option<Any>, names: &[Arc<str>]) {
        match value {
            Some(v) => self.set(field, v, names),
            None => self.remove(field),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(f, _)| &**f)
    }
}

/// Rows of one table, rebuilt cell by cell from the index's winner changes.
#[derive(Default)]
pub(crate) struct TableState {
    pub index: LwwIndex,
    /// row id → its cells, ordered by id (the order lists and pages use).
    pub rows: BTreeMap<String, Cells>,
}

/// What reading one row gives.
#[derive(Debug, Clone, PartialEq)]
pub enum RowResult {
    /// The row matches the schema.
    Valid(Row),
    /// The row exists but does not match the schema.
    Invalid {
        /// The row id.
        id: String,
        /// Every stored cell, as JSON.
        row: Row,
        /// What does not match.
        issues: Vec<Issue>,
    },
    /// No cell of the row exists.
    NotFound,
}

pub(crate) struct TableCore {
    pub def: TableDefinition,
    /// The field names, shared by every row's cells.
    pub field_names: Vec<Arc<str>>,
    pub array: ArrayRef,
    pub state: Mutex<TableState>,
    pub observers: Arc<Observers>,
}

impl TableCore {
    /// The row as a [`RowResult`], from its cells.
    pub fn read(&self, id: &str, cells: Option<&Cells>) -> RowResult {
        let Some(cells) = cells else {
            return RowResult::NotFound;
        };
        // Fast path: build the row in declaration order, nulls for missing nullable fields,
        // checking each value as it is converted.
        let mut row = Row::with_capacity(self.def.fields.len());
        let mut issues = Vec::new();
        for field in &self.def.fields {
            let value = match cells.get(&field.name) {
                Some(v) => any_to_json(v),
                None if field.spec.nullable => serde_json::Value::Null,
                None => {
                    issues.push(Issue::new(&field.name, "is missing"));
                    continue;
                }
            };
            check_field(&field.spec, &field.name, &value, &mut issues);
            row.insert(field.name.clone(), value);
        }
        if issues.is_empty() {
            return RowResult::Valid(row);
        }
        // Invalid: report the raw cells (only those stored), unknown fields included.
        let mut raw = Row::new();
        for field in &self.def.fields {
            if let Some(v) = cells.get(&field.name) {
                raw.insert(field.name.clone(), any_to_json(v));
            }
        }
        let mut extra: Vec<_> = cells
            .0
            .iter()
            .filter(|(k, _)| self.def.field(k).is_none())
            .collect();
        extra.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in extra {
            raw.insert(k.to_string(), any_to_json(v));
        }
        RowResult::Invalid {
            id: id.to_string(),
            row: raw,
            issues,
        }
    }

    /// Fills the empty row map from every key's winner (after a load). The rows are
    /// gathered, sorted by id and built into the map in one go, which is cheaper than
    /// inserting them one by one in the order the doc holds them.
    pub(super) fn load_rows(&self, state: &mut TableState, winners: Vec<WinnerChange>) {
        debug_assert!(state.rows.is_empty(), "load_rows fills an empty row map");
        let width = self.def.fields.len();
        let mut rows: Vec<(String, Cells)> = Vec::new();
        let mut winners = winners.into_iter().peekable();
        while let Some((key, val)) = winners.next() {
            let Some((row, field)) = key.split_once(':') else {
                continue;
            };
            let mut cells = Cells(Vec::with_capacity(width));
            cells.put(field, val, &self.field_names);
            while let Some((next, _)) = winners.peek() {
                match next.split_once(':') {
                    Some((r, _)) if r == row => {}
                    _ => break,
                }
                let Some((next, val)) = winners.next() else {
                    break;
                };
                let field = next.split_once(':').map_or("", |(_, f)| f);
                cells.put(field, val, &self.field_names);
            }
            rows.push((row.to_string(), cells));
        }
        // A row whose fields were first written at different times comes in several runs:
        // the stable sort keeps them in order, and they are merged into one.
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<(String, Cells)> = Vec::with_capacity(rows.len());
        for (id, cells) in rows {
            match merged.last_mut() {
                Some((last, into)) if *last == id => {
                    for (field, val) in cells.0 {
                        into.set(&field, val, &self.field_names);
                    }
                }
                _ => merged.push((id, cells)),
            }
        }
        merged.retain(|(_, cells)| !cells.is_empty());
        state.rows = merged.into_iter().collect();
    }

    /// Applies winner changes to the row map; returns the row ids touched (when asked
    /// for). Changes come grouped by row (the order the delta touched them), so each run of
    /// one row's cells costs one row lookup.
    pub(super) fn apply_changes(
        &self,
        state: &mut TableState,
        changes: Vec<WinnerChange>,
        report: bool,
    ) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        let width = self.def.fields.len();
        let row_of = |key: &str| key.split_once(':').map(|(row, _)| row.len());
        let mut changes = changes.into_iter().peekable();
        while let Some((key, val)) = changes.next() {
            let Some(len) = row_of(&key) else { continue };
            let row = &key[..len];
            let cells = match state.rows.get_mut(row) {
                Some(cells) => cells,
                None => state
                    .rows
                    .entry(row.to_string())
                    .or_insert_with(|| Cells(Vec::with_capacity(width))),
            };
            cells.put(&key[len + 1..], val, &self.field_names);
            while let Some((next, _)) = changes.peek() {
                if row_of(next) != Some(len) || !next.starts_with(row) {
                    break;
                }
                let Some((next, val)) = changes.next() else {
                    break;
                };
                cells.put(&next[len + 1..], val, &self.field_names);
            }
            if cells.is_empty() {
                state.rows.remove(row);
            }
            if report {
                touched.insert(row.to_string());
            }
        }
        touched
    }
}
