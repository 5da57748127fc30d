//! Our generated CRDs: committed copy, size, and compatibility with upstream's.

use disagg::api::crd::{crds, crds_yaml, schema_of};
use disagg::api::structural::{apply_defaults, check};
use serde_json::{Value, json};
use test_support::{repo, shared};

fn upstream_schema(file: &str) -> Value {
    let text = std::fs::read_to_string(shared(&format!("upstream/{file}"))).unwrap();
    let crd: Value = serde_yaml_ng::from_str(&text).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn ours(kind: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    schema_of(&crd)
}

#[test]
fn committed_crds_match_the_generated_ones() {
    let committed =
        std::fs::read_to_string(repo("deploy/crds/disaggregatedset.x-k8s.io.yaml")).unwrap();
    assert!(
        committed == crds_yaml(),
        "deploy/crds is stale: run `cargo run -p disagg -- crds > deploy/crds/disaggregatedset.x-k8s.io.yaml`"
    );
}

#[test]
fn the_set_crd_stays_well_under_the_api_server_object_limit() {
    for crd in crds() {
        let size = serde_json::to_vec(&crd).unwrap().len();
        // etcd and the API server refuse objects over ~1.5 MiB.
        assert!(
            size < 1024 * 1024,
            "{} is {size} bytes of JSON",
            crd.spec.names.kind
        );
    }
}

#[test]
fn vendored_pod_template_schema_matches_upstream_lws() {
    let text = std::fs::read_to_string(shared(
        "upstream/leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    ))
    .unwrap();
    let crd: Value = serde_yaml_ng::from_str(&text).unwrap();
    let lwt = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["leaderWorkerTemplate"]["properties"];
    let vendored: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("crates/api/schema/lws-fragments.json")).unwrap(),
    )
    .unwrap();
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("description");
        v
    };
    assert_eq!(
        vendored["podTemplate"],
        strip(&lwt["workerTemplate"]),
        "run scripts/vendor-lws-schema.py"
    );
    assert_eq!(
        vendored["persistentVolumeClaim"],
        strip(&lwt["volumeClaimTemplates"]["items"])
    );
}

/// Everything upstream's schema accepts, ours accepts and defaults the same
/// way: same types, no new required fields, no narrower enums, bounds,
/// lengths or patterns, the same defaults, no extra CEL rules.
fn assert_subsumes(ours: &Value, upstream: &Value, path: &str, problems: &mut Vec<String>) {
    let mut fail = |m: String| problems.push(format!("{path}: {m}"));
    let int_or_string = |s: &Value| s.get("x-kubernetes-int-or-string") == Some(&json!(true));
    if int_or_string(upstream) != int_or_string(ours) {
        fail("int-or-string differs".into());
    } else if upstream.get("type") != ours.get("type") && ours.get("type").is_some() {
        fail(format!(
            "type {:?} vs upstream {:?}",
            ours.get("type"),
            upstream.get("type")
        ));
    }
    let list = |s: &Value, k: &str| {
        s.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for r in list(ours, "required") {
        if !list(upstream, "required").contains(&r) {
            fail(format!("requires {r} which upstream does not"));
        }
    }
    if ours.get("enum").is_some() {
        for e in list(upstream, "enum") {
            if !list(ours, "enum").contains(&e) {
                fail(format!("enum lacks {e}"));
            }
        }
        if upstream.get("enum").is_none() {
            fail("adds an enum".into());
        }
    }
    if upstream.get("default") != ours.get("default") {
        fail(format!(
            "default {:?} vs upstream {:?}",
            ours.get("default"),
            upstream.get("default")
        ));
    }
    let num = |s: &Value, k: &str| s.get(k).and_then(Value::as_f64);
    for (k, looser_is_smaller) in [
        ("minimum", true),
        ("minLength", true),
        ("minItems", true),
        ("maximum", false),
        ("maxLength", false),
        ("maxItems", false),
    ] {
        if let Some(o) = num(ours, k) {
            match num(upstream, k) {
                None => fail(format!("adds {k} {o}")),
                Some(u) if (looser_is_smaller && o > u) || (!looser_is_smaller && o < u) => {
                    fail(format!("{k} {o} is stricter than upstream {u}"))
                }
                _ => {}
            }
        }
    }
    if ours.get("pattern").is_some() && ours.get("pattern") != upstream.get("pattern") {
        fail("pattern differs".into());
    }
    for rule in list(ours, "x-kubernetes-validations") {
        if !list(upstream, "x-kubernetes-validations").contains(&rule) {
            fail(format!("adds CEL rule {rule}"));
        }
    }
    if ours.get("x-kubernetes-list-type") == Some(&json!("map"))
        && ours.get("x-kubernetes-list-map-keys") != upstream.get("x-kubernetes-list-map-keys")
    {
        fail("list-map keys differ".into());
    }
    let preserves = ours.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if let Some(props) = upstream.get("properties").and_then(Value::as_object) {
        for (k, u) in props {
            match ours.get("properties").and_then(|p| p.get(k)) {
                Some(o) => assert_subsumes(o, u, &format!("{path}.{k}"), problems),
                None if preserves => {}
                None => problems.push(format!("{path}.{k}: missing from our schema")),
            }
        }
    }
    for k in ["items", "additionalProperties"] {
        if let (Some(u), Some(o)) = (upstream.get(k).filter(|v| v.is_object()), ours.get(k)) {
            assert_subsumes(o, u, &format!("{path}[{k}]"), problems);
        }
    }
}

#[test]
fn our_crds_accept_everything_upstreams_accept() {
    for (kind, file) in [
        (
            "DisaggregatedSet",
            "disaggregatedset.x-k8s.io_disaggregatedsets.yaml",
        ),
        (
            "DisaggregatedSetRoleScaler",
            "disaggregatedset.x-k8s.io_disaggregatedsetrolescalers.yaml",
        ),
    ] {
        let mut problems = Vec::new();
        let upstream = upstream_schema(file);
        // Status is written by the operator, never by users' manifests.
        let mut spec_only = upstream.clone();
        spec_only["properties"]
            .as_object_mut()
            .unwrap()
            .remove("status");
        assert_subsumes(&ours(kind), &spec_only, kind, &mut problems);
        assert!(problems.is_empty(), "{kind}:\n{}", problems.join("\n"));
    }
}

#[test]
fn the_subsumption_check_catches_a_narrower_schema() {
    // Guard against a check that cannot fail.
    let mut upstream = upstream_schema("disaggregatedset.x-k8s.io_disaggregatedsets.yaml");
    upstream["properties"]
        .as_object_mut()
        .unwrap()
        .remove("status");
    let mut narrowed = ours("DisaggregatedSet");
    narrowed["properties"]["spec"]["properties"]["slices"]["maximum"] = json!(10);
    narrowed["properties"]["spec"]["properties"]["placementPolicy"]["properties"]["type"]["enum"] =
        json!(["None"]);
    narrowed["properties"]["spec"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("roles");
    let mut problems = Vec::new();
    assert_subsumes(&narrowed, &upstream, "DisaggregatedSet", &mut problems);
    assert_eq!(problems.len(), 4, "{problems:#?}");
}

fn upstream_style_manifests() -> Vec<Value> {
    let role = |name: &str, extra: Value| {
        let mut r = json!({"name": name, "spec": {"leaderWorkerTemplate": {"workerTemplate": {"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}}}});
        merge(&mut r, extra);
        r
    };
    let set = |spec: Value| json!({"apiVersion": "disaggregatedset.x-k8s.io/v1", "kind": "DisaggregatedSet", "metadata": {"name": "s"}, "spec": spec});
    let mut out = vec![
        set(json!({"roles": [role("prefill", json!({})), role("decode", json!({}))]})),
        set(
            json!({"slices": 3, "placementPolicy": {"type": "ExclusiveTopology", "topology": "rack"}, "roles": [
                role("prefill", json!({"spec": {"replicas": 4, "startupPolicy": "LeaderReady", "networkConfig": {"subdomainPolicy": "UniquePerReplica"},
                    "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": {"maxSurge": "25%", "maxUnavailable": 1}},
                    "leaderWorkerTemplate": {"size": 4, "restartPolicy": "None", "subGroupPolicy": {"subGroupSize": 2},
                        "leaderTemplate": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "l", "image": "i"}]}},
                        "volumeClaimTemplates": [{"metadata": {"name": "cache"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
                        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}}})),
                role("decode", json!({"metadata": {"labels": {"x": "y"}, "annotations": {"k": "v"}}, "scaling": {"mode": "External"}, "spec": {"replicas": 2}})),
                role("encode", json!({"spec": {"replicas": 1}})),
            ]}),
        ),
        set(
            json!({"roles": [role("a", json!({"spec": {"replicas": 0}})), role("b", json!({"spec": {"replicas": 0}}))]}),
        ),
    ];
    for (name, file) in [
        ("vllm", "vllm-pd.yaml"),
        ("sglang", "sglang-pd.yaml"),
        ("epd", "epd-3role.yaml"),
    ] {
        let text = std::fs::read_to_string(repo(&format!("examples/{file}"))).unwrap();
        let v: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert!(v.is_object(), "{name}");
        out.push(v);
    }
    out
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

#[test]
fn upstream_style_manifests_pass_both_schemas_and_default_alike() {
    let upstream = upstream_schema("disaggregatedset.x-k8s.io_disaggregatedsets.yaml");
    let ours = ours("DisaggregatedSet");
    for m in upstream_style_manifests() {
        assert_eq!(check(&upstream, &m), vec![], "upstream rejects {m}");
        assert_eq!(check(&ours, &m), vec![], "we reject {m}");
        let (mut a, mut b) = (m.clone(), m.clone());
        apply_defaults(&upstream, &mut a);
        apply_defaults(&ours, &mut b);
        assert_eq!(a, b, "defaults differ for {m}");
    }
}

#[test]
fn manifests_upstream_rejects_we_reject_too() {
    let upstream = upstream_schema("disaggregatedset.x-k8s.io_disaggregatedsets.yaml");
    let ours = ours("DisaggregatedSet");
    let base = upstream_style_manifests().remove(0);
    let bad: Vec<(Value, &str)> = vec![
        (json!({"spec": {"slices": 0}}), "spec.slices"),
        (
            json!({"spec": {"roles": [{"name": "Bad_Name"}]}}),
            "spec.roles[0].name",
        ),
        (
            json!({"spec": {"placementPolicy": {"type": "Spread"}}}),
            "spec.placementPolicy.type",
        ),
        (
            json!({"spec": {"roles": [{"spec": {"replicas": -1}}]}}),
            "spec.roles[0].spec.replicas",
        ),
        (
            json!({"spec": {"roles": [{"spec": {"leaderWorkerTemplate": {"workerTemplate": {"spec": {"containerz": []}}}}}]}}),
            "spec.roles[0].spec.leaderWorkerTemplate.workerTemplate.spec.containerz",
        ),
        (
            json!({"spec": {"roles": [{"spec": {}}, {"name": "prefill"}]}}),
            "spec.roles[0].name",
        ),
        (
            json!({"spec": {"roles": [base["spec"]["roles"][0].clone(), base["spec"]["roles"][0].clone()]}}),
            "spec.roles[1]",
        ),
    ];
    for (patch, field) in bad {
        let mut m = base.clone();
        merge(&mut m, patch.clone());
        let (u, o) = (check(&upstream, &m), check(&ours, &m));
        assert!(!u.is_empty(), "upstream accepts {patch}");
        assert!(
            o.iter().any(|e| e.path == field),
            "{patch}: expected an error at {field}, got {o:?}"
        );
    }
}
