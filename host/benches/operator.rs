//! The operator under load (`docs/architecture.md`, issue #6). kube-sim runs in this
//! process with instantly ready LWS groups; the operator is the `disagg`
//! binary of this build, in its own process (`--no-leader-election`), so its
//! memory and CPU are its own.
//!
//! * scale: N sets × 3 roles (default 1,000) from creation until every set is
//!   Available, against a bare client making the minimal writes for the same
//!   end state (3 LWS applies and 1 status apply per set, 16 in flight) on a
//!   fresh kube-sim; then the operator's requests and CPU over an idle window,
//!   100 concurrent rollouts, and its peak RSS over the whole run.
//! * hot swap: a plugin ConfigMap updated → the new digest in use, as the
//!   status of a set bound to it shows, for the smallest real component we
//!   build and one padded to 1 MiB.
//!
//! `DISAGG_BENCH_SETS` (default 1000) and `DISAGG_BENCH_IDLE_SECONDS`
//! (default 60) shorten it. Prints `BENCH operator_scale ...` and
//! `BENCH hot_swap ...` lines for scripts.

#[path = "../tests/common/mod.rs"]
mod common;

use disagg::api::keys;
use disagg::api::lws::LeaderWorkerSet;
use disagg::api::set::DisaggregatedSet;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube_sim::server::Sim;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

const IN_FLIGHT: usize = 16;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Cluster {
    sim: Arc<Sim>,
    client: kube::Client,
    kubeconfig: std::path::PathBuf,
}

async fn cluster(tag: &str) -> Cluster {
    let sim = Sim::new(Arc::new(kube_sim::store::Store::default()));
    kube_sim::lws_sim::spawn(sim.store.clone(), sim.lws.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = sim.clone();
    tokio::spawn(async move {
        axum::serve(listener, kube_sim::server::router(served))
            .await
            .unwrap()
    });
    let kubeconfig = std::env::temp_dir().join(format!(
        "disagg-bench-{tag}-{}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(&kubeconfig, kube_sim::kubeconfig(addr)).unwrap();
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    common::install_crds(&client).await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lws-system"}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(ns).unwrap())
        .await
        .unwrap();
    Cluster {
        sim,
        client,
        kubeconfig,
    }
}

/// The operator process; killed on drop.
struct Operator(Child);
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Operator {
    fn start(cluster: &Cluster) -> Operator {
        let child = Command::new(env!("CARGO_BIN_EXE_disagg"))
            .args(["run", "--no-leader-election", "--probe-addr", "127.0.0.1:0"])
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Operator(child)
    }

    /// CPU time used so far (user + system), from /proc.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap();
        // Fields after the command name (which may hold spaces) start after ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux.
    }

    /// Peak resident memory (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kb / 1024.0
    }
}

/// The 3-role example, all roles Static, named `name`.
fn three_roles(name: &str) -> DisaggregatedSet {
    let mut set: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(common::repo("examples/epd-3role.yaml")).unwrap(),
    )
    .unwrap();
    set["metadata"]["name"] = json!(name);
    set["metadata"]["namespace"] = json!("default");
    for role in set["spec"]["roles"].as_array_mut().unwrap() {
        role.as_object_mut().unwrap().remove("scaling");
    }
    serde_json::from_value(set).unwrap()
}

fn settled(s: &DisaggregatedSet) -> bool {
    let Some(status) = &s.status else {
        return false;
    };
    status.observed_generation == s.metadata.generation
        && status.current_revision.is_some()
        && status.current_revision == status.update_revision
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
}

/// Waits until `count` sets accepted by `which` are settled, from a watch
/// (polling full lists of 1,000 sets would load the shared 2 cores).
async fn until_settled(sets: &Api<DisaggregatedSet>, which: impl Fn(&str) -> bool, count: usize) {
    use kube::runtime::watcher::{self, Event};
    let mut done = std::collections::HashSet::new();
    let mut events = Box::pin(watcher::watcher(sets.clone(), watcher::Config::default()));
    let wait = async {
        while let Some(event) = events.try_next().await.unwrap() {
            match event {
                Event::Init => done.clear(),
                Event::InitApply(s) | Event::Apply(s) => {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    if which(&name) && settled(&s) {
                        done.insert(name);
                    } else {
                        done.remove(&name);
                    }
                }
                Event::Delete(s) => {
                    done.remove(&s.metadata.name.clone().unwrap_or_default());
                }
                Event::InitDone => {}
            }
            if done.len() >= count {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(1800), wait)
        .await
        .expect("not all sets settled within 30 minutes");
}

async fn create_sets(sets: &Api<DisaggregatedSet>, n: usize) {
    futures::stream::iter(0..n)
        .map(|i| {
            let sets = sets.clone();
            async move {
                sets.create(&PostParams::default(), &three_roles(&format!("s{i:04}")))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

/// The bare client: the same end state with the fewest writes.
async fn bare_client(n: usize) -> Duration {
    use disagg::core::render::render_child;
    use disagg::core::revision::revision;
    let c = cluster("bare").await;
    let sets: Api<DisaggregatedSet> = Api::namespaced(c.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(c.client.clone(), "default");
    let started = Instant::now();
    create_sets(&sets, n).await;
    futures::stream::iter(0..n)
        .map(|i| {
            let (sets, lws) = (sets.clone(), lws.clone());
            async move {
                let name = format!("s{i:04}");
                let set = sets.get(&name).await?;
                let rev = revision(&set.spec, &[]);
                for role in &set.spec.roles {
                    let child = render_child(&set, role, 0, &rev, role.spec.replicas);
                    lws.patch(
                        child.metadata.name.as_deref().unwrap(),
                        &PatchParams::apply("bare").force(),
                        &Patch::Apply(&child),
                    )
                    .await?;
                }
                let status = json!({
                    "apiVersion": "disaggregatedset.x-k8s.io/v1", "kind": "DisaggregatedSet",
                    "metadata": {"name": name},
                    "status": {"observedGeneration": 1, "currentRevision": rev, "updateRevision": rev,
                        "conditions": [{"type": "Available", "status": "True", "reason": "AllRolesReady",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
                });
                sets.patch_status(&name, &PatchParams::apply("bare").force(), &Patch::Apply(status))
                    .await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    started.elapsed()
}

async fn scale(n: usize, idle: Duration) {
    let bare = bare_client(n).await;

    let c = cluster("operator").await;
    let operator = Operator::start(&c);
    let sets: Api<DisaggregatedSet> = Api::namespaced(c.client.clone(), "default");
    tokio::time::sleep(Duration::from_millis(500)).await; // the operator's start
    let writes_before = c.sim.writes.load(Relaxed);
    let started = Instant::now();
    create_sets(&sets, n).await;
    until_settled(&sets, |_| true, n).await;
    let took = started.elapsed();
    let operator_writes = c.sim.writes.load(Relaxed) - writes_before - n as u64;

    // Idle: nothing changes; nothing here polls.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (reads0, writes0, cpu0) = (
        c.sim.reads.load(Relaxed),
        c.sim.writes.load(Relaxed),
        operator.cpu(),
    );
    tokio::time::sleep(idle).await;
    let per_minute = 60.0 / idle.as_secs_f64();
    let idle_reads = (c.sim.reads.load(Relaxed) - reads0) as f64 * per_minute;
    let idle_writes = (c.sim.writes.load(Relaxed) - writes0) as f64 * per_minute;
    let idle_cpu = (operator.cpu() - cpu0).as_secs_f64() * per_minute;

    // 100 concurrent rollouts: a new image on 100 sets at once.
    let rolled = n.min(100);
    let image = json!([{"op": "replace",
        "path": "/spec/roles/0/spec/leaderWorkerTemplate/workerTemplate/spec/containers/0/image",
        "value": "example.com/encoder:v2"}]);
    let started = Instant::now();
    futures::stream::iter(0..rolled)
        .map(|i| {
            let (sets, image) = (sets.clone(), image.clone());
            async move {
                sets.patch(
                    &format!("s{i:04}"),
                    &PatchParams::default(),
                    &Patch::Json::<()>(serde_json::from_value(image).unwrap()),
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(rolled)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let first_rolled = |name: &str| name[1..].parse::<usize>().is_ok_and(|i| i < rolled);
    until_settled(&sets, first_rolled, rolled).await;
    let rollouts = started.elapsed();
    let lws: Api<LeaderWorkerSet> = Api::namespaced(c.client.clone(), "default");
    let children = lws
        .list(&ListParams::default().labels(keys::NAME))
        .await
        .unwrap();
    assert_eq!(
        children.items.len(),
        3 * n,
        "one child per role and set once settled"
    );

    let ratio = took.as_secs_f64() / bare.as_secs_f64();
    println!(
        "operator: {n} sets x 3 roles Available in {took:.2?} ({operator_writes} writes) vs bare client {bare:.2?} ({}x, target <= 2x)",
        format_args!("{ratio:.2}")
    );
    println!(
        "operator idle: {idle_reads:.0} reads/min, {idle_writes:.0} writes/min, {idle_cpu:.3} s CPU/min; {rolled} concurrent rollouts in {rollouts:.2?}; peak RSS {:.1} MiB (target <= 150)",
        operator.peak_rss_mib()
    );
    println!(
        "BENCH operator_scale sets={n} available_s={:.3} bare_s={:.3} ratio={ratio:.2} operator_writes={operator_writes} idle_reads_per_min={idle_reads:.0} idle_writes_per_min={idle_writes:.0} idle_cpu_s_per_min={idle_cpu:.3} rollouts={rolled} rollouts_s={:.3} peak_rss_mib={:.1}",
        took.as_secs_f64(),
        bare.as_secs_f64(),
        rollouts.as_secs_f64(),
        operator.peak_rss_mib()
    );
}

/// ConfigMap updated → the set's status shows the new digest.
async fn hot_swap() {
    use disagg::plugin::Runtime;
    let c = cluster("hot-swap").await;
    let small = std::fs::read(common::component("rust-gate")).unwrap();
    let large = std::fs::read(common::component("role-profile")).unwrap();
    let _operator = Operator::start(&c);
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "lws-system");
    let sets: Api<DisaggregatedSet> = Api::namespaced(c.client.clone(), "default");
    let put = |name: &str, bytes: Vec<u8>| {
        let cm: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "lws-system", "labels": {keys::PLUGIN: "true"}},
            "binaryData": {"plugin.wasm": k8s_openapi::ByteString(bytes)},
        }))
        .unwrap();
        let cms = cms.clone();
        let name = name.to_string();
        async move {
            cms.patch(
                &name,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&cm),
            )
            .await
            .unwrap();
        }
    };
    for (plugin, base, size) in [("gate", &small, small.len()), ("profile", &large, 1 << 20)] {
        // Each round is a new build (a new digest) of the same code, padded to `size`.
        let build = |round: usize| {
            let mut payload = (round as u64).to_le_bytes().to_vec();
            payload.resize(size.saturating_sub(base.len() + 16).max(8), b'x');
            common::with_custom_section(base, "build", &payload)
        };
        put(plugin, build(0)).await;
        let mut set = three_roles(&format!("uses-{plugin}"));
        set.spec.plugins = vec![serde_json::from_value(json!({"name": plugin})).unwrap()];
        sets.create(&PostParams::default(), &set).await.unwrap();
        let mut samples = Vec::new();
        for round in 1..=10 {
            let bytes = build(round);
            let digest = Runtime::digest(&bytes).unwrap();
            let started = Instant::now();
            put(plugin, bytes.clone()).await;
            loop {
                let s = sets.get(&format!("uses-{plugin}")).await.unwrap();
                let in_use = s.status.as_ref().is_some_and(|st| {
                    st.plugins
                        .iter()
                        .any(|p| p.digest.as_ref() == Some(&digest))
                });
                if in_use {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{plugin}: not swapped"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples.push(started.elapsed());
        }
        samples.sort();
        let size = build(0).len();
        println!(
            "hot swap: {size} B component, ConfigMap update to in use (set status): median {:.0?}, max {:.0?} (target <= 1 s for 1 MiB)",
            samples[samples.len() / 2],
            samples[samples.len() - 1]
        );
        println!(
            "BENCH hot_swap size_bytes={size} median_ms={:.1} max_ms={:.1}",
            samples[samples.len() / 2].as_secs_f64() * 1000.0,
            samples[samples.len() - 1].as_secs_f64() * 1000.0
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not (and runs nothing here).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        hot_swap().await;
        scale(
            env_usize("DISAGG_BENCH_SETS", 1000),
            Duration::from_secs(env_usize("DISAGG_BENCH_IDLE_SECONDS", 60) as u64),
        )
        .await;
    });
}
