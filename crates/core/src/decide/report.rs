//! What the set shows: `PluginsReady`, the status while a plugin compiles,
//! and the Events for what changed.

use super::*;

/// While a set waits for a plugin still compiling, its status is what it
/// was; after a moment, `PluginsReady=False` says which plugin it waits for.
pub(super) fn waiting_for(
    set: &DisaggregatedSet,
    loading: &[(&str, Duration)],
    now: &Time,
) -> DisaggregatedSetStatus {
    let mut status = set.status.clone().unwrap_or_default();
    if loading
        .iter()
        .all(|(_, took)| *took <= REPORT_LOADING_AFTER)
    {
        return status;
    }
    let list: Vec<String> = loading
        .iter()
        .map(|(name, _)| {
            PluginError::Loading {
                plugin: name.to_string(),
            }
            .to_string()
        })
        .collect();
    let condition = status::condition(
        &status.conditions,
        conditions::PLUGINS_READY,
        false,
        "PluginLoading",
        list.join("; "),
        set.metadata.generation,
        now,
    );
    status
        .conditions
        .retain(|c| c.type_ != conditions::PLUGINS_READY);
    status.conditions.push(condition);
    status
}

/// `PluginsReady`: true while every bound plugin is loaded and answering.
pub(super) fn plugins_ready(
    set: &DisaggregatedSet,
    failures: &[Failure],
    refused: &[String],
    now: &Time,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let failing: Vec<String> = failures
        .iter()
        .map(Failure::describe)
        .chain(refused.iter().cloned())
        .collect();
    let previous = set
        .status
        .as_ref()
        .map(|p| p.conditions.as_slice())
        .unwrap_or(&[]);
    let (reason, message) = match failures.first() {
        _ if failing.is_empty() => (
            "PluginsLoaded",
            "every bound plugin is loaded and answering".to_string(),
        ),
        // The first failure's own reason (PluginTimeout, PluginMissing, …).
        Some(f) => (f.reason, failing.join("; ")),
        None => ("PluginRefused", failing.join("; ")),
    };
    status::condition(
        previous,
        conditions::PLUGINS_READY,
        failing.is_empty(),
        reason,
        message,
        set.metadata.generation,
        now,
    )
}

/// Events for what changed since the set's last status: a new hold, a new
/// plugin failure, the set becoming invalid.
pub(super) fn events(
    set: &DisaggregatedSet,
    failures: &[Failure],
    violations: &[Violation],
    hold: Option<&Hold>,
    rev: &str,
) -> Vec<Event> {
    let previous = set.status.as_ref();
    let mut events = Vec::new();
    let was_held = previous
        .and_then(|p| p.rollout.as_ref())
        .and_then(|r| r.held_by.as_deref());
    if let Some(h) = hold
        && was_held != Some(h.gate.as_str())
    {
        events.push(Event::normal(
            "RolloutHeld",
            "Rollout",
            format!("rollout to {rev} held by {}: {}", h.gate, h.reason),
        ));
    }
    for f in failures {
        let known = previous.is_some_and(|p| {
            p.plugins
                .iter()
                .any(|s| s.name == f.plugin && s.last_error.as_deref() == Some(f.message.as_str()))
        });
        if !known {
            events.push(Event::warning(
                "PluginFailed",
                "Plugin",
                format!(
                    "plugin {} ({}{:?}){}: {}",
                    f.plugin,
                    f.hook.map(|h| format!("{h}, ")).unwrap_or_default(),
                    f.policy,
                    f.role
                        .as_ref()
                        .map(|r| format!(" on role {r}"))
                        .unwrap_or_default(),
                    f.message
                ),
            ));
        }
    }
    let was_invalid = previous.is_some_and(|p| {
        p.conditions
            .iter()
            .any(|c| c.type_ == conditions::VALID && c.status == "False")
    });
    if !violations.is_empty() && !was_invalid {
        let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
        events.push(Event::warning("Invalid", "Validate", list.join("; ")));
    }
    events
}

/// Each bound plugin: the digest in use and its last error.
pub(super) fn plugin_statuses(
    effective: &[PluginBinding],
    plugins: &dyn Plugins,
    failures: &[Failure],
) -> Vec<PluginStatus> {
    effective
        .iter()
        .map(|b| PluginStatus {
            name: b.name.clone(),
            digest: plugins.get(&b.name).map(|p| p.digest().to_string()),
            last_error: plugins.refused(&b.name).or_else(|| {
                failures
                    .iter()
                    .find(|f| f.plugin == b.name)
                    .map(|f| f.message.clone())
            }),
        })
        .collect()
}

/// Bound plugins whose newest component was refused (the last good one, if
/// any, stays in use): they make `PluginsReady` false and change nothing else.
pub(super) fn refusals(effective: &[PluginBinding], plugins: &dyn Plugins) -> Vec<String> {
    effective
        .iter()
        .filter_map(|b| {
            let error = plugins.refused(&b.name)?;
            Some(match plugins.get(&b.name) {
                Some(good) => format!(
                    "{}: the newest component was refused ({error}); {} stays in use",
                    b.name,
                    good.digest()
                ),
                None => format!("{}: the component was refused ({error})", b.name),
            })
        })
        .collect()
}

/// What plugin failures hold back, for `Progressing`: the roles whose writes
/// wait, and the failures that stop them.
pub(super) fn blocked_message(failures: &[Failure], held_back: &[Planned]) -> String {
    let mut roles: Vec<&str> = held_back
        .iter()
        .filter_map(|p| p.scope.as_ref().map(|s| s.role.as_str()))
        .chain(
            failures
                .iter()
                .filter(|f| f.blocks())
                .filter_map(|f| f.role.as_deref()),
        )
        .collect();
    roles.sort();
    roles.dedup();
    let what = if roles.is_empty() {
        "changes to the set wait".to_string()
    } else {
        format!("changes to role {} wait", roles.join(", "))
    };
    let why: Vec<String> = failures
        .iter()
        .filter(|f| f.blocks())
        .map(Failure::describe)
        .collect();
    truncate(&format!("{what} for plugins: {}", why.join("; ")), 2048)
}
