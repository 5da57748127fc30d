//! The HTTP front of the store: the Kubernetes REST paths and JSON.
//! `/version`, `/healthz` (`/livez`, `/readyz`), discovery (`/api`, `/api/v1`,
//! `/apis`, `/apis/{g}/{v}`, and aggregated on `/api` and `/apis`), `/openapi/v3`, and for every
//! registered resource get, list (label/field selectors, limit/continue,
//! Tables), watch (from a resourceVersion, bookmarks, timeout, 410 as an ERROR
//! event), create, update, the status subresource, JSON merge patch, RFC 6902
//! patch, server-side apply, and delete (Background, Foreground, Orphan). CRDs
//! register resources whose objects are validated, pruned and defaulted by
//! their schema, with their scale subresource and printer columns. The admin
//! endpoints under `/kube-sim/` inject faults and steer the LWS simulator.

use crate::fields;
use crate::selector::Selector;
use crate::store::{EventType, Filter, ResourceId, ResourceInfo, Store, StoreError, WatchEvent};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

mod admission;
mod discovery;
mod events;
mod objects;
mod protobuf;
mod watch;

use admission::*;
use discovery::*;
use objects::*;
use watch::*;

/// The API server's state: the store, plus what CRDs add (schemas, short names).
pub struct Sim {
    pub store: Arc<Store>,
    /// What to do wrong on purpose (tests set it directly or through `/kube-sim/*`).
    pub faults: crate::faults::Faults,
    /// How the LWS simulator's groups behave (when it runs: [`crate::lws_sim::spawn`]).
    pub lws: crate::lws_sim::LwsSimControls,
    /// How the simulated inference servers behave ([`crate::serving::serve`]).
    pub serving: crate::serving::ServingControls,
    /// Requests served, for `GET /kube-sim/stats`: reads (GET) and writes (the rest).
    pub reads: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
    custom: RwLock<HashMap<ResourceId, Custom>>,
}

/// What a CRD version adds to a resource.
#[derive(Clone)]
struct Custom {
    /// Shared: a request clones the Custom, not the (large) schema.
    schema: Option<Arc<Value>>,
    /// `subresources.scale`: specReplicasPath, statusReplicasPath, labelSelectorPath.
    scale: Option<Value>,
    /// `additionalPrinterColumns`, for Table responses.
    columns: Option<Value>,
}

impl Sim {
    /// A server with the built-in kinds registered.
    pub fn new(store: Arc<Store>) -> Arc<Sim> {
        register_builtins(&store);
        Arc::new(Sim {
            store,
            faults: crate::faults::Faults::default(),
            lws: Default::default(),
            serving: Default::default(),
            reads: Default::default(),
            writes: Default::default(),
            custom: RwLock::new(HashMap::new()),
        })
    }

    fn custom(&self, id: &ResourceId) -> Option<Custom> {
        self.custom
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Registers (or, when `deleted`, removes) the resources a CRD object defines,
    /// and marks it Established.
    fn sync_crd(&self, crd: &Value, deleted: bool) -> Result<(), StoreError> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default();
        let plural = spec["names"]["plural"].as_str().unwrap_or_default();
        let kind = spec["names"]["kind"].as_str().unwrap_or_default();
        if group.is_empty() || plural.is_empty() || kind.is_empty() {
            return Err(StoreError {
                code: 422,
                reason: "Invalid",
                message: "CustomResourceDefinition: spec.group, spec.names.plural and spec.names.kind are required".into(),
            });
        }
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        let short_names: Vec<String> = spec["names"]["shortNames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        let mut custom = self.custom.write().unwrap_or_else(|p| p.into_inner());
        for v in spec["versions"].as_array().into_iter().flatten() {
            let id = ResourceId::new(group, v["name"].as_str().unwrap_or_default(), plural);
            if deleted || v["served"].as_bool() == Some(false) {
                self.store.unregister(&id);
                custom.remove(&id);
                continue;
            }
            self.store.register(
                id.clone(),
                ResourceInfo {
                    kind: kind.to_string(),
                    namespaced,
                    status_subresource: v["subresources"].get("status").is_some(),
                    short_names: short_names.clone(),
                },
            );
            custom.insert(
                id,
                Custom {
                    schema: v["schema"].get("openAPIV3Schema").cloned().map(Arc::new),
                    scale: v["subresources"].get("scale").cloned(),
                    columns: v.get("additionalPrinterColumns").cloned(),
                },
            );
        }
        Ok(())
    }
}

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// Registers the built-in kinds the operator uses.
pub fn register_builtins(store: &Store) {
    type Builtin<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        bool,
        bool,
        &'a [&'a str],
    );
    // Besides what the operator uses, what `kubectl apply -k deploy/` installs
    // (stored and shown, not run: no pods are scheduled, no RBAC is enforced).
    let rbac = "rbac.authorization.k8s.io";
    let kinds: [Builtin; 15] = [
        ("", "v1", "namespaces", "Namespace", false, true, &["ns"]),
        ("", "v1", "configmaps", "ConfigMap", true, false, &["cm"]),
        ("", "v1", "services", "Service", true, true, &["svc"]),
        (
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            false,
            &["sa"],
        ),
        ("", "v1", "secrets", "Secret", true, false, &[]),
        (
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            true,
            &["deploy"],
        ),
        (
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            true,
            &["pdb"],
        ),
        (rbac, "v1", "clusterroles", "ClusterRole", false, false, &[]),
        (
            rbac,
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            false,
            &[],
        ),
        (rbac, "v1", "roles", "Role", true, false, &[]),
        (rbac, "v1", "rolebindings", "RoleBinding", true, false, &[]),
        ("", "v1", "events", "Event", true, false, &["ev"]),
        (
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            false,
            &["ev"],
        ),
        (
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            false,
            &[],
        ),
        (
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
            &["crd", "crds"],
        ),
    ];
    for (group, version, plural, kind, namespaced, status, short) in kinds {
        store.register(
            ResourceId::new(group, version, plural),
            ResourceInfo {
                kind: kind.into(),
                namespaced,
                status_subresource: status,
                short_names: short.iter().map(|s| s.to_string()).collect(),
            },
        );
    }
}

/// The router for a server. Also starts its garbage collector, which deletes
/// objects whose owners are all gone after every deletion (Background), and
/// holds an owner deleted in the Foreground until its dependents are gone;
/// Orphan strips the references first.
pub fn router(sim: Arc<Sim>) -> Router {
    spawn_garbage_collector(sim.store.clone());
    Router::new().fallback(handle).with_state(sim)
}

fn spawn_garbage_collector(store: Arc<Store>) {
    let mut events = store.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                // As the real collector watches the graph: every change, and
                // what it touches only.
                Ok(e) => {
                    store.collect_garbage_after(&e);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    store.collect_garbage();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

fn crd_resource() -> ResourceId {
    ResourceId::new("apiextensions.k8s.io", "v1", "customresourcedefinitions")
}

/// A parsed resource path.
#[derive(Debug, PartialEq)]
struct Target {
    resource: ResourceId,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(Target {
        resource: ResourceId::new(group, version, plural),
        namespace,
        name,
        subresource: sub,
    })
}

fn api_version(r: &ResourceId) -> String {
    if r.group.is_empty() {
        r.version.clone()
    } else {
        format!("{}/{}", r.group, r.version)
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(e: &StoreError) -> Response {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
    )
}

fn bad_request(message: impl Into<String>) -> StoreError {
    StoreError {
        code: 400,
        reason: "BadRequest",
        message: message.into(),
    }
}

async fn handle(
    State(sim): State<Arc<Sim>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if let Some(response) = fixed_path(&sim, &method, path, &headers, &body) {
        return response;
    }
    let Some(target) = parse_path(path) else {
        return error_response(&StoreError {
            code: 404,
            reason: "NotFound",
            message: format!("the server could not find the requested resource ({path})"),
        });
    };
    if !protobuf::json_acceptable(&headers) {
        return error_response(&StoreError {
            code: 406,
            reason: "NotAcceptable",
            message: "only the following media types are accepted: application/json (kube-sim answers JSON, also to clients that send protobuf)".into(),
        });
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // kubectl sends built-in kinds it builds itself as protobuf: read as JSON.
    let body = if content_type.starts_with(protobuf::MEDIA_TYPE) {
        if !matches!(method, Method::POST | Method::PUT) {
            return error_response(&StoreError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json, application/json-patch+json, application/apply-patch+yaml (got {content_type})"
                ),
            });
        }
        match protobuf::to_json(&body) {
            Ok(json) => json,
            Err(e) => return error_response(&e),
        }
    } else {
        body
    };
    if let Some(response) = injected_fault(&sim, &method, path, &headers).await {
        return response;
    }
    let is_crd = target.resource == crd_resource();
    // events.k8s.io/v1 is a view of the core v1 Events.
    let view = events::is_view(&target.resource);
    let (target, body) = if view {
        let target = Target {
            resource: events::stored(),
            ..target
        };
        (target, events::body_in(&body))
    } else {
        (target, body)
    };
    let result = serve(&sim, &method, target, &query, &headers, &body).await;
    let result = if view {
        result.map(|(response, written)| (events::answer_out(response), written))
    } else {
        result
    };
    match result {
        Ok((response, Some(written))) if is_crd => {
            match sim.sync_crd(&written, method == Method::DELETE) {
                Ok(()) => {
                    if method != Method::DELETE {
                        establish(&sim.store, &written);
                    }
                    response
                }
                Err(e) => error_response(&e),
            }
        }
        Ok((response, _)) => response,
        Err(e) => error_response(&e),
    }
}

/// The paths that are not resources: version, health, discovery, OpenAPI,
/// and kube-sim's own admin endpoints.
fn fixed_path(
    sim: &Arc<Sim>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    match path {
        "/version" => {
            return Some(json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kube-sim", "platform": "linux/amd64"}),
            ));
        }
        "/healthz" | "/livez" | "/readyz" => return Some((StatusCode::OK, "ok").into_response()),
        "/kube-sim/faults" if method == Method::POST => {
            let config = serde_json::from_slice::<Value>(body)
                .map_err(|e| e.to_string())
                .and_then(|v| crate::faults::FaultConfig::from_json(&v));
            return Some(match config {
                Ok(c) => {
                    sim.faults.set(c);
                    json_response(StatusCode::OK, &sim.faults.describe())
                }
                Err(e) => error_response(&bad_request(e)),
            });
        }
        "/kube-sim/lws" if method == Method::POST => {
            let config = serde_json::from_slice::<Value>(body)
                .map_err(|e| e.to_string())
                .and_then(|v| crate::lws_sim::LwsSimConfig::from_json(&v));
            return Some(match config {
                Ok(c) => {
                    sim.lws.set(c);
                    (StatusCode::OK, "ok").into_response()
                }
                Err(e) => error_response(&bad_request(e)),
            });
        }
        "/kube-sim/serving" if method == Method::POST => {
            let applied = serde_json::from_slice::<Value>(body)
                .map_err(|e| e.to_string())
                .and_then(|v| sim.serving.apply_json(&v));
            return Some(match applied {
                Ok(()) => (StatusCode::OK, "ok").into_response(),
                Err(e) => error_response(&bad_request(e)),
            });
        }
        "/kube-sim/drop-watches" if method == Method::POST => {
            sim.faults.drop_watches();
            return Some((StatusCode::OK, "dropped").into_response());
        }
        "/kube-sim/compact" if method == Method::POST => {
            sim.store.compact();
            return Some((StatusCode::OK, "compacted").into_response());
        }
        "/kube-sim/restart" if method == Method::POST => {
            // State is kept; every connection's watch ends, as when an API server restarts.
            sim.faults.drop_watches();
            return Some((StatusCode::OK, "restarted").into_response());
        }
        // Aggregated discovery (one request for everything), when asked for.
        "/api" | "/apis" if wants_aggregated(headers) => {
            let body = aggregated_discovery(sim, path == "/api");
            return Some(
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, AGGREGATED_DISCOVERY)],
                    body.to_string(),
                )
                    .into_response(),
            );
        }
        "/api" => {
            return Some(json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            ));
        }
        "/apis" => return Some(json_response(StatusCode::OK, &group_list(&sim.store))),
        "/openapi/v3" => {
            let docs: Vec<(String, String, Value)> = group_versions(&sim.store)
                .into_iter()
                .map(|(g, v)| {
                    let doc = openapi_document(sim, &g, &v);
                    (g, v, doc)
                })
                .collect();
            return Some(json_response(StatusCode::OK, &crate::openapi::index(&docs)));
        }
        _ => {}
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", v] => return Some(json_response(StatusCode::OK, &resource_list(sim, "", v))),
        ["apis", g, v] => return Some(json_response(StatusCode::OK, &resource_list(sim, g, v))),
        ["openapi", "v3", "api", v] => {
            return Some(json_response(StatusCode::OK, &openapi_document(sim, "", v)));
        }
        ["openapi", "v3", "apis", g, v] => {
            return Some(json_response(StatusCode::OK, &openapi_document(sim, g, v)));
        }
        _ => {}
    }
    if path == "/kube-sim/stats" {
        use std::sync::atomic::Ordering::Relaxed;
        return Some(json_response(
            StatusCode::OK,
            &json!({"reads": sim.reads.load(Relaxed), "writes": sim.writes.load(Relaxed)}),
        ));
    }
    None
}

/// What the fault injection does to this request, if anything: a black
/// hole, latency (then `None`), a denial, or a failed write.
async fn injected_fault(
    sim: &Arc<Sim>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    let counter = if method == Method::GET {
        &sim.reads
    } else {
        &sim.writes
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    if let Some(token) = &token
        && sim.faults.black_holed(token)
    {
        while sim.faults.black_holed(token) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        return Some(error_response(&StoreError {
            code: 503,
            reason: "ServiceUnavailable",
            message: "the request was black-holed (injected by kube-sim)".into(),
        }));
    }
    if let Some(token) = &token
        && method != Method::GET
    {
        sim.faults.served_write(token);
    }
    let latency = sim.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some((code, reason, message)) = sim.faults.denial(method.as_str(), path) {
        return Some(error_response(&StoreError {
            code,
            reason,
            message,
        }));
    }
    if method != Method::GET
        && let Some((code, reason, message)) = sim.faults.write_failure()
    {
        let mut response = error_response(&StoreError {
            code,
            reason,
            message,
        });
        if code == 429 {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        return Some(response);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resource_paths() {
        let p = parse_path("/api/v1/namespaces/ns/configmaps/a").unwrap();
        assert_eq!(
            (
                p.resource.plural.as_str(),
                p.namespace.as_deref(),
                p.name.as_deref()
            ),
            ("configmaps", Some("ns"), Some("a"))
        );
        let p = parse_path("/api/v1/namespaces/ns").unwrap();
        assert_eq!(
            (p.resource.plural.as_str(), p.namespace, p.name.as_deref()),
            ("namespaces", None, Some("ns"))
        );
        let p =
            parse_path("/apis/leaderworkerset.x-k8s.io/v1/namespaces/d/leaderworkersets/x/status")
                .unwrap();
        assert_eq!(
            (p.resource.group.as_str(), p.subresource.as_deref()),
            ("leaderworkerset.x-k8s.io", Some("status"))
        );
        let p = parse_path("/apis/coordination.k8s.io/v1/leases").unwrap();
        assert_eq!((p.namespace, p.name), (None, None));
        assert!(parse_path("/metrics").is_none());
    }
}
