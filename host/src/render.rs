//! `disagg render`: what the operator would create for a set that has no
//! children yet — the same decide step ([`crate::core::decide`]) with the
//! same default bindings and plugins as `disagg dev` and a deployed operator,
//! so the same file gives the same revision and children everywhere.

use crate::api::set::DisaggregatedSet;
use crate::core::bindings::{self, DefaultBinding};
use crate::core::decide::{Observed, Plan, decide};
use crate::core::execute::Target;
use crate::core::plugins::Plugin;
use crate::core::simulate;
use crate::plugin::{Limits, Runtime};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// The plugins a render runs: each `(name, bytes)` given, and for every
/// other plugin the sets bind, the shipped component of that name (a bound
/// plugin with neither is missing, as it would be in a cluster).
pub fn plugins(
    sets: &[&DisaggregatedSet],
    defaults: &[DefaultBinding],
    given: Vec<(String, Vec<u8>)>,
) -> Result<BTreeMap<String, Arc<dyn Plugin>>, String> {
    let mut wanted: Vec<(String, Vec<u8>)> = given;
    let mut shipped = None;
    for set in sets {
        for b in bindings::effective(defaults, &set.spec.plugins) {
            if wanted.iter().any(|(n, _)| *n == b.name) {
                continue;
            }
            // Read deploy/'s ConfigMaps once, and only if a binding needs them.
            let shipped = shipped.get_or_insert_with(crate::defaults::shipped_components);
            if let Some(bytes) = shipped.remove(&b.name) {
                wanted.push((b.name, bytes));
            }
        }
    }
    let mut loaded: BTreeMap<String, Arc<dyn Plugin>> = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(loaded);
    }
    let runtime = Runtime::new(Limits::for_tools())?;
    for (name, bytes) in wanted {
        let plugin = runtime.load(&name, &bytes).map_err(|e| e.to_string())?;
        loaded.insert(name, plugin);
    }
    Ok(loaded)
}

/// The plan for `set` with no children and no scalers yet.
pub fn offline(
    set: &DisaggregatedSet,
    defaults: &[DefaultBinding],
    plugins: &BTreeMap<String, Arc<dyn Plugin>>,
) -> Plan {
    decide(&Observed {
        set,
        children: &[],
        scalers: &[],
        defaults,
        plugins,
        signals: &crate::core::signals::NoSignals,
        signal_interval: crate::controller::DEFAULT_SIGNAL_INTERVAL,
        now: k8s_openapi::jiff::Timestamp::now(),
    })
}

/// The children the plan creates, as a multi-document YAML stream.
pub fn children_yaml(plan: &Plan) -> String {
    let mut out = String::new();
    for child in plan.created_children() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(child).expect("an LWS serialises"));
    }
    out
}

/// One line per plugin failure, saying what it held back.
pub fn warnings(plan: &Plan) -> String {
    let mut out = String::new();
    for f in &plan.failures {
        let effect = if f.blocks() {
            match &f.role {
                Some(r) => format!("role {r} left unchanged (failurePolicy Fail)"),
                None => "set left unchanged (failurePolicy Fail)".into(),
            }
        } else {
            "plugin skipped (failurePolicy Ignore)".into()
        };
        let _ = writeln!(out, "Warning {}: {}; {effect}", f.reason, f.message);
    }
    out
}

/// The rollout from `old` to `new`, per slice, as YAML comments so the
/// stream stays applyable: every state the children pass through, numbered
/// as status counts steps (`k/T`: k of the schedule's T steps done; a gate
/// is asked before step k+1). A step that scales up and then drains shows
/// as two states with one number.
pub fn rollout_comment(old: &Target, new: &Target) -> String {
    let mut children = simulate::steady_children(old, 0);
    let snapshots = simulate::rollout(new, &mut children, 100_000);
    let mut out = format!(
        "# rollout {} -> {} (per slice; old/new replicas per role)\n",
        old.revision, new.revision
    );
    if old.revision == new.revision {
        out.push_str("# same revision: replicas change directly, no rollout\n");
    }
    for line in step_lines(&snapshots) {
        let _ = writeln!(out, "# step {line}");
    }
    out
}

/// One line per state of a simulated rollout: `k/T: prefill 2/0, decode 4/0`
/// (old/new groups per role, `k` of the schedule's `T` steps done).
pub fn step_lines(snapshots: &[simulate::Snapshot]) -> Vec<String> {
    snapshots
        .iter()
        .map(|snap| {
            let roles: Vec<String> = snap
                .roles
                .iter()
                .map(|r| format!("{} {}/{}", r.name, r.old, r.new))
                .collect();
            let (k, total) = snap.position;
            format!("{k}/{total}: {}", roles.join(", "))
        })
        .collect()
}
