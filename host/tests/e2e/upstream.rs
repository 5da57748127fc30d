//! Children built exactly the way upstream's Go controller builds them
//! (kubernetes-sigs/lws `pkg/controllers/disaggregatedset/lws_manager.go`,
//! `Create`, and `pkg/utils/disaggregatedset`), as the JSON its client sends:
//!
//! * name `<set>-<slice>-<rev>-<role>`, or before slices `<set>-<rev>-<role>`;
//! * labels: the role's metadata labels, then the system labels over them
//!   (`app: <set>-<slice>-<role>` — before slices `<set>-<role>` and no slice
//!   label — plus name, role, slice, revision): the system's `app` wins;
//! * the role's whole LWS spec copied (`rolloutStrategy` included), replicas
//!   overridden; the system labels merged into both pod templates the same
//!   way, their annotations copied, placement affinity terms appended
//!   (`matchExpressions` form);
//! * Go's encoder: `creationTimestamp: null` in each template's metadata,
//!   `resources: {}` on every container that has none;
//! * one controller ownerReference, without `blockOwnerDeletion`.
//!
//! The revision is whatever the test says: upstream hashes Go's JSON of the
//! Go types, which no other implementation reproduces.

use disagg::api::keys;
use disagg::api::lws::LeaderWorkerSet;
use disagg::api::set::DisaggregatedSet;
use serde_json::{Map, Value, json};

/// Upstream's child of `set`'s role `role` in `slice` (`None`: a pre-slices
/// slice-0 child) at `revision` with `replicas` groups.
pub fn child(
    set: &DisaggregatedSet,
    role: usize,
    slice: Option<i32>,
    revision: &str,
    replicas: i32,
) -> LeaderWorkerSet {
    let set_name = set.metadata.name.clone().unwrap();
    let spec_role = &set.spec.roles[role];
    let role_name = spec_role.name.as_str();
    let (name, mut system) = match slice {
        Some(s) => (
            format!("{set_name}-{s}-{revision}-{role_name}"),
            json!({"app": format!("{set_name}-{s}-{role_name}"),
                   keys::SLICE: s.to_string()}),
        ),
        None => (
            format!("{set_name}-{revision}-{role_name}"),
            json!({"app": format!("{set_name}-{role_name}")}),
        ),
    };
    system[keys::ROLE] = json!(role_name);
    system[keys::NAME] = json!(set_name);
    system[keys::REVISION] = json!(revision);
    let system = system.as_object().unwrap().clone();

    let mut spec = serde_json::to_value(&spec_role.spec).unwrap();
    spec["replicas"] = json!(replicas);
    let template = spec["leaderWorkerTemplate"].as_object_mut().unwrap();
    for key in ["workerTemplate", "leaderTemplate"] {
        let Some(Value::Object(pod)) = template.get_mut(key) else {
            continue;
        };
        let meta = pod
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .unwrap();
        meta.insert(
            "labels".into(),
            Value::Object(merged(meta.get("labels"), &system)),
        );
        meta.insert("creationTimestamp".into(), Value::Null);
        for c in pod["spec"]["containers"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            c.as_object_mut()
                .unwrap()
                .entry("resources")
                .or_insert_with(|| json!({}));
        }
        if let Some(policy) = &set.spec.placement_policy
            && policy.type_ != disagg::api::set::PlacementType::None
            && let Some(topology) = &policy.topology
        {
            append_placement(pod, &set_name, slice.unwrap_or(0), topology);
        }
    }

    let role_meta = spec_role.metadata.clone().unwrap_or_default();
    let user_labels = serde_json::to_value(&role_meta.labels).unwrap();
    let mut metadata = json!({
        "name": name,
        "namespace": set.metadata.namespace,
        "labels": merged(Some(&user_labels), &system),
        "ownerReferences": [{
            "apiVersion": "disaggregatedset.x-k8s.io/v1",
            "kind": "DisaggregatedSet",
            "name": set_name,
            "uid": set.metadata.uid,
            "controller": true,
        }],
    });
    if !role_meta.annotations.is_empty() {
        metadata["annotations"] = serde_json::to_value(&role_meta.annotations).unwrap();
    }
    serde_json::from_value(json!({
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": metadata,
        "spec": spec,
    }))
    .unwrap()
}

/// `mergeLabels(user, system)`: the system's win.
fn merged(user: Option<&Value>, system: &Map<String, Value>) -> Map<String, Value> {
    let mut out = user.and_then(Value::as_object).cloned().unwrap_or_default();
    out.extend(system.clone());
    out
}

/// `SetPlacementAffinities` for ExclusiveSlice: co-locate the slice, repel the set's other slices.
fn append_placement(pod: &mut Map<String, Value>, set: &str, slice: i32, topology: &str) {
    let slice = slice.to_string();
    let mut spread = vec![json!({"key": keys::NAME, "operator": "In", "values": [set]})];
    if slice == "0" {
        spread.push(json!({"key": keys::SLICE, "operator": "Exists"}));
    }
    spread.push(json!({"key": keys::SLICE, "operator": "NotIn", "values": [slice]}));
    let spec = pod["spec"].as_object_mut().unwrap();
    let affinity = spec.entry("affinity").or_insert_with(|| json!({}));
    let push = |affinity: &mut Value, kind: &str, term: Value| {
        let list = &mut affinity[kind]["requiredDuringSchedulingIgnoredDuringExecution"];
        if !list.is_array() {
            *list = json!([]);
        }
        list.as_array_mut().unwrap().push(term);
    };
    push(
        affinity,
        "podAffinity",
        json!({"labelSelector": {"matchExpressions": [
            {"key": keys::NAME, "operator": "In", "values": [set]},
            {"key": keys::SLICE, "operator": "In", "values": [slice]},
        ]}, "topologyKey": topology}),
    );
    push(
        affinity,
        "podAntiAffinity",
        json!({"labelSelector": {"matchExpressions": spread}, "topologyKey": topology}),
    );
}
