//! `slo-gate`: holds each rollout step while the new revision's service
//! metrics are out of bounds, and asks for an abort when they stay out.
//!
//! ```yaml
//! plugins:
//!   - name: slo-gate
//!     signals:                          # evaluated by the operator, per step
//!       - name: ttft-new
//!         query: histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{disaggregatedset="{{set}}",revision="{{revision}}"}[1m])))
//!       - name: ttft-old
//!         query: histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{disaggregatedset="{{set}}",revision="{{oldRevision}}"}[1m])))
//!     config:
//!       checks:
//!         - {signal: ttft-new, max: 0.5}                        # absolute bound
//!         - {signal: ttft-new, baseline: ttft-old, maxRatio: 1.2} # at most 20 % worse than the old revision
//!       abortAfterSeconds: 300          # out of bounds this long: abort (absent: hold)
//!       recheckSeconds: 10
//! ```
//!
//! The first step (no new groups yet) always proceeds: it is the canary that
//! produces the new revision's metrics. Each check's signal must give one
//! value (aggregate in the query). A signal
//! that is unavailable or empty holds the step — never proceeds, never
//! aborts: missing data is not evidence. A check fails when the value is above
//! `max`, below `min`, or above `maxRatio` × its baseline's value. Time out of
//! bounds is the request's `held-for-ms` (how long the rollout has not moved).

use disagg_plugin_sdk::{GateDecision, GateRequest, Hook, Plugin, Signal};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    checks: Vec<Check>,
    #[serde(default)]
    abort_after_seconds: Option<u64>,
    #[serde(default = "default_recheck")]
    recheck_seconds: u64,
}

fn default_recheck() -> u64 {
    10
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Check {
    signal: String,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    baseline: Option<String>,
    #[serde(default)]
    max_ratio: Option<f64>,
}

/// Why a step may not go ahead.
enum Verdict {
    /// Some data is missing: hold, never abort.
    Unknown(String),
    /// Out of bounds.
    Violated(String),
}

pub struct SloGate;

impl Plugin for SloGate {
    const NAME: &'static str = "slo-gate";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: &'static [Hook] = &[Hook::GateStep];

    fn gate_step(req: GateRequest) -> Result<GateDecision, String> {
        let cfg: Config = req.config()?;
        if cfg.checks.is_empty() {
            return Err("config.checks is empty: nothing to gate on".into());
        }
        let recheck = cfg.recheck_seconds.max(1) * 1000;
        // Before the first new groups there is nothing to judge: the first
        // step is the canary that makes the metrics.
        if req.roles.iter().all(|r| r.new_now == 0) {
            return Ok(GateDecision::Proceed);
        }
        let mut verdicts = Vec::new();
        for check in &cfg.checks {
            if let Some(v) = judge(&req, check) {
                verdicts.push(v);
            }
        }
        let unknown: Vec<&str> = verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Unknown(why) => Some(why.as_str()),
                Verdict::Violated(_) => None,
            })
            .collect();
        let violated: Vec<&str> = verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Violated(why) => Some(why.as_str()),
                Verdict::Unknown(_) => None,
            })
            .collect();
        if !violated.is_empty() {
            let held_s = req.held_for_ms / 1000;
            let why = violated.join("; ");
            if let Some(limit) = cfg.abort_after_seconds
                && held_s >= limit
            {
                return Ok(GateDecision::Abort(format!(
                    "revision {} out of its SLO for {held_s}s (abortAfterSeconds {limit}): {why}",
                    req.revision
                )));
            }
            return Ok(GateDecision::hold(
                format!("revision {} out of its SLO: {why}", req.revision),
                recheck,
            ));
        }
        if !unknown.is_empty() {
            return Ok(GateDecision::hold(
                format!("holding without data: {}", unknown.join("; ")),
                recheck,
            ));
        }
        Ok(GateDecision::Proceed)
    }
}

/// One check: `None` when it passes.
fn judge(req: &GateRequest, check: &Check) -> Option<Verdict> {
    let value = match value_of(req, &check.signal) {
        Ok(v) => v,
        Err(why) => return Some(Verdict::Unknown(why)),
    };
    let name = &check.signal;
    if let Some(max) = check.max
        && value > max
    {
        return Some(Verdict::Violated(format!(
            "{name} is {value:.3}, above {max}"
        )));
    }
    if let Some(min) = check.min
        && value < min
    {
        return Some(Verdict::Violated(format!(
            "{name} is {value:.3}, below {min}"
        )));
    }
    if let (Some(baseline), Some(ratio)) = (&check.baseline, check.max_ratio) {
        let base = match value_of(req, baseline) {
            Ok(v) => v,
            Err(why) => return Some(Verdict::Unknown(why)),
        };
        if value > base * ratio {
            return Some(Verdict::Violated(format!(
                "{name} is {value:.3}, above {ratio} × {baseline} ({base:.3})"
            )));
        }
    }
    None
}

fn value_of(req: &GateRequest, name: &str) -> Result<f64, String> {
    let signal: &Signal = req
        .signal(name, None)
        .ok_or_else(|| format!("signal {name} is not declared in the binding's signals"))?;
    let v = signal.value()?;
    if v.is_nan() {
        return Err(format!("signal {name} is NaN (no traffic in its window?)"));
    }
    Ok(v)
}

disagg_plugin_sdk::export_plugin!(SloGate);
