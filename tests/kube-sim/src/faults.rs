//! Fault injection, controllable from tests ([`Faults`]) and from the admin
//! endpoint (`POST /kube-sim/faults`, `/kube-sim/drop-watches`,
//! `/kube-sim/compact`, `/kube-sim/restart`).
//!
//! Write failures are drawn from a seeded generator, so a run is repeatable.

use serde_json::{Value, json};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// What the server does wrong on purpose.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Fraction (0..=1) of writes that fail, and with which status (409, 429 or 500).
    pub write_failure: Option<(f64, u16)>,
    /// Added before every request is served.
    pub latency: Duration,
    /// Every watch event is delivered this long after its change, so that
    /// clients' caches lag the server (in order, as a slow watch would).
    pub watch_delay: Duration,
    /// Seeds the failure draws.
    pub seed: u64,
    /// Requests refused every time, as an admission webhook, RBAC or a quota would.
    pub deny: Vec<Denial>,
    /// Requests carrying this bearer token hang, as behind a network
    /// partition, until the fault is lifted; then they fail with 503 (they
    /// never take effect).
    pub black_hole: Option<String>,
}

/// Every request with this method whose path contains `path` fails with
/// `code` (403 Forbidden, 422 Invalid, …) and `message`.
#[derive(Clone, Debug, PartialEq)]
pub struct Denial {
    pub method: String,
    pub path: String,
    pub code: u16,
    pub message: String,
}

impl FaultConfig {
    /// Reads the admin endpoint's JSON: `{"writeFailure": {"fraction": 0.1, "code": 409}, "latencyMs": 20, "seed": 7}`.
    pub fn from_json(v: &Value) -> Result<FaultConfig, String> {
        let write_failure = match v.get("writeFailure").filter(|w| !w.is_null()) {
            None => None,
            Some(w) => {
                let fraction = w["fraction"]
                    .as_f64()
                    .ok_or("writeFailure.fraction: a number from 0 to 1 is required")?;
                let code = w["code"].as_u64().unwrap_or(500) as u16;
                if !(0.0..=1.0).contains(&fraction) || ![409, 429, 500].contains(&code) {
                    return Err(
                        "writeFailure: fraction must be within 0..1 and code one of 409, 429, 500"
                            .into(),
                    );
                }
                Some((fraction, code))
            }
        };
        let deny = v["deny"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| Denial {
                method: d["method"].as_str().unwrap_or("POST").to_uppercase(),
                path: d["path"].as_str().unwrap_or_default().to_string(),
                code: d["code"].as_u64().unwrap_or(403) as u16,
                message: d["message"]
                    .as_str()
                    .unwrap_or("denied (injected by kube-sim)")
                    .to_string(),
            })
            .collect();
        Ok(FaultConfig {
            write_failure,
            latency: Duration::from_millis(v["latencyMs"].as_u64().unwrap_or(0)),
            watch_delay: Duration::from_millis(v["watchDelayMs"].as_u64().unwrap_or(0)),
            seed: v["seed"].as_u64().unwrap_or(1),
            deny,
            black_hole: v["blackHole"].as_str().map(str::to_string),
        })
    }
}

/// The live fault state of a server.
pub struct Faults {
    config: Mutex<(FaultConfig, u64)>,
    /// Bumped to end every open watch; a watch that subscribed earlier sees the change.
    watch_generation: watch::Sender<u64>,
    /// Writes served, by the bearer token they carried.
    writes_by_token: Mutex<std::collections::HashMap<String, u64>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            config: Mutex::new((FaultConfig::default(), 1)),
            watch_generation: watch::Sender::new(0),
            writes_by_token: Mutex::default(),
        }
    }
}

impl Faults {
    /// Replaces the configuration and restarts the failure draws from its seed:
    /// the same seed gives the same failures.
    pub fn set(&self, config: FaultConfig) {
        let seed = config.seed.max(1);
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = (config, seed);
    }

    /// Replaces the configuration but continues the draws (its seed is not
    /// used): for switching faults on and off within one run, where
    /// restarting would replay the same first draws after every switch.
    pub fn switch(&self, config: FaultConfig) {
        self.config.lock().unwrap_or_else(|p| p.into_inner()).0 = config;
    }

    pub fn watch_delay(&self) -> Duration {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .watch_delay
    }

    pub fn latency(&self) -> Duration {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .latency
    }

    /// Whether this write fails, and how: `(code, reason, message)`.
    pub fn write_failure(&self) -> Option<(u16, &'static str, String)> {
        let mut guard = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let (fraction, code) = guard.0.write_failure?;
        // xorshift64: small, seeded, repeatable.
        let mut x = guard.1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        guard.1 = x;
        let draw = (x >> 11) as f64 / (1u64 << 53) as f64;
        (draw < fraction).then(|| match code {
            409 => (409, "Conflict", "Operation cannot be fulfilled: the object has been modified (injected by kube-sim)".to_string()),
            429 => (429, "TooManyRequests", "the server has received too many requests and has asked us to try again later (injected by kube-sim)".to_string()),
            _ => (500, "InternalError", "an error on the server has prevented the request from succeeding (injected by kube-sim)".to_string()),
        })
    }

    /// Whether requests with this bearer token are black-holed now.
    pub fn black_holed(&self, token: &str) -> bool {
        let guard = self.config.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.black_hole.as_deref() == Some(token)
    }

    /// Counts a write served for this bearer token.
    pub fn served_write(&self, token: &str) {
        *self
            .writes_by_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(token.to_string())
            .or_default() += 1;
    }

    /// Writes served so far for this bearer token.
    pub fn writes_by(&self, token: &str) -> u64 {
        self.writes_by_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .copied()
            .unwrap_or(0)
    }

    /// The denial that applies to this request, if one does: `(code, reason, message)`.
    pub fn denial(&self, method: &str, path: &str) -> Option<(u16, &'static str, String)> {
        let guard = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let d = guard
            .0
            .deny
            .iter()
            .find(|d| d.method == method && path.contains(&d.path))?;
        let reason = match d.code {
            403 => "Forbidden",
            404 => "NotFound",
            409 => "AlreadyExists",
            422 => "Invalid",
            429 => "TooManyRequests",
            _ => "InternalError",
        };
        Some((d.code, reason, d.message.clone()))
    }

    /// Ends every open watch (clients re-watch from their last version).
    pub fn drop_watches(&self) {
        self.watch_generation.send_modify(|g| *g += 1);
    }

    /// For a new watch: changes when watches are dropped.
    pub fn watch_drops(&self) -> watch::Receiver<u64> {
        self.watch_generation.subscribe()
    }

    pub fn describe(&self) -> Value {
        let c = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        json!({"writeFailure": c.write_failure.map(|(f, code)| json!({"fraction": f, "code": code})),
               "latencyMs": c.latency.as_millis() as u64, "seed": c.seed})
    }
}
