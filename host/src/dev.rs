//! `disagg dev`: the newcomer's first command. In one process: the in-memory
//! API server (kube-sim) with its LWS simulator, the CRDs, the `lws-system`
//! namespace, and the operator; then the given manifests, applied
//! server-side, and a live table of every set until Ctrl-C.

use crate::api::keys;
use crate::api::lws::LeaderWorkerSet;
use crate::api::set::DisaggregatedSet;
use crate::controller;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::{CustomResourceExt, ResourceExt};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct DevOptions {
    /// Where to write the kubeconfig for kubectl.
    pub kubeconfig: PathBuf,
    /// Manifests to apply once everything runs.
    pub apply: Vec<PathBuf>,
    /// The API server's address (loopback).
    pub listen: SocketAddr,
    /// Plugins for the operator, as `NAME.wasm[.gz]` files.
    pub plugin_dir: Option<PathBuf>,
    /// The upstream LeaderWorkerSet CRD; without it, one generated from the
    /// operator's own LWS type (its schema, status and scale subresources).
    pub lws_crd: Option<PathBuf>,
    /// How long each simulated LWS group takes to become ready.
    pub group_delay: Duration,
    /// Plugin bindings every set gets.
    pub default_plugins: Vec<crate::core::bindings::DefaultBinding>,
    /// Where the operator evaluates signals.
    pub prometheus: Option<controller::prometheus::PrometheusConfig>,
    /// Start a local Prometheus scraping the simulated servers, and evaluate
    /// signals against it (overrides `prometheus`).
    pub start_prometheus: bool,
    /// How often sets with signals are decided again.
    pub signal_interval: Duration,
}

/// Runs until `shutdown` completes.
pub async fn run(
    options: DevOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), String> {
    if !options.listen.ip().is_loopback() {
        return Err(format!(
            "--listen {}: the dev cluster has no authentication and serves on loopback only",
            options.listen
        ));
    }
    let mut options = options;
    if let Some(dir) = &options.plugin_dir {
        // Plugins come from DIR alone: a default binding of a plugin DIR lacks
        // would stop every set. Keep sets working, and say so.
        options.default_plugins.retain(|d| {
            let name = &d.binding.name;
            let found = ["wasm", "wasm.gz"]
                .iter()
                .any(|ext| dir.join(format!("{name}.{ext}")).is_file());
            if !found {
                eprintln!(
                    "note: {} has no {name}.wasm[.gz]: the default binding of {name} is off (pass --default-plugins to choose the defaults)",
                    dir.display()
                );
            }
            found
        });
    }
    let sim = kube_sim::server::Sim::new(Arc::new(kube_sim::store::Store::default()));
    sim.lws.set(kube_sim::lws_sim::LwsSimConfig {
        group_delay: options.group_delay,
        unready_fraction: 0.0,
    });
    kube_sim::lws_sim::spawn(sim.store.clone(), sim.lws.clone());
    // The simulated inference servers' metrics, and a Prometheus scraping them.
    let mut local_prometheus = None;
    if options.start_prometheus {
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot serve the simulated metrics: {e}"))?;
        let target = metrics.local_addr().map_err(|e| e.to_string())?;
        kube_sim::serving::serve(sim.store.clone(), sim.serving.clone(), metrics);
        let dir =
            std::env::temp_dir().join(format!("disagg-dev-prometheus-{}", std::process::id()));
        let started = tokio::task::spawn_blocking(move || {
            crate::local_prometheus::LocalPrometheus::start(dir, target)
        })
        .await
        .map_err(|e| e.to_string())??;
        options.prometheus = Some(controller::prometheus::PrometheusConfig {
            url: started.url.clone(),
            bearer_token_file: None,
            ca_file: None,
            timeout: Duration::from_secs(2),
        });
        local_prometheus = Some(started);
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", options.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, kube_sim::server::router(sim)).await {
            eprintln!("error: the dev API server stopped: {e}");
        }
    });
    std::fs::write(&options.kubeconfig, kube_sim::kubeconfig(addr))
        .map_err(|e| format!("--kubeconfig {}: {e}", options.kubeconfig.display()))?;
    let config = kube::Config::new(format!("http://{addr}").parse().expect("a valid URL"));
    let client = kube::Client::try_from(config.clone()).map_err(|e| e.to_string())?;

    install(&client, options.lws_crd.as_ref()).await?;
    if options.plugin_dir.is_none() {
        install_default_plugins(&client).await?;
    }
    let operator = controller::Options {
        namespace: "lws-system".into(),
        plugin_dir: options.plugin_dir.clone(),
        probe_addr: "127.0.0.1:0".parse().expect("a valid address"),
        leader_election: None,
        default_plugins: options.default_plugins.clone(),
        limits: crate::plugin::Limits::default(),
        concurrency: controller::DEFAULT_CONCURRENCY,
        prometheus: options.prometheus.clone(),
        signal_interval: options.signal_interval,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(controller::run(config, operator, async {
        let _ = stop_rx.await;
    }));
    println!(
        "disagg dev: API server on http://{addr}; kubectl --kubeconfig {}",
        options.kubeconfig.display()
    );
    if let Some(p) = &local_prometheus {
        println!(
            "disagg dev: Prometheus on {} scraping the simulated servers; steer them with curl -X POST http://{addr}/kube-sim/serving -d '{{\"set\": \"llama-pd\", \"role\": \"prefill\", \"waiting\": 24}}' or -d '{{\"revision\": \"REV\", \"ttftSeconds\": 2}}'",
            p.url
        );
    }
    for file in &options.apply {
        apply_file(&client, file).await?;
    }
    tokio::select! {
        _ = shutdown => {}
        _ = show(&client) => {}
    }
    let _ = stop_tx.send(());
    controller
        .await
        .map_err(|e| format!("the operator task failed: {e}"))?
}

/// CRDs and the operator's namespace.
async fn install(client: &kube::Client, lws_crd: Option<&PathBuf>) -> Result<(), String> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut all = crate::api::crd::crds();
    match lws_crd {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--lws-crd {}: {e}", path.display()))?;
            all.push(
                serde_yaml_ng::from_str(&text)
                    .map_err(|e| format!("--lws-crd {}: {e}", path.display()))?,
            );
        }
        None => all.push(LeaderWorkerSet::crd()),
    }
    let pp = PatchParams::apply("disagg-dev").force();
    for crd in all {
        crds.patch(&crd.name_any(), &pp, &Patch::Apply(&crd))
            .await
            .map_err(|e| format!("installing CRD {}: {e}", crd.name_any()))?;
    }
    let ns: Namespace = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lws-system"}}),
    )
    .expect("a valid Namespace");
    Api::<Namespace>::all(client.clone())
        .patch("lws-system", &pp, &Patch::Apply(&ns))
        .await
        .map_err(|e| format!("creating namespace lws-system: {e}"))?;
    Ok(())
}

/// The default plugins' ConfigMaps, as `kubectl apply -k deploy/` creates them.
async fn install_default_plugins(client: &kube::Client) -> Result<(), String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "lws-system");
    for cm in crate::defaults::plugin_configmaps() {
        api.patch(
            &cm.name_any(),
            &PatchParams::apply("disagg-dev").force(),
            &Patch::Apply(&cm),
        )
        .await
        .map_err(|e| format!("installing plugin ConfigMap {}: {e}", cm.name_any()))?;
    }
    Ok(())
}

/// Applies every document of a YAML file server-side, as `kubectl apply --server-side` would.
async fn apply_file(client: &kube::Client, file: &PathBuf) -> Result<(), String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("--apply {}: {e}", file.display()))?;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let object: DynamicObject = serde::Deserialize::deserialize(doc)
            .map_err(|e| format!("--apply {}: {e}", file.display()))?;
        let types = object.types.clone().ok_or_else(|| {
            format!(
                "--apply {}: a document lacks apiVersion/kind",
                file.display()
            )
        })?;
        let gvk = kube::api::GroupVersionKind::try_from(&types)
            .map_err(|e| format!("--apply {}: {e}", file.display()))?;
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .map_err(|e| {
                format!(
                    "--apply {}: {} is not served: {e}",
                    file.display(),
                    types.kind
                )
            })?;
        let api: Api<DynamicObject> = match caps.scope {
            kube::discovery::Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                object.metadata.namespace.as_deref().unwrap_or("default"),
                &resource,
            ),
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &object.name_any(),
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|e| {
            format!(
                "--apply {}: {} {}: {e}",
                file.display(),
                types.kind,
                object.name_any()
            )
        })?;
        println!("applied {} {}", types.kind, object.name_any());
    }
    Ok(())
}

/// The live table: redrawn when it changes.
async fn show(client: &kube::Client) {
    let sets: Api<DisaggregatedSet> = Api::all(client.clone());
    let lws: Api<LeaderWorkerSet> = Api::all(client.clone());
    let mut last = String::new();
    loop {
        if let (Ok(sets), Ok(children)) = (
            sets.list(&ListParams::default()).await,
            lws.list(&ListParams::default().labels(keys::NAME)).await,
        ) {
            let table = crate::kubectl::table(&sets.items, &children.items);
            if table != last {
                println!("\n{table}");
                last = table;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
