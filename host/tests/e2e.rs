//! End to end: the `disagg` binary, unmodified, runs as its own process
//! against the in-memory cluster (kube-sim, with its LWS simulator), and is
//! observed through the API only.

mod common;

use common::{repo, shared};
use disagg::api::keys;
use disagg::api::lws::LeaderWorkerSet;
use disagg::api::set::DisaggregatedSet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Cluster {
    client: kube::Client,
    kubeconfig: std::path::PathBuf,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Operator(Child);
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// kube-sim in this process, with the CRDs installed and a kubeconfig written.
async fn cluster(test: &str) -> Cluster {
    use kube_sim::server::{Sim, router};
    let sim = Sim::new(Arc::new(kube_sim::store::Store::default()));
    kube_sim::lws_sim::spawn(sim.store.clone(), sim.lws.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(sim)).await.unwrap() });
    let dir = std::env::temp_dir().join(format!("disagg-e2e-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, kube_sim::kubeconfig(addr)).unwrap();
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in [
        repo("deploy/crds/disaggregatedset.x-k8s.io.yaml"),
        shared("upstream/leaderworkerset.x-k8s.io_leaderworkersets.yaml"),
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let crd: CustomResourceDefinition = serde::Deserialize::deserialize(doc).unwrap();
            crds.create(&PostParams::default(), &crd).await.unwrap();
        }
    }
    Cluster {
        client,
        kubeconfig,
        _dir: TempDir(dir),
    }
}

fn start_operator(cluster: &Cluster) -> Operator {
    start_operator_with(cluster, &[])
}

fn start_operator_with(cluster: &Cluster, extra: &[&str]) -> Operator {
    let child = Command::new(env!("CARGO_BIN_EXE_disagg"))
        .args([
            "run",
            "--namespace",
            "lws-system",
            "--probe-addr",
            "127.0.0.1:0",
            "--kubeconfig",
        ])
        .arg(&cluster.kubeconfig)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("DISAGG_E2E_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Operator(child)
}

/// Per role: (replicas of the old revisions, replicas of `revision`), from `spec.replicas`.
type State = BTreeMap<String, (i32, i32)>;

fn state_of(children: &[LeaderWorkerSet], revision: &str) -> State {
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

async fn children(api: &Api<LeaderWorkerSet>, set: &str) -> Vec<LeaderWorkerSet> {
    api.list(&ListParams::default().labels(&format!("{}={set}", keys::NAME)))
        .await
        .unwrap()
        .items
}

fn condition(set: &DisaggregatedSet, type_: &str) -> Option<String> {
    set.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn available(set: &DisaggregatedSet) -> bool {
    condition(set, "Available").as_deref() == Some("True")
}

/// Waits until the set is Available.
async fn until_available(
    sets: &Api<DisaggregatedSet>,
    lws: &Api<LeaderWorkerSet>,
    name: &str,
) -> (DisaggregatedSet, Vec<LeaderWorkerSet>) {
    watch_until(sets, lws, name, "Available", |_| {}, |s, _| available(s)).await
}

/// Polls until `done` accepts the set and its children, checking `each` on every observation.
async fn watch_until(
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
fn planned(before: &DisaggregatedSet, after: &DisaggregatedSet) -> Vec<State> {
    planned_with(before, after, &BTreeMap::new())
}

/// `planned`, with External roles at their scalers' replicas.
fn planned_with(
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
fn on_schedule(schedule: &[State], state: &State) -> bool {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_scale_roll_out_and_delete() {
    let cluster = cluster("basic").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let set: DisaggregatedSet =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap())
            .unwrap();
    let name = set.metadata.name.clone().unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();

    // A fresh create: one LWS per role at its replicas, then Available.
    let (created, kids) = until_available(&sets, &lws, &name).await;
    let first_revision = created
        .status
        .as_ref()
        .unwrap()
        .update_revision
        .clone()
        .unwrap();
    assert_eq!(
        state_of(&kids, &first_revision),
        State::from([("decode".into(), (0, 4)), ("prefill".into(), (0, 2))])
    );
    assert!(kids.iter().all(|k| {
        k.metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| o[0].uid == created.metadata.uid.clone().unwrap())
    }));

    // Scaling changes replicas in place: no new revision.
    sets.patch(
        &name,
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(
                json!([{"op": "replace", "path": "/spec/roles/1/spec/replicas", "value": 6}]),
            )
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let (_, kids) = watch_until(
        &sets,
        &lws,
        &name,
        "decode scaled to 6",
        |_| {},
        |s, k| available(s) && state_of(k, &first_revision).get("decode") == Some(&(0, 6)),
    )
    .await;
    assert_eq!(kids.len(), 2);

    // A template change on one role rolls both out together, along the planner's
    // schedule (DESIGN §5) and within the surge bound (maxSurge 1, maxUnavailable 0).
    let before = sets.get(&name).await.unwrap();
    set_image(&sets, &name, "vllm/vllm-openai:v0.12.0").await;
    let targets = BTreeMap::from([("prefill".to_string(), 2), ("decode".to_string(), 6)]);
    let after = sets.get(&name).await.unwrap();
    let schedule = planned(&before, &after);
    let mut observed: Vec<State> = Vec::new();
    let mut new_revision = String::new();
    let (done, kids) = watch_until(
        &sets,
        &lws,
        &name,
        "rollout complete",
        |kids| {
            let Some(rev) = kids
                .iter()
                .map(|k| k.metadata.labels.clone().unwrap_or_default()[keys::REVISION].clone())
                .find(|r| *r != first_revision)
            else {
                return;
            };
            new_revision = rev;
            let state = state_of(kids, &new_revision);
            for (role, (old, new)) in &state {
                assert!(
                    old + new <= targets[role] + 1,
                    "surge bound broken for {role}: {state:?}"
                );
            }
            assert!(
                on_schedule(&schedule, &state),
                "{state:?} is not on the planner's schedule (or between two of its steps): {schedule:?}"
            );
            if observed.last() != Some(&state) {
                observed.push(state);
            }
        },
        |s, k| {
            available(s)
                && s.status.as_ref().and_then(|st| st.update_revision.as_deref()) != Some(&first_revision)
                && k.len() == 2
        },
    )
    .await;
    let final_revision = done.status.unwrap().update_revision.unwrap();
    assert_eq!(
        state_of(&kids, &final_revision),
        State::from([("decode".into(), (0, 6)), ("prefill".into(), (0, 2))])
    );
    assert!(
        observed.len() >= 3,
        "the rollout went through intermediate states: {observed:?}"
    );
    assert_eq!(observed.last().unwrap()["decode"], (0, 6));

    // Deleting the set takes its children.
    sets.delete(&name, &DeleteParams::background())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !children(&lws, &name).await.is_empty() {
        assert!(Instant::now() < deadline, "children outlived their set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Installs a plugin as the operator finds it: a labelled ConfigMap in its namespace.
async fn install_plugin(client: &kube::Client, name: &str, component: &str) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let bytes = std::fs::read(common::component(component)).unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "lws-system", "labels": {keys::PLUGIN: "true"}},
        "binaryData": {"plugin.wasm": k8s_openapi::ByteString(bytes)},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "lws-system")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
}

fn example(name: &str, plugins: serde_json::Value) -> DisaggregatedSet {
    let mut set: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap())
            .unwrap();
    set["metadata"]["name"] = json!(name);
    set["spec"]["plugins"] = plugins;
    serde_json::from_value(set).unwrap()
}

async fn set_image(sets: &Api<DisaggregatedSet>, name: &str, image: &str) {
    sets.patch(name, &PatchParams::default(), &Patch::Json::<()>(
        serde_json::from_value(json!([{"op": "replace",
            "path": "/spec/roles/0/spec/leaderWorkerTemplate/workerTemplate/spec/containers/0/image",
            "value": image}])).unwrap(),
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_holds_each_step_until_approved() {
    let cluster = cluster("gate").await;
    install_plugin(&cluster.client, "rollout-gate", "rollout-gate").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let set = example(
        "gated",
        json!([{"name": "rollout-gate", "config": {"requireApproval": true, "recheckSeconds": 1}}]),
    );
    sets.create(&PostParams::default(), &set).await.unwrap();
    let (created, _) = until_available(&sets, &lws, "gated").await;
    let first = created.status.unwrap().update_revision.unwrap();

    set_image(&sets, "gated", "vllm/vllm-openai:v0.12.0").await;
    let (held, kids) = watch_until(
        &sets,
        &lws,
        "gated",
        "held at step 1",
        |_| {},
        |s, _| condition(s, "RolloutHeld").as_deref() == Some("True"),
    )
    .await;
    let status = held.status.unwrap();
    let rollout = status.rollout.clone().unwrap();
    assert_eq!(rollout.held_by.as_deref(), Some("rollout-gate"));
    assert!(rollout.hold_reason.unwrap().contains("approve-step"));
    let revision = status.update_revision.unwrap();
    assert_ne!(revision, first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kids_now = children(&lws, "gated").await;
    assert_eq!(
        state_of(&kids_now, &revision),
        state_of(&kids, &revision),
        "nothing moves while held"
    );
    assert!(
        state_of(&kids_now, &revision)
            .values()
            .all(|(_, new)| *new == 0)
    );

    // Approving step 1 lets exactly that step through; the gate then holds step 2.
    sets.patch(
        "gated",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {keys::APPROVE_STEP: "1"}}})),
    )
    .await
    .unwrap();
    let (_, kids) = watch_until(
        &sets,
        &lws,
        "gated",
        "step 1 taken, step 2 held",
        |_| {},
        |s, k| {
            let moved = state_of(k, &revision).values().any(|(_, new)| *new > 0);
            moved
                && s.status
                    .as_ref()
                    .and_then(|st| st.rollout.as_ref())
                    .and_then(|r| r.hold_reason.as_deref())
                    .is_some_and(|r| r.contains("step 2"))
        },
    )
    .await;
    assert_eq!(
        state_of(&kids, &revision)
            .values()
            .map(|(_, n)| n)
            .sum::<i32>(),
        2,
        "step 1 adds one group per role"
    );

    // Unbinding the gate (it patches no template, so the revision stays) lets the rollout finish.
    sets.patch(
        "gated",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"plugins": null}})),
    )
    .await
    .unwrap();
    watch_until(
        &sets,
        &lws,
        "gated",
        "rollout complete",
        |_| {},
        |s, k| {
            available(s)
                && condition(s, "RolloutHeld").as_deref() == Some("False")
                && state_of(k, &revision)
                    == State::from([("decode".into(), (0, 4)), ("prefill".into(), (0, 2))])
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_blocks_under_fail_and_is_skipped_under_ignore() {
    let cluster = cluster("failure").await;
    install_plugin(&cluster.client, "hostile", "hostile").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let trap = |policy: &str| json!([{"name": "hostile", "config": {"mode": "trap"}, "failurePolicy": policy, "roles": ["prefill"]}]);
    sets.create(&PostParams::default(), &example("strict", trap("Fail")))
        .await
        .unwrap();
    sets.create(&PostParams::default(), &example("lenient", trap("Ignore")))
        .await
        .unwrap();

    // Fail: the role the plugin patches gets no child; the other role carries on.
    let (strict, kids) = watch_until(
        &sets,
        &lws,
        "strict",
        "PluginsReady=False",
        |_| {},
        |s, k| condition(s, "PluginsReady").as_deref() == Some("False") && !k.is_empty(),
    )
    .await;
    let roles: Vec<String> = kids
        .iter()
        .map(|k| k.metadata.labels.clone().unwrap()[keys::ROLE].clone())
        .collect();
    assert_eq!(roles, vec!["decode"]);
    let message = strict
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "PluginsReady")
        .unwrap()
        .message;
    assert!(
        message.contains("hostile") && message.contains("prefill"),
        "{message}"
    );

    // Ignore: the plugin is skipped and the set comes up whole; the failure is a Warning Event.
    let (_, kids) = until_available(&sets, &lws, "lenient").await;
    assert_eq!(kids.len(), 2);

    // Both failures are Warning Events on their sets.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.client.clone(), "default");
    let warned: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("PluginFailed"))
        .filter_map(|e| e.regarding.and_then(|r| r.name))
        .collect();
    assert!(
        warned.contains(&"strict".to_string()) && warned.contains(&"lenient".to_string()),
        "{warned:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_child_is_left_alone_and_reported() {
    let cluster = cluster("foreign").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    // Someone else's LWS already has the name the set's prefill child would get.
    let set = example("taken", json!([]));
    // The revision is hashed from the spec as the API server stores it, defaults applied.
    let mut defaulted = disagg::input::load_set(&repo("examples/vllm-pd.yaml")).unwrap();
    defaulted.metadata.name = Some("taken".into());
    let revision = disagg::core::revision::revision(&defaulted.spec, &[]);
    let mut squatter =
        disagg::core::render::render_child(&set, &set.spec.roles[0], 0, &revision, 7);
    squatter.metadata.owner_references = None;
    let squatter = lws.create(&PostParams::default(), &squatter).await.unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let (taken, _) = watch_until(
        &sets,
        &lws,
        "taken",
        "Degraded",
        |_| {},
        |s, _| condition(s, "Degraded").as_deref() == Some("True"),
    )
    .await;
    let degraded = taken
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.reason, "ChildNameTaken");
    assert!(
        degraded
            .message
            .contains(squatter.metadata.name.as_deref().unwrap())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = lws
        .get(squatter.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(after.spec.replicas, 7);
    assert_eq!(after.metadata.owner_references, None);
    let writers: Vec<String> = after
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        !writers
            .iter()
            .any(|m| m == disagg::controller::FIELD_MANAGER),
        "the operator wrote to it: {writers:?}"
    );
}

fn revision_of(set: &DisaggregatedSet) -> String {
    set.status
        .as_ref()
        .and_then(|s| s.update_revision.clone())
        .unwrap_or_default()
}

fn revisions(kids: &[LeaderWorkerSet]) -> std::collections::BTreeSet<String> {
    kids.iter()
        .map(|k| k.metadata.labels.clone().unwrap_or_default()[keys::REVISION].clone())
        .collect()
}

/// Waits until the set is Available at a revision other than `not`, with only
/// that revision's children left; checks the surge bound (all revisions
/// together) on every observation. Returns the set and its children.
async fn settle(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_roles_external_scaling_a_b_c_rollback_and_role_removal() {
    use disagg::api::scaler::DisaggregatedSetRoleScaler;
    let cluster = cluster("three").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let scalers: Api<DisaggregatedSetRoleScaler> =
        Api::namespaced(cluster.client.clone(), "default");
    let set: DisaggregatedSet =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/epd-3role.yaml")).unwrap())
            .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let (a, kids) = until_available(&sets, &lws, "epd").await;
    let rev_a = revision_of(&a);
    assert_eq!(
        state_of(&kids, &rev_a),
        State::from([
            ("encode".into(), (0, 2)),
            ("prefill".into(), (0, 4)),
            ("decode".into(), (0, 6))
        ])
    );

    // The External role's scaler exists, seeded from the role, and drives it.
    let scaler = scalers.get("epd-decode").await.unwrap();
    assert_eq!(scaler.spec.replicas, 6);
    scalers
        .patch_scale(
            "epd-decode",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 8}})),
        )
        .await
        .unwrap();
    watch_until(
        &sets,
        &lws,
        "epd",
        "decode follows its scaler",
        |_| {},
        |s, k| available(s) && state_of(k, &rev_a).get("decode") == Some(&(0, 8)),
    )
    .await;
    // Its status follows the role's groups, for HPA.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = scalers
            .get("epd-decode")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        if status.replicas == Some(8) {
            assert!(
                status
                    .selector
                    .unwrap()
                    .contains("disaggregatedset.x-k8s.io/role=decode")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scaler's status never showed 8: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A template change on one role moves all three along the planner's schedule.
    let before = sets.get("epd").await.unwrap();
    set_image(&sets, "epd", "vllm/vllm-openai:v0.12.0").await;
    let after = sets.get("epd").await.unwrap();
    let external = BTreeMap::from([("decode".to_string(), 8)]);
    let schedule = planned_with(&before, &after, &external);
    let bound = BTreeMap::from([
        ("encode".to_string(), 3),
        ("prefill".to_string(), 6),
        ("decode".to_string(), 9),
    ]);
    let mut seen = 0;
    let (b, _) = watch_until(
        &sets,
        &lws,
        "epd",
        "rolled out to B",
        |kids| {
            let Some(rev) = revisions(kids).into_iter().find(|r| *r != rev_a) else {
                return;
            };
            let state = state_of(kids, &rev);
            assert!(
                on_schedule(&schedule, &state),
                "{state:?} is off the schedule {schedule:?}"
            );
            seen += 1;
        },
        |s, k| available(s) && revision_of(s) != rev_a && revisions(k).len() == 1,
    )
    .await;
    assert!(seen > 0);
    let rev_b = revision_of(&b);

    // A→B→C: C arrives while B is rolling out; B (the newest old) drains first.
    set_image(&sets, "epd", "vllm/vllm-openai:v0.13.0").await;
    watch_until(
        &sets,
        &lws,
        "epd",
        "C under way",
        |_| {},
        |s, k| revision_of(s) != rev_b && revisions(k).len() > 1,
    )
    .await;
    set_image(&sets, "epd", "vllm/vllm-openai:v0.14.0").await;
    let (c, _) = settle(&sets, &lws, "epd", &rev_b, &bound).await;
    let rev_c = revision_of(&c);

    // Rollback: the first template again is revision A again.
    set_image(&sets, "epd", "vllm/vllm-openai:v0.11.0").await;
    let (back, _) = settle(&sets, &lws, "epd", &rev_c, &bound).await;
    assert_eq!(revision_of(&back), rev_a);

    // Removing a role is a new revision without it.
    sets.patch(
        "epd",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "remove", "path": "/spec/roles/0"}])).unwrap(),
        ),
    )
    .await
    .unwrap();
    let (removed, kids) = settle(&sets, &lws, "epd", &rev_a, &bound).await;
    let rev_d = revision_of(&removed);
    assert_eq!(
        state_of(&kids, &rev_d),
        State::from([("prefill".into(), (0, 4)), ("decode".into(), (0, 8))])
    );

    // Deleting the set takes the children and the scaler.
    sets.delete("epd", &DeleteParams::background())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !children(&lws, "epd").await.is_empty()
        || scalers.get_opt("epd-decode").await.unwrap().is_some()
    {
        assert!(
            Instant::now() < deadline,
            "children or the scaler outlived their set"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_dies_mid_rollout() {
    use k8s_openapi::api::coordination::v1::Lease;
    let cluster = cluster("failover").await;
    let fast = ["--lease-duration-seconds", "2"];
    let mut operators = [
        start_operator_with(&cluster, &fast),
        start_operator_with(&cluster, &fast),
    ];
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "lws-system");
    sets.create(&PostParams::default(), &example("ha", json!([])))
        .await
        .unwrap();
    let (first, _) = until_available(&sets, &lws, "ha").await;
    let holder = |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default()
    };
    let lease = leases.get("disaggregatedset-operator").await.unwrap();
    let leader = operators
        .iter()
        .position(|o| holder(&lease).starts_with(&format!("disagg-{}-", o.0.id())))
        .expect("one of the two operators holds the Lease");

    // SIGKILL the leader mid-rollout; the standby takes the Lease once it expires and finishes.
    set_image(&sets, "ha", "vllm/vllm-openai:v0.12.0").await;
    let _ = operators[leader].0.kill();
    let _ = operators[leader].0.wait();
    let bound = BTreeMap::from([("prefill".to_string(), 3), ("decode".to_string(), 5)]);
    settle(&sets, &lws, "ha", &revision_of(&first), &bound).await;
    let standby = format!("disagg-{}-", operators[1 - leader].0.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lease = leases.get("disaggregatedset-operator").await.unwrap();
        if holder(&lease).starts_with(&standby) {
            assert!(lease.spec.unwrap().lease_transitions.unwrap_or(0) >= 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never took the Lease: {lease:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_role_add_and_rename() {
    let cluster = cluster("roles").await;
    let _operator = start_operator(&cluster);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    sets.create(&PostParams::default(), &example("roles", json!([])))
        .await
        .unwrap();
    let (first, _) = until_available(&sets, &lws, "roles").await;
    let rev_a = revision_of(&first);
    let replicas = |prefill: i32, decode: i32| {
        Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/roles/0/spec/replicas", "value": prefill},
                {"op": "replace", "path": "/spec/roles/1/spec/replicas", "value": decode},
            ]))
            .unwrap(),
        )
    };

    // Paused: every role at 0 keeps the revision and runs nothing.
    sets.patch("roles", &PatchParams::default(), &replicas(0, 0))
        .await
        .unwrap();
    watch_until(
        &sets,
        &lws,
        "roles",
        "paused",
        |_| {},
        |s, k| {
            s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
                && k.iter().all(|c| c.spec.replicas == 0)
        },
    )
    .await;
    sets.patch("roles", &PatchParams::default(), &replicas(2, 4))
        .await
        .unwrap();
    let (resumed, kids) = watch_until(
        &sets,
        &lws,
        "roles",
        "resumed",
        |_| {},
        |s, k| {
            available(s)
                && state_of(k, &rev_a)
                    == State::from([("decode".into(), (0, 4)), ("prefill".into(), (0, 2))])
        },
    )
    .await;
    assert_eq!(revision_of(&resumed), rev_a);
    assert_eq!(kids.len(), 2);

    // Adding a role is a new revision with it; the old roles roll over together.
    let mut encode = serde_json::to_value(&resumed.spec.roles[0]).unwrap();
    encode["name"] = json!("encode");
    encode["spec"]["replicas"] = json!(1);
    sets.patch(
        "roles",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(
                json!([{"op": "add", "path": "/spec/roles/-", "value": encode}]),
            )
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let bound = BTreeMap::from([
        ("prefill".to_string(), 3),
        ("decode".to_string(), 5),
        ("encode".to_string(), 2),
        ("generate".to_string(), 5),
    ]);
    let (added, kids) = settle(&sets, &lws, "roles", &rev_a, &bound).await;
    let rev_b = revision_of(&added);
    assert_eq!(
        state_of(&kids, &rev_b),
        State::from([
            ("decode".into(), (0, 4)),
            ("encode".into(), (0, 1)),
            ("prefill".into(), (0, 2))
        ])
    );

    // Renaming a role replaces it: the old name drains with its revision.
    sets.patch(
        "roles",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(
                json!([{"op": "replace", "path": "/spec/roles/1/name", "value": "generate"}]),
            )
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let (renamed, kids) = settle(&sets, &lws, "roles", &rev_b, &bound).await;
    assert_eq!(
        state_of(&kids, &revision_of(&renamed)),
        State::from([
            ("generate".into(), (0, 4)),
            ("encode".into(), (0, 1)),
            ("prefill".into(), (0, 2))
        ])
    );
}

/// Writes a plugin ConfigMap (create or replace) with one binaryData key.
async fn put_plugin(client: &kube::Client, name: &str, key: &str, bytes: Vec<u8>) {
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

fn plugin_digest(set: &DisaggregatedSet, plugin: &str) -> Option<String> {
    set.status
        .as_ref()?
        .plugins
        .iter()
        .find(|p| p.name == plugin)?
        .digest
        .clone()
}

fn condition_message(set: &DisaggregatedSet, type_: &str) -> String {
    set.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_bindings_and_plugin_hot_swap() {
    use disagg::plugin::Runtime;
    let cluster = cluster("hotswap").await;
    let v1 = std::fs::read(common::component("role-profile")).unwrap();
    let v2 = common::with_custom_section(&v1, "build", b"v2");
    let (d1, d2) = (Runtime::digest(&v1).unwrap(), Runtime::digest(&v2).unwrap());
    put_plugin(&cluster.client, "role-profile", "plugin.wasm", v1.clone()).await;
    let _operator = start_operator_with(
        &cluster,
        &["--default-plugins", r#"[{"name": "role-profile"}]"#],
    );
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let bound = BTreeMap::from([("prefill".to_string(), 3), ("decode".to_string(), 5)]);

    // "plain" binds nothing and gets the default; "tuned" replaces it with its own binding.
    let tuned_binding = json!([{"name": "role-profile",
        "config": {"roles": {"decode": {"env": {"TUNED": "yes"}}}}}]);
    sets.create(&PostParams::default(), &example("plain", json!([])))
        .await
        .unwrap();
    sets.create(&PostParams::default(), &example("tuned", tuned_binding))
        .await
        .unwrap();
    let (plain, _) = until_available(&sets, &lws, "plain").await;
    let (_, tuned_kids) = until_available(&sets, &lws, "tuned").await;
    assert_eq!(plugin_digest(&plain, "role-profile"), Some(d1.clone()));
    let env_of = |k: &LeaderWorkerSet| {
        serde_json::to_value(&k.spec.leader_worker_template.worker_template).unwrap()["spec"]
            ["containers"][0]["env"]
            .to_string()
    };
    for k in &tuned_kids {
        let role = k.metadata.labels.clone().unwrap()[keys::ROLE].clone();
        assert_eq!(env_of(k).contains("TUNED"), role == "decode", "{role}");
    }
    let mut revision = BTreeMap::new();
    for name in ["plain", "tuned"] {
        revision.insert(name, revision_of(&sets.get(name).await.unwrap()));
    }

    // A new build of a template-patching plugin rolls out every set bound to it.
    put_plugin(&cluster.client, "role-profile", "plugin.wasm", v2.clone()).await;
    for name in ["plain", "tuned"] {
        let (set, _) = settle(&sets, &lws, name, &revision[name], &bound).await;
        assert_eq!(plugin_digest(&set, "role-profile"), Some(d2.clone()));
        revision.insert(name, revision_of(&set));
    }

    // A broken component is refused: the last good one stays in use (no rollout),
    // the ConfigMap gets a Warning Event, and the sets say why in PluginsReady.
    put_plugin(
        &cluster.client,
        "role-profile",
        "plugin.wasm",
        b"not a component".to_vec(),
    )
    .await;
    for name in ["plain", "tuned"] {
        let (set, _) = watch_until(
            &sets,
            &lws,
            name,
            "PluginsReady=False",
            |_| {},
            |s, _| condition(s, "PluginsReady").as_deref() == Some("False"),
        )
        .await;
        let message = condition_message(&set, "PluginsReady");
        assert!(
            message.contains("refused") && message.contains(&d2),
            "{message}"
        );
        assert_eq!(plugin_digest(&set, "role-profile"), Some(d2.clone()));
        assert_eq!(revision_of(&set), revision[name]);
    }
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.client.clone(), "lws-system");
    let refused = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("PluginRefused"))
        .expect("a PluginRefused Event");
    assert_eq!(
        refused.regarding.and_then(|r| r.name).as_deref(),
        Some("role-profile")
    );

    // A digest pin runs only that component: pinned to v1 while v2 is in use, nothing is created.
    let pinned = json!([{"name": "role-profile", "digest": d1}]);
    sets.create(&PostParams::default(), &example("pinned", pinned))
        .await
        .unwrap();
    let (set, kids) = watch_until(
        &sets,
        &lws,
        "pinned",
        "pin mismatch reported",
        |_| {},
        |s, _| condition_message(s, "PluginsReady").contains("pinned"),
    )
    .await;
    assert!(
        kids.is_empty(),
        "a set whose pin does not match creates nothing"
    );
    assert_eq!(condition(&set, "PluginsReady").as_deref(), Some("False"));

    // A gzip-compressed v1 loads (its digest is that of the component): the pin
    // matches, the others roll back to v1, and every set is ready again.
    put_plugin(
        &cluster.client,
        "role-profile",
        "plugin.wasm.gz",
        common::gzip(&v1),
    )
    .await;
    until_available(&sets, &lws, "pinned").await;
    for name in ["plain", "tuned"] {
        let (set, _) = settle(&sets, &lws, name, &revision[name], &bound).await;
        assert_eq!(plugin_digest(&set, "role-profile"), Some(d1.clone()));
        assert_eq!(condition(&set, "PluginsReady").as_deref(), Some("True"));
    }

    // A deleted plugin is reported on the sets that need it, and their children stay as they are.
    let before = children(&lws, "plain").await;
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(cluster.client.clone(), "lws-system")
        .delete("role-profile", &DeleteParams::default())
        .await
        .unwrap();
    for name in ["plain", "tuned", "pinned"] {
        let (set, _) = watch_until(
            &sets,
            &lws,
            name,
            "PluginMissing reported",
            |_| {},
            |s, _| condition_message(s, "PluginsReady").contains("not found"),
        )
        .await;
        assert_eq!(condition(&set, "PluginsReady").as_deref(), Some("False"));
    }
    let after = children(&lws, "plain").await;
    let names = |k: &[LeaderWorkerSet]| -> Vec<(Option<String>, i32)> {
        k.iter()
            .map(|c| (c.metadata.name.clone(), c.spec.replicas))
            .collect()
    };
    assert_eq!(names(&after), names(&before));
}
