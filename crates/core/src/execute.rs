//! Executor decisions (`docs/api.md`), as pure functions: given the target
//! revision and the children that exist, which API writes come next.
//!
//! Per slice, in order:
//! 1. children outside the set's slices, and old revisions whose roles are all
//!    at 0 replicas, are deleted;
//! 2. with no old revision left the slice is steady: create missing children,
//!    scale the others to their targets;
//! 3. otherwise a rollout is under way: record `initial-replicas` on old
//!    children when a rollout (re)starts, wait until every new child is ready,
//!    ask the planner for the next step, and translate it into writes: new
//!    children scale up first, then old ones scale down, newest old revision
//!    first — except that a role whose scale-up would exceed target + maxSurge
//!    before its drain lands (a forced drain) drains first, so that every state
//!    between two writes keeps the surge bound (docs/planner.md, "The executor
//!    around it").
//!
//! The controller asks plugin gates about each slice's `step` before it applies
//! that slice's actions.

use super::plan::{self, Budget, RoleState, Step, next_step};
use super::render::{child_name, legacy_child_name};
use disagg_api::keys;
use disagg_api::lws::LeaderWorkerSet;
use std::collections::{BTreeMap, BTreeSet};

/// A child LeaderWorkerSet as the executor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub name: String,
    pub slice: i32,
    pub revision: String,
    pub role: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.replicas`.
    pub status_replicas: i32,
    /// The `initial-replicas` annotation.
    pub initial_replicas: Option<i32>,
    /// The `rollout-target` annotation: the role's target the rollout was
    /// planned for, on old children.
    pub rollout_target: Option<i32>,
    /// Creation time in seconds since the epoch; orders old revisions.
    pub created: i64,
    /// Whether this set is its controller. Others are never touched.
    pub owned: bool,
    /// Its template's fingerprint (`adopt::fingerprint`), when known.
    pub fingerprint: Option<String>,
}

impl Child {
    /// Reads a child from an LWS. `None` when it lacks our labels.
    pub fn from_lws(lws: &LeaderWorkerSet, set_uid: &str) -> Option<Child> {
        let labels = lws.metadata.labels.as_ref()?;
        let status = lws.status.clone().unwrap_or_default();
        let owned = super::render::is_controlled_by(&lws.metadata, set_uid);
        let annotation = |key: &str| {
            lws.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .and_then(|v| v.parse().ok())
                .map(bounded)
        };
        Some(Child {
            name: lws.metadata.name.clone()?,
            // Upstream's children from before slices have no slice label: slice 0.
            slice: match labels.get(keys::SLICE) {
                Some(s) if !s.is_empty() => s.parse().ok()?,
                _ => 0,
            },
            revision: labels.get(keys::REVISION)?.clone(),
            role: labels.get(keys::ROLE)?.clone(),
            // Observed numbers are clamped so no sum over them can overflow,
            // whatever a user or another controller wrote.
            replicas: bounded(lws.spec.replicas),
            ready_replicas: bounded(status.ready_replicas),
            status_replicas: bounded(status.replicas),
            initial_replicas: annotation(keys::INITIAL_REPLICAS),
            rollout_target: annotation(keys::ROLLOUT_TARGET),
            created: lws
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0),
            owned,
            fingerprint: if lws.spec.leader_worker_template.worker_template.0.is_empty() {
                // Read from the operator's cache, which keeps only the fingerprint.
                lws.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(keys::TEMPLATE_FINGERPRINT))
                    .cloned()
            } else {
                Some(super::adopt::fingerprint(&lws.spec.leader_worker_template))
            },
        })
    }

    /// Its rollout marks, when it carries both.
    pub fn mark(&self) -> Option<Mark> {
        Some(Mark {
            initial_replicas: self.initial_replicas?,
            target: self.rollout_target?,
        })
    }

    /// Every group of the child is ready at its current size.
    pub fn is_ready(&self) -> bool {
        self.ready_replicas == self.replicas
    }
}

/// What the set asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub set_name: String,
    pub revision: String,
    pub slices: i32,
    /// In spec order.
    pub roles: Vec<TargetRole>,
    /// An abort is requested: each slice returns to its stable revision.
    pub abort: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRole {
    pub name: String,
    /// Replicas per slice.
    pub replicas: i32,
    pub budget: Budget,
    /// Roles whose children of the same revision must be ready before this
    /// role's child is created (`startAfter`).
    pub start_after: Vec<String>,
}

/// One API write. `Create` leaves rendering to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Create {
        slice: i32,
        role: String,
        replicas: i32,
    },
    Scale {
        name: String,
        replicas: i32,
    },
    /// Set (`Some`) or remove (`None`) a child's rollout marks, and with
    /// `replicas` scale it in the same write (a rescale: the replicas and the
    /// marks that explain them must never disagree).
    Mark {
        name: String,
        mark: Option<Mark>,
        replicas: Option<i32>,
    },
    Delete {
        name: String,
    },
}

/// The rollout bookkeeping an old child carries: its replicas when the
/// rollout began (`initial-replicas`) and its role's target then
/// (`rollout-target`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub initial_replicas: i32,
    pub target: i32,
}

/// Where a slice stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SliceState {
    /// No old revision: children are created and scaled directly.
    Steady,
    /// A rollout began (or gained an old revision): recording `initial-replicas`.
    RecordingRollout,
    /// A rollout waits for these new children to become ready.
    WaitingForReady { not_ready: Vec<String> },
    /// A rollout takes a step (the slice's actions).
    Stepping,
    /// A rollout follows a replica change or recreates a lost new child:
    /// writes no gate holds (`docs/planner.md`, "Scaling during a rollout").
    Adjusting,
    /// The planner found no safe step.
    Stuck,
    /// A child we need has a name taken by an object this set does not control.
    Blocked { name: String },
}

/// Per-role numbers of a slice, for status and for gates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleProgress {
    pub name: String,
    pub initial_old: i32,
    pub old: i32,
    pub new: i32,
    pub target: i32,
    /// After this pass's actions (equal to now unless the slice is stepping).
    pub next_old: i32,
    pub next_new: i32,
}

/// The decision for one slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePlan {
    pub slice: i32,
    pub state: SliceState,
    pub roles: Vec<RoleProgress>,
    /// `(k, T)` on the planner's schedule while rolling (see `plan::position`).
    pub position: (i32, i32),
    /// In the order they must be applied.
    pub actions: Vec<Action>,
    /// While an abort rolls the slice back: the revision it returns to.
    pub aborted_to: Option<String>,
}

impl SlicePlan {
    /// Whether this slice is in a rollout (an old revision still exists).
    pub fn rolling(&self) -> bool {
        !matches!(self.state, SliceState::Steady | SliceState::Blocked { .. })
            || self.roles.iter().any(|r| r.old > 0)
    }
}

/// The decision for a whole set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Deletions of children in slices the set no longer has.
    pub removed_slices: Vec<Action>,
    pub slices: Vec<SlicePlan>,
}

impl Decision {
    /// Every action, in order.
    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.removed_slices
            .iter()
            .chain(self.slices.iter().flat_map(|s| &s.actions))
    }
}

/// Decides the next writes for a set.
pub fn decide(target: &Target, children: &[Child]) -> Decision {
    let mut removed_slices = Vec::new();
    let mut by_slice: BTreeMap<i32, Vec<&Child>> = BTreeMap::new();
    for c in children {
        if c.owned && (c.slice < 0 || c.slice >= target.slices) {
            removed_slices.push(Action::Delete {
                name: c.name.clone(),
            });
        } else {
            by_slice.entry(c.slice).or_default().push(c);
        }
    }
    let slices = (0..target.slices.max(0))
        .map(|s| {
            decide_slice(
                target,
                s,
                by_slice.get(&s).map(Vec::as_slice).unwrap_or(&[]),
            )
        })
        .collect();
    Decision {
        removed_slices,
        slices,
    }
}

/// An old revision of one slice.
struct OldRevision<'a> {
    revision: &'a str,
    created: i64,
    children: Vec<&'a Child>,
}

fn decide_slice(target: &Target, slice: i32, children: &[&Child]) -> SlicePlan {
    // An abort is a rollout towards the slice's stable revision, by the same rules.
    let stable = target
        .abort
        .then(|| abort_target(target, children))
        .flatten();
    let target = stable.as_ref().unwrap_or(target);
    let aborted_to = stable.as_ref().map(|t| t.revision.clone());
    let Sorted {
        foreign,
        new_children,
        old,
        mut actions,
    } = sort(target, children);
    let waiting = waiting_to_start(target, &new_children);
    let plan = |state, roles, position, mut actions: Vec<Action>| {
        if aborted_to.is_some() {
            // The stable revision's template is not in the spec: nothing of it can be created.
            actions.retain(|a| !matches!(a, Action::Create { .. }));
        }
        // A role that starts after others is created once they are ready.
        actions.retain(|a| !matches!(a, Action::Create { role, .. } if waiting.contains(role)));
        SlicePlan {
            slice,
            state,
            roles,
            position,
            actions,
            aborted_to: aborted_to.clone(),
        }
    };

    let name_of = |role: &str| child_name(&target.set_name, slice, &target.revision, role);
    if let Some(name) = target
        .roles
        .iter()
        .map(|r| name_of(&r.name))
        .find(|n| foreign.contains(n.as_str()))
    {
        let roles = progress_now(target, &new_children, &old);
        return plan(SliceState::Blocked { name }, roles, (0, 0), actions);
    }

    if old.is_empty() {
        actions.extend(steady_actions(target, slice, &new_children));
        let mut roles = progress_now(target, &new_children, &old);
        for p in &mut roles {
            p.next_new = p.target;
        }
        return plan(SliceState::Steady, roles, (0, 0), actions);
    }

    // A rollout. First make sure it knows where it began.
    let bookkeeping = rollout_bookkeeping(target, &old, &new_children);
    if !bookkeeping.is_empty() {
        actions.extend(bookkeeping);
        let roles = progress_now(target, &new_children, &old);
        return plan(SliceState::RecordingRollout, roles, (0, 0), actions);
    }

    let mut roles = progress_now(target, &new_children, &old);
    let inputs = planner_inputs(target, &roles);
    let position = plan::position(&inputs);
    // Replica changes and lost new children are followed at once, whatever
    // the rollout's state: no gate or readiness waits for them.
    let adjustments = adjust_actions(slice, target, &roles, &inputs, &new_children, &old);
    if !adjustments.is_empty() {
        actions.extend(adjustments);
        return plan(SliceState::Adjusting, roles, position, actions);
    }
    let not_ready: Vec<String> = new_children
        .values()
        .filter(|c| !c.is_ready())
        .map(|c| c.name.clone())
        .collect();
    if !not_ready.is_empty() {
        return plan(
            SliceState::WaitingForReady { not_ready },
            roles,
            position,
            actions,
        );
    }

    let (next_old, next_new) = match next_step(&inputs) {
        Step::Next { old, new } => (old, new),
        // Done with old replicas left can only mean nothing was planned for
        // them (no old replicas at the start): drain them.
        Step::Done => (vec![0; roles.len()], roles.iter().map(|p| p.new).collect()),
        Step::Stuck => return plan(SliceState::Stuck, roles, position, actions),
    };
    actions.extend(step_actions(
        slice,
        &mut roles,
        &inputs,
        &new_children,
        &old,
        &next_old,
        &next_new,
    ));
    plan(SliceState::Stepping, roles, position, actions)
}

/// Roles of the target whose `startAfter` roles do not all have a ready
/// child of the target revision in this slice yet (a role whose target is
/// 0 counts as ready: it has nothing to wait for).
fn waiting_to_start(target: &Target, new_children: &BTreeMap<&str, &Child>) -> BTreeSet<String> {
    let ready = |role: &str| {
        target
            .roles
            .iter()
            .find(|r| r.name == role)
            .is_none_or(|r| r.replicas == 0)
            || new_children
                .get(role)
                .is_some_and(|c| c.replicas > 0 && c.is_ready())
    };
    target
        .roles
        .iter()
        .filter(|r| r.start_after.iter().any(|after| !ready(after)))
        .map(|r| r.name.clone())
        .collect()
}

/// What an aborted slice returns to: its oldest revision other than the
/// spec's (the one the rollout started from), at the replicas the set asks
/// for now (as a Deployment's rollback, and Argo Rollouts' abort, return the
/// stable revision to `spec.replicas`). Only roles that revision has children
/// for: roles the aborted revision added drain with it. `None` when the slice
/// has no other revision left: there is nothing to return to.
fn abort_target(target: &Target, children: &[&Child]) -> Option<Target> {
    let ours = children
        .iter()
        .filter(|c| c.owned && c.revision != target.revision);
    let stable = ours
        .clone()
        .min_by(|a, b| a.created.cmp(&b.created).then(a.revision.cmp(&b.revision)))?
        .revision
        .clone();
    let mut roles: Vec<TargetRole> = Vec::new();
    for c in ours.filter(|c| c.revision == stable) {
        if roles.iter().any(|r| r.name == c.role) {
            continue;
        }
        roles.push(match target.roles.iter().find(|r| r.name == c.role) {
            Some(r) => r.clone(),
            // A role the spec removed comes back at the size it had.
            None => TargetRole {
                name: c.role.clone(),
                replicas: c.initial_replicas.unwrap_or(c.replicas),
                budget: Budget::DEFAULT,
                start_after: Vec::new(),
            },
        });
    }
    // Spec order, then the rest by name.
    let order = |name: &str| {
        target
            .roles
            .iter()
            .position(|r| r.name == name)
            .unwrap_or(usize::MAX)
    };
    roles.sort_by(|a, b| {
        order(&a.name)
            .cmp(&order(&b.name))
            .then(a.name.cmp(&b.name))
    });
    Some(Target {
        revision: stable,
        roles,
        abort: false,
        ..target.clone()
    })
}

/// A slice's children, sorted out.
struct Sorted<'a> {
    /// Names held by children this set does not control.
    foreign: BTreeSet<&'a str>,
    /// The target revision's children, by role.
    new_children: BTreeMap<&'a str, &'a Child>,
    /// Old revisions with replicas left, newest first (it is drained first).
    old: Vec<OldRevision<'a>>,
    /// Deletions: old revisions at 0, children of the target revision for no role.
    actions: Vec<Action>,
}

fn sort<'a>(target: &Target, children: &[&'a Child]) -> Sorted<'a> {
    let mut actions = Vec::new();
    let foreign: BTreeSet<&str> = children
        .iter()
        .filter(|c| !c.owned)
        .map(|c| c.name.as_str())
        .collect();
    // Children whose name does not match their labels are not ours to reason
    // about; upstream's slice-0 children from before slices are named without
    // the slice, and adopted as slice 0 as upstream does.
    let owned = children.iter().copied().filter(|c| {
        c.owned
            && (c.name == child_name(&target.set_name, c.slice, &c.revision, &c.role)
                || (c.slice == 0
                    && c.name == legacy_child_name(&target.set_name, &c.revision, &c.role)))
    });
    let target_roles: BTreeSet<&str> = target.roles.iter().map(|r| r.name.as_str()).collect();
    let mut new_children: BTreeMap<&str, &Child> = BTreeMap::new();
    let mut old_by_rev: BTreeMap<&str, Vec<&Child>> = BTreeMap::new();
    for c in owned {
        if c.revision == target.revision {
            if target_roles.contains(c.role.as_str()) {
                new_children.insert(&c.role, c);
            } else {
                // Cannot happen with honest labels (role names are hashed); clean it up.
                actions.push(Action::Delete {
                    name: c.name.clone(),
                });
            }
        } else {
            old_by_rev.entry(&c.revision).or_default().push(c);
        }
    }
    // Old revisions whose roles are all at 0 are done with: delete them.
    let mut old: Vec<OldRevision> = Vec::new();
    for (revision, kids) in old_by_rev {
        if kids.iter().all(|c| c.replicas == 0) {
            actions.extend(kids.iter().map(|c| Action::Delete {
                name: c.name.clone(),
            }));
        } else {
            let created = kids.iter().map(|c| c.created).max().unwrap_or(0);
            old.push(OldRevision {
                revision,
                created,
                children: kids,
            });
        }
    }
    old.sort_by(|a, b| b.created.cmp(&a.created).then(b.revision.cmp(a.revision)));
    Sorted {
        foreign,
        new_children,
        old,
        actions,
    }
}

/// With no old revision: missing children are created, the others scaled
/// to their targets directly, and a leftover `initial-replicas` removed.
fn steady_actions(
    target: &Target,
    slice: i32,
    new_children: &BTreeMap<&str, &Child>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for r in &target.roles {
        match new_children.get(r.name.as_str()) {
            None => actions.push(Action::Create {
                slice,
                role: r.name.clone(),
                replicas: r.replicas,
            }),
            Some(c) => {
                if c.initial_replicas.is_some() || c.rollout_target.is_some() {
                    actions.push(Action::Mark {
                        name: c.name.clone(),
                        mark: None,
                        replicas: None,
                    });
                }
                if c.replicas != r.replicas {
                    actions.push(Action::Scale {
                        name: c.name.clone(),
                        replicas: r.replicas,
                    });
                }
            }
        }
    }
    actions
}

/// The planner's view of each role.
fn planner_inputs(target: &Target, roles: &[RoleProgress]) -> Vec<RoleState> {
    roles
        .iter()
        .map(|p| {
            let budget = target
                .roles
                .iter()
                .find(|r| r.name == p.name)
                .map_or(Budget::DEFAULT, |r| r.budget);
            RoleState {
                initial_old: p.initial_old,
                current_old: p.old,
                current_new: p.new,
                target: p.target,
                max_surge: budget.max_surge,
                max_unavailable: budget.max_unavailable,
            }
        })
        .collect()
}

/// The writes of one planner step, in the order that keeps the bounds, with
/// `roles`' next numbers filled in.
///
/// New side first (scale-up before scale-down keeps capacity), except for a
/// role whose scale-up would, before its drain lands, exceed target +
/// maxSurge (a forced drain, rule 6): its drain goes first, so that every
/// state the API shows between two writes stays within the surge bound.
fn step_actions(
    slice: i32,
    roles: &mut [RoleProgress],
    inputs: &[RoleState],
    new_children: &BTreeMap<&str, &Child>,
    old: &[OldRevision<'_>],
    next_old: &[i32],
    next_new: &[i32],
) -> Vec<Action> {
    let drain_first: Vec<String> = roles
        .iter()
        .zip(inputs)
        .zip(next_new)
        .filter(|((p, i), n)| **n > p.new && p.old + **n > i.target + i.max_surge)
        .map(|((p, _), _)| p.name.clone())
        .collect();
    let mut scale_ups = Vec::new();
    for (p, &n) in roles.iter_mut().zip(next_new) {
        p.next_new = n;
        if n == p.new {
            continue;
        }
        match new_children.get(p.name.as_str()) {
            Some(c) => scale_ups.push(Action::Scale {
                name: c.name.clone(),
                replicas: n,
            }),
            None => scale_ups.push(Action::Create {
                slice,
                role: p.name.clone(),
                replicas: n,
            }),
        }
    }
    let drains = drain_newest_first(old, roles, next_old);
    for p in roles.iter_mut() {
        p.next_old = drains
            .iter()
            .filter(|(c, _)| c.role == p.name)
            .map(|(_, r)| *r)
            .sum();
    }
    // An old revision this step drains completely is deleted by this step,
    // not scaled to 0 and deleted by the next reconcile (as `sort` deletes a
    // revision found at 0): the same end state, with one write and one
    // round trip fewer per child.
    let gone: BTreeSet<&str> = old
        .iter()
        .filter(|o| {
            o.children
                .iter()
                .all(|c| drains.iter().any(|(d, r)| d.name == c.name && *r == 0))
        })
        .map(|o| o.revision)
        .collect();
    let (early, late): (Vec<_>, Vec<_>) = drains
        .into_iter()
        .filter(|(c, r)| *r != c.replicas || gone.contains(c.revision.as_str()))
        .map(|(c, r)| {
            let name = c.name.clone();
            let action = if gone.contains(c.revision.as_str()) {
                Action::Delete { name }
            } else {
                Action::Scale { name, replicas: r }
            };
            (drain_first.contains(&c.role), action)
        })
        .partition(|(early, _)| *early);
    let mut actions: Vec<Action> = early.into_iter().map(|(_, a)| a).collect();
    actions.extend(scale_ups);
    actions.extend(late.into_iter().map(|(_, a)| a));
    actions
}

/// When a rollout starts, or an old revision joins one (A→B→C), every old
/// child records its current replicas as `initial-replicas` and its role's
/// target as `rollout-target`: the planner measures drain progress from the
/// first, a replica change is recognised by the second. A rollout whose old
/// children have `initial-replicas` but no `rollout-target` (begun by
/// upstream's controller or an earlier build) keeps its start and gets the
/// current target. New children carry no marks (after a rollback, the
/// revision we return to may still have them).
fn rollout_bookkeeping(
    target: &Target,
    old: &[OldRevision<'_>],
    new_children: &BTreeMap<&str, &Child>,
) -> Vec<Action> {
    let target_of = |role: &str| {
        target
            .roles
            .iter()
            .find(|r| r.name == role)
            .map_or(0, |r| r.replicas)
    };
    let mut actions = Vec::new();
    let olds = old.iter().flat_map(|r| &r.children);
    let restart = olds.clone().any(|c| c.initial_replicas.is_none());
    for c in olds {
        let want = Mark {
            initial_replicas: match c.initial_replicas {
                Some(initial) if !restart => initial,
                _ => c.replicas,
            },
            target: match c.rollout_target {
                Some(t) if !restart => t,
                _ => target_of(&c.role),
            },
        };
        if c.mark() != Some(want) {
            actions.push(Action::Mark {
                name: c.name.clone(),
                mark: Some(want),
                replicas: None,
            });
        }
    }
    for c in new_children.values() {
        if c.initial_replicas.is_some() || c.rollout_target.is_some() {
            actions.push(Action::Mark {
                name: c.name.clone(),
                mark: None,
                replicas: None,
            });
        }
    }
    actions
}

/// Scaling during a rollout (`docs/planner.md`): a role whose target is not
/// the one its rollout was planned for (`rollout-target`) is rescaled at
/// once, both revisions in proportion, so the rollout keeps its position;
/// and a new child lost mid-rollout is recreated where the rollout had it.
fn adjust_actions(
    slice: i32,
    target: &Target,
    roles: &[RoleProgress],
    inputs: &[RoleState],
    new_children: &BTreeMap<&str, &Child>,
    old: &[OldRevision<'_>],
) -> Vec<Action> {
    let mut actions = Vec::new();
    for (p, input) in roles.iter().zip(inputs) {
        let olds: Vec<&Child> = old
            .iter()
            .flat_map(|r| &r.children)
            .filter(|c| c.role == p.name)
            .copied()
            .collect();
        actions.extend(rescale(p, input, &olds, new_children.get(p.name.as_str())));
    }
    if !actions.is_empty() {
        return actions;
    }
    // A step that creates new children creates every role's (each role with
    // a target gets at least one group at step 1), so a role without one while
    // another has one has lost it. With none at all, the next step creates
    // them, as a gate allows.
    if new_children.is_empty() {
        return actions;
    }
    for (i, p) in roles.iter().enumerate() {
        let in_spec = target.roles.iter().any(|r| r.name == p.name);
        if in_spec && p.target > 0 && !new_children.contains_key(p.name.as_str()) {
            actions.push(Action::Create {
                slice,
                role: p.name.clone(),
                replicas: plan::restore_new(inputs, i),
            });
        }
    }
    actions
}

/// The rescale of one role whose target changed from `t` (its old
/// children's `rollout-target`) to `t'`: every count — old, new and
/// `initial-replicas` — is multiplied by `t'/t`, then the role's total is
/// held inside `[t' − maxUnavailable, t' + maxSurge]` (old side first) and
/// no old child that had replicas is left with none (no orphans). The old
/// children's replicas and marks change in one write each, before the new
/// child's: were the new child's write refused, the rollout goes on from
/// the old side's new marks, and no count is ever scaled twice.
fn rescale(
    p: &RoleProgress,
    input: &RoleState,
    olds: &[&Child],
    new_child: Option<&&Child>,
) -> Vec<Action> {
    let to = p.target;
    let stale: Vec<&Child> = olds
        .iter()
        .copied()
        .filter(|c| c.rollout_target.is_some_and(|t| t != to))
        .collect();
    let Some(from) = stale.first().and_then(|c| c.rollout_target) else {
        return Vec::new();
    };
    let scale = |x: i32| {
        if from == 0 {
            x
        } else {
            // Rounded half up, in i64: x and `to` are at most MAX_REPLICAS.
            narrow_i64((2 * i64::from(x) * i64::from(to) + i64::from(from)) / (2 * i64::from(from)))
        }
    };
    let all_stale = stale.len() == olds.len();
    let fresh: i32 = olds
        .iter()
        .filter(|c| !stale.iter().any(|s| s.name == c.name))
        .map(|c| c.replicas)
        .sum();
    // A role scaled to 0 leaves its old revision the way a removed role does:
    // the planner drains it with the revision's other roles (no orphans).
    let old_scale = |x: i32| if to == 0 { x } else { scale(x) };
    // An old child that had replicas keeps at least one: no role of its revision goes alone.
    let keep = |c: &Child| i32::from(c.replicas > 0 && to > 0);
    let mut counts: Vec<i32> = stale
        .iter()
        .map(|c| old_scale(c.replicas).max(keep(c)))
        .collect();
    let mut new = if all_stale {
        scale(p.new).min(to)
    } else {
        p.new
    };
    let high = if to == 0 {
        i32::MAX
    } else {
        to.saturating_add(input.max_surge)
    };
    let low = (to - input.max_unavailable).max(0);
    let total = |counts: &[i32], new: i32| fresh + counts.iter().sum::<i32>() + new;
    // Over the surge bound (rounding, or a role already at its surge): the
    // old side gives first, newest revision first, down to 1 per child that had any.
    let mut over = total(&counts, new) - high;
    for (c, n) in stale.iter().zip(counts.iter_mut()) {
        let cut = over.min(*n - keep(c)).max(0);
        *n -= cut;
        over -= cut;
    }
    if over > 0 {
        new = (new - over).max(0);
    }
    // Under the availability bound (rounding): the new side makes it up to
    // its target, the old side the rest, so both sides move as `t'/t` does.
    let mut under = low - total(&counts, new);
    if under > 0 {
        let add = under.min(to - new).max(0);
        new += add;
        under -= add;
    }
    if under > 0
        && let Some(i) = (0..counts.len()).max_by_key(|&i| counts[i])
    {
        counts[i] += under;
    }
    let old_writes: Vec<Action> = stale
        .iter()
        .zip(&counts)
        .map(|(c, &n)| Action::Mark {
            name: c.name.clone(),
            mark: Some(Mark {
                initial_replicas: old_scale(c.initial_replicas.unwrap_or(c.replicas)).max(n),
                target: to,
            }),
            replicas: (n != c.replicas).then_some(n),
        })
        .collect();
    let new_write = new_child
        .filter(|c| c.replicas != new)
        .map(|c| Action::Scale {
            name: c.name.clone(),
            replicas: new,
        });
    // Old side first; but a shrink goes before a growth (a rounding corner),
    // so every state between two writes stays within the larger of the
    // totals before and after.
    let old_grows = stale.iter().zip(&counts).any(|(c, &n)| n > c.replicas);
    let new_shrinks = new_child.is_some_and(|c| new < c.replicas);
    let mut actions = Vec::new();
    if old_grows && new_shrinks {
        actions.extend(new_write);
        actions.extend(old_writes);
    } else {
        actions.extend(old_writes);
        actions.extend(new_write);
    }
    actions
}

fn narrow_i64(v: i64) -> i32 {
    v.clamp(0, i64::from(disagg_api::limits::MAX_REPLICAS)) as i32
}

/// Per-role numbers now: target roles in spec order, then roles only old
/// revisions still have (removed or renamed), by name.
fn progress_now(
    target: &Target,
    new_children: &BTreeMap<&str, &Child>,
    old: &[OldRevision<'_>],
) -> Vec<RoleProgress> {
    let mut names: Vec<(&str, i32)> = target
        .roles
        .iter()
        .map(|r| (r.name.as_str(), r.replicas))
        .collect();
    let removed: BTreeSet<&str> = old
        .iter()
        .flat_map(|r| &r.children)
        .map(|c| c.role.as_str())
        .filter(|role| !names.iter().any(|(n, _)| n == role))
        .collect();
    names.extend(removed.into_iter().map(|n| (n, 0)));
    names
        .into_iter()
        .map(|(name, target)| {
            let olds = old
                .iter()
                .flat_map(|r| &r.children)
                .filter(|c| c.role == name);
            let initial_old = olds
                .clone()
                .map(|c| c.initial_replicas.unwrap_or(c.replicas))
                .sum();
            let old_now: i32 = olds.map(|c| c.replicas).sum();
            let new = new_children.get(name).map_or(0, |c| c.replicas);
            RoleProgress {
                name: name.to_string(),
                initial_old,
                old: old_now,
                new,
                target,
                next_old: old_now,
                next_new: new,
            }
        })
        .collect()
}

/// Splits each role's planned old total over the old revisions, draining the
/// newest first. When a role of a revision would reach 0, all of that
/// revision's roles go to 0 together, so no revision is left with a role missing.
/// Returns the new replicas of every old child.
fn drain_newest_first<'a>(
    old: &[OldRevision<'a>],
    roles: &[RoleProgress],
    next_old: &[i32],
) -> Vec<(&'a Child, i32)> {
    let mut result: Vec<Vec<i32>> = old
        .iter()
        .map(|r| r.children.iter().map(|c| c.replicas).collect())
        .collect();
    for (p, &want) in roles.iter().zip(next_old) {
        let mut cut = p.old - want;
        for (r, counts) in old.iter().zip(result.iter_mut()) {
            for (c, n) in r.children.iter().zip(counts.iter_mut()) {
                if cut > 0 && c.role == p.name {
                    let take = cut.min(*n);
                    *n -= take;
                    cut -= take;
                }
            }
        }
    }
    for (r, counts) in old.iter().zip(result.iter_mut()) {
        let emptied = r
            .children
            .iter()
            .zip(counts.iter())
            .any(|(c, n)| c.replicas > 0 && *n == 0);
        if emptied {
            counts.iter_mut().for_each(|n| *n = 0);
        }
    }
    old.iter()
        .zip(result)
        .flat_map(|(r, counts)| r.children.iter().copied().zip(counts))
        .collect()
}

/// The target of a set at `revision`. External roles take their replicas from
/// `external` (their scaler's `spec.replicas`, or the role's own as a seed).
pub fn target_for(
    set: &disagg_api::set::DisaggregatedSet,
    revision: &str,
    external: impl Fn(&disagg_api::set::Role) -> i32,
) -> Target {
    use crate::plan::resolve_budget;
    Target {
        set_name: set.metadata.name.clone().unwrap_or_default(),
        revision: revision.to_string(),
        slices: set.spec.slices,
        abort: false,
        roles: set
            .spec
            .roles
            .iter()
            .map(|r| {
                let replicas = bounded(if r.is_external() {
                    external(r)
                } else {
                    r.spec.replicas
                });
                let cfg = r
                    .spec
                    .rollout_strategy
                    .as_ref()
                    .and_then(|s| s.rolling_update_configuration.as_ref());
                TargetRole {
                    name: r.name.clone(),
                    replicas,
                    budget: resolve_budget(cfg, replicas),
                    start_after: r.start_after.clone(),
                }
            })
            .collect(),
    }
}

/// A replica count held to `0..=MAX_REPLICAS`, the range the CRDs allow.
pub fn bounded(replicas: i32) -> i32 {
    replicas.clamp(0, disagg_api::limits::MAX_REPLICAS)
}
