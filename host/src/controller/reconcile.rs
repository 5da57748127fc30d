//! One reconcile of one DisaggregatedSet: observe (children, scalers), decide
//! (the pure core plus plugins, off the async threads), act (API writes), and
//! report (status, Events). Every write is idempotent and derived from what is
//! observed, so a reconcile interrupted anywhere is finished by the next one.

use super::{Context, Error};
use crate::api::keys;
use crate::api::lws::LeaderWorkerSet;
use crate::api::scaler::{DisaggregatedSetRoleScaler, DisaggregatedSetRoleScalerSpec};
use crate::api::set::{DisaggregatedSet, DisaggregatedSetStatus, PluginBinding, PluginStatus};
use crate::api::validate::Violation;
use crate::core::execute::{Action, Child, Decision, SliceState, Target, decide, target_for};
use crate::core::render::{is_controlled_by, owner_reference, render_child};
use crate::core::revision::revision;
use crate::core::status::{self, Hold, Observation, conditions};
use crate::plugin::bindings::{self, Failure};
use crate::plugin::{GateInput, RoleStep};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often a set mid-rollout is looked at again without any change (for
/// `progressDeadlineSeconds`); changes to its children wake it sooner.
const ROLLING_RECHECK: Duration = Duration::from_secs(15);
/// A plugin load that has run this long is shown on the sets waiting for it.
const REPORT_LOADING_AFTER: Duration = Duration::from_secs(2);
/// A periodic resync of a settled set (reads only).
const STEADY_RECHECK: Duration = Duration::from_secs(300);

/// What the decide phase concluded.
struct Plan {
    violations: Vec<Violation>,
    failures: Vec<Failure>,
    /// Bound plugins whose newest component was refused (the last good one
    /// runs): reported in PluginsReady, changes nothing.
    refused: Vec<String>,
    plugins: Vec<PluginStatus>,
    target: Target,
    decision: Option<Decision>,
    hold: Option<(Hold, Duration)>,
    /// Rendered children for the Create actions, by name (a child a Fail
    /// plugin refused to patch is absent, and its role blocked).
    rendered: BTreeMap<String, LeaderWorkerSet>,
    /// Roles whose changes a Fail-policy failure stops.
    blocked_roles: Vec<String>,
    blocked_all: bool,
}

/// A child write that failed with an API error (403, 422, a webhook's or a
/// quota's denial, …), or waits out its backoff after one.
struct WriteFailure {
    child: String,
    message: String,
    retry_in: Duration,
    /// Failed in this reconcile (not only waiting): worth an Event.
    new: bool,
}

impl WriteFailure {
    fn waiting(child: &str, retry_in: Duration, message: String) -> WriteFailure {
        WriteFailure {
            child: child.to_string(),
            message,
            retry_in,
            new: false,
        }
    }
}

/// What the API server said when it refused a write for good (not a
/// conflict, which is retried at once, nor a transport error).
fn refusal(e: &Error) -> Option<String> {
    match e {
        Error::Kube(kube::Error::Api(s)) if s.code != 409 => {
            Some(format!("{} ({} {})", s.message, s.code, s.reason))
        }
        Error::Refused(message) => Some(message.clone()),
        _ => None,
    }
}

fn action_verb(action: &Action) -> &'static str {
    match action {
        Action::Create { .. } => "cannot create",
        Action::Scale { .. } => "cannot scale",
        Action::SetInitialReplicas { .. } => "cannot annotate",
        Action::Delete { .. } => "cannot delete",
    }
}

pub async fn reconcile(set: Arc<DisaggregatedSet>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = std::time::Instant::now();
    let _running = ctx.health.reconciling(format!(
        "{}/{}",
        set.namespace().unwrap_or_default(),
        set.name_any()
    ));
    let result = reconcile_inner(&set, &ctx).await;
    ctx.metrics
        .reconciled(started.elapsed(), result.as_ref().err());
    result
}

async fn reconcile_inner(
    set: &Arc<DisaggregatedSet>,
    ctx: &Arc<Context>,
) -> Result<Requeue, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        // Garbage collection takes the children with the set.
        return Ok(Requeue::await_change());
    }
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let lws_api: Api<LeaderWorkerSet> = Api::namespaced(ctx.client.clone(), &ns);
    let scaler_api: Api<DisaggregatedSetRoleScaler> = Api::namespaced(ctx.client.clone(), &ns);

    // A bound plugin with no component yet, but one compiling: decide nothing
    // until it is there (deciding without it would compute another revision).
    // Loads are short; one that is not shows on the set after a moment.
    let effective = bindings::effective(&ctx.default_plugins, &set.spec.plugins);
    let loading: Vec<(String, Duration)> = effective
        .iter()
        .filter(|b| ctx.plugins.get(&b.name).is_none())
        .filter_map(|b| Some((b.name.clone(), ctx.plugins.loading_for(&b.name)?)))
        .collect();
    if !loading.is_empty() {
        if loading.iter().any(|(_, took)| *took > REPORT_LOADING_AFTER) {
            report_loading(set, ctx, &loading).await?;
        }
        return Ok(Requeue::requeue(Duration::from_millis(500)));
    }

    // Observe.
    let selector = format!("{}={name}", keys::NAME);
    let lws_list = lws_api
        .list(&ListParams::default().labels(&selector))
        .await?;
    let children: Vec<Child> = lws_list
        .items
        .iter()
        .filter_map(|l| Child::from_lws(l, &uid))
        .collect();
    let scalers = ensure_scalers(set, ctx, &scaler_api, &children).await?;

    // Decide (plugins run here: blocking work off the async threads).
    let plan = {
        let (set, ctx, children) = (set.clone(), ctx.clone(), children.clone());
        tokio::task::spawn_blocking(move || plan(&set, &ctx, &effective, &children, &scalers))
            .await
            .map_err(|e| Error::Internal(format!("the decide task failed: {e}")))?
    };

    // Act. A write that fails stops the rest of its role's writes in its
    // slice (their order keeps the rollout's bounds), not other roles or
    // slices; the object backs off on its own, and the set reports it.
    let mut write_failures: Vec<WriteFailure> = Vec::new();
    if let Some(decision) = &plan.decision {
        let role_of: BTreeMap<&str, (&str, i32)> = children
            .iter()
            .map(|c| (c.name.as_str(), (c.role.as_str(), c.slice)))
            .collect();
        let held_slices: Vec<i32> = match &plan.hold {
            Some(_) => decision
                .slices
                .iter()
                .filter(|s| s.state == SliceState::Stepping)
                .map(|s| s.slice)
                .collect(),
            None => Vec::new(),
        };
        let actions = decision.removed_slices.iter().chain(
            decision
                .slices
                .iter()
                .filter(|s| !held_slices.contains(&s.slice))
                .flat_map(|s| &s.actions),
        );
        let mut stopped: Vec<(String, i32)> = Vec::new();
        for action in actions {
            let (target, role) = match action {
                Action::Create { role, slice, .. } => (
                    crate::core::render::child_name(&name, *slice, &plan.target.revision, role),
                    Some((role.as_str(), *slice)),
                ),
                Action::Scale { name, .. }
                | Action::SetInitialReplicas { name, .. }
                | Action::Delete { name } => (name.clone(), role_of.get(name.as_str()).copied()),
            };
            if plan.blocked_all
                || role.is_some_and(|(r, _)| plan.blocked_roles.iter().any(|b| b == r))
                || role.is_some_and(|(r, s)| stopped.iter().any(|(sr, ss)| sr == r && *ss == s))
            {
                continue;
            }
            let key = format!("{ns}/{target}");
            if let Some(wait) = ctx.backoff.waiting(&key) {
                write_failures.push(WriteFailure::waiting(&target, wait, ctx.backoff.last(&key)));
                if let Some((r, s)) = role {
                    stopped.push((r.to_string(), s));
                }
                continue;
            }
            match execute(set, ctx, &lws_api, &plan, action).await {
                Ok(()) => ctx.backoff.succeeded(&key),
                Err(e) if refusal(&e).is_some() => {
                    let message = format!(
                        "{} LeaderWorkerSet {target}: {}",
                        action_verb(action),
                        refusal(&e).unwrap_or_default()
                    );
                    let wait = ctx.backoff.failed(&key, &message);
                    write_failures.push(WriteFailure {
                        child: target.clone(),
                        message,
                        retry_in: wait,
                        new: true,
                    });
                    if let Some((r, s)) = role {
                        stopped.push((r.to_string(), s));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    // Report.
    let (status, now) = report(set, ctx, &plan, &children, &write_failures).await?;
    if let Some(soonest) = write_failures.iter().map(|w| w.retry_in).min() {
        return Ok(Requeue::requeue(soonest.max(Duration::from_millis(100))));
    }
    let rolling = plan
        .decision
        .as_ref()
        .is_some_and(|d| d.slices.iter().any(|s| s.rolling()));
    if plan.failures.iter().any(|f| f.retry) {
        // A plugin that could not be asked (busy, compiling): ask again soon.
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    Ok(match (&plan.hold, rolling) {
        (Some((_, recheck)), _) => Requeue::requeue((*recheck).max(Duration::from_millis(200))),
        // Look again when the progress deadline passes, to report Degraded on time.
        (None, true) => Requeue::requeue(
            status::until_progress_deadline(&status, set.spec.progress_deadline_seconds, &now)
                .map_or(ROLLING_RECHECK, |d| d.min(ROLLING_RECHECK)),
        ),
        (None, false) => Requeue::requeue(STEADY_RECHECK),
    })
}

/// Creates the scaler of every External role that lacks one (seeded with the
/// role's replicas), deletes this set's scalers of roles that are no longer
/// External, keeps their status current, and returns their replicas by role.
async fn ensure_scalers(
    set: &DisaggregatedSet,
    ctx: &Context,
    api: &Api<DisaggregatedSetRoleScaler>,
    children: &[Child],
) -> Result<BTreeMap<String, i32>, Error> {
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let mut replicas = BTreeMap::new();
    let selector = format!("{}={name}", keys::NAME);
    let existing = api.list(&ListParams::default().labels(&selector)).await?;
    for role in set.spec.roles.iter().filter(|r| r.is_external()) {
        let scaler_name = format!("{name}-{}", role.name);
        let current = existing
            .items
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&scaler_name));
        let scaler = match current {
            Some(s) => s.clone(),
            None => {
                let mut s = DisaggregatedSetRoleScaler::new(
                    &scaler_name,
                    DisaggregatedSetRoleScalerSpec {
                        replicas: role.spec.replicas,
                    },
                );
                s.metadata.owner_references = Some(vec![owner_reference(set)]);
                s.metadata.labels = Some(BTreeMap::from([
                    (keys::NAME.to_string(), name.clone()),
                    (keys::ROLE.to_string(), role.name.clone()),
                ]));
                match api.create(&PostParams::default(), &s).await {
                    Ok(created) => {
                        ctx.event(set, EventType::Normal, "CreatedScaler", "Scale",
                                  format!("created DisaggregatedSetRoleScaler {scaler_name} for External role {} at {} replicas", role.name, role.spec.replicas)).await;
                        created
                    }
                    // Created meanwhile (by another reconcile of ours, or a user).
                    Err(kube::Error::Api(e)) if e.code == 409 => api.get(&scaler_name).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let controlled = is_controlled_by(&scaler.metadata, &uid);
        let wanted = if controlled {
            scaler.spec.replicas
        } else {
            role.spec.replicas
        };
        replicas.insert(role.name.clone(), wanted);
        if controlled {
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
                let body = json!({"status": {"replicas": observed, "selector": selector,
                                             "observedGeneration": scaler.metadata.generation}});
                api.patch_status(&scaler_name, &ctx.patch_params(), &Patch::Merge(body))
                    .await?;
            }
        }
    }
    for stale in existing.items.iter().filter(|s| {
        let role = s.labels().get(keys::ROLE).cloned().unwrap_or_default();
        is_controlled_by(&s.metadata, &uid)
            && !set
                .spec
                .roles
                .iter()
                .any(|r| r.is_external() && r.name == role)
    }) {
        let stale_name = stale.name_any();
        if existed(api.delete(&stale_name, &DeleteParams::background()).await)? {
            ctx.event(set, EventType::Normal, "DeletedScaler", "Scale",
                      format!("deleted DisaggregatedSetRoleScaler {stale_name}: its role is no longer External")).await
        }
    }
    Ok(replicas)
}

/// The decide phase: validation, plugins, the planner, gates and rendering.
fn plan(
    set: &DisaggregatedSet,
    ctx: &Context,
    effective: &[PluginBinding],
    children: &[Child],
    scalers: &BTreeMap<String, i32>,
) -> Plan {
    let rt = ctx.plugins.runtime();
    let (bound, mut failures) = bindings::resolve(effective, |n| ctx.plugins.get(n));
    // A plugin still compiling is not missing: wait for it, whatever the policy.
    for f in &mut failures {
        if f.reason == "PluginMissing" && ctx.plugins.loading_for(&f.plugin).is_some() {
            let e = crate::plugin::PluginError::Loading {
                plugin: f.plugin.clone(),
            };
            (f.reason, f.message, f.retry) = (e.reason(), e.to_string(), true);
        }
    }
    let mut violations = crate::api::validate::validate(set);
    violations.extend(bindings::overrides(&ctx.default_plugins, &set.spec.plugins));
    // A scaler's schema is upstream's (no maximum); the operator's bound holds here.
    for (role, replicas) in scalers {
        if !(0..=crate::api::limits::MAX_REPLICAS).contains(replicas) {
            violations.push(Violation {
                field: format!(
                    "DisaggregatedSetRoleScaler {}-{role}: spec.replicas",
                    set.name_any()
                ),
                message: format!(
                    "must be between 0 and {}, is {replicas}",
                    crate::api::limits::MAX_REPLICAS
                ),
            });
        }
    }
    if violations.is_empty() {
        let (v, f) = bindings::validate(rt, set, &bound);
        violations.extend(v);
        failures.extend(f);
    }
    let template = bindings::template_plugins(&bound);
    let rev = revision(&set.spec, &template);
    let mut target = target_for(set, &rev, |r| {
        scalers.get(&r.name).copied().unwrap_or(r.spec.replicas)
    });
    let plugins = effective
        .iter()
        .map(|b| PluginStatus {
            name: b.name.clone(),
            digest: ctx.plugins.get(&b.name).map(|p| p.digest.clone()),
            last_error: ctx.plugins.error(&b.name).or_else(|| {
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
            let error = ctx.plugins.error(&b.name)?;
            Some(match ctx.plugins.get(&b.name) {
                Some(good) => format!(
                    "{}: the newest component was refused ({error}); {} stays in use",
                    b.name, good.digest
                ),
                None => format!("{}: the component was refused ({error})", b.name),
            })
        })
        .collect();
    if !violations.is_empty() {
        return Plan {
            violations,
            failures,
            refused,
            plugins,
            target,
            decision: None,
            hold: None,
            rendered: BTreeMap::new(),
            blocked_roles: Vec::new(),
            blocked_all: true,
        };
    }

    // Scaling hooks adjust the targets.
    let mut desired: BTreeMap<String, i32> = target
        .roles
        .iter()
        .map(|r| (r.name.clone(), r.replicas))
        .collect();
    let observed: BTreeMap<String, (i32, i32)> = target
        .roles
        .iter()
        .map(|r| {
            let of = children.iter().filter(|c| c.owned && c.role == r.name);
            (
                r.name.clone(),
                (
                    of.clone().map(|c| c.status_replicas).sum(),
                    of.map(|c| c.ready_replicas).sum(),
                ),
            )
        })
        .collect();
    failures.extend(bindings::scale(rt, set, &bound, &mut desired, &observed));
    for r in &mut target.roles {
        if let Some(d) = desired.get(&r.name) {
            r.replicas = *d;
        }
    }

    let decision = decide(&target, children);

    // Gates, before every rollout step.
    let mut hold = None;
    let now = k8s_openapi::jiff::Timestamp::now();
    for slice in decision
        .slices
        .iter()
        .filter(|s| s.state == SliceState::Stepping)
    {
        let since = set
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .and_then(|r| r.last_progress_time.as_ref())
            .map(|t| t.0);
        let input = GateInput {
            set_name: set.name_any(),
            namespace: set.namespace().unwrap_or_default(),
            labels: set.labels().clone().into_iter().collect(),
            annotations: set.annotations().clone().into_iter().collect(),
            revision: rev.clone(),
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
                    ready: children
                        .iter()
                        .filter(|c| {
                            c.owned
                                && c.slice == slice.slice
                                && c.role == p.name
                                && c.revision == rev
                        })
                        .all(Child::is_ready),
                })
                .collect(),
            held_for_ms: since
                .map(|t| (now.as_millisecond() - t.as_millisecond()).max(0) as u64)
                .unwrap_or(0),
            now_ms: now.as_millisecond().max(0) as u64,
            config: String::new(),
        };
        let (held, gate_failures) = bindings::gate(rt, &bound, &input);
        failures.extend(gate_failures);
        if let Some((gate, reason, recheck_ms)) = held {
            hold = Some((Hold { gate, reason }, Duration::from_millis(recheck_ms)));
            break;
        }
    }

    // Fail-policy failures stop the roles they concern (or the whole set).
    let blocked_all = failures.iter().any(|f| f.blocks() && f.role.is_none());
    let mut blocked_roles: Vec<String> = failures
        .iter()
        .filter(|f| f.blocks())
        .filter_map(|f| f.role.clone())
        .collect();

    // Render what is to be created, through the patch hooks.
    let set_json = serde_json::to_string(set).expect("a set serialises");
    let mut rendered = BTreeMap::new();
    for action in decision.actions() {
        let Action::Create {
            slice,
            role,
            replicas,
        } = action
        else {
            continue;
        };
        let Some(spec) = set.spec.roles.iter().find(|r| &r.name == role) else {
            continue;
        };
        let child = render_child(set, spec, *slice, &rev, *replicas);
        let name = child.metadata.name.clone().unwrap_or_default();
        let (result, skipped) = bindings::patch(rt, &set_json, &bound, role, *slice, &rev, child);
        failures.extend(skipped);
        match result {
            Ok(lws) => {
                rendered.insert(name, lws);
            }
            Err(f) => {
                blocked_roles.push(role.clone());
                failures.push(f);
            }
        }
    }
    Plan {
        violations,
        failures,
        refused,
        plugins,
        target,
        decision: Some(decision),
        hold,
        rendered,
        blocked_roles,
        blocked_all,
    }
}

/// One API write, and its Event.
async fn execute(
    set: &DisaggregatedSet,
    ctx: &Context,
    api: &Api<LeaderWorkerSet>,
    plan: &Plan,
    action: &Action,
) -> Result<(), Error> {
    let pp = ctx.patch_params();
    match action {
        Action::Create {
            slice,
            role,
            replicas,
        } => {
            let name = crate::core::render::child_name(
                &set.name_any(),
                *slice,
                &plan.target.revision,
                role,
            );
            let Some(lws) = plan.rendered.get(&name) else {
                return Ok(());
            };
            // A plain create: an object that already holds the name is never
            // taken over (server-side apply would adopt it).
            let params = PostParams {
                field_manager: Some(super::FIELD_MANAGER.into()),
                ..Default::default()
            };
            match api.create(&params, lws).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let existing = api.get(&name).await?;
                    if is_controlled_by(&existing.metadata, &set.uid().unwrap_or_default()) {
                        // Ours, created by an earlier reconcile our view had not seen yet.
                        return Ok(());
                    }
                    return Err(Error::Refused(format!(
                        "another object, not controlled by this set, already holds the name {name}; the operator never adopts it: delete or rename it (AlreadyExists)"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            ctx.metrics.step("create");
            ctx.event(set, EventType::Normal, "CreatedChild", "Rollout",
                      format!("created LeaderWorkerSet {name} (role {role}, slice {slice}, revision {}) at {replicas} replicas", plan.target.revision)).await;
        }
        Action::Scale { name, replicas } => {
            let patch = json!({"spec": {"replicas": replicas}});
            if !existed(api.patch(name, &pp, &Patch::Merge(patch)).await)? {
                return Ok(());
            }
            ctx.metrics.step("scale");
            ctx.event(
                set,
                EventType::Normal,
                "ScaledChild",
                "Rollout",
                format!("scaled LeaderWorkerSet {name} to {replicas} replicas"),
            )
            .await;
        }
        Action::SetInitialReplicas { name, value } => {
            let patch = json!({"metadata": {"annotations": {keys::INITIAL_REPLICAS: value.map(|v| v.to_string())}}});
            existed(api.patch(name, &pp, &Patch::Merge(patch)).await)?;
        }
        Action::Delete { name } => {
            if !existed(api.delete(name, &DeleteParams::background()).await)? {
                return Ok(());
            }
            ctx.metrics.step("delete");
            ctx.event(
                set,
                EventType::Normal,
                "DeletedChild",
                "Rollout",
                format!("deleted LeaderWorkerSet {name}"),
            )
            .await;
        }
    }
    Ok(())
}

/// Writes status when it changed, with Events for new holds and plugin
/// failures. Returns the status and the time it was computed at.
async fn report(
    set: &DisaggregatedSet,
    ctx: &Context,
    plan: &Plan,
    children: &[Child],
    write_failures: &[WriteFailure],
) -> Result<(DisaggregatedSetStatus, Time), Error> {
    let previous = set.status.as_ref();
    let hold = plan.hold.as_ref().map(|(h, _)| h);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut status = status::compute(&Observation {
        generation: set.metadata.generation,
        target: &plan.target,
        children,
        decision: plan.decision.as_ref(),
        violations: &plan.violations,
        hold,
        progress_deadline_seconds: set.spec.progress_deadline_seconds,
        previous,
        now: now.clone(),
    });
    status.plugins = plan.plugins.clone();
    let failing: Vec<String> = plan
        .failures
        .iter()
        .map(|f| {
            let hook = f.hook.map(|h| format!("{h}, ")).unwrap_or_default();
            match &f.role {
                Some(r) => format!(
                    "{} ({hook}role {r}, {:?}): {}",
                    f.plugin, f.policy, f.message
                ),
                None => format!("{} ({hook}{:?}): {}", f.plugin, f.policy, f.message),
            }
        })
        .chain(plan.refused.iter().cloned())
        .collect();
    let plugins_ready = status::condition(
        previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]),
        conditions::PLUGINS_READY,
        failing.is_empty(),
        // The first failure's own reason (PluginTimeout, PluginMissing, …).
        match plan.failures.first() {
            _ if failing.is_empty() => "PluginsLoaded",
            Some(f) => f.reason,
            None => "PluginRefused",
        },
        if failing.is_empty() {
            "every bound plugin is loaded and answering".into()
        } else {
            failing.join("; ")
        },
        set.metadata.generation,
        &now,
    );
    status.conditions.push(plugins_ready);
    // Like a Deployment's: present while child writes are refused.
    if !write_failures.is_empty() {
        // No countdown in the message: status changes only when what failed does.
        let mut list: Vec<String> = write_failures.iter().map(|w| w.message.clone()).collect();
        list.sort();
        list.dedup();
        status.conditions.push(status::condition(
            previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]),
            conditions::REPLICA_FAILURE,
            true,
            "FailedWrite",
            super::plugins::truncate(&list.join("; "), 2048),
            set.metadata.generation,
            &now,
        ));
    }
    for w in write_failures.iter().filter(|w| w.new) {
        ctx.event(
            set,
            EventType::Warning,
            "FailedWrite",
            "Rollout",
            format!(
                "{}; retrying in {} s",
                w.message,
                w.retry_in.as_secs().max(1)
            ),
        )
        .await;
        tracing::warn!(set = %set.name_any(), child = %w.child, "{}", w.message);
    }

    // Events for what changed since the last status.
    let was_held = previous
        .and_then(|p| p.rollout.as_ref())
        .and_then(|r| r.held_by.clone());
    if let Some(h) = hold
        && was_held.as_deref() != Some(h.gate.as_str())
    {
        ctx.event(
            set,
            EventType::Normal,
            "RolloutHeld",
            "Rollout",
            format!(
                "rollout to {} held by {}: {}",
                plan.target.revision, h.gate, h.reason
            ),
        )
        .await;
    }
    let previous_errors: Vec<&PluginStatus> = previous
        .map(|p| p.plugins.iter().collect())
        .unwrap_or_default();
    for f in &plan.failures {
        let known = previous_errors
            .iter()
            .any(|p| p.name == f.plugin && p.last_error.as_deref() == Some(f.message.as_str()));
        if !known {
            ctx.metrics.plugin_failure(&f.plugin, f.reason);
            ctx.event(
                set,
                EventType::Warning,
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
            )
            .await;
        }
    }
    if !plan.violations.is_empty() && previous.is_none_or(|p| !has_false(p, conditions::VALID)) {
        let list: Vec<String> = plan.violations.iter().map(ToString::to_string).collect();
        ctx.event(
            set,
            EventType::Warning,
            "Invalid",
            "Validate",
            list.join("; "),
        )
        .await;
    }

    if !same_status(previous, &status) {
        write_status(set, ctx, &status).await?;
    }
    Ok((status, now))
}

/// Server-side applies the set's status; a set deleted meanwhile has nothing
/// left to report on.
async fn write_status(
    set: &DisaggregatedSet,
    ctx: &Context,
    status: &DisaggregatedSetStatus,
) -> Result<(), Error> {
    let body = json!({
        "apiVersion": DisaggregatedSet::api_version(&()),
        "kind": DisaggregatedSet::kind(&()),
        "metadata": {"name": set.name_any(), "namespace": set.namespace()},
        "status": status,
    });
    existed(
        ctx.client_sets(set)
            .patch_status(&set.name_any(), &ctx.apply_params(), &Patch::Apply(body))
            .await,
    )?;
    Ok(())
}

/// While a set waits for a plugin still compiling, its status is what it
/// was, with `PluginsReady=False` saying which plugin it waits for.
async fn report_loading(
    set: &DisaggregatedSet,
    ctx: &Context,
    loading: &[(String, Duration)],
) -> Result<(), Error> {
    let previous = set.status.clone().unwrap_or_default();
    let list: Vec<String> = loading
        .iter()
        .map(|(name, _)| {
            crate::plugin::PluginError::Loading {
                plugin: name.clone(),
            }
            .to_string()
        })
        .collect();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let condition = status::condition(
        &previous.conditions,
        conditions::PLUGINS_READY,
        false,
        "PluginLoading",
        list.join("; "),
        set.metadata.generation,
        &now,
    );
    if previous.conditions.contains(&condition) {
        return Ok(());
    }
    let mut status = previous.clone();
    status
        .conditions
        .retain(|c| c.type_ != conditions::PLUGINS_READY);
    status.conditions.push(condition);
    write_status(set, ctx, &status).await
}

/// A write to an object that may have gone meanwhile: `Ok(false)` on 404
/// (nothing left to do), the error otherwise.
fn existed<T>(result: Result<T, kube::Error>) -> Result<bool, Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn has_false(status: &DisaggregatedSetStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "False")
}

/// Status equality, ignoring the order of conditions.
fn same_status(previous: Option<&DisaggregatedSetStatus>, next: &DisaggregatedSetStatus) -> bool {
    let Some(previous) = previous else {
        return false;
    };
    let mut a = previous.clone();
    let mut b = next.clone();
    a.conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
    b.conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
    a == b
}
