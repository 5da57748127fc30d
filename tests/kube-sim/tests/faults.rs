//! Fault injection, from tests and through the admin endpoint.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube_sim::faults::FaultConfig;
use kube_sim::server::{Sim, router};
use kube_sim::store::Store;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn start() -> (kube::Client, Arc<Sim>, SocketAddr) {
    let sim = Sim::new(Arc::new(Store::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(sim.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    (client, sim, addr)
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

#[tokio::test]
async fn a_fraction_of_writes_fail_with_the_chosen_status_repeatably() {
    let (client, sim, _) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let run = |seed, tag: &'static str| {
        let (api, sim) = (api.clone(), sim.clone());
        async move {
            // 409, because kube's client retries 429s (honouring Retry-After) by itself.
            sim.faults.set(FaultConfig {
                write_failure: Some((0.3, 409)),
                seed,
                ..FaultConfig::default()
            });
            let mut outcomes = Vec::new();
            for i in 0..100 {
                match api
                    .create(&PostParams::default(), &cm(&format!("{tag}-{i}")))
                    .await
                {
                    Ok(_) => outcomes.push(true),
                    Err(kube::Error::Api(s)) => {
                        assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
                        outcomes.push(false);
                    }
                    Err(e) => panic!("unexpected: {e:?}"),
                }
            }
            outcomes
        }
    };
    let first = run(7, "first").await;
    let failures = first.iter().filter(|ok| !**ok).count();
    assert!(
        (15..=45).contains(&failures),
        "{failures} of 100 failed at 30%"
    );
    assert_eq!(
        run(7, "again").await,
        first,
        "the same seed gives the same failures"
    );
    // Reads are never failed.
    assert!(api.list(&Default::default()).await.is_ok());
}

#[tokio::test]
async fn throttled_writes_carry_retry_after_and_the_client_retries_them() {
    let (client, sim, _) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    sim.faults.set(FaultConfig {
        write_failure: Some((0.5, 429)),
        seed: 3,
        ..FaultConfig::default()
    });
    let started = Instant::now();
    for i in 0..4 {
        api.create(&PostParams::default(), &cm(&format!("t{i}")))
            .await
            .unwrap();
    }
    // At least one 429 was retried after its Retry-After second.
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn latency_is_added_to_every_request() {
    let (client, sim, _) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    sim.faults.set(FaultConfig {
        latency: Duration::from_millis(150),
        ..FaultConfig::default()
    });
    let started = Instant::now();
    api.create(&PostParams::default(), &cm("slow"))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn the_admin_endpoint_sets_faults_and_drops_watches() {
    let (client, _sim, addr) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let post = |path: &'static str, body: serde_json::Value| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, req.as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut out)
            .await
            .unwrap();
        out
    };
    assert!(
        post(
            "/kube-sim/faults",
            json!({"writeFailure": {"fraction": 1.0, "code": 409}})
        )
        .await
        .starts_with("HTTP/1.1 200")
    );
    let err = api
        .create(&PostParams::default(), &cm("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );
    assert!(
        post(
            "/kube-sim/faults",
            json!({"writeFailure": {"fraction": 2.0}})
        )
        .await
        .starts_with("HTTP/1.1 400")
    );
    post("/kube-sim/faults", json!({})).await;
    let created = api.create(&PostParams::default(), &cm("x")).await.unwrap();

    let rv = created.metadata.resource_version.unwrap();
    let mut watch = api
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    let started = Instant::now();
    post("/kube-sim/drop-watches", json!({})).await;
    // The stream ends well before its 30 s timeout.
    assert!(matches!(watch.try_next().await, Ok(None) | Err(_)));
    assert!(started.elapsed() < Duration::from_secs(5));

    post("/kube-sim/compact", json!({})).await;
    let mut watch = api
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(watch.try_next().await.unwrap(), Some(WatchEvent::Error(e)) if e.code == 410));
}

/// kube-rs's watcher keeps an exact picture of the objects across dropped
/// watches, compaction (410 on resume) and restarts.
#[tokio::test]
async fn the_watcher_converges_across_drops_compaction_and_restarts() {
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (client, sim, _) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default();
    let stream = reflector::reflector(writer, watcher(api.clone(), config))
        .default_backoff()
        .applied_objects();
    let mut stream = Box::pin(stream);
    tokio::spawn(async move { while stream.next().await.is_some() {} });

    for i in 0..30 {
        api.create(&PostParams::default(), &cm(&format!("w{i}")))
            .await
            .unwrap();
        match i % 10 {
            3 => sim.faults.drop_watches(),
            6 => {
                sim.store.compact();
                sim.faults.drop_watches();
            }
            9 => sim.faults.drop_watches(), // a restart: every watch ends, state stays
            _ => {}
        }
        if i % 7 == 0 {
            api.delete(&format!("w{}", i / 2), &Default::default())
                .await
                .ok();
        }
    }
    let want: std::collections::BTreeSet<String> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: std::collections::BTreeSet<String> = reader
            .state()
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watcher's cache never converged: {got:?} vs {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// kube-rs's `Controller` reconciles every object at its latest version across
/// dropped watches, compaction and restarts, and its watch stream never
/// delivers the same change twice (re-lists after a 410 are marked as such).
#[tokio::test]
async fn the_controller_sees_every_change_once_across_faults() {
    use kube::runtime::controller::{Action, Controller};
    use kube::runtime::watcher::{self, Event};
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Mutex;

    let (client, sim, _) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");

    // What the controller reconciled: name → versions, in order.
    type Seen = Mutex<BTreeMap<String, Vec<u64>>>;
    let seen: Arc<Seen> = Arc::default();
    let rv = |c: &ConfigMap| -> u64 {
        c.metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    };
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .run(
            move |cm: Arc<ConfigMap>, seen: Arc<Seen>| async move {
                let name = cm.metadata.name.clone().unwrap();
                let version = cm
                    .metadata
                    .resource_version
                    .as_deref()
                    .unwrap()
                    .parse()
                    .unwrap();
                seen.lock().unwrap().entry(name).or_default().push(version);
                Ok::<_, kube::Error>(Action::await_change())
            },
            |_, _, _| Action::requeue(Duration::from_millis(100)),
            seen.clone(),
        )
        .for_each(|_| async {});
    tokio::spawn(controller);

    // The raw event stream: live changes (not re-lists) must never repeat.
    let live: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let live_sink = live.clone();
    let events = watcher(api.clone(), watcher::Config::default());
    tokio::spawn(async move {
        let mut events = Box::pin(events);
        while let Some(e) = events.next().await {
            if let Ok(Event::Apply(c) | Event::Delete(c)) = e {
                let version = c
                    .metadata
                    .resource_version
                    .as_deref()
                    .unwrap()
                    .parse()
                    .unwrap();
                live_sink
                    .lock()
                    .unwrap()
                    .push((c.metadata.name.unwrap(), version));
            }
        }
    });

    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..40u32 {
        let name = format!("c{}", i % 8);
        let mut data = std::collections::BTreeMap::new();
        data.insert("i".to_string(), i.to_string());
        let object = ConfigMap {
            metadata: cm(&name).metadata,
            data: Some(data),
            ..Default::default()
        };
        if api.get_opt(&name).await.unwrap().is_some() {
            api.replace(&name, &PostParams::default(), &{
                let mut o = object;
                o.metadata.resource_version = None;
                o
            })
            .await
            .unwrap();
        } else {
            api.create(&PostParams::default(), &object).await.unwrap();
        }
        match i % 10 {
            2 => sim.faults.drop_watches(),
            5 => {
                sim.store.compact();
                sim.faults.drop_watches();
            }
            8 => sim.faults.drop_watches(),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let want: BTreeMap<String, u64> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| (c.metadata.name.clone().unwrap(), rv(c)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: BTreeMap<String, u64> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), *v.iter().max().unwrap()))
            .collect();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller never reconciled the latest versions: {got:?} vs {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No version ever goes backwards for the controller...
    for (name, versions) in seen.lock().unwrap().iter() {
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "{name} reconciled out of order: {versions:?}"
        );
    }
    // ...and no live change is delivered twice.
    let live = live.lock().unwrap();
    let unique: HashSet<&(String, u64)> = live.iter().collect();
    assert_eq!(unique.len(), live.len(), "duplicated events: {live:?}");
    assert!(!live.is_empty());
}
