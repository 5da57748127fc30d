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
