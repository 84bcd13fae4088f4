//! The bottom layer: what a workspace is made of, independent of where it lives. Workspace,
//! table and KV definitions with their field types (built in Rust or loaded from JSON),
//! row values and their conversion to and from the doc's values, and validation of a value
//! or a row against its definition. Storage (the SQL mirror) and the workspace layer both
//! build on it; it depends on nothing else in the crate.

pub(crate) mod definition;
pub(crate) mod validate;
pub(crate) mod value;

pub use definition::{
    boolean, date, id, integer, json, json_with_schema, real, select, tags, tags_of, text, Field,
    FieldSpec, FieldType, KvDefinition, TableDefinition, WorkspaceBuilder, WorkspaceDefinition,
};
pub use validate::{validate_row, Issue, Row};
pub use value::{any_to_json, json_to_any};
