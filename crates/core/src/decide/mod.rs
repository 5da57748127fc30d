//! The decide step: everything the operator concludes about one set, from
//! what it observed, as one pure function. `docs/architecture.md` walks a
//! reconcile through it.
//!
//! In: the set, its children and scalers as the API server returned them,
//! the operator's default bindings, the plugins (through [`Plugins`]), and
//! the time. Out: a [`Plan`] — every write in the order to make it, each with
//! the full object or patch it writes; the status the set should show; the
//! Events to record; and when to look again. The operator executes plans,
//! `disagg render` prints the children a plan creates for a set with no
//! children, and the benchmark times it; what is rendered is what is applied.
//!
//! Only one thing is decided after the writes: a write the API server refuses
//! is reported by [`Plan::after_writes`] (the `ReplicaFailure` condition and a
//! `FailedWrite` Event), since only the executor learns of it.

use crate::adopt;
use crate::bindings::{self, Bound, DefaultBinding, Failure};
use crate::execute::{self, Action, Child, Decision, Mark, SliceState, Target, target_for};
use crate::plugins::{GateRequest, PluginError, Plugins, RoleStep, Violation};
use crate::render::{is_controlled_by, owner_reference, render_child};
use crate::revision::revision;
use crate::signals::{Evaluator, Signals, Vars};
use crate::status::{self, Hold, Observation, conditions};
use crate::text::truncate;
use disagg_api::keys;
use disagg_api::lws::LeaderWorkerSet;
use disagg_api::scaler::{DisaggregatedSetRoleScaler, DisaggregatedSetRoleScalerSpec};
use disagg_api::set::{DisaggregatedSet, DisaggregatedSetStatus, PluginBinding, PluginStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::time::Duration;

mod report;
mod rollout;
mod scalers;
mod write;

use report::*;
use rollout::*;
use scalers::*;
pub use write::*;

/// How often a set mid-rollout is looked at again without any change (for
/// `progressDeadlineSeconds`); changes to its children wake it sooner.
const ROLLING_RECHECK: Duration = Duration::from_secs(15);
/// A periodic resync of a settled set.
const STEADY_RECHECK: Duration = Duration::from_secs(300);
/// A plugin load that has run this long is shown on the sets waiting for it.
const REPORT_LOADING_AFTER: Duration = Duration::from_secs(2);
/// How soon a set waiting for a plugin to compile is looked at again.
const LOADING_RECHECK: Duration = Duration::from_millis(500);
/// How soon a plugin that could not be asked (busy, compiling) is asked again.
const RETRY_RECHECK: Duration = Duration::from_secs(1);

/// What the decide step looks at.
pub struct Observed<'a> {
    pub set: &'a DisaggregatedSet,
    /// The LeaderWorkerSets labelled with the set's name (others' included:
    /// the set never touches a child it does not control).
    pub children: &'a [LeaderWorkerSet],
    /// The DisaggregatedSetRoleScalers labelled with the set's name.
    pub scalers: &'a [DisaggregatedSetRoleScaler],
    /// The operator's own bindings (`--default-plugins`).
    pub defaults: &'a [DefaultBinding],
    pub plugins: &'a dyn Plugins,
    /// Where the bindings' signals are evaluated (`signals::NoSignals` when
    /// no Prometheus is configured).
    pub signals: &'a dyn Signals,
    /// How often a set whose bindings declare signals is decided again
    /// (metrics change with no object changing).
    pub signal_interval: Duration,
    pub now: Timestamp,
}

/// What the decide step concluded about a set.
#[derive(Debug)]
pub struct Plan {
    /// In the order they must be made.
    pub writes: Vec<Planned>,
    /// The status the set should show (`None`: the set is being deleted).
    pub status: Option<DisaggregatedSetStatus>,
    pub events: Vec<Event>,
    /// When to decide again with nothing changed (`None`: only on a change).
    pub recheck: Option<Duration>,
    /// What the set asks for (`None` while a bound plugin compiles).
    pub target: Option<Target>,
    pub violations: Vec<Violation>,
    pub failures: Vec<Failure>,
    /// Plugin failures not on the set's status yet (for metrics), as (plugin, reason).
    pub new_failures: Vec<(String, &'static str)>,
    /// The status the set had.
    previous: Option<DisaggregatedSetStatus>,
    generation: Option<i64>,
    now: Time,
}

impl Plan {
    /// The status to write, when it differs from the set's (ignoring the
    /// order of conditions).
    pub fn status_update(&self) -> Option<&DisaggregatedSetStatus> {
        let next = self.status.as_ref()?;
        let Some(previous) = &self.previous else {
            return Some(next);
        };
        let sorted = |s: &DisaggregatedSetStatus| {
            let mut s = s.clone();
            s.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
            s
        };
        (sorted(previous) != sorted(next)).then_some(next)
    }

    /// The children the plan creates, in order.
    pub fn created_children(&self) -> impl Iterator<Item = &LeaderWorkerSet> {
        self.writes.iter().filter_map(|p| match &p.write {
            Write::CreateChild(c) => Some(c.as_ref()),
            _ => None,
        })
    }

    /// Reports child writes the API server refused: `ReplicaFailure=True`
    /// (like a Deployment's) and a `FailedWrite` Event for each new refusal,
    /// and a recheck when the soonest backoff ends.
    pub fn after_writes(&mut self, failures: &[WriteFailure]) {
        let Some(status) = self.status.as_mut() else {
            return;
        };
        if failures.is_empty() {
            return;
        }
        // No countdown in the message: status changes only when what failed does.
        let mut list: Vec<&str> = failures.iter().map(|w| w.message.as_str()).collect();
        list.sort();
        list.dedup();
        let previous = self
            .previous
            .as_ref()
            .map(|p| p.conditions.as_slice())
            .unwrap_or(&[]);
        status.conditions.push(status::condition(
            previous,
            conditions::REPLICA_FAILURE,
            true,
            "FailedWrite",
            truncate(&list.join("; "), 2048),
            self.generation,
            &self.now,
        ));
        for w in failures.iter().filter(|w| w.new) {
            self.events.push(Event::warning(
                "FailedWrite",
                "Rollout",
                format!(
                    "{}; retrying in {} s",
                    w.message,
                    w.retry_in.as_secs().max(1)
                ),
            ));
        }
        let soonest = failures.iter().map(|w| w.retry_in).min();
        self.recheck = soonest.map(|d| d.max(Duration::from_millis(100)));
    }
}

/// Decides the next writes, the status and the Events of one set.
pub fn decide(o: &Observed<'_>) -> Plan {
    let set = o.set;
    let now = Time(o.now);
    let mut plan = Plan {
        writes: Vec::new(),
        status: None,
        events: Vec::new(),
        recheck: None,
        target: None,
        violations: Vec::new(),
        failures: Vec::new(),
        new_failures: Vec::new(),
        previous: set.status.clone(),
        generation: set.metadata.generation,
        now: now.clone(),
    };
    if set.metadata.deletion_timestamp.is_some() {
        // Garbage collection takes the children with the set.
        return plan;
    }
    let effective = bindings::effective(o.defaults, &set.spec.plugins);

    // A bound plugin with no component yet, but one compiling: decide nothing
    // until it is there (deciding without it would compute another revision).
    // Loads are short; one that is not shows on the set after a moment.
    let loading: Vec<(&str, Duration)> = effective
        .iter()
        .filter(|b| o.plugins.get(&b.name).is_none())
        .filter_map(|b| Some((b.name.as_str(), o.plugins.loading_for(&b.name)?)))
        .collect();
    if !loading.is_empty() {
        plan.status = Some(waiting_for(set, &loading, &now));
        plan.recheck = Some(LOADING_RECHECK);
        return plan;
    }

    let uid = set.uid().unwrap_or_default();
    let children: Vec<Child> = o
        .children
        .iter()
        .filter_map(|l| Child::from_lws(l, &uid))
        .collect();
    let (scaler_writes, scaled) = scalers(set, o.scalers, &children);
    plan.writes.extend(scaler_writes);

    let (bound, mut failures) = bindings::resolve(&effective, o.plugins);
    // Plugins see the set as JSON: serialised once per decide, and only when one is bound.
    let set_json = if bound.is_empty() {
        String::new()
    } else {
        serde_json::to_string(set).expect("a set serialises")
    };
    let mut violations = disagg_api::validate::validate(set);
    violations.extend(bindings::overrides(o.defaults, &set.spec.plugins));
    violations.extend(scaler_violations(set, &scaled));
    if violations.is_empty() {
        let (v, f) = bindings::validate(set, &set_json, &bound);
        violations.extend(v);
        failures.extend(f);
    }
    let hashed = revision(&set.spec, &bindings::template_plugins(&bound));
    // Children already running exactly these templates keep running: their revision is ours.
    let roles: Vec<&str> = set.spec.roles.iter().map(|r| r.name.as_str()).collect();
    let rev = adopt::revision_of(&hashed, &roles, &children, |role, slice, candidate| {
        let spec = set.spec.roles.iter().find(|r| r.name == role)?;
        let child = render_child(set, spec, slice, candidate, spec.spec.replicas);
        let (patched, _) = bindings::patch(&set_json, &bound, role, slice, candidate, child);
        Some(adopt::fingerprint(
            &patched.ok()?.spec.leader_worker_template,
        ))
    });
    let mut target = target_for(set, &rev, |r| {
        scaled.get(&r.name).copied().unwrap_or(r.spec.replicas)
    });
    let abort = abort_request(set, &[&hashed, &rev]);
    target.abort = abort.is_some();
    let mut decision = None;
    let mut hold = None;
    let mut blocked_by = None;
    let evaluator = Evaluator::new(o.signals);
    if violations.is_empty() {
        // Scaling hooks adjust the targets.
        let observed = observed_replicas(&target, &children);
        let mut desired: BTreeMap<String, i32> = target
            .roles
            .iter()
            .map(|r| (r.name.clone(), r.replicas))
            .collect();
        let namespace = set.namespace().unwrap_or_default();
        let name = set.name_any();
        let context = bindings::ScaleContext {
            evaluator: &evaluator,
            vars: Vars {
                set: &name,
                namespace: &namespace,
                slice: 0,
                revision: &rev,
                old_revision: &rev,
            },
            now_ms: o.now.as_millisecond().max(0) as u64,
            last_scaled_ms: last_scaled(set),
        };
        failures.extend(bindings::scale(
            set,
            &set_json,
            &bound,
            &mut desired,
            &observed,
            &context,
        ));
        for r in &mut target.roles {
            if let Some(d) = desired.get(&r.name) {
                r.replicas = *d;
            }
        }
        let d = execute::decide(&target, &children);
        let gated = match pause_request(set, &d) {
            Some(paused) => rollout::Gated {
                hold: Some(paused),
                abort: None,
                failures: Vec::new(),
            },
            None => gates(set, &bound, &d, &children, &rev, o.now, &evaluator),
        };
        failures.extend(gated.failures);
        hold = gated.hold;
        if let Some((gate, reason)) = gated.abort {
            // Sticky, visible and resumable like a user's abort: the annotations.
            plan.writes.push(Planned {
                write: Write::AbortSet {
                    reason: truncate(&format!("by gate {gate}: {reason}"), 512),
                    revision: rev.clone(),
                },
                scope: None,
            });
        }
        let mut writes = child_writes(set, &set_json, &bound, &d, &children, &rev, hold.is_some());
        // A child a Fail plugin could not patch is not created: its role waits too.
        let unpatched = writes.failures.iter().any(|f| f.blocks());
        failures.append(&mut writes.failures);
        let blocked_all = failures.iter().any(|f| f.blocks() && f.role.is_none());
        let blocked = |scope: &Option<Scope>| {
            blocked_all
                || scope.as_ref().is_some_and(|s| {
                    failures
                        .iter()
                        .any(|f| f.blocks() && f.role.as_deref() == Some(&s.role))
                })
        };
        let (held_back, go): (Vec<Planned>, Vec<Planned>) =
            writes.writes.into_iter().partition(|p| blocked(&p.scope));
        plan.writes.extend(go);
        // Writes a plugin failure holds back: the set says so, as a gate's hold would be.
        if !held_back.is_empty() || blocked_all || unpatched {
            blocked_by = Some(blocked_message(&failures, &held_back));
        }
        decision = Some(d);
    }

    let mut status = status::compute(&Observation {
        generation: set.metadata.generation,
        target: &target,
        children: &children,
        decision: decision.as_ref(),
        violations: &violations,
        hold: hold.as_ref().map(|(h, _)| h),
        abort: abort.as_deref(),
        blocked: blocked_by.as_deref(),
        progress_deadline_seconds: set.spec.progress_deadline_seconds,
        previous: set.status.as_ref(),
        now: now.clone(),
    });
    status.plugins = plugin_statuses(&effective, o.plugins, &failures);
    if effective.iter().any(|b| !b.signals.is_empty()) {
        status.conditions.push(signals_ready(set, &evaluator, &now));
    }
    let refused = refusals(&effective, o.plugins);
    status
        .conditions
        .push(plugins_ready(set, &failures, &refused, &now));

    plan.events = events(
        set,
        &failures,
        &violations,
        hold.as_ref().map(|(h, _)| h),
        &rev,
    );
    let known = |f: &Failure| {
        set.status.as_ref().is_some_and(|s| {
            s.plugins
                .iter()
                .any(|p| p.name == f.plugin && p.last_error.as_deref() == Some(&f.message))
        })
    };
    plan.new_failures = failures
        .iter()
        .filter(|f| !known(f))
        .map(|f| (f.plugin.clone(), f.reason))
        .collect();
    let mut again = recheck(
        set,
        &status,
        &failures,
        hold.as_ref(),
        decision.as_ref(),
        &now,
    );
    if effective.iter().any(|b| !b.signals.is_empty()) {
        again = again.min(o.signal_interval.max(Duration::from_millis(200)));
    }
    plan.recheck = Some(again);
    plan.status = Some(status);
    plan.target = Some(target);
    plan.violations = violations;
    plan.failures = failures;
    plan
}

/// Why the set is to be aborted, when its `abort` annotation applies to
/// the set's revision (`revs`: hashed and adopted): always without
/// `abort-revision`, else only for that one
/// (so a spec change rolls forward again without anyone removing it).
fn abort_request(set: &DisaggregatedSet, revs: &[&str]) -> Option<String> {
    let annotations = set.metadata.annotations.as_ref()?;
    let why = annotations.get(keys::ABORT)?;
    if annotations
        .get(keys::ABORT_REVISION)
        .is_some_and(|r| !r.is_empty() && !revs.contains(&r.as_str()))
    {
        return None;
    }
    Some(if why.trim().is_empty() {
        "abort requested".to_string()
    } else {
        truncate(why.trim(), 512)
    })
}

/// The hold of a `paused` set that is about to take a rollout step (an abort
/// is never paused: it is what a pause is for getting out of).
fn pause_request(set: &DisaggregatedSet, d: &Decision) -> Option<(Hold, Duration)> {
    let why = set.metadata.annotations.as_ref()?.get(keys::PAUSED)?;
    let stepping = d
        .slices
        .iter()
        .any(|s| s.state == SliceState::Stepping && s.aborted_to.is_none());
    stepping.then(|| {
        let reason = if why.trim().is_empty() {
            "paused".to_string()
        } else {
            truncate(why.trim(), 512)
        };
        let hold = Hold {
            gate: "paused".to_string(),
            reason,
        };
        (hold, STEADY_RECHECK)
    })
}

/// `SignalsReady`, on sets whose bindings declare signals: whether every
/// signal had samples to give (an empty result counts: it is an answer).
fn signals_ready(set: &DisaggregatedSet, evaluator: &Evaluator<'_>, now: &Time) -> Condition {
    let previous = set
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let errors = evaluator.errors();
    let (ok, reason, message) = if errors.is_empty() {
        (true, "Evaluated", "every signal was evaluated".to_string())
    } else {
        let list: Vec<String> = errors
            .iter()
            .map(|(n, why)| format!("{n}: {why}"))
            .collect();
        (false, "SignalUnavailable", truncate(&list.join("; "), 2048))
    };
    status::condition(
        previous,
        conditions::SIGNALS_READY,
        ok,
        reason,
        message,
        set.metadata.generation,
        now,
    )
}

/// When each role's desired replicas last changed, from the set's status
/// (for scale requests' `last-scaled-ms`).
fn last_scaled(set: &DisaggregatedSet) -> BTreeMap<String, u64> {
    set.status
        .iter()
        .flat_map(|s| &s.role_statuses)
        .filter_map(|r| {
            let t = r.last_scale_time.as_ref()?;
            Some((r.name.clone(), t.0.as_millisecond().max(0) as u64))
        })
        .collect()
}

/// When to decide again with nothing changed.
fn recheck(
    set: &DisaggregatedSet,
    status: &DisaggregatedSetStatus,
    failures: &[Failure],
    hold: Option<&(Hold, Duration)>,
    decision: Option<&Decision>,
    now: &Time,
) -> Duration {
    let rolling = decision.is_some_and(|d| d.slices.iter().any(|s| s.rolling()));
    if failures.iter().any(|f| f.retry) {
        RETRY_RECHECK
    } else if let Some((_, recheck)) = hold {
        (*recheck).max(Duration::from_millis(200))
    } else if rolling {
        // Look again when the progress deadline passes, to report Degraded on time.
        status::until_progress_deadline(status, set.spec.progress_deadline_seconds, now)
            .map_or(ROLLING_RECHECK, |d| d.min(ROLLING_RECHECK))
    } else {
        STEADY_RECHECK
    }
}
