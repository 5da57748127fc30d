//! Signals from Prometheus: the operator evaluates bindings' PromQL queries
//! (`spec.plugins[].signals`) with its HTTP API (`/api/v1/query`), with a
//! timeout and caps on the answer, and hands plugins the samples or the
//! reason there are none. Plugins never see the URL or the credentials.
//!
//! A [`Session`] is made per reconcile: it evaluates each distinct query once.

use disagg_core::plugins::Sample;
use disagg_core::signals::{Evaluated, Signals};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest answer read (bytes of JSON).
const MAX_BODY_BYTES: u64 = 256 * 1024;
/// The most samples one query may return.
pub const MAX_SAMPLES: usize = 100;

/// How to reach Prometheus (`disagg run --prometheus-url …`).
#[derive(Clone, Debug)]
pub struct PrometheusConfig {
    /// Its base URL, e.g. `http://prometheus.monitoring:9090`.
    pub url: String,
    /// A file holding a bearer token, read for every reconcile (tokens rotate).
    pub bearer_token_file: Option<PathBuf>,
    /// PEM certificates to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Per query.
    pub timeout: Duration,
}

/// A Prometheus client.
pub struct Prometheus {
    agent: ureq::Agent,
    config: PrometheusConfig,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Prometheus {
    pub fn new(
        config: PrometheusConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Prometheus, String> {
        let mut builder = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false);
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("--prometheus-ca-file {}: {e}", ca.display()))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let ureq::tls::PemItem::Certificate(c) =
                    item.map_err(|e| format!("--prometheus-ca-file {}: {e}", ca.display()))?
                {
                    certs.push(c);
                }
            }
            if certs.is_empty() {
                return Err(format!(
                    "--prometheus-ca-file {}: no certificate in it",
                    ca.display()
                ));
            }
            builder = builder.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(format!(
                "--prometheus-url {:?}: must be an http:// or https:// URL",
                config.url
            ));
        }
        Ok(Prometheus {
            agent: builder.build().into(),
            config,
            metrics,
        })
    }

    /// A session for one reconcile.
    pub fn session(&self) -> Session<'_> {
        Session {
            prometheus: self,
            memo: RefCell::new(HashMap::new()),
        }
    }

    fn query(&self, query: &str) -> Result<Vec<Sample>, String> {
        let url = format!("{}/api/v1/query", self.config.url.trim_end_matches('/'));
        let mut request = self.agent.get(&url).query("query", query);
        if let Some(file) = &self.config.bearer_token_file {
            let token = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read the Prometheus token file: {e}"))?;
            request = request.header("Authorization", format!("Bearer {}", token.trim()));
        }
        let mut response = request
            .call()
            .map_err(|e| format!("Prometheus unreachable: {e}"))?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_string()
            .map_err(|e| {
                format!("cannot read Prometheus' answer (over {MAX_BODY_BYTES} bytes?): {e}")
            })?;
        parse(status.as_u16(), &body)
    }
}

/// One reconcile's evaluations.
pub struct Session<'a> {
    prometheus: &'a Prometheus,
    memo: RefCell<HashMap<String, Evaluated>>,
}

impl Signals for Session<'_> {
    fn evaluate(&self, query: &str) -> Evaluated {
        if let Some(e) = self.memo.borrow().get(query) {
            return e.clone();
        }
        let started = Instant::now();
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let samples = self.prometheus.query(query);
        self.prometheus
            .metrics
            .signal_evaluated(samples.is_ok(), started.elapsed());
        let e = Evaluated { at_ms, samples };
        self.memo.borrow_mut().insert(query.to_string(), e.clone());
        e
    }
}

/// Prometheus' answer: an instant vector's or a scalar's samples, or why not.
fn parse(status: u16, body: &str) -> Result<Vec<Sample>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|_| {
        format!(
            "Prometheus answered HTTP {status} with no JSON: {}",
            disagg_core::text::truncate(body.trim(), 200)
        )
    })?;
    if v["status"] != "success" {
        return Err(format!(
            "query failed ({}): {}",
            v["errorType"].as_str().unwrap_or("HTTP error"),
            disagg_core::text::truncate(v["error"].as_str().unwrap_or(body), 300)
        ));
    }
    let number = |pair: &serde_json::Value| -> Result<f64, String> {
        let text = pair[1].as_str().ok_or("a sample without a value")?;
        text.parse::<f64>()
            .map_err(|_| format!("a sample value {text:?} is not a number"))
    };
    let data = &v["data"];
    match data["resultType"].as_str() {
        Some("scalar") => Ok(vec![Sample {
            labels: Vec::new(),
            value: number(&data["result"])?,
        }]),
        Some("vector") => {
            let list = data["result"]
                .as_array()
                .ok_or("a vector without a result")?;
            if list.len() > MAX_SAMPLES {
                return Err(format!(
                    "{} samples, over the cap of {MAX_SAMPLES}: aggregate the query (sum, avg, max by …)",
                    list.len()
                ));
            }
            list.iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| {
                                    (k.clone(), v.as_str().unwrap_or_default().to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Ok(Sample {
                        labels,
                        value: number(&s["value"])?,
                    })
                })
                .collect()
        }
        other => Err(format!(
            "the query gives a {}, not an instant vector or scalar: use an instant query",
            other.unwrap_or("nothing")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn answers_become_samples_or_reasons() {
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"role":"prefill"},"value":[1.5,"2.5"]},{"metric":{},"value":[1.5,"NaN"]}]}}"#;
        let s = parse(200, vector).unwrap();
        assert_eq!(
            s[0].labels,
            vec![("role".to_string(), "prefill".to_string())]
        );
        assert_eq!(s[0].value, 2.5);
        assert!(s[1].value.is_nan());
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"7"]}}"#;
        assert_eq!(parse(200, scalar).unwrap()[0].value, 7.0);
        let error = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert_eq!(
            parse(400, error).unwrap_err(),
            "query failed (bad_data): parse error at char 3"
        );
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse(200, matrix).unwrap_err().contains("instant"));
        assert!(parse(502, "Bad Gateway").unwrap_err().contains("HTTP 502"));
        let many: Vec<String> = (0..101)
            .map(|i| format!(r#"{{"metric":{{"g":"{i}"}},"value":[1,"1"]}}"#))
            .collect();
        let big = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            many.join(",")
        );
        assert!(
            parse(200, &big)
                .unwrap_err()
                .contains("over the cap of 100")
        );
    }
}
