//! A custom rollout gate, written with the Rust SDK. The same gate exists in
//! C (`examples/c-gate`) and JavaScript (`examples/js-gate`):
//!
//! * hold while any role's new groups are not ready;
//! * hold the last step of a rollout until the set carries the annotation
//!   `example.com/final-step: go`;
//! * never let a step add more than `maxNewPerStep` groups to a role (config, default 4).

use disagg_plugin_sdk::{GateDecision, GateRequest, Hook, Plugin};

pub struct FinalStepGate;

impl Plugin for FinalStepGate {
    const NAME: &'static str = "rust-gate";
    const VERSION: &'static str = "0.1.0";
    const HOOKS: &'static [Hook] = &[Hook::GateStep];

    fn gate_step(req: GateRequest) -> Result<GateDecision, String> {
        if let Some(r) = req.roles.iter().find(|r| !r.ready) {
            return Ok(GateDecision::hold(format!("{} not ready", r.name), 5_000));
        }
        let max_new = req.config["maxNewPerStep"].as_i64().unwrap_or(4);
        if let Some(r) = req
            .roles
            .iter()
            .find(|r| i64::from(r.new_next - r.new_now) > max_new)
        {
            return Ok(GateDecision::hold(
                format!("{} would add more than {max_new} groups", r.name),
                60_000,
            ));
        }
        if req.step >= req.total_steps && req.annotation("example.com/final-step") != Some("go") {
            return Ok(GateDecision::hold(
                "final step needs example.com/final-step: go",
                10_000,
            ));
        }
        Ok(GateDecision::Proceed)
    }
}

disagg_plugin_sdk::export_plugin!(FinalStepGate);
