//! Surviving failures (`docs/architecture.md`, issue #6). Every scenario runs the same
//! rollout, 10 prefill / 2 decode groups → 6 / 8 with a new image (groups
//! ready 30 ms after creation), while something goes wrong: API faults, lost
//! watches and history, an API server restart, the operator SIGKILLed, a
//! leader failover. Each is bounded in time and repeatable: the fault draws
//! and kill points come from `DISAGG_FAULT_SEED` (default 1), printed on
//! failure. `DISAGG_FAULT_ROUNDS=N` runs every scenario N times with
//! consecutive seeds (a long run; CI runs one round).
//!
//! At every observed state: each role's groups over all revisions stay
//! within the surge bound, every child is controlled by the set and unique
//! per (slice, role, revision), no third revision appears (a lost field would
//! change the hash), and an old revision never keeps one role while another
//! is gone for longer than a retry takes. At the end: exactly the new
//! revision at the new sizes and image, Available, the user's fields intact.

use super::harness::*;
use disagg::api::keys;
use disagg::api::lws::LeaderWorkerSet;
use disagg::api::set::DisaggregatedSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_sim::faults::FaultConfig;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NEW_IMAGE: &str = "vllm/vllm-openai:v0.12.0";
/// Per role: the most groups any state may hold over all revisions,
/// max(initial, target + maxSurge): prefill max(10, 6+1), decode max(2, 8+1).
const SURGE_BOUND: [(&str, i32); 2] = [("prefill", 10), ("decode", 9)];
/// The final sizes.
const TARGET: [(&str, i32); 2] = [("prefill", 6), ("decode", 8)];
/// How long an old revision may be seen with one role gone and another left
/// (between the writes of one step, and their retries).
const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// How long a scenario may take.
const DEADLINE: Duration = Duration::from_secs(120);
/// Short enough that a new operator takes over quickly after a kill.
const OPERATOR_ARGS: [&str; 2] = ["--lease-duration-seconds", "2"];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64: the scenario's own repeatable draws (kill points, pauses).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// The world a disturbance acts on.
struct Scene {
    cluster: Cluster,
    operators: tokio::sync::Mutex<Vec<Operator>>,
    seed: u64,
    /// Exit statuses of operators that stopped on their own.
    exits: std::sync::Mutex<Vec<std::process::ExitStatus>>,
}

impl Scene {
    /// What a Deployment does: an operator that exits (it does so when it
    /// loses its Lease, e.g. when renewals fail through a burst of 429s) is
    /// started again. Its exit status is kept, to check it was not a crash.
    async fn supervise(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut operators = self.operators.lock().await;
            let before = operators.len();
            operators.retain_mut(|o| match o.0.try_wait() {
                Ok(Some(status)) => {
                    self.exits.lock().unwrap().push(status);
                    false
                }
                _ => true,
            });
            for _ in operators.len()..before {
                operators.push(start_operator_with(&self.cluster, &OPERATOR_ARGS));
            }
        }
    }

    fn rng(&self) -> Rng {
        Rng(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Switches faults; the failure draws continue from the scenario's seed.
    fn faults(&self, write_failure: Option<(f64, u16)>, latency: Duration) {
        self.cluster.sim.faults.switch(FaultConfig {
            write_failure,
            latency,
            seed: self.seed,
            ..FaultConfig::default()
        });
    }

    /// The process id in the leader Lease's holder identity (`disagg-<pid>-<ms>`).
    async fn leader_pid(&self) -> Option<u32> {
        let leases: Api<Lease> = Api::namespaced(self.cluster.client.clone(), "lws-system");
        let lease = leases.get_opt("disaggregatedset-operator").await.ok()??;
        let holder = lease.spec?.holder_identity?;
        holder
            .strip_prefix("disagg-")?
            .split('-')
            .next()?
            .parse()
            .ok()
    }

    /// Waits until operator `pid` holds the Lease.
    async fn until_leading(&self, pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.leader_pid().await != Some(pid) {
            assert!(Instant::now() < deadline, "operator {pid} never led");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the operator with this pid.
    async fn kill(&self, pid: u32) {
        let mut operators = self.operators.lock().await;
        let at = operators
            .iter()
            .position(|o| o.0.id() == pid)
            .expect("a known operator");
        drop(operators.remove(at)); // Drop kills (SIGKILL) and reaps it.
    }

    async fn start_operator(&self) -> u32 {
        let operator = start_operator_with(&self.cluster, &OPERATOR_ARGS);
        let pid = operator.0.id();
        self.operators.lock().await.push(operator);
        pid
    }
}

/// Runs the rollout once per round while `disturb` acts; `operators` replicas run.
async fn survive<F, Fut>(test: &str, operators: usize, disturb: F)
where
    F: Fn(Arc<Scene>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let first_seed = env_u64("DISAGG_FAULT_SEED", 1);
    for seed in first_seed..first_seed + env_u64("DISAGG_FAULT_ROUNDS", 1) {
        let scene = Arc::new(Scene {
            cluster: cluster(&format!("{test}-{seed}")).await,
            operators: Default::default(),
            seed,
            exits: Default::default(),
        });
        for _ in 0..operators {
            scene.start_operator().await;
        }
        scene.cluster.sim.faults.set(FaultConfig {
            seed,
            ..FaultConfig::default()
        });
        let supervisor = tokio::spawn(scene.clone().supervise());
        let started = Instant::now();
        let outcome = tokio::spawn(roll_out(scene.clone(), disturb(scene.clone()))).await;
        supervisor.abort();
        if let Err(e) = outcome {
            panic!(
                "{test} failed with DISAGG_FAULT_SEED={seed} after {:?}: {e}",
                started.elapsed()
            );
        }
        // Exit code 1 is the Lease given up; a panic (101) or anything else is a crash.
        let exits = scene.exits.lock().unwrap().clone();
        assert!(
            exits.iter().all(|s| s.code() == Some(1)),
            "{test} (DISAGG_FAULT_SEED={seed}): an operator crashed: {exits:?}"
        );
    }
}

async fn roll_out(scene: Arc<Scene>, disturbance: impl Future<Output = ()> + Send + 'static) {
    let client = scene.cluster.client.clone();
    let sets: Api<DisaggregatedSet> = Api::namespaced(client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(client.clone(), "default");
    scene.cluster.sim.lws.set(kube_sim::lws_sim::LwsSimConfig {
        group_delay: Duration::from_millis(30),
        unready_fraction: 0.0,
    });
    let mut set = example("model", json!([]));
    set.spec.roles[0].spec.replicas = 10;
    set.spec.roles[1].spec.replicas = 2;
    set.metadata.labels = Some(BTreeMap::from([("team".into(), "inference".into())]));
    set.metadata.annotations = Some(BTreeMap::from([(
        "example.com/owner".into(),
        "search".into(),
    )]));
    sets.create(&PostParams::default(), &set).await.unwrap();
    let (before, _) = until_available(&sets, &lws, "model").await;
    let first = revision_of(&before);
    let uid = before.metadata.uid.clone().unwrap();

    let mut disturbing = tokio::spawn(disturbance);
    let mut disturbance_checked = false;
    let change = json!([
        {"op": "replace", "path": "/spec/roles/0/spec/replicas", "value": 6},
        {"op": "replace", "path": "/spec/roles/1/spec/replicas", "value": 8},
        {"op": "replace", "path": "/spec/roles/0/spec/leaderWorkerTemplate/workerTemplate/spec/containers/0/image", "value": NEW_IMAGE},
        {"op": "replace", "path": "/spec/roles/1/spec/leaderWorkerTemplate/workerTemplate/spec/containers/0/image", "value": NEW_IMAGE},
    ]);
    // The user's own write retries injected faults, as kubectl's user would.
    let deadline = Instant::now() + DEADLINE;
    while let Err(e) = sets
        .patch(
            "model",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(change.clone()).unwrap()),
        )
        .await
    {
        assert!(Instant::now() < deadline, "the change never landed: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut seen_revisions = BTreeSet::from([first.clone()]);
    let mut orphaned_since: Option<Instant> = None;
    let mut last = String::new();
    let (set, kids) = loop {
        assert!(
            Instant::now() < deadline,
            "the rollout did not complete in {DEADLINE:?}; last seen: {last}"
        );
        if !disturbance_checked && disturbing.is_finished() {
            // A disturbance that checks something (e.g. who leads) fails the test here.
            (&mut disturbing).await.expect("the disturbance failed");
            disturbance_checked = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Reads may fail while the API server is down; the next poll sees it.
        let (Ok(set), Ok(list)) = (
            sets.get("model").await,
            lws.list(&kube::api::ListParams::default().labels(&format!("{}=model", keys::NAME)))
                .await,
        ) else {
            continue;
        };
        let kids = list.items;
        last = format!(
            "status {:?}, children {:?}",
            set.status,
            kids.iter()
                .map(|k| (
                    k.metadata.name.clone().unwrap_or_default(),
                    k.spec.replicas,
                    k.status.clone()
                ))
                .collect::<Vec<_>>()
        );
        check_state(
            &kids,
            &uid,
            &first,
            &mut seen_revisions,
            &mut orphaned_since,
        );
        if done(&set, &kids) {
            break (set, kids);
        }
    };
    if !disturbance_checked {
        disturbing.abort();
    }
    scene.faults(None, Duration::ZERO);

    // The final state, and the user's fields.
    let labels = set.metadata.labels.clone().unwrap_or_default();
    let annotations = set.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("inference"));
    assert_eq!(
        annotations.get("example.com/owner").map(String::as_str),
        Some("search")
    );
    for k in &kids {
        let labels = k.metadata.labels.clone().unwrap_or_default();
        assert!(
            labels.contains_key("app.kubernetes.io/component"),
            "{labels:?}"
        );
        let template =
            serde_json::to_value(&k.spec.leader_worker_template.worker_template).unwrap();
        assert_eq!(template["spec"]["containers"][0]["image"], NEW_IMAGE);
    }
}

/// Done: only the new revision, at the target sizes, Available for this generation.
fn done(set: &DisaggregatedSet, kids: &[LeaderWorkerSet]) -> bool {
    let rev = revision_of(set);
    let sizes: BTreeMap<String, i32> = kids
        .iter()
        .map(|k| {
            (
                k.metadata.labels.clone().unwrap()[keys::ROLE].clone(),
                k.spec.replicas,
            )
        })
        .collect();
    available(set)
        && set.metadata.generation == set.status.as_ref().and_then(|s| s.observed_generation)
        && kids.len() == 2
        && revisions(kids) == BTreeSet::from([rev])
        && sizes == TARGET.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

/// The invariants every observed state keeps.
fn check_state(
    kids: &[LeaderWorkerSet],
    uid: &str,
    first: &str,
    seen_revisions: &mut BTreeSet<String>,
    orphaned_since: &mut Option<Instant>,
) {
    let describe = || {
        kids.iter()
            .map(|k| (k.metadata.name.clone().unwrap_or_default(), k.spec.replicas))
            .collect::<Vec<_>>()
    };
    let mut totals: BTreeMap<String, i32> = BTreeMap::new();
    let mut keys_seen = BTreeSet::new();
    let mut old_roles: BTreeMap<String, i32> = BTreeMap::new();
    for k in kids {
        let controlled = k
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == uid);
        assert!(
            controlled,
            "{:?} is not controlled by the set",
            k.metadata.name
        );
        let labels = k.metadata.labels.clone().unwrap_or_default();
        let (role, rev) = (labels[keys::ROLE].clone(), labels[keys::REVISION].clone());
        let key = (labels[keys::SLICE].clone(), role.clone(), rev.clone());
        assert!(
            keys_seen.insert(key.clone()),
            "duplicate child {key:?}: {:?}",
            describe()
        );
        *totals.entry(role.clone()).or_default() += k.spec.replicas;
        seen_revisions.insert(rev.clone());
        if rev == first {
            old_roles.insert(role, k.spec.replicas);
        }
    }
    assert!(
        seen_revisions.len() <= 2,
        "a third revision appeared (a field changed or was lost): {seen_revisions:?}"
    );
    for (role, limit) in SURGE_BOUND {
        let total = totals.get(role).copied().unwrap_or(0);
        assert!(
            total <= limit,
            "{role} has {total} groups over all revisions, above {limit}: {:?}",
            describe()
        );
    }
    // No orphan: the old revision has every role or none (0 replicas or no child).
    let alive = SURGE_BOUND
        .iter()
        .filter(|(r, _)| old_roles.get(*r).copied().unwrap_or(0) > 0)
        .count();
    if alive == 0 || alive == SURGE_BOUND.len() {
        *orphaned_since = None;
    } else {
        let since = *orphaned_since.get_or_insert_with(Instant::now);
        assert!(
            since.elapsed() < ORPHAN_GRACE,
            "the old revision kept one role without the other for {ORPHAN_GRACE:?}: {:?}",
            describe()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_a_tenth_of_writes() {
    survive("conflicts", 1, |scene| async move {
        scene.faults(Some((0.1, 409)), Duration::ZERO);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_bursts_and_server_errors() {
    survive("throttling", 1, |scene| async move {
        loop {
            scene.faults(Some((0.5, 429)), Duration::ZERO);
            tokio::time::sleep(Duration::from_millis(400)).await;
            scene.faults(Some((0.1, 500)), Duration::ZERO);
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_server() {
    survive("latency", 1, |scene| async move {
        scene.faults(None, Duration::from_millis(25));
    })
    .await;
}

/// The operator decides from its watches' stores; here they lag the server
/// by 300 ms, so most reconciles start before the store shows their last
/// writes (which they must wait for, not redo or step past).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_that_lag_the_server() {
    survive("watch-delay", 1, |scene| async move {
        scene.cluster.sim.faults.switch(FaultConfig {
            watch_delay: Duration::from_millis(300),
            seed: scene.seed,
            ..FaultConfig::default()
        });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_dropped_every_few_seconds() {
    survive("dropped-watches", 1, |scene| async move {
        let mut rng = scene.rng();
        loop {
            tokio::time::sleep(rng.millis(200, 2000)).await;
            scene.cluster.sim.faults.drop_watches();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_compacted_so_watches_resume_with_410() {
    survive("compaction", 1, |scene| async move {
        let mut rng = scene.rng();
        loop {
            tokio::time::sleep(rng.millis(200, 1000)).await;
            scene.cluster.sim.store.compact();
            scene.cluster.sim.faults.drop_watches();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_mid_rollout() {
    survive("api-restart", 1, |scene| async move {
        let mut rng = scene.rng();
        tokio::time::sleep(rng.millis(50, 400)).await;
        scene
            .cluster
            .restart_api_server(Duration::from_secs(1))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_sigkilled_at_random_points() {
    survive("sigkill", 1, |scene| async move {
        let mut rng = scene.rng();
        for _ in 0..3 {
            let pid = scene.operators.lock().await[0].0.id();
            scene.until_leading(pid).await;
            tokio::time::sleep(rng.millis(0, 300)).await;
            scene.kill(pid).await;
            scene.start_operator().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_failover_mid_rollout() {
    survive("failover", 2, |scene| async move {
        let mut rng = scene.rng();
        let deadline = Instant::now() + Duration::from_secs(20);
        let leader = loop {
            if let Some(pid) = scene.leader_pid().await {
                break pid;
            }
            assert!(Instant::now() < deadline, "nobody leads");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(rng.millis(0, 300)).await;
        scene.kill(leader).await;
        // The standby takes the Lease once it expires.
        let standby = scene.operators.lock().await[0].0.id();
        scene.until_leading(standby).await;
    })
    .await;
}
