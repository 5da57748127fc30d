//! Prometheus metrics, served on `/metrics` by the probe server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorKind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Step {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCall {
    plugin: String,
    hook: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginFailure {
    plugin: String,
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<Outcome, Counter>,
    errors: Family<ErrorKind, Counter>,
    duration: Histogram,
    steps: Family<Step, Counter>,
    plugin_failures: Family<PluginFailure, Counter>,
    plugin_calls: Family<PluginCall, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("disagg");
        let reconciles = Family::<Outcome, Counter>::default();
        let errors = Family::<ErrorKind, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let steps = Family::<Step, Counter>::default();
        let plugin_failures = Family::<PluginFailure, Counter>::default();
        let plugin_calls =
            Family::<PluginCall, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_005, 2.0, 16))
            });
        registry.register(
            "reconciles",
            "Reconciles of DisaggregatedSets, by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by kind of error",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            duration.clone(),
        );
        registry.register(
            "rollout_steps",
            "Child writes made for rollouts and scaling, by action",
            steps.clone(),
        );
        registry.register(
            "plugin_failures",
            "Plugin failures seen by reconciles, by plugin and reason",
            plugin_failures.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Plugin hook calls (fresh instance + call), by plugin, hook and result",
            plugin_calls.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            steps,
            plugin_failures,
            plugin_calls,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration, error: Option<&super::Error>) {
        self.duration.observe(took.as_secs_f64());
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles.get_or_create(&Outcome { result }).inc();
        if let Some(e) = error {
            self.errors
                .get_or_create(&ErrorKind { kind: e.kind() })
                .inc();
        }
    }

    pub fn step(&self, action: &'static str) {
        self.steps.get_or_create(&Step { action }).inc();
    }

    pub fn plugin_failure(&self, plugin: &str, reason: &'static str) {
        self.plugin_failures
            .get_or_create(&PluginFailure {
                plugin: plugin.to_string(),
                reason,
            })
            .inc();
    }

    pub fn plugin_call(&self, plugin: &str, hook: &'static str, took: Duration, failed: bool) {
        let result = if failed { "error" } else { "ok" };
        self.plugin_calls
            .get_or_create(&PluginCall {
                plugin: plugin.to_string(),
                hook,
                result,
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_reconciles_steps_and_plugin_calls() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(2), None);
        m.step("create");
        m.plugin_call(
            "rollout-gate",
            "gate-step",
            Duration::from_micros(20),
            false,
        );
        m.plugin_call("rollout-gate", "gate-step", Duration::from_micros(30), true);
        let text = m.encode();
        assert!(
            text.contains(r#"disagg_reconciles_total{result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"disagg_rollout_steps_total{action="create"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"disagg_plugin_call_duration_seconds_count{plugin="rollout-gate",hook="gate-step",result="error"} 1"#),
            "{text}"
        );
    }
}
