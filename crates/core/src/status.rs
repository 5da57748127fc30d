//! Status computation (`docs/api.md`): role statuses in spec order, the
//! Available/Progressing contract, and our extension conditions.

use super::execute::{Child, Decision, SliceState, Target};
use disagg_api::set::{DisaggregatedSetStatus, RoleRollout, RoleStatus, RolloutStatus};
use disagg_api::validate::Violation;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod conditions {
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
    pub const ROLLOUT_HELD: &str = "RolloutHeld";
    /// Present (True) while an abort applies to the set.
    pub const ROLLOUT_ABORTED: &str = "RolloutAborted";
    pub const PLUGINS_READY: &str = "PluginsReady";
    /// On sets whose bindings declare signals: whether each was evaluated.
    pub const SIGNALS_READY: &str = "SignalsReady";
    pub const VALID: &str = "Valid";
    /// Present (True) while the API server refuses writes to the set's children.
    pub const REPLICA_FAILURE: &str = "ReplicaFailure";
}

/// A rollout gate holding the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub gate: String,
    pub reason: String,
}

/// Everything status is computed from.
pub struct Observation<'a> {
    pub generation: Option<i64>,
    pub target: &'a Target,
    pub children: &'a [Child],
    /// `None` when the set is invalid and nothing was decided.
    pub decision: Option<&'a Decision>,
    pub violations: &'a [Violation],
    pub hold: Option<&'a Hold>,
    /// Why the set is aborted, while an abort applies.
    pub abort: Option<&'a str>,
    /// What plugin failures hold back (a missing or failing plugin under
    /// `Fail`, one that could not be asked), if anything.
    pub blocked: Option<&'a str>,
    pub progress_deadline_seconds: Option<i32>,
    pub previous: Option<&'a DisaggregatedSetStatus>,
    pub now: Time,
}

/// Computes the set's status.
pub fn compute(o: &Observation<'_>) -> DisaggregatedSetStatus {
    use conditions::*;
    let role_statuses = role_statuses(o);
    let rolling = o
        .decision
        .is_some_and(|d| d.slices.iter().any(|s| s.rolling()));
    // Back at the stable revision after an abort, every role ready: serving, as before the rollout.
    let rolled_back = o.abort.is_some()
        && o.decision.is_some_and(|d| {
            d.slices
                .iter()
                .all(|s| s.aborted_to.is_some() && s.state == SliceState::Steady)
        })
        && o.children
            .iter()
            .filter(|c| c.owned)
            .all(|c| c.ready_replicas == c.replicas && c.status_replicas == c.replicas);
    let available = o.violations.is_empty() && !rolling && (all_ready(o) || rolled_back);

    let previous = o.previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let mut conds = Vec::new();
    let mut set = |type_: &str, status: bool, reason: &str, message: String| {
        conds.push(condition(
            previous,
            type_,
            status,
            reason,
            message,
            o.generation,
            &o.now,
        ));
    };

    if o.violations.is_empty() {
        set(VALID, true, "Valid", "the set passed validation".into());
    } else {
        let messages: Vec<String> = o.violations.iter().map(ToString::to_string).collect();
        set(VALID, false, "Invalid", messages.join("; "));
    }
    let stable = o
        .decision
        .and_then(|d| d.slices.iter().find_map(|s| s.aborted_to.clone()));
    if let Some(why) = o.abort {
        let message = match (&stable, rolling) {
            (Some(s), true) => format!("{why}; rolling back to revision {s}"),
            (Some(s), false) => format!(
                "{why}; back at revision {s}: remove the abort annotation (kubectl disagg resume) or change the spec to roll forward"
            ),
            (None, _) => format!(
                "{why}; nothing to roll back to: revision {} is the only one left",
                o.target.revision
            ),
        };
        set(ROLLOUT_ABORTED, true, "AbortRequested", message);
    }
    if rolled_back && o.violations.is_empty() {
        let why = format!(
            "every role is ready at revision {}, the rollout to {} is aborted",
            stable.clone().unwrap_or_default(),
            o.target.revision
        );
        set(AVAILABLE, true, "RolledBack", why.clone());
        set(PROGRESSING, false, "Aborted", why);
    } else if available {
        let why = "every role is ready at the target revision";
        set(AVAILABLE, true, "AllRolesReady", why.into());
        set(PROGRESSING, false, "AllRolesReady", why.into());
    } else if let Some(why) = o.blocked {
        set(AVAILABLE, false, "PluginBlocked", why.to_string());
        set(PROGRESSING, true, "PluginBlocked", why.to_string());
    } else {
        let why = if let (Some(s), true) = (&stable, rolling) {
            format!("aborted: rolling back to revision {s}")
        } else if rolling {
            format!("rolling out revision {}", o.target.revision)
        } else {
            "waiting for roles to become ready".into()
        };
        set(AVAILABLE, false, "RolloutInProgress", why.clone());
        set(PROGRESSING, true, "RolloutInProgress", why);
    }
    match o.hold {
        Some(h) => set(
            ROLLOUT_HELD,
            true,
            "GateHold",
            format!("held by {}: {}", h.gate, h.reason),
        ),
        None => set(
            ROLLOUT_HELD,
            false,
            "NotHeld",
            "no gate holds the rollout".into(),
        ),
    }

    let rollout = o.decision.filter(|_| rolling).map(|d| rollout_status(o, d));
    let last_progress = match (&rollout, o.previous.and_then(|p| p.rollout.as_ref())) {
        (Some(now), Some(before)) if now.roles == before.roles => before.last_progress_time.clone(),
        (Some(_), _) => Some(o.now.clone()),
        (None, _) => None,
    };
    let rollout = rollout.map(|r| RolloutStatus {
        last_progress_time: last_progress.clone(),
        ..r
    });
    match degraded(o, last_progress.as_ref()) {
        Some((reason, message)) => set(DEGRADED, true, reason, message),
        None => set(DEGRADED, false, "AsExpected", "no problem found".into()),
    }

    let current_revision = o
        .children
        .iter()
        .filter(|c| c.owned && c.revision != o.target.revision)
        .min_by_key(|c| (c.created, c.revision.clone()))
        .map(|c| c.revision.clone())
        .or_else(|| Some(o.target.revision.clone()));
    let roles_ready = role_statuses
        .iter()
        .zip(&o.target.roles)
        .map(|(s, r)| {
            format!(
                "{} {}/{}",
                s.name,
                s.ready_replicas,
                r.replicas * o.target.slices
            )
        })
        .collect::<Vec<_>>()
        .join(", ");

    DisaggregatedSetStatus {
        observed_generation: o.generation,
        role_statuses,
        conditions: conds,
        current_revision,
        update_revision: Some(o.target.revision.clone()),
        rollout,
        plugins: o.previous.map(|p| p.plugins.clone()).unwrap_or_default(),
        roles_ready: Some(roles_ready),
    }
}

/// Per role in spec order: sums over the set's slices and revisions
/// (`updatedReplicas` over the target revision only).
fn role_statuses(o: &Observation<'_>) -> Vec<RoleStatus> {
    o.target
        .roles
        .iter()
        .map(|r| {
            let of_role = o
                .children
                .iter()
                .filter(|c| c.owned && c.role == r.name && c.slice < o.target.slices);
            let before = o
                .previous
                .and_then(|p| p.role_statuses.iter().find(|s| s.name == r.name));
            let last_scale_time = match before {
                Some(b) if b.desired_replicas == Some(r.replicas) => b.last_scale_time.clone(),
                _ => Some(o.now.clone()),
            };
            RoleStatus {
                name: r.name.clone(),
                desired_replicas: Some(r.replicas),
                last_scale_time,
                replicas: of_role.clone().map(|c| c.status_replicas).sum(),
                ready_replicas: of_role.clone().map(|c| c.ready_replicas).sum(),
                updated_replicas: of_role
                    .filter(|c| c.revision == o.target.revision)
                    .map(|c| c.status_replicas)
                    .sum(),
            }
        })
        .collect()
}

/// Every role of every slice has one child at the target revision, at its
/// target size and all ready, and nothing else is left.
fn all_ready(o: &Observation<'_>) -> bool {
    let owned = || o.children.iter().filter(|c| c.owned);
    o.target.roles.iter().all(|r| {
        (0..o.target.slices).all(|s| {
            owned().any(|c| {
                c.slice == s
                    && c.role == r.name
                    && c.revision == o.target.revision
                    && c.replicas == r.replicas
                    && c.ready_replicas == r.replicas
                    && c.status_replicas == r.replicas
            })
        })
    }) && !owned().any(|c| c.revision != o.target.revision || c.slice >= o.target.slices)
}

/// Why the set is `Degraded`, if it is: a slice that cannot go on, or a
/// rollout past its progress deadline.
fn degraded(o: &Observation<'_>, last_progress: Option<&Time>) -> Option<(&'static str, String)> {
    let problem = o.decision.and_then(|d| {
        d.slices.iter().find_map(|s| match &s.state {
            SliceState::Blocked { name } => Some((
                "ChildNameTaken",
                format!("slice {}: LeaderWorkerSet {name} exists but is not controlled by this set; delete or rename it", s.slice),
            )),
            SliceState::Stuck => Some((
                "NoSafeStep",
                format!("slice {}: the planner found no step that keeps every role within maxSurge/maxUnavailable", s.slice),
            )),
            _ => None,
        })
    });
    problem.or_else(|| {
        let (limit, since) = (o.progress_deadline_seconds?, last_progress?);
        let held = o.now.0.as_second() - since.0.as_second();
        (held > i64::from(limit)).then(|| {
            (
                "ProgressDeadlineExceeded",
                format!("no rollout progress for {held}s, over progressDeadlineSeconds ({limit}s)"),
            )
        })
    })
}

fn rollout_status(o: &Observation<'_>, d: &Decision) -> RolloutStatus {
    let mut roles: Vec<RoleRollout> = Vec::new();
    for p in d.slices.iter().flat_map(|s| &s.roles) {
        match roles.iter_mut().find(|r| r.name == p.name) {
            Some(r) => {
                r.old += p.old;
                r.new += p.new;
                r.target += p.target;
            }
            None => roles.push(RoleRollout {
                name: p.name.clone(),
                old: p.old,
                new: p.new,
                target: p.target,
            }),
        }
    }
    RolloutStatus {
        step: d.slices.iter().map(|s| s.position.0).min().unwrap_or(0),
        total_steps: d.slices.iter().map(|s| s.position.1).max().unwrap_or(0),
        roles,
        held_by: o.hold.map(|h| h.gate.clone()),
        hold_reason: o.hold.map(|h| h.reason.clone()),
        last_progress_time: None,
    }
}

/// A condition whose `lastTransitionTime` only moves when its status flips.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// How long until a rollout that makes no progress from now on passes its
/// `progressDeadlineSeconds` (`None`: no deadline, not rolling, or already past),
/// so the controller can look again just then.
pub fn until_progress_deadline(
    status: &DisaggregatedSetStatus,
    deadline_seconds: Option<i32>,
    now: &Time,
) -> Option<std::time::Duration> {
    let since = status.rollout.as_ref()?.last_progress_time.as_ref()?;
    // `compute` reports a stall once more than `deadline` whole seconds have passed.
    let due_ms = (since.0.as_second() + i64::from(deadline_seconds?) + 1) * 1000;
    let left = due_ms - now.0.as_millisecond();
    (left > 0).then(|| std::time::Duration::from_millis(left as u64))
}
