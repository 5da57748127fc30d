//! A plugin that misbehaves on purpose, for the runtime's tests. Its config
//! `mode` picks the misbehaviour; every hook misbehaves the same way, except
//! `hold`: a gate that always holds.

use disagg_plugin_sdk::{GateDecision, GateRequest, Hook, Patch, PatchRequest, Plugin, Value};

pub struct Hostile;

fn misbehave(config: &Value) -> Result<Patch, String> {
    match config["mode"].as_str().unwrap_or("ok") {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
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
        _ => Ok(Patch::None),
    }
}

impl Plugin for Hostile {
    const NAME: &'static str = "hostile";
    const VERSION: &'static str = "0.0.0";
    const HOOKS: &'static [Hook] = &[Hook::PatchRole, Hook::GateStep];

    fn patch_role(req: PatchRequest) -> Result<Patch, String> {
        misbehave(&req.config)
    }

    fn gate_step(req: GateRequest) -> Result<GateDecision, String> {
        if req.config["mode"] == "hold" {
            return Ok(GateDecision::hold(
                "this gate never lets a step through",
                1000,
            ));
        }
        misbehave(&req.config).map(|_| GateDecision::Proceed)
    }
}

disagg_plugin_sdk::export_plugin!(Hostile);
