//! Discovery (`/api`, `/apis`, aggregated and per group/version) and `/openapi/v3`.

use super::*;

/// Every served (group, version), core ("") included, in order.
pub(super) fn group_versions(store: &Store) -> Vec<(String, String)> {
    let mut gvs: Vec<(String, String)> = store
        .resources()
        .into_iter()
        .map(|(id, _)| (id.group, id.version))
        .collect();
    gvs.sort();
    gvs.dedup();
    gvs
}

pub(super) fn openapi_document(sim: &Sim, group: &str, version: &str) -> Value {
    crate::openapi::document(group, version, &sim.store.resources(), |id| {
        sim.custom(id).and_then(|c| c.schema.map(|s| (*s).clone()))
    })
}

pub(super) fn group_list(store: &Store) -> Value {
    let groups: Vec<Value> = group_versions(store)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The media type of aggregated discovery (`apidiscovery.k8s.io/v2`).
pub(super) const AGGREGATED_DISCOVERY: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub(super) fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|t| {
                let t = t.replace(' ', "");
                t.contains("g=apidiscovery.k8s.io")
                    && t.contains("v=v2;")
                    && t.contains("as=APIGroupDiscoveryList")
            })
        })
}

/// Every group (core only for `/api`, the named groups for `/apis`) with its
/// versions and resources, as `kubectl` asks for first.
pub(super) fn aggregated_discovery(sim: &Sim, core: bool) -> Value {
    let verbs = json!([
        "create", "delete", "get", "list", "patch", "update", "watch"
    ]);
    let items: Vec<Value> = group_versions(&sim.store)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .fold(Vec::<(String, Vec<String>)>::new(), |mut acc, (g, v)| {
            match acc.iter_mut().find(|(name, _)| *name == g) {
                Some((_, versions)) => versions.push(v),
                None => acc.push((g, vec![v])),
            }
            acc
        })
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| {
                    let resources: Vec<Value> = sim
                        .store
                        .resources()
                        .into_iter()
                        .filter(|(id, _)| id.group == group && id.version == *version)
                        .map(|(id, info)| {
                            let kind = json!({"group": group, "version": version, "kind": info.kind});
                            let mut subresources = Vec::new();
                            if info.status_subresource {
                                subresources.push(json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}));
                            }
                            if sim.custom(&id).and_then(|c| c.scale).is_some() {
                                subresources.push(json!({"subresource": "scale",
                                    "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                                    "verbs": ["get", "patch", "update"]}));
                            }
                            json!({"resource": id.plural, "responseKind": kind,
                                   "scope": if info.namespaced { "Namespaced" } else { "Cluster" },
                                   "singularResource": info.kind.to_lowercase(), "verbs": verbs,
                                   "shortNames": info.short_names, "subresources": subresources})
                        })
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

pub(super) fn resource_list(sim: &Sim, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = sim
        .store
        .resources()
        .into_iter()
        .filter(|(id, _)| id.group == group && id.version == version)
        .flat_map(|(id, info)| {
            let main = json!({"name": id.plural, "singularName": info.kind.to_lowercase(), "namespaced": info.namespaced, "kind": info.kind,
                "shortNames": info.short_names, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]});
            let status = info.status_subresource.then(|| {
                json!({"name": format!("{}/status", id.plural), "singularName": "", "namespaced": info.namespaced, "kind": info.kind, "verbs": ["get", "patch", "update"]})
            });
            let scale = sim.custom(&id).and_then(|c| c.scale).map(|_| {
                json!({"name": format!("{}/scale", id.plural), "singularName": "", "namespaced": info.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
            });
            std::iter::once(main).chain(status).chain(scale)
        })
        .collect();
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}
