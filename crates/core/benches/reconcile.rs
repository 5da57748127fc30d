//! Pure reconcile of one 3-role set (DESIGN §8, target ≤ 100 µs median):
//! revision hash + executor decision + rendering the set's children + status,
//! for a set in the middle of a rollout. No plugins, no I/O.
//!
//! Prints criterion's report and one machine-readable line:
//! `BENCH pure_reconcile_3_roles median_us=<n>`.

use criterion::{Criterion, criterion_group};
use disagg::api::set::DisaggregatedSet;
use disagg::core::execute::{Child, decide, target_for};
use disagg::core::render::{child_name, render_child};
use disagg::core::revision::revision;
use disagg::core::status::{Observation, compute};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::hint::black_box;
use std::path::PathBuf;

fn example_set() -> DisaggregatedSet {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/epd-3role.yaml");
    disagg::input::load_set(&path).expect("examples/epd-3role.yaml loads")
}

/// Children halfway through a rollout from an older revision.
fn mid_rollout(set: &DisaggregatedSet, rev: &str) -> Vec<Child> {
    let name = set.metadata.name.clone().unwrap();
    let mut children = Vec::new();
    for role in &set.spec.roles {
        let n = role.spec.replicas;
        for (revision, replicas, initial, created) in
            [("0ld0ld00", n / 2, Some(n), 1), (rev, n - n / 2, None, 2)]
        {
            children.push(Child {
                name: child_name(&name, 0, revision, &role.name),
                slice: 0,
                revision: revision.to_string(),
                role: role.name.clone(),
                replicas,
                ready_replicas: replicas,
                status_replicas: replicas,
                initial_replicas: initial,
                created,
                owned: true,
            });
        }
    }
    children
}

fn reconcile(set: &DisaggregatedSet, children: &[Child], now: &Time) -> usize {
    let rev = revision(&set.spec, &[]);
    let target = target_for(set, &rev, |r| r.spec.replicas);
    let decision = decide(&target, children);
    let rendered: usize = set
        .spec
        .roles
        .iter()
        .zip(&target.roles)
        .map(|(role, t)| render_child(set, role, 0, &rev, t.replicas).spec.replicas as usize)
        .sum();
    let status = compute(&Observation {
        generation: set.metadata.generation,
        target: &target,
        children,
        decision: Some(&decision),
        violations: &[],
        hold: None,
        progress_deadline_seconds: set.spec.progress_deadline_seconds,
        previous: None,
        now: now.clone(),
    });
    rendered + decision.actions().count() + status.conditions.len()
}

fn bench(c: &mut Criterion) {
    let set = example_set();
    let rev = revision(&set.spec, &[]);
    let children = mid_rollout(&set, &rev);
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap());
    c.bench_function("pure_reconcile_3_roles", |b| {
        b.iter(|| reconcile(black_box(&set), black_box(&children), &now))
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
