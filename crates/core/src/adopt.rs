//! Adoption by template equality (`docs/api.md`, "Taking over children"):
//! when no child carries the set's revision, but the children of some other
//! revision have exactly the templates the set asks for, that revision *is*
//! the set's, whatever its hash says — as a Deployment finds its ReplicaSet by
//! template rather than by name.
//!
//! This is what lets the operator take over sets whose children upstream's Go
//! controller created (its revision hashes come from Go's JSON of the Go types,
//! which no other implementation reproduces), and what makes an upgrade of the
//! operator roll nothing even if a hash input changes (a dependency's
//! serialisation, a default plugin's digest).
//!
//! Equal means equal after removing only what a controller adds: the system
//! labels (ours and upstream's `app`) and the placement affinity terms (those
//! that select on the set-name label), then the defaults the API server or
//! LWS webhook fill in (empty objects and lists, `null`s, the deprecated
//! `Default` restart policy).

use crate::execute::Child;
use crate::revision::canonical_json;
use disagg_api::keys;
use disagg_api::lws::{LeaderWorkerTemplate, RestartPolicy};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// Labels a controller adds to a child's pod templates: ours, and upstream's `app`.
const CONTROLLER_LABELS: [&str; 5] = [keys::NAME, keys::ROLE, keys::SLICE, keys::REVISION, "app"];

/// The fingerprint of a child's `leaderWorkerTemplate`: 16 hex digits of a
/// sha256 over its canonical JSON, with what controllers and defaulting add
/// removed.
pub fn fingerprint(template: &LeaderWorkerTemplate) -> String {
    let mut template = template.clone();
    if template.restart_policy == RestartPolicy::Default {
        // The LWS webhook rewrites the deprecated value.
        template.restart_policy = RestartPolicy::None;
    }
    let mut value = serde_json::to_value(&template).expect("a template serialises");
    if let Value::Object(t) = &mut value {
        for key in ["workerTemplate", "leaderTemplate"] {
            if let Some(Value::Object(pod)) = t.get_mut(key) {
                strip_pod(pod);
            }
        }
    }
    prune_empty(&mut value);
    let digest = Sha256::digest(canonical_json(&value).as_bytes());
    digest[..8]
        .iter()
        .fold(String::with_capacity(16), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Removes controller labels and placement terms from one pod template.
fn strip_pod(pod: &mut Map<String, Value>) {
    if let Some(Value::Object(labels)) = pod
        .get_mut("metadata")
        .and_then(|m| m.as_object_mut())
        .and_then(|m| m.get_mut("labels"))
    {
        for key in CONTROLLER_LABELS {
            labels.remove(key);
        }
    }
    let affinity = pod
        .get_mut("spec")
        .and_then(|s| s.as_object_mut())
        .and_then(|s| s.get_mut("affinity"))
        .and_then(|a| a.as_object_mut());
    for kind in affinity.into_iter().flat_map(|a| {
        a.iter_mut()
            .filter(|(k, _)| *k == "podAffinity" || *k == "podAntiAffinity")
    }) {
        if let Some(Value::Array(terms)) = kind
            .1
            .as_object_mut()
            .and_then(|k| k.get_mut("requiredDuringSchedulingIgnoredDuringExecution"))
        {
            terms.retain(|t| !selects_on_set_name(t));
        }
    }
}

/// Whether a pod affinity term selects on the set-name label (a placement term).
fn selects_on_set_name(term: &Value) -> bool {
    let selector = &term["labelSelector"];
    let in_labels = selector["matchLabels"]
        .as_object()
        .is_some_and(|m| m.contains_key(keys::NAME));
    let in_expressions = selector["matchExpressions"]
        .as_array()
        .is_some_and(|e| e.iter().any(|x| x["key"] == keys::NAME));
    in_labels || in_expressions
}

/// Removes `null`s, empty objects and empty lists, bottom up: Go's encoder
/// writes `creationTimestamp: null` and `resources: {}` where a YAML author
/// writes nothing, and the two mean the same.
fn prune_empty(value: &mut Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => {
            map.retain(|_, v| !prune_empty(v));
            map.is_empty()
        }
        Value::Array(items) => {
            items.retain_mut(|v| !prune_empty(v));
            items.is_empty()
        }
        _ => false,
    }
}

/// The revision the set's children already run, when none carries
/// `revision`: the newest other revision whose children, in every slice
/// they are in, are exactly the spec's roles, each with the template
/// `wanted(role, slice, candidate)` fingerprints to. `revision` otherwise.
///
/// `wanted` renders (and patches) the role's child at the candidate
/// revision; `None` when it cannot (a plugin failed): no adoption then.
pub fn revision_of(
    revision: &str,
    roles: &[&str],
    children: &[Child],
    mut wanted: impl FnMut(&str, i32, &str) -> Option<String>,
) -> String {
    let ours = || children.iter().filter(|c| c.owned);
    if ours().any(|c| c.revision == revision) {
        return revision.to_string();
    }
    let mut candidates: Vec<(&str, i64)> = Vec::new();
    for c in ours() {
        match candidates.iter_mut().find(|(r, _)| *r == c.revision) {
            Some((_, created)) => *created = (*created).max(c.created),
            None => candidates.push((&c.revision, c.created)),
        }
    }
    candidates.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(a.0)));
    for (candidate, _) in candidates {
        let of: Vec<&Child> = ours().filter(|c| c.revision == candidate).collect();
        let mut slices: Vec<i32> = of.iter().map(|c| c.slice).collect();
        slices.sort_unstable();
        slices.dedup();
        let same = slices.iter().all(|&slice| {
            let here: Vec<&&Child> = of.iter().filter(|c| c.slice == slice).collect();
            here.len() == roles.len()
                && roles.iter().all(|role| {
                    here.iter().any(|c| {
                        c.role == *role
                            && c.fingerprint.is_some()
                            && c.fingerprint == wanted(role, slice, candidate)
                    })
                })
        });
        if same {
            return candidate.to_string();
        }
    }
    revision.to_string()
}
