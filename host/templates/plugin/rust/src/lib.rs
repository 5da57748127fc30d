//! {{name}}: a rollout gate. It holds step k of a rollout until the set
//! carries the annotation `example.com/approved-step` with a number ≥ k, so
//! someone approves each step with
//! `kubectl annotate dset NAME example.com/approved-step=k --overwrite`.
//! Change `gate_step` to decide what you need; see the SDK's README for the
//! other hooks.

use disagg_plugin_sdk::{GateDecision, GateRequest, Hook, Plugin};

pub const ANNOTATION: &str = "example.com/approved-step";

pub struct Gate;

impl Plugin for Gate {
    const NAME: &'static str = "{{name}}";
    const VERSION: &'static str = "0.1.0";
    const HOOKS: &'static [Hook] = &[Hook::GateStep];

    fn gate_step(req: GateRequest) -> Result<GateDecision, String> {
        let approved = req
            .annotation(ANNOTATION)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if approved >= req.step {
            return Ok(GateDecision::Proceed);
        }
        Ok(GateDecision::hold(
            format!(
                "step {} of {} waits for {ANNOTATION} >= {}",
                req.step, req.total_steps, req.step
            ),
            10_000, // ask again in 10 s (an annotation change also triggers a call)
        ))
    }
}

disagg_plugin_sdk::export_plugin!(Gate);

#[cfg(test)]
mod tests {
    use super::*;
    use disagg_plugin_sdk::RoleStep;

    fn request(step: u32, approved: Option<&str>) -> GateRequest {
        GateRequest {
            set_name: "llm".into(),
            namespace: "default".into(),
            labels: vec![],
            annotations: approved
                .map(|v| (ANNOTATION.to_string(), v.to_string()))
                .into_iter()
                .collect(),
            revision: "abcd1234".into(),
            old_revision: "0123abcd".into(),
            slice: 0,
            step,
            total_steps: 4,
            roles: vec![RoleStep {
                name: "prefill".into(),
                old_now: 2,
                old_next: 1,
                new_now: 1,
                new_next: 2,
                target: 3,
                ready: true,
            }],
            held_for_ms: 0,
            now_ms: 0,
            config: disagg_plugin_sdk::json!({}),
            signals: vec![],
        }
    }

    #[test]
    fn holds_a_step_nobody_approved() {
        for approved in [None, Some("1"), Some("soon")] {
            match Gate::gate_step(request(2, approved)).unwrap() {
                GateDecision::Hold { reason, .. } => assert!(reason.contains("step 2 of 4")),
                other => panic!("{other:?} with {approved:?}"),
            }
        }
    }

    #[test]
    fn proceeds_once_the_step_is_approved() {
        for approved in ["2", "3"] {
            assert_eq!(
                Gate::gate_step(request(2, Some(approved))).unwrap(),
                GateDecision::Proceed
            );
        }
    }
}
