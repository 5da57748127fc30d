//! Drives `execute::decide` against an in-memory list of children with
//! instant readiness: what a rollout from one spec to another looks like,
//! step by step. Used by `disagg render --revision-from`, by tests, and by the
//! benchmark. Pure: no clock, no client.

use super::execute::{Action, Child, RoleProgress, SliceState, Target, decide};
use super::render::child_name;

/// One observed state of a slice during a simulated rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Per role, target roles in spec order then removed roles.
    pub roles: Vec<RoleProgress>,
    /// Where the rollout stands, `(k, T)`: step k of T done, as status shows it.
    pub position: (i32, i32),
}

/// The steady children of `target` in every slice, all ready.
pub fn steady_children(target: &Target, created: i64) -> Vec<Child> {
    (0..target.slices)
        .flat_map(|slice| {
            target.roles.iter().map(move |r| Child {
                name: child_name(&target.set_name, slice, &target.revision, &r.name),
                slice,
                revision: target.revision.clone(),
                role: r.name.clone(),
                replicas: r.replicas,
                ready_replicas: r.replicas,
                status_replicas: r.replicas,
                initial_replicas: None,
                rollout_target: None,
                created,
                owned: true,
                fingerprint: None,
            })
        })
        .collect()
}

/// Applies actions to `children` as an API server plus an instantly-ready
/// LWS controller would. `created` stamps new children.
pub fn apply(target: &Target, children: &mut Vec<Child>, actions: &[Action], created: i64) {
    for action in actions {
        match action {
            Action::Create {
                slice,
                role,
                replicas,
            } => children.push(Child {
                name: child_name(&target.set_name, *slice, &target.revision, role),
                slice: *slice,
                revision: target.revision.clone(),
                role: role.clone(),
                replicas: *replicas,
                ready_replicas: *replicas,
                status_replicas: *replicas,
                initial_replicas: None,
                rollout_target: None,
                created,
                owned: true,
                fingerprint: None,
            }),
            Action::Scale { name, replicas } => {
                if let Some(c) = children.iter_mut().find(|c| c.name == *name) {
                    c.replicas = *replicas;
                    c.ready_replicas = *replicas;
                    c.status_replicas = *replicas;
                }
            }
            Action::Mark {
                name,
                mark,
                replicas,
            } => {
                if let Some(c) = children.iter_mut().find(|c| c.name == *name) {
                    c.initial_replicas = mark.map(|m| m.initial_replicas);
                    c.rollout_target = mark.map(|m| m.target);
                    if let Some(r) = replicas {
                        c.replicas = *r;
                        c.ready_replicas = *r;
                        c.status_replicas = *r;
                    }
                }
            }
            Action::Delete { name } => children.retain(|c| c.name != *name),
        }
    }
}

/// Rolls `children` forward to `target` until nothing is left to do, and
/// returns slice 0's per-role numbers at the start and after every rollout
/// step (slices are independent copies and move alike). Stops after
/// `max_passes` reconciles, which only a bug reaches.
pub fn rollout(target: &Target, children: &mut Vec<Child>, max_passes: usize) -> Vec<Snapshot> {
    let mut snapshots = Vec::new();
    for pass in 0..max_passes {
        let decision = decide(target, children);
        if pass == 0
            && let Some(s) = decision.slices.first()
        {
            snapshots.push(Snapshot {
                roles: s.roles.clone(),
                position: s.position,
            });
        }
        let actions: Vec<Action> = decision.actions().cloned().collect();
        if actions.is_empty() {
            break;
        }
        apply(target, children, &actions, pass as i64 + 1);
        if let Some(s) = decision.slices.first()
            && matches!(s.state, SliceState::Stepping | SliceState::Steady)
            && !s.actions.is_empty()
        {
            let after = decide(target, children);
            if let Some(s) = after.slices.first()
                && snapshots
                    .last()
                    .is_none_or(|last: &Snapshot| !same_numbers(&last.roles, &s.roles))
            {
                // Done: every step of the schedule is taken.
                let total = snapshots.iter().map(|x| x.position.1).max().unwrap_or(0);
                let position = match s.state {
                    SliceState::Steady => (total, total),
                    _ => s.position,
                };
                snapshots.push(Snapshot {
                    roles: s.roles.clone(),
                    position,
                });
            }
        }
    }
    // The first state is recorded before the rollout knows its schedule.
    let total = snapshots.iter().map(|x| x.position.1).max().unwrap_or(0);
    for s in &mut snapshots {
        s.position.1 = total;
        s.position.0 = s.position.0.min(total);
    }
    snapshots
}

/// Same old/new per role (bookkeeping-only passes change nothing visible).
fn same_numbers(a: &[RoleProgress], b: &[RoleProgress]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.name == y.name && x.old == y.old && x.new == y.new)
}
