//! Workspace definitions: tables of typed fields and KV keys.
//!
//! A definition is plain data. It is built in Rust with a few constructor functions
//! ([`id`], [`text`], ...) or read from JSON ([`WorkspaceDefinition::from_json`]), and it
//! drives everything generated at runtime: validation, the REST routes, OpenAPI and the
//! SQL mirror. Building checks the rules that would otherwise surface far away (exactly one
//! `id` field per table, defaults that match their field, names SQL can tell apart), and
//! every error names the table and field it is about.

use serde_json::{Map, Value};

use crate::error::DefinitionError;

/// The type of a field, with its type-specific settings.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    /// The row key: a string without `:`. Exactly one per table.
    Id,
    /// Any string.
    Text,
    /// An integral number (stored as a float64 in the doc).
    Integer,
    /// Any finite number.
    Real,
    /// `true` or `false`.
    Boolean,
    /// `"<ISO-8601 UTC>|<IANA time zone>"`, e.g. `2024-01-01T00:00:00.000Z|America/New_York`.
    Date,
    /// One of a fixed set of strings.
    Select {
        /// The allowed values.
        options: Vec<String>,
    },
    /// An array of strings, restricted to `options` when given.
    Tags {
        /// The allowed values, or any string when `None`.
        options: Option<Vec<String>>,
    },
    /// Any JSON value, validated against a JSON Schema when one is given.
    Json {
        /// The JSON Schema values must satisfy.
        schema: Option<Value>,
    },
}

impl FieldType {
    /// The name used in JSON definitions (`"text"`, `"select"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::Id => "id",
            FieldType::Text => "text",
            FieldType::Integer => "integer",
            FieldType::Real => "real",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::Select { .. } => "select",
            FieldType::Tags { .. } => "tags",
            FieldType::Json { .. } => "json",
        }
    }
}

/// A field's type plus its `nullable` flag and `default` value.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The field's type.
    pub kind: FieldType,
    /// `null` is allowed, and a missing value means `null`.
    pub nullable: bool,
    /// Value used when a new row leaves the field out.
    pub default: Option<Value>,
}

impl FieldSpec {
    fn of(kind: FieldType) -> Self {
        FieldSpec {
            kind,
            nullable: false,
            default: None,
        }
    }

    /// Allows `null`; a missing value then reads as `null`.
    pub fn nullable(mut self) -> Self {
        self.nullable = true;
        self
    }

    /// Sets the value used when an upserted row leaves this field out.
    pub fn default(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self
    }
}

/// The row key field.
pub fn id() -> FieldSpec {
    FieldSpec::of(FieldType::Id)
}
/// A string field.
pub fn text() -> FieldSpec {
    FieldSpec::of(FieldType::Text)
}
/// An integral number field.
pub fn integer() -> FieldSpec {
    FieldSpec::of(FieldType::Integer)
}
/// A number field.
pub fn real() -> FieldSpec {
    FieldSpec::of(FieldType::Real)
}
/// A boolean field.
pub fn boolean() -> FieldSpec {
    FieldSpec::of(FieldType::Boolean)
}
/// A `"<ISO-8601 UTC>|<IANA tz>"` date field.
pub fn date() -> FieldSpec {
    FieldSpec::of(FieldType::Date)
}
/// A field holding one of `options`.
pub fn select<I, S>(options: I) -> FieldSpec
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    FieldSpec::of(FieldType::Select {
        options: options.into_iter().map(Into::into).collect(),
    })
}
/// An array-of-strings field with any strings.
pub fn tags() -> FieldSpec {
    FieldSpec::of(FieldType::Tags { options: None })
}
/// An array-of-strings field restricted to `options`.
pub fn tags_of<I, S>(options: I) -> FieldSpec
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    FieldSpec::of(FieldType::Tags {
        options: Some(options.into_iter().map(Into::into).collect()),
    })
}
/// A field holding any JSON value.
pub fn json() -> FieldSpec {
    FieldSpec::of(FieldType::Json { schema: None })
}
/// A JSON field whose values must satisfy `schema` (a JSON Schema).
pub fn json_with_schema(schema: Value) -> FieldSpec {
    FieldSpec::of(FieldType::Json {
        schema: Some(schema),
    })
}

/// A named field of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The field (column) name.
    pub name: String,
    /// Its type, nullability and default.
    pub spec: FieldSpec,
}

/// A table: an ordered list of fields, exactly one of them of type `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDefinition {
    /// The table name (the Y.Array is `table:<name>`).
    pub name: String,
    /// The fields in declaration order.
    pub fields: Vec<Field>,
}

impl TableDefinition {
    /// The name of the table's `id` field.
    pub fn id_field(&self) -> &str {
        self.fields
            .iter()
            .find(|f| f.spec.kind == FieldType::Id)
            .map(|f| f.name.as_str())
            .unwrap_or("id")
    }

    /// Looks a field up by name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// A KV key with its value type.
#[derive(Debug, Clone, PartialEq)]
pub struct KvDefinition {
    /// The key.
    pub key: String,
    /// The value's type, nullability and default.
    pub spec: FieldSpec,
}

/// A workspace: its id (also the doc guid and sync room), tables and KV keys.
///
/// ```
/// use epicenter_server::workspace::{WorkspaceDefinition, id, text};
///
/// let blog = WorkspaceDefinition::builder("blog")
///     .table("posts", [("id", id()), ("title", text())])
///     .build()
///     .unwrap();
/// assert_eq!(blog.table("posts").unwrap().fields.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceDefinition {
    /// The workspace id.
    pub id: String,
    /// Tables in declaration order.
    pub tables: Vec<TableDefinition>,
    /// KV keys in declaration order.
    pub kv: Vec<KvDefinition>,
}

/// Builds a [`WorkspaceDefinition`]; checked by [`WorkspaceBuilder::build`].
#[derive(Debug, Clone)]
pub struct WorkspaceBuilder {
    def: WorkspaceDefinition,
}

impl WorkspaceBuilder {
    /// Adds a table with `(name, field)` pairs in column order.
    pub fn table<I, S>(mut self, name: impl Into<String>, fields: I) -> Self
    where
        I: IntoIterator<Item = (S, FieldSpec)>,
        S: Into<String>,
    {
        self.def.tables.push(TableDefinition {
            name: name.into(),
            fields: fields
                .into_iter()
                .map(|(name, spec)| Field {
                    name: name.into(),
                    spec,
                })
                .collect(),
        });
        self
    }

    /// Adds a KV key.
    pub fn kv(mut self, key: impl Into<String>, spec: FieldSpec) -> Self {
        self.def.kv.push(KvDefinition {
            key: key.into(),
            spec,
        });
        self
    }

    /// Checks the definition and returns it.
    pub fn build(self) -> Result<WorkspaceDefinition, DefinitionError> {
        self.def.check()?;
        Ok(self.def)
    }
}

impl WorkspaceDefinition {
    /// Starts a definition for workspace `id`.
    pub fn builder(id: impl Into<String>) -> WorkspaceBuilder {
        WorkspaceBuilder {
            def: WorkspaceDefinition {
                id: id.into(),
                tables: Vec::new(),
                kv: Vec::new(),
            },
        }
    }

    /// Looks a table up by name.
    pub fn table(&self, name: &str) -> Option<&TableDefinition> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Looks a KV key up.
    pub fn kv_key(&self, key: &str) -> Option<&KvDefinition> {
        self.kv.iter().find(|k| k.key == key)
    }

    /// Checks every rule a definition must follow: a non-empty workspace id; table, field
    /// and KV names non-empty and unique; exactly one `id` field per table, neither
    /// nullable nor defaulted; valid `select` options, JSON Schemas and defaults. Because
    /// tables and fields are also SQL tables and columns (the SQLite mirror), and SQL takes
    /// names that differ only in ASCII letter case for one, two tables, or two fields of one
    /// table, may not differ only in letter case (`Posts` and `posts`), and table names may
    /// not start with `_epicenter` or `sqlite_` in any letter case (the storage's and
    /// SQLite's own tables). Errors name the table, field or key.
    ///
    /// ```
    /// use epicenter_server::workspace::{id, WorkspaceDefinition};
    ///
    /// let err = WorkspaceDefinition::builder("blog")
    ///     .table("Posts", [("id", id())])
    ///     .table("posts", [("id", id())])
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().starts_with("table `posts`: the name differs from table `Posts`"));
    /// ```
    pub fn check(&self) -> Result<(), DefinitionError> {
        if self.id.is_empty() {
            return Err(DefinitionError::Workspace(
                "the workspace id is empty".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for table in &self.tables {
            let terr = |message: String| DefinitionError::Table {
                table: table.name.clone(),
                message,
            };
            if table.name.is_empty() {
                return Err(terr("the table name is empty".into()));
            }
            if !seen.insert(table.name.as_str()) {
                return Err(terr("the table is defined twice".into()));
            }
            if let Some(prefix) = reserved_prefix(&table.name) {
                return Err(terr(format!(
                    "table names starting with `{prefix}` (in any letter case) are reserved \
                     for the storage's own SQL tables"
                )));
            }
            if let Some(other) = same_sql_name(&self.tables, table, |t| &t.name) {
                return Err(terr(format!(
                    "the name differs from table `{other}` only in letter case, and SQL \
                     (the SQLite mirror) would take both for one table"
                )));
            }
            let ids = table
                .fields
                .iter()
                .filter(|f| f.spec.kind == FieldType::Id)
                .count();
            if ids != 1 {
                return Err(terr(format!(
                    "a table needs exactly one field of type `id`, found {ids}"
                )));
            }
            let mut names = std::collections::HashSet::new();
            for field in &table.fields {
                let ferr = |message: String| DefinitionError::Field {
                    table: table.name.clone(),
                    field: field.name.clone(),
                    message,
                };
                if field.name.is_empty() {
                    return Err(ferr("the field name is empty".into()));
                }
                if !names.insert(field.name.as_str()) {
                    return Err(ferr("the field is defined twice".into()));
                }
                if let Some(other) = same_sql_name(&table.fields, field, |f| &f.name) {
                    return Err(ferr(format!(
                        "the name differs from field `{other}` only in letter case, and SQL \
                         (the SQLite mirror) would take both for one column"
                    )));
                }
                if field.spec.kind == FieldType::Id
                    && (field.spec.nullable || field.spec.default.is_some())
                {
                    return Err(ferr(
                        "an `id` field can be neither nullable nor defaulted".into(),
                    ));
                }
                check_spec(&field.spec).map_err(ferr)?;
            }
        }
        let mut keys = std::collections::HashSet::new();
        for kv in &self.kv {
            let kerr = |message: String| DefinitionError::Kv {
                key: kv.key.clone(),
                message,
            };
            if !keys.insert(kv.key.as_str()) {
                return Err(kerr("the key is defined twice".into()));
            }
            if kv.spec.kind == FieldType::Id {
                return Err(kerr("a KV value cannot be of type `id`".into()));
            }
            check_spec(&kv.spec).map_err(kerr)?;
        }
        Ok(())
    }

    /// Reads a definition from JSON:
    ///
    /// ```json
    /// { "id": "blog",
    ///   "tables": { "posts": { "id": { "type": "id" }, "title": { "type": "text" } } },
    ///   "kv": { "theme": { "type": "select", "options": ["light", "dark"], "default": "light" } } }
    /// ```
    pub fn from_json(text: &str) -> Result<Self, DefinitionError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| DefinitionError::Json(e.to_string()))?;
        Self::from_value(&value)
    }

    /// Reads a definition from a parsed JSON value (see [`WorkspaceDefinition::from_json`]).
    pub fn from_value(value: &Value) -> Result<Self, DefinitionError> {
        let root = value
            .as_object()
            .ok_or_else(|| DefinitionError::Json("the definition must be an object".into()))?;
        let id = root
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| DefinitionError::Json("`id` must be a string".into()))?;
        let mut def = WorkspaceDefinition {
            id: id.to_string(),
            tables: Vec::new(),
            kv: Vec::new(),
        };
        if let Some(tables) = root.get("tables") {
            let tables = tables
                .as_object()
                .ok_or_else(|| DefinitionError::Json("`tables` must be an object".into()))?;
            for (name, fields) in tables {
                let fields = fields.as_object().ok_or_else(|| DefinitionError::Table {
                    table: name.clone(),
                    message: "a table must be an object of fields".into(),
                })?;
                let mut table = TableDefinition {
                    name: name.clone(),
                    fields: Vec::new(),
                };
                for (fname, spec) in fields {
                    let spec = spec_from_json(spec).map_err(|message| DefinitionError::Field {
                        table: name.clone(),
                        field: fname.clone(),
                        message,
                    })?;
                    table.fields.push(Field {
                        name: fname.clone(),
                        spec,
                    });
                }
                def.tables.push(table);
            }
        }
        if let Some(kv) = root.get("kv") {
            let kv = kv
                .as_object()
                .ok_or_else(|| DefinitionError::Json("`kv` must be an object".into()))?;
            for (key, spec) in kv {
                let spec = spec_from_json(spec).map_err(|message| DefinitionError::Kv {
                    key: key.clone(),
                    message,
                })?;
                def.kv.push(KvDefinition {
                    key: key.clone(),
                    spec,
                });
            }
        }
        def.check()?;
        Ok(def)
    }

    /// The definition as a JSON value (the format [`WorkspaceDefinition::from_json`] reads).
    pub fn to_value(&self) -> Value {
        let mut tables = Map::new();
        for table in &self.tables {
            let mut fields = Map::new();
            for f in &table.fields {
                fields.insert(f.name.clone(), spec_to_json(&f.spec));
            }
            tables.insert(table.name.clone(), Value::Object(fields));
        }
        let mut kv = Map::new();
        for k in &self.kv {
            kv.insert(k.key.clone(), spec_to_json(&k.spec));
        }
        serde_json::json!({ "id": self.id, "tables": tables, "kv": kv })
    }

    /// The definition as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).unwrap_or_default()
    }
}

/// Prefixes of table names the SQLite storage keeps for itself: its own tables
/// (`_epicenter_log`, ...) and SQLite's (`sqlite_master`, ...). SQL compares names
/// ignoring ASCII letter case, so the prefixes are matched that way too.
const RESERVED_TABLE_PREFIXES: [&str; 2] = ["_epicenter", "sqlite_"];

/// The reserved prefix `name` starts with, if any.
fn reserved_prefix(name: &str) -> Option<&'static str> {
    RESERVED_TABLE_PREFIXES.into_iter().find(|prefix| {
        name.get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    })
}

/// An item declared before `item` whose name SQL would take for the same identifier
/// (SQLite folds ASCII letter case in identifiers, nothing else).
fn same_sql_name<'a, T>(items: &'a [T], item: &T, name: impl Fn(&T) -> &str) -> Option<&'a str> {
    items
        .iter()
        .take_while(|other| !std::ptr::eq(*other, item))
        .map(&name)
        .find(|other| other.eq_ignore_ascii_case(name(item)))
}

fn check_spec(spec: &FieldSpec) -> Result<(), String> {
    match &spec.kind {
        FieldType::Select { options } if options.is_empty() => {
            return Err("a `select` needs at least one option".into())
        }
        FieldType::Json {
            schema: Some(schema),
        } => {
            jsonschema::validator_for(schema).map_err(|e| format!("invalid JSON Schema: {e}"))?;
        }
        _ => {}
    }
    if let Some(default) = &spec.default {
        super::validate::check_value(spec, default)
            .map_err(|issue| format!("the default does not fit the field: {}", issue.message))?;
    }
    Ok(())
}

fn string_list(value: Option<&Value>, what: &str) -> Result<Option<Vec<String>>, String> {
    match value {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("`{what}` must be an array of strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(format!("`{what}` must be an array of strings")),
    }
}

fn spec_from_json(value: &Value) -> Result<FieldSpec, String> {
    let obj = value
        .as_object()
        .ok_or("a field must be an object with a `type`")?;
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or("a field needs a string `type`")?;
    let kind = match ty {
        "id" => FieldType::Id,
        "text" => FieldType::Text,
        "integer" => FieldType::Integer,
        "real" => FieldType::Real,
        "boolean" => FieldType::Boolean,
        "date" => FieldType::Date,
        "select" => FieldType::Select {
            options: string_list(obj.get("options"), "options")?
                .ok_or("a `select` needs `options`")?,
        },
        "tags" => FieldType::Tags {
            options: string_list(obj.get("options"), "options")?,
        },
        "json" => FieldType::Json {
            schema: obj.get("schema").cloned(),
        },
        other => {
            return Err(format!(
                "unknown type `{other}` (expected id, text, integer, real, boolean, date, select, tags or json)"
            ))
        }
    };
    let nullable = match obj.get("nullable") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("`nullable` must be a boolean".into()),
    };
    Ok(FieldSpec {
        kind,
        nullable,
        default: obj.get("default").cloned(),
    })
}

fn spec_to_json(spec: &FieldSpec) -> Value {
    let mut obj = Map::new();
    obj.insert("type".into(), spec.kind.name().into());
    match &spec.kind {
        FieldType::Select { options }
        | FieldType::Tags {
            options: Some(options),
        } => {
            obj.insert("options".into(), options.clone().into());
        }
        FieldType::Json {
            schema: Some(schema),
        } => {
            obj.insert("schema".into(), schema.clone());
        }
        _ => {}
    }
    if spec.nullable {
        obj.insert("nullable".into(), true.into());
    }
    if let Some(default) = &spec.default {
        obj.insert("default".into(), default.clone());
    }
    Value::Object(obj)
}
