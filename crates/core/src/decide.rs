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

use crate::bindings::{self, Bound, DefaultBinding, Failure};
use crate::execute::{self, Action, Child, Decision, SliceState, Target, target_for};
use crate::plugins::{GateRequest, PluginError, Plugins, RoleStep, Violation};
use crate::render::{is_controlled_by, owner_reference, render_child};
use crate::revision::revision;
use crate::status::{self, Hold, Observation, conditions};
use crate::text::truncate;
use disagg_api::keys;
use disagg_api::lws::LeaderWorkerSet;
use disagg_api::scaler::{DisaggregatedSetRoleScaler, DisaggregatedSetRoleScalerSpec};
use disagg_api::set::{DisaggregatedSet, DisaggregatedSetStatus, PluginStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::time::Duration;

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
    pub now: Timestamp,
}

/// One API write.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// A plain create: an object that already holds the name is never adopted.
    CreateScaler(Box<DisaggregatedSetRoleScaler>),
    /// A merge patch of a scaler's status subresource.
    ScalerStatus {
        name: String,
        replicas: i32,
        selector: String,
        observed_generation: Option<i64>,
    },
    DeleteScaler {
        name: String,
    },
    /// A plain create, like [`Write::CreateScaler`].
    CreateChild(Box<LeaderWorkerSet>),
    /// A merge patch of `spec.replicas`.
    ScaleChild {
        name: String,
        replicas: i32,
    },
    /// A merge patch setting (`Some`) or removing the `initial-replicas` annotation.
    AnnotateChild {
        name: String,
        initial_replicas: Option<i32>,
    },
    DeleteChild {
        name: String,
    },
}

/// A child's role and slice. A child write the API server refuses stops the
/// rest of its scope's writes in this reconcile (their order keeps the
/// rollout's bounds), not other roles' or slices'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub role: String,
    pub slice: i32,
}

/// A write and the child scope it belongs to (none for scalers and for
/// children outside the set's slices).
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub write: Write,
    pub scope: Option<Scope>,
}

impl Write {
    /// The name of the object written.
    pub fn object(&self) -> &str {
        match self {
            Write::CreateScaler(s) => s.metadata.name.as_deref().unwrap_or_default(),
            Write::CreateChild(c) => c.metadata.name.as_deref().unwrap_or_default(),
            Write::ScalerStatus { name, .. }
            | Write::DeleteScaler { name }
            | Write::ScaleChild { name, .. }
            | Write::AnnotateChild { name, .. }
            | Write::DeleteChild { name } => name,
        }
    }

    /// Whether it writes a child LeaderWorkerSet.
    pub fn is_child(&self) -> bool {
        matches!(
            self,
            Write::CreateChild(_)
                | Write::ScaleChild { .. }
                | Write::AnnotateChild { .. }
                | Write::DeleteChild { .. }
        )
    }

    /// How a refusal of it is described: "cannot scale LeaderWorkerSet x: why".
    pub fn refused(&self, why: &str) -> String {
        let verb = match self {
            Write::CreateScaler(_) | Write::CreateChild(_) => "cannot create",
            Write::ScaleChild { .. } => "cannot scale",
            Write::AnnotateChild { .. } => "cannot annotate",
            Write::ScalerStatus { .. } => "cannot update the status of",
            Write::DeleteScaler { .. } | Write::DeleteChild { .. } => "cannot delete",
        };
        let kind = if self.is_child() {
            "LeaderWorkerSet"
        } else {
            "DisaggregatedSetRoleScaler"
        };
        format!("{verb} {kind} {}: {why}", self.object())
    }

    /// The Event recorded once it succeeded (a delete of an object already
    /// gone records none; the executor knows).
    pub fn event(&self) -> Option<Event> {
        let normal = |reason, action, note| Some(Event::normal(reason, action, note));
        match self {
            Write::CreateScaler(s) => normal(
                "CreatedScaler",
                "Scale",
                format!(
                    "created DisaggregatedSetRoleScaler {} for External role {} at {} replicas",
                    self.object(),
                    s.labels().get(keys::ROLE).cloned().unwrap_or_default(),
                    s.spec.replicas
                ),
            ),
            Write::DeleteScaler { name } => normal(
                "DeletedScaler",
                "Scale",
                format!(
                    "deleted DisaggregatedSetRoleScaler {name}: its role is no longer External"
                ),
            ),
            Write::CreateChild(c) => {
                let label = |k: &str| c.labels().get(k).cloned().unwrap_or_default();
                normal(
                    "CreatedChild",
                    "Rollout",
                    format!(
                        "created LeaderWorkerSet {} (role {}, slice {}, revision {}) at {} replicas",
                        self.object(),
                        label(keys::ROLE),
                        label(keys::SLICE),
                        label(keys::REVISION),
                        c.spec.replicas
                    ),
                )
            }
            Write::ScaleChild { name, replicas } => normal(
                "ScaledChild",
                "Rollout",
                format!("scaled LeaderWorkerSet {name} to {replicas} replicas"),
            ),
            Write::DeleteChild { name } => normal(
                "DeletedChild",
                "Rollout",
                format!("deleted LeaderWorkerSet {name}"),
            ),
            Write::ScalerStatus { .. } | Write::AnnotateChild { .. } => None,
        }
    }
}

/// An Event on the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

impl Event {
    fn normal(reason: &'static str, action: &'static str, note: String) -> Event {
        Event {
            warning: false,
            reason,
            action,
            note,
        }
    }

    fn warning(reason: &'static str, action: &'static str, note: String) -> Event {
        Event {
            warning: true,
            ..Event::normal(reason, action, note)
        }
    }
}

/// A child write the API server refused, or one waiting out its backoff after that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFailure {
    pub child: String,
    /// From [`Write::refused`].
    pub message: String,
    pub retry_in: Duration,
    /// Refused in this reconcile (not only waiting): worth an Event.
    pub new: bool,
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
    let set_json = serde_json::to_string(set).expect("a set serialises");
    let mut violations = disagg_api::validate::validate(set);
    violations.extend(bindings::overrides(o.defaults, &set.spec.plugins));
    violations.extend(scaler_violations(set, &scaled));
    if violations.is_empty() {
        let (v, f) = bindings::validate(set, &set_json, &bound);
        violations.extend(v);
        failures.extend(f);
    }
    let rev = revision(&set.spec, &bindings::template_plugins(&bound));
    let mut target = target_for(set, &rev, |r| {
        scaled.get(&r.name).copied().unwrap_or(r.spec.replicas)
    });
    let mut decision = None;
    let mut hold = None;
    if violations.is_empty() {
        // Scaling hooks adjust the targets.
        let observed = observed_replicas(&target, &children);
        let mut desired: BTreeMap<String, i32> = target
            .roles
            .iter()
            .map(|r| (r.name.clone(), r.replicas))
            .collect();
        failures.extend(bindings::scale(
            set,
            &set_json,
            &bound,
            &mut desired,
            &observed,
        ));
        for r in &mut target.roles {
            if let Some(d) = desired.get(&r.name) {
                r.replicas = *d;
            }
        }
        let d = execute::decide(&target, &children);
        let (held, gate_failures) = gates(set, &bound, &d, &children, &rev, o.now);
        failures.extend(gate_failures);
        hold = held;
        let mut writes = child_writes(set, &set_json, &bound, &d, &children, &rev, hold.is_some());
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
        plan.writes
            .extend(writes.writes.into_iter().filter(|p| !blocked(&p.scope)));
        decision = Some(d);
    }

    let mut status = status::compute(&Observation {
        generation: set.metadata.generation,
        target: &target,
        children: &children,
        decision: decision.as_ref(),
        violations: &violations,
        hold: hold.as_ref().map(|(h, _)| h),
        progress_deadline_seconds: set.spec.progress_deadline_seconds,
        previous: set.status.as_ref(),
        now: now.clone(),
    });
    status.plugins = effective
        .iter()
        .map(|b| PluginStatus {
            name: b.name.clone(),
            digest: o.plugins.get(&b.name).map(|p| p.digest().to_string()),
            last_error: o.plugins.refused(&b.name).or_else(|| {
                failures
                    .iter()
                    .find(|f| f.plugin == b.name)
                    .map(|f| f.message.clone())
            }),
        })
        .collect();
    let refused: Vec<String> = effective
        .iter()
        .filter_map(|b| {
            let error = o.plugins.refused(&b.name)?;
            Some(match o.plugins.get(&b.name) {
                Some(good) => format!(
                    "{}: the newest component was refused ({error}); {} stays in use",
                    b.name,
                    good.digest()
                ),
                None => format!("{}: the component was refused ({error})", b.name),
            })
        })
        .collect();
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
    let rolling = decision
        .as_ref()
        .is_some_and(|d| d.slices.iter().any(|s| s.rolling()));
    plan.recheck = Some(if failures.iter().any(|f| f.retry) {
        RETRY_RECHECK
    } else if let Some((_, recheck)) = &hold {
        (*recheck).max(Duration::from_millis(200))
    } else if rolling {
        // Look again when the progress deadline passes, to report Degraded on time.
        status::until_progress_deadline(&status, set.spec.progress_deadline_seconds, &now)
            .map_or(ROLLING_RECHECK, |d| d.min(ROLLING_RECHECK))
    } else {
        STEADY_RECHECK
    });
    plan.status = Some(status);
    plan.target = Some(target);
    plan.violations = violations;
    plan.failures = failures;
    plan
}

/// While a set waits for a plugin still compiling, its status is what it
/// was; after a moment, `PluginsReady=False` says which plugin it waits for.
fn waiting_for(
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

/// The scaler of every External role that lacks one is created (seeded with
/// the role's replicas), this set's scalers of roles that are no longer
/// External are deleted, and the status of the others is kept current.
/// Returns the writes and the replicas each External role asks for.
fn scalers(
    set: &DisaggregatedSet,
    existing: &[DisaggregatedSetRoleScaler],
    children: &[Child],
) -> (Vec<Planned>, BTreeMap<String, i32>) {
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let mut writes = Vec::new();
    let mut replicas = BTreeMap::new();
    let planned = |write| Planned { write, scope: None };
    for role in set.spec.roles.iter().filter(|r| r.is_external()) {
        let scaler_name = format!("{name}-{}", role.name);
        let Some(scaler) = existing
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&scaler_name))
        else {
            let mut s = DisaggregatedSetRoleScaler::new(
                &scaler_name,
                DisaggregatedSetRoleScalerSpec {
                    replicas: role.spec.replicas,
                },
            );
            s.metadata.namespace = set.namespace();
            s.metadata.owner_references = Some(vec![owner_reference(set)]);
            s.metadata.labels = Some(BTreeMap::from([
                (keys::NAME.to_string(), name.clone()),
                (keys::ROLE.to_string(), role.name.clone()),
            ]));
            writes.push(planned(Write::CreateScaler(Box::new(s))));
            replicas.insert(role.name.clone(), role.spec.replicas);
            continue;
        };
        // A scaler of that name this set does not control is left alone.
        if !is_controlled_by(&scaler.metadata, &uid) {
            replicas.insert(role.name.clone(), role.spec.replicas);
            continue;
        }
        replicas.insert(role.name.clone(), scaler.spec.replicas);
        let observed: i32 = children
            .iter()
            .filter(|c| c.owned && c.role == role.name)
            .map(|c| c.status_replicas)
            .sum();
        let selector = format!(
            "{}={name},{}={},leaderworkerset.sigs.k8s.io/worker-index=0",
            keys::NAME,
            keys::ROLE,
            role.name
        );
        let status = scaler.status.clone().unwrap_or_default();
        if status.replicas != Some(observed) || status.selector.as_deref() != Some(&selector) {
            writes.push(planned(Write::ScalerStatus {
                name: scaler_name,
                replicas: observed,
                selector,
                observed_generation: scaler.metadata.generation,
            }));
        }
    }
    for stale in existing.iter().filter(|s| {
        let role = s.labels().get(keys::ROLE).cloned().unwrap_or_default();
        is_controlled_by(&s.metadata, &uid)
            && !set
                .spec
                .roles
                .iter()
                .any(|r| r.is_external() && r.name == role)
    }) {
        writes.push(planned(Write::DeleteScaler {
            name: stale.name_any(),
        }));
    }
    (writes, replicas)
}

/// A scaler's schema is upstream's (no maximum); the operator's bound holds here.
fn scaler_violations(set: &DisaggregatedSet, scaled: &BTreeMap<String, i32>) -> Vec<Violation> {
    use disagg_api::limits::MAX_REPLICAS;
    scaled
        .iter()
        .filter(|(_, replicas)| !(0..=MAX_REPLICAS).contains(*replicas))
        .map(|(role, replicas)| Violation {
            field: format!(
                "DisaggregatedSetRoleScaler {}-{role}: spec.replicas",
                set.name_any()
            ),
            message: format!("must be between 0 and {MAX_REPLICAS}, is {replicas}"),
        })
        .collect()
}

/// `(status.replicas, readyReplicas)` over each role's children.
fn observed_replicas(target: &Target, children: &[Child]) -> BTreeMap<String, (i32, i32)> {
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

/// Asks the gates about every slice about to take a rollout step; the first
/// hold wins, with when to ask again.
fn gates(
    set: &DisaggregatedSet,
    bound: &[Bound],
    decision: &Decision,
    children: &[Child],
    rev: &str,
    now: Timestamp,
) -> (Option<(Hold, Duration)>, Vec<Failure>) {
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
        .filter(|s| s.state == SliceState::Stepping)
    {
        let ready = |role: &str| {
            children
                .iter()
                .filter(|c| {
                    c.owned && c.slice == slice.slice && c.role == role && c.revision == rev
                })
                .all(Child::is_ready)
        };
        let request = GateRequest {
            set_name: set.name_any(),
            namespace: set.namespace().unwrap_or_default(),
            labels: set.labels().clone().into_iter().collect(),
            annotations: set.annotations().clone().into_iter().collect(),
            revision: rev.to_string(),
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
        };
        let (held, gate_failures) = bindings::gate(bound, &request);
        failures.extend(gate_failures);
        if let Some((gate, reason, recheck_ms)) = held {
            let hold = Hold { gate, reason };
            return (Some((hold, Duration::from_millis(recheck_ms))), failures);
        }
    }
    (None, failures)
}

/// The child writes of a decision, children to create rendered through the
/// patch hooks. While a gate holds, the stepping slices' writes wait.
struct ChildWrites {
    writes: Vec<Planned>,
    /// Patch hooks that failed (a child a Fail plugin could not patch is not created).
    failures: Vec<Failure>,
}

fn child_writes(
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
        .filter(|s| !(held && s.state == SliceState::Stepping));
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
            Action::SetInitialReplicas { name, value } => (
                Write::AnnotateChild {
                    name: name.clone(),
                    initial_replicas: *value,
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

/// `PluginsReady`: true while every bound plugin is loaded and answering.
fn plugins_ready(
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
fn events(
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
