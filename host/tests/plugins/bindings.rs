//! Bindings over real components, and the CLI that runs them.

use super::*;

#[test]
fn cli_plugin_check_reports_the_component() {
    let path = component("rollout-gate");
    let out = disagg(&["plugin", "check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "rollout-gate");
    assert_eq!(v["world"], "disaggregatedset:plugin/plugin@0.2.0");
    assert_eq!(v["hooks"], json!(["gate-step"]));
    assert_eq!(v["sizeBytes"], read(&path).len());
    assert!(v["compileMillis"].as_f64().unwrap() > 0.0);
    for bad in ["wrong-version", "bad-import"] {
        let out = disagg(&["plugin", "check", component(bad).to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn cli_render_applies_the_sets_plugin_bindings() {
    let arg = |name: &str| format!("{name}={}", component(name).display());
    let set = repo("examples/vllm-pd-plugins.yaml");
    let set = set.to_str().unwrap();
    let (rp, rs, rg) = (
        arg("role-profile"),
        arg("ratio-scaler"),
        arg("rollout-gate"),
    );
    let out = disagg(&[
        "render", "-f", set, "--plugin", &rp, "--plugin", &rs, "--plugin", &rg,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    // ratio-scaler: decode = 2 × prefill's 2.
    assert_eq!(docs[1]["spec"]["replicas"], 4);
    assert!(
        docs[0]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["args"]
            .to_string()
            .contains("kv_producer")
    );
    // A template plugin is part of the revision.
    let plain = disagg(&[
        "render",
        "-f",
        repo("examples/vllm-pd.yaml").to_str().unwrap(),
    ]);
    let plain: Value = serde_yaml_ng::from_str(
        String::from_utf8(plain.stdout)
            .unwrap()
            .split("---\n")
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    assert_ne!(
        plain["metadata"]["labels"]["disaggregatedset.x-k8s.io/revision"],
        docs[0]["metadata"]["labels"]["disaggregatedset.x-k8s.io/revision"]
    );

    // Bound plugins not given run the components deploy/ ships, as in `disagg dev`.
    let shipped = disagg(&["render", "-f", set]);
    assert!(shipped.status.success());
    assert_eq!(String::from_utf8(shipped.stdout).unwrap(), text);

    // Missing plugins (bound, neither given nor shipped): my-ratio-scaler
    // (Fail) stops the set, my-rollout-gate (Ignore) is skipped; both are reported.
    let renamed = std::fs::read_to_string(set)
        .unwrap()
        .replace("- name: ratio-scaler", "- name: my-ratio-scaler")
        .replace("- name: rollout-gate", "- name: my-rollout-gate");
    let missing = temp_file("missing.yaml", &renamed);
    let out = disagg(&["render", "-f", missing.to_str().unwrap(), "--plugin", &rp]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("Warning PluginMissing: plugin my-ratio-scaler")
            && err.contains("set left unchanged (failurePolicy Fail)"),
        "{err}"
    );
    assert!(
        err.contains("plugin my-rollout-gate")
            && err.contains("plugin skipped (failurePolicy Ignore)"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn gates_in_binding_order_with_failure_policies() {
    use disagg::api::set::{FailurePolicy, PluginBinding};
    use disagg::core::bindings::{Bound, GateOutcome, gate};
    let signals = disagg::core::signals::Evaluator::new(&disagg::core::signals::NoSignals);
    let rt = runtime();
    let bind = |name: &str, plugin: &str, policy: FailurePolicy, config: Value| Bound {
        binding: PluginBinding {
            name: name.into(),
            config: config.as_object().cloned(),
            roles: None,
            failure_policy: policy,
            digest: None,
            signals: Vec::new(),
        },
        plugin: load(&rt, plugin),
    };
    let input = gate_input(json!({}), 0, &[], 0);
    let looping = || {
        bind(
            "looper",
            "hostile",
            FailurePolicy::Ignore,
            json!({"mode": "loop"}),
        )
    };
    let approval = || {
        bind(
            "approval",
            "rollout-gate",
            FailurePolicy::Fail,
            json!({"requireApproval": true}),
        )
    };

    // Ignore: the failing gate is skipped (and reported), the next gate decides.
    let (held, failures) = gate(&[looping(), approval()], &input, &signals);
    let Some(GateOutcome::Hold {
        gate: by, reason, ..
    }) = held
    else {
        panic!("held: {held:?}")
    };
    assert_eq!(by, "approval");
    assert!(reason.contains("waiting for approval"), "{reason}");
    assert_eq!(
        (failures.len(), failures[0].reason, failures[0].blocks()),
        (1, "PluginTimeout", false)
    );

    // Fail: the failing gate holds the step itself.
    let strict = Bound {
        binding: PluginBinding {
            failure_policy: FailurePolicy::Fail,
            ..looping().binding
        },
        ..looping()
    };
    let (held, failures) = gate(&[strict, approval()], &input, &signals);
    assert!(matches!(held, Some(GateOutcome::Hold { gate, .. }) if gate == "looper"));
    assert!(failures[0].blocks());

    // Every gate proceeds: no hold, no failures.
    let open = bind("open", "rollout-gate", FailurePolicy::Fail, json!({}));
    assert_eq!(gate(&[open], &input, &signals), (None, vec![]));
}

#[test]
fn a_digest_pin_only_ever_runs_that_component() {
    use disagg::core::bindings::resolve;
    let rt = runtime();
    let gate = load(&rt, "rollout-gate");
    let mut set = disagg::input::load_set(&repo("examples/vllm-pd-plugins.yaml")).unwrap();
    set.spec.plugins.retain(|b| b.name == "rollout-gate");
    set.spec.plugins[0].digest = Some(gate.digest.clone());
    let plugins = std::collections::BTreeMap::from([(
        "rollout-gate".to_string(),
        gate.clone() as Arc<dyn Plugin>,
    )]);
    let (bound, failures) = resolve(&set.spec.plugins, &plugins);
    assert_eq!((bound.len(), failures.len()), (1, 0));
    set.spec.plugins[0].digest = Some(format!("sha256:{}", "0".repeat(64)));
    let (bound, failures) = resolve(&set.spec.plugins, &plugins);
    assert!(bound.is_empty());
    assert_eq!(failures[0].reason, "PluginDigestMismatch");
    assert!(failures[0].message.contains(&gate.digest));
}

/// `disagg plugin run --set`: the request the operator would send for a
/// set's role; a failing plugin is exit code 1, bad input 2; `--deadline-ms`
/// sets the call's deadline.
#[test]
fn cli_plugin_run_calls_a_hook_as_the_operator_would() {
    let rp = component("role-profile");
    let set = repo("examples/vllm-pd-plugins.yaml");
    let out = plugin_run(
        &rp,
        "patch-role",
        &["--set", set.to_str().unwrap(), "--role", "decode"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The set's own binding config (the vllm preset) reached the plugin.
    assert!(
        report["answer"].to_string().contains("kv_consumer"),
        "{report}"
    );
    assert_eq!(report["hook"], "patch-role");

    // A looping plugin times out at the operator's deadline, or at --deadline-ms
    // (to see how long a slow call really takes).
    let hostile = component("hostile");
    for (extra, said) in [
        (&[][..], "ran or waited for 100 ms"),
        (&["--deadline-ms", "250"][..], "ran or waited for 250 ms"),
    ] {
        let mut args = vec![
            "--set",
            set.to_str().unwrap(),
            "--config",
            r#"{"mode": "loop"}"#,
        ];
        args.extend(extra);
        let out = plugin_run(&hostile, "patch-role", &args);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{stderr}");
    }

    let out = plugin_run(&rp, "gate-step", &["--set", set.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gate-step needs --request"));
}
