//! `ratio-scaler`: keeps one role at a ratio of another, within bounds.
//!
//! ```yaml
//! plugins:
//!   - name: ratio-scaler
//!     roles: [decode]
//!     config: {role: decode, of: prefill, ratio: 1.5, min: 1, max: 32}
//! ```
//!
//! decode = clamp(ceil(1.5 × prefill's desired replicas), 1, 32), per slice.

use disagg_plugin_sdk::{Hook, Plugin, ScaleAdvice, ScaleRequest};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The role this plugin scales.
    role: String,
    /// The role it follows.
    of: String,
    ratio: f64,
    #[serde(default)]
    min: Option<i32>,
    #[serde(default)]
    max: Option<i32>,
}

pub struct RatioScaler;

impl Plugin for RatioScaler {
    const NAME: &'static str = "ratio-scaler";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: &'static [Hook] = &[Hook::ScaleRole];

    fn scale_role(req: ScaleRequest) -> Result<Option<ScaleAdvice>, String> {
        let cfg: Config = req.config()?;
        if !(cfg.ratio.is_finite() && cfg.ratio >= 0.0) {
            return Err(format!(
                "invalid config: ratio must be a non-negative number, is {}",
                cfg.ratio
            ));
        }
        if let (Some(min), Some(max)) = (cfg.min, cfg.max)
            && min > max
        {
            return Err(format!("invalid config: min ({min}) is above max ({max})"));
        }
        if req.role != cfg.role {
            return Ok(None);
        }
        let of = req
            .role_named(&cfg.of)
            .ok_or_else(|| format!("invalid config: the set has no role {:?} to follow", cfg.of))?;
        let raw = (f64::from(of.desired) * cfg.ratio).ceil();
        let mut replicas = if raw > f64::from(i32::MAX) {
            i32::MAX
        } else {
            raw as i32
        };
        if let Some(min) = cfg.min {
            replicas = replicas.max(min);
        }
        if let Some(max) = cfg.max {
            replicas = replicas.min(max);
        }
        Ok(Some(ScaleAdvice {
            replicas,
            reason: format!(
                "{} = ceil({} × {} {})",
                cfg.role, cfg.ratio, cfg.of, of.desired
            ),
        }))
    }
}

disagg_plugin_sdk::export_plugin!(RatioScaler);
