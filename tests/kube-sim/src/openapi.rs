//! `/openapi/v3`: the index of group-versions and one OpenAPI 3 document per
//! group-version.
//!
//! What kubectl reads from it: whether the PATCH operation of a kind takes the
//! `fieldValidation` query parameter. It does for every kind here, so kubectl
//! leaves validation to the server (`fieldValidation=Strict`), which checks
//! CRD-defined kinds against their schema. The documents carry CRD schemas as
//! they were registered; built-in kinds get an open object schema, so
//! client-side tools that read schemas (`kubectl explain`) learn little from them.

use crate::store::{ResourceId, ResourceInfo};
use serde_json::{Map, Value, json};
use std::hash::{Hash, Hasher};

/// A group-version as the index names it: `api/v1`, `apis/{group}/{version}`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `io.k8s.api.core.v1.ConfigMap`, `io.x-k8s.leaderworkerset.v1.LeaderWorkerSet`.
fn schema_name(group: &str, version: &str, kind: &str) -> String {
    if group.is_empty() {
        return format!("io.k8s.api.core.v1.{kind}");
    }
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

/// One group-version's document. `schema_of` gives a CRD kind's schema.
pub fn document(
    group: &str,
    version: &str,
    resources: &[(ResourceId, ResourceInfo)],
    schema_of: impl Fn(&ResourceId) -> Option<Value>,
) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for (id, info) in resources
        .iter()
        .filter(|(id, _)| id.group == group && id.version == version)
    {
        let gvk = json!([{"group": group, "version": version, "kind": info.kind}]);
        let name = schema_name(group, version, &info.kind);
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        let query = |n: &str| json!({"name": n, "in": "query", "schema": {"type": "string"}, "uniqueItems": true});
        let body = json!({"content": {"application/json": {"schema": reference}}});
        let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        let operation = |action: &str, with_body: bool, params: &[&str]| {
            let mut op = json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk[0],
                                "parameters": params.iter().map(|p| query(p)).collect::<Vec<_>>(),
                                "responses": ok});
            if with_body {
                op["requestBody"] = body.clone();
            }
            op
        };
        let prefix = format!("/{}", gv_path(group, version));
        let collection = if info.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", id.plural)
        } else {
            format!("{prefix}/{}", id.plural)
        };
        let writes = ["dryRun", "fieldManager", "fieldValidation"];
        paths.insert(
            collection.clone(),
            json!({"get": operation("list", false, &["labelSelector", "fieldSelector", "limit", "continue", "watch", "resourceVersion"]),
                   "post": operation("post", true, &writes)}),
        );
        let item = json!({"get": operation("get", false, &[]),
                          "put": operation("put", true, &writes),
                          "patch": operation("patch", true, &["dryRun", "fieldManager", "fieldValidation", "force"]),
                          "delete": operation("delete", false, &["propagationPolicy"])});
        paths.insert(format!("{collection}/{{name}}"), item.clone());
        if info.status_subresource {
            paths.insert(format!("{collection}/{{name}}/status"), item);
        }
        let mut schema = schema_of(id).unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        schema["x-kubernetes-group-version-kind"] = gvk;
        schemas.insert(name, schema);
    }
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes (kube-sim)", "version": "v1.33.0"},
           "paths": paths, "components": {"schemas": schemas}})
}

/// The index: each group-version's document URL, with a hash of its content so
/// that clients caching by URL see changes.
pub fn index(documents: &[(String, String, Value)]) -> Value {
    let mut paths = Map::new();
    for (group, version, doc) in documents {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        doc.to_string().hash(&mut hasher);
        let path = gv_path(group, version);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={:016X}", hasher.finish())}),
        );
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_operations_name_their_kind_and_take_field_validation() {
        let resources = vec![(
            ResourceId::new("leaderworkerset.x-k8s.io", "v1", "leaderworkersets"),
            ResourceInfo {
                kind: "LeaderWorkerSet".into(),
                namespaced: true,
                status_subresource: true,
                short_names: vec![],
            },
        )];
        let doc = document("leaderworkerset.x-k8s.io", "v1", &resources, |_| {
            Some(json!({"type": "object"}))
        });
        let patch = &doc["paths"]["/apis/leaderworkerset.x-k8s.io/v1/namespaces/{namespace}/leaderworkersets/{name}"]
            ["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "LeaderWorkerSet"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        let schema = &doc["components"]["schemas"]["io.x-k8s.leaderworkerset.v1.LeaderWorkerSet"];
        assert_eq!(schema["type"], "object");
        let index = index(&[("leaderworkerset.x-k8s.io".into(), "v1".into(), doc)]);
        let url = index["paths"]["apis/leaderworkerset.x-k8s.io/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/leaderworkerset.x-k8s.io/v1?hash="));
    }
}
