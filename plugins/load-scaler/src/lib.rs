//! `load-scaler`: proposes replicas for each role from a load signal against
//! a target, within bounds, a step limit, a cool-down and a ratio band
//! between roles. Works for Static roles (it sets their target) and
//! External ones (its advice adjusts what their scaler asks for).
//!
//! ```yaml
//! plugins:
//!   - name: load-scaler
//!     signals:
//!       - name: queue        # prefill: requests waiting, over the role's groups
//!         query: sum(vllm:num_requests_waiting{disaggregatedset="{{set}}",role="{{role}}"})
//!       - name: kv           # decode: KV-cache usage, averaged
//!         query: avg(vllm:kv_cache_usage_perc{disaggregatedset="{{set}}",role="{{role}}"})
//!     config:
//!       roles:
//!         prefill: {signal: queue, perReplica: 4, min: 1, max: 16}   # ceil(queue / 4) groups
//!         decode: {signal: kv, utilization: 0.7, min: 1, max: 32}   # groups × usage / 0.7
//!       maxStep: 2             # at most this many groups up or down per decision
//!       coolDownSeconds: 60    # no load-driven change within this long of the last one
//!       ratio: {role: decode, of: prefill, min: 1.0, max: 3.0}       # decode/prefill band
//! ```
//!
//! Advice counts for one decision, so the scaler proposes from the groups
//! that run now (`observed`): a role whose signal is unavailable, empty or
//! NaN, or that is cooling down, is proposed at the size it has — frozen,
//! not sent back to its spec's replicas. The ratio band is a constraint, applied after the
//! load rule (and during a cool-down): with prefill scaled up, decode follows
//! into the band even when its own load does not ask for it. Roles are
//! advised in spec order, so a role later in the spec sees earlier advice.

use disagg_plugin_sdk::{Hook, Plugin, ScaleAdvice, ScaleRequest};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    roles: BTreeMap<String, RoleRule>,
    #[serde(default)]
    max_step: Option<i32>,
    #[serde(default)]
    cool_down_seconds: u64,
    #[serde(default)]
    ratio: Option<Ratio>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RoleRule {
    signal: String,
    /// Load one group absorbs: groups = ceil(load / perReplica).
    #[serde(default)]
    per_replica: Option<f64>,
    /// Target utilisation (0–1): groups = ceil(groups × usage / utilization).
    #[serde(default)]
    utilization: Option<f64>,
    #[serde(default = "one")]
    min: i32,
    #[serde(default = "many")]
    max: i32,
}

fn one() -> i32 {
    1
}

fn many() -> i32 {
    1_000
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Ratio {
    /// The role held in the band.
    role: String,
    /// The role it is a ratio of.
    of: String,
    min: f64,
    max: f64,
}

pub struct LoadScaler;

impl Plugin for LoadScaler {
    const NAME: &'static str = "load-scaler";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: &'static [Hook] = &[Hook::ScaleRole];

    fn scale_role(req: ScaleRequest) -> Result<Option<ScaleAdvice>, String> {
        let cfg: Config = req.config()?;
        let role = req
            .role_named(&req.role)
            .ok_or_else(|| format!("no role {} in the request", req.role))?;
        // Advice applies to one decision only: each time, propose from the
        // groups that run now, so holding still means proposing them again.
        let desired = role.desired;
        let current = if role.observed > 0 {
            role.observed
        } else {
            desired
        };
        let mut proposal = current;
        let mut why = Vec::new();
        if let Some(rule) = cfg.roles.get(&req.role) {
            let cooling = cfg.cool_down_seconds > 0
                && req
                    .last_scaled_ms
                    .is_some_and(|t| req.now_ms.saturating_sub(t) < cfg.cool_down_seconds * 1000);
            match load_rule(&req, rule, current) {
                Err(e) => why.push(format!("holding at {current}: {e}")),
                Ok((wanted, because)) if wanted != current => {
                    if cooling {
                        why.push(format!("{because}, but cooling down"));
                    } else {
                        let step = cfg.max_step.unwrap_or(i32::MAX).max(1);
                        proposal = wanted
                            .clamp(current.saturating_sub(step), current.saturating_add(step));
                        why.push(because);
                    }
                }
                Ok(_) => {}
            }
        }
        if let Some(band) = cfg.ratio.as_ref().filter(|b| b.role == req.role)
            && let Some(of) = req.role_named(&band.of)
        {
            let low = (f64::from(of.desired) * band.min).ceil() as i32;
            let high = (f64::from(of.desired) * band.max).floor() as i32;
            let banded = proposal.clamp(low.min(high), high.max(low));
            if banded != proposal {
                why.push(format!(
                    "kept within {}..{} × {} ({} groups)",
                    band.min, band.max, band.of, of.desired
                ));
                proposal = banded;
            }
        }
        if let Some(rule) = cfg.roles.get(&req.role) {
            proposal = proposal.clamp(rule.min, rule.max.max(rule.min));
        }
        if proposal == desired {
            return Ok(None);
        }
        if why.is_empty() {
            why.push("holding".into());
        }
        Ok(Some(ScaleAdvice {
            replicas: proposal,
            reason: format!("{} {current} → {proposal}: {}", req.role, why.join("; ")),
        }))
    }
}

/// The groups a role's load asks for, and why.
fn load_rule(req: &ScaleRequest, rule: &RoleRule, current: i32) -> Result<(i32, String), String> {
    let signal = req.signal(&rule.signal).ok_or_else(|| {
        format!(
            "signal {} is not declared in the binding's signals",
            rule.signal
        )
    })?;
    let load = signal.value()?;
    if !load.is_finite() {
        return Err(format!("signal {} is {load}", rule.signal));
    }
    let wanted = match (rule.per_replica, rule.utilization) {
        (Some(per), None) if per > 0.0 => (load / per).ceil(),
        (None, Some(u)) if u > 0.0 => (f64::from(current.max(1)) * load / u).ceil(),
        _ => return Err("set exactly one of perReplica or utilization, above 0".into()),
    };
    let wanted = wanted.clamp(0.0, 1_000_000.0) as i32;
    Ok((wanted, format!("{} is {load:.2}", rule.signal)))
}

disagg_plugin_sdk::export_plugin!(LoadScaler);
