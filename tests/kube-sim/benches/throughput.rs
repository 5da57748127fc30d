//! kube-sim throughput on this machine, client and server in one process over
//! loopback HTTP (as the operator's tests run it):
//!
//! * sustained server-side-apply writes per second of rendered LeaderWorkerSets
//!   (~the operator's write), validated and defaulted against the upstream CRD,
//!   from 8 concurrent clients;
//! * watch fan-out: 100 open watches, each receiving every one of 500 writes;
//!   events delivered per second and the write-to-delivery latency.
//!
//! Prints one machine-readable line starting `BENCH kube-sim`.

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube_sim::server::{Sim, router};
use kube_sim::store::Store;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::{repo, shared};

const CLIENTS: usize = 8;
const SUSTAIN: Duration = Duration::from_secs(5);
const WATCHERS: usize = 100;
const FANOUT_WRITES: usize = 500;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p) as usize]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let sim = Sim::new(Arc::new(Store::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(sim);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();

    // The upstream LWS CRD, so every write is validated, pruned and defaulted.
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
            ),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_yaml_ng::from_str(
        &std::fs::read_to_string(shared(
            "upstream/leaderworkerset.x-k8s.io_leaderworkersets.yaml",
        ))
        .unwrap(),
    )
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let set: disagg_api::set::DisaggregatedSet =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap())
            .unwrap();
    let template = serde_json::to_value(disagg_core::render::render_child(
        &set,
        &set.spec.roles[0],
        0,
        "abcd1234",
        1,
    ))
    .unwrap();
    let lws = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("leaderworkerset.x-k8s.io", "v1", "LeaderWorkerSet"),
        "leaderworkersets",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &lws);
    let object = move |name: &str, replicas: u64| -> Value {
        let mut o = template.clone();
        o["metadata"] = json!({"name": name});
        o["spec"]["replicas"] = json!(replicas);
        o
    };
    let size = object("x", 1).to_string().len();
    let pp = PatchParams::apply("bench").force();

    // 1. Sustained server-side apply.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (api, pp, object) = (api.clone(), pp.clone(), object.clone());
        tasks.push(tokio::spawn(async move {
            let mut writes = 0u64;
            while started.elapsed() < SUSTAIN {
                let name = format!("ssa-{c}-{}", writes % 20);
                let body = object(&name, 1 + writes % 7);
                api.patch(&name, &pp, &Patch::Apply(body)).await.unwrap();
                writes += 1;
            }
            writes
        }));
    }
    let mut writes = 0;
    for t in tasks {
        writes += t.await.unwrap();
    }
    let ssa_per_sec = writes as f64 / started.elapsed().as_secs_f64();

    // 2. Watch fan-out.
    let from = api
        .list_metadata(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    for _ in 0..WATCHERS {
        let (api, from, tx) = (api.clone(), from.clone(), tx.clone());
        tokio::spawn(async move {
            let mut stream = api
                .watch(&WatchParams::default().timeout(290), &from)
                .await
                .unwrap()
                .boxed();
            while let Some(Ok(WatchEvent::Modified(o) | WatchEvent::Added(o))) = stream.next().await
            {
                let rv = o.metadata.resource_version.unwrap().parse().unwrap();
                if tx.send((rv, Instant::now())).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut written = std::collections::HashMap::new();
    let fanout_started = Instant::now();
    for i in 0..FANOUT_WRITES {
        let name = format!("fan-{}", i % 10);
        let o = api
            .patch(
                &name,
                &pp,
                &Patch::Apply(object(&name, 1 + (i / 10) as u64 % 5)),
            )
            .await
            .unwrap();
        let rv: u64 = o.metadata.resource_version.unwrap().parse().unwrap();
        written.insert(rv, Instant::now());
    }
    let expected = written.len() * WATCHERS;
    let mut latencies = Vec::with_capacity(expected);
    while latencies.len() < expected {
        let Ok(Some((rv, at))) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await
        else {
            panic!("watchers received {} of {expected} events", latencies.len());
        };
        if let Some(w) = written.get(&rv) {
            latencies.push(at.saturating_duration_since(*w).as_secs_f64() * 1e6);
        }
    }
    let fanout_secs = fanout_started.elapsed().as_secs_f64();
    let events_per_sec = expected as f64 / fanout_secs;
    let p50 = median(&mut latencies);
    let p99 = percentile(&mut latencies, 0.99);
    println!(
        "ssa: {writes} writes of {size}-byte LWSs in {:.1}s from {CLIENTS} clients",
        SUSTAIN.as_secs_f64()
    );
    println!("fan-out: {FANOUT_WRITES} writes x {WATCHERS} watches in {fanout_secs:.2}s");
    println!(
        "BENCH kube-sim ssa_writes_per_sec={ssa_per_sec:.0} watch_events_per_sec={events_per_sec:.0} watchers={WATCHERS} delivery_p50_us={p50:.0} delivery_p99_us={p99:.0}"
    );
}
