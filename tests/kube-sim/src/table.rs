//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks
//! for (`Accept: application/json;as=Table;…`). CRD-defined resources get their
//! `additionalPrinterColumns` (after Name); built-in kinds get Name and Age.

use serde_json::{Value, json};

/// One column: its definition, and where its value comes from.
#[derive(Clone, Debug)]
struct Column {
    definition: Value,
    path: Option<serde_json_path::JsonPath>,
    date: bool,
}

/// The columns of a resource's table.
#[derive(Clone, Debug)]
pub struct Columns(Vec<Column>);

/// The columns `kubectl get events` shows, as printer columns.
pub fn event_columns() -> Value {
    json!([
        // kubectl falls back to eventTime, which is what events.k8s.io writers set.
        {"name": "Last Seen", "type": "date", "jsonPath": ".eventTime"},
        {"name": "Type", "type": "string", "jsonPath": ".type"},
        {"name": "Reason", "type": "string", "jsonPath": ".reason"},
        {"name": "Object", "type": "string", "jsonPath": ".involvedObject.name"},
        {"name": "Message", "type": "string", "jsonPath": ".message"},
    ])
}

/// Whether a request's Accept header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

impl Columns {
    /// From a CRD version's `additionalPrinterColumns` (None: Name and Age).
    pub fn new(printer_columns: Option<&Value>) -> Columns {
        let name = Column {
            definition: json!({"name": "Name", "type": "string", "format": "name", "priority": 0,
                               "description": "Name must be unique within a namespace."}),
            path: None,
            date: false,
        };
        let age =
            json!([{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]);
        let specs = printer_columns
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| age.as_array().expect("a literal array"));
        let mut columns = vec![name];
        for spec in specs {
            // Kubernetes JSONPath (`.a.b[?(@.x=="y")].c`) is RFC 9535 after a `$`.
            let path = spec["jsonPath"]
                .as_str()
                .and_then(|p| serde_json_path::JsonPath::parse(&format!("${p}")).ok());
            let type_ = spec["type"].as_str().unwrap_or("string");
            columns.push(Column {
                definition: json!({"name": spec["name"], "type": type_,
                                   "format": spec["format"].as_str().unwrap_or_default(),
                                   "description": spec["description"].as_str().unwrap_or_default(),
                                   "priority": spec["priority"].as_i64().unwrap_or(0)}),
                path,
                date: type_ == "date",
            });
        }
        Columns(columns)
    }

    fn row(&self, object: &Value, now: jiff::Timestamp) -> Value {
        let cells: Vec<Value> = self
            .0
            .iter()
            .map(|c| match &c.path {
                None => object["metadata"]["name"].clone(),
                Some(path) => {
                    let found = path.query(object).first().cloned();
                    match found {
                        Some(Value::String(s)) if c.date => json!(age(&s, now)),
                        Some(v) => v,
                        None => Value::Null,
                    }
                }
            })
            .collect();
        json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                          "metadata": object["metadata"]}})
    }

    /// A Table of `objects`, at list version `resource_version`.
    pub fn table(&self, objects: &[Value], resource_version: &str) -> Value {
        let now = jiff::Timestamp::now();
        let definitions: Vec<Value> = self.0.iter().map(|c| c.definition.clone()).collect();
        let rows: Vec<Value> = objects.iter().map(|o| self.row(o, now)).collect();
        json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
               "columnDefinitions": definitions, "rows": rows})
    }
}

/// How long ago an RFC 3339 time was, as kubectl shows ages (`42s`, `3m5s`, `2d`).
fn age(timestamp: &str, now: jiff::Timestamp) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "<invalid>".into();
    };
    let s = (now.as_second() - then.as_second()).max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_columns_follow_json_paths() {
        let columns = Columns::new(Some(&json!([
            {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Available", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Available\")].status"},
            {"name": "Missing", "type": "string", "jsonPath": ".status.nothing"},
        ])));
        let object = json!({"metadata": {"name": "x"}, "spec": {"replicas": 3},
            "status": {"conditions": [{"type": "Progressing", "status": "False"}, {"type": "Available", "status": "True"}]}});
        let table = columns.table(&[object], "7");
        assert_eq!(table["rows"][0]["cells"], json!(["x", 3, "True", null]));
        assert_eq!(table["columnDefinitions"][0]["name"], "Name");
        assert_eq!(table["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now: jiff::Timestamp = "2026-01-10T12:00:00Z".parse().unwrap();
        assert_eq!(age("2026-01-10T11:59:18Z", now), "42s");
        assert_eq!(age("2026-01-10T11:56:55Z", now), "3m5s");
        assert_eq!(age("2026-01-10T10:00:00Z", now), "120m");
        assert_eq!(age("2026-01-08T12:00:00Z", now), "2d0h");
        assert_eq!(age("2025-12-01T12:00:00Z", now), "40d");
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
    }
}
