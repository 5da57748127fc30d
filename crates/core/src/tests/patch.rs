//! What a plugin's patch may and may not change, and how large it may grow.
use super::render::{set, two_roles};
use crate::patch::{LwsPatch, MAX_PATCHED_BYTES, apply};
use crate::render::render_child;
use disagg_api::keys;
use disagg_api::lws::LeaderWorkerSet;
use serde_json::{Value, json};

/// The prefill child of a set that asks for exclusive placement per slice.
fn rendered() -> LeaderWorkerSet {
    let mut spec = two_roles();
    spec["placementPolicy"] = json!({"type": "ExclusiveSlice", "topology": "zone"});
    let s = set(spec);
    render_child(&s, &s.spec.roles[0], 0, "abcd1234", 2)
}

fn json_patch(ops: Value) -> Result<LeaderWorkerSet, String> {
    apply(&rendered(), &LwsPatch::Json(ops))
}

#[test]
fn pod_templates_and_own_labels_and_annotations_may_change() {
    let patched = json_patch(json!([
        {"op": "add", "path": "/spec/leaderWorkerTemplate/workerTemplate/spec/containers/0/args", "value": ["--x"]},
        {"op": "add", "path": "/spec/leaderWorkerTemplate/leaderTemplate/spec/nodeSelector", "value": {"gpu": "h100"}},
        {"op": "add", "path": "/metadata/labels/team", "value": "b"},
        {"op": "add", "path": "/metadata/annotations/note", "value": "y"},
        // Adding affinity is fine; only the set's own placement terms are fixed.
        {"op": "add", "path": "/spec/leaderWorkerTemplate/workerTemplate/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution/-",
         "value": {"topologyKey": "rack", "labelSelector": {"matchLabels": {"app": "cache"}}}},
    ]))
    .unwrap();
    let labels = patched.metadata.labels.unwrap();
    assert_eq!(labels["team"], "b");
    assert_eq!(patched.metadata.annotations.unwrap()["note"], "y");
    let worker = &patched.spec.leader_worker_template.worker_template.0;
    assert_eq!(worker["spec"]["containers"][0]["args"], json!(["--x"]));
    let merged = apply(
        &rendered(),
        &LwsPatch::Merge(json!({"metadata": {"labels": {"team": null}}})),
    )
    .unwrap();
    assert!(!merged.metadata.labels.unwrap().contains_key("team"));
}

/// Each forbidden change is refused, naming what it touched.
#[test]
fn every_forbidden_change_is_refused_by_name() {
    let placement = "/spec/leaderWorkerTemplate/workerTemplate/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution";
    let system_pod_label = format!(
        "/spec/leaderWorkerTemplate/workerTemplate/metadata/labels/{}",
        keys::ROLE.replace('/', "~1")
    );
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"op": "replace", "path": "/metadata/name", "value": "other"}),
            "metadata.name",
        ),
        (
            json!({"op": "replace", "path": "/metadata/namespace", "value": "kube-system"}),
            "metadata.namespace",
        ),
        (
            json!({"op": "remove", "path": "/metadata/ownerReferences"}),
            "metadata.ownerReferences",
        ),
        (
            json!({"op": "add", "path": "/metadata/finalizers", "value": ["x/block"]}),
            "metadata.finalizers",
        ),
        (
            json!({"op": "add", "path": "/metadata/uid", "value": "u-2"}),
            "metadata.uid",
        ),
        (
            json!({"op": "add", "path": "/metadata/resourceVersion", "value": "1"}),
            "metadata.resourceVersion",
        ),
        (
            json!({"op": "add", "path": "/metadata/generateName", "value": "x-"}),
            "metadata.generateName",
        ),
        (
            json!({"op": "add", "path": format!("/metadata/annotations/{}", keys::INITIAL_REPLICAS.replace('/', "~1")), "value": "9"}),
            "initial-replicas",
        ),
        (
            json!({"op": "replace", "path": format!("/metadata/labels/{}", keys::REVISION.replace('/', "~1")), "value": "ffffffff"}),
            "metadata.labels[\"disaggregatedset.x-k8s.io/revision\"]",
        ),
        (
            json!({"op": "remove", "path": format!("/metadata/labels/{}", keys::NAME.replace('/', "~1"))}),
            "metadata.labels[\"disaggregatedset.x-k8s.io/name\"]",
        ),
        (
            json!({"op": "replace", "path": "/spec/replicas", "value": 100}),
            "spec.replicas",
        ),
        (
            json!({"op": "add", "path": "/spec/leaderWorkerTemplate/size", "value": 64}),
            "spec.leaderWorkerTemplate.size",
        ),
        (
            json!({"op": "add", "path": "/spec/startupPolicy", "value": "LeaderReady"}),
            "spec.startupPolicy",
        ),
        (
            json!({"op": "add", "path": "/status", "value": {"replicas": 3}}),
            "status",
        ),
        (
            json!({"op": "replace", "path": "/kind", "value": "Deployment"}),
            "kind",
        ),
        (
            json!({"op": "replace", "path": system_pod_label, "value": "decode"}),
            "workerTemplate.metadata.labels",
        ),
        (
            json!({"op": "remove", "path": format!("{placement}/0")}),
            "placementPolicy",
        ),
        (
            json!({"op": "remove", "path": "/spec/leaderWorkerTemplate/leaderTemplate/spec/affinity"}),
            "placementPolicy",
        ),
    ];
    for (op, named) in cases {
        let err = json_patch(json!([op])).unwrap_err();
        assert!(err.contains(named), "{op}: {err}");
    }
    // The same through a merge patch.
    for (patch, named) in [
        (
            json!({"metadata": {"ownerReferences": null}}),
            "metadata.ownerReferences",
        ),
        (json!({"spec": {"replicas": 0}}), "spec.replicas"),
        (
            json!({"metadata": {"labels": {keys::SLICE: null}}}),
            "disaggregatedset.x-k8s.io/slice",
        ),
    ] {
        let err = apply(&rendered(), &LwsPatch::Merge(patch.clone())).unwrap_err();
        assert!(err.contains(named), "{patch}: {err}");
    }
}

/// Chained copies double the object each time; the result is bounded and
/// refused before it is built.
#[test]
fn amplifying_patches_are_refused_before_they_grow() {
    let mut ops =
        vec![json!({"op": "add", "path": "/metadata/annotations/a0", "value": "x".repeat(1024)})];
    for i in 1..40 {
        ops.push(json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/spec/leaderWorkerTemplate/workerTemplate/metadata/annotations{i}")}));
        ops.push(json!({"op": "copy", "from": "/spec/leaderWorkerTemplate/workerTemplate", "path": format!("/metadata/annotations/a{i}")}));
    }
    let started = std::time::Instant::now();
    let err = json_patch(Value::Array(ops)).unwrap_err();
    assert!(err.contains("larger than"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // A large but bounded add is refused too.
    let err = json_patch(json!([{"op": "add", "path": "/metadata/annotations/big",
                                 "value": "y".repeat(MAX_PATCHED_BYTES)}]))
    .unwrap_err();
    assert!(err.contains("larger than"), "{err}");
}
