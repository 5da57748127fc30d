//! Signals end to end: the operator evaluates bindings' PromQL against a real
//! Prometheus that scrapes the simulated inference servers, and the shipped
//! slo-gate and load-scaler decide on them.

use super::harness::*;
use disagg::api::lws::LeaderWorkerSet;
use disagg::api::set::DisaggregatedSet;
use disagg::local_prometheus::LocalPrometheus;
use kube::api::{Api, PostParams};
use kube_sim::serving::{Latency, Load};
use serde_json::json;
use std::time::Duration;

/// p95 of a revision's time to first token over the last 5 s.
fn ttft(revision: &str) -> String {
    format!(
        "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{disaggregatedset=\"{{{{set}}}}\",revision=\"{{{{{revision}}}}}\"}}[5s])))"
    )
}

/// A real Prometheus scraping the cluster's simulated servers, or `None`
/// when it is not installed ([`prometheus_installed`]).
async fn prometheus(test: &str, cluster: &Cluster) -> Option<LocalPrometheus> {
    if !prometheus_installed() {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("disagg-prom-{test}-{}", std::process::id()));
    let target = cluster.metrics_addr;
    let started = tokio::task::spawn_blocking(move || LocalPrometheus::start(dir, target));
    Some(started.await.unwrap().unwrap())
}

fn operator(cluster: &Cluster, prometheus: &LocalPrometheus) -> Operator {
    start_operator_with(
        cluster,
        &[
            "--prometheus-url",
            &prometheus.url,
            "--signal-interval-seconds",
            "1",
        ],
    )
}

fn rolled_to(s: &DisaggregatedSet, k: &[LeaderWorkerSet], rev: &str) -> bool {
    available(s) && revision_of(s) == rev && revisions(k) == [rev.to_string()].into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_slo_gate_aborts_a_slow_revision_lets_a_good_one_roll_and_holds_without_prometheus() {
    let cluster = cluster("slo").await;
    let Some(mut prometheus) = prometheus("slo", &cluster).await else {
        return;
    };
    install_plugin(&cluster.client, "slo-gate", "slo-gate").await;
    let _operator = operator(&cluster, &prometheus);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    let gate = json!([{
        "name": "slo-gate",
        "signals": [
            {"name": "ttft-new", "query": ttft("revision")},
            {"name": "ttft-old", "query": ttft("oldRevision")},
        ],
        "config": {
            "checks": [
                {"signal": "ttft-new", "max": 1.0},
                {"signal": "ttft-new", "baseline": "ttft-old", "maxRatio": 2.0},
            ],
            "abortAfterSeconds": 4,
            "recheckSeconds": 1,
        },
    }]);
    sets.create(&PostParams::default(), &example("slo", gate))
        .await
        .unwrap();
    let (created, _) = until_available(&sets, &lws, "slo").await;
    let stable = revision_of(&created);
    assert_eq!(condition(&created, "SignalsReady").as_deref(), Some("True"));

    // A revision whose first token takes 2 s: the canary step goes, then the
    // gate holds on its metrics, and after 4 s out of bounds it aborts.
    set_image(&sets, "slo", "example.com/slow:1").await;
    // The revision the operator computes (no template plugins are bound), known before it acts.
    let slow = disagg::core::revision::revision(&sets.get("slo").await.unwrap().spec, &[]);
    cluster.sim.serving.set_latency(
        &slow,
        Latency {
            ttft_seconds: 2.0,
            itl_seconds: 0.05,
        },
    );
    let (held, _) = watch_until(
        &sets,
        &lws,
        "slo",
        "held on its SLO",
        |_| {},
        |s, _| {
            s.status
                .as_ref()
                .and_then(|st| st.rollout.as_ref())
                .and_then(|r| r.hold_reason.as_deref())
                .is_some_and(|r| r.contains("out of its SLO") && r.contains("above 1"))
        },
    )
    .await;
    assert_eq!(revision_of(&held), slow);
    let (aborted, _) = watch_until(
        &sets,
        &lws,
        "slo",
        "aborted by the gate",
        |_| {},
        |s, k| {
            condition(s, "RolloutAborted").as_deref() == Some("True")
                && available(s)
                && revisions(k) == [stable.clone()].into()
        },
    )
    .await;
    let message = condition_message(&aborted, "RolloutAborted");
    assert!(
        message.contains("by gate slo-gate") && message.contains("ttft-new"),
        "{message}"
    );

    // A good revision (a spec change: the abort was for the slow one) rolls out.
    set_image(&sets, "slo", "example.com/good:1").await;
    let good = disagg::core::revision::revision(&sets.get("slo").await.unwrap().spec, &[]);
    assert_ne!(good, slow);
    watch_until(
        &sets,
        &lws,
        "slo",
        "the good revision rolled out",
        |_| {},
        |s, k| rolled_to(s, k, &good),
    )
    .await;

    // With Prometheus gone mid-rollout the gate holds, and the set says why.
    set_image(&sets, "slo", "example.com/good:2").await;
    watch_until(
        &sets,
        &lws,
        "slo",
        "first step of the next rollout",
        |_| {},
        |s, k| {
            let rev = revision_of(s);
            state_of(k, &rev).values().any(|(_, new)| *new > 0)
        },
    )
    .await;
    prometheus.stop();
    let (s, _) = watch_until(
        &sets,
        &lws,
        "slo",
        "held without Prometheus",
        |_| {},
        |s, _| {
            condition(s, "SignalsReady").as_deref() == Some("False")
                && s.status
                    .as_ref()
                    .and_then(|st| st.rollout.as_ref())
                    .and_then(|r| r.hold_reason.as_deref())
                    .is_some_and(|r| r.contains("holding without data"))
        },
    )
    .await;
    assert!(
        condition_message(&s, "SignalsReady").contains("Prometheus unreachable"),
        "{}",
        condition_message(&s, "SignalsReady")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = sets.get("slo").await.unwrap();
    assert_eq!(
        again.status.unwrap().rollout.unwrap().step,
        s.status.unwrap().rollout.unwrap().step,
        "no step without data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_surge_scales_prefill_decode_follows_and_both_come_back_after_cool_down() {
    let cluster = cluster("load").await;
    let Some(mut prometheus) = prometheus("load", &cluster).await else {
        return;
    };
    install_plugin(&cluster.client, "load-scaler", "load-scaler").await;
    let _operator = operator(&cluster, &prometheus);
    let sets: Api<DisaggregatedSet> = Api::namespaced(cluster.client.clone(), "default");
    let lws: Api<LeaderWorkerSet> = Api::namespaced(cluster.client.clone(), "default");
    // prefill 2 and decode 4 to begin with: 8 waiting (2 groups' worth), KV at 0.6 of 0.7.
    cluster.sim.serving.set_load(
        "load",
        "prefill",
        Load {
            waiting: 8.0,
            kv_cache_usage: 0.3,
        },
    );
    cluster.sim.serving.set_load(
        "load",
        "decode",
        Load {
            waiting: 0.0,
            kv_cache_usage: 0.6,
        },
    );
    let scaler = json!([{
        "name": "load-scaler",
        "signals": [
            {"name": "queue", "query": "sum(vllm:num_requests_waiting{disaggregatedset=\"{{set}}\",role=\"{{role}}\"})"},
            {"name": "kv", "query": "avg(vllm:kv_cache_usage_perc{disaggregatedset=\"{{set}}\",role=\"{{role}}\"})"},
        ],
        "config": {
            "roles": {
                "prefill": {"signal": "queue", "perReplica": 4, "min": 1, "max": 8},
                "decode": {"signal": "kv", "utilization": 0.7, "min": 1, "max": 20},
            },
            "maxStep": 2,
            "coolDownSeconds": 3,
            "ratio": {"role": "decode", "of": "prefill", "min": 1.5, "max": 2.5},
        },
    }]);
    sets.create(&PostParams::default(), &example("load", scaler))
        .await
        .unwrap();
    let (created, _) = until_available(&sets, &lws, "load").await;
    let rev = revision_of(&created);
    let groups = |k: &[LeaderWorkerSet]| state_of(k, &rev);
    // Let the first scrapes land, then check it holds still.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let steady = groups(&children(&lws, "load").await);
    assert_eq!(steady["prefill"], (0, 2), "{steady:?}");

    // A surge of 24 waiting: prefill climbs to 6 (2 at a time, after each
    // cool-down) and decode follows inside 1.5–2.5× prefill.
    cluster.sim.serving.set_load(
        "load",
        "prefill",
        Load {
            waiting: 24.0,
            kv_cache_usage: 0.3,
        },
    );
    let band_ok = |k: &[LeaderWorkerSet]| {
        let g = groups(k);
        let (p, d) = (g["prefill"].1, g["decode"].1);
        (f64::from(p) * 1.5).ceil() as i32 <= d && d <= (f64::from(p) * 2.5) as i32
    };
    let started = std::time::Instant::now();
    watch_until(
        &sets,
        &lws,
        "load",
        "prefill at 6, decode in its band",
        |_| {},
        |s, k| available(s) && groups(k)["prefill"].1 == 6 && band_ok(k),
    )
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "scaled up in {took:?}");

    // The surge passes: both come back down, step by step.
    cluster.sim.serving.set_load(
        "load",
        "prefill",
        Load {
            waiting: 4.0,
            kv_cache_usage: 0.3,
        },
    );
    let (s, k) = watch_until(
        &sets,
        &lws,
        "load",
        "back at 1 prefill",
        |_| {},
        |s, k| available(s) && groups(k)["prefill"].1 == 1 && band_ok(k),
    )
    .await;
    assert_eq!(condition(&s, "SignalsReady").as_deref(), Some("True"));
    let before = groups(&k);

    // Prometheus down: the scaler proposes nothing, and the set says why.
    cluster.sim.serving.set_load(
        "load",
        "prefill",
        Load {
            waiting: 40.0,
            kv_cache_usage: 0.3,
        },
    );
    prometheus.stop();
    watch_until(
        &sets,
        &lws,
        "load",
        "SignalsReady=False",
        |_| {},
        |s, _| condition(s, "SignalsReady").as_deref() == Some("False"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(groups(&children(&lws, "load").await), before, "frozen");
}
