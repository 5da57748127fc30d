//! Simulated inference servers: for every ready group of every
//! DisaggregatedSet child LeaderWorkerSet in the store, the metrics a vLLM
//! server exports, in Prometheus' text format on `GET /metrics` of its own
//! listener (a real Prometheus scrapes it).
//!
//! Series, labelled `disaggregatedset`, `namespace`, `role`, `revision`,
//! `slice` and `group` (`<lws>/<index>`):
//! * `vllm:time_to_first_token_seconds` and `vllm:inter_token_latency_seconds`,
//!   histograms: every request of the group observes its revision's latency;
//! * `vllm:num_requests_waiting`, gauge: the role's waiting requests, shared
//!   evenly by its ready groups;
//! * `vllm:kv_cache_usage_perc`, gauge (0–1).
//!
//! Tests set the behaviour through [`ServingControls`]: latency per revision
//! (a slow revision), load per set and role (a surge).

use crate::lws_sim::lws_resource;
use crate::store::{Filter, Store};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Latency of one revision's requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    pub ttft_seconds: f64,
    pub itl_seconds: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            ttft_seconds: 0.2,
            itl_seconds: 0.02,
        }
    }
}

/// Load on one role of one set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// Requests waiting, over all of the role's ready groups.
    pub waiting: f64,
    /// KV-cache usage of each group, 0–1.
    pub kv_cache_usage: f64,
}

#[derive(Default)]
struct State {
    latency: HashMap<String, Latency>,
    /// By (set, role).
    load: HashMap<(String, String), Load>,
    /// Cumulative histogram counters by series, as a server keeps them.
    counters: HashMap<String, Counters>,
}

struct Counters {
    last: Instant,
    /// Per bucket of [`BUCKETS`], then `+Inf`.
    buckets: Vec<f64>,
    sum: f64,
    count: f64,
}

/// Histogram buckets (seconds), as vLLM's are roughly.
const BUCKETS: [f64; 9] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Requests each group serves per second.
const REQUESTS_PER_SECOND: f64 = 20.0;

/// The simulated servers' behaviour; shared with the metrics endpoint.
#[derive(Clone, Default)]
pub struct ServingControls(Arc<Mutex<State>>);

impl ServingControls {
    /// Requests of `revision`'s groups take this long (default 0.2 s TTFT, 20 ms ITL).
    pub fn set_latency(&self, revision: &str, latency: Latency) {
        self.0
            .lock()
            .unwrap()
            .latency
            .insert(revision.to_string(), latency);
    }

    /// Load on a role of a set (default none).
    pub fn set_load(&self, set: &str, role: &str, load: Load) {
        self.0
            .lock()
            .unwrap()
            .load
            .insert((set.to_string(), role.to_string()), load);
    }

    /// From the admin endpoint (`POST /kube-sim/serving`):
    /// `{"revision": "…", "ttftSeconds": 2, "itlSeconds": 0.05}` sets a
    /// revision's latency, `{"set": "…", "role": "…", "waiting": 24,
    /// "kvCacheUsage": 0.5}` a role's load.
    pub fn apply_json(&self, v: &serde_json::Value) -> Result<(), String> {
        let number = |key: &str, default: f64| -> Result<f64, String> {
            match &v[key] {
                serde_json::Value::Null => Ok(default),
                n => n
                    .as_f64()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| format!("{key} must be a non-negative number")),
            }
        };
        if let Some(revision) = v["revision"].as_str() {
            let base = Latency::default();
            self.set_latency(
                revision,
                Latency {
                    ttft_seconds: number("ttftSeconds", base.ttft_seconds)?,
                    itl_seconds: number("itlSeconds", base.itl_seconds)?,
                },
            );
            return Ok(());
        }
        match (v["set"].as_str(), v["role"].as_str()) {
            (Some(set), Some(role)) => {
                self.set_load(
                    set,
                    role,
                    Load {
                        waiting: number("waiting", 0.0)?,
                        kv_cache_usage: number("kvCacheUsage", 0.0)?,
                    },
                );
                Ok(())
            }
            _ => Err("give a revision (latency) or a set and role (load)".into()),
        }
    }

    /// The metrics of every ready group, in Prometheus' text format.
    pub fn render(&self, store: &Store) -> String {
        let now = Instant::now();
        let mut state = self.0.lock().unwrap();
        let mut groups = Vec::new();
        let items = store
            .list(&lws_resource(), &Filter::default(), 0, None)
            .map(|page| page.items)
            .unwrap_or_default();
        for lws in items {
            let labels = &lws["metadata"]["labels"];
            let label = |k: &str| labels[k].as_str().unwrap_or_default().to_string();
            let set = label("disaggregatedset.x-k8s.io/name");
            if set.is_empty() {
                continue;
            }
            let ready = lws["status"]["readyReplicas"].as_u64().unwrap_or(0);
            let ready_total = ready.max(1) as f64;
            for i in 0..ready {
                groups.push(Group {
                    set: set.clone(),
                    namespace: lws["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    role: label("disaggregatedset.x-k8s.io/role"),
                    revision: label("disaggregatedset.x-k8s.io/revision"),
                    slice: label("disaggregatedset.x-k8s.io/slice"),
                    group: format!(
                        "{}/{i}",
                        lws["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                    share: 1.0 / ready_total,
                });
            }
        }
        let mut out = String::new();
        for (metric, pick) in [
            ("vllm:time_to_first_token_seconds", 0),
            ("vllm:inter_token_latency_seconds", 1),
        ] {
            let _ = writeln!(out, "# HELP {metric} Simulated request latency.");
            let _ = writeln!(out, "# TYPE {metric} histogram");
            for g in &groups {
                let latency = state.latency.get(&g.revision).copied().unwrap_or_default();
                let value = if pick == 0 {
                    latency.ttft_seconds
                } else {
                    latency.itl_seconds
                };
                let key = format!("{metric}{}", g.labels());
                let c = state.counters.entry(key).or_insert_with(|| Counters {
                    last: now,
                    buckets: vec![0.0; BUCKETS.len() + 1],
                    sum: 0.0,
                    count: 0.0,
                });
                let served = REQUESTS_PER_SECOND * now.duration_since(c.last).as_secs_f64();
                c.last = now;
                for (b, le) in c
                    .buckets
                    .iter_mut()
                    .zip(BUCKETS.iter().chain([&f64::INFINITY]))
                {
                    if value <= *le {
                        *b += served;
                    }
                }
                c.sum += served * value;
                c.count += served;
                let base = g.labels_inner();
                for (b, le) in c.buckets.iter().zip(
                    BUCKETS
                        .iter()
                        .map(|l| l.to_string())
                        .chain(["+Inf".to_string()]),
                ) {
                    let _ = writeln!(out, "{metric}_bucket{{{base},le=\"{le}\"}} {b}");
                }
                let _ = writeln!(out, "{metric}_sum{{{base}}} {}", c.sum);
                let _ = writeln!(out, "{metric}_count{{{base}}} {}", c.count);
            }
        }
        for (metric, help) in [
            (
                "vllm:num_requests_waiting",
                "Requests waiting to be served.",
            ),
            ("vllm:kv_cache_usage_perc", "KV-cache usage, 0 to 1."),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} gauge");
            for g in &groups {
                let load = state
                    .load
                    .get(&(g.set.clone(), g.role.clone()))
                    .copied()
                    .unwrap_or_default();
                let value = if metric.ends_with("waiting") {
                    load.waiting * g.share
                } else {
                    load.kv_cache_usage
                };
                let _ = writeln!(out, "{metric}{} {value}", g.labels());
            }
        }
        out
    }
}

struct Group {
    set: String,
    namespace: String,
    role: String,
    revision: String,
    slice: String,
    group: String,
    /// This group's share of the role's load.
    share: f64,
}

impl Group {
    fn labels_inner(&self) -> String {
        format!(
            "disaggregatedset=\"{}\",namespace=\"{}\",role=\"{}\",revision=\"{}\",slice=\"{}\",group=\"{}\"",
            self.set, self.namespace, self.role, self.revision, self.slice, self.group
        )
    }

    fn labels(&self) -> String {
        format!("{{{}}}", self.labels_inner())
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub fn serve(
    store: Arc<Store>,
    controls: ServingControls,
    listener: tokio::net::TcpListener,
) -> tokio::task::JoinHandle<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (store, controls) = (store.clone(), controls.clone());
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    controls.render(&store),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}
