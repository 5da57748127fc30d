//! Plugins in the live operator: gates, failure policies, default bindings, hot swap.

use super::common;
use super::harness::*;
use disagg::api::keys;
use disagg::api::lws::LeaderWorkerSet;
use disagg::api::set::DisaggregatedSet;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_holds_each_step_until_approved() {
    let cluster = cluster("gate").await;
    install_plugin(&cluster.client, "rollout-gate", "rollout-gate").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let set = example(
        "gated",
        json!([{"name": "rollout-gate", "config": {"requireApproval": true, "recheckSeconds": 1}}]),
    );
    sets.create(&PostParams::default(), &set).await.unwrap();
    let (created, _) = until_available(&sets, &lws, "gated").await;
    let first = created.status.unwrap().update_revision.unwrap();

    set_image(&sets, "gated", "vllm/vllm-openai:v0.12.0").await;
    let (held, kids) = watch_until(
        &sets,
        &lws,
        "gated",
        "held at step 1",
        |_| {},
        |s, _| condition(s, "RolloutHeld").as_deref() == Some("True"),
    )
    .await;
    let status = held.status.unwrap();
    let rollout = status.rollout.clone().unwrap();
    assert_eq!(rollout.held_by.as_deref(), Some("rollout-gate"));
    assert!(rollout.hold_reason.unwrap().contains("approve-step"));
    let revision = status.update_revision.unwrap();
    assert_ne!(revision, first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kids_now = children(&lws, "gated").await;
    assert_eq!(
        state_of(&kids_now, &revision),
        state_of(&kids, &revision),
        "nothing moves while held"
    );
    assert!(
        state_of(&kids_now, &revision)
            .values()
            .all(|(_, new)| *new == 0)
    );

    // Approving step 1 lets exactly that step through; the gate then holds step 2.
    sets.patch(
        "gated",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {keys::APPROVE_STEP: "1"}}})),
    )
    .await
    .unwrap();
    let (_, kids) = watch_until(
        &sets,
        &lws,
        "gated",
        "step 1 taken, step 2 held",
        |_| {},
        |s, k| {
            let moved = state_of(k, &revision).values().any(|(_, new)| *new > 0);
            moved
                && s.status
                    .as_ref()
                    .and_then(|st| st.rollout.as_ref())
                    .and_then(|r| r.hold_reason.as_deref())
                    .is_some_and(|r| r.contains("step 2"))
        },
    )
    .await;
    assert_eq!(
        state_of(&kids, &revision)
            .values()
            .map(|(_, n)| n)
            .sum::<i32>(),
        2,
        "step 1 adds one group per role"
    );

    // Unbinding the gate (it patches no template, so the revision stays) lets the rollout finish.
    sets.patch(
        "gated",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"plugins": null}})),
    )
    .await
    .unwrap();
    watch_until(
        &sets,
        &lws,
        "gated",
        "rollout complete",
        |_| {},
        |s, k| {
            available(s)
                && condition(s, "RolloutHeld").as_deref() == Some("False")
                && state_of(k, &revision)
                    == State::from([("decode".into(), (0, 4)), ("prefill".into(), (0, 2))])
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_blocks_under_fail_and_is_skipped_under_ignore() {
    let cluster = cluster("failure").await;
    install_plugin(&cluster.client, "hostile", "hostile").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let trap = |policy: &str| json!([{"name": "hostile", "config": {"mode": "trap"}, "failurePolicy": policy, "roles": ["prefill"]}]);
    sets.create(&PostParams::default(), &example("strict", trap("Fail")))
        .await
        .unwrap();
    sets.create(&PostParams::default(), &example("lenient", trap("Ignore")))
        .await
        .unwrap();

    // Fail: the role the plugin patches gets no child; the other role carries on.
    let (strict, kids) = watch_until(
        &sets,
        &lws,
        "strict",
        "PluginsReady=False",
        |_| {},
        |s, k| condition(s, "PluginsReady").as_deref() == Some("False") && !k.is_empty(),
    )
    .await;
    let roles: Vec<String> = kids
        .iter()
        .map(|k| k.metadata.labels.clone().unwrap()[keys::ROLE].clone())
        .collect();
    assert_eq!(roles, vec!["decode"]);
    let message = strict
        .status
        .clone()
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "PluginsReady")
        .unwrap()
        .message;
    assert!(
        message.contains("hostile") && message.contains("prefill"),
        "{message}"
    );
    // And it says what waits: not a rollout in progress, a role held back by a plugin.
    assert_eq!(
        condition_reason(&strict, "Progressing").as_deref(),
        Some("PluginBlocked")
    );
    assert!(
        condition_message(&strict, "Progressing").starts_with("changes to role prefill wait"),
        "{}",
        condition_message(&strict, "Progressing")
    );

    // Ignore: the plugin is skipped and the set comes up whole; the failure is a Warning Event.
    let (_, kids) = until_available(&sets, &lws, "lenient").await;
    assert_eq!(kids.len(), 2);

    // Both failures are Warning Events on their sets.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.client.clone(), "default");
    let warned: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("PluginFailed"))
        .filter_map(|e| e.regarding.and_then(|r| r.name))
        .collect();
    assert!(
        warned.contains(&"strict".to_string()) && warned.contains(&"lenient".to_string()),
        "{warned:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_bindings_and_plugin_hot_swap() {
    use disagg::plugin::Runtime;
    let cluster = cluster("hotswap").await;
    let v1 = std::fs::read(common::component("role-profile")).unwrap();
    let v2 = common::with_custom_section(&v1, "build", b"v2");
    let (d1, d2) = (Runtime::digest(&v1).unwrap(), Runtime::digest(&v2).unwrap());
    put_plugin(&cluster.client, "role-profile", "plugin.wasm", v1.clone()).await;
    let _operator = start_operator_with(
        &cluster,
        &["--default-plugins", r#"[{"name": "role-profile"}]"#],
    );
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let bound = BTreeMap::from([("prefill".to_string(), 3), ("decode".to_string(), 5)]);

    // "plain" binds nothing and gets the default; "tuned" replaces it with its own binding.
    let tuned_binding = json!([{"name": "role-profile",
        "config": {"roles": {"decode": {"env": {"TUNED": "yes"}}}}}]);
    sets.create(&PostParams::default(), &example("plain", json!([])))
        .await
        .unwrap();
    sets.create(&PostParams::default(), &example("tuned", tuned_binding))
        .await
        .unwrap();
    let (plain, _) = until_available(&sets, &lws, "plain").await;
    let (_, tuned_kids) = until_available(&sets, &lws, "tuned").await;
    assert_eq!(plugin_digest(&plain, "role-profile"), Some(d1.clone()));
    let env_of = |k: &LeaderWorkerSet| {
        serde_json::to_value(&k.spec.leader_worker_template.worker_template).unwrap()["spec"]
            ["containers"][0]["env"]
            .to_string()
    };
    for k in &tuned_kids {
        let role = k.metadata.labels.clone().unwrap()[keys::ROLE].clone();
        assert_eq!(env_of(k).contains("TUNED"), role == "decode", "{role}");
    }
    let mut revision = BTreeMap::new();
    for name in ["plain", "tuned"] {
        revision.insert(name, revision_of(&sets.get(name).await.unwrap()));
    }

    // A new build of a template-patching plugin that patches the templates as
    // the last one did is in use at once and rolls nothing out: the children
    // already run what it renders (adoption by template equality).
    let before: BTreeMap<&str, Vec<_>> = [
        ("plain", children(&lws, "plain").await),
        ("tuned", children(&lws, "tuned").await),
    ]
    .into();
    put_plugin(&cluster.client, "role-profile", "plugin.wasm", v2.clone()).await;
    for name in ["plain", "tuned"] {
        let (set, kids) = watch_until(
            &sets,
            &lws,
            name,
            "v2 in use",
            |_| {},
            |s, _| plugin_digest(s, "role-profile") == Some(d2.clone()) && available(s),
        )
        .await;
        assert_eq!(revision_of(&set), revision[name], "{name}: no new revision");
        let uids = |k: &[LeaderWorkerSet]| {
            k.iter()
                .map(|c| (c.metadata.uid.clone(), c.metadata.resource_version.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            uids(&kids),
            uids(&before[name]),
            "{name}: children untouched"
        );
    }
    // A binding whose patch changes does roll out.
    sets.patch(
        "tuned",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"plugins": [{"name": "role-profile",
            "config": {"roles": {"decode": {"env": {"TUNED": "more"}}}}}]}})),
    )
    .await
    .unwrap();
    let (set, _) = settle(&sets, &lws, "tuned", &revision["tuned"], &bound).await;
    revision.insert("tuned", revision_of(&set));

    // A broken component is refused: the last good one stays in use (no rollout),
    // the ConfigMap gets a Warning Event, and the sets say why in PluginsReady.
    put_plugin(
        &cluster.client,
        "role-profile",
        "plugin.wasm",
        b"not a component".to_vec(),
    )
    .await;
    for name in ["plain", "tuned"] {
        let (set, _) = watch_until(
            &sets,
            &lws,
            name,
            "PluginsReady=False",
            |_| {},
            |s, _| condition(s, "PluginsReady").as_deref() == Some("False"),
        )
        .await;
        let message = condition_message(&set, "PluginsReady");
        assert!(
            message.contains("refused") && message.contains(&d2),
            "{message}"
        );
        assert_eq!(plugin_digest(&set, "role-profile"), Some(d2.clone()));
        assert_eq!(revision_of(&set), revision[name]);
    }
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.client.clone(), "lws-system");
    let refused = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("PluginRefused"))
        .expect("a PluginRefused Event");
    assert_eq!(
        refused.regarding.and_then(|r| r.name).as_deref(),
        Some("role-profile")
    );

    // A digest pin runs only that component: pinned to v1 while v2 is in use, nothing is created.
    let pinned = json!([{"name": "role-profile", "digest": d1}]);
    sets.create(&PostParams::default(), &example("pinned", pinned))
        .await
        .unwrap();
    let (set, kids) = watch_until(
        &sets,
        &lws,
        "pinned",
        "pin mismatch reported",
        |_| {},
        |s, _| condition_message(s, "PluginsReady").contains("pinned"),
    )
    .await;
    assert!(
        kids.is_empty(),
        "a set whose pin does not match creates nothing"
    );
    assert_eq!(condition(&set, "PluginsReady").as_deref(), Some("False"));

    // A gzip-compressed v1 loads (its digest is that of the component): the pin
    // matches, the others use v1 again (which renders what their children run:
    // nothing rolls), and every set is ready again.
    put_plugin(
        &cluster.client,
        "role-profile",
        "plugin.wasm.gz",
        common::gzip(&v1),
    )
    .await;
    until_available(&sets, &lws, "pinned").await;
    for name in ["plain", "tuned"] {
        let (set, _) = watch_until(
            &sets,
            &lws,
            name,
            "v1 in use",
            |_| {},
            |s, _| {
                plugin_digest(s, "role-profile") == Some(d1.clone())
                    && condition(s, "PluginsReady").as_deref() == Some("True")
                    && available(s)
            },
        )
        .await;
        assert_eq!(revision_of(&set), revision[name], "{name}: nothing rolled");
    }

    // A deleted plugin is reported on the sets that need it, and their children stay as they are.
    let before = children(&lws, "plain").await;
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(cluster.client.clone(), "lws-system")
        .delete("role-profile", &DeleteParams::default())
        .await
        .unwrap();
    for name in ["plain", "tuned", "pinned"] {
        let (set, _) = watch_until(
            &sets,
            &lws,
            name,
            "PluginMissing reported",
            |_| {},
            |s, _| condition_message(s, "PluginsReady").contains("not found"),
        )
        .await;
        assert_eq!(condition(&set, "PluginsReady").as_deref(), Some("False"));
    }
    let after = children(&lws, "plain").await;
    let names = |k: &[LeaderWorkerSet]| -> Vec<(Option<String>, i32)> {
        k.iter()
            .map(|c| (c.metadata.name.clone(), c.spec.replicas))
            .collect()
    };
    assert_eq!(names(&after), names(&before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_their_own_sets_only() {
    let cluster = cluster("hostile").await;
    install_plugin(&cluster.client, "hostile", "hostile").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    // Each set binds the hostile plugin to its prefill role, misbehaving one way.
    // (Under a loaded machine the memory bomb and the 4 MiB output may reach
    // the 100 ms deadline before their own limits; either is the sandbox
    // holding. tests/plugins.rs checks each limit on its own, with a longer deadline.)
    let cases: [(&str, &str, &[&str]); 5] = [
        ("loop", "spins", &["timed out"]),
        ("trap", "traps", &["trapped", "panics on purpose"]),
        ("oom", "hoards", &["out of memory", "timed out"]),
        ("big-output", "floods", &["output over the", "timed out"]),
        ("garbage", "garbles", &["bad output"]),
    ];
    for (mode, name, _) in cases {
        let binding = json!([{"name": "hostile", "config": {"mode": mode}, "roles": ["prefill"]}]);
        sets.create(&PostParams::default(), &example(name, binding))
            .await
            .unwrap();
    }
    // A bystander created after them, and a set whose gate always holds.
    sets.create(&PostParams::default(), &example("bystander", json!([])))
        .await
        .unwrap();
    let hold = json!([{"name": "hostile", "config": {"mode": "hold"}}]);
    sets.create(&PostParams::default(), &example("held", hold))
        .await
        .unwrap();

    // Other sets keep reconciling: the bystander comes up and rolls out.
    let (bystander, _) = until_available(&sets, &lws, "bystander").await;
    set_image(&sets, "bystander", "vllm/vllm-openai:v0.12.0").await;
    let bound = BTreeMap::from([("prefill".to_string(), 3), ("decode".to_string(), 5)]);
    settle(&sets, &lws, "bystander", &revision_of(&bystander), &bound).await;

    // Each failure shows on its own set, naming the plugin, the role and what went wrong;
    // the role it patches gets no child (Fail), the other role does.
    for (mode, name, expected) in cases {
        let (set, kids) = watch_until(
            &sets,
            &lws,
            name,
            "PluginsReady=False",
            |_| {},
            |s, k| condition(s, "PluginsReady").as_deref() == Some("False") && !k.is_empty(),
        )
        .await;
        let message = condition_message(&set, "PluginsReady");
        assert!(
            message.contains("hostile")
                && message.contains("prefill")
                && expected.iter().any(|e| message.contains(e)),
            "{mode}: {message}"
        );
        let roles: Vec<String> = kids
            .iter()
            .map(|k| k.metadata.labels.clone().unwrap()[keys::ROLE].clone())
            .collect();
        assert_eq!(roles, ["decode"], "{mode}");
    }

    // The holding gate: the set comes up, and its rollout stops at step 1 and says why.
    let (held, _) = until_available(&sets, &lws, "held").await;
    set_image(&sets, "held", "vllm/vllm-openai:v0.12.0").await;
    let (set, _) = watch_until(
        &sets,
        &lws,
        "held",
        "RolloutHeld",
        |_| {},
        |s, _| condition(s, "RolloutHeld").as_deref() == Some("True"),
    )
    .await;
    let rollout = set.status.unwrap().rollout.unwrap();
    assert_eq!(rollout.held_by.as_deref(), Some("hostile"));
    assert!(
        rollout
            .hold_reason
            .unwrap()
            .contains("never lets a step through")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        revisions(&children(&lws, "held").await),
        [revision_of(&held)].into(),
        "no new-revision child while the gate holds"
    );
}

/// `disagg render` is the operator's own decide step: for the same file, with
/// the shipped plugins and default bindings (what `disagg dev` installs), it
/// prints the children the operator creates — names, revision, replicas after
/// scaling plugins, templates after patch plugins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_prints_what_the_operator_creates() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let cluster = cluster("render-same").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "lws-system");
    for cm in disagg::defaults::plugin_configmaps() {
        configmaps
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
    }
    let _operator = start_operator_with(
        &cluster,
        &["--default-plugins", disagg::defaults::DEFAULT_PLUGINS],
    );
    let file = common::repo("examples/vllm-pd-plugins.yaml");
    let set: DisaggregatedSet =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let name = set.metadata.name.clone().unwrap();
    let ns = set.metadata.namespace.clone().unwrap_or("default".into());
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), &ns);
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), &ns);
    sets.create(&PostParams::default(), &set).await.unwrap();
    let (_, created) = until_available(&sets, &lws, &name).await;

    let out = common::disagg(&["render", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: Vec<LeaderWorkerSet> =
        serde_yaml_ng::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    let facts = |l: &LeaderWorkerSet| {
        let worker = serde_json::to_value(&l.spec.leader_worker_template.worker_template).unwrap();
        (
            l.metadata.name.clone().unwrap(),
            l.metadata.labels.clone().unwrap(),
            l.spec.replicas,
            worker["spec"]["containers"][0]["args"].clone(),
        )
    };
    let mut live: Vec<_> = created.iter().map(facts).collect();
    let mut printed: Vec<_> = rendered.iter().map(facts).collect();
    live.sort_by(|a, b| a.0.cmp(&b.0));
    printed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(printed, live);
    assert!(
        printed
            .iter()
            .any(|p| p.3.to_string().contains("kv_producer")),
        "role-profile's patch is in both: {printed:?}"
    );
}
