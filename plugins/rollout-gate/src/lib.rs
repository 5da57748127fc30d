//! `rollout-gate`: holds each rollout step until it may go ahead.
//!
//! ```yaml
//! plugins:
//!   - name: rollout-gate
//!     config:
//!       bakeSeconds: 300            # new groups must have been ready this long
//!       requireApproval: true       # annotate the set: disaggregatedset.x-k8s.io/approve-step: "<n>"
//!       windows:                    # only inside these UTC windows
//!         - {days: [Mon, Tue, Wed, Thu, Fri], start: "09:00", end: "17:00"}
//!       recheckSeconds: 30
//! ```

use disagg_plugin_sdk::{GateDecision, GateRequest, Hook, Plugin};
use serde::Deserialize;

const APPROVE_STEP: &str = "disaggregatedset.x-k8s.io/approve-step";
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    bake_seconds: u64,
    #[serde(default)]
    require_approval: bool,
    #[serde(default)]
    windows: Vec<Window>,
    #[serde(default = "default_recheck")]
    recheck_seconds: u64,
}

fn default_recheck() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Window {
    /// Mon..Sun; every day when empty.
    #[serde(default)]
    days: Vec<String>,
    /// "HH:MM", UTC, inclusive.
    start: String,
    /// "HH:MM", UTC, exclusive. A window may cross midnight.
    end: String,
}

pub struct RolloutGate;

impl Plugin for RolloutGate {
    const NAME: &'static str = "rollout-gate";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: &'static [Hook] = &[Hook::GateStep];

    fn gate_step(req: GateRequest) -> Result<GateDecision, String> {
        let cfg: Config = req.config()?;
        let recheck = cfg.recheck_seconds.max(1) * 1000;
        if let Some(r) = req.roles.iter().find(|r| !r.ready) {
            return Ok(GateDecision::hold(
                format!("role {} is not ready yet", r.name),
                recheck,
            ));
        }
        let bake_ms = cfg.bake_seconds * 1000;
        if req.held_for_ms < bake_ms {
            let left = bake_ms - req.held_for_ms;
            return Ok(GateDecision::hold(
                format!(
                    "baking: ready for {}s of {}s",
                    req.held_for_ms / 1000,
                    cfg.bake_seconds
                ),
                left.min(recheck),
            ));
        }
        if cfg.require_approval
            && req.annotation(APPROVE_STEP) != Some(req.step.to_string().as_str())
        {
            return Ok(GateDecision::hold(
                format!(
                    "waiting for approval of step {}: annotate the set with {APPROVE_STEP}: \"{}\"",
                    req.step, req.step
                ),
                recheck,
            ));
        }
        if !cfg.windows.is_empty() {
            let mut open = false;
            for w in &cfg.windows {
                open |= in_window(w, req.now_ms)?;
            }
            if !open {
                return Ok(GateDecision::hold(
                    "outside the configured rollout windows (UTC)",
                    recheck,
                ));
            }
        }
        Ok(GateDecision::Proceed)
    }
}

/// Minutes since midnight from "HH:MM".
fn minutes(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid config: time {s:?} must be HH:MM");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u64, u64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 24 || m > 59 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn in_window(w: &Window, now_ms: u64) -> Result<bool, String> {
    for d in &w.days {
        if !DAYS.contains(&d.as_str()) {
            return Err(format!(
                "invalid config: day {d:?} must be one of {}",
                DAYS.join(", ")
            ));
        }
    }
    let (start, end) = (minutes(&w.start)?, minutes(&w.end)?);
    let days_since_epoch = now_ms / 86_400_000;
    // 1970-01-01 was a Thursday (index 3).
    let day = |offset: u64| DAYS[((days_since_epoch + 3 + offset) % 7) as usize];
    let minute = (now_ms / 60_000) % 1440;
    let day_ok = |d: &str| w.days.is_empty() || w.days.iter().any(|x| x == d);
    Ok(if start <= end {
        day_ok(day(0)) && minute >= start && minute < end
    } else {
        // Crosses midnight: the part after midnight belongs to the previous day's window.
        (day_ok(day(0)) && minute >= start) || (day_ok(day(6)) && minute < end)
    })
}

disagg_plugin_sdk::export_plugin!(RolloutGate);
