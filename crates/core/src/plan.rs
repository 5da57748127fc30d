//! The coordinated rollout planner (`docs/planner.md`): a pure function from the
//! per-role rollout state to the next `(old, new)` replica vectors.
//!
//! The planner only ever looks at numbers. Which LeaderWorkerSets those
//! numbers belong to, readiness, and the order of API writes are the
//! executor's business (`core::execute`).

use disagg_api::lws::RollingUpdateConfiguration;
use disagg_api::validate::absolute_budget;
use serde::{Deserialize, Serialize};

/// The rollout state of one role, as the planner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleState {
    /// Old replicas when the rollout began (the `initial-replicas` annotation).
    pub initial_old: i32,
    pub current_old: i32,
    pub current_new: i32,
    pub target: i32,
    pub max_surge: i32,
    pub max_unavailable: i32,
}

/// What the planner wants next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing left to do: every old role is at 0 and every new role at its target.
    Done,
    /// Move to these replica counts (indexed like the input roles).
    Next { old: Vec<i32>, new: Vec<i32> },
    /// No step is possible from here without breaking a bound. With the
    /// configurations the planner resolves this does not happen; the executor
    /// reports it rather than guessing.
    Stuck,
}

/// Resolved `(maxSurge, maxUnavailable)` for a role (`docs/planner.md`, "Budgets").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    pub max_surge: i32,
    pub max_unavailable: i32,
}

impl Budget {
    /// The budget used when a role has no `rollingUpdateConfiguration`, and for removed roles.
    pub const DEFAULT: Budget = Budget {
        max_surge: 1,
        max_unavailable: 0,
    };

    /// Applies the resolution rules to already-resolved absolute numbers.
    pub fn from_absolute(surge: i32, unavailable: i32) -> Budget {
        if unavailable > 0 {
            Budget {
                max_surge: surge.max(0),
                max_unavailable: unavailable,
            }
        } else if surge > 0 {
            Budget {
                max_surge: surge,
                max_unavailable: 0,
            }
        } else {
            Budget::DEFAULT
        }
    }
}

/// Resolves a role's rollout budget against its target replicas
/// (`docs/planner.md`, "Budgets").
pub fn resolve_budget(cfg: Option<&RollingUpdateConfiguration>, target: i32) -> Budget {
    match cfg {
        None => Budget::DEFAULT,
        Some(cfg) => {
            let (surge, unavailable) = absolute_budget(cfg, target);
            Budget::from_absolute(surge, unavailable)
        }
    }
}

/// Computes the next step. `docs/planner.md` gives the rules this follows, in order.
pub fn next_step(roles: &[RoleState]) -> Step {
    let schedule = Schedule::new(roles);
    let t = schedule.total_steps;

    // 1. Done.
    let all_new_at_target = roles.iter().all(|r| r.current_new >= r.target);
    if t == 0 || (all_new_at_target && roles.iter().all(|r| r.current_old == 0)) {
        return Step::Done;
    }
    let current_old: Vec<i32> = roles.iter().map(|r| r.current_old).collect();
    let current_new: Vec<i32> = roles.iter().map(|r| r.current_new).collect();

    // 2. Repair: someone scaled an old revision above where the rollout began.
    if roles.iter().any(|r| r.current_old > r.initial_old) {
        let old = roles
            .iter()
            .map(|r| r.current_old.min(r.initial_old))
            .collect();
        return Step::Next {
            old,
            new: current_new,
        };
    }

    // 3. Final drain.
    if all_new_at_target {
        return Step::Next {
            old: vec![0; roles.len()],
            new: current_new,
        };
    }

    // 4. Scale up new, measured by the slowest role.
    let k_new = schedule.k_new(roles);
    let next_new: Vec<i32> = roles
        .iter()
        .map(|r| r.current_new.max(schedule.new_at(r, k_new + 1)))
        .collect();
    let raises = lowers_or_raises(&current_new, &next_new).1;
    let within_surge = roles
        .iter()
        .zip(&next_new)
        .all(|(r, &n)| r.target == 0 || r.current_old + n <= r.target + r.max_surge);
    if raises && within_surge {
        return Step::Next {
            old: current_old,
            new: next_new,
        };
    }

    // 5. Proportional drain, measured by the fastest role.
    let k_old = schedule.k_old(roles);
    let proposed: Vec<i32> = roles
        .iter()
        .map(|r| {
            // The floor never raises an old role: the planner only drains.
            schedule
                .old_at(r, k_old + 1)
                .max(floor_old(r, r.current_new))
                .min(r.current_old)
        })
        .collect();
    if let Some(step) = drain(roles, proposed, &current_new) {
        return step;
    }

    // 6. Forced drain together with the scale-up.
    let proposed: Vec<i32> = roles
        .iter()
        .zip(&next_new)
        .map(|(r, &n)| {
            // As in rule 5, the floor never raises an old role.
            (r.target + r.max_surge - n)
                .max(floor_old(r, n))
                .clamp(0, r.current_old)
        })
        .collect();
    let forced = prevent_orphans(roles, proposed, &next_new);
    // Orphan prevention may have kept an old replica that leaves no room for
    // the new one: such a role waits for its scale-up (per-role surge bound).
    let forced_new: Vec<i32> = roles
        .iter()
        .zip(next_new.iter().zip(&forced))
        .map(|(r, (&n, &o))| {
            if r.target == 0 {
                n
            } else {
                n.min(r.target + r.max_surge - o).max(r.current_new)
            }
        })
        .collect();
    if lowers_or_raises(&current_old, &forced).0 {
        return Step::Next {
            old: forced,
            new: forced_new,
        };
    }

    // 6½. Unblock (rule 7 of docs/planner.md, reached only where rule 7
    // would stop). Rounding in the schedule, and roles whose surge budget is
    // 0, can leave rules 4–6 with nothing to do although a safe move exists.
    // First drain each role by up to one batch, never below its floor; then
    // let each role grow as far as its own surge bound allows.
    let proposed: Vec<i32> = roles
        .iter()
        .map(|r| {
            (r.current_old - batch(r))
                .max(floor_old(r, r.current_new))
                .min(r.current_old)
        })
        .collect();
    if let Some(step) = drain(roles, proposed, &current_new) {
        return step;
    }
    let grown: Vec<i32> = roles
        .iter()
        .map(|r| {
            let room = r.target + r.max_surge - r.current_old;
            r.current_new.max(room.min(r.target))
        })
        .collect();
    if lowers_or_raises(&current_new, &grown).1 {
        return Step::Next {
            old: current_old,
            new: grown,
        };
    }

    // 7. No step.
    Step::Stuck
}

/// Where a rollout stands on its schedule: `(k, T)`, new replicas measured by
/// the slowest role. `T` is 0 when there is nothing to roll out.
pub fn position(roles: &[RoleState]) -> (i32, i32) {
    let schedule = Schedule::new(roles);
    let t = schedule.total_steps;
    (narrow(schedule.k_new(roles).min(t)), narrow(t))
}

/// The new replicas to recreate role `i`'s lost new child with: where the
/// schedule has it at the position of the slowest role that still has its
/// new child, within its surge bound.
pub fn restore_new(roles: &[RoleState], i: usize) -> i32 {
    let schedule = Schedule::new(roles);
    let t = schedule.total_steps;
    if t == 0 {
        return 0;
    }
    let present: Vec<RoleState> = roles
        .iter()
        .filter(|r| r.current_new > 0)
        .copied()
        .collect();
    let k_new = if present.is_empty() {
        0
    } else {
        schedule.k_new(&present)
    };
    let k = k_new.min(t);
    let r = &roles[i];
    let room = r.target.saturating_add(r.max_surge) - r.current_old;
    schedule.new_at(r, k).min(room).max(0)
}

/// Runs the planner from the start of a rollout (old = initialOld, new = 0)
/// until it is done, assuming every step is applied and becomes ready.
/// Returns every state, the start state first. Stops early if the planner is
/// stuck or `max_steps` states have been produced.
pub fn simulate(roles: &[RoleState], max_steps: usize) -> Vec<(Vec<i32>, Vec<i32>)> {
    let mut state: Vec<RoleState> = roles.to_vec();
    let mut states = vec![(
        state.iter().map(|r| r.current_old).collect(),
        state.iter().map(|r| r.current_new).collect(),
    )];
    while states.len() < max_steps {
        match next_step(&state) {
            Step::Next { old, new } => {
                for ((r, o), n) in state.iter_mut().zip(&old).zip(&new) {
                    r.current_old = *o;
                    r.current_new = *n;
                }
                states.push((old, new));
            }
            Step::Done | Step::Stuck => break,
        }
    }
    states
}

/// The linear schedule of `T` steps that the planner tracks.
struct Schedule {
    total_steps: i64,
}

impl Schedule {
    fn new(roles: &[RoleState]) -> Schedule {
        let total_steps = roles
            .iter()
            .map(|r| div_ceil(i64::from(r.initial_old.max(r.target)), i64::from(batch(r))))
            .max()
            .unwrap_or(0);
        Schedule { total_steps }
    }

    /// New replicas role `r` should have at step `k`.
    fn new_at(&self, r: &RoleState, k: i64) -> i32 {
        let target = i64::from(r.target);
        narrow(div_ceil(k * target, self.total_steps).min(target))
    }

    /// Old replicas role `r` should have at step `k`.
    fn old_at(&self, r: &RoleState, k: i64) -> i32 {
        let initial = i64::from(r.initial_old);
        narrow((initial - (k * initial) / self.total_steps).max(0))
    }

    /// Scale-up progress, measured by the slowest role.
    fn k_new(&self, roles: &[RoleState]) -> i64 {
        roles
            .iter()
            .map(|r| {
                if r.target == 0 {
                    self.total_steps
                } else {
                    i64::from(r.current_new) * self.total_steps / i64::from(r.target)
                }
            })
            .min()
            .unwrap_or(0)
    }

    /// Drain progress, measured by the fastest role.
    fn k_old(&self, roles: &[RoleState]) -> i64 {
        roles
            .iter()
            .filter(|r| r.initial_old > 0)
            .map(|r| {
                i64::from(r.initial_old - r.current_old) * self.total_steps
                    / i64::from(r.initial_old)
            })
            .max()
            .unwrap_or(0)
    }
}

/// An old revision never keeps one role alive while another is gone: among
/// roles with `initialOld > 0`, if some but not all reach 0, either take all to
/// 0 (when every shrinking role's new side is within its unavailability budget)
/// or hold each role that reached 0 at 1. A role already at 0 stays there:
/// the planner never scales an old revision up.
fn prevent_orphans(roles: &[RoleState], mut old: Vec<i32>, new: &[i32]) -> Vec<i32> {
    let live: Vec<usize> = (0..roles.len())
        .filter(|&i| roles[i].initial_old > 0)
        .collect();
    let zeroed = live.iter().filter(|&&i| old[i] == 0).count();
    if zeroed == 0 || zeroed == live.len() {
        return old;
    }
    let new_side_ready = roles
        .iter()
        .zip(new)
        .filter(|(r, _)| r.initial_old >= r.target)
        .all(|(r, &n)| n >= r.target - r.max_unavailable);
    for &i in &live {
        if new_side_ready {
            old[i] = 0;
        } else if old[i] == 0 {
            old[i] = roles[i].current_old.min(1);
        }
    }
    old
}

/// A drain to `proposed` (after orphan prevention), if it lowers some role.
fn drain(roles: &[RoleState], proposed: Vec<i32>, new: &[i32]) -> Option<Step> {
    let old = prevent_orphans(roles, proposed, new);
    let lowers = roles.iter().zip(&old).any(|(r, o)| *o < r.current_old);
    lowers.then(|| Step::Next {
        old,
        new: new.to_vec(),
    })
}

/// Replicas a role moves per step: its surge, or its unavailability when it has no surge.
fn batch(r: &RoleState) -> i32 {
    if r.max_surge > 0 {
        r.max_surge
    } else {
        r.max_unavailable.max(1)
    }
}

/// The least old replicas a role keeps while its new side is at `new`: enough
/// to stay within `maxUnavailable` of the target (only for roles not growing).
fn floor_old(r: &RoleState, new: i32) -> i32 {
    if r.initial_old >= r.target {
        (r.target - r.max_unavailable - new).max(0)
    } else {
        0
    }
}

/// `(lowers some entry, raises some entry)` going from `from` to `to`.
fn lowers_or_raises(from: &[i32], to: &[i32]) -> (bool, bool) {
    let lowers = from.iter().zip(to).any(|(a, b)| b < a);
    let raises = from.iter().zip(to).any(|(a, b)| b > a);
    (lowers, raises)
}

fn div_ceil(a: i64, b: i64) -> i64 {
    if b == 0 { 0 } else { (a + b - 1).div_euclid(b) }
}

fn narrow(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// One rollout case in the format of `shared/spec/rollout-vectors.json`,
/// read and written by `disagg plan`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanCase {
    pub name: String,
    pub roles: Vec<String>,
    pub initial_old: Vec<i32>,
    pub target: Vec<i32>,
    pub config: Vec<Budget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<PlanState>>,
}

/// One `(old, new)` state of a [`PlanCase`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanState {
    pub old: Vec<i32>,
    pub new: Vec<i32>,
}

impl PlanCase {
    /// Checks that every per-role vector has one entry per role and that the
    /// numbers make sense; the message names the offending field.
    pub fn check(&self) -> Result<(), String> {
        let n = self.roles.len();
        for (field, len) in [
            ("initialOld", self.initial_old.len()),
            ("target", self.target.len()),
            ("config", self.config.len()),
        ] {
            if len != n {
                return Err(format!(
                    "{field}: has {len} entries but there are {n} roles"
                ));
            }
        }
        for (field, values) in [("initialOld", &self.initial_old), ("target", &self.target)] {
            if let Some(i) = values.iter().position(|v| *v < 0) {
                return Err(format!("{field}[{i}]: must not be negative"));
            }
        }
        for (i, b) in self.config.iter().enumerate() {
            if b.max_surge < 0 || b.max_unavailable < 0 {
                return Err(format!(
                    "config[{i}]: maxSurge and maxUnavailable must not be negative"
                ));
            }
            if b.max_surge == 0 && b.max_unavailable == 0 {
                return Err(format!(
                    "config[{i}]: maxSurge and maxUnavailable must not both be 0"
                ));
            }
        }
        Ok(())
    }

    /// The planner's input at the start of this case's rollout.
    pub fn start(&self) -> Vec<RoleState> {
        (0..self.roles.len())
            .map(|i| RoleState {
                initial_old: self.initial_old[i],
                current_old: self.initial_old[i],
                current_new: 0,
                target: self.target[i],
                max_surge: self.config[i].max_surge,
                max_unavailable: self.config[i].max_unavailable,
            })
            .collect()
    }

    /// Fills `steps` with the planner's sequence from the start to done.
    pub fn solve(&mut self) {
        let states = simulate(&self.start(), MAX_SIMULATED_STEPS);
        self.steps = Some(
            states
                .into_iter()
                .map(|(old, new)| PlanState { old, new })
                .collect(),
        );
    }
}

/// A safety stop for simulations: far more states than any valid rollout of
/// up to 1,000,000 replicas per role with a batch of 1 would need is not
/// reachable, so this only bounds a planner bug.
pub const MAX_SIMULATED_STEPS: usize = 4_000_000;
