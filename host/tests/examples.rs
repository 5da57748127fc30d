//! The same custom rollout gate in three languages (examples/rust-gate,
//! examples/c-gate, examples/js-gate) must decide alike.
//!
//! The Rust one is built by the test; the C and JavaScript ones by
//! `examples/build.sh` (CI runs it and sets DISAGG_REQUIRE_EXAMPLES=1, which
//! turns a missing component into a failure instead of a skip).

mod common;

use common::{component, read, repo};
use disagg::plugin::{GateDecision, GateRequest, Hook, Limits, Plugin, RoleStep, Runtime};
use serde_json::json;

fn input(
    step: u32,
    ready: bool,
    new_now: i32,
    new_next: i32,
    annotations: &[(&str, &str)],
    config: serde_json::Value,
) -> GateRequest {
    let base = common::gate_request(annotations, config);
    let mut roles = base.roles.clone();
    roles.push(RoleStep {
        name: "decode".into(),
        old_now: 4,
        old_next: 4,
        new_now,
        new_next,
        target: 8,
        ready,
    });
    GateRequest {
        step,
        total_steps: 3,
        roles,
        ..base
    }
}

/// (scenario, expected: None = proceed, Some(substring of the hold reason))
fn scenarios() -> Vec<(GateRequest, Option<&'static str>)> {
    vec![
        (input(1, true, 1, 2, &[], json!({})), None),
        (
            input(1, false, 1, 2, &[], json!({})),
            Some("decode not ready"),
        ),
        (
            input(1, true, 1, 7, &[], json!({})),
            Some("decode would add more than 4 groups"),
        ),
        (input(1, true, 1, 7, &[], json!({"maxNewPerStep": 6})), None),
        (
            input(3, true, 7, 8, &[], json!({})),
            Some("final step needs example.com/final-step: go"),
        ),
        (
            input(
                3,
                true,
                7,
                8,
                &[("example.com/final-step", "go")],
                json!({}),
            ),
            None,
        ),
    ]
}

fn check(name: &str, path: &std::path::Path) {
    let bytes = &read(path);
    // The JavaScript component is 12 MB: over the operator's default 4 MiB,
    // as `--max-component-mib 16` allows.
    let rt = Runtime::new(Limits {
        component_bytes: 16 << 20,
        compile_deadline: std::time::Duration::from_secs(300),
        ..Limits::default()
    })
    .unwrap();
    let p = rt.load(name, bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.info.hooks, vec![Hook::GateStep], "{name}");
    for (i, (scenario, want)) in scenarios().into_iter().enumerate() {
        let got = p
            .gate_step(&scenario)
            .unwrap_or_else(|e| panic!("{name} scenario {i}: {e}"));
        match (got, want) {
            (GateDecision::Proceed, None) => {}
            (GateDecision::Hold { reason, .. }, Some(w)) => {
                assert!(reason.contains(w), "{name} scenario {i}: {}", reason)
            }
            (got, want) => panic!("{name} scenario {i}: got {got:?}, want {want:?}"),
        }
    }
    // `disagg plugin run` calls it as the operator does: same answer as the call above.
    let (scenario, _) = scenarios().into_iter().next().unwrap();
    let request = test_support::temp_file(
        &format!("{name}-request.json"),
        &serde_json::to_string(&scenario).unwrap(),
    );
    let out = common::disagg(&[
        "plugin",
        "run",
        path.to_str().unwrap(),
        "--hook",
        "gate-step",
        "--request",
        request.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["answer"],
        json!(p.gate_step(&scenario).unwrap()),
        "{name}: {report}"
    );
    assert!(report["millis"].as_f64().is_some() && report["memoryBytes"].as_u64() > Some(0));
}

#[test]
fn rust_gate_decides_as_specified() {
    check("rust-gate", &component("rust-gate"));
}

fn foreign(file: &str) -> Option<std::path::PathBuf> {
    let path = repo("target/examples").join(file);
    match std::fs::metadata(&path) {
        Ok(_) => Some(path),
        Err(_) if std::env::var_os("DISAGG_REQUIRE_EXAMPLES").is_none() => {
            eprintln!(
                "SKIPPED: {} is not built; run examples/build.sh",
                path.display()
            );
            None
        }
        Err(e) => panic!("{}: {e} (examples/build.sh builds it)", path.display()),
    }
}

#[test]
fn c_gate_decides_like_the_rust_one() {
    if let Some(path) = foreign("c_gate.wasm") {
        check("c-gate", &path);
    }
}

#[test]
fn js_gate_decides_like_the_rust_one() {
    if let Some(path) = foreign("js_gate.wasm") {
        assert!(
            read(&path).len() > 1 << 20,
            "the README says the JS component exceeds a ConfigMap; update it if this changes"
        );
        check("js-gate", &path);
    }
}
