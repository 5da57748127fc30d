//! Plugin hook latency (`docs/architecture.md`, target ≤ 25 µs median): a fresh instance
//! plus `patch-role` on a ~20 KB LeaderWorkerSet JSON, with the Rust
//! `role-profile` plugin. Also compile time against component size.
//!
//! Also the same call with a plugin that does not read the LWS (the host's
//! share of the cost) and a small gate-step (the floor).
//!
//! And the sandbox's worst cases: how long a call stuck in a host function
//! (a guest `sleep`) takes to return, and the process's peak memory while
//! more calls than there are slots each hoard memory up to the cap.
//!
//! And what signals add to a reconcile: four Prometheus queries over HTTP.
//!
//! Prints criterion's report and machine-readable lines:
//! `BENCH <name> median_us=<n>`,
//! `BENCH plugin_compile name=<crate> size_bytes=<n> compile_ms=<n>`,
//! `BENCH plugin_stuck_call mode=<m> deadline_ms=<n> median_ms=<n> max_ms=<n>` and
//! `BENCH plugin_memory_worst concurrent_calls=<n> cap_mib=<n> callers=<n> base_rss_mib=<n> peak_rss_mib=<n>`.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{Criterion, criterion_group};
use disagg::core::render::render_child;
use disagg::core::revision::revision;
use disagg::plugin::{Limits, PatchRequest, Plugin, Runtime};
use serde_json::json;
use std::hint::black_box;
use std::path::PathBuf;

fn input() -> PatchRequest {
    let set = disagg::input::load_set(&common::repo("examples/vllm-pd.yaml")).unwrap();
    let rev = revision(&set.spec, &[]);
    let role = &set.spec.roles[0];
    let mut lws = serde_json::to_value(render_child(&set, role, 0, &rev, 2)).unwrap();
    // Pad the template to ~20 KB, as a real one with many env vars and args would be.
    let env: Vec<_> = (0..200)
        .map(|i| json!({"name": format!("SETTING_{i:03}"), "value": "x".repeat(60)}))
        .collect();
    lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["env"] =
        json!(env);
    let lws = lws.to_string();
    assert!((19_000..24_000).contains(&lws.len()), "{}", lws.len());
    PatchRequest {
        set: serde_json::to_string(&set).unwrap(),
        role: role.name.clone(),
        slice: 0,
        revision: rev,
        lws,
        config: json!({"preset": "vllm"}).to_string(),
    }
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new(Limits::default()).unwrap();
    let plugin = rt
        .load(
            "role-profile",
            &common::read(&common::component("role-profile")),
        )
        .unwrap();
    let input = input();
    c.bench_function("plugin_patch_role_20kb", |b| {
        b.iter(|| plugin.patch_role(black_box(&input)).unwrap())
    });
    // The same 20 KB in, with a plugin that does not read it (the host's share).
    let passthrough = rt
        .load("hostile", &common::read(&common::component("hostile")))
        .unwrap();
    let ok = PatchRequest {
        config: json!({"mode": "ok"}).to_string(),
        ..input.clone()
    };
    c.bench_function("plugin_patch_role_20kb_unread", |b| {
        b.iter(|| passthrough.patch_role(black_box(&ok)).unwrap())
    });
    // The floor: a fresh instance and a small gate-step call.
    let gate = rt
        .load(
            "rollout-gate",
            &common::read(&common::component("rollout-gate")),
        )
        .unwrap();
    let small = disagg::plugin::GateRequest {
        set_name: "s".into(),
        namespace: "default".into(),
        labels: vec![],
        annotations: vec![],
        revision: "r".into(),
        old_revision: "q".into(),
        slice: 0,
        step: 1,
        total_steps: 2,
        roles: vec![],
        held_for_ms: 0,
        now_ms: 0,
        config: "{}".into(),
        signals: vec![],
    };
    c.bench_function("plugin_gate_step_small", |b| {
        b.iter(|| gate.gate_step(black_box(&small)).unwrap())
    });
}

/// What signals add to a reconcile: one session evaluating four distinct
/// queries (two histogram quantiles, two sums, as slo-gate and load-scaler
/// use) against a local Prometheus over HTTP. Skipped without Prometheus.
fn signals(c: &mut Criterion) {
    use disagg::controller::prometheus::{Prometheus, PrometheusConfig};
    use disagg::core::signals::Signals;
    if !disagg::local_prometheus::installed() {
        println!("BENCH signals_reconcile_4_queries skipped=prometheus_not_installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("disagg-bench-prom-{}", std::process::id()));
    // Nothing to scrape: the queries run on Prometheus' own series (`up`).
    let local =
        disagg::local_prometheus::LocalPrometheus::start(dir, "127.0.0.1:9".parse().unwrap())
            .unwrap();
    let prometheus = Prometheus::new(
        PrometheusConfig {
            url: local.url.clone(),
            bearer_token_file: None,
            ca_file: None,
            timeout: std::time::Duration::from_secs(2),
        },
        std::sync::Arc::new(disagg::controller::metrics::Metrics::default()),
    )
    .unwrap();
    let queries = [
        "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{disaggregatedset=\"llm\",revision=\"a\"}[1m])))",
        "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{disaggregatedset=\"llm\",revision=\"b\"}[1m])))",
        "sum(vllm:num_requests_waiting{disaggregatedset=\"llm\",role=\"prefill\"})",
        "sum(up)",
    ];
    c.bench_function("signals_reconcile_4_queries", |b| {
        b.iter(|| {
            let session = prometheus.session();
            for q in &queries {
                black_box(session.evaluate(q).samples.unwrap());
            }
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench, signals
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    for name in [
        "plugin_patch_role_20kb",
        "plugin_patch_role_20kb_unread",
        "plugin_gate_step_small",
        "signals_reconcile_4_queries",
    ] {
        let estimates = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("../criterion/{name}/new/estimates.json"));
        if let Ok(text) = std::fs::read_to_string(&estimates)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(ns) = v["median"]["point_estimate"].as_f64()
        {
            println!("BENCH {name} median_us={:.2}", ns / 1000.0);
        }
    }
    sandbox_worst_cases();
    // Compile time against size: a fresh runtime each time, so nothing is cached.
    for name in common::GUESTS
        .iter()
        .filter(|n| !["wrong-version", "bad-import"].contains(n))
    {
        let bytes = common::read(&common::component(name));
        let rt = Runtime::new(Limits::default()).unwrap();
        let p = rt.load(name, &bytes).unwrap();
        println!(
            "BENCH plugin_compile name={name} size_bytes={} compile_ms={:.1}",
            bytes.len(),
            p.compile_time.as_secs_f64() * 1000.0
        );
    }
}

/// The process's resident memory and its peak so far, in MiB (Linux).
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn sandbox_worst_cases() {
    use std::time::{Duration, Instant};
    let rt = Runtime::new(Limits::default()).unwrap();
    let hostile = rt
        .load("hostile", &common::read(&common::component("hostile")))
        .unwrap();
    let deadline = rt.limits().deadline.as_millis();
    for mode in ["sleep", "clock-spin", "stdin", "loop"] {
        let call = PatchRequest {
            config: json!({"mode": mode}).to_string(),
            ..input()
        };
        let mut took: Vec<f64> = (0..15)
            .map(|_| {
                let started = Instant::now();
                let _ = hostile.patch_role(&call);
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        took.sort_by(f64::total_cmp);
        println!(
            "BENCH plugin_stuck_call mode={mode} deadline_ms={deadline} median_ms={:.1} max_ms={:.1}",
            took[took.len() / 2],
            took[took.len() - 1]
        );
    }
    // Twice as many callers as slots, each call hoarding memory until the cap stops it.
    let (base, _) = rss_mib();
    let callers = 2 * rt.limits().concurrent_calls;
    let oom = PatchRequest {
        config: json!({"mode": "oom"}).to_string(),
        ..input()
    };
    let until = Instant::now() + Duration::from_secs(3);
    std::thread::scope(|s| {
        for _ in 0..callers {
            s.spawn(|| {
                while Instant::now() < until {
                    let _ = hostile.patch_role(&oom);
                }
            });
        }
    });
    let (_, peak) = rss_mib();
    println!(
        "BENCH plugin_memory_worst concurrent_calls={} cap_mib={} callers={callers} base_rss_mib={base:.0} peak_rss_mib={peak:.0}",
        rt.limits().concurrent_calls,
        rt.limits().memory_bytes >> 20
    );
}
