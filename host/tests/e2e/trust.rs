//! The sandbox and the authority model in the live operator: plugins that
//! block, sets that try to escape mandatory policy, writes the API server
//! refuses, names already taken, and SIGTERM with a call in flight. Each
//! shows on the right set, within seconds, while other sets carry on.

use super::harness::*;
use disagg::api::lws::LeaderWorkerSet;
use disagg::api::set::DisaggregatedSet;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn warnings(client: &kube::Client, ns: &str, set: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(set))
        .filter_map(|e| e.note)
        .collect()
}

/// A gate that calls `sleep` (ordinary code, no attack) used to stall its set
/// forever. Now the call is abandoned at its deadline: under Fail the step is
/// not taken and the set says PluginTimeout naming plugin and hook; under
/// Ignore the gate is skipped; a bystander rolls out meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_gate_is_reported_within_seconds_and_stalls_nothing_else() {
    let cluster = cluster("sleeping-gate").await;
    install_plugin(&cluster.client, "hostile", "hostile").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let sleepy = |policy: &str| json!([{"name": "hostile", "config": {"mode": "sleep", "only": "gate-step"}, "failurePolicy": policy}]);
    for (name, plugins) in [
        ("strict", sleepy("Fail")),
        ("lenient", sleepy("Ignore")),
        ("bystander", json!([])),
    ] {
        sets.create(&PostParams::default(), &example(name, plugins))
            .await
            .unwrap();
    }
    let mut before = BTreeMap::new();
    for name in ["strict", "lenient", "bystander"] {
        let (set, _) = until_available(&sets, &lws, name).await;
        before.insert(name, revision_of(&set));
        set_image(&sets, name, "vllm/vllm-openai:v0.12.0").await;
    }
    let changed = Instant::now();
    let (strict, kids) = watch_until(
        &sets,
        &lws,
        "strict",
        "PluginsReady=False (PluginTimeout)",
        |_| {},
        |s, _| condition_reason(s, "PluginsReady").as_deref() == Some("PluginTimeout"),
    )
    .await;
    let reported = changed.elapsed();
    eprintln!("a sleeping gate was reported on its set {reported:?} after the change");
    assert!(
        reported < Duration::from_secs(5),
        "reported after {reported:?}"
    );
    let message = condition_message(&strict, "PluginsReady");
    assert!(
        message.contains("hostile")
            && message.contains("gate-step")
            && message.contains("timed out"),
        "{message}"
    );
    assert_eq!(
        revisions(&kids),
        [before["strict"].clone()].into(),
        "no step taken under Fail"
    );
    let events = warnings(&cluster.client, "default", "strict", "PluginFailed").await;
    assert!(events.iter().any(|n| n.contains("gate-step")), "{events:?}");

    let bound = BTreeMap::from([("prefill".to_string(), 3), ("decode".to_string(), 5)]);
    settle(&sets, &lws, "lenient", &before["lenient"], &bound).await;
    settle(&sets, &lws, "bystander", &before["bystander"], &bound).await;
}

/// SIGTERM while plugin calls block in `sleep`: the operator exits within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_with_a_plugin_call_in_flight() {
    let cluster = cluster("sigterm").await;
    install_plugin(&cluster.client, "hostile", "hostile").await;
    let mut operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    for i in 0..4 {
        let binding =
            json!([{"name": "hostile", "config": {"mode": "sleep"}, "roles": ["prefill"]}]);
        sets.create(
            &PostParams::default(),
            &example(&format!("stuck-{i}"), binding),
        )
        .await
        .unwrap();
    }
    watch_until(
        &sets,
        &lws,
        "stuck-3",
        "PluginsReady=False",
        |_| {},
        |s, _| condition(s, "PluginsReady").as_deref() == Some("False"),
    )
    .await;
    let pid = operator.0.id().to_string();
    let term = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exited = loop {
        if let Some(status) = operator.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            term.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("shutdown took {:?}", term.elapsed());
    assert!(exited.success(), "{exited:?}");
}

/// A mandatory default binding cannot be removed or overridden by a set:
/// the attempt is Valid=False naming the binding, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_cannot_escape_a_mandatory_binding() {
    let cluster = cluster("mandatory").await;
    install_plugin(&cluster.client, "policy", "hostile").await;
    let defaults = r#"[{"name": "policy", "mandatory": true}]"#;
    let _operator = start_operator_with(&cluster, &["--default-plugins", defaults]);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let attempts = [
        ("off", json!([{"name": "policy", "roles": []}])),
        (
            "lenient",
            json!([{"name": "policy", "failurePolicy": "Ignore"}]),
        ),
        (
            "pinned",
            json!([{"name": "policy", "digest": format!("sha256:{}", "0".repeat(64))}]),
        ),
        (
            "reconfigured",
            json!([{"name": "policy", "config": {"mode": "ok"}}]),
        ),
    ];
    for (name, plugins) in &attempts {
        sets.create(&PostParams::default(), &example(name, plugins.clone()))
            .await
            .unwrap();
    }
    sets.create(&PostParams::default(), &example("obedient", json!([])))
        .await
        .unwrap();
    let (obedient, _) = until_available(&sets, &lws, "obedient").await;
    assert!(
        obedient
            .status
            .unwrap()
            .plugins
            .iter()
            .any(|p| p.name == "policy"),
        "the mandatory plugin runs for the set that does not bind it"
    );
    for (name, _) in &attempts {
        let (set, kids) = watch_until(
            &sets,
            &lws,
            name,
            "Valid=False",
            |_| {},
            |s, _| condition(s, "Valid").as_deref() == Some("False"),
        )
        .await;
        let message = condition_message(&set, "Valid");
        assert!(
            message.contains("spec.plugins[0]")
                && message.contains("policy")
                && message.contains("mandatory"),
            "{name}: {message}"
        );
        assert!(kids.is_empty(), "{name}: an invalid set gets no children");
    }
}

/// A write the API server refuses every time (an admission webhook's 403)
/// shows on the set as ReplicaFailure with the server's message and a
/// Warning Event; other sets come up meanwhile, and the set recovers once
/// the denial is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_403_is_reported_on_the_set_and_retried_with_backoff() {
    use kube_sim::faults::{Denial, FaultConfig};
    let cluster = cluster("denied").await;
    let _operator = start_operator(&cluster);
    let denied = "admission webhook \"quota.example.com\" denied the request: GPU quota exceeded";
    cluster.sim.faults.set(FaultConfig {
        deny: vec![Denial {
            method: "POST".into(),
            path: "/namespaces/team-a/leaderworkersets".into(),
            code: 403,
            message: denied.into(),
        }],
        ..FaultConfig::default()
    });
    let blocked: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "team-a");
    let blocked_lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "team-a");
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let created = Instant::now();
    blocked
        .create(&PostParams::default(), &example("quota", json!([])))
        .await
        .unwrap();
    sets.create(&PostParams::default(), &example("free", json!([])))
        .await
        .unwrap();

    let (set, kids) = watch_until(
        &blocked,
        &blocked_lws,
        "quota",
        "ReplicaFailure",
        |_| {},
        |s, _| condition(s, "ReplicaFailure").as_deref() == Some("True"),
    )
    .await;
    assert!(created.elapsed() < Duration::from_secs(5));
    assert!(kids.is_empty());
    let message = condition_message(&set, "ReplicaFailure");
    assert!(
        message.contains("GPU quota exceeded") && message.contains("403"),
        "{message}"
    );
    let events = warnings(&cluster.client, "team-a", "quota", "FailedWrite").await;
    assert!(
        events.iter().any(|n| n.contains("GPU quota exceeded")),
        "{events:?}"
    );
    until_available(&sets, &lws, "free").await;

    // Backoff: the refused creates are retried, not hammered.
    let writes = cluster
        .sim
        .writes
        .load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let more = cluster
        .sim
        .writes
        .load(std::sync::atomic::Ordering::Relaxed)
        - writes;
    assert!(more < 20, "{more} writes in 2 s while backing off");

    cluster.sim.faults.set(FaultConfig::default());
    let (set, _) = watch_until(
        &blocked,
        &blocked_lws,
        "quota",
        "recovered",
        |_| {},
        |s, _| available(s) && condition(s, "ReplicaFailure").is_none(),
    )
    .await;
    assert!(available(&set));
}

/// An object that already holds a child's name is never adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_name_held_by_another_object_is_not_taken_over() {
    let cluster = cluster("name-taken").await;
    let lease = ["--lease-duration-seconds", "2"];
    let operator = start_operator_with(&cluster, &lease);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    sets.create(&PostParams::default(), &example("taken", json!([])))
        .await
        .unwrap();
    let (up, _) = until_available(&sets, &lws, "taken").await;
    // With the operator stopped, someone else's object takes a child's name.
    drop(operator);
    let squatter_name = format!("taken-0-{}-prefill", revision_of(&up));
    let mut squatter = lws.get(&squatter_name).await.unwrap();
    lws.delete(&squatter_name, &Default::default())
        .await
        .unwrap();
    while lws.get_opt(&squatter_name).await.unwrap().is_some() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    squatter.metadata = kube::api::ObjectMeta {
        name: Some(squatter_name.clone()),
        ..Default::default()
    };
    squatter.spec.replicas = 1;
    squatter.status = None;
    lws.create(&PostParams::default(), &squatter).await.unwrap();
    let _operator = start_operator_with(&cluster, &lease);
    let (set, _) = watch_until(
        &sets,
        &lws,
        "taken",
        "ReplicaFailure",
        |_| {},
        |s, _| condition(s, "ReplicaFailure").as_deref() == Some("True"),
    )
    .await;
    let message = condition_message(&set, "ReplicaFailure");
    assert!(
        message.contains(&squatter_name) && message.contains("never adopts"),
        "{message}"
    );
    let still = lws.get(&squatter_name).await.unwrap();
    assert!(
        still.metadata.owner_references.is_none(),
        "adopted: {:?}",
        still.metadata
    );
    assert_eq!(still.spec.replicas, 1);
}

/// The leader is cut off from the API server (its requests hang) while a
/// change waits to be rolled out. It must stop leading before the standby
/// takes over, and once the cut is lifted no write of the old leader lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_stops_before_a_standby_takes_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube_sim::faults::FaultConfig;
    let cluster = cluster("partition").await;
    let spawn = |identity: &str| {
        // Each replica gets its own bearer token, by which kube-sim can cut it off.
        let kubeconfig = cluster
            .kubeconfig
            .with_file_name(format!("{identity}.kubeconfig"));
        let text = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
        std::fs::write(
            &kubeconfig,
            text.replace("user: {}", &format!("user:\n    token: {identity}")),
        )
        .unwrap();
        spawn_operator(
            &kubeconfig,
            &["--lease-duration-seconds", "3"],
            &[("POD_NAME", identity)],
        )
    };
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "lws-system");
    let holder = || async {
        leases
            .get_opt("disaggregatedset-operator")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
    };
    let mut old = spawn("replica-a");
    while holder().await.as_deref() != Some("replica-a") {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _standby = spawn("replica-b");
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    sets.create(&PostParams::default(), &example("partitioned", json!([])))
        .await
        .unwrap();
    let (up, _) = until_available(&sets, &lws, "partitioned").await;
    assert!(
        cluster.sim.faults.writes_by("replica-a") > 0,
        "the leader wrote through its token"
    );

    cluster.sim.faults.set(FaultConfig {
        black_hole: Some("replica-a".into()),
        ..FaultConfig::default()
    });
    let cut = Instant::now();
    set_image(&sets, "partitioned", "vllm/vllm-openai:v0.12.0").await;
    let mut stopped = None;
    let taken_over = loop {
        if stopped.is_none() && old.0.try_wait().unwrap().is_some() {
            stopped = Some(cut.elapsed());
        }
        if holder().await.as_deref() == Some("replica-b") {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(20),
            "the standby never took over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stopped = stopped.expect("the cut-off leader was still running when the standby took over");
    eprintln!("old leader stopped {stopped:?} after the cut; standby led after {taken_over:?}");
    assert!(stopped < taken_over);

    let landed = cluster.sim.faults.writes_by("replica-a");
    cluster.sim.faults.set(FaultConfig::default());
    let bound = BTreeMap::from([("prefill".to_string(), 3), ("decode".to_string(), 5)]);
    settle(&sets, &lws, "partitioned", &revision_of(&up), &bound).await;
    assert_eq!(
        cluster.sim.faults.writes_by("replica-a"),
        landed,
        "a write of the old leader landed"
    );
    assert!(
        cluster.sim.faults.writes_by("replica-b") > 0,
        "the new leader rolled out"
    );
}

/// A patch that changes what a plugin may not (here the child's replicas)
/// is refused and reported on its set, naming the field; the other role,
/// which the plugin is not bound to, comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_patch_is_refused_and_named_on_the_set() {
    let cluster = cluster("forbidden-patch").await;
    install_plugin(&cluster.client, "hostile", "hostile").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let rescale = json!([{"op": "replace", "path": "/spec/replicas", "value": 50}]);
    let binding = json!([{"name": "hostile", "roles": ["prefill"],
                          "config": {"mode": "return", "patch": rescale}}]);
    sets.create(&PostParams::default(), &example("rescaler", binding))
        .await
        .unwrap();
    let (set, kids) = watch_until(
        &sets,
        &lws,
        "rescaler",
        "PluginBadOutput",
        |_| {},
        |s, k| {
            condition_reason(s, "PluginsReady").as_deref() == Some("PluginBadOutput")
                && !k.is_empty()
        },
    )
    .await;
    let message = condition_message(&set, "PluginsReady");
    assert!(
        message.contains("spec.replicas") && message.contains("patch-role"),
        "{message}"
    );
    let roles: Vec<String> = kids
        .iter()
        .map(|k| k.metadata.labels.clone().unwrap()[disagg::api::keys::ROLE].clone())
        .collect();
    assert_eq!(roles, ["decode"]);
    assert!(kids.iter().all(|k| k.spec.replicas != 50));
}

/// Writes refused for one role's child (its scale patches) stall neither
/// the other role nor other sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_for_one_role_do_not_stall_the_other() {
    use kube_sim::faults::{Denial, FaultConfig};
    let cluster = cluster("one-role-denied").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    sets.create(&PostParams::default(), &example("split", json!([])))
        .await
        .unwrap();
    let (up, _) = until_available(&sets, &lws, "split").await;
    let prefill = format!("split-0-{}-prefill", revision_of(&up));
    cluster.sim.faults.set(FaultConfig {
        deny: vec![Denial {
            method: "PATCH".into(),
            path: format!("/leaderworkersets/{prefill}"),
            code: 422,
            message: format!("LeaderWorkerSet.leaderworkerset.x-k8s.io \"{prefill}\" is invalid: spec.replicas: Invalid value (injected)"),
        }],
        ..FaultConfig::default()
    });
    sets.patch(
        "split",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/roles/0/spec/replicas", "value": 3},
                {"op": "replace", "path": "/spec/roles/1/spec/replicas", "value": 6},
            ]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let (set, kids) = watch_until(
        &sets,
        &lws,
        "split",
        "decode scaled, prefill refused",
        |_| {},
        |s, k| {
            condition(s, "ReplicaFailure").as_deref() == Some("True")
                && k.iter().any(|c| {
                    c.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.ends_with("-decode"))
                        && c.spec.replicas == 6
                })
        },
    )
    .await;
    let message = condition_message(&set, "ReplicaFailure");
    assert!(
        message.contains(&prefill) && message.contains("422"),
        "{message}"
    );
    let stuck = kids
        .iter()
        .find(|k| k.metadata.name.as_deref() == Some(prefill.as_str()))
        .unwrap();
    assert_eq!(stuck.spec.replicas, 2);
}

/// A component that is slow to compile delays only the sets bound to it:
/// the operator starts, a set bound to another plugin comes up at once, and
/// the waiting set says what it waits for until its plugin has loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plugin_delays_only_the_sets_bound_to_it() {
    use std::io::Write;
    let cluster = cluster("slow-plugin").await;
    install_plugin(&cluster.client, "role-profile", "role-profile").await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&super::common::compile_bomb()).unwrap();
    put_plugin(
        &cluster.client,
        "slow",
        "plugin.wasm.gz",
        gz.finish().unwrap(),
    )
    .await;
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    sets.create(
        &PostParams::default(),
        &example("quick", json!([{"name": "role-profile"}])),
    )
    .await
    .unwrap();
    sets.create(
        &PostParams::default(),
        &example("patient", json!([{"name": "slow"}])),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let _operator = start_operator(&cluster);
    until_available(&sets, &lws, "quick").await;
    let quick = started.elapsed();
    let (patient, _) = until_available(&sets, &lws, "patient").await;
    let patient_took = started.elapsed();
    eprintln!("quick Available after {quick:?}, patient after {patient_took:?}");
    // Waiting for every load first would make the two nearly equal.
    assert!(
        quick.as_secs_f64() < 0.75 * patient_took.as_secs_f64(),
        "the quick set waited for the slow plugin"
    );
    assert_eq!(condition(&patient, "PluginsReady").as_deref(), Some("True"));
}
