//! Rollouts: create, scale, template changes on 2 and 3 roles along the
//! planner's schedule, A→B→C, rollback, role add/remove/rename, pause, delete.

use super::common::repo;
use super::harness::*;
use disagg::api::keys;
use disagg::api::lws::LeaderWorkerSet;
use disagg::api::set::DisaggregatedSet;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_scale_roll_out_and_delete() {
    let cluster = cluster("basic").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let set: DisaggregatedSet =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap())
            .unwrap();
    let name = set.metadata.name.clone().unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();

    // A fresh create: one LWS per role at its replicas, then Available.
    let (created, kids) = until_available(&sets, &lws, &name).await;
    let first_revision = created
        .status
        .as_ref()
        .unwrap()
        .update_revision
        .clone()
        .unwrap();
    assert_eq!(
        state_of(&kids, &first_revision),
        State::from([("decode".into(), (0, 4)), ("prefill".into(), (0, 2))])
    );
    assert!(kids.iter().all(|k| {
        k.metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| o[0].uid == created.metadata.uid.clone().unwrap())
    }));

    // Scaling changes replicas in place: no new revision.
    sets.patch(
        &name,
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(
                json!([{"op": "replace", "path": "/spec/roles/1/spec/replicas", "value": 6}]),
            )
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let (_, kids) = watch_until(
        &sets,
        &lws,
        &name,
        "decode scaled to 6",
        |_| {},
        |s, k| available(s) && state_of(k, &first_revision).get("decode") == Some(&(0, 6)),
    )
    .await;
    assert_eq!(kids.len(), 2);

    // A template change on one role rolls both out together, along the planner's
    // schedule (docs/planner.md) and within the surge bound (maxSurge 1, maxUnavailable 0).
    let before = sets.get(&name).await.unwrap();
    set_image(&sets, &name, "vllm/vllm-openai:v0.12.0").await;
    let targets = BTreeMap::from([("prefill".to_string(), 2), ("decode".to_string(), 6)]);
    let after = sets.get(&name).await.unwrap();
    let schedule = planned(&before, &after);
    let mut observed: Vec<State> = Vec::new();
    let mut new_revision = String::new();
    let (done, kids) = watch_until(
        &sets,
        &lws,
        &name,
        "rollout complete",
        |kids| {
            let Some(rev) = kids
                .iter()
                .map(|k| k.metadata.labels.clone().unwrap_or_default()[keys::REVISION].clone())
                .find(|r| *r != first_revision)
            else {
                return;
            };
            new_revision = rev;
            let state = state_of(kids, &new_revision);
            for (role, (old, new)) in &state {
                assert!(
                    old + new <= targets[role] + 1,
                    "surge bound broken for {role}: {state:?}"
                );
            }
            assert!(
                on_schedule(&schedule, &state),
                "{state:?} is not on the planner's schedule (or between two of its steps): {schedule:?}"
            );
            if observed.last() != Some(&state) {
                observed.push(state);
            }
        },
        |s, k| {
            available(s)
                && s.status.as_ref().and_then(|st| st.update_revision.as_deref()) != Some(&first_revision)
                && k.len() == 2
        },
    )
    .await;
    let final_revision = done.status.unwrap().update_revision.unwrap();
    assert_eq!(
        state_of(&kids, &final_revision),
        State::from([("decode".into(), (0, 6)), ("prefill".into(), (0, 2))])
    );
    assert!(
        observed.len() >= 3,
        "the rollout went through intermediate states: {observed:?}"
    );
    assert_eq!(observed.last().unwrap()["decode"], (0, 6));

    // Deleting the set takes its children.
    sets.delete(&name, &DeleteParams::background())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !children(&lws, &name).await.is_empty() {
        assert!(Instant::now() < deadline, "children outlived their set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_roles_external_scaling_a_b_c_rollback_and_role_removal() {
    use disagg::api::scaler::DisaggregatedSetRoleScaler;
    let cluster = cluster("three").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let scalers: Api<DisaggregatedSetRoleScaler> =
        Api::namespaced(cluster.client.clone(), "default");
    let set: DisaggregatedSet =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/epd-3role.yaml")).unwrap())
            .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let (a, kids) = until_available(&sets, &lws, "epd").await;
    let rev_a = revision_of(&a);
    assert_eq!(
        state_of(&kids, &rev_a),
        State::from([
            ("encode".into(), (0, 2)),
            ("prefill".into(), (0, 4)),
            ("decode".into(), (0, 6))
        ])
    );

    // The External role's scaler exists, seeded from the role, and drives it.
    let scaler = scalers.get("epd-decode").await.unwrap();
    assert_eq!(scaler.spec.replicas, 6);
    scalers
        .patch_scale(
            "epd-decode",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 8}})),
        )
        .await
        .unwrap();
    watch_until(
        &sets,
        &lws,
        "epd",
        "decode follows its scaler",
        |_| {},
        |s, k| available(s) && state_of(k, &rev_a).get("decode") == Some(&(0, 8)),
    )
    .await;
    // Its status follows the role's groups, for HPA.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = scalers
            .get("epd-decode")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        if status.replicas == Some(8) {
            assert!(
                status
                    .selector
                    .unwrap()
                    .contains("disaggregatedset.x-k8s.io/role=decode")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scaler's status never showed 8: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A template change on one role moves all three along the planner's schedule.
    let before = sets.get("epd").await.unwrap();
    set_image(&sets, "epd", "vllm/vllm-openai:v0.12.0").await;
    let after = sets.get("epd").await.unwrap();
    let external = BTreeMap::from([("decode".to_string(), 8)]);
    let schedule = planned_with(&before, &after, &external);
    let bound = BTreeMap::from([
        ("encode".to_string(), 3),
        ("prefill".to_string(), 6),
        ("decode".to_string(), 9),
    ]);
    let mut seen = 0;
    let (b, _) = watch_until(
        &sets,
        &lws,
        "epd",
        "rolled out to B",
        |kids| {
            let Some(rev) = revisions(kids).into_iter().find(|r| *r != rev_a) else {
                return;
            };
            let state = state_of(kids, &rev);
            assert!(
                on_schedule(&schedule, &state),
                "{state:?} is off the schedule {schedule:?}"
            );
            seen += 1;
        },
        |s, k| available(s) && revision_of(s) != rev_a && revisions(k).len() == 1,
    )
    .await;
    assert!(seen > 0);
    let rev_b = revision_of(&b);

    // A→B→C: C arrives while B is rolling out; B (the newest old) drains first.
    set_image(&sets, "epd", "vllm/vllm-openai:v0.13.0").await;
    watch_until(
        &sets,
        &lws,
        "epd",
        "C under way",
        |_| {},
        |s, k| revision_of(s) != rev_b && revisions(k).len() > 1,
    )
    .await;
    set_image(&sets, "epd", "vllm/vllm-openai:v0.14.0").await;
    let (c, _) = settle(&sets, &lws, "epd", &rev_b, &bound).await;
    let rev_c = revision_of(&c);

    // Rollback: the first template again is revision A again.
    set_image(&sets, "epd", "vllm/vllm-openai:v0.11.0").await;
    let (back, _) = settle(&sets, &lws, "epd", &rev_c, &bound).await;
    assert_eq!(revision_of(&back), rev_a);

    // Removing a role is a new revision without it.
    sets.patch(
        "epd",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "remove", "path": "/spec/roles/0"}])).unwrap(),
        ),
    )
    .await
    .unwrap();
    let (removed, kids) = settle(&sets, &lws, "epd", &rev_a, &bound).await;
    let rev_d = revision_of(&removed);
    assert_eq!(
        state_of(&kids, &rev_d),
        State::from([("prefill".into(), (0, 4)), ("decode".into(), (0, 8))])
    );

    // Deleting the set takes the children and the scaler.
    sets.delete("epd", &DeleteParams::background())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !children(&lws, "epd").await.is_empty()
        || scalers.get_opt("epd-decode").await.unwrap().is_some()
    {
        assert!(
            Instant::now() < deadline,
            "children or the scaler outlived their set"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_role_add_and_rename() {
    let cluster = cluster("roles").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    sets.create(&PostParams::default(), &example("roles", json!([])))
        .await
        .unwrap();
    let (first, _) = until_available(&sets, &lws, "roles").await;
    let rev_a = revision_of(&first);
    let replicas = |prefill: i32, decode: i32| {
        Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/roles/0/spec/replicas", "value": prefill},
                {"op": "replace", "path": "/spec/roles/1/spec/replicas", "value": decode},
            ]))
            .unwrap(),
        )
    };

    // Paused: every role at 0 keeps the revision and runs nothing.
    sets.patch("roles", &PatchParams::default(), &replicas(0, 0))
        .await
        .unwrap();
    watch_until(
        &sets,
        &lws,
        "roles",
        "paused",
        |_| {},
        |s, k| {
            s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
                && k.iter().all(|c| c.spec.replicas == 0)
        },
    )
    .await;
    sets.patch("roles", &PatchParams::default(), &replicas(2, 4))
        .await
        .unwrap();
    let (resumed, kids) = watch_until(
        &sets,
        &lws,
        "roles",
        "resumed",
        |_| {},
        |s, k| {
            available(s)
                && state_of(k, &rev_a)
                    == State::from([("decode".into(), (0, 4)), ("prefill".into(), (0, 2))])
        },
    )
    .await;
    assert_eq!(revision_of(&resumed), rev_a);
    assert_eq!(kids.len(), 2);

    // Adding a role is a new revision with it; the old roles roll over together.
    let mut encode = serde_json::to_value(&resumed.spec.roles[0]).unwrap();
    encode["name"] = json!("encode");
    encode["spec"]["replicas"] = json!(1);
    sets.patch(
        "roles",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(
                json!([{"op": "add", "path": "/spec/roles/-", "value": encode}]),
            )
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let bound = BTreeMap::from([
        ("prefill".to_string(), 3),
        ("decode".to_string(), 5),
        ("encode".to_string(), 2),
        ("generate".to_string(), 5),
    ]);
    let (added, kids) = settle(&sets, &lws, "roles", &rev_a, &bound).await;
    let rev_b = revision_of(&added);
    assert_eq!(
        state_of(&kids, &rev_b),
        State::from([
            ("decode".into(), (0, 4)),
            ("encode".into(), (0, 1)),
            ("prefill".into(), (0, 2))
        ])
    );

    // Renaming a role replaces it: the old name drains with its revision.
    sets.patch(
        "roles",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(
                json!([{"op": "replace", "path": "/spec/roles/1/name", "value": "generate"}]),
            )
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let (renamed, kids) = settle(&sets, &lws, "roles", &rev_b, &bound).await;
    assert_eq!(
        state_of(&kids, &revision_of(&renamed)),
        State::from([
            ("generate".into(), (0, 4)),
            ("encode".into(), (0, 1)),
            ("prefill".into(), (0, 2))
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_child_is_left_alone_and_reported() {
    let cluster = cluster("foreign").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    // Someone else's LWS already has the name the set's prefill child would get.
    let set = example("taken", json!([]));
    // The revision is hashed from the spec as the API server stores it, defaults applied.
    let mut defaulted = disagg::input::load_set(&repo("examples/vllm-pd.yaml")).unwrap();
    defaulted.metadata.name = Some("taken".into());
    let revision = disagg::core::revision::revision(&defaulted.spec, &[]);
    let mut squatter =
        disagg::core::render::render_child(&set, &set.spec.roles[0], 0, &revision, 7);
    squatter.metadata.owner_references = None;
    let squatter = lws.create(&PostParams::default(), &squatter).await.unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let (taken, _) = watch_until(
        &sets,
        &lws,
        "taken",
        "Degraded",
        |_| {},
        |s, _| condition(s, "Degraded").as_deref() == Some("True"),
    )
    .await;
    let degraded = taken
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.reason, "ChildNameTaken");
    assert!(
        degraded
            .message
            .contains(squatter.metadata.name.as_deref().unwrap())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = lws
        .get(squatter.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(after.spec.replicas, 7);
    assert_eq!(after.metadata.owner_references, None);
    let writers: Vec<String> = after
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        !writers
            .iter()
            .any(|m| m == disagg::controller::FIELD_MANAGER),
        "the operator wrote to it: {writers:?}"
    );
}

fn label(k: &LeaderWorkerSet, key: &str) -> String {
    k.metadata.labels.clone().unwrap_or_default()[key].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_slice_sets_place_roll_out_per_slice_and_resize() {
    let cluster = cluster("slices").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let mut set = example("sliced", json!([]));
    set.spec.slices = 2;
    set.spec.placement_policy = serde_json::from_value(
        json!({"type": "ExclusiveSlice", "topology": "topology.kubernetes.io/zone"}),
    )
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();

    // Two copies of the topology, each slice's pods kept together and apart from the other slice.
    let (created, kids) = until_available(&sets, &lws, "sliced").await;
    assert_eq!(kids.len(), 4);
    for k in &kids {
        let slice = label(k, keys::SLICE);
        let pod = serde_json::to_value(&k.spec.leader_worker_template.worker_template).unwrap();
        let affinity = &pod["spec"]["affinity"];
        let together =
            &affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(together["topologyKey"], "topology.kubernetes.io/zone");
        assert_eq!(together["labelSelector"]["matchLabels"][keys::SLICE], slice);
        let apart =
            &affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(
            apart["labelSelector"]["matchExpressions"][1]["values"][0],
            slice
        );
    }
    let slices_of = |k: &[LeaderWorkerSet]| {
        k.iter()
            .map(|c| label(c, keys::SLICE))
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(slices_of(&kids), ["0", "1"].map(String::from).into());

    // A template change rolls every slice out, each within its own surge bound.
    set_image(&sets, "sliced", "vllm/vllm-openai:v0.12.0").await;
    let first = revision_of(&created);
    let bound = BTreeMap::from([("prefill".to_string(), 3), ("decode".to_string(), 5)]);
    let (_, kids) = watch_until(
        &sets,
        &lws,
        "sliced",
        "every slice rolled out",
        |kids| {
            let mut totals: BTreeMap<(String, String), i32> = BTreeMap::new();
            for k in kids {
                *totals
                    .entry((label(k, keys::SLICE), label(k, keys::ROLE)))
                    .or_default() += k.spec.replicas;
            }
            for ((slice, role), total) in totals {
                assert!(
                    total <= bound[&role],
                    "slice {slice} {role}: {total} groups over all revisions"
                );
            }
        },
        |s, k| {
            available(s)
                && revision_of(s) != first
                && revisions(k) == [revision_of(s)].into()
                && k.len() == 4
        },
    )
    .await;
    assert_eq!(slices_of(&kids), ["0", "1"].map(String::from).into());

    // Slices are added and removed whole.
    for (n, expected) in [(3, &["0", "1", "2"][..]), (1, &["0"][..])] {
        sets.patch(
            "sliced",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"slices": n}})),
        )
        .await
        .unwrap();
        let (_, kids) = watch_until(
            &sets,
            &lws,
            "sliced",
            "resized",
            |_| {},
            |s, k| available(s) && k.len() == 2 * n,
        )
        .await;
        assert_eq!(
            slices_of(&kids),
            expected.iter().map(|s| s.to_string()).collect()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_rollout_turns_degraded_after_its_deadline_and_recovers() {
    let cluster = cluster("deadline").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let mut set = example("stalls", json!([]));
    set.spec.progress_deadline_seconds = Some(2);
    sets.create(&PostParams::default(), &set).await.unwrap();
    let (created, _) = until_available(&sets, &lws, "stalls").await;

    // A new image, and an annotation that new prefill LWSs get at creation
    // (role metadata is not part of the revision): kube-sim holds their groups unready.
    sets.patch(
        "stalls",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "add", "path": "/spec/roles/0/metadata/annotations",
                 "value": {kube_sim::lws_sim::UNREADY_ANNOTATION: "all"}},
                {"op": "replace",
                 "path": "/spec/roles/0/spec/leaderWorkerTemplate/workerTemplate/spec/containers/0/image",
                 "value": "vllm/vllm-openai:v0.12.0"},
            ]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let (stalled, kids) = watch_until(
        &sets,
        &lws,
        "stalls",
        "Degraded",
        |_| {},
        |s, _| condition(s, "Degraded").as_deref() == Some("True"),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "Degraded came {:?} after the change, long after the 2 s deadline",
        started.elapsed()
    );
    let degraded = stalled
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded.reason, "ProgressDeadlineExceeded");
    assert!(
        degraded.message.contains("progressDeadlineSeconds"),
        "{}",
        degraded.message
    );

    // Once the groups come up (the annotation goes), the rollout finishes and Degraded clears.
    let stuck = kids
        .iter()
        .find(|k| {
            k.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(kube_sim::lws_sim::UNREADY_ANNOTATION))
        })
        .expect("the new prefill LWS");
    lws.patch(
        stuck.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {kube_sim::lws_sim::UNREADY_ANNOTATION: null}}}),
        ),
    )
    .await
    .unwrap();
    let bound = BTreeMap::from([("prefill".to_string(), 3), ("decode".to_string(), 5)]);
    let (done, _) = settle(&sets, &lws, "stalls", &revision_of(&created), &bound).await;
    assert_eq!(condition(&done, "Degraded").as_deref(), Some("False"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_lws_deleted_mid_rollout_is_recreated() {
    let cluster = cluster("recreate").await;
    // Slow groups, so that the rollout is still under way when the child goes.
    cluster.sim.lws.set(kube_sim::lws_sim::LwsSimConfig {
        group_delay: Duration::from_millis(200),
        unready_fraction: 0.0,
    });
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    sets.create(&PostParams::default(), &example("fragile", json!([])))
        .await
        .unwrap();
    let (created, _) = until_available(&sets, &lws, "fragile").await;
    let first = revision_of(&created);
    set_image(&sets, "fragile", "vllm/vllm-openai:v0.12.0").await;
    let (_, kids) = watch_until(
        &sets,
        &lws,
        "fragile",
        "a new prefill LWS",
        |_| {},
        |_, k| {
            k.iter()
                .any(|c| label(c, keys::REVISION) != first && label(c, keys::ROLE) == "prefill")
        },
    )
    .await;
    let doomed = kids
        .iter()
        .find(|c| label(c, keys::REVISION) != first && label(c, keys::ROLE) == "prefill")
        .unwrap();
    let doomed_uid = doomed.metadata.uid.clone();
    lws.delete(
        doomed.metadata.name.as_deref().unwrap(),
        &DeleteParams::background(),
    )
    .await
    .unwrap();

    // The rollout goes on: the child is created again (a new object) and the set converges.
    let bound = BTreeMap::from([("prefill".to_string(), 3), ("decode".to_string(), 5)]);
    let (_, kids) = settle(&sets, &lws, "fragile", &first, &bound).await;
    let prefill = kids
        .iter()
        .find(|c| label(c, keys::ROLE) == "prefill")
        .unwrap();
    assert_eq!(prefill.metadata.name, doomed.metadata.name);
    assert_ne!(prefill.metadata.uid, doomed_uid);
    assert_eq!(prefill.spec.replicas, 2);
}

/// The short version of `cargo bench --bench operator` (which runs 1,000 sets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sets_settle_and_an_idle_operator_writes_nothing() {
    use std::sync::atomic::Ordering::Relaxed;
    let cluster = cluster("many").await;
    let _operator = start_operator_with(&cluster, &["--no-leader-election"]);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let mut template: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/epd-3role.yaml")).unwrap())
            .unwrap();
    for role in template["spec"]["roles"].as_array_mut().unwrap() {
        role.as_object_mut().unwrap().remove("scaling");
    }
    let n = 40;
    for i in 0..n {
        let mut set = template.clone();
        set["metadata"]["name"] = json!(format!("s{i:02}"));
        let set: DisaggregatedSet = serde_json::from_value(set).unwrap();
        sets.create(&PostParams::default(), &set).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = sets.list(&Default::default()).await.unwrap();
        if list.items.iter().filter(|s| available(s)).count() == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all {n} sets became Available"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kids = lws.list(&Default::default()).await.unwrap();
    assert_eq!(kids.items.len(), 3 * n);

    // Settled: no more writes while nothing changes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cluster.sim.writes.load(Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        cluster.sim.writes.load(Relaxed),
        before,
        "an idle operator wrote to the API"
    );
}
