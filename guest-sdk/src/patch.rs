//! Helpers for patching the pod templates of a rendered LeaderWorkerSet.
//!
//! [`PodPatch`] edits a copy of the LWS's templates (the worker template and,
//! when present, the leader template) and turns the result into an RFC 6902
//! patch that replaces each template it changed. Edits are idempotent where
//! that makes sense: an env var or volume of the same name is replaced, not
//! duplicated.

use crate::Patch;
use serde_json::{Map, Value, json};

const TEMPLATES: [&str; 2] = ["workerTemplate", "leaderTemplate"];

/// Edits to the pod templates of one LWS.
pub struct PodPatch {
    original: Value,
    lws: Value,
}

impl PodPatch {
    /// Starts from the LWS in a `patch-role` request.
    pub fn new(lws: &Value) -> Self {
        PodPatch {
            original: lws.clone(),
            lws: lws.clone(),
        }
    }

    /// Applies `edit` to every pod template present (worker, then leader).
    pub fn each_template(&mut self, mut edit: impl FnMut(&mut Template<'_>)) -> &mut Self {
        for name in TEMPLATES {
            if let Some(t) = self
                .lws
                .pointer_mut(&format!("/spec/leaderWorkerTemplate/{name}"))
                .and_then(Value::as_object_mut)
            {
                edit(&mut Template(t));
            }
        }
        self
    }

    /// Adds or replaces an env var on the named container.
    pub fn env(&mut self, container: &str, name: &str, value: &str) -> &mut Self {
        self.each_template(|t| t.env(container, name, value))
    }

    /// Appends args to the named container.
    pub fn args<S: AsRef<str>>(&mut self, container: &str, args: &[S]) -> &mut Self {
        self.each_template(|t| t.args(container, args))
    }

    /// Sets the named container's resources (requests/limits) object.
    pub fn resources(&mut self, container: &str, resources: Value) -> &mut Self {
        self.each_template(|t| t.resources(container, resources.clone()))
    }

    /// Adds or replaces a pod volume, and mounts it in the named container.
    pub fn volume(&mut self, container: &str, volume: Value, mount_path: &str) -> &mut Self {
        self.each_template(|t| t.volume(container, volume.clone(), mount_path))
    }

    /// Adds or replaces a sidecar container (by name).
    pub fn sidecar(&mut self, sidecar: Value) -> &mut Self {
        self.each_template(|t| t.sidecar(sidecar.clone()))
    }

    /// Adds a toleration.
    pub fn toleration(&mut self, toleration: Value) -> &mut Self {
        self.each_template(|t| t.toleration(toleration.clone()))
    }

    /// Sets a nodeSelector entry.
    pub fn node_selector(&mut self, key: &str, value: &str) -> &mut Self {
        self.each_template(|t| t.node_selector(key, value))
    }

    /// The patch: one `replace` (or `add`) per changed template. `Patch::None` when nothing changed.
    pub fn into_patch(&self) -> Patch {
        let mut ops = Vec::new();
        for name in TEMPLATES {
            let path = format!("/spec/leaderWorkerTemplate/{name}");
            let (before, after) = (self.original.pointer(&path), self.lws.pointer(&path));
            if let Some(after) = after
                && before != Some(after)
            {
                let op = if before.is_some() { "replace" } else { "add" };
                ops.push(json!({"op": op, "path": path, "value": after}));
            }
        }
        if ops.is_empty() {
            Patch::None
        } else {
            Patch::Json(Value::Array(ops))
        }
    }
}

/// One pod template (`metadata` + `spec`), edited in place.
pub struct Template<'a>(pub &'a mut Map<String, Value>);

impl Template<'_> {
    fn spec(&mut self) -> &mut Map<String, Value> {
        object(self.0, "spec")
    }

    /// The named container, if the template has it.
    pub fn container(&mut self, name: &str) -> Option<&mut Map<String, Value>> {
        array(self.spec(), "containers")
            .iter_mut()
            .filter_map(Value::as_object_mut)
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
    }

    pub fn env(&mut self, container: &str, name: &str, value: &str) {
        if let Some(c) = self.container(container) {
            upsert_named(array(c, "env"), json!({"name": name, "value": value}));
        }
    }

    pub fn args<S: AsRef<str>>(&mut self, container: &str, args: &[S]) {
        if let Some(c) = self.container(container) {
            array(c, "args").extend(args.iter().map(|a| Value::String(a.as_ref().to_string())));
        }
    }

    pub fn resources(&mut self, container: &str, resources: Value) {
        if let Some(c) = self.container(container) {
            c.insert("resources".into(), resources);
        }
    }

    pub fn volume(&mut self, container: &str, volume: Value, mount_path: &str) {
        let name = volume.get("name").cloned().unwrap_or(Value::Null);
        upsert_named(array(self.spec(), "volumes"), volume);
        if let Some(c) = self.container(container) {
            upsert_named(
                array(c, "volumeMounts"),
                json!({"name": name, "mountPath": mount_path}),
            );
        }
    }

    pub fn sidecar(&mut self, sidecar: Value) {
        upsert_named(array(self.spec(), "containers"), sidecar);
    }

    pub fn toleration(&mut self, toleration: Value) {
        let list = array(self.spec(), "tolerations");
        if !list.contains(&toleration) {
            list.push(toleration);
        }
    }

    pub fn node_selector(&mut self, key: &str, value: &str) {
        object(self.spec(), "nodeSelector").insert(key.into(), Value::String(value.into()));
    }
}

fn object<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("just made an object")
}

fn array<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = map.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().expect("just made an array")
}

/// Replaces the entry with the same `name`, or appends.
fn upsert_named(list: &mut Vec<Value>, item: Value) {
    let name = item.get("name").cloned();
    match list
        .iter_mut()
        .find(|x| x.get("name").is_some() && x.get("name").cloned() == name)
    {
        Some(slot) => *slot = item,
        None => list.push(item),
    }
}
