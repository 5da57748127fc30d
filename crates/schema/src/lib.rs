//! Checking and defaulting JSON against a CRD's structural schema, the way the
//! API server does before it stores a custom resource: null pruning, defaults,
//! types, enums, bounds, patterns, required fields, list-map keys, and (as
//! with kubectl's strict field validation) unknown fields.
//!
//! The CLI uses it so that an offline render sees exactly what the operator
//! would see after `kubectl apply`; tests use it to compare our CRD with
//! upstream's. CEL rules are not evaluated here; `validate` covers ours.

use regex::Regex;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// A value that does not fit its schema, with the JSON path to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "<root>"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Checks `value` (a whole object: apiVersion, kind, metadata, …) against a
/// CRD's `openAPIV3Schema`. Root `metadata` is ObjectMeta and is not checked here.
pub fn check(schema: &Value, value: &Value) -> Vec<SchemaError> {
    let mut errors = Vec::new();
    Checker {
        errors: &mut errors,
    }
    .check(schema, value, &mut String::new(), true);
    errors
}

/// Applies schema defaults in place, top-down, after dropping nulls of
/// non-nullable fields (the API server's order).
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            if let Some(props) = props {
                map.retain(|k, v| !(v.is_null() && props.get(k).is_some_and(|s| !nullable(s))));
                for (key, sub) in props {
                    if !map.contains_key(key)
                        && let Some(default) = sub.get("default")
                    {
                        map.insert(key.clone(), default.clone());
                    }
                }
                for (key, v) in map.iter_mut() {
                    if let Some(sub) = props.get(key) {
                        apply_defaults(sub, v);
                    }
                }
            } else if let Some(sub) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for v in map.values_mut() {
                    apply_defaults(sub, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for v in items {
                    apply_defaults(sub, v);
                }
            }
        }
        _ => {}
    }
}

/// Removes fields the schema does not declare (the API server's pruning),
/// except where the schema preserves unknown fields, and root `apiVersion`,
/// `kind` and `metadata`. Returns the paths removed.
pub fn prune(schema: &Value, value: &mut Value) -> Vec<String> {
    let mut removed = Vec::new();
    prune_at(schema, value, "", true, &mut removed);
    removed
}

fn prune_at(schema: &Value, value: &mut Value, path: &str, root: bool, removed: &mut Vec<String>) {
    let flag = |key: &str| schema.get(key).and_then(Value::as_bool) == Some(true);
    let preserve =
        flag("x-kubernetes-preserve-unknown-fields") || flag("x-kubernetes-embedded-resource");
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = props
                    .and_then(|p| p.get(&key))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match sub {
                    Some(sub) => {
                        if let Some(v) = map.get_mut(&key) {
                            prune_at(sub, v, &child_path, false, removed);
                        }
                    }
                    None if preserve || additional.and_then(Value::as_bool) == Some(true) => {}
                    None => {
                        map.remove(&key);
                        removed.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, v) in items.iter_mut().enumerate() {
                    prune_at(sub, v, &format!("{path}[{i}]"), false, removed);
                }
            }
        }
        _ => {}
    }
}

fn nullable(schema: &Value) -> bool {
    schema.get("nullable").and_then(Value::as_bool) == Some(true)
}

struct Checker<'a> {
    errors: &'a mut Vec<SchemaError>,
}

impl Checker<'_> {
    fn fail(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(SchemaError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn check(&mut self, schema: &Value, value: &Value, path: &mut String, root: bool) {
        if value.is_null() {
            // Nulls of non-nullable fields are dropped by the server, not rejected.
            return;
        }
        let bool_flag = |key: &str| schema.get(key).and_then(Value::as_bool) == Some(true);
        let int_or_string = bool_flag("x-kubernetes-int-or-string");
        if int_or_string {
            if !(value.is_string() || is_integer(value)) {
                self.fail(
                    path,
                    format!("must be an integer or a string, got {}", kind(value)),
                );
                return;
            }
        } else if let Some(ty) = schema.get("type").and_then(Value::as_str)
            && !type_matches(ty, value)
        {
            self.fail(path, format!("must be of type {ty}, got {}", kind(value)));
            return;
        }
        self.check_value_constraints(schema, value, path);
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(branches) = schema.get(key).and_then(Value::as_array) {
                let passing = branches
                    .iter()
                    .filter(|b| check(b, value).is_empty() || branch_only_types_ok(b, value))
                    .count();
                let ok = match key {
                    "allOf" => passing == branches.len(),
                    "anyOf" => passing > 0,
                    _ => passing == 1,
                };
                if !ok {
                    self.fail(path, format!("does not satisfy {key} of its schema"));
                }
            }
        }
        match value {
            Value::Object(map) => self.check_object(
                schema,
                map,
                path,
                root,
                bool_flag("x-kubernetes-preserve-unknown-fields")
                    || bool_flag("x-kubernetes-embedded-resource"),
            ),
            Value::Array(items) => self.check_array(schema, items, path),
            _ => {}
        }
    }

    fn check_value_constraints(&mut self, schema: &Value, value: &Value, path: &str) {
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            self.fail(
                path,
                format!(
                    "unsupported value {value}: supported values: {}",
                    list.join(", ")
                ),
            );
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let exclusive =
                    schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
                if n < min || (exclusive && n == min) {
                    self.fail(
                        path,
                        format!("must be greater than or equal to {min}, is {value}"),
                    );
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let exclusive =
                    schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
                if n > max || (exclusive && n == max) {
                    self.fail(
                        path,
                        format!("must be less than or equal to {max}, is {value}"),
                    );
                }
            }
        }
        if let Some(s) = value.as_str() {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                self.fail(path, format!("must be at least {min} characters long"));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                self.fail(
                    path,
                    format!("may not be more than {max} characters long, is {len}"),
                );
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && let Some(re) = compiled(pattern)
                && !re.is_match(s)
            {
                self.fail(path, format!("{s:?} does not match the pattern {pattern}"));
            }
        }
    }

    fn check_object(
        &mut self,
        schema: &Value,
        map: &Map<String, Value>,
        path: &mut String,
        root: bool,
        preserve: bool,
    ) {
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(key) = req.as_str()
                && map.get(key).is_none_or(Value::is_null)
            {
                self.fail(&join(path, key), "required value");
            }
        }
        let additional = schema.get("additionalProperties");
        for (key, v) in map {
            let len = path.len();
            path.push_str(&join_suffix(len == 0, key));
            if let Some(sub) = props.and_then(|p| p.get(key)) {
                if !(root && key == "metadata") {
                    self.check(sub, v, path, false);
                }
            } else if let Some(sub) = additional.filter(|a| a.is_object()) {
                self.check(sub, v, path, false);
            } else if !(preserve
                || additional.and_then(Value::as_bool) == Some(true)
                || (root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata")))
            {
                self.fail(path, "unknown field");
            }
            path.truncate(len);
        }
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
            && map.len() as u64 > max
        {
            self.fail(path, format!("must have at most {max} properties"));
        }
    }

    fn check_array(&mut self, schema: &Value, items: &[Value], path: &mut String) {
        let n = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && n < min
        {
            self.fail(path, format!("must have at least {min} items, has {n}"));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && n > max
        {
            self.fail(path, format!("must have at most {max} items, has {n}"));
        }
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => {
                let keys: Vec<&str> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let key: Vec<String> = keys
                        .iter()
                        .map(|k| item.get(k).map(Value::to_string).unwrap_or_default())
                        .collect();
                    if !seen.insert(key.clone()) {
                        self.fail(
                            &format!("{path}[{i}]"),
                            format!("duplicate entry with key {}", key.join(",")),
                        );
                    }
                }
            }
            Some("set") => {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        self.fail(&format!("{path}[{i}]"), format!("duplicate value {item}"));
                    }
                }
            }
            _ => {}
        }
        if let Some(sub) = schema.get("items") {
            for (i, v) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                self.check(sub, v, path, false);
                path.truncate(len);
            }
        }
    }
}

/// In `anyOf` branches such as `[{type: integer}, {type: string}]` only the type matters.
fn branch_only_types_ok(branch: &Value, value: &Value) -> bool {
    branch
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| type_matches(t, value))
        && branch.as_object().is_some_and(|o| o.len() == 1)
}

fn type_matches(ty: &str, value: &Value) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => is_integer(value),
        "number" => value.is_number(),
        _ => true,
    }
}

fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, key: &str) -> String {
    format!("{path}{}", join_suffix(path.is_empty(), key))
}

fn join_suffix(at_root: bool, key: &str) -> String {
    if at_root {
        key.to_string()
    } else {
        format!(".{key}")
    }
}

/// Patterns are compiled once; a pattern the regex crate cannot compile is skipped.
fn compiled(pattern: &str) -> Option<Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().ok()?;
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| Regex::new(pattern).ok())
        .clone()
}
