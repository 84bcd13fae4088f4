//! A valid row written straight out as JSON, for answers that only serialise it (a REST
//! read): the bytes are those of serialising [`TableCore::read`]'s row, without building
//! the row's map, its keys and values only to drop them.

use serde_json::Value;

use super::core::{Cells, RowResult, TableCore};
use super::table::TableHandle;
use crate::schema::validate::check_field;
use crate::schema::value::any_to_json;

impl TableCore {
    /// Appends the row as a JSON object to `out` when it is valid (`None`); otherwise
    /// leaves `out` as it was and returns what [`TableCore::read`] gives.
    pub fn write_json(
        &self,
        id: &str,
        cells: Option<&Cells>,
        out: &mut Vec<u8>,
    ) -> Option<RowResult> {
        let Some(present) = cells else {
            return Some(RowResult::NotFound);
        };
        let start = out.len();
        if self.write_valid(present, out).is_none() {
            out.truncate(start);
            return Some(self.read(id, cells));
        }
        None
    }

    /// The fields in declaration order as `read` puts them in its row; `None` at the first
    /// field that makes the row invalid.
    fn write_valid(&self, cells: &Cells, out: &mut Vec<u8>) -> Option<()> {
        let mut issues = Vec::new();
        out.push(b'{');
        for (n, field) in self.def.fields.iter().enumerate() {
            let value = match cells.get(&field.name) {
                Some(v) => any_to_json(v),
                None if field.spec.nullable => Value::Null,
                None => return None,
            };
            check_field(&field.spec, &field.name, &value, &mut issues);
            if !issues.is_empty() {
                return None;
            }
            if n > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, &field.name).ok()?;
            out.push(b':');
            serde_json::to_writer(&mut *out, &value).ok()?;
        }
        out.push(b'}');
        Some(())
    }
}

impl TableHandle {
    /// [`TableHandle::try_get`], with a valid row appended to `out` as JSON (`Some(None)`)
    /// instead of returned; `None` while a commit holds the rows.
    pub(crate) fn try_get_json(&self, id: &str, out: &mut Vec<u8>) -> Option<Option<RowResult>> {
        let table = &self.core.tables[self.index];
        let state = super::core::try_lock(&table.state)?;
        Some(table.write_json(id, state.rows.get(id), out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::workspace::*;

    /// Every kind of field, and values that need escaping or a number's exact form: the
    /// bytes written are those of serialising the row `get` returns.
    #[tokio::test]
    async fn a_valid_row_is_written_as_its_row_serialises() {
        let def = WorkspaceDefinition::builder("w")
            .table(
                "t",
                [
                    ("id", id()),
                    ("title", text()),
                    ("n", integer()),
                    ("x", real().nullable()),
                    ("on", boolean()),
                    ("kind", select(["a", "b\"c"])),
                    ("labels", tags()),
                    ("meta", json()),
                    ("when", date().nullable()),
                    ("note", text().nullable()),
                ],
            )
            .build()
            .unwrap();
        let client = def.in_memory().create().await.unwrap();
        let t = client.table("t").unwrap();
        let rows = [
            json!({"id": "r1", "title": "quote \" backslash \\ tab \t é 😀 \u{1}", "n": 9007199254740991i64,
                   "x": 1.5, "on": true, "kind": "b\"c", "labels": ["x", "y"],
                   "meta": {"z": 1, "a": [null, 2.25, "s"]}, "when": "2024-01-02T03:04:05.000Z|Europe/Paris",
                   "note": null}),
            json!({"id": "r2", "title": "", "n": -3, "x": 1e300, "on": false, "kind": "a",
                   "labels": [], "meta": "just a string", "when": null}),
        ];
        for row in rows {
            t.upsert(row).unwrap();
        }
        for id in ["r1", "r2"] {
            let RowResult::Valid(row) = t.get(id) else {
                panic!("{id} is valid")
            };
            let mut out = b"prefix".to_vec();
            assert!(matches!(t.try_get_json(id, &mut out), Some(None)));
            let expected = [b"prefix".to_vec(), serde_json::to_vec(&row).unwrap()].concat();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
        // Not found and invalid rows: nothing written, the same answer as `get`.
        let mut out = b"prefix".to_vec();
        assert_eq!(
            t.try_get_json("nope", &mut out),
            Some(Some(RowResult::NotFound))
        );
        let narrow = WorkspaceDefinition::builder("w")
            .table("t", [("id", id()), ("title", integer())])
            .build()
            .unwrap();
        let storage = crate::storage::MemoryStorage::new();
        let wide = client
            .definition()
            .clone()
            .with_storage(storage.clone())
            .create()
            .await
            .unwrap();
        wide.table("t")
            .unwrap()
            .upsert(json!({"id": "r3", "title": "text", "n": 1, "on": true,
            "kind": "a", "labels": [], "meta": 1}))
            .unwrap();
        wide.destroy().await.unwrap();
        let narrowed = narrow.with_storage(storage).create().await.unwrap();
        let t = narrowed.table("t").unwrap();
        let invalid = t.get("r3");
        assert!(matches!(invalid, RowResult::Invalid { .. }), "{invalid:?}");
        assert_eq!(t.try_get_json("r3", &mut out), Some(Some(invalid)));
        assert_eq!(out, b"prefix");
        client.destroy().await.unwrap();
        narrowed.destroy().await.unwrap();
    }
}
