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
use super::render::child_name;
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
    /// Creation time in seconds since the epoch; orders old revisions.
    pub created: i64,
    /// Whether this set is its controller. Others are never touched.
    pub owned: bool,
}

impl Child {
    /// Reads a child from an LWS. `None` when it lacks our labels.
    pub fn from_lws(lws: &LeaderWorkerSet, set_uid: &str) -> Option<Child> {
        let labels = lws.metadata.labels.as_ref()?;
        let status = lws.status.clone().unwrap_or_default();
        let owned = super::render::is_controlled_by(&lws.metadata, set_uid);
        Some(Child {
            name: lws.metadata.name.clone()?,
            slice: labels.get(keys::SLICE)?.parse().ok()?,
            revision: labels.get(keys::REVISION)?.clone(),
            role: labels.get(keys::ROLE)?.clone(),
            // Observed numbers are clamped so no sum over them can overflow,
            // whatever a user or another controller wrote.
            replicas: bounded(lws.spec.replicas),
            ready_replicas: bounded(status.ready_replicas),
            status_replicas: bounded(status.replicas),
            initial_replicas: lws
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::INITIAL_REPLICAS))
                .and_then(|v| v.parse().ok())
                .map(bounded),
            created: lws
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0),
            owned,
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRole {
    pub name: String,
    /// Replicas per slice.
    pub replicas: i32,
    pub budget: Budget,
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
    /// Set (`Some`) or remove (`None`) the `initial-replicas` annotation.
    SetInitialReplicas {
        name: String,
        value: Option<i32>,
    },
    Delete {
        name: String,
    },
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
    let Sorted {
        foreign,
        new_children,
        old,
        mut actions,
    } = sort(target, children);
    let plan = |state, roles, position, actions| SlicePlan {
        slice,
        state,
        roles,
        position,
        actions,
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
    let bookkeeping = initial_replicas_bookkeeping(&old, &new_children);
    if !bookkeeping.is_empty() {
        actions.extend(bookkeeping);
        let roles = progress_now(target, &new_children, &old);
        return plan(SliceState::RecordingRollout, roles, (0, 0), actions);
    }

    let mut roles = progress_now(target, &new_children, &old);
    let inputs = planner_inputs(target, &roles);
    let position = plan::position(&inputs);
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
    // Children whose name does not match their labels are not ours to reason about.
    let owned = children.iter().copied().filter(|c| {
        c.owned && c.name == child_name(&target.set_name, c.slice, &c.revision, &c.role)
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
                if c.initial_replicas.is_some() {
                    actions.push(Action::SetInitialReplicas {
                        name: c.name.clone(),
                        value: None,
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
    let (early, late): (Vec<_>, Vec<_>) = drains
        .into_iter()
        .filter(|(c, r)| *r != c.replicas)
        .map(|(c, r)| {
            let action = Action::Scale {
                name: c.name.clone(),
                replicas: r,
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
/// child records its current replicas as `initial-replicas`: the planner
/// measures drain progress from there. New children carry no such annotation
/// (after a rollback, the revision we return to may still have one).
fn initial_replicas_bookkeeping(
    old: &[OldRevision<'_>],
    new_children: &BTreeMap<&str, &Child>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let restart = old
        .iter()
        .flat_map(|r| &r.children)
        .any(|c| c.initial_replicas.is_none());
    if restart {
        for c in old.iter().flat_map(|r| &r.children) {
            actions.push(Action::SetInitialReplicas {
                name: c.name.clone(),
                value: Some(c.replicas),
            });
        }
    }
    for c in new_children.values() {
        if c.initial_replicas.is_some() {
            actions.push(Action::SetInitialReplicas {
                name: c.name.clone(),
                value: None,
            });
        }
    }
    actions
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
                }
            })
            .collect(),
    }
}

/// A replica count held to `0..=MAX_REPLICAS`, the range the CRDs allow.
pub fn bounded(replicas: i32) -> i32 {
    replicas.clamp(0, disagg_api::limits::MAX_REPLICAS)
}
