use crate::render::render_child;
use disagg_api::keys;
use disagg_api::set::{DisaggregatedSet, PlacementPolicy, PlacementType};
use serde_json::{Value, json};

pub fn set(spec: Value) -> DisaggregatedSet {
    serde_json::from_value(json!({
        "apiVersion": "disaggregatedset.x-k8s.io/v1",
        "kind": "DisaggregatedSet",
        "metadata": {"name": "llm", "namespace": "ns", "uid": "u-1"},
        "spec": spec,
    }))
    .unwrap()
}

pub fn two_roles() -> Value {
    json!({"roles": [
        {"name": "prefill", "metadata": {"labels": {"team": "a", keys::ROLE: "spoofed"}, "annotations": {"note": "x"}},
         "spec": {"replicas": 2, "leaderWorkerTemplate": {
            "leaderTemplate": {"spec": {"containers": [{"name": "l", "image": "i"}]}},
            "workerTemplate": {"metadata": {"labels": {"app": "m"}}, "spec": {"containers": [{"name": "w", "image": "i"}],
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone", "labelSelector": {}}]}}}}}}},
        {"name": "decode", "spec": {"replicas": 3, "leaderWorkerTemplate": {"workerTemplate": {"spec": {"containers": [{"name": "w", "image": "i"}]}}}}},
    ]})
}

#[test]
fn child_has_name_labels_owner_and_replicas() {
    let s = set(two_roles());
    let lws = render_child(&s, &s.spec.roles[0], 1, "abcd1234", 7);
    assert_eq!(lws.metadata.name.as_deref(), Some("llm-1-abcd1234-prefill"));
    assert_eq!(lws.metadata.namespace.as_deref(), Some("ns"));
    let labels = lws.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "a");
    // System labels win over the user's.
    assert_eq!(labels[keys::ROLE], "prefill");
    assert_eq!(labels[keys::SLICE], "1");
    assert_eq!(labels[keys::REVISION], "abcd1234");
    assert_eq!(labels[keys::NAME], "llm");
    assert_eq!(lws.metadata.annotations.as_ref().unwrap()["note"], "x");
    let owner = &lws.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("DisaggregatedSet", "u-1", Some(true))
    );
    assert_eq!(lws.spec.replicas, 7);
    let t = &lws.spec.leader_worker_template;
    for pod in [&t.worker_template.0, &t.leader_template.as_ref().unwrap().0] {
        let l = &pod["metadata"]["labels"];
        assert_eq!(l[keys::ROLE], "prefill");
        assert_eq!(l[keys::REVISION], "abcd1234");
        assert_eq!(l[keys::SLICE], "1");
    }
    assert_eq!(t.worker_template.0["metadata"]["labels"]["app"], "m");
    // No placement policy: the user's affinity is untouched and nothing is added.
    assert_eq!(
        t.worker_template.0["spec"]["affinity"],
        two_roles()["roles"][0]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["affinity"]
    );
}

#[test]
fn placement_policy_adds_required_affinity_terms_to_both_templates() {
    for (ty, anti_terms) in [
        (PlacementType::ExclusiveSlice, 1),
        (PlacementType::ExclusiveTopology, 2),
    ] {
        let mut s = set(two_roles());
        s.spec.placement_policy = Some(PlacementPolicy {
            type_: ty,
            topology: Some("rack".into()),
        });
        let lws = render_child(&s, &s.spec.roles[0], 0, "r", 1);
        let t = &lws.spec.leader_worker_template;
        let worker = &t.worker_template.0["spec"]["affinity"];
        let aff = worker["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .unwrap();
        assert_eq!(aff.len(), 1);
        assert_eq!(aff[0]["topologyKey"], "rack");
        assert_eq!(aff[0]["labelSelector"]["matchLabels"][keys::SLICE], "0");
        let anti = worker["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .unwrap();
        // The user's own term stays first.
        assert_eq!(anti.len(), 1 + anti_terms);
        assert_eq!(anti[0]["topologyKey"], "zone");
        assert_eq!(
            anti[1]["labelSelector"]["matchExpressions"][1]["operator"],
            "NotIn"
        );
        let leader = &t.leader_template.as_ref().unwrap().0["spec"]["affinity"];
        assert_eq!(
            leader["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .unwrap()
                .len(),
            anti_terms
        );
    }
}
