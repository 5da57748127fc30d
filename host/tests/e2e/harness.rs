//! The e2e harness: kube-sim in the test process, the operator binary as a
//! child process, and observers that read the API only.

use super::common::{self, repo};
use disagg::api::keys;
use disagg::api::lws::LeaderWorkerSet;
use disagg::api::set::DisaggregatedSet;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub client: kube::Client,
    pub kubeconfig: std::path::PathBuf,
    /// The API server's state and fault controls.
    pub sim: Arc<kube_sim::server::Sim>,
    /// Where the simulated inference servers' metrics are served (`/metrics`), for Prometheus to scrape.
    pub metrics_addr: std::net::SocketAddr,
    addr: std::net::SocketAddr,
    server: tokio::sync::Mutex<Option<Server>>,
    _dir: TempDir,
}

/// A running API server: stop it gracefully with `stop`, then await `done`.
struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

fn serve(sim: Arc<kube_sim::server::Sim>, listener: tokio::net::TcpListener) -> Server {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        axum::serve(listener, kube_sim::server::router(sim))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
    });
    Server { stop, done }
}

impl Cluster {
    /// An API server restart: every connection and watch ends, nothing
    /// listens for `down`, then the same state (and resourceVersions) is
    /// served again on the same address, as after a real restart with etcd intact.
    pub async fn restart_api_server(&self, down: Duration) {
        let Server { stop, mut done } = self.server.lock().await.take().expect("serving");
        let _ = stop.send(());
        // Watches opened while stopping would hold their connection open: end them until all are closed.
        loop {
            self.sim.faults.drop_watches();
            match tokio::time::timeout(Duration::from_millis(100), &mut done).await {
                Ok(result) => break result.unwrap(),
                Err(_) => continue,
            }
        }
        tokio::time::sleep(down).await;
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        *self.server.lock().await = Some(serve(self.sim.clone(), listener));
    }
}

pub struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Operator(pub Child);
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// kube-sim in this process, with the CRDs installed and a kubeconfig written.
pub async fn cluster(test: &str) -> Cluster {
    use kube_sim::server::Sim;
    let sim = Sim::new(Arc::new(kube_sim::store::Store::default()));
    kube_sim::lws_sim::spawn(sim.store.clone(), sim.lws.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve(sim.clone(), listener);
    let dir = std::env::temp_dir().join(format!("disagg-e2e-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, kube_sim::kubeconfig(addr)).unwrap();
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    common::install_crds(&client).await;
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    kube_sim::serving::serve(sim.store.clone(), sim.serving.clone(), metrics);
    Cluster {
        client,
        kubeconfig,
        metrics_addr,
        sim,
        addr,
        server: tokio::sync::Mutex::new(Some(server)),
        _dir: TempDir(dir),
    }
}

pub fn start_operator(cluster: &Cluster) -> Operator {
    start_operator_with(cluster, &[])
}

pub fn start_operator_with(cluster: &Cluster, extra: &[&str]) -> Operator {
    spawn_operator(&cluster.kubeconfig, extra, &[])
}

/// `disagg run` against the cluster behind `kubeconfig`, with `extra`
/// arguments and `env` variables (e.g. `POD_NAME`, its Lease identity).
pub fn spawn_operator(
    kubeconfig: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Operator {
    // Probes on a port of their own unless `extra` names one.
    let probes: &[&str] = if extra.contains(&"--probe-addr") {
        &[]
    } else {
        &["--probe-addr", "127.0.0.1:0"]
    };
    let child = Command::new(env!("CARGO_BIN_EXE_disagg"))
        .args(["run", "--namespace", "lws-system"])
        .args(probes)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(extra)
        .envs(env.iter().copied())
        .env(
            "RUST_LOG",
            std::env::var("DISAGG_E2E_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Operator(child)
}

/// Whether a `prometheus` binary can run the signal tests; `false` (and a
/// SKIPPED line) when it is not installed — unless `DISAGG_REQUIRE_PROMETHEUS`
/// is set, as CI does, which makes a missing one a failure.
pub fn prometheus_installed() -> bool {
    if disagg::local_prometheus::installed() {
        return true;
    }
    assert!(
        std::env::var_os("DISAGG_REQUIRE_PROMETHEUS").is_none(),
        "prometheus is not installed: bash scripts/install-prometheus.sh"
    );
    eprintln!("SKIPPED: prometheus is not installed (bash scripts/install-prometheus.sh)");
    false
}

/// Per role: (replicas of the old revisions, replicas of `revision`), from `spec.replicas`.
pub type State = BTreeMap<String, (i32, i32)>;

pub fn state_of(children: &[LeaderWorkerSet], revision: &str) -> State {
    let mut state = State::new();
    for c in children {
        let labels = c.metadata.labels.clone().unwrap_or_default();
        let entry = state.entry(labels[keys::ROLE].clone()).or_default();
        if labels[keys::REVISION] == revision {
            entry.1 += c.spec.replicas;
        } else {
            entry.0 += c.spec.replicas;
        }
    }
    state
}

pub async fn children(api: &Api<LeaderWorkerSet>, set: &str) -> Vec<LeaderWorkerSet> {
    api.list(&ListParams::default().labels(&format!("{}={set}", keys::NAME)))
        .await
        .unwrap()
        .items
}

/// The status of a condition of the set, if it has one.
pub fn condition(set: &DisaggregatedSet, type_: &str) -> Option<String> {
    find_condition(set, type_).map(|c| c.status.clone())
}

/// The reason of a condition of the set, if it has one.
pub fn condition_reason(set: &DisaggregatedSet, type_: &str) -> Option<String> {
    find_condition(set, type_).map(|c| c.reason.clone())
}

fn find_condition<'a>(
    set: &'a DisaggregatedSet,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    set.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

pub fn available(set: &DisaggregatedSet) -> bool {
    condition(set, "Available").as_deref() == Some("True")
}

/// Waits until the set is Available.
pub async fn until_available(
    sets: &Api<DisaggregatedSet>,
    lws: &Api<LeaderWorkerSet>,
    name: &str,
) -> (DisaggregatedSet, Vec<LeaderWorkerSet>) {
    watch_until(sets, lws, name, "Available", |_| {}, |s, _| available(s)).await
}

/// Polls until `done` accepts the set and its children, checking `each` on every observation.
pub async fn watch_until(
    sets: &Api<DisaggregatedSet>,
    lws: &Api<LeaderWorkerSet>,
    name: &str,
    what: &str,
    mut each: impl FnMut(&[LeaderWorkerSet]),
    done: impl Fn(&DisaggregatedSet, &[LeaderWorkerSet]) -> bool,
) -> (DisaggregatedSet, Vec<LeaderWorkerSet>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let set = sets.get(name).await.unwrap();
        let kids = children(lws, name).await;
        each(&kids);
        if done(&set, &kids) {
            return (set, kids);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached; status {:?}, children {:?}",
            set.status,
            kids.iter()
                .map(|k| (k.metadata.name.clone(), k.spec.replicas))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The planner's states for a rollout from `before` to `after`, with instant
/// readiness: every (old, new) per role from the start to done. Each satisfies
/// the surge bound and the no-orphan rule (the planner's property tests).
pub fn planned(before: &DisaggregatedSet, after: &DisaggregatedSet) -> Vec<State> {
    planned_with(before, after, &BTreeMap::new())
}

/// `planned`, with External roles at their scalers' replicas.
pub fn planned_with(
    before: &DisaggregatedSet,
    after: &DisaggregatedSet,
    external: &BTreeMap<String, i32>,
) -> Vec<State> {
    use disagg::core::{execute::target_for, revision::revision, simulate};
    let replicas =
        |r: &disagg::api::set::Role| external.get(&r.name).copied().unwrap_or(r.spec.replicas);
    let old = target_for(before, &revision(&before.spec, &[]), replicas);
    let new = target_for(after, &revision(&after.spec, &[]), replicas);
    let mut children = simulate::steady_children(&old, 0);
    let start: State = old
        .roles
        .iter()
        .map(|r| (r.name.clone(), (r.replicas, 0)))
        .collect();
    let mut states = vec![start];
    for snapshot in simulate::rollout(&new, &mut children, 200) {
        states.push(
            snapshot
                .roles
                .iter()
                .map(|r| (r.name.clone(), (r.old, r.new)))
                .collect(),
        );
    }
    states.dedup();
    states
}

/// Whether an observed state is a planned one, or lies between two
/// consecutive planned ones (a step's writes land one object at a time).
pub fn on_schedule(schedule: &[State], state: &State) -> bool {
    let within = |a: i32, b: i32, x: i32| a.min(b) <= x && x <= a.max(b);
    schedule.windows(2).any(|w| {
        w[0].keys().chain(state.keys()).all(|role| {
            let (a, b, x) = (
                w[0].get(role).copied().unwrap_or_default(),
                w[1].get(role).copied().unwrap_or_default(),
                state.get(role).copied().unwrap_or_default(),
            );
            within(a.0, b.0, x.0) && within(a.1, b.1, x.1)
        })
    })
}

/// Installs a plugin as the operator finds it: a labelled ConfigMap in its namespace.
pub async fn install_plugin(client: &kube::Client, name: &str, component: &str) {
    let bytes = std::fs::read(common::component(component)).unwrap();
    put_plugin(client, name, "plugin.wasm", bytes).await;
}

pub fn example(name: &str, plugins: serde_json::Value) -> DisaggregatedSet {
    let mut set: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap())
            .unwrap();
    set["metadata"]["name"] = json!(name);
    set["spec"]["plugins"] = plugins;
    serde_json::from_value(set).unwrap()
}

pub async fn set_image(sets: &Api<DisaggregatedSet>, name: &str, image: &str) {
    sets.patch(name, &PatchParams::default(), &Patch::Json::<()>(
        serde_json::from_value(json!([{"op": "replace",
            "path": "/spec/roles/0/spec/leaderWorkerTemplate/workerTemplate/spec/containers/0/image",
            "value": image}])).unwrap(),
    ))
    .await
    .unwrap();
}

pub fn revision_of(set: &DisaggregatedSet) -> String {
    set.status
        .as_ref()
        .and_then(|s| s.update_revision.clone())
        .unwrap_or_default()
}

pub fn revisions(kids: &[LeaderWorkerSet]) -> std::collections::BTreeSet<String> {
    kids.iter()
        .map(|k| k.metadata.labels.clone().unwrap_or_default()[keys::REVISION].clone())
        .collect()
}

/// Waits until the set is Available at a revision other than `not`, with only
/// that revision's children left; checks the surge bound (all revisions
/// together) on every observation. Returns the set and its children.
pub async fn settle(
    sets: &Api<DisaggregatedSet>,
    lws: &Api<LeaderWorkerSet>,
    name: &str,
    not: &str,
    bound: &BTreeMap<String, i32>,
) -> (DisaggregatedSet, Vec<LeaderWorkerSet>) {
    watch_until(
        sets,
        lws,
        name,
        "settled on a new revision",
        |kids| {
            let mut totals: BTreeMap<String, i32> = BTreeMap::new();
            for k in kids {
                *totals
                    .entry(k.metadata.labels.clone().unwrap()[keys::ROLE].clone())
                    .or_default() += k.spec.replicas;
            }
            for (role, total) in &totals {
                if let Some(limit) = bound.get(role) {
                    assert!(
                        total <= limit,
                        "{role} has {total} groups over all revisions, above {limit}"
                    );
                }
            }
        },
        |s, k| {
            let rev = revision_of(s);
            available(s)
                && rev != not
                && s.metadata.generation == s.status.as_ref().and_then(|st| st.observed_generation)
                && revisions(k) == std::collections::BTreeSet::from([rev])
        },
    )
    .await
}

/// Writes a plugin ConfigMap (create or replace) with one binaryData key.
pub async fn put_plugin(client: &kube::Client, name: &str, key: &str, bytes: Vec<u8>) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "lws-system", "labels": {keys::PLUGIN: "true"}},
        "binaryData": {key: k8s_openapi::ByteString(bytes)},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "lws-system")
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&cm))
        .await
        .unwrap();
}

pub fn plugin_digest(set: &DisaggregatedSet, plugin: &str) -> Option<String> {
    set.status
        .as_ref()?
        .plugins
        .iter()
        .find(|p| p.name == plugin)?
        .digest
        .clone()
}

pub fn condition_message(set: &DisaggregatedSet, type_: &str) -> String {
    set.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}
