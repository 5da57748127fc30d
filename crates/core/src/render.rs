//! Render (`docs/api.md`): set + slice + revision + role → the child LeaderWorkerSet.
//! Plugin patches are applied on top of this output by the caller.

use disagg_api::keys;
use disagg_api::lws::{LeaderWorkerSet, LeaderWorkerSetSpec};
use disagg_api::set::{DisaggregatedSet, PlacementType, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// `<set>-<slice>-<rev8>-<role>`.
pub fn child_name(set: &str, slice: i32, revision: &str, role: &str) -> String {
    format!("{set}-{slice}-{revision}-{role}")
}

/// Upstream's name for a slice-0 child made before slices: `<set>-<rev8>-<role>`.
/// Such children are adopted as slice 0; new children always get [`child_name`].
pub fn legacy_child_name(set: &str, revision: &str, role: &str) -> String {
    format!("{set}-{revision}-{role}")
}

/// The system labels of a child and its pods.
pub fn system_labels(
    set: &str,
    role: &str,
    slice: i32,
    revision: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (keys::NAME.to_string(), set.to_string()),
        (keys::ROLE.to_string(), role.to_string()),
        (keys::SLICE.to_string(), slice.to_string()),
        (keys::REVISION.to_string(), revision.to_string()),
    ])
}

/// The controller ownerReference that ties a child to its set.
pub fn owner_reference(set: &DisaggregatedSet) -> OwnerReference {
    OwnerReference {
        api_version: DisaggregatedSet::api_version(&()).into_owned(),
        kind: DisaggregatedSet::kind(&()).into_owned(),
        name: set.metadata.name.clone().unwrap_or_default(),
        uid: set.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether the object with uid `owner_uid` is the controller of `meta`'s object.
pub fn is_controlled_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == owner_uid)
}

/// The child LWS for one role of one slice at one revision, with `replicas` groups.
pub fn render_child(
    set: &DisaggregatedSet,
    role: &Role,
    slice: i32,
    revision: &str,
    replicas: i32,
) -> LeaderWorkerSet {
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let system = system_labels(set_name, &role.name, slice, revision);

    let meta = role.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels;
    labels.extend(system.clone());
    let app = app_label(set_name, slice, &role.name);
    labels.entry(APP.to_string()).or_insert_with(|| app.clone());

    let mut spec: LeaderWorkerSetSpec = role.spec.clone();
    spec.replicas = replicas;
    let placement = placement_terms(set, set_name, slice);
    let template = &mut spec.leader_worker_template;
    for pod in std::iter::once(&mut template.worker_template.0)
        .chain(template.leader_template.as_mut().map(|t| &mut t.0))
    {
        add_pod_labels(pod, &system, &app);
        if let Some(terms) = &placement {
            add_affinity(pod, terms);
        }
    }

    LeaderWorkerSet {
        metadata: ObjectMeta {
            name: Some(child_name(set_name, slice, revision, &role.name)),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!meta.annotations.is_empty()).then_some(meta.annotations),
            owner_references: Some(vec![owner_reference(set)]),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

fn add_pod_labels(pod: &mut Map<String, Value>, system: &BTreeMap<String, String>, app: &str) {
    let labels = object_at(object_at(pod, "metadata"), "labels");
    for (k, v) in system {
        labels.insert(k.clone(), Value::String(v.clone()));
    }
    labels
        .entry(APP)
        .or_insert_with(|| Value::String(app.to_string()));
}

/// The `app` label upstream's controller sets on children and their pods.
const APP: &str = "app";

/// Upstream's `app` value, `<set>-<slice>-<role>`: selectors written for
/// upstream's pods find ours. A user's own `app` is kept (upstream overrides
/// it); adoption ignores `app` either way.
pub fn app_label(set: &str, slice: i32, role: &str) -> String {
    format!("{set}-{slice}-{role}")
}

/// Required pod (anti-)affinity terms for the set's placement policy.
struct PlacementTerms {
    affinity: Vec<Value>,
    anti_affinity: Vec<Value>,
}

fn placement_terms(set: &DisaggregatedSet, set_name: &str, slice: i32) -> Option<PlacementTerms> {
    let policy = set.spec.placement_policy.as_ref()?;
    let topology = policy.topology.as_deref()?;
    let slice = slice.to_string();
    // A slice's roles share one domain.
    let same_slice = json!({
        "topologyKey": topology,
        "labelSelector": {"matchLabels": {keys::NAME: set_name, keys::SLICE: slice}},
    });
    // No other slice of this set in that domain.
    let other_slices = json!({
        "topologyKey": topology,
        "labelSelector": {"matchExpressions": [
            {"key": keys::NAME, "operator": "In", "values": [set_name]},
            {"key": keys::SLICE, "operator": "NotIn", "values": [slice]},
        ]},
    });
    match policy.type_ {
        PlacementType::None => None,
        PlacementType::ExclusiveSlice => Some(PlacementTerms {
            affinity: vec![same_slice],
            anti_affinity: vec![other_slices],
        }),
        // The domain belongs to this slice alone: no pod of any other set either.
        PlacementType::ExclusiveTopology => Some(PlacementTerms {
            affinity: vec![same_slice],
            anti_affinity: vec![
                other_slices,
                json!({
                    "topologyKey": topology,
                    "labelSelector": {"matchExpressions": [
                        {"key": keys::NAME, "operator": "Exists"},
                        {"key": keys::NAME, "operator": "NotIn", "values": [set_name]},
                    ]},
                }),
            ],
        }),
    }
}

fn add_affinity(pod: &mut Map<String, Value>, terms: &PlacementTerms) {
    let affinity = object_at(object_at(pod, "spec"), "affinity");
    for (kind, add) in [
        ("podAffinity", &terms.affinity),
        ("podAntiAffinity", &terms.anti_affinity),
    ] {
        let required = object_at(affinity, kind)
            .entry("requiredDuringSchedulingIgnoredDuringExecution")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !required.is_array() {
            *required = Value::Array(Vec::new());
        }
        if let Value::Array(list) = required {
            list.extend(add.iter().cloned());
        }
    }
}

/// The object at `key`, created (or replaced, if it is not an object) as needed.
fn object_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("just made an object")
}
