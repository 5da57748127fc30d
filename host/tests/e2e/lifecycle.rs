//! Sets over their life: foreign children, slices, stalls, lost children, many sets at rest.

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
    let probes = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let _operator =
        start_operator_with(&cluster, &["--no-leader-election", "--probe-addr", &probes]);
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

    // One Event for the three creates of each set, naming all three.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.client.clone(), "default");
    let events = events.list(&Default::default()).await.unwrap().items;
    for i in 0..n {
        let set = format!("s{i:02}");
        let created: Vec<&str> = events
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&set))
            .filter(|e| e.reason.as_deref() == Some("CreatedChild"))
            .filter_map(|e| e.note.as_deref())
            .collect();
        assert_eq!(created.len(), 1, "{set}: {created:?}");
        for role in ["encode", "prefill", "decode"] {
            assert!(
                created[0].contains(&format!("role {role},")),
                "{set}: {created:?}"
            );
        }
    }

    // The operator's metrics say what it did and that nothing waits.
    let text = metrics_of(&probes).await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    assert_eq!(value("disagg_reconcile_queue_depth"), 0.0);
    assert!(
        value("disagg_step_latency_seconds_count") >= n as f64,
        "{text}"
    );
    assert!(
        value(r#"disagg_events_total{result="ok"}"#) >= n as f64,
        "{text}"
    );
    assert_eq!(
        text.lines()
            .find(|l| l.starts_with(r#"disagg_events_total{result="dropped"}"#)),
        None
    );

    // Sets deleted (their children going with them) leave nothing queued.
    for i in 0..5 {
        sets.delete(&format!("s{i:02}"), &Default::default())
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while lws.list(&Default::default()).await.unwrap().items.len() > 3 * (n - 5) {
        assert!(Instant::now() < deadline, "the deleted sets' children stay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = metrics_of(&probes).await;
    assert!(
        text.lines().any(|l| l == "disagg_reconcile_queue_depth 0"),
        "{text}"
    );
}

/// The operator's `/metrics` at `addr`.
async fn metrics_of(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    text
}
