//! Bad input (`docs/api.md`): invalid sets applied with kubectl, as a user
//! would. Each is either rejected by the API server (the CRD schema) or
//! accepted and reported by the operator as `Valid=False`, with a message
//! naming the field; either way no child is created, and an existing set
//! changed into an invalid one keeps its children as they were.
//!
//! kube-sim does not run CEL, so the rule a real API server checks with CEL
//! (all non-External roles paused, or none) is caught by the operator here.

use super::common::repo;
use super::harness::*;
use disagg::api::lws::LeaderWorkerSet;
use disagg::api::set::DisaggregatedSet;
use kube::api::Api;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// kubectl fails; its error names this.
    Rejected(&'static str),
    /// Stored, then `Valid=False` naming this.
    Invalid(&'static str),
}
use Expect::*;

type Mutation = fn(&mut Value);

/// The example set, named `name`, changed by `mutate`.
fn manifest(name: &str, mutate: Mutation) -> Value {
    let mut set: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap())
            .unwrap();
    set["metadata"]["name"] = json!(name);
    mutate(&mut set);
    set
}

fn cases() -> Vec<(&'static str, Mutation, Expect)> {
    vec![
        (
            "one-role",
            |s| s["spec"]["roles"].as_array_mut().unwrap().truncate(1),
            Rejected("spec.roles"),
        ),
        (
            "eleven-roles",
            |s| {
                let role = s["spec"]["roles"][0].clone();
                s["spec"]["roles"] = (0..11)
                    .map(|i| {
                        let mut r = role.clone();
                        r["name"] = json!(format!("r{i}"));
                        r
                    })
                    .collect();
            },
            Rejected("spec.roles"),
        ),
        (
            "duplicate-role",
            |s| s["spec"]["roles"][1]["name"] = json!("prefill"),
            Rejected("spec.roles[1]"),
        ),
        (
            "role-name-not-a-label",
            |s| s["spec"]["roles"][0]["name"] = json!("Prefill_1"),
            Rejected("spec.roles[0].name"),
        ),
        (
            "partly-paused",
            |s| s["spec"]["roles"][0]["spec"]["replicas"] = json!(0),
            Invalid("replicas"),
        ),
        (
            "partition",
            |s| {
                s["spec"]["roles"][0]["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]["partition"] =
                    json!(1)
            },
            Invalid("spec.roles[0].spec.rolloutStrategy.rollingUpdateConfiguration.partition"),
        ),
        (
            "no-surge-no-unavailable",
            |s| {
                let c = &mut s["spec"]["roles"][1]["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"];
                c["maxSurge"] = json!(0);
                c["maxUnavailable"] = json!("0%");
            },
            Invalid("spec.roles[1].spec.rolloutStrategy.rollingUpdateConfiguration"),
        ),
        (
            "surge-not-a-number",
            |s| {
                s["spec"]["roles"][0]["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]["maxSurge"] =
                    json!("lots")
            },
            Invalid("maxSurge"),
        ),
        (
            "zero-slices",
            |s| s["spec"]["slices"] = json!(0),
            Rejected("spec.slices"),
        ),
        (
            "too-many-slices",
            |s| s["spec"]["slices"] = json!(101),
            Rejected("spec.slices"),
        ),
        (
            "placement-without-topology",
            |s| s["spec"]["placementPolicy"] = json!({"type": "ExclusiveSlice"}),
            Invalid("spec.placementPolicy.topology"),
        ),
        (
            "placement-type-unknown",
            |s| s["spec"]["placementPolicy"] = json!({"type": "Anywhere", "topology": "zone"}),
            Rejected("spec.placementPolicy.type"),
        ),
        (
            "a-set-name-far-too-long-for-its-children-names-to-fit-in-63",
            |_| {},
            Invalid("shorten the set or role name"),
        ),
        ("9-starts-with-a-digit", |_| {}, Invalid("metadata.name")),
        (
            "role-name-too-long",
            |s| s["spec"]["roles"][0]["name"] = json!("p".repeat(55)),
            Invalid("spec.roles[0].name"),
        ),
        (
            "containers-not-a-list",
            |s| {
                s["spec"]["roles"][0]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"] =
                    json!("vllm")
            },
            Rejected("containers"),
        ),
        (
            "container-without-name",
            |s| {
                s["spec"]["roles"][0]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
                .as_object_mut().unwrap().remove("name");
            },
            Rejected("name"),
        ),
        (
            "unknown-template-field",
            |s| {
                s["spec"]["roles"][0]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"]
                    [0]["imagee"] = json!("x")
            },
            Rejected("imagee"),
        ),
        (
            "no-pod-template",
            |s| {
                s["spec"]["roles"][1]["spec"]["leaderWorkerTemplate"]
                    .as_object_mut()
                    .unwrap()
                    .remove("workerTemplate");
            },
            Rejected("spec.roles[1].spec.leaderWorkerTemplate.workerTemplate"),
        ),
        (
            "plugin-bound-twice",
            |s| s["spec"]["plugins"] = json!([{"name": "gate"}, {"name": "gate"}]),
            Invalid("spec.plugins[1].name"),
        ),
        (
            "plugin-for-a-missing-role",
            |s| s["spec"]["plugins"] = json!([{"name": "gate", "roles": ["encode"]}]),
            Invalid("spec.plugins[0].roles[0]"),
        ),
        (
            "plugin-digest-malformed",
            |s| s["spec"]["plugins"] = json!([{"name": "gate", "digest": "md5:abc"}]),
            Rejected("spec.plugins[0].digest"),
        ),
        (
            "plugin-policy-unknown",
            |s| s["spec"]["plugins"] = json!([{"name": "gate", "failurePolicy": "Retry"}]),
            Rejected("spec.plugins[0].failurePolicy"),
        ),
        // Numbers past their bounds: none may reach the planner's arithmetic.
        (
            "replicas-over-a-million",
            |s| s["spec"]["roles"][0]["spec"]["replicas"] = json!(1_000_001),
            Rejected("replicas"),
        ),
        (
            "replicas-beyond-i32",
            |s| s["spec"]["roles"][0]["spec"]["replicas"] = json!(4_294_967_296u64),
            Rejected("replicas"),
        ),
        (
            "surge-at-i32-max",
            |s| {
                s["spec"]["roles"][0]["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]["maxSurge"] =
                    json!(i32::MAX)
            },
            Invalid("maxSurge"),
        ),
        (
            "unavailable-at-i32-max",
            |s| {
                s["spec"]["roles"][0]["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]["maxUnavailable"] =
                    json!(i32::MAX)
            },
            Invalid("maxUnavailable"),
        ),
    ]
}

fn kubectl_apply(cluster: &Cluster, file: &std::path::Path) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["apply", "--server-side", "-f"])
        .arg(file)
        .output()
        .expect("kubectl runs (it is on the machine; see README)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_sets_are_rejected_or_reported_and_create_nothing() {
    let cluster = cluster("bad-input").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let dir = cluster.kubeconfig.parent().unwrap().to_path_buf();

    let mut invalid = Vec::new();
    let mut failures = Vec::new();
    for (name, mutate, expect) in cases() {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, manifest(name, mutate).to_string()).unwrap();
        let out = kubectl_apply(&cluster, &file);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        match (expect, out.status.success()) {
            (Rejected(field), false) if stderr.contains(field) => {
                assert!(sets.get_opt(name).await.unwrap().is_none(), "{name} stored");
            }
            (Invalid(field), true) => invalid.push((name, field)),
            (expect, ok) => failures.push(format!(
                "{name}: expected {expect:?}, kubectl {} — {stderr}",
                if ok { "accepted it" } else { "refused it" }
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The accepted ones are reported Valid=False, naming the field, and get no children.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, field) in &invalid {
        let set = loop {
            let set = sets.get(name).await.unwrap();
            if condition(&set, "Valid").as_deref() == Some("False") {
                break set;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: never Valid=False: {:?}",
                set.status
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let message = condition_message(&set, "Valid");
        assert!(
            message.contains(field),
            "{name}: the message does not name {field}: {message}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (name, _) in &invalid {
        assert!(children(&lws, name).await.is_empty(), "{name} got children");
    }

    // A running set changed into an invalid one keeps its children as they are.
    let file = dir.join("stable.json");
    std::fs::write(&file, manifest("stable", |_| {}).to_string()).unwrap();
    assert!(kubectl_apply(&cluster, &file).status.success());
    let (_, before) = until_available(&sets, &lws, "stable").await;
    std::fs::write(
        &file,
        manifest("stable", |s| {
            s["spec"]["roles"][0]["spec"]["replicas"] = json!(0);
            s["spec"]["roles"][1]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
                ["containers"][0]["image"] = json!("vllm/vllm-openai:v0.12.0");
        })
        .to_string(),
    )
    .unwrap();
    assert!(kubectl_apply(&cluster, &file).status.success());
    let (set, _) = watch_until(
        &sets,
        &lws,
        "stable",
        "Valid=False",
        |_| {},
        |s, _| condition(s, "Valid").as_deref() == Some("False"),
    )
    .await;
    assert!(condition_message(&set, "Valid").contains("replicas"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = children(&lws, "stable").await;
    let shape = |k: &[LeaderWorkerSet]| {
        k.iter()
            .map(|c| {
                (
                    c.metadata.name.clone(),
                    c.spec.replicas,
                    c.metadata.resource_version.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        shape(&after),
        shape(&before),
        "children changed under an invalid spec"
    );
}
