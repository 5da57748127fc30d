//! CustomResourceDefinitions applied through the API register new resources,
//! whose objects are validated, pruned and defaulted by their schema.

use disagg_api::lws::LeaderWorkerSet;
use disagg_api::set::DisaggregatedSet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube_sim::server::{Sim, router};
use kube_sim::store::Store;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use test_support::{repo, shared};

async fn start() -> kube::Client {
    start_with(Sim::new(Arc::new(Store::default()))).await
}

async fn start_with(sim: Arc<Sim>) -> kube::Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(sim)).await.unwrap() });
    kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap())).unwrap()
}

async fn install(client: &kube::Client, file: PathBuf) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let text = std::fs::read_to_string(&file).unwrap();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let crd: CustomResourceDefinition = serde::Deserialize::deserialize(doc).unwrap();
        let created = api.create(&PostParams::default(), &crd).await.unwrap();
        let established = api
            .get(created.metadata.name.as_deref().unwrap())
            .await
            .unwrap();
        let conditions = established.status.unwrap().conditions.unwrap();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        );
    }
}

#[tokio::test]
async fn crds_register_resources_with_defaults_pruning_and_validation() {
    let client = start().await;
    install(&client, repo("deploy/crds/disaggregatedset.x-k8s.io.yaml")).await;
    install(
        &client,
        shared("upstream/leaderworkerset.x-k8s.io_leaderworkersets.yaml"),
    )
    .await;

    let sets: Api<DisaggregatedSet> = Api::namespaced(client.clone(), "default");
    let mut manifest: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap())
            .unwrap();
    manifest["spec"]["roles"][0]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["surprise"] =
        json!(1);
    let set: DisaggregatedSet = serde_json::from_value(manifest.clone()).unwrap();
    // kubectl's default (fieldValidation=Strict): unknown fields are an error.
    let mut req = kube::core::Request::new(
        "/apis/disaggregatedset.x-k8s.io/v1/namespaces/default/disaggregatedsets",
    )
    .create(&PostParams::default(), serde_json::to_vec(&set).unwrap())
    .unwrap();
    *req.uri_mut() = format!("{}&fieldValidation=Strict", req.uri())
        .parse()
        .unwrap();
    let err = client.request::<DisaggregatedSet>(req).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("surprise: unknown field")),
        "{err:?}"
    );
    // Otherwise they are pruned, and schema defaults are applied.
    let created = sets.create(&PostParams::default(), &set).await.unwrap();
    let raw = serde_json::to_value(&created).unwrap();
    assert!(
        raw["spec"]["roles"][0]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
            .get("surprise")
            .is_none()
    );
    assert_eq!(created.spec.slices, 1);
    assert_eq!(
        raw["spec"]["roles"][0]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"]
            [0]["ports"][0]["protocol"],
        "TCP"
    );

    // Type errors are refused whatever the validation mode.
    let mut bad = manifest.clone();
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["slices"] = json!("two");
    let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource::erase::<DisaggregatedSet>(&()),
    );
    let obj: kube::api::DynamicObject = serde_json::from_value(bad).unwrap();
    let err = dynamic
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("spec.slices: must be of type integer")),
        "{err:?}"
    );

    // The upstream LWS CRD serves LeaderWorkerSets with their status subresource.
    let lws_api: Api<LeaderWorkerSet> = Api::namespaced(client.clone(), "default");
    let rendered =
        disagg_core::render::render_child(&created, &created.spec.roles[0], 0, "abcd1234", 2);
    let lws = lws_api
        .create(&PostParams::default(), &rendered)
        .await
        .unwrap();
    assert_eq!(lws.spec.replicas, 2);
    let mut with_status = lws.clone();
    with_status.status = Some(disagg_api::lws::LeaderWorkerSetStatus {
        replicas: 2,
        ready_replicas: 2,
        ..Default::default()
    });
    let updated = lws_api
        .replace_status(
            lws.metadata.name.as_deref().unwrap(),
            &PostParams::default(),
            &with_status,
        )
        .await
        .unwrap();
    assert_eq!(updated.status.unwrap().ready_replicas, 2);

    // The scale subresource maps onto spec.replicas / status.replicas / status.hpaPodSelector.
    let name = lws.metadata.name.as_deref().unwrap();
    let scale = lws_api.get_scale(name).await.unwrap();
    assert_eq!(
        (scale.spec.unwrap().replicas, scale.status.unwrap().replicas),
        (Some(2), 2)
    );
    let scaled = lws_api
        .patch_scale(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(5));
    let after = lws_api.get(name).await.unwrap();
    assert_eq!(
        (after.spec.replicas, after.status.unwrap().ready_replicas),
        (5, 2)
    );
    let err = lws_api
        .patch_scale(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": -1}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );

    // Aggregated discovery (what kubectl asks for first) agrees with the legacy endpoints.
    let aggregated = kube::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    let (lws_resource, caps) = aggregated
        .get("leaderworkerset.x-k8s.io")
        .expect("the LWS group is in aggregated discovery")
        .recommended_kind("LeaderWorkerSet")
        .unwrap();
    assert_eq!(lws_resource.plural, "leaderworkersets");
    assert!(
        caps.subresources
            .iter()
            .any(|(r, _)| r.plural.ends_with("scale")),
        "{caps:?}"
    );
    assert!(
        aggregated
            .get("")
            .is_some_and(|core| core.recommended_kind("ConfigMap").is_some())
    );

    // Discovery shows the new groups with their short names.
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let lws_group = discovery
        .get("leaderworkerset.x-k8s.io")
        .expect("the LWS group is discoverable");
    assert!(
        lws_group
            .recommended_resources()
            .iter()
            .any(|(r, _)| r.plural == "leaderworkersets")
    );
}

/// Polls an LWS until `check` accepts its status.
async fn wait_for(
    api: &Api<LeaderWorkerSet>,
    name: &str,
    what: &str,
    check: impl Fn(&disagg_api::lws::LeaderWorkerSetStatus) -> bool,
) -> disagg_api::lws::LeaderWorkerSetStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = api.get(name).await.unwrap().status.unwrap_or_default();
        if check(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: {what}; status is {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A server with the LWS simulator (groups ready after `delay`), both CRDs,
/// and the example set to render children from.
async fn lws_sim_cluster(delay: std::time::Duration) -> (Arc<Sim>, kube::Client, DisaggregatedSet) {
    let sim = Sim::new(Arc::new(Store::default()));
    sim.lws.set(kube_sim::lws_sim::LwsSimConfig {
        group_delay: delay,
        unready_fraction: 0.0,
    });
    kube_sim::lws_sim::spawn(sim.store.clone(), sim.lws.clone());
    let client = start_with(sim.clone()).await;
    install(
        &client,
        shared("upstream/leaderworkerset.x-k8s.io_leaderworkersets.yaml"),
    )
    .await;
    install(&client, repo("deploy/crds/disaggregatedset.x-k8s.io.yaml")).await;
    let set: DisaggregatedSet =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap())
            .unwrap();
    (sim, client, set)
}

#[tokio::test]
async fn the_lws_simulator_makes_status_follow_spec() {
    let delay = std::time::Duration::from_millis(300);
    let (sim, client, set) = lws_sim_cluster(delay).await;
    let api: Api<LeaderWorkerSet> = Api::namespaced(client.clone(), "default");
    let mut lws = disagg_core::render::render_child(&set, &set.spec.roles[0], 0, "abcd1234", 2);
    // Standalone: an owner reference to a set that does not exist would be garbage-collected.
    lws.metadata.owner_references = None;
    let name = lws.metadata.name.clone().unwrap();
    let started = std::time::Instant::now();
    api.create(&PostParams::default(), &lws).await.unwrap();

    // Groups exist at once and become ready after the delay.
    let s = wait_for(&api, &name, "2 groups created", |s| s.replicas == 2).await;
    assert_eq!(s.ready_replicas, 0, "ready before the group delay");
    let s = wait_for(&api, &name, "2 groups ready", |s| s.ready_replicas == 2).await;
    assert!(started.elapsed() >= delay);
    assert_eq!(s.updated_replicas, 2);
    assert_eq!(
        s.hpa_pod_selector.as_deref(),
        Some(
            format!(
                "leaderworkerset.sigs.k8s.io/name={name},leaderworkerset.sigs.k8s.io/worker-index=0"
            )
            .as_str()
        )
    );
    let available = |s: &disagg_api::lws::LeaderWorkerSetStatus| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
    };
    assert!(available(&s));

    // Scaling up through the scale subresource: new groups start unready.
    api.patch_scale(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    let s = wait_for(&api, &name, "3 groups created", |s| s.replicas == 3).await;
    assert_eq!(s.ready_replicas, 2);
    assert!(!available(&s));
    wait_for(&api, &name, "3 groups ready", |s| s.ready_replicas == 3).await;

    // The annotation holds groups unready; removing it lets them come back.
    let hold = |v: serde_json::Value| {
        kube::api::Patch::Merge(
            json!({"metadata": {"annotations": {kube_sim::lws_sim::UNREADY_ANNOTATION: v}}}),
        )
    };
    let pp = kube::api::PatchParams::default();
    api.patch(&name, &pp, &hold(json!("1"))).await.unwrap();
    wait_for(&api, &name, "1 group held", |s| s.ready_replicas == 2).await;
    api.patch(&name, &pp, &hold(json!("all"))).await.unwrap();
    wait_for(&api, &name, "all groups held", |s| s.ready_replicas == 0).await;
    api.patch(&name, &pp, &hold(json!(null))).await.unwrap();
    wait_for(&api, &name, "released", |s| s.ready_replicas == 3).await;

    // And so does the configured fraction, for every LWS.
    sim.lws.set(kube_sim::lws_sim::LwsSimConfig {
        group_delay: delay,
        unready_fraction: 0.5,
    });
    wait_for(&api, &name, "half held", |s| s.ready_replicas == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_become_ready_while_other_lws_keep_changing() {
    // Regression: an event for another LWS arriving as a group fell due used
    // to win the race against the simulator's timer, and the group stayed unready.
    let (_sim, client, set) = lws_sim_cluster(std::time::Duration::from_millis(20)).await;
    let api: Api<LeaderWorkerSet> = Api::namespaced(client.clone(), "default");
    let standalone = |role: usize, revision: &str| {
        let mut lws =
            disagg_core::render::render_child(&set, &set.spec.roles[role], 0, revision, 1);
        lws.metadata.owner_references = None;
        lws
    };
    let busy = standalone(1, "busy0000");
    api.create(&PostParams::default(), &busy).await.unwrap();
    let busy_name = busy.metadata.name.clone().unwrap();
    let churn = {
        let api = api.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let patch = json!({"metadata": {"annotations": {"churn": i.to_string()}}});
                let patched = api
                    .patch(
                        &busy_name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(patch),
                    )
                    .await;
                // Once the server is gone (the test is over) a patch fails at
                // once, never pending: a loop that went on would never give
                // the runtime a chance to stop it, and the test would hang.
                if patched.is_err() {
                    break;
                }
            }
        })
    };
    // Several LWS scaled one group at a time, each group falling due amid the churn.
    for round in 0..5 {
        let lws = standalone(0, &format!("round{round:03}"));
        let name = lws.metadata.name.clone().unwrap();
        api.create(&PostParams::default(), &lws).await.unwrap();
        for replicas in 2..=4 {
            wait_for(&api, &name, "all groups ready", |s| {
                s.ready_replicas == replicas - 1
            })
            .await;
            api.patch_scale(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .unwrap();
        }
        wait_for(&api, &name, "4 groups ready", |s| s.ready_replicas == 4).await;
    }
    churn.abort();
}
