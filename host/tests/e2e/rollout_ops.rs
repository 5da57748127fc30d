//! Rollouts the way production runs them: replica changes while a gate holds,
//! abort and resume, taking over upstream's children, and upgrading the
//! operator, each observed through the API.

use super::common::repo;
use super::harness::*;
use super::upstream;
use disagg::api::keys;
use disagg::api::lws::LeaderWorkerSet;
use disagg::api::scaler::DisaggregatedSetRoleScaler;
use disagg::api::set::DisaggregatedSet;
use disagg::controller::FIELD_MANAGER;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;

async fn annotate(sets: &Api<DisaggregatedSet>, name: &str, annotations: serde_json::Value) {
    sets.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
    )
    .await
    .unwrap();
}

async fn set_replicas(sets: &Api<DisaggregatedSet>, name: &str, role: usize, replicas: i32) {
    sets.patch(
        name,
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "replace",
                "path": format!("/spec/roles/{role}/spec/replicas"), "value": replicas}]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
}

/// Removes the set's bindings (the gate patches no template: the revision stays).
async fn unbind_gate(sets: &Api<DisaggregatedSet>, name: &str) {
    sets.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"plugins": null}})),
    )
    .await
    .unwrap();
}

fn held(set: &DisaggregatedSet) -> bool {
    condition(set, "RolloutHeld").as_deref() == Some("True")
}

/// Old + new groups of `role`.
fn total(state: &State, role: &str) -> i32 {
    state.get(role).map_or(0, |(o, n)| o + n)
}

/// A set gated by the rollout-gate, rolled to a new image and approved up to
/// step 1, so that both revisions have groups and step 2 is held.
async fn held_mid_rollout(
    cluster: &Cluster,
    set: DisaggregatedSet,
) -> (Api<DisaggregatedSet>, Api<LeaderWorkerSet>, String, String) {
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let name = set.metadata.name.clone().unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let (created, _) = until_available(&sets, &lws, &name).await;
    let old = revision_of(&created);
    set_image(&sets, &name, "example.com/next:2").await;
    annotate(&sets, &name, json!({keys::APPROVE_STEP: "1"})).await;
    let (s, _) = watch_until(
        &sets,
        &lws,
        &name,
        "step 1 taken, step 2 held",
        |_| {},
        |s, k| {
            let new = revision_of(s);
            held(s) && new != old && state_of(k, &new).values().all(|(o, n)| *o > 0 && *n > 0)
        },
    )
    .await;
    (sets, lws, old, revision_of(&s))
}

fn gated(file: &str, name: &str) -> DisaggregatedSet {
    let mut set: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo(file)).unwrap()).unwrap();
    set["metadata"]["name"] = json!(name);
    set["spec"]["plugins"] = json!([{"name": "rollout-gate",
        "config": {"requireApproval": true, "recheckSeconds": 1}}]);
    serde_json::from_value(set).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_changes_take_effect_while_a_gate_holds_the_rollout() {
    let cluster = cluster("held-scaling").await;
    install_plugin(&cluster.client, "rollout-gate", "rollout-gate").await;
    let _operator = start_operator(&cluster);
    // encode 2 and prefill 4 are Static, decode 6 is External.
    let (sets, lws, _, new) =
        held_mid_rollout(&cluster, gated("examples/epd-3role.yaml", "epd")).await;
    let scalers: Api<DisaggregatedSetRoleScaler> =
        Api::namespaced(cluster.client.clone(), "default");
    let before = state_of(&children(&lws, "epd").await, &new);

    // Static scale-up, 4 → 8: both revisions grow at once, the gate still holds.
    set_replicas(&sets, "epd", 1, 8).await;
    let (_, kids) = watch_until(
        &sets,
        &lws,
        "epd",
        "prefill at 8 while held",
        |_| {},
        |s, k| {
            let st = state_of(k, &new);
            held(s) && total(&st, "prefill") >= 8 && st["prefill"].1 > before["prefill"].1
        },
    )
    .await;
    let st = state_of(&kids, &new);
    assert!(
        total(&st, "prefill") <= 8 + 2,
        "within its maxSurge of 2: {st:?}"
    );
    assert!(
        st["prefill"].0 > before["prefill"].0,
        "the old side grows too: {st:?}"
    );

    // External scale-up through the scaler (as HPA does), 6 → 9.
    scalers
        .patch_scale(
            "epd-decode",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 9}})),
        )
        .await
        .unwrap();
    watch_until(
        &sets,
        &lws,
        "epd",
        "decode at 9 while held",
        |_| {},
        |s, k| {
            let st = state_of(k, &new);
            held(s)
                && (9..=10).contains(&total(&st, "decode"))
                && st["decode"].1 > before["decode"].1
        },
    )
    .await;

    // Scale-downs come off both sides, within [target, target + maxSurge], still held.
    set_replicas(&sets, "epd", 1, 2).await;
    scalers
        .patch_scale(
            "epd-decode",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let (_, kids) = watch_until(
        &sets,
        &lws,
        "epd",
        "scaled down while held",
        |_| {},
        |s, k| {
            let st = state_of(k, &new);
            held(s)
                && (2..=4).contains(&total(&st, "prefill"))
                && (3..=4).contains(&total(&st, "decode"))
        },
    )
    .await;
    let st = state_of(&kids, &new);
    assert!(
        st.values().all(|(o, n)| *o > 0 && *n > 0),
        "both revisions keep every role: {st:?}"
    );

    // Without the gate the rollout finishes at the new targets.
    unbind_gate(&sets, "epd").await;
    watch_until(
        &sets,
        &lws,
        "epd",
        "rolled out at the new targets",
        |_| {},
        |s, k| {
            available(s)
                && state_of(k, &new)
                    == State::from([
                        ("encode".into(), (0, 2)),
                        ("prefill".into(), (0, 2)),
                        ("decode".into(), (0, 3)),
                    ])
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_rolls_back_within_the_bounds_and_resume_rolls_forward() {
    let cluster = cluster("abort").await;
    install_plugin(&cluster.client, "rollout-gate", "rollout-gate").await;
    let _operator = start_operator(&cluster);
    let (sets, lws, old, new) =
        held_mid_rollout(&cluster, gated("examples/vllm-pd.yaml", "llm")).await;

    annotate(
        &sets,
        "llm",
        json!({keys::ABORT: "by alice: TTFT regressed"}),
    )
    .await;
    let targets = BTreeMap::from([("prefill", 2), ("decode", 4)]);
    let (s, kids) = watch_until(
        &sets,
        &lws,
        "llm",
        "rolled back to the old revision",
        |k| {
            for (role, (o, n)) in state_of(k, &old) {
                assert!(
                    o + n <= targets[role.as_str()] + 1,
                    "{role}: {o} + {n} over maxSurge"
                );
            }
        },
        |s, k| available(s) && revisions(k) == [old.clone()].into(),
    )
    .await;
    assert_eq!(
        state_of(&kids, &old),
        State::from([("decode".into(), (0, 4)), ("prefill".into(), (0, 2))])
    );
    assert_eq!(condition(&s, "RolloutAborted").as_deref(), Some("True"));
    assert!(condition_message(&s, "RolloutAborted").contains("by alice: TTFT regressed"));
    assert_eq!(
        condition_reason(&s, "Available").as_deref(),
        Some("RolledBack")
    );
    assert_eq!(
        revision_of(&s),
        new,
        "the spec still asks for the new revision"
    );

    // Resume: the annotation goes and the rollout starts again; without the gate it finishes.
    annotate(&sets, "llm", json!({keys::ABORT: null})).await;
    watch_until(
        &sets,
        &lws,
        "llm",
        "held at step 1 again",
        |_| {},
        |s, _| held(s) && condition(s, "RolloutAborted").is_none(),
    )
    .await;
    unbind_gate(&sets, "llm").await;
    let (s, _) = watch_until(
        &sets,
        &lws,
        "llm",
        "rolled forward",
        |_| {},
        |s, k| available(s) && revisions(k) == [new.clone()].into(),
    )
    .await;
    assert_eq!(condition(&s, "RolloutAborted"), None);
}

/// Every child's uid, and whether the operator ever wrote it.
fn uids(kids: &[LeaderWorkerSet]) -> BTreeMap<String, String> {
    kids.iter()
        .map(|k| {
            (
                k.metadata.name.clone().unwrap(),
                k.metadata.uid.clone().unwrap(),
            )
        })
        .collect()
}

fn written_by_operator(kids: &[LeaderWorkerSet]) -> Vec<String> {
    kids.iter()
        .filter(|k| {
            k.metadata
                .managed_fields
                .iter()
                .flatten()
                .any(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        })
        .map(|k| k.metadata.name.clone().unwrap())
        .collect()
}

/// Creates `kids` and waits until the LWS simulator has them ready.
async fn create_ready(lws: &Api<LeaderWorkerSet>, set: &str, kids: Vec<LeaderWorkerSet>) {
    let n = kids.len();
    for k in kids {
        lws.create(&PostParams::default(), &k).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = children(lws, set).await;
        let ready = now.iter().filter(|k| {
            k.status
                .as_ref()
                .is_some_and(|s| s.ready_replicas == k.spec.replicas)
        });
        if now.len() == n && ready.count() == n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "children not ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_made_by_upstreams_controller_are_taken_over_without_restarts() {
    let cluster = cluster("takeover").await;
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let base = example("x", json!([]));
    let create = |name: &str| {
        let mut s = base.clone();
        s.metadata.name = Some(name.into());
        s
    };
    // Upstream ran these sets: at rest, mid-rollout, and at rest from before slices.
    for name in ["rest", "mid", "legacy"] {
        sets.create(&PostParams::default(), &create(name))
            .await
            .unwrap();
    }
    let rest = sets.get("rest").await.unwrap();
    create_ready(
        &lws,
        "rest",
        vec![
            upstream::child(&rest, 0, Some(0), "5c0ffee5", 2),
            upstream::child(&rest, 1, Some(0), "5c0ffee5", 4),
        ],
    )
    .await;
    let legacy = sets.get("legacy").await.unwrap();
    create_ready(
        &lws,
        "legacy",
        vec![
            upstream::child(&legacy, 0, None, "1e9ac111", 2),
            upstream::child(&legacy, 1, None, "1e9ac111", 4),
        ],
    )
    .await;
    // Mid-rollout from an older image: upstream's old children carry initial-replicas.
    let mid = sets.get("mid").await.unwrap();
    let mut older = mid.clone();
    older.spec.roles[0]
        .spec
        .leader_worker_template
        .worker_template
        .0["spec"]["containers"][0]["image"] = json!("vllm/vllm-openai:v0.10.0");
    let mut old_children = vec![
        upstream::child(&older, 0, Some(0), "0a0a0a0a", 1),
        upstream::child(&older, 1, Some(0), "0a0a0a0a", 2),
    ];
    for (k, initial) in old_children.iter_mut().zip([2, 4]) {
        k.metadata.annotations =
            Some([(keys::INITIAL_REPLICAS.to_string(), initial.to_string())].into());
    }
    old_children.push(upstream::child(&mid, 0, Some(0), "1b1b1b1b", 1));
    old_children.push(upstream::child(&mid, 1, Some(0), "1b1b1b1b", 2));
    create_ready(&lws, "mid", old_children).await;
    let before: BTreeMap<&str, _> = [
        ("rest", uids(&children(&lws, "rest").await)),
        ("legacy", uids(&children(&lws, "legacy").await)),
        ("mid", uids(&children(&lws, "mid").await)),
    ]
    .into();

    let _operator = start_operator(&cluster);
    for name in ["rest", "legacy"] {
        let (s, kids) = until_available(&sets, &lws, name).await;
        assert_eq!(
            uids(&kids),
            before[name],
            "{name}: nothing created or deleted"
        );
        assert_eq!(
            written_by_operator(&kids),
            Vec::<String>::new(),
            "{name}: nothing written"
        );
        assert_eq!(
            revision_of(&s),
            if name == "rest" {
                "5c0ffee5"
            } else {
                "1e9ac111"
            }
        );
    }
    // Mid-rollout: upstream's new children are the set's revision and finish the rollout.
    let (_, kids) = watch_until(
        &sets,
        &lws,
        "mid",
        "rollout finished",
        |k| {
            let created: Vec<_> = uids(k)
                .into_values()
                .filter(|u| !before["mid"].values().any(|b| b == u))
                .collect();
            assert!(created.is_empty(), "a child was created: {k:?}");
        },
        |s, k| available(s) && revisions(k) == ["1b1b1b1b".to_string()].into(),
    )
    .await;
    assert_eq!(
        state_of(&kids, "1b1b1b1b"),
        State::from([("decode".into(), (0, 4)), ("prefill".into(), (0, 2))])
    );

    // Afterwards a template change rolls out as ours.
    set_image(&sets, "rest", "vllm/vllm-openai:v0.12.0").await;
    let (s, kids) = watch_until(
        &sets,
        &lws,
        "rest",
        "rolled out",
        |_| {},
        |s, k| {
            available(s) && revisions(k) == [revision_of(s)].into() && revision_of(s) != "5c0ffee5"
        },
    )
    .await;
    assert_eq!(state_of(&kids, &revision_of(&s)).len(), 2);
    assert!(kids.iter().all(|k| {
        let app = &k.spec.leader_worker_template.worker_template.0["metadata"]["labels"]["app"];
        // The example's own `app: llama` is kept.
        app == "llama"
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_upgrade_rolls_nothing_even_when_the_hash_changes() {
    let cluster = cluster("upgrade").await;
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    // `disagg render` output of commit 3cbd186, for the same set.
    let fixture = |file: &str| {
        std::fs::read_to_string(repo(&format!("host/tests/fixtures/earlier-build/{file}"))).unwrap()
    };
    let earlier: Vec<LeaderWorkerSet> =
        serde_yaml_ng::Deserializer::from_str(&fixture("vllm-pd-children.yaml"))
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    let manifest: DisaggregatedSet = serde_yaml_ng::from_str(&fixture("vllm-pd.yaml")).unwrap();
    let mut expected = BTreeMap::new();
    for (name, revision) in [("earlier", None), ("rehashed", Some("deadbeef"))] {
        let mut set = manifest.clone();
        set.metadata.name = Some(name.into());
        let set = sets.create(&PostParams::default(), &set).await.unwrap();
        let kids = earlier
            .iter()
            .cloned()
            .map(|mut k| {
                // Written for this set; with `rehashed`, as if our hash function had changed since.
                let old_rev = k.metadata.labels.as_ref().unwrap()[keys::REVISION].clone();
                let rev = revision.unwrap_or(&old_rev).to_string();
                let role = k.metadata.labels.as_ref().unwrap()[keys::ROLE].clone();
                k.metadata.name = Some(format!("{name}-0-{rev}-{role}"));
                let labels = k.metadata.labels.as_mut().unwrap();
                labels.insert(keys::NAME.into(), name.into());
                labels.insert(keys::REVISION.into(), rev.clone());
                let pod_labels =
                    &mut k.spec.leader_worker_template.worker_template.0["metadata"]["labels"];
                pod_labels[keys::NAME] = json!(name);
                pod_labels[keys::REVISION] = json!(rev);
                let owner = &mut k.metadata.owner_references.as_mut().unwrap()[0];
                owner.name = name.into();
                owner.uid = set.metadata.uid.clone().unwrap();
                k
            })
            .collect();
        create_ready(&lws, name, kids).await;
        expected.insert(name, uids(&children(&lws, name).await));
    }
    let _operator = start_operator(&cluster);
    for (name, before) in expected {
        let (s, kids) = until_available(&sets, &lws, name).await;
        assert_eq!(uids(&kids), before, "{name}: nothing created or deleted");
        assert_eq!(
            written_by_operator(&kids),
            Vec::<String>::new(),
            "{name}: no writes"
        );
        assert_eq!(s.status.unwrap().observed_generation, s.metadata.generation);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_with_start_after_is_created_once_its_peers_are_ready() {
    let cluster = cluster("start-after").await;
    // Groups take a while to become ready, so an early create would show.
    cluster.sim.lws.set(kube_sim::lws_sim::LwsSimConfig {
        group_delay: std::time::Duration::from_millis(400),
        unready_fraction: 0.0,
    });
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let mut set = example("ordered", json!([]));
    set.spec.roles[1].start_after = vec!["prefill".into()];
    sets.create(&PostParams::default(), &set).await.unwrap();
    // When a revision's decode child first shows, that revision's prefill is ready
    // (later steps may scale prefill up while decode exists).
    let mut seen = std::collections::BTreeSet::new();
    let mut check = |k: &[LeaderWorkerSet]| {
        let label =
            |c: &LeaderWorkerSet, key: &str| c.metadata.labels.as_ref().unwrap()[key].clone();
        for decode in k.iter().filter(|c| label(c, keys::ROLE) == "decode") {
            let rev = label(decode, keys::REVISION);
            if !seen.insert(rev.clone()) {
                continue;
            }
            let prefill = k
                .iter()
                .find(|c| label(c, keys::ROLE) == "prefill" && label(c, keys::REVISION) == rev)
                .expect("prefill exists before decode");
            let ready = prefill.status.as_ref().map_or(0, |s| s.ready_replicas);
            assert!(
                ready > 0 && ready == prefill.spec.replicas,
                "decode {rev} created before prefill was ready"
            );
            let (p, d) = (
                prefill.metadata.creation_timestamp.as_ref().unwrap().0,
                decode.metadata.creation_timestamp.as_ref().unwrap().0,
            );
            assert!(d >= p, "creation times: prefill {p}, decode {d}");
        }
    };
    let (s, _) = watch_until(&sets, &lws, "ordered", "Available", &mut check, |s, _| {
        available(s)
    })
    .await;
    let first = revision_of(&s);
    // A rollout creates the new revision's roles in the same order.
    set_image(&sets, "ordered", "vllm/vllm-openai:v0.12.0").await;
    watch_until(&sets, &lws, "ordered", "rolled out", &mut check, |s, k| {
        available(s) && revision_of(s) != first && revisions(k) == [revision_of(s)].into()
    })
    .await;
}
