//! Tests of the pure core with plain values.
mod decide;
mod execute;
mod patch;
mod planner_props;
mod render;
mod revision;
mod rollout_ops;
mod status;

use super::execute::{Child, Target, TargetRole};
use super::plan::Budget;
use super::render::child_name;

/// A target with `(name, replicas)` roles and the default budget.
pub fn target(revision: &str, roles: &[(&str, i32)]) -> Target {
    Target {
        set_name: "s".into(),
        revision: revision.into(),
        slices: 1,
        abort: false,
        roles: roles
            .iter()
            .map(|(n, r)| TargetRole {
                name: n.to_string(),
                replicas: *r,
                budget: Budget::DEFAULT,
                start_after: Vec::new(),
            })
            .collect(),
    }
}

/// Marks every old child (one with `initial-replicas`) as planned for `t`'s
/// targets, as the rollout's bookkeeping would have.
pub fn planned_for(t: &Target, mut children: Vec<Child>) -> Vec<Child> {
    for c in &mut children {
        if c.initial_replicas.is_some() {
            c.rollout_target = Some(
                t.roles
                    .iter()
                    .find(|r| r.name == c.role)
                    .map_or(0, |r| r.replicas),
            );
        }
    }
    children
}

/// An owned, ready child of slice 0.
pub fn child(
    revision: &str,
    role: &str,
    replicas: i32,
    initial: Option<i32>,
    created: i64,
) -> Child {
    Child {
        name: child_name("s", 0, revision, role),
        slice: 0,
        revision: revision.into(),
        role: role.into(),
        replicas,
        ready_replicas: replicas,
        status_replicas: replicas,
        initial_replicas: initial,
        rollout_target: None,
        created,
        owned: true,
        fingerprint: None,
    }
}
