//! The sandbox: hostile and hand-made components against every limit.

use super::*;

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
            assert_eq!(found, "disaggregatedset:plugin/hooks@0.9.0");
            assert_eq!(
                supported,
                vec![
                    "disaggregatedset:plugin/hooks@0.2.0".to_string(),
                    "disaggregatedset:plugin/hooks@0.1.0".to_string()
                ]
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
/// stdin, `exit` — never stalls the caller: the call returns as a typed
/// error and the runtime goes on. Waiting in a host call counts as the
/// call's own time, so a sleep is `PluginTimeout` at the deadline (were it
/// not counted, the call would run to its wall-clock bound and be
/// `PluginStarved`); the bound asserted here is that wall-clock one, ten
/// deadlines, which holds however loaded the machine.
#[test]
fn guests_blocked_in_host_calls_are_abandoned_at_the_deadline() {
    let rt = runtime();
    let hostile = load(&rt, "hostile");
    let healthy = load(&rt, "ratio-scaler");
    let bound = rt.limits().deadline * 10 + Duration::from_millis(100);
    let (_, base) = patch_input("examples/vllm-pd.yaml", 0, json!({}));
    for (mode, reason) in [
        ("sleep", "PluginTimeout"),
        ("clock-spin", "PluginTimeout"),
        ("stdin", "PluginTimeout"),
        ("exit", "PluginTrapped"),
    ] {
        let (err, took) = misbehave(&hostile, &base, mode);
        assert_eq!(err.reason(), reason, "{mode}: {err}");
        assert!(took < bound, "{mode} returned after {took:?}");
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
    assert!(started.elapsed() < bound);
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `f` on this thread pinned to one CPU beside `spinners` busy threads
/// pinned to the same CPU, so that it gets about 1/(spinners + 1) of it — as
/// on a busy node, or in a container its CPU limit throttles. Only that CPU
/// is crowded; the epoch ticker and other tests keep the rest.
fn starved<R>(spinners: usize, f: impl FnOnce() -> R) -> R {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let all = sched_getaffinity(None).unwrap();
    let cpu = (0..CpuSet::MAX_CPU).find(|&c| all.is_set(c)).unwrap();
    let mut one = CpuSet::new();
    one.set(cpu);
    let stop = Arc::new(AtomicBool::new(false));
    let spinning: Vec<_> = (0..spinners)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                sched_setaffinity(None, &one).unwrap();
                while !stop.load(Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    sched_setaffinity(None, &one).unwrap();
    let out = f();
    sched_setaffinity(None, &all).unwrap();
    stop.store(true, Relaxed);
    for s in spinning {
        s.join().unwrap();
    }
    out
}

/// A fast plugin on a thread the node keeps off the CPU is not timed out:
/// the deadline counts the call's own time, not the time it waited for a
/// CPU. Starved past its wall-clock bound (ten deadlines) with its own time
/// left, the call is `PluginStarved` — retryable, never skipped under
/// `Ignore`, and its message says what to look at.
#[test]
fn a_call_starved_of_cpu_is_not_timed_out_for_it() {
    let rt = runtime();
    let hostile = load(&rt, "hostile");
    let (_, base) = patch_input("examples/vllm-pd.yaml", 0, json!({}));
    let compute = |rounds: u64| PatchRequest {
        config: json!({"mode": "compute", "rounds": rounds}).to_string(),
        ..base.clone()
    };
    // About 10 ms of CPU, measured in CPU time so that load does not skew it.
    let probe = 1_000_000;
    let cpu = thread_cpu();
    hostile.patch_role(&compute(probe)).unwrap();
    let per_round = (thread_cpu() - cpu).as_secs_f64() / probe as f64;
    let rounds = (0.010 / per_round) as u64;

    // A thirty-second of a CPU: ~300 ms of wall-clock time for ~10 ms of its own.
    let deadline = rt.limits().deadline;
    let (answer, took) = starved(31, || {
        let started = Instant::now();
        (hostile.patch_role(&compute(rounds)), started.elapsed())
    });
    eprintln!("a thirty-second of a CPU: {rounds} rounds answered in {took:?}");
    assert!(answer.is_ok(), "{:?}", answer.err().map(|e| e.to_string()));
    assert!(
        took > deadline,
        "the call was not starved past its deadline ({took:?}): the test proves nothing"
    );

    // A sixty-fourth, against a 20 ms deadline: the 200 ms bound comes first.
    let rt = Runtime::new(Limits {
        deadline: Duration::from_millis(20),
        ..Limits::default()
    })
    .unwrap();
    let hostile = load(&rt, "hostile");
    let (answer, took) = starved(63, || {
        let started = Instant::now();
        (hostile.patch_role(&compute(rounds)), started.elapsed())
    });
    let err = answer.unwrap_err();
    eprintln!("a sixty-fourth of a CPU: {err} after {took:?}");
    assert_eq!(err.reason(), "PluginStarved", "{err}");
    assert!(err.retryable());
    let message = err.to_string();
    assert!(message.contains("of its 20 ms deadline"), "{message}");
    assert!(message.contains("short of CPU"), "{message}");
    assert!(took < Duration::from_secs(2), "{took:?}");
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

/// A compile on a node that keeps it off the CPU is slow, not refused: its
/// deadline counts the compiling thread's CPU time. (The compile thread
/// inherits the caller's one-CPU affinity in `starved`.)
#[test]
fn a_compile_starved_of_cpu_is_not_refused_for_it() {
    let bytes = read(&component("ratio-scaler"));
    let started = Instant::now();
    drop(runtime().load("ratio-scaler", &bytes).unwrap());
    let alone = started.elapsed();
    let deadline = alone.mul_f64(2.5);
    let rt = Runtime::new(Limits {
        compile_deadline: deadline,
        ..Limits::default()
    })
    .unwrap();
    // An eighth of a CPU: about eight times as long as alone.
    let (loaded, took) = starved(7, || {
        let started = Instant::now();
        (rt.load("ratio-scaler", &bytes), started.elapsed())
    });
    assert!(loaded.is_ok(), "{:?}", loaded.err().map(|e| e.to_string()));
    assert!(
        took > deadline,
        "the compile was not starved past its deadline ({took:?} against {deadline:?}): the test proves nothing"
    );
}

/// A load whose `describe` finds every call slot taken has not failed: the
/// registry tries it again (after 1, 2, 4, 8 s) and swaps it in once a slot
/// is free, where it used to refuse the plugin until its ConfigMap changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_finds_no_free_call_slot_is_retried_not_refused() {
    use disagg::controller::plugins::{Registry, Update};
    let rt = Runtime::new(Limits {
        deadline: Duration::from_secs(3),
        concurrent_calls: 1,
        slot_wait: Duration::from_millis(50),
        ..Limits::default()
    })
    .unwrap();
    let hostile = load(&rt, "hostile");
    let (_, sleeper) = patch_input("examples/vllm-pd.yaml", 0, json!({"mode": "sleep"}));
    // The one slot is taken for the sleeper's 3 s deadline.
    let sleeping = std::thread::spawn(move || hostile.patch_role(&sleeper).unwrap_err().reason());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (registry, _wake) = Registry::new(rt);
    let ticket = registry.begin("ratio-scaler");
    let bytes = read(&component("ratio-scaler"));
    let started = Instant::now();
    let outcome = registry.load("ratio-scaler", ticket, Ok(bytes)).await;
    assert_eq!(outcome, Update::Swapped);
    assert!(registry.component("ratio-scaler").is_some());
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "no retry was needed"
    );
    assert_eq!(sleeping.join().unwrap(), "PluginTimeout");
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

/// A component within the size limit but slow to compile (three huge
/// functions, compiled one after another: 2–3 s of Cranelift each here) is
/// refused at the compile deadline, and another plugin loading meanwhile on
/// another thread is not held up by it.
#[test]
fn a_compile_bomb_is_refused_at_its_deadline_and_holds_up_no_other_load() {
    // Long enough for a real component to compile next to the bomb on a
    // busy 2-core machine (rollout-gate: 1.0–1.7 s there in a debug build;
    // 1,000 ms failed half the runs). One bomb function alone once compiled
    // within 2,200 ms on a quiet machine; three, under a raised size limit,
    // are far past it whatever the machine's speed.
    let deadline = Duration::from_millis(2200);
    let rt = Runtime::new(Limits {
        compile_deadline: deadline,
        component_bytes: 16 << 20,
        ..Limits::default()
    })
    .unwrap();
    let bomb = common::compile_bomb_of(3);
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
    assert!(
        took < deadline + Duration::from_millis(1000),
        "refused after {took:?}"
    );
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
            signals: Vec::new(),
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

/// The default plugins as built for contract 0.1.0 (the ConfigMaps `deploy/`
/// shipped before 0.2.0, kept in `host/tests/fixtures/contract-0.1.0/`) still
/// load and answer as they did; today's builds target 0.2.0.
#[test]
fn components_built_for_contract_0_1_0_keep_working() {
    use disagg::core::plugins::{GateDecision, Plugin, RoleReplicas, ScaleRequest};
    let rt = runtime();
    let old = |name: &str| {
        let yaml = std::fs::read_to_string(repo(&format!(
            "host/tests/fixtures/contract-0.1.0/{name}.yaml"
        )))
        .unwrap();
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_yaml_ng::from_str(&yaml).unwrap();
        let bytes = disagg::controller::plugins::component_of(&cm).unwrap();
        rt.load(name, &bytes).unwrap()
    };
    let gate = old("rollout-gate");
    assert_eq!(gate.contract(), "0.1.0");
    assert_eq!(gate.world(), "disaggregatedset:plugin/plugin@0.1.0");
    let held = gate
        .gate_step(&common::gate_request(&[], json!({"requireApproval": true})))
        .unwrap();
    assert!(
        matches!(held, GateDecision::Hold { ref reason, .. } if reason.contains("step 2")),
        "{held:?}"
    );
    let approved = gate
        .gate_step(&common::gate_request(
            &[("disaggregatedset.x-k8s.io/approve-step", "2")],
            json!({"requireApproval": true}),
        ))
        .unwrap();
    assert_eq!(approved, GateDecision::Proceed);
    // A 0.1.0 scaler answers a request that carries signals it cannot see.
    let scaler = old("ratio-scaler");
    let request = ScaleRequest {
        set: "{}".into(),
        roles: vec![
            RoleReplicas {
                name: "prefill".into(),
                desired: 3,
                observed: 3,
                ready: 3,
            },
            RoleReplicas {
                name: "decode".into(),
                desired: 1,
                observed: 1,
                ready: 1,
            },
        ],
        role: "decode".into(),
        config: json!({"role": "decode", "of": "prefill", "ratio": 2}).to_string(),
        signals: vec![disagg::core::plugins::Signal {
            name: "queue".into(),
            role: None,
            evaluated_at_ms: 1,
            samples: vec![],
            error: None,
        }],
        last_scaled_ms: Some(1),
        now_ms: 2,
    };
    assert_eq!(
        scaler.scale_role(&request).unwrap().map(|a| a.replicas),
        Some(6)
    );
    assert_eq!(old("role-profile").contract(), "0.1.0");
    // Today's builds target 0.2.0.
    assert_eq!(load(&rt, "rollout-gate").contract(), "0.2.0");
}
