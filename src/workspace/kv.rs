//! The KV handle: single validated values under the root array `kv`.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;

use super::core::{Core, Subscription, WritePlan};
use crate::error::WorkspaceError;
use crate::lock::lock;
use crate::schema::validate::{check_field, Issue};
use crate::schema::value::{any_to_json, json_to_any};

/// A handle on a workspace's KV values. Cheap to clone.
#[derive(Clone)]
pub struct KvHandle {
    pub(crate) core: Arc<Core>,
}

impl std::fmt::Debug for KvHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvHandle").finish()
    }
}

impl KvHandle {
    fn spec(&self, key: &str) -> Result<&crate::schema::definition::FieldSpec, WorkspaceError> {
        self.core
            .definition
            .kv_key(key)
            .map(|k| &k.spec)
            .ok_or_else(|| WorkspaceError::UnknownKey(key.to_string()))
    }

    /// The stored value, else the key's default, else `null` when nullable, else `None`.
    pub fn get(&self, key: &str) -> Result<Option<Value>, WorkspaceError> {
        let spec = self.spec(key)?;
        if let Some(v) = lock(&self.core.kv.state).get(key) {
            return Ok(Some(any_to_json(v)));
        }
        Ok(spec
            .default
            .clone()
            .or_else(|| spec.nullable.then_some(Value::Null)))
    }

    /// Validates and stores a value.
    pub fn set(&self, key: &str, value: Value) -> Result<(), WorkspaceError> {
        let spec = self.spec(key)?;
        let mut issues: Vec<Issue> = Vec::new();
        check_field(spec, key, &value, &mut issues);
        if !issues.is_empty() {
            return Err(WorkspaceError::Invalid { issues });
        }
        self.core.write(|_| {
            let mut plan = WritePlan::default();
            plan.kv().puts.push((Arc::from(key), json_to_any(&value)));
            Ok(plan)
        })
    }

    /// Removes a stored value (reads fall back to the default). Returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, WorkspaceError> {
        self.spec(key)?;
        let existed = lock(&self.core.kv.state).get(key).is_some();
        self.core.write(|_| {
            let mut plan = WritePlan::default();
            plan.kv().removes.insert(Arc::from(key));
            Ok(plan)
        })?;
        Ok(existed)
    }

    /// Calls `f` with the keys each transaction changed. Runs inside the commit: do not
    /// write to the workspace from `f`.
    pub fn observe<F>(&self, f: F) -> Subscription
    where
        F: Fn(&BTreeSet<String>) + Send + Sync + 'static,
    {
        self.core.kv.observers.add(Arc::new(f))
    }
}
