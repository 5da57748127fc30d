//! Prometheus metrics, served on `/metrics` by the probe server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// How a reconcile ended (`disagg_reconciles_total`'s `result`).
pub enum Ended<'a> {
    /// `ok`: it decided, and made the writes its decision called for.
    Decided,
    /// `deferred`: it did not decide, because the stores had not shown the
    /// set's last writes yet (`cache`); the event that shows them triggers the next.
    Deferred,
    /// `error`: it failed, and is retried (`disagg_reconcile_errors_total` says why).
    Failed(&'a super::Error),
}

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
struct ApiRequest {
    verb: &'static str,
    resource: String,
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
    api_requests: Family<ApiRequest, Counter>,
    in_flight: Gauge,
    queue_depth: Gauge,
    step_latency: Histogram,
    events: Family<Outcome, Counter>,
    signals: Family<Outcome, Histogram, fn() -> Histogram>,
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
            "Reconciles of DisaggregatedSets, each counted once by how it ended: ok (decided), deferred (waited for its watches to show its last writes), error",
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
        let api_requests = Family::<ApiRequest, Counter>::default();
        registry.register(
            "api_requests",
            "Requests the operator sent to the API server, by verb and resource (watches count once, when opened)",
            api_requests.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now (at most --concurrency)",
            in_flight.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "reconcile_queue_depth",
            "Sets a watch event has queued for a reconcile that has not started yet",
            queue_depth.clone(),
        );
        let step_latency = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "step_latency_seconds",
            "From the watch event that queued a set to the first write of the reconcile it caused",
            step_latency.clone(),
        );
        let events = Family::<Outcome, Counter>::default();
        registry.register(
            "events",
            "Kubernetes Events the operator recorded, by result (ok, error, dropped: the queue was full)",
            events.clone(),
        );
        let signals = Family::<Outcome, Histogram, fn() -> Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register(
            "signal_query_duration_seconds",
            "Prometheus queries for plugins' signals, by result (ok, error)",
            signals.clone(),
        );
        Metrics {
            registry,
            signals,
            api_requests,
            in_flight,
            queue_depth,
            step_latency,
            events,
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
    /// One Prometheus query for a signal.
    pub fn signal_evaluated(&self, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.signals
            .get_or_create(&Outcome { result })
            .observe(took.as_secs_f64());
    }

    /// Counts a reconcile as running until the guard drops.
    pub fn running(&self) -> impl Drop + '_ {
        struct Running<'a>(&'a Gauge);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.in_flight.inc();
        Running(&self.in_flight)
    }

    /// Counts one request to the API server by verb (get, list, watch,
    /// create, update, patch, delete) and resource (`leaderworkersets`,
    /// `disaggregatedsets/status`, …), read from its method and path.
    pub fn api_request(&self, method: &axum::http::Method, uri: &axum::http::Uri) {
        let (resource, named) = resource_of(uri.path());
        let watch = uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let verb = match method.as_str() {
            "GET" if watch => "watch",
            "GET" if named => "get",
            "GET" => "list",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "other",
        };
        self.api_requests
            .get_or_create(&ApiRequest { verb, resource })
            .inc();
    }

    /// One reconcile, counted once by how it ended.
    pub fn reconciled(&self, took: Duration, ended: Ended<'_>) {
        self.duration.observe(took.as_secs_f64());
        let result = match ended {
            Ended::Decided => "ok",
            Ended::Deferred => "deferred",
            Ended::Failed(_) => "error",
        };
        self.reconciles.get_or_create(&Outcome { result }).inc();
        if let Ended::Failed(e) = ended {
            self.errors
                .get_or_create(&ErrorKind { kind: e.kind() })
                .inc();
        }
    }

    /// Sets waiting for a reconcile (`queue`).
    pub fn queue_depth(&self, depth: usize) {
        self.queue_depth.set(depth as i64);
    }

    /// A reconcile's first write, `took` after the event that queued its set.
    pub fn step_latency(&self, took: Duration) {
        self.step_latency.observe(took.as_secs_f64());
    }

    /// One Event recorded (`ok`), refused (`error`) or dropped.
    pub fn event(&self, result: &'static str) {
        self.events.get_or_create(&Outcome { result }).inc();
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

/// The resource (with its subresource) a request path is about, and
/// whether it names one object: `/api/v1/namespaces/NS/configmaps/NAME` is
/// (`configmaps`, true), `/apis/G/V/namespaces/NS/leaderworkersets/NAME/status`
/// (`leaderworkersets/status`, true).
fn resource_of(path: &str) -> (String, bool) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return ("other".into(), false),
    };
    let rest = match rest {
        ["namespaces", _ns, resource, tail @ ..] => [&[*resource][..], tail].concat(),
        other => other.to_vec(),
    };
    match rest.as_slice() {
        [] => ("discovery".into(), false),
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_reconciles_steps_and_plugin_calls() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(2), Ended::Decided);
        m.reconciled(Duration::from_millis(1), Ended::Deferred);
        m.reconciled(Duration::from_millis(1), Ended::Deferred);
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
        // A deferred reconcile is counted as deferred only, not also as ok.
        assert!(
            text.contains(r#"disagg_reconciles_total{result="deferred"} 2"#),
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

    #[test]
    fn api_requests_are_counted_by_verb_and_resource() {
        let m = Metrics::default();
        let lws = "/apis/leaderworkerset.x-k8s.io/v1";
        for (method, uri) in [
            ("GET", format!("{lws}/leaderworkersets?labelSelector=x&watch=true")),
            ("GET", format!("{lws}/leaderworkersets?labelSelector=x")),
            ("POST", format!("{lws}/namespaces/ns/leaderworkersets")),
            ("PATCH", format!("{lws}/namespaces/ns/leaderworkersets/a")),
            ("PATCH", format!("{lws}/namespaces/ns/leaderworkersets/b")),
            ("GET", "/api/v1/namespaces/lws-system".to_string()),
            ("PATCH", "/apis/disaggregatedset.x-k8s.io/v1alpha1/namespaces/ns/disaggregatedsets/llm/status?fieldManager=x".to_string()),
        ] {
            m.api_request(&method.parse().unwrap(), &uri.parse().unwrap());
        }
        let text = m.encode();
        for line in [
            r#"disagg_api_requests_total{verb="watch",resource="leaderworkersets"} 1"#,
            r#"disagg_api_requests_total{verb="list",resource="leaderworkersets"} 1"#,
            r#"disagg_api_requests_total{verb="create",resource="leaderworkersets"} 1"#,
            r#"disagg_api_requests_total{verb="patch",resource="leaderworkersets"} 2"#,
            r#"disagg_api_requests_total{verb="get",resource="namespaces"} 1"#,
            r#"disagg_api_requests_total{verb="patch",resource="disaggregatedsets/status"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
