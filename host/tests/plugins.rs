//! The plugin runtime, exercised with real compiled components: the default
//! plugins, the Rust example, and hostile ones.

mod common;

use common::{component, disagg, handmade_component, read, repo};
use disagg::core::patch::{LwsPatch, apply};
use disagg::core::render::render_child;
use disagg::core::revision::revision;
use disagg::plugin::{
    GateDecision, GateRequest, Hook, Limits, PatchRequest, Plugin, PluginError, RoleReplicas,
    RoleStep, Runtime, ScaleRequest,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::temp_file;

fn runtime() -> Arc<Runtime> {
    Runtime::new(Limits::default()).unwrap()
}

fn load(rt: &Arc<Runtime>, name: &str) -> Arc<disagg::plugin::LoadedPlugin> {
    rt.load(name, &read(&component(name)))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn patch_input(
    set_file: &str,
    role_index: usize,
    config: Value,
) -> (disagg::api::lws::LeaderWorkerSet, PatchRequest) {
    let set = disagg::input::load_set(&repo(set_file)).unwrap();
    let rev = revision(&set.spec, &[]);
    let role = &set.spec.roles[role_index];
    let lws = render_child(&set, role, 0, &rev, role.spec.replicas);
    let input = PatchRequest {
        set: serde_json::to_string(&set).unwrap(),
        role: role.name.clone(),
        slice: 0,
        revision: rev,
        lws: serde_json::to_string(&lws).unwrap(),
        config: config.to_string(),
    };
    (lws, input)
}

fn gate_input(
    config: Value,
    held_for_ms: u64,
    annotations: &[(&str, &str)],
    now_ms: u64,
) -> GateRequest {
    GateRequest {
        set_name: "llm".into(),
        namespace: "default".into(),
        labels: vec![],
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        revision: "abcd1234".into(),
        slice: 0,
        step: 2,
        total_steps: 4,
        roles: vec![RoleStep {
            name: "prefill".into(),
            old_now: 2,
            old_next: 2,
            new_now: 1,
            new_next: 2,
            target: 3,
            ready: true,
        }],
        held_for_ms,
        now_ms,
        config: config.to_string(),
    }
}

fn container(lws: &disagg::api::lws::LeaderWorkerSet) -> Value {
    lws.spec.leader_worker_template.worker_template.0["spec"]["containers"][0].clone()
}

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

fn scale(
    p: &disagg::plugin::LoadedPlugin,
    role: &str,
    prefill: i32,
    config: Value,
) -> Result<Option<i32>, PluginError> {
    let input = ScaleRequest {
        set: "{}".into(),
        roles: vec![
            RoleReplicas {
                name: "prefill".into(),
                desired: prefill,
                observed: prefill,
                ready: prefill,
            },
            RoleReplicas {
                name: "decode".into(),
                desired: 1,
                observed: 1,
                ready: 1,
            },
        ],
        role: role.into(),
        config: config.to_string(),
    };
    p.scale_role(&input).map(|a| a.map(|a| a.replicas))
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

#[test]
fn calling_a_hook_a_plugin_does_not_implement_is_an_error() {
    let rt = runtime();
    let p = load(&rt, "ratio-scaler");
    let err = p.gate_step(&gate_input(json!({}), 0, &[], 0)).unwrap_err();
    assert_eq!(err.reason(), "PluginHookMissing");
}

/// Runs the hostile plugin's `patch-role` in `mode`: its error and how long it took.
fn misbehave(
    hostile: &disagg::plugin::LoadedPlugin,
    base: &PatchRequest,
    mode: &str,
) -> (PluginError, Duration) {
    let input = PatchRequest {
        config: json!({"mode": mode}).to_string(),
        ..base.clone()
    };
    let started = Instant::now();
    let err = hostile.patch_role(&input).unwrap_err();
    (err, started.elapsed())
}

/// Each hostile behaviour gives its typed error within its limit, and a
/// healthy plugin still works right after.
#[test]
fn hostile_plugins_fail_with_typed_errors_and_do_not_poison_the_runtime() {
    // A longer deadline than the default 100 ms, so that the memory bomb and
    // the floods reach their own limits first even on a loaded machine.
    let rt = Runtime::new(Limits {
        deadline: Duration::from_millis(500),
        ..Limits::default()
    })
    .unwrap();
    let hostile = load(&rt, "hostile");
    let healthy = load(&rt, "ratio-scaler");
    let cfg = json!({"role": "decode", "of": "prefill", "ratio": 2});
    let (_, base) = patch_input("examples/vllm-pd.yaml", 0, json!({}));
    for (mode, reason, max) in [
        ("loop", "PluginTimeout", Duration::from_millis(1500)),
        ("trap", "PluginTrapped", Duration::from_millis(600)),
        ("oom", "PluginOutOfMemory", Duration::from_secs(2)),
        ("flood", "PluginOutputTooLarge", Duration::from_secs(2)),
        ("big-output", "PluginOutputTooLarge", Duration::from_secs(2)),
    ] {
        let (err, took) = misbehave(&hostile, &base, mode);
        assert_eq!(err.reason(), reason, "{mode}: {err}");
        assert!(err.to_string().contains("plugin hostile"), "{err}");
        assert!(took < max, "{mode} took {took:?}");
        assert_eq!(
            scale(&healthy, "decode", 2, cfg.clone()).unwrap(),
            Some(4),
            "after {mode}"
        );
    }
    // The trap carries the plugin's own panic message.
    let input = PatchRequest {
        config: json!({"mode": "trap"}).to_string(),
        ..base.clone()
    };
    let err = hostile.patch_role(&input).unwrap_err().to_string();
    assert!(err.contains("panics on purpose"), "{err}");
    // A patch that is JSON but not a patch is refused when applied.
    let input = PatchRequest {
        config: json!({"mode": "garbage"}).to_string(),
        ..base.clone()
    };
    let patch = hostile.patch_role(&input).unwrap();
    assert!(matches!(patch, LwsPatch::Json(_)));
    let (lws, _) = patch_input("examples/vllm-pd.yaml", 0, json!({}));
    assert!(
        apply(&lws, &patch)
            .unwrap_err()
            .contains("not an RFC 6902 JSON patch")
    );
    // A gate that always holds is not an error: the hold is the answer.
    let timeout = hostile.gate_step(&GateRequest {
        config: json!({"mode": "loop"}).to_string(),
        ..gate_input(json!({}), 0, &[], 0)
    });
    assert_eq!(timeout.unwrap_err().reason(), "PluginTimeout");
}

#[test]
fn components_the_host_cannot_serve_are_rejected_at_load() {
    let rt = runtime();
    match rt.load("future", &read(&component("wrong-version"))) {
        Err(PluginError::IncompatibleVersion {
            found, supported, ..
        }) => {
            assert_eq!(found, "disaggregatedset:plugin/hooks@0.2.0");
            assert_eq!(
                supported,
                vec!["disaggregatedset:plugin/hooks@0.1.0".to_string()]
            );
        }
        other => panic!("{:?}", other.err()),
    }
    let err = rt
        .load("sneaky", &read(&component("bad-import")))
        .err()
        .unwrap();
    assert_eq!(err.reason(), "PluginInvalid");
    assert!(err.to_string().contains("evil:net/socket"), "{err}");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let err = rt.load("noise", &noise).err().unwrap();
    assert_eq!(err.reason(), "PluginInvalid");
    // The runtime still serves good components after all that.
    load(&rt, "rollout-gate");
}

#[test]
fn gzip_components_load_with_the_digest_of_their_contents() {
    use std::io::Write;
    let rt = runtime();
    let bytes = read(&component("rollout-gate"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&bytes).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < bytes.len());
    let a = rt.load("rollout-gate", &bytes).unwrap();
    let b = rt.load("rollout-gate", &gz).unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(Runtime::digest(&gz).unwrap(), a.digest);
}

#[test]
fn deadlines_are_configurable() {
    let rt = Runtime::new(Limits {
        deadline: Duration::from_millis(20),
        ..Limits::default()
    })
    .unwrap();
    let hostile = load(&rt, "hostile");
    let (_, base) = patch_input("examples/vllm-pd.yaml", 0, json!({"mode": "loop"}));
    let started = Instant::now();
    let err = hostile.patch_role(&base).unwrap_err();
    assert!(
        matches!(err, PluginError::Timeout { limit_ms: 20, .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(300));
}

/// What an ordinary author might write — a sleep, a clock loop, a read of
/// stdin, `exit` — never stalls the caller: the call returns within its
/// deadline and a small margin, as a typed error, and the runtime goes on.
#[test]
fn guests_blocked_in_host_calls_are_abandoned_at_the_deadline() {
    let rt = runtime();
    let hostile = load(&rt, "hostile");
    let healthy = load(&rt, "ratio-scaler");
    let deadline = rt.limits().deadline;
    let (_, base) = patch_input("examples/vllm-pd.yaml", 0, json!({}));
    for (mode, reason) in [
        ("sleep", "PluginTimeout"),
        ("clock-spin", "PluginTimeout"),
        ("stdin", "PluginTimeout"),
        ("exit", "PluginTrapped"),
    ] {
        let (err, took) = misbehave(&hostile, &base, mode);
        assert_eq!(err.reason(), reason, "{mode}: {err}");
        assert!(
            took < deadline + Duration::from_millis(150),
            "{mode} returned after {took:?}"
        );
        let cfg = json!({"role": "decode", "of": "prefill", "ratio": 2});
        assert_eq!(scale(&healthy, "decode", 2, cfg).unwrap(), Some(4));
    }
    let input = PatchRequest {
        config: json!({"mode": "exit"}).to_string(),
        ..base.clone()
    };
    let err = hostile.patch_role(&input).unwrap_err().to_string();
    assert!(err.contains("called exit"), "{err}");
    // A sleeping gate, the case that used to stall a set forever.
    let started = Instant::now();
    let err = hostile
        .gate_step(&GateRequest {
            config: json!({"mode": "sleep"}).to_string(),
            ..gate_input(json!({}), 0, &[], 0)
        })
        .unwrap_err();
    assert_eq!(err.reason(), "PluginTimeout");
    assert!(started.elapsed() < deadline + Duration::from_millis(150));
}

/// A runtime with `slots` call slots, every one taken by a hostile call
/// sleeping towards its 800 ms deadline (each thread answers its error's reason).
fn slots_taken(
    slots: usize,
    slot_wait: Duration,
) -> (
    Arc<disagg::plugin::LoadedPlugin>,
    Vec<std::thread::JoinHandle<&'static str>>,
) {
    let rt = Runtime::new(Limits {
        deadline: Duration::from_millis(800),
        concurrent_calls: slots,
        slot_wait,
        ..Limits::default()
    })
    .unwrap();
    let hostile = load(&rt, "hostile");
    let (_, sleeper) = patch_input("examples/vllm-pd.yaml", 0, json!({"mode": "sleep"}));
    let sleepers = (0..slots)
        .map(|_| {
            let (hostile, input) = (hostile.clone(), sleeper.clone());
            std::thread::spawn(move || hostile.patch_role(&input).unwrap_err().reason())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    (hostile, sleepers)
}

/// Calls from every caller share one bound; a call that finds every slot
/// taken for `slot_wait` is `PluginBusy` — retryable, never run half-way.
#[test]
fn calls_beyond_the_slots_wait_and_then_report_busy() {
    let (hostile, sleepers) = slots_taken(2, Duration::from_millis(200));
    let (_, base) = patch_input("examples/vllm-pd.yaml", 0, json!({"mode": "sleep"}));
    let started = Instant::now();
    let err = hostile.patch_role(&base).unwrap_err();
    assert_eq!(err.reason(), "PluginBusy", "{err}");
    assert!(err.retryable());
    assert!(err.to_string().contains("all 2 plugin call slots"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(600));
    for s in sleepers {
        assert_eq!(s.join().unwrap(), "PluginTimeout");
    }
    // Slots come back when calls end.
    let ok = PatchRequest {
        config: "{}".into(),
        ..base
    };
    assert!(hostile.patch_role(&ok).is_ok());
}

/// Loading is bounded: a component over the size limit (raw, or a gzip bomb)
/// is refused without being inflated, a compile past its deadline is refused,
/// and compiled components nobody holds are freed.
#[test]
fn loading_is_bounded_in_size_and_time_and_unused_components_are_freed() {
    use std::io::Write;
    let rt = runtime();
    let max = rt.limits().component_bytes;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 64 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "a bomb fits in a ConfigMap");
    for bytes in [bomb, vec![0u8; max + 1]] {
        let err = rt.load("big", &bytes).err().unwrap();
        assert_eq!(err.reason(), "PluginInvalid");
        assert!(err.to_string().contains("4096 KiB limit"), "{err}");
    }

    let slow = Runtime::new(Limits {
        compile_deadline: Duration::from_millis(1),
        ..Limits::default()
    })
    .unwrap();
    let started = Instant::now();
    let err = slow
        .load("role-profile", &read(&component("role-profile")))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("compiling it took longer"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));

    let gate = load(&rt, "rollout-gate");
    let scaler = load(&rt, "ratio-scaler");
    assert_eq!(rt.compiled_count(), 2);
    drop(gate);
    assert_eq!(rt.compiled_count(), 1);
    drop(scaler);
    assert_eq!(rt.compiled_count(), 0);
}

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
    assert_eq!(v["world"], "disaggregatedset:plugin/plugin@0.1.0");
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
    use disagg::core::bindings::{Bound, gate};
    let rt = runtime();
    let bind = |name: &str, plugin: &str, policy: FailurePolicy, config: Value| Bound {
        binding: PluginBinding {
            name: name.into(),
            config: config.as_object().cloned(),
            roles: None,
            failure_policy: policy,
            digest: None,
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
    let (held, failures) = gate(&[looping(), approval()], &input);
    let (by, reason, _) = held.unwrap();
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
    let (held, failures) = gate(&[strict, approval()], &input);
    assert_eq!(held.unwrap().0, "looper");
    assert!(failures[0].blocks());

    // Every gate proceeds: no hold, no failures.
    let open = bind("open", "rollout-gate", FailurePolicy::Fail, json!({}));
    assert_eq!(gate(&[open], &input), (None, vec![]));
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

#[test]
fn the_observer_sees_every_hook_call_with_its_outcome() {
    use std::sync::Mutex;
    let rt = runtime();
    let seen: Arc<Mutex<Vec<(String, disagg::plugin::Hook, bool)>>> = Arc::default();
    let sink = seen.clone();
    rt.observe(Box::new(move |plugin, hook, took, error| {
        assert!(took > std::time::Duration::ZERO);
        sink.lock()
            .unwrap()
            .push((plugin.to_string(), hook, error.is_some()));
    }));
    let gate = load(&rt, "rollout-gate");
    gate.gate_step(&gate_input(serde_json::json!({}), 0, &[], 0))
        .unwrap();
    gate.gate_step(&gate_input(serde_json::json!({"nonsense": 1}), 0, &[], 0))
        .unwrap_err();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (
                "rollout-gate".to_string(),
                disagg::plugin::Hook::GateStep,
                false
            ),
            (
                "rollout-gate".to_string(),
                disagg::plugin::Hook::GateStep,
                true
            ),
        ]
    );
}

/// The memory cap holds for the whole component: two memories of 40 MiB
/// each fit a 64 MiB cap one by one, not together.
#[test]
fn the_memory_cap_counts_every_memory_of_the_component() {
    let rt = runtime();
    let grow = |memory: &str| {
        format!(
            "(if (i32.eq (memory.grow {memory} (i32.const 640)) (i32.const -1)) (then unreachable))"
        )
    };
    let (_, input) = patch_input("examples/vllm-pd.yaml", 0, json!({}));
    // One memory of 40 MiB is within the cap, and the hand-made ABI works.
    let single = rt
        .load("single", &handmade_component(false, &grow("$m0"), ""))
        .unwrap();
    assert_eq!(single.info.name, "handmade");
    assert_eq!(single.patch_role(&input).unwrap(), LwsPatch::None);
    // 40 MiB in each of two memories: 80 MiB over all, refused.
    let body = format!("{} {}", grow("$m1"), grow("$m0"));
    let double = rt
        .load("double", &handmade_component(true, &body, ""))
        .unwrap();
    let err = double.patch_role(&input).unwrap_err();
    assert_eq!(err.reason(), "PluginOutOfMemory", "{err}");
    // Either memory alone still fits.
    let one = rt
        .load("one", &handmade_component(true, &grow("$m1"), ""))
        .unwrap();
    assert_eq!(one.patch_role(&input).unwrap(), LwsPatch::None);
}

/// A component within the size limit but slow to compile (one huge function:
/// about 2 s of Cranelift here) is refused at the compile deadline, and
/// another plugin loading meanwhile on another thread is not held up by it.
#[test]
fn a_compile_bomb_is_refused_at_its_deadline_and_holds_up_no_other_load() {
    let rt = Runtime::new(Limits {
        compile_deadline: Duration::from_millis(1500),
        ..Limits::default()
    })
    .unwrap();
    let bomb = common::compile_bomb();
    assert!(
        bomb.len() < rt.limits().component_bytes,
        "{} bytes",
        bomb.len()
    );
    let other = {
        let rt = rt.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let started = Instant::now();
            let loaded = rt.load("rollout-gate", &read(&component("rollout-gate")));
            (loaded.err().map(|e| e.to_string()), started.elapsed())
        })
    };
    let started = Instant::now();
    let err = rt.load("bomb", &bomb).err().unwrap();
    let took = started.elapsed();
    assert!(
        err.to_string().contains("compiling it took longer"),
        "{err}"
    );
    assert!(took < Duration::from_millis(2000), "refused after {took:?}");
    let (error, other_took) = other.join().unwrap();
    assert_eq!(error, None);
    eprintln!("bomb refused after {took:?}; the other load took {other_took:?}");
    assert!(
        other_took < Duration::from_secs(3),
        "the other load took {other_took:?}"
    );
}

/// Scale advice is held to the replica bound; what a plugin says is cut
/// before it can reach status.
#[test]
fn scale_advice_is_bounded_and_messages_are_truncated() {
    let rt = runtime();
    let hostile = load(&rt, "hostile");
    for (replicas, ok) in [
        (0, true),
        (1_000_000, true),
        (1_000_001, false),
        (-1, false),
        (i32::MAX, false),
    ] {
        let result = scale(
            &hostile,
            "decode",
            1,
            json!({"mode": "scale", "replicas": replicas}),
        );
        match result {
            Ok(advice) => assert!(ok && advice == Some(replicas), "{replicas}: {advice:?}"),
            Err(e) => {
                assert!(!ok, "{replicas}: {e}");
                assert_eq!(e.reason(), "PluginBadOutput");
                assert!(e.to_string().contains("0 to 1000000"), "{e}");
            }
        }
    }
    // A trap's message (the plugin's panic) is kept short.
    let (_, base) = patch_input("examples/vllm-pd.yaml", 0, json!({"mode": "trap"}));
    let err = hostile.patch_role(&base).unwrap_err().to_string();
    assert!(err.len() < 4096, "{} bytes", err.len());
}

/// A plugin that could not be called at all (every slot busy) holds back its
/// role even under Ignore: no child is ever rendered without its patch.
#[test]
fn a_busy_plugin_blocks_its_role_even_under_ignore() {
    use disagg::api::set::{FailurePolicy, PluginBinding};
    use disagg::core::bindings::{Bound, patch};
    let (hostile, sleepers) = slots_taken(1, Duration::from_millis(50));
    let (lws, _) = patch_input("examples/vllm-pd.yaml", 0, json!({}));
    let bound = [Bound {
        binding: PluginBinding {
            name: "shaper".into(),
            config: None,
            roles: None,
            failure_policy: FailurePolicy::Ignore,
            digest: None,
        },
        plugin: hostile,
    }];
    let set =
        serde_json::to_string(&disagg::input::load_set(&repo("examples/vllm-pd.yaml")).unwrap())
            .unwrap();
    let (result, skipped) = patch(&set, &bound, "prefill", 0, "abcd1234", lws);
    let failure = result.unwrap_err();
    assert_eq!(failure.reason, "PluginBusy");
    assert!(failure.blocks() && failure.retry, "{failure:?}");
    assert!(skipped.is_empty());
    for s in sleepers {
        assert_eq!(s.join().unwrap(), "PluginTimeout");
    }
}
