//! Turning the executor's decision into writes: gates before each step,
//! creates rendered through the patch hooks.

use super::*;
use crate::bindings::GateOutcome;
use crate::signals::Evaluator;

/// `(status.replicas, readyReplicas)` over each role's children.
pub(super) fn observed_replicas(
    target: &Target,
    children: &[Child],
) -> BTreeMap<String, (i32, i32)> {
    target
        .roles
        .iter()
        .map(|r| {
            let of = children.iter().filter(|c| c.owned && c.role == r.name);
            let observed = of.clone().map(|c| c.status_replicas).sum();
            let ready = of.map(|c| c.ready_replicas).sum();
            (r.name.clone(), (observed, ready))
        })
        .collect()
}

/// What the gates said about the steps of a decision.
pub(super) struct Gated {
    /// The first hold (or abort request, which holds this pass), with when to ask again.
    pub(super) hold: Option<(Hold, Duration)>,
    /// A gate that asked for the rollout to be aborted: (gate, reason).
    pub(super) abort: Option<(String, String)>,
    pub(super) failures: Vec<Failure>,
}

/// Asks the gates about every slice about to take a rollout step; the first
/// hold (or abort request) wins, with when to ask again.
pub(super) fn gates(
    set: &DisaggregatedSet,
    bound: &[Bound],
    decision: &Decision,
    children: &[Child],
    rev: &str,
    now: Timestamp,
    evaluator: &Evaluator<'_>,
) -> Gated {
    let mut failures = Vec::new();
    let since = set
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .and_then(|r| r.last_progress_time.as_ref())
        .map(|t| t.0);
    for slice in decision
        .slices
        .iter()
        .filter(|s| s.state == SliceState::Stepping && s.aborted_to.is_none())
    {
        let ready = |role: &str| {
            children
                .iter()
                .filter(|c| {
                    c.owned && c.slice == slice.slice && c.role == role && c.revision == rev
                })
                .all(Child::is_ready)
        };
        // The revision the slice rolls away from: its oldest other one.
        let old_revision = children
            .iter()
            .filter(|c| c.owned && c.slice == slice.slice && c.revision != rev)
            .min_by_key(|c| (c.created, c.revision.clone()))
            .map_or_else(|| rev.to_string(), |c| c.revision.clone());
        let request = GateRequest {
            set_name: set.name_any(),
            namespace: set.namespace().unwrap_or_default(),
            labels: set.labels().clone().into_iter().collect(),
            annotations: set.annotations().clone().into_iter().collect(),
            revision: rev.to_string(),
            old_revision,
            slice: slice.slice.max(0) as u32,
            step: (slice.position.0 + 1).max(0) as u32,
            total_steps: slice.position.1.max(0) as u32,
            roles: slice
                .roles
                .iter()
                .map(|p| RoleStep {
                    name: p.name.clone(),
                    old_now: p.old,
                    old_next: p.next_old,
                    new_now: p.new,
                    new_next: p.next_new,
                    target: p.target,
                    ready: ready(&p.name),
                })
                .collect(),
            held_for_ms: since
                .map(|t| (now.as_millisecond() - t.as_millisecond()).max(0) as u64)
                .unwrap_or(0),
            now_ms: now.as_millisecond().max(0) as u64,
            config: String::new(),
            signals: Vec::new(),
        };
        let (outcome, gate_failures) = bindings::gate(bound, &request, evaluator);
        failures.extend(gate_failures);
        match outcome {
            Some(GateOutcome::Hold {
                gate,
                reason,
                recheck_ms,
            }) => {
                let hold = Hold { gate, reason };
                return Gated {
                    hold: Some((hold, Duration::from_millis(recheck_ms))),
                    abort: None,
                    failures,
                };
            }
            Some(GateOutcome::Abort { gate, reason }) => {
                // Held until the abort annotation this asks for is written and read back.
                let hold = Hold {
                    gate: gate.clone(),
                    reason: format!("asks to abort the rollout: {reason}"),
                };
                return Gated {
                    hold: Some((hold, Duration::from_secs(1))),
                    abort: Some((gate, reason)),
                    failures,
                };
            }
            None => {}
        }
    }
    Gated {
        hold: None,
        abort: None,
        failures,
    }
}

/// The child writes of a decision, children to create rendered through the
/// patch hooks. While a gate holds, the stepping slices' writes wait.
pub(super) struct ChildWrites {
    pub(super) writes: Vec<Planned>,
    /// Patch hooks that failed (a child a Fail plugin could not patch is not created).
    pub(super) failures: Vec<Failure>,
}

pub(super) fn child_writes(
    set: &DisaggregatedSet,
    set_json: &str,
    bound: &[Bound],
    decision: &Decision,
    children: &[Child],
    rev: &str,
    held: bool,
) -> ChildWrites {
    let scope_of: BTreeMap<&str, Scope> = children
        .iter()
        .map(|c| {
            let scope = Scope {
                role: c.role.clone(),
                slice: c.slice,
            };
            (c.name.as_str(), scope)
        })
        .collect();
    let slices = decision
        .slices
        .iter()
        .filter(|s| !(held && s.state == SliceState::Stepping && s.aborted_to.is_none()));
    let actions = decision
        .removed_slices
        .iter()
        .chain(slices.flat_map(|s| &s.actions));
    let mut out = ChildWrites {
        writes: Vec::new(),
        failures: Vec::new(),
    };
    for action in actions {
        let (write, scope) = match action {
            Action::Create {
                slice,
                role,
                replicas,
            } => {
                let Some(spec) = set.spec.roles.iter().find(|r| &r.name == role) else {
                    continue;
                };
                let child = render_child(set, spec, *slice, rev, *replicas);
                let (result, skipped) = bindings::patch(set_json, bound, role, *slice, rev, child);
                out.failures.extend(skipped);
                let scope = Scope {
                    role: role.clone(),
                    slice: *slice,
                };
                match result {
                    Ok(lws) => (Write::CreateChild(Box::new(lws)), Some(scope)),
                    Err(f) => {
                        out.failures.push(f);
                        continue;
                    }
                }
            }
            Action::Scale { name, replicas } => (
                Write::ScaleChild {
                    name: name.clone(),
                    replicas: *replicas,
                },
                scope_of.get(name.as_str()).cloned(),
            ),
            Action::Mark {
                name,
                mark,
                replicas,
            } => (
                Write::MarkChild {
                    name: name.clone(),
                    mark: *mark,
                    replicas: *replicas,
                },
                scope_of.get(name.as_str()).cloned(),
            ),
            Action::Delete { name } => (
                Write::DeleteChild { name: name.clone() },
                scope_of.get(name.as_str()).cloned(),
            ),
        };
        out.writes.push(Planned { write, scope });
    }
    out
}
