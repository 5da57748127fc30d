//! A plugin that misbehaves on purpose, for the runtime's tests. Its config
//! `mode` picks the misbehaviour; every hook misbehaves the same way (or only
//! the one `only` names), except `hold`: a gate that always holds, and
//! `scale`: advice of the config's `replicas`. Most of these are what an ordinary
//! author might write by accident (a `sleep`, a read of stdin, `exit`), not
//! attacks.

use disagg_plugin_sdk::{
    GateDecision, GateRequest, Hook, Patch, PatchRequest, Plugin, ScaleAdvice, ScaleRequest, Value,
};
use std::io::Read;

pub struct Hostile;

/// The misbehaviour for `hook`: the config's `mode`, unless `only` names another hook.
fn misbehave(hook: &str, config: &Value) -> Result<Patch, String> {
    if config["only"].as_str().is_some_and(|only| only != hook) {
        return Ok(Patch::None);
    }
    match config["mode"].as_str().unwrap_or("ok") {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        // Slow but finite: `rounds` rounds of arithmetic, then no patch (for
        // the tests of what the deadline counts).
        "compute" => {
            let rounds = config["rounds"].as_u64().unwrap_or(1_000_000);
            let mut x: u64 = 1;
            for i in 0..rounds {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
            }
            std::hint::black_box(x);
            Ok(Patch::None)
        }
        "trap" => panic!("hostile plugin panics on purpose"),
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![7u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "flood" => {
            // 100 MB to stdout.
            let line = "x".repeat(1023) + "\n";
            for _ in 0..100 * 1024 {
                print!("{line}");
            }
            Ok(Patch::None)
        }
        "big-output" => {
            // A 4 MiB merge patch: within memory, over the output cap.
            let blob = "y".repeat(4 << 20);
            Ok(Patch::Merge(
                disagg_plugin_sdk::json!({"metadata": {"annotations": {"blob": blob}}}),
            ))
        }
        "garbage" => Ok(Patch::Json(Value::String("not a patch".into()))),
        // Blocks in a host call (wasi:io/poll), where the epoch deadline cannot interrupt.
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Ok(Patch::None)
        }
        // Busy-waits on the monotonic clock: a host call per iteration.
        "clock-spin" => {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(3600) {}
            Ok(Patch::None)
        }
        "stdin" => {
            let mut line = String::new();
            let _ = std::io::stdin().read_to_string(&mut line);
            // A closed stdin ends the read; then wait for more the ordinary way.
            loop {
                if std::io::stdin().read_to_string(&mut line).unwrap_or(0) > 0 {
                    return Ok(Patch::None);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        "exit" => std::process::exit(3),
        // Whatever the config's `patch` holds, as a JSON patch (or a merge patch with `merge: true`).
        "return" => Ok(if config["merge"] == true {
            Patch::Merge(config["patch"].clone())
        } else {
            Patch::Json(config["patch"].clone())
        }),
        _ => Ok(Patch::None),
    }
}

impl Plugin for Hostile {
    const NAME: &'static str = "hostile";
    const VERSION: &'static str = "0.0.0";
    const HOOKS: &'static [Hook] = &[Hook::PatchRole, Hook::GateStep, Hook::ScaleRole];

    /// Only mode `scale` advises: the config's `replicas`, whatever it is.
    fn scale_role(req: ScaleRequest) -> Result<Option<ScaleAdvice>, String> {
        if req.config["mode"] != "scale" {
            return Ok(None);
        }
        Ok(Some(ScaleAdvice {
            replicas: req.config["replicas"].as_i64().unwrap_or(0) as i32,
            reason: "hostile advice".into(),
        }))
    }

    fn patch_role(req: PatchRequest) -> Result<Patch, String> {
        misbehave("patch-role", &req.config)
    }

    fn gate_step(req: GateRequest) -> Result<GateDecision, String> {
        if req.config["mode"] == "hold" {
            return Ok(GateDecision::hold(
                "this gate never lets a step through",
                1000,
            ));
        }
        misbehave("gate-step", &req.config).map(|_| GateDecision::Proceed)
    }
}

disagg_plugin_sdk::export_plugin!(Hostile);
