//! The default plugins, as real components: what each does to a set.

use super::*;

#[test]
fn default_plugins_describe_themselves_and_stay_small() {
    let rt = runtime();
    for (name, hook) in [
        ("role-profile", Hook::PatchRole),
        ("ratio-scaler", Hook::ScaleRole),
        ("rollout-gate", Hook::GateStep),
    ] {
        let p = load(&rt, name);
        assert_eq!(p.info.name, name);
        assert_eq!(p.info.hooks, vec![hook]);
        assert!(p.size_bytes < 1 << 20, "{name} is {} bytes", p.size_bytes);
        assert!(p.digest.starts_with("sha256:") && p.digest.len() == 71);
    }
}

#[test]
fn role_profile_vllm_preset_sets_kv_roles_and_peer_addresses() {
    let rt = runtime();
    let p = load(&rt, "role-profile");
    let (lws, input) = patch_input("examples/vllm-pd.yaml", 0, json!({"preset": "vllm"}));
    let patched = apply(&lws, &p.patch_role(&input).unwrap()).unwrap();
    let c = container(&patched);
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let kv: Value = serde_json::from_str(
        args[args
            .iter()
            .position(|a| *a == "--kv-transfer-config")
            .unwrap()
            + 1],
    )
    .unwrap();
    assert_eq!(kv["kv_role"], "kv_producer");
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    let peer = format!(
        "llama-pd-0-{}-decode.default.svc.cluster.local",
        input.revision
    );
    assert!(
        env.contains(&("DISAGG_PEER_ADDRESS", peer.as_str())),
        "{env:?}"
    );
    // Identity and replicas are the operator's, whatever the patch does.
    assert_eq!(patched.metadata.name, lws.metadata.name);
    assert_eq!(patched.spec.replicas, lws.spec.replicas);

    let (lws, input) = patch_input("examples/vllm-pd.yaml", 1, json!({"preset": "vllm"}));
    let patched = apply(&lws, &p.patch_role(&input).unwrap()).unwrap();
    assert!(
        container(&patched)["args"]
            .to_string()
            .contains("kv_consumer")
    );
}

#[test]
fn role_profile_sglang_preset_and_per_role_patches() {
    let rt = runtime();
    let p = load(&rt, "role-profile");
    let config = json!({"preset": "sglang", "roles": {"decode": {
        "args": ["--max-running-requests", "256"], "env": {"A": "1"},
        "resources": {"limits": {"nvidia.com/gpu": "2"}},
        "nodeSelector": {"gpu": "h100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}}});
    let (lws, input) = patch_input("examples/sglang-pd.yaml", 1, config.clone());
    let patched = apply(&lws, &p.patch_role(&input).unwrap()).unwrap();
    let c = container(&patched);
    let args = c["args"].to_string();
    assert!(
        args.contains("\"--disaggregation-mode\",\"decode\""),
        "{args}"
    );
    assert!(
        args.ends_with("\"--max-running-requests\",\"256\"]"),
        "{args}"
    );
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "2");
    let pod = &patched.spec.leader_worker_template.worker_template.0["spec"];
    assert_eq!(pod["nodeSelector"]["gpu"], "h100");
    assert_eq!(pod["tolerations"][0]["key"], "gpu");
    // Prefill has a leader template: both templates are patched.
    let (lws, input) = patch_input("examples/sglang-pd.yaml", 0, config);
    let patched = apply(&lws, &p.patch_role(&input).unwrap()).unwrap();
    let leader = &patched
        .spec
        .leader_worker_template
        .leader_template
        .as_ref()
        .unwrap()
        .0;
    assert!(
        leader["spec"]["containers"][0]["args"]
            .to_string()
            .contains("--disaggregation-bootstrap-port")
    );
    // A bad config is the plugin's error, in words.
    let (_, bad) = patch_input("examples/sglang-pd.yaml", 0, json!({"preset": "tensorrt"}));
    let err = p.patch_role(&bad).unwrap_err();
    assert!(
        matches!(&err, PluginError::Failed { message, .. } if message.contains("invalid config")),
        "{err}"
    );
}

#[test]
fn ratio_scaler_keeps_the_ratio_within_bounds() {
    let rt = runtime();
    let p = load(&rt, "ratio-scaler");
    let cfg = json!({"role": "decode", "of": "prefill", "ratio": 1.5, "min": 2, "max": 10});
    assert_eq!(scale(&p, "decode", 3, cfg.clone()).unwrap(), Some(5));
    assert_eq!(scale(&p, "decode", 0, cfg.clone()).unwrap(), Some(2));
    assert_eq!(scale(&p, "decode", 40, cfg.clone()).unwrap(), Some(10));
    assert_eq!(scale(&p, "prefill", 3, cfg).unwrap(), None);
    let err = scale(
        &p,
        "decode",
        3,
        json!({"role": "decode", "of": "encode", "ratio": 1}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no role \"encode\""), "{err}");
}

#[test]
fn rollout_gate_holds_for_bake_time_approval_and_windows() {
    let rt = runtime();
    let p = load(&rt, "rollout-gate");
    let hold_reason = |d: GateDecision| match d {
        GateDecision::Hold { reason, .. } => Some(reason),
        GateDecision::Proceed => None,
        GateDecision::Abort { reason } => panic!("rollout-gate never aborts: {reason}"),
    };
    // 2026-11-24 (a Tuesday) 10:00 UTC.
    let tuesday_10 = 1_795_514_400_000u64;
    let bake = json!({"bakeSeconds": 60});
    assert!(
        hold_reason(
            p.gate_step(&gate_input(bake.clone(), 30_000, &[], tuesday_10))
                .unwrap()
        )
        .unwrap()
        .contains("baking")
    );
    assert_eq!(
        p.gate_step(&gate_input(bake, 61_000, &[], tuesday_10))
            .unwrap(),
        GateDecision::Proceed
    );

    let approval = json!({"requireApproval": true});
    let held = hold_reason(
        p.gate_step(&gate_input(approval.clone(), 0, &[], tuesday_10))
            .unwrap(),
    )
    .unwrap();
    assert!(held.contains("approve-step: \"2\""), "{held}");
    let wrong = [("disaggregatedset.x-k8s.io/approve-step", "1")];
    assert!(
        hold_reason(
            p.gate_step(&gate_input(approval.clone(), 0, &wrong, tuesday_10))
                .unwrap()
        )
        .is_some()
    );
    let right = [("disaggregatedset.x-k8s.io/approve-step", "2")];
    assert_eq!(
        p.gate_step(&gate_input(approval, 0, &right, tuesday_10))
            .unwrap(),
        GateDecision::Proceed
    );

    let office = json!({"windows": [{"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "09:00", "end": "17:00"}]});
    assert_eq!(
        p.gate_step(&gate_input(office.clone(), 0, &[], tuesday_10))
            .unwrap(),
        GateDecision::Proceed
    );
    let tuesday_20 = tuesday_10 + 10 * 3_600_000;
    assert!(
        hold_reason(
            p.gate_step(&gate_input(office.clone(), 0, &[], tuesday_20))
                .unwrap()
        )
        .unwrap()
        .contains("outside")
    );
    let saturday_10 = tuesday_10 + 4 * 86_400_000;
    assert!(
        hold_reason(
            p.gate_step(&gate_input(office, 0, &[], saturday_10))
                .unwrap()
        )
        .is_some()
    );
    let night = json!({"windows": [{"start": "22:00", "end": "02:00"}]});
    assert_eq!(
        p.gate_step(&gate_input(
            night.clone(),
            0,
            &[],
            tuesday_10 - 9 * 3_600_000
        ))
        .unwrap(),
        GateDecision::Proceed
    );
    assert!(hold_reason(p.gate_step(&gate_input(night, 0, &[], tuesday_10)).unwrap()).is_some());

    let mut not_ready = gate_input(json!({}), 0, &[], tuesday_10);
    not_ready.roles[0].ready = false;
    assert!(
        hold_reason(p.gate_step(&not_ready).unwrap())
            .unwrap()
            .contains("not ready")
    );
    let err = p
        .gate_step(&gate_input(
            json!({"windows": [{"start": "9am", "end": "5pm"}]}),
            0,
            &[],
            tuesday_10,
        ))
        .unwrap_err();
    assert!(err.to_string().contains("must be HH:MM"), "{err}");
}
