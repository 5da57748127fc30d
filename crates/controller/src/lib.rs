//! `disagg run`: the operator. A kube-rs `Controller` on DisaggregatedSets
//! that owns their LeaderWorkerSets and RoleScalers: it observes, asks the
//! pure core to decide ([`disagg_core::decide`]) with plugins from the plugin
//! host ([`disagg_plugin`]), and executes the plan.
//!
//! ```text
//! disagg-api ← disagg-core ← disagg-plugin ← disagg-controller ← disagg (CLI)
//! ```
//!
//! * [`reconcile`]: observe (from [`cache`], no API reads) → decide →
//!   execute (plain creates for new objects, merge patches for replicas) →
//!   report (status, Events).
//! * [`cache`]: the watches' stores and the writes they have not shown yet.
//! * [`plugins`]: plugins from ConfigMaps or `--plugin-dir`, swapped in when they change.
//! * [`metrics`]: Prometheus metrics; `/healthz`, `/readyz` and `/metrics` are served together.
//! * [`leader`]: leader election on a Lease, so that two replicas can run.
//!
//! Default plugin bindings (`--default-plugins`) are merged into every set's
//! own by [`disagg_core::bindings::effective`].
#![forbid(unsafe_code)]

pub mod backoff;
pub mod cache;
pub mod events;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod plugins;
pub mod prometheus;
pub mod queue;
pub mod reconcile;

use disagg_api::keys;
use disagg_api::set::DisaggregatedSet;
use disagg_core::bindings::DefaultBinding;
use disagg_plugin::{Limits, Runtime};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::{Predicate as _, WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How many sets are reconciled at once unless `--concurrency` says otherwise.
pub const DEFAULT_CONCURRENCY: u16 = 16;
/// How often a set whose bindings declare signals is decided again, by default.
pub const DEFAULT_SIGNAL_INTERVAL: Duration = Duration::from_secs(15);

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "disaggregatedset-operator";

/// Why a reconcile failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A write refused for a reason of its own (a name held by another object).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(e)) => format!("api_{}", e.code),
            Error::Kube(_) => "api_transport".into(),
            Error::Refused(_) => "refused".into(),
            Error::Internal(_) => "internal".into(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub plugins: Arc<plugins::Registry>,
    pub events: events::Events,
    pub metrics: Arc<metrics::Metrics>,
    /// Which sets wait for a reconcile, for metrics.
    pub queue: Arc<queue::Queue>,
    /// Bindings every set gets unless it binds the same plugin itself.
    pub default_plugins: Vec<DefaultBinding>,
    /// Child writes the API server refused, waiting to be retried.
    pub backoff: backoff::Backoff,
    pub health: Arc<health::Health>,
    /// Children and scalers as the watches show them, and the operator's
    /// writes they have not shown yet.
    pub caches: cache::Caches,
    /// Evaluates plugins' signals, when configured.
    pub prometheus: Option<Arc<prometheus::Prometheus>>,
    /// How often a set whose bindings declare signals is decided again.
    pub signal_interval: Duration,
}

impl Context {
    /// Merge patches carry the operator's field manager.
    pub fn patch_params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        }
    }

    /// Server-side apply as the operator, taking over fields others changed.
    pub fn apply_params(&self) -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    pub fn client_sets(&self, set: &DisaggregatedSet) -> Api<DisaggregatedSet> {
        Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default())
    }

    /// Records an Event on the set (in the background, see [`events`]).
    pub fn event(&self, set: &DisaggregatedSet, event: &disagg_core::decide::Event) {
        tracing::info!(set = %set.name_any(), namespace = ?set.namespace(), reason = event.reason, "{}", event.note);
        let type_ = if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.events.record(
            set.object_ref(&()),
            type_,
            event.reason,
            event.action,
            &event.note,
        );
    }
}

/// How the operator runs.
pub struct Options {
    /// The operator's namespace: plugin ConfigMaps are read from here only.
    pub namespace: String,
    /// Load plugins from this directory instead of ConfigMaps.
    pub plugin_dir: Option<PathBuf>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub probe_addr: SocketAddr,
    /// Leader election: this replica's identity and the Lease duration (None: lead alone).
    pub leader_election: Option<(String, Duration)>,
    /// Plugin call and load limits.
    pub limits: Limits,
    /// Plugin bindings for every set (a set's own binding of the same name wins).
    pub default_plugins: Vec<DefaultBinding>,
    /// How many sets are reconciled at once (each runs its plugin calls on a
    /// thread of its own, so this also bounds concurrent plugin calls).
    pub concurrency: u16,
    /// Where plugins' signals are evaluated (none: every signal says so).
    pub prometheus: Option<prometheus::PrometheusConfig>,
    /// How often a set whose bindings declare signals is decided again.
    pub signal_interval: Duration,
}

/// A client for `config` whose every request is counted in the operator's
/// `disagg_api_requests_total`, so users can see its load on their API server.
fn counted_client(config: kube::Config, metrics: Arc<metrics::Metrics>) -> Result<Client, String> {
    let count =
        tower::util::MapRequestLayer::new(move |req: axum::http::Request<kube::client::Body>| {
            metrics.api_request(req.method(), req.uri());
            req
        });
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
    Ok(builder.with_layer(&count).build())
}

/// Runs the operator against the API server of `config` until `shutdown`
/// completes; in-flight reconciles finish first.
pub async fn run(
    config: kube::Config,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), String> {
    let metrics = Arc::new(metrics::Metrics::default());
    let client = counted_client(config, metrics.clone())?;
    let runtime = Runtime::new(options.limits)?;
    let (registry, wake) = plugins::Registry::new(runtime);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let events = events::Events::start(recorder, metrics.clone());
    {
        let metrics = metrics.clone();
        registry
            .runtime()
            .observe(Box::new(move |plugin, hook, took, error| {
                metrics.plugin_call(plugin, hook.name(), took, error.is_some());
            }));
    }
    let ready = Arc::new(AtomicBool::new(false));
    let health = Arc::new(health::Health::default());
    let listener = tokio::net::TcpListener::bind(options.probe_addr)
        .await
        .map_err(|e| format!("--probe-addr {}: {e}", options.probe_addr))?;
    let alive = {
        let (health, registry) = (health.clone(), registry.clone());
        move || health.wedged(registry.oldest_load())
    };
    tokio::spawn(serve_probes(
        listener,
        metrics.clone(),
        ready.clone(),
        alive,
    ));

    // Plugins are listed first, so every one is known (loaded or loading)
    // before any set is reconciled; each compiles on a thread of its own
    // within its deadline. Nothing waits for the compiles: a set bound to a
    // plugin still loading waits for it alone (see reconcile), so one slow or
    // hostile component delays neither start-up, leadership, nor other sets.
    match &options.plugin_dir {
        Some(dir) => {
            let mut follower = plugins::DirectoryFollower::new(registry.clone(), dir.clone());
            follower.scan().await;
            tokio::spawn(follower.follow(Duration::from_secs(2)));
        }
        None => {
            plugins::follow_configmaps(
                registry.clone(),
                client.clone(),
                &options.namespace,
                events.clone(),
                health.clone(),
            )
            .await
        }
    }
    tracing::info!(plugins = ?registry.names(), "plugins listed");

    // One watch per kind: it fills the store reconciles read from and
    // triggers them. Sets trigger only on what changes what the operator
    // does (generation, labels, annotations), so its own status writes do not
    // come back as work; children and scalers on any change.
    let (sets, sets_writer) = reflector::store();
    let queue = Arc::new(queue::Queue::new(sets.clone(), metrics.clone()));
    let (queued, forgotten) = (queue.clone(), queue.clone());
    let set_events = watcher(
        Api::<DisaggregatedSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(cache::slim)
    .reflect(sets_writer)
    .inspect_ok(move |event| {
        if let watcher::Event::Delete(set) = event {
            forgotten.forget(set);
        }
    })
    .applied_objects()
    .predicate_filter(
        predicates::generation
            .combine(predicates::labels)
            .combine(predicates::annotations),
        Default::default(),
    )
    .inspect_ok(move |set| queued.triggered(set, true));
    let (children, children_writer) = reflector::store();
    let (scalers, scalers_writer) = reflector::store();
    let caches = cache::Caches::new(children, scalers);
    let (child_index, scaler_index) = caches.indexes();
    let child_events = owned(
        &client,
        children_writer,
        child_index,
        cache::slim_child,
        &queue,
    );
    let scaler_events = owned(&client, scalers_writer, scaler_index, cache::slim, &queue);

    let prometheus = match options.prometheus {
        Some(config) => Some(Arc::new(prometheus::Prometheus::new(
            config,
            metrics.clone(),
        )?)),
        None => None,
    };
    let ctx = Arc::new(Context {
        prometheus,
        signal_interval: options.signal_interval,
        client: client.clone(),
        plugins: registry,
        events,
        metrics,
        queue,
        default_plugins: options.default_plugins,
        backoff: backoff::Backoff::default(),
        health: health.clone(),
        caches,
    });
    let wake = futures::stream::unfold(
        wake,
        |mut rx| async move { rx.recv().await.map(|()| ((), rx)) },
    );
    // A standby is ready (it can take over); only the leader reconciles.
    ready.store(true, Ordering::SeqCst);
    let elector = options.leader_election.map(|(identity, duration)| {
        leader::Elector::new(client.clone(), &options.namespace, identity, duration)
    });
    let mut shutdown = Box::pin(shutdown);
    if let Some(e) = &elector {
        tokio::select! {
            _ = e.acquire() => tracing::info!(identity = %e.identity(), "leading"),
            _ = &mut shutdown => return Ok(()),
        }
    }
    // Stop on shutdown, or when the Lease is lost.
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = lost_rx => {}
        }
    };
    let controller = Controller::for_stream(set_events, sets)
        .owns_stream(child_events)
        .owns_stream(scaler_events)
        .with_config(controller::Config::default().concurrency(options.concurrency.max(1)))
        .reconcile_all_on(wake)
        .graceful_shutdown_on(stop)
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile");
            }
        });
    // The controller (its watches, scheduler and every reconcile in flight)
    // is one future. As a task it runs on the runtime's workers, beside the
    // HTTP connections its requests wake, rather than on whichever thread
    // called `run` (a `block_on` thread that is not a worker: every request
    // and watch event would cross threads twice). Dropping the guard aborts
    // it, as dropping the future did.
    let mut controller = Aborting(tokio::spawn(controller));
    let Some(elector) = elector else {
        let _ = (&mut controller.0).await;
        tracing::info!("stopped");
        return Ok(());
    };
    tokio::select! {
        _ = &mut controller.0 => {
            elector.release().await;
            tracing::info!("stopped; Lease released");
            Ok(())
        }
        _ = elector.keep() => {
            // Not a graceful stop: in-flight reconciles are dropped where
            // they stand (the task is aborted and waited for, so it makes no
            // progress after this), and no write of theirs is sent after the loss.
            drop(lost_tx);
            controller.0.abort();
            let _ = (&mut controller.0).await;
            Err("lost the leader Lease; exiting so that a fresh start rejoins the election".into())
        }
    }
}

/// A task aborted when this is dropped.
struct Aborting(tokio::task::JoinHandle<()>);
impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The watch of every object of kind `K` labelled as some set's, slimmed by
/// `slim`: it fills `writer`'s store and `index`, and its changes (any
/// change) trigger the owning set's reconcile.
fn owned<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
    index: Arc<cache::Index>,
    slim: fn(&mut K),
    queue: &Arc<queue::Queue>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let store = writer.as_reader();
    let indexed = index.clone();
    watcher(
        Api::<K>::all(client.clone()),
        watcher::Config::default().labels(keys::NAME),
    )
    .default_backoff()
    .modify(slim)
    .inspect_ok(move |event| index.before_store(event))
    .reflect(writer)
    .inspect_ok(move |event| indexed.after_store(event, &store))
    .touched_objects()
    .inspect_ok({
        let queue = queue.clone();
        move |object| queue.triggered(object, false)
    })
}

/// Conflicts are someone else's write landing first: retry at once. Anything
/// else backs off.
fn error_policy(set: Arc<DisaggregatedSet>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error {
        Error::Kube(kube::Error::Api(e)) if e.code == 409 => {
            Action::requeue(Duration::from_millis(50))
        }
        _ => {
            tracing::warn!(set = %set.name_any(), namespace = ?set.namespace(), error = %error, "reconcile failed; retrying");
            Action::requeue(Duration::from_secs(2))
        }
    }
}

async fn serve_probes(
    listener: tokio::net::TcpListener,
    metrics: Arc<metrics::Metrics>,
    ready: Arc<AtomicBool>,
    wedged: impl Fn() -> Option<String> + Clone + Send + Sync + 'static,
) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let wedged = wedged();
                async move {
                    match wedged {
                        None => (StatusCode::OK, "ok".to_string()),
                        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("wedged: {why}\n")),
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::SeqCst);
                async move {
                    if ready {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "loading plugins")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = metrics.encode();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        );
    // No probe request may hold the server: each has 5 s.
    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        Duration::from_secs(5),
    ));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the probe server stopped");
    }
}
