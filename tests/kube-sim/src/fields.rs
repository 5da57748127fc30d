//! Field ownership (`metadata.managedFields`) and server-side apply, as the
//! API server's structured-merge-diff does them, for JSON objects.
//!
//! A field set is the set of leaf paths a manager owns. Maps are walked into;
//! every list is atomic (owned and replaced whole) — a simplification of the
//! real server, which merges lists marked `x-kubernetes-list-type: map|set`
//! item by item. Of `metadata`, only labels, annotations, ownerReferences and
//! finalizers are owned; apiVersion, kind and system metadata never are.
//!
//! * Apply (`application/apply-patch+yaml`): the applied configuration's
//!   fields become the manager's set. A field another manager owns with a
//!   different value is a conflict (409) unless `force`, which takes it over.
//!   Fields the manager applied before and no longer does are removed from the
//!   object unless someone else owns them.
//! * Update (create, PUT, merge and JSON patch, scale): the fields whose value
//!   changed move to the updating manager; removed fields leave every set.

use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

/// A path of object keys from the root, e.g. `["spec", "replicas"]`.
pub type Path = Vec<String>;
/// The leaf paths a manager owns.
pub type FieldSet = BTreeSet<Path>;

/// Which part of an object a request may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The main endpoint; `status` is out of scope when the resource has a status subresource.
    Main { status_subresource: bool },
    /// The `/status` subresource: only `status`.
    Status,
    /// The `/scale` subresource: the replica field it maps to (recorded, as
    /// a real server does, under `subresource: scale`).
    Scale,
}

impl Scope {
    fn subresource(self) -> Option<&'static str> {
        match self {
            Scope::Status => Some("status"),
            Scope::Scale => Some("scale"),
            Scope::Main { .. } => None,
        }
    }

    fn includes(self, top: &str) -> bool {
        match (self, top) {
            (_, "apiVersion" | "kind") => false,
            (Scope::Status, t) => t == "status",
            (Scope::Scale, t) => t != "status",
            (Scope::Main { status_subresource }, "status") => !status_subresource,
            (Scope::Main { .. }, _) => true,
        }
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// "Apply" or "Update".
    pub operation: String,
    pub subresource: Option<String>,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

impl Entry {
    fn same_owner(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }
}

/// The owned leaf paths of an object, within a scope.
pub fn field_set(object: &Value, scope: Scope) -> FieldSet {
    let mut set = FieldSet::new();
    let Some(map) = object.as_object() else {
        return set;
    };
    for (key, value) in map {
        if !scope.includes(key) {
            continue;
        }
        if key == "metadata" {
            for owned in ["labels", "annotations", "ownerReferences", "finalizers"] {
                if let Some(v) = value.get(owned) {
                    collect(v, vec!["metadata".into(), owned.into()], &mut set);
                }
            }
        } else {
            collect(value, vec![key.clone()], &mut set);
        }
    }
    set
}

fn collect(value: &Value, path: Path, set: &mut FieldSet) {
    // An empty map owns nothing: `spec: {}` must not claim what others set under it.
    match value.as_object() {
        Some(map) => {
            for (k, v) in map {
                let mut p = path.clone();
                p.push(k.clone());
                collect(v, p, set);
            }
        }
        None => {
            set.insert(path);
        }
    }
}

fn lookup<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |at, k| at.get(k))
}

/// Removes the field at `path`, and the maps it leaves empty (as the real
/// server does: `rollout: {}` must not stay behind once its fields are released).
fn remove(object: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(map) = object.as_object_mut() else {
        return;
    };
    if rest.is_empty() {
        map.remove(first);
        return;
    }
    if let Some(child) = map.get_mut(first) {
        remove(child, rest);
        if child.as_object().is_some_and(|m| m.is_empty()) {
            map.remove(first);
        }
    }
}

/// Whether two paths overlap: equal, or one inside the other.
fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// The paths of `new` (in scope) whose value differs from `old`.
fn changed(old: Option<&Value>, new: &Value, scope: Scope) -> FieldSet {
    field_set(new, scope)
        .into_iter()
        .filter(|p| old.and_then(|o| lookup(o, p)) != lookup(new, p))
        .collect()
}

/// Reads `metadata.managedFields`.
pub fn entries(object: &Value) -> Vec<Entry> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            subresource: e["subresource"].as_str().map(str::to_string),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

/// Writes `metadata.managedFields`, dropping entries that own nothing.
fn store_entries(object: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({"manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                               "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields)});
            if let Some(s) = e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// `{"f:spec": {"f:replicas": {}}}` for `spec.replicas`.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut at = &mut root;
        for k in path {
            at = at
                .entry(format!("f:{k}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, set: &mut FieldSet) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("f:"))
            .collect();
        if children.is_empty() {
            if !path.is_empty() {
                set.insert(path.clone());
            }
            return;
        }
        for (k, child) in children {
            path.push(k[2..].to_string());
            walk(child, path, set);
            path.pop();
        }
    }
    let mut set = FieldSet::new();
    walk(v, &mut Vec::new(), &mut set);
    set
}

/// Who is writing and when.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub time: &'a str,
    pub scope: Scope,
}

/// Records an Update by `writer` that turns `old` (None: a create) into `new`:
/// the changed fields move to the writer, removed fields leave every set.
pub fn record_update(old: Option<&Value>, new: &mut Value, writer: &Writer) {
    let mut list = old.map(entries).unwrap_or_default();
    let taken = changed(old, new, writer.scope);
    let present = field_set(
        new,
        Scope::Main {
            status_subresource: false,
        },
    );
    for e in &mut list {
        e.fields
            .retain(|p| !taken.contains(p) && present.iter().any(|q| overlaps(p, q)));
    }
    let sub = writer.scope.subresource();
    match list
        .iter_mut()
        .find(|e| e.same_owner(writer.manager, "Update", sub))
    {
        Some(e) if !taken.is_empty() => {
            e.fields.extend(taken);
            e.time = writer.time.to_string();
            e.api_version = writer.api_version.to_string();
        }
        Some(_) => {}
        None => list.push(Entry {
            manager: writer.manager.to_string(),
            operation: "Update".into(),
            subresource: sub.map(str::to_string),
            api_version: writer.api_version.to_string(),
            time: writer.time.to_string(),
            fields: taken,
        }),
    }
    store_entries(new, list);
}

/// A field another manager owns with a different value.
#[derive(Debug, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub path: Path,
}

/// Whether two values are the same as the API server sees them: numbers by
/// value (`1` and `1.0` are one number; YAML and Rust often write the latter).
fn same_value(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(Some(x), Some(y)))
        }
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            x.len() == y.len() && x.iter().all(|(k, v)| same_value(Some(v), y.get(k)))
        }
        (a, b) => a == b,
    }
}

/// The 409 message the API server gives for apply conflicts.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    let lines: Vec<String> = conflicts
        .iter()
        .map(|c| format!("- conflict with \"{}\": .{}", c.manager, c.path.join(".")))
        .collect();
    format!(
        "Apply failed with {} conflict{}: {}",
        conflicts.len(),
        if conflicts.len() == 1 { "" } else { "s" },
        lines.join("\n")
    )
}

/// Server-side apply of `applied` by `writer` onto `current` (None: the object
/// does not exist yet). Returns the object to store, with its managedFields.
pub fn apply(
    current: Option<&Value>,
    applied: &Value,
    writer: &Writer,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let sub = writer.scope.subresource();
    let mut list = current.map(entries).unwrap_or_default();
    let wanted = field_set(applied, writer.scope);
    let empty = json!({});
    let base = current.unwrap_or(&empty);

    // Conflicts: fields someone else owns that the applied config would change.
    let mut conflicts = Vec::new();
    for e in &mut list {
        if e.same_owner(writer.manager, "Apply", sub) {
            continue;
        }
        let clashing: Vec<Path> = e
            .fields
            .iter()
            .filter(|owned| {
                wanted.iter().any(|w| {
                    // Overlapping paths meet at the shorter one.
                    let at = if owned.len() <= w.len() {
                        owned.as_slice()
                    } else {
                        w.as_slice()
                    };
                    overlaps(owned, w) && !same_value(lookup(base, at), lookup(applied, at))
                })
            })
            .cloned()
            .collect();
        if force {
            e.fields.retain(|p| !clashing.contains(p));
        } else {
            conflicts.extend(clashing.into_iter().map(|path| Conflict {
                manager: e.manager.clone(),
                path,
            }));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }

    // Fields this manager applied before and no longer does: removed unless
    // another manager still owns them.
    let mut next = base.clone();
    let mine = list
        .iter()
        .position(|e| e.same_owner(writer.manager, "Apply", sub));
    if let Some(i) = mine {
        let released: Vec<Path> = list[i]
            .fields
            .iter()
            .filter(|p| !wanted.contains(*p))
            .cloned()
            .collect();
        for p in released {
            let kept = list
                .iter()
                .enumerate()
                .any(|(j, e)| j != i && e.fields.iter().any(|q| overlaps(q, &p)));
            if !kept {
                remove(&mut next, &p);
            }
        }
    }
    merge(&mut next, applied, writer.scope, true);

    let entry = Entry {
        manager: writer.manager.to_string(),
        operation: "Apply".into(),
        subresource: sub.map(str::to_string),
        api_version: writer.api_version.to_string(),
        time: writer.time.to_string(),
        fields: wanted,
    };
    match mine {
        Some(i) => list[i] = entry,
        None => list.push(entry),
    }
    store_entries(&mut next, list);
    // A no-op apply leaves the object alone, timestamps included, so it writes nothing.
    if let Some(current) = current
        && without_times(&next) == without_times(current)
    {
        return Ok(current.clone());
    }
    Ok(next)
}

fn without_times(object: &Value) -> Value {
    let mut v = object.clone();
    for e in v["metadata"]["managedFields"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if let Some(e) = e.as_object_mut() {
            e.remove("time");
        }
    }
    v
}

/// Merges the applied configuration into `into`: maps recursively, anything
/// else replaced. At the top level only keys in scope are taken, plus the
/// identifying metadata an apply must carry.
fn merge(into: &mut Value, applied: &Value, scope: Scope, top: bool) {
    let (Some(dst), Some(src)) = (into.as_object_mut(), applied.as_object()) else {
        *into = applied.clone();
        return;
    };
    for (k, v) in src {
        if top && k != "metadata" && !scope.includes(k) && k != "apiVersion" && k != "kind" {
            continue;
        }
        if top && k == "metadata" {
            let meta = dst.entry("metadata").or_insert_with(|| json!({}));
            for (mk, mv) in v.as_object().into_iter().flatten() {
                let identity = matches!(mk.as_str(), "name" | "namespace" | "generateName");
                let owned = matches!(
                    mk.as_str(),
                    "labels" | "annotations" | "ownerReferences" | "finalizers"
                );
                if identity && meta.get(mk).is_none() {
                    meta[mk] = mv.clone();
                } else if owned && matches!(scope, Scope::Main { .. }) {
                    let slot = meta.as_object_mut().expect("metadata is an object");
                    merge(
                        slot.entry(mk.clone()).or_insert_with(|| json!({})),
                        mv,
                        scope,
                        false,
                    );
                }
            }
            continue;
        }
        match (dst.get_mut(k), v) {
            (Some(existing), Value::Object(_)) if existing.is_object() => {
                merge(existing, v, scope, false)
            }
            _ => {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "v1",
            time: "2026-01-01T00:00:00Z",
            scope: Scope::Main {
                status_subresource: true,
            },
        }
    }

    fn path(p: &str) -> Path {
        p.split('.').map(str::to_string).collect()
    }

    #[test]
    fn fields_v1_round_trips() {
        let obj = json!({"spec": {"replicas": 2, "template": {"a": [1], "b": {}}}, "metadata": {"name": "x", "labels": {"k": "v"}}, "status": {"x": 1}});
        let set = field_set(
            &obj,
            Scope::Main {
                status_subresource: true,
            },
        );
        let expected: FieldSet = ["spec.replicas", "spec.template.a", "metadata.labels.k"]
            .iter()
            .map(|p| path(p))
            .collect();
        assert_eq!(set, expected);
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
        assert_eq!(
            to_fields_v1(&set)["f:spec"]["f:replicas"],
            json!({}),
            "leaves are empty objects"
        );
    }

    #[test]
    fn numbers_are_the_same_value_however_they_are_written() {
        assert!(same_value(
            Some(&json!({"min": 1.0, "xs": [2]})),
            Some(&json!({"min": 1, "xs": [2.0]}))
        ));
        assert!(!same_value(
            Some(&json!({"min": 1.5})),
            Some(&json!({"min": 1}))
        ));
        assert!(!same_value(
            Some(&json!({"a": 1})),
            Some(&json!({"a": 1, "b": 2}))
        ));
        assert!(!same_value(Some(&json!(1)), None));
    }

    #[test]
    fn apply_conflicts_with_another_owner_unless_forced() {
        let a = apply(
            None,
            &json!({"metadata": {"name": "x"}, "spec": {"replicas": 1, "x": "a"}}),
            &writer("a"),
            false,
        )
        .unwrap();
        // Same value: shared ownership, no conflict.
        let b = apply(
            Some(&a),
            &json!({"metadata": {"name": "x"}, "spec": {"x": "a"}}),
            &writer("b"),
            false,
        )
        .unwrap();
        let err = apply(
            Some(&b),
            &json!({"metadata": {"name": "x"}, "spec": {"replicas": 3}}),
            &writer("b"),
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "a".into(),
                path: path("spec.replicas")
            }]
        );
        assert!(conflict_message(&err).contains("conflict with \"a\": .spec.replicas"));
        let forced = apply(
            Some(&b),
            &json!({"metadata": {"name": "x"}, "spec": {"replicas": 3}}),
            &writer("b"),
            true,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let owners = entries(&forced);
        let a_entry = owners.iter().find(|e| e.manager == "a").unwrap();
        assert!(
            !a_entry.fields.contains(&path("spec.replicas")),
            "force takes the field over"
        );
        assert!(a_entry.fields.contains(&path("spec.x")));
    }

    #[test]
    fn apply_removes_fields_the_manager_dropped_unless_shared() {
        let v1 = apply(None, &json!({"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}, "spec": {"p": 1, "q": 2}}), &writer("op"), false).unwrap();
        let shared = apply(
            Some(&v1),
            &json!({"metadata": {"name": "x"}, "spec": {"q": 2}}),
            &writer("other"),
            false,
        )
        .unwrap();
        let v2 = apply(
            Some(&shared),
            &json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {}}),
            &writer("op"),
            false,
        )
        .unwrap();
        assert_eq!(v2["metadata"]["labels"], json!({"a": "1"}));
        let v3 = apply(
            Some(&v2),
            &json!({"metadata": {"name": "x"}}),
            &writer("op"),
            false,
        )
        .unwrap();
        assert!(
            v3["metadata"].get("labels").is_none(),
            "emptied maps go too: {v3}"
        );
        assert_eq!(
            v2["spec"],
            json!({"q": 2}),
            "p dropped; q still owned by another manager"
        );
    }

    #[test]
    fn updates_move_changed_fields_to_the_writer() {
        let v1 = apply(
            None,
            &json!({"metadata": {"name": "x"}, "spec": {"replicas": 1, "x": "a"}}),
            &writer("op"),
            false,
        )
        .unwrap();
        let mut v2 = v1.clone();
        v2["spec"]["replicas"] = json!(5);
        record_update(Some(&v1), &mut v2, &writer("kubectl"));
        let owners = entries(&v2);
        let kubectl = owners.iter().find(|e| e.manager == "kubectl").unwrap();
        assert_eq!(kubectl.operation, "Update");
        assert_eq!(
            kubectl.fields,
            [path("spec.replicas")].into_iter().collect()
        );
        let op = owners.iter().find(|e| e.manager == "op").unwrap();
        assert!(!op.fields.contains(&path("spec.replicas")));
        // The applier now conflicts on replicas if it wants a different value.
        assert!(
            apply(
                Some(&v2),
                &json!({"metadata": {"name": "x"}, "spec": {"replicas": 1, "x": "a"}}),
                &writer("op"),
                false
            )
            .is_err()
        );
    }

    #[test]
    fn status_scope_touches_only_status() {
        let w = Writer {
            scope: Scope::Status,
            ..writer("ctl")
        };
        let base = json!({"metadata": {"name": "x"}, "spec": {"a": 1}});
        let out = apply(Some(&base), &json!({"metadata": {"name": "x", "labels": {"l": "1"}}, "spec": {"a": 9}, "status": {"ready": 2}}), &w, false).unwrap();
        assert_eq!(out["spec"]["a"], 1);
        assert_eq!(out["status"]["ready"], 2);
        assert!(out["metadata"].get("labels").is_none());
        assert_eq!(entries(&out)[0].subresource.as_deref(), Some("status"));
    }
}
