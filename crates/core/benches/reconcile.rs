//! The decide step for one 3-role set in the middle of a rollout (target ≤
//! 100 µs median, `docs/architecture.md`): children parsed into the
//! executor's view, revision hash, the planner, rendering, status and Events
//! — everything a reconcile does but the API calls. No plugins.
//!
//! Prints criterion's report and one machine-readable line:
//! `BENCH pure_reconcile_3_roles median_us=<n>`.

use criterion::{Criterion, criterion_group};
use disagg_api::lws::{LeaderWorkerSet, LeaderWorkerSetStatus};
use disagg_api::set::DisaggregatedSet;
use disagg_core::decide::{Observed, decide};
use disagg_core::plugins::NoPlugins;
use disagg_core::render::render_child;
use disagg_core::revision::revision;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;

/// `examples/epd-3role.yaml`, defaulted by the CRD schema as the API server would.
fn example_set() -> DisaggregatedSet {
    let text = std::fs::read_to_string(test_support::repo("examples/epd-3role.yaml"))
        .expect("examples/epd-3role.yaml");
    let mut value: serde_json::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    disagg_api::structural::apply_defaults(disagg_api::crd::set_schema(), &mut value);
    let mut set: DisaggregatedSet = serde_json::from_value(value).expect("a DisaggregatedSet");
    set.metadata.uid = Some("set-uid".into());
    set
}

/// Children halfway through a rollout from an older revision, all ready.
fn mid_rollout(set: &DisaggregatedSet, rev: &str) -> Vec<LeaderWorkerSet> {
    let mut children = Vec::new();
    for role in &set.spec.roles {
        let n = role.spec.replicas;
        for (revision, replicas, initial) in [("0ld0ld00", n / 2, Some(n)), (rev, n - n / 2, None)]
        {
            let mut child = render_child(set, role, 0, revision, replicas);
            if let Some(initial) = initial {
                child.metadata.annotations = Some(BTreeMap::from([(
                    disagg_api::keys::INITIAL_REPLICAS.to_string(),
                    initial.to_string(),
                )]));
            }
            child.status = Some(LeaderWorkerSetStatus {
                replicas,
                ready_replicas: replicas,
                ..Default::default()
            });
            children.push(child);
        }
    }
    children
}

fn bench(c: &mut Criterion) {
    let set = example_set();
    let rev = revision(&set.spec, &[]);
    let children = mid_rollout(&set, &rev);
    let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap();
    let observed = Observed {
        set: &set,
        children: &children,
        scalers: &[],
        defaults: &[],
        plugins: &NoPlugins,
        signals: &disagg_core::signals::NoSignals,
        signal_interval: std::time::Duration::from_secs(15),
        now,
    };
    let plan = decide(&observed);
    assert!(
        !plan.writes.is_empty(),
        "the benchmark's set is mid-rollout: {plan:?}"
    );
    c.bench_function("pure_reconcile_3_roles", |b| {
        b.iter(|| decide(black_box(&observed)).writes.len())
    });
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // criterion keeps its estimates on disk; read the median back for the summary line.
    let estimates = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("../criterion/pure_reconcile_3_roles/new/estimates.json");
    if let Ok(text) = std::fs::read_to_string(&estimates)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(ns) = v["median"]["point_estimate"].as_f64()
    {
        println!("BENCH pure_reconcile_3_roles median_us={:.2}", ns / 1000.0);
    }
}
