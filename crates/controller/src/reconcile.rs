//! One reconcile of one DisaggregatedSet: observe (its children and
//! scalers), decide ([`disagg_core::decide`]; with plugins, off the async
//! threads), execute the plan's writes, and report (status, Events). Every
//! write is idempotent and derived from what is observed, so a reconcile
//! interrupted anywhere is finished by the next one.

use super::cache::{Expectation, Kind};
use super::metrics::Ended;
use super::{Context, Error, FIELD_MANAGER};
use disagg_api::keys;
use disagg_api::lws::LeaderWorkerSet;
use disagg_api::scaler::DisaggregatedSetRoleScaler;
use disagg_api::set::{DisaggregatedSet, DisaggregatedSetStatus};
use disagg_core::decide::{self, Observed, Planned, Scope, Write, WriteFailure};
use disagg_core::render::is_controlled_by;
use kube::api::{Api, DeleteParams, Patch, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub async fn reconcile(set: Arc<DisaggregatedSet>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = std::time::Instant::now();
    let queued = ctx
        .queue
        .started(&set.namespace().unwrap_or_default(), &set.name_any())
        .unwrap_or(started);
    let _counted = ctx.metrics.running();
    let _running = ctx.health.reconciling(format!(
        "{}/{}",
        set.namespace().unwrap_or_default(),
        set.name_any()
    ));
    let result = reconcile_inner(&set, &ctx, queued).await;
    let ended = match &result {
        Ok(Ran::Decided(_)) => Ended::Decided,
        Ok(Ran::Deferred(_)) => Ended::Deferred,
        Err(e) => Ended::Failed(e),
    };
    ctx.metrics.reconciled(started.elapsed(), ended);
    result.map(|(Ran::Decided(then) | Ran::Deferred(then))| then)
}

/// How a reconcile that did not fail ended, and when to reconcile again.
enum Ran {
    /// It decided (and made what writes the decision called for).
    Decided(Requeue),
    /// It did not decide: the stores have not shown the set's last writes.
    Deferred(Requeue),
}

/// `queued`: when the watch event that caused this reconcile arrived.
async fn reconcile_inner(
    set: &Arc<DisaggregatedSet>,
    ctx: &Arc<Context>,
    queued: std::time::Instant,
) -> Result<Ran, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        // Garbage collection takes the children with the set.
        ctx.caches.forget(set);
        return Ok(Ran::Decided(Requeue::await_change()));
    }
    let ns = set.namespace().unwrap_or_default();
    let lws_api: Api<LeaderWorkerSet> = Api::namespaced(ctx.client.clone(), &ns);
    let scaler_api: Api<DisaggregatedSetRoleScaler> = Api::namespaced(ctx.client.clone(), &ns);

    // Observe, from the watches' stores: no API reads. Not before they have
    // listed once, nor while they have not shown this set's last writes.
    let listed = tokio::time::timeout(Duration::from_secs(10), ctx.caches.ready()).await;
    if !matches!(listed, Ok(true)) {
        return Err(Error::Internal(
            "the LeaderWorkerSet and RoleScaler watches have not listed yet (is the API server reachable, and may the operator list and watch both?)".into(),
        ));
    }
    if let Some(wait) = ctx.caches.unmet(set) {
        return Ok(Ran::Deferred(Requeue::requeue(wait)));
    }
    let set = &ctx.caches.freshest(set);
    let children = ctx.caches.children_of(set);
    let scalers = ctx.caches.scalers_of(set);

    // Decide. Plugin calls are blocking work (up to their deadline each):
    // off the async threads. A set bound to no plugin is decided in place,
    // microseconds of pure computation not worth two thread hand-offs. (A
    // set's effective bindings are empty exactly when there are no default
    // bindings and it has none of its own.)
    let plugins_bound = !(ctx.default_plugins.is_empty() && set.spec.plugins.is_empty());
    let decide = {
        let (set, ctx) = (set.clone(), ctx.clone());
        move || {
            let session = ctx.prometheus.as_ref().map(|p| p.session());
            let signals: &dyn disagg_core::signals::Signals = match &session {
                Some(s) => s,
                None => &disagg_core::signals::NoSignals,
            };
            decide::decide(&Observed {
                set: &set,
                children: &children,
                scalers: &scalers,
                defaults: &ctx.default_plugins,
                plugins: ctx.plugins.as_ref(),
                signals,
                signal_interval: ctx.signal_interval,
                now: k8s_openapi::jiff::Timestamp::now(),
            })
        }
    };
    let mut plan = if plugins_bound {
        tokio::task::spawn_blocking(decide)
            .await
            .map_err(|e| Error::Internal(format!("the decide task failed: {e}")))?
    } else {
        decide()
    };
    for (plugin, reason) in &plan.new_failures {
        ctx.metrics.plugin_failure(plugin, reason);
    }

    // Execute.
    let mut made = Made {
        queued,
        events: Vec::new(),
        first: true,
    };
    let executed = execute(set, ctx, &lws_api, &scaler_api, &plan.writes, &mut made).await;
    // Report. The Events of what was done, also when a later write failed.
    let report = |extra: &[decide::Event]| {
        let all = made.events.iter().chain(extra).cloned();
        for event in decide::Event::merge(all) {
            ctx.event(set, &event);
        }
    };
    let failed = match executed {
        Ok(Executed::Done(failed)) => failed,
        Ok(Executed::Raced) => {
            report(&[]);
            return Ok(Ran::Decided(Requeue::requeue(Duration::from_millis(100))));
        }
        Err(e) => {
            report(&[]);
            return Err(e);
        }
    };
    plan.after_writes(&failed);
    report(&plan.events);
    let mut recheck = plan.recheck;
    if let Some(status) = plan.status_update() {
        // A status that acknowledges a new generation goes out at once;
        // one written moments ago makes the next wait, and that write
        // carries this change and whatever follows it within the interval
        // (the children of a new set report ready one by one, within
        // milliseconds).
        let acknowledges =
            status.observed_generation != set.status.as_ref().and_then(|s| s.observed_generation);
        let wait = (!acknowledges)
            .then(|| ctx.caches.status_wait(set, STATUS_INTERVAL))
            .flatten();
        match wait {
            Some(wait) => recheck = Some(recheck.map_or(wait, |r| r.min(wait))),
            None => write_status(set, ctx, status).await?,
        }
    }
    Ok(Ran::Decided(
        recheck.map_or_else(Requeue::await_change, Requeue::requeue),
    ))
}

/// A set's status is written at most once per this interval; a change
/// within it is written when it ends, unless it acknowledges a new
/// generation of the set. Children's writes never wait for it.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// How the writes went.
enum Executed {
    /// Every write was made or refused (the refused ones listed).
    Done(Vec<WriteFailure>),
    /// A scaler this reconcile meant to create appeared meanwhile: decide
    /// again with it rather than go on with a plan made without it.
    Raced,
}

/// Makes the plan's writes in order. A child write the API server refuses
/// (403, 422, a webhook's or a quota's denial, …) stops the rest of its
/// scope's writes; the child backs off on its own, and the set reports it.
/// A conflict or transport error fails the reconcile (it is retried).
async fn execute(
    set: &DisaggregatedSet,
    ctx: &Context,
    lws_api: &Api<LeaderWorkerSet>,
    scaler_api: &Api<DisaggregatedSetRoleScaler>,
    writes: &[Planned],
    made: &mut Made,
) -> Result<Executed, Error> {
    let ns = set.namespace().unwrap_or_default();
    let mut failed: Vec<WriteFailure> = Vec::new();
    let mut stopped: Vec<&Scope> = Vec::new();
    for Planned { write, scope } in writes {
        if scope.as_ref().is_some_and(|s| stopped.contains(&s)) {
            continue;
        }
        if let Write::AbortSet { reason, revision } = write {
            // A gate asked for an abort: the set's own annotations, as a user's abort.
            let sets: Api<DisaggregatedSet> = Api::namespaced(ctx.client.clone(), &ns);
            let patch = json!({"metadata": {"annotations": {
                keys::ABORT: reason,
                keys::ABORT_REVISION: revision,
            }}});
            sets.patch(&set.name_any(), &ctx.patch_params(), &Patch::Merge(patch))
                .await?;
            made.record(ctx, write);
            continue;
        }
        if !write.is_child() {
            match write_scaler(set, ctx, scaler_api, write, made).await {
                Ok(()) => continue,
                Err(Error::Kube(kube::Error::Api(e)))
                    if e.code == 409 && matches!(write, Write::CreateScaler(_)) =>
                {
                    return Ok(Executed::Raced);
                }
                Err(e) => return Err(e),
            }
        }
        let key = format!("{ns}/{}", write.object());
        if let Some(wait) = ctx.backoff.waiting(&key) {
            failed.push(WriteFailure {
                child: write.object().to_string(),
                message: ctx.backoff.last(&key),
                retry_in: wait,
                new: false,
            });
            stopped.extend(scope);
            continue;
        }
        match write_child(set, ctx, lws_api, write, made).await {
            Ok(()) => ctx.backoff.succeeded(&key),
            Err(e) => {
                let Some(why) = refusal(&e) else {
                    return Err(e);
                };
                let message = write.refused(&why);
                let wait = ctx.backoff.failed(&key, &message);
                tracing::warn!(set = %set.name_any(), child = %write.object(), "{message}");
                failed.push(WriteFailure {
                    child: write.object().to_string(),
                    message,
                    retry_in: wait,
                    new: true,
                });
                stopped.extend(scope);
            }
        }
    }
    Ok(Executed::Done(failed))
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

/// One write to a child, and its Event; the store must show it before the
/// set is decided again.
async fn write_child(
    set: &DisaggregatedSet,
    ctx: &Context,
    api: &Api<LeaderWorkerSet>,
    write: &Write,
    made: &mut Made,
) -> Result<(), Error> {
    let pp = ctx.patch_params();
    let name = write.object();
    let (done, version) = match write {
        Write::CreateChild(lws) => match api.create(&create_params(), lws).await {
            Ok(created) => (true, Some(created.resource_version())),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let existing = api.get(name).await?;
                if !is_controlled_by(&existing.metadata, &set.uid().unwrap_or_default()) {
                    return Err(Error::Refused(format!(
                        "another object, not controlled by this set, already holds the name {name}; the operator never adopts it: delete or rename it (AlreadyExists)"
                    )));
                }
                // Ours, created by an earlier reconcile the store had not shown yet.
                (false, Some(existing.resource_version()))
            }
            Err(e) => return Err(e.into()),
        },
        Write::ScaleChild { replicas, .. } => {
            let patch = json!({"spec": {"replicas": replicas}});
            let patched = existed(api.patch(name, &pp, &Patch::Merge(patch)).await)?;
            (patched.is_some(), patched.map(|o| o.resource_version()))
        }
        Write::MarkChild { mark, replicas, .. } => {
            let initial = mark.map(|m| m.initial_replicas.to_string());
            let target = mark.map(|m| m.target.to_string());
            let mut patch = json!({"metadata": {"annotations": {
                keys::INITIAL_REPLICAS: initial,
                keys::ROLLOUT_TARGET: target,
            }}});
            if let Some(replicas) = replicas {
                patch["spec"] = json!({"replicas": replicas});
            }
            let patched = existed(api.patch(name, &pp, &Patch::Merge(patch)).await)?;
            (patched.is_some(), patched.map(|o| o.resource_version()))
        }
        Write::DeleteChild { .. } => {
            let deleted = existed(api.delete(name, &DeleteParams::background()).await)?;
            (deleted.is_some(), None)
        }
        _ => unreachable!("only child writes come here"),
    };
    ctx.caches.expect(
        set,
        Expectation {
            kind: Kind::Child,
            name: name.to_string(),
            version: version.flatten(),
        },
    );
    if done {
        made.record(ctx, write);
    }
    Ok(())
}

/// One write to a scaler, and its Event; the store must show it before the
/// set is decided again.
async fn write_scaler(
    set: &DisaggregatedSet,
    ctx: &Context,
    api: &Api<DisaggregatedSetRoleScaler>,
    write: &Write,
    made: &mut Made,
) -> Result<(), Error> {
    let name = write.object();
    let (done, version) = match write {
        Write::CreateScaler(scaler) => {
            let created = api.create(&create_params(), scaler).await?;
            (true, created.resource_version())
        }
        Write::ScalerStatus {
            replicas,
            selector,
            observed_generation,
            ..
        } => {
            let body = json!({"status": {"replicas": replicas, "selector": selector,
                                         "observedGeneration": observed_generation}});
            let patched = existed(
                api.patch_status(name, &ctx.patch_params(), &Patch::Merge(body))
                    .await,
            )?;
            (
                patched.is_some(),
                patched.and_then(|o| o.resource_version()),
            )
        }
        Write::DeleteScaler { .. } => {
            let deleted = existed(api.delete(name, &DeleteParams::background()).await)?;
            (deleted.is_some(), None)
        }
        _ => unreachable!("only scaler writes come here"),
    };
    ctx.caches.expect(
        set,
        Expectation {
            kind: Kind::Scaler,
            name: name.to_string(),
            version,
        },
    );
    if done {
        made.record(ctx, write);
    }
    Ok(())
}

/// A plain create as the operator: an object that already holds the name is
/// never taken over (server-side apply would adopt it).
fn create_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// What a reconcile's writes did so far: their Events, recorded together
/// once the writes are done ([`decide::Event::merge`]), and whether the step
/// latency has been observed.
struct Made {
    queued: std::time::Instant,
    events: Vec<decide::Event>,
    first: bool,
}

impl Made {
    /// A write was made: its Event, its step metric, and for the first
    /// child write, the time since the event that caused the reconcile.
    fn record(&mut self, ctx: &Context, write: &Write) {
        let action = match write {
            Write::CreateChild(_) => Some("create"),
            Write::ScaleChild { .. } => Some("scale"),
            Write::DeleteChild { .. } => Some("delete"),
            _ => None,
        };
        if let Some(action) = action {
            ctx.metrics.step(action);
        }
        if write.is_child() && std::mem::take(&mut self.first) {
            ctx.metrics.step_latency(self.queued.elapsed());
        }
        self.events.extend(write.event());
    }
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
    let written = existed(
        ctx.client_sets(set)
            .patch_status(&set.name_any(), &ctx.apply_params(), &Patch::Apply(body))
            .await,
    )?;
    if let Some(version) = written.and_then(|s| s.resource_version()) {
        ctx.caches.wrote_status(set, version, status.clone());
    }
    Ok(())
}

/// A write to an object that may have gone meanwhile: `Ok(None)` on 404
/// (nothing left to do), the error otherwise.
fn existed<T>(result: Result<T, kube::Error>) -> Result<Option<T>, Error> {
    match result {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}
