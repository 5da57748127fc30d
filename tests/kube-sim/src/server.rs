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

/// The API server's state: the store, plus what CRDs add (schemas, short names).
pub struct Sim {
    pub store: Arc<Store>,
    /// What to do wrong on purpose (tests set it directly or through `/kube-sim/*`).
    pub faults: crate::faults::Faults,
    /// How the LWS simulator's groups behave (when it runs: [`crate::lws_sim::spawn`]).
    pub lws: crate::lws_sim::LwsSimControls,
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
    let kinds: [Builtin; 7] = [
        ("", "v1", "namespaces", "Namespace", false, true, &["ns"]),
        ("", "v1", "configmaps", "ConfigMap", true, false, &["cm"]),
        ("", "v1", "services", "Service", true, true, &["svc"]),
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
                // After a deletion; and, as the real collector watches the
                // graph, when an object arrives whose owner may already be gone.
                Ok(e)
                    if e.kind == EventType::Deleted
                        || e.object["metadata"].get("deletionTimestamp").is_some()
                        || (e.kind == EventType::Added
                            && e.object["metadata"].get("ownerReferences").is_some()) =>
                {
                    store.collect_garbage();
                }
                Ok(_) => {}
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
    match path {
        "/version" => {
            return json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kube-sim", "platform": "linux/amd64"}),
            );
        }
        "/healthz" | "/livez" | "/readyz" => return (StatusCode::OK, "ok").into_response(),
        "/kube-sim/faults" if method == Method::POST => {
            let config = serde_json::from_slice::<Value>(&body)
                .map_err(|e| e.to_string())
                .and_then(|v| crate::faults::FaultConfig::from_json(&v));
            return match config {
                Ok(c) => {
                    sim.faults.set(c);
                    json_response(StatusCode::OK, &sim.faults.describe())
                }
                Err(e) => error_response(&bad_request(e)),
            };
        }
        "/kube-sim/lws" if method == Method::POST => {
            let config = serde_json::from_slice::<Value>(&body)
                .map_err(|e| e.to_string())
                .and_then(|v| crate::lws_sim::LwsSimConfig::from_json(&v));
            return match config {
                Ok(c) => {
                    sim.lws.set(c);
                    (StatusCode::OK, "ok").into_response()
                }
                Err(e) => error_response(&bad_request(e)),
            };
        }
        "/kube-sim/drop-watches" if method == Method::POST => {
            sim.faults.drop_watches();
            return (StatusCode::OK, "dropped").into_response();
        }
        "/kube-sim/compact" if method == Method::POST => {
            sim.store.compact();
            return (StatusCode::OK, "compacted").into_response();
        }
        "/kube-sim/restart" if method == Method::POST => {
            // State is kept; every connection's watch ends, as when an API server restarts.
            sim.faults.drop_watches();
            return (StatusCode::OK, "restarted").into_response();
        }
        // Aggregated discovery (one request for everything), when asked for.
        "/api" | "/apis" if wants_aggregated(&headers) => {
            let body = aggregated_discovery(&sim, path == "/api");
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, AGGREGATED_DISCOVERY)],
                body.to_string(),
            )
                .into_response();
        }
        "/api" => {
            return json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            );
        }
        "/apis" => return json_response(StatusCode::OK, &group_list(&sim.store)),
        "/openapi/v3" => {
            let docs: Vec<(String, String, Value)> = group_versions(&sim.store)
                .into_iter()
                .map(|(g, v)| {
                    let doc = openapi_document(&sim, &g, &v);
                    (g, v, doc)
                })
                .collect();
            return json_response(StatusCode::OK, &crate::openapi::index(&docs));
        }
        _ => {}
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", v] => return json_response(StatusCode::OK, &resource_list(&sim, "", v)),
        ["apis", g, v] => return json_response(StatusCode::OK, &resource_list(&sim, g, v)),
        ["openapi", "v3", "api", v] => {
            return json_response(StatusCode::OK, &openapi_document(&sim, "", v));
        }
        ["openapi", "v3", "apis", g, v] => {
            return json_response(StatusCode::OK, &openapi_document(&sim, g, v));
        }
        _ => {}
    }
    if path == "/kube-sim/stats" {
        use std::sync::atomic::Ordering::Relaxed;
        return json_response(
            StatusCode::OK,
            &json!({"reads": sim.reads.load(Relaxed), "writes": sim.writes.load(Relaxed)}),
        );
    }
    let Some(target) = parse_path(path) else {
        return error_response(&StoreError {
            code: 404,
            reason: "NotFound",
            message: format!("the server could not find the requested resource ({path})"),
        });
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        return error_response(&StoreError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json, application/json-patch+json (got {content_type})"
            ),
        });
    }
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
        return error_response(&StoreError {
            code: 503,
            reason: "ServiceUnavailable",
            message: "the request was black-holed (injected by kube-sim)".into(),
        });
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
        return error_response(&StoreError {
            code,
            reason,
            message,
        });
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
        return response;
    }
    let is_crd = target.resource == crd_resource();
    let result = serve(&sim, &method, target, &query, &headers, &body).await;
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

/// Marks a CRD Established and its names accepted, as the real server does.
fn establish(store: &Store, crd: &Value) {
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let Ok(mut current) = store.get(&crd_resource(), "", name) else {
        return;
    };
    let now = current["metadata"]["creationTimestamp"].clone();
    let condition = |t: &str, reason: &str| json!({"type": t, "status": "True", "reason": reason, "message": "", "lastTransitionTime": now});
    current["status"] = json!({
        "conditions": [condition("NamesAccepted", "NoConflicts"), condition("Established", "InitialNamesAccepted")],
        "acceptedNames": current["spec"]["names"].clone(),
        "storedVersions": current["spec"]["versions"].as_array().into_iter().flatten()
            .filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>(),
    });
    if current["status"]
        != store
            .get(&crd_resource(), "", name)
            .map(|c| c["status"].clone())
            .unwrap_or_default()
    {
        let _ = store.update(&crd_resource(), "", name, current, true);
    }
}

/// Validates, prunes and defaults an object of a CRD-defined resource against
/// its schema, as the API server does before storing it. Unknown fields are an
/// error with `fieldValidation=Strict` (kubectl's default) and dropped otherwise.
fn admit(
    custom: &Option<Custom>,
    kind: &str,
    object: &mut Value,
    strict: bool,
) -> Result<(), StoreError> {
    let Some(schema) = custom.as_ref().and_then(|c| c.schema.as_ref()) else {
        return Ok(());
    };
    let problems: Vec<String> = disagg_schema::check(schema, object)
        .into_iter()
        .filter(|p| strict || p.message != "unknown field")
        .map(|p| p.to_string())
        .collect();
    if !problems.is_empty() {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        return Err(StoreError {
            code: 422,
            reason: "Invalid",
            message: format!("{kind} \"{name}\" is invalid: {}", problems.join(", ")),
        });
    }
    disagg_schema::prune(schema, object);
    disagg_schema::apply_defaults(schema, object);
    Ok(())
}

/// Refuses fields the schema does not know (a partial object, such as an
/// applied configuration, is not checked for anything else).
fn reject_unknown_fields(
    custom: &Option<Custom>,
    kind: &str,
    object: &Value,
) -> Result<(), StoreError> {
    let Some(schema) = custom.as_ref().and_then(|c| c.schema.as_ref()) else {
        return Ok(());
    };
    let unknown: Vec<String> = disagg_schema::check(schema, object)
        .into_iter()
        .filter(|p| p.message == "unknown field")
        .map(|p| p.to_string())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    Err(StoreError {
        code: 422,
        reason: "Invalid",
        message: format!("{kind} \"{name}\" is invalid: {}", unknown.join(", ")),
    })
}

/// A response, and the object as written (for side effects such as CRD registration).
type Served = (Response, Option<Value>);

async fn serve(
    sim: &Arc<Sim>,
    method: &Method,
    t: Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Served, StoreError> {
    let store = &sim.store;
    let custom = sim.custom(&t.resource);
    let strict = query.get("fieldValidation").is_some_and(|v| v == "Strict");
    let info = store.resource(&t.resource).ok_or_else(|| StoreError {
        code: 404,
        reason: "NotFound",
        message: format!(
            "the server could not find the requested resource ({})",
            t.resource.plural
        ),
    })?;
    let ns = t.namespace.clone().unwrap_or_default();
    let with_type = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.insert("apiVersion".into(), json!(api_version(&t.resource)));
            o.insert("kind".into(), json!(info.kind));
        }
        v
    };
    if t.subresource.as_deref() == Some("scale")
        && let (Some(scale), Some(name)) = (
            custom.as_ref().and_then(|c| c.scale.clone()),
            t.name.as_deref(),
        )
    {
        let manager = field_manager(query, headers);
        return serve_scale(store, method, &t, name, &scale, &manager, headers, body);
    }
    let status_only = match t.subresource.as_deref() {
        None => false,
        Some("status") if info.status_subresource => true,
        Some(other) => {
            return Err(bad_request(format!(
                "subresource {other} is not served for {}",
                t.resource.plural
            )));
        }
    };
    let time = crate::store::now();
    let api_version_text = api_version(&t.resource);
    let writer = fields::Writer {
        manager: &field_manager(query, headers),
        api_version: &api_version_text,
        time: &time,
        scope: if status_only {
            fields::Scope::Status
        } else {
            fields::Scope::Main {
                status_subresource: info.status_subresource,
            }
        },
    };
    let table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::table::wanted)
        .then(|| crate::table::Columns::new(custom.as_ref().and_then(|c| c.columns.as_ref())));
    let parse_body = || -> Result<Value, StoreError> {
        serde_json::from_slice(body).map_err(|e| bad_request(format!("the body is not JSON: {e}")))
    };
    match (method.clone(), t.name.as_deref()) {
        (Method::GET, None) => {
            let filter = Filter {
                namespace: t.namespace.clone(),
                labels: Selector::parse(query.get("labelSelector").map_or("", String::as_str))
                    .map_err(bad_request)?,
                fields: Filter::parse_fields(
                    query.get("fieldSelector").map_or("", String::as_str),
                )?,
            };
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                return Ok((
                    watch(sim, &t.resource, &info, filter, query, table).await?,
                    None,
                ));
            }
            let limit = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
            let page = store.list(
                &t.resource,
                &filter,
                limit,
                query.get("continue").map(String::as_str),
            )?;
            let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(c) = page.continue_token {
                meta["continue"] = json!(c);
            }
            if let Some(columns) = &table {
                let mut body = columns.table(&page.items, &page.resource_version.to_string());
                body["metadata"] = meta;
                return Ok((json_response(StatusCode::OK, &body), None));
            }
            let items: Vec<Value> = page.items.into_iter().map(with_type).collect();
            let list = json!({"kind": format!("{}List", info.kind), "apiVersion": api_version(&t.resource), "metadata": meta, "items": items});
            Ok((json_response(StatusCode::OK, &list), None))
        }
        (Method::GET, Some(name)) => {
            let object = with_type(store.get(&t.resource, &ns, name)?);
            if let Some(columns) = &table {
                let rv = object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                return Ok((
                    json_response(
                        StatusCode::OK,
                        &columns.table(std::slice::from_ref(&object), rv),
                    ),
                    None,
                ));
            }
            Ok((json_response(StatusCode::OK, &object), None))
        }
        (Method::POST, None) => {
            let mut object = parse_body()?;
            admit(&custom, &info.kind, &mut object, strict)?;
            fields::record_update(None, &mut object, &writer);
            let created = with_type(store.create(&t.resource, &ns, object)?);
            Ok((json_response(StatusCode::CREATED, &created), Some(created)))
        }
        (Method::PUT, Some(name)) => {
            let mut object = parse_body()?;
            admit(&custom, &info.kind, &mut object, strict)?;
            let updated = guaranteed_update(store, &t, name, status_only, false, |current| {
                let mut next = object.clone();
                fields::record_update(current, &mut next, &writer);
                Ok(next)
            })?;
            let updated = with_type(updated);
            Ok((json_response(StatusCode::OK, &updated), Some(updated)))
        }
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let updated = if content_type.starts_with("application/apply-patch") {
                let applied = parse_applied(body, &t, &info, name)?;
                if query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                    return Err(StoreError {
                        code: 422,
                        reason: "Invalid",
                        message: "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
                    });
                }
                // As the real server decodes before merging: unknown fields
                // are refused before any conflict is looked for.
                if strict {
                    reject_unknown_fields(&custom, &info.kind, &applied)?;
                }
                let force = query.get("force").is_some_and(|f| f == "true");
                guaranteed_update(store, &t, name, status_only, !status_only, |current| {
                    let mut next =
                        fields::apply(current, &applied, &writer, force).map_err(|c| {
                            StoreError {
                                code: 409,
                                reason: "Conflict",
                                message: fields::conflict_message(&c),
                            }
                        })?;
                    admit(&custom, &info.kind, &mut next, strict)?;
                    Ok(next)
                })?
            } else {
                let patch = parse_body()?;
                guaranteed_update(store, &t, name, status_only, false, |current| {
                    let current = current.expect("patches need an existing object");
                    let mut next = current.clone();
                    apply_patch(&mut next, content_type, patch.clone())?;
                    admit(&custom, &info.kind, &mut next, strict)?;
                    fields::record_update(Some(current), &mut next, &writer);
                    Ok(next)
                })?
            };
            let updated = with_type(updated);
            Ok((json_response(StatusCode::OK, &updated), Some(updated)))
        }
        (Method::DELETE, Some(name)) => {
            let options = serde_json::from_slice::<Value>(body).unwrap_or_default();
            let precondition = options["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_string);
            let policy = query
                .get("propagationPolicy")
                .map(String::as_str)
                .or(options["propagationPolicy"].as_str())
                .unwrap_or("Background");
            if policy == "Orphan" {
                let current = store.get(&t.resource, &ns, name)?;
                if let Some(uid) = current["metadata"]["uid"].as_str() {
                    store.orphan_dependents(uid);
                }
            }
            let deleted = with_type(if policy == "Foreground" {
                store.delete_foreground(&t.resource, &ns, name, precondition.as_deref())?
            } else {
                store.delete(&t.resource, &ns, name, precondition.as_deref())?
            });
            let gone = deleted["metadata"].get("deletionTimestamp").is_none();
            Ok((
                json_response(StatusCode::OK, &deleted),
                gone.then_some(deleted),
            ))
        }
        (m, _) => Err(StoreError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{m} is not allowed here"),
        }),
    }
}

/// Who a write is recorded against: `?fieldManager=`, else the client's
/// name from its User-Agent (`kubectl/v1.32 …` → `kubectl`), as the API server does.
fn field_manager(query: &HashMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(m) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.clone();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// Reads a server-side apply body (YAML or JSON) and checks it names the
/// object and type of the URL.
fn parse_applied(
    body: &Bytes,
    t: &Target,
    info: &ResourceInfo,
    name: &str,
) -> Result<Value, StoreError> {
    let applied: Value = serde_yaml_ng::from_slice(body)
        .map_err(|e| bad_request(format!("the apply body is not YAML or JSON: {e}")))?;
    let invalid = |m: String| StoreError {
        code: 422,
        reason: "Invalid",
        message: format!("{} \"{name}\" is invalid: {m}", info.kind),
    };
    if !applied.is_object() {
        return Err(bad_request("the apply body must be an object"));
    }
    if applied["apiVersion"].as_str() != Some(api_version(&t.resource).as_str())
        || applied["kind"].as_str() != Some(info.kind.as_str())
    {
        return Err(invalid(format!(
            "apiVersion and kind: Invalid value: {}/{}: an apply to this URL must be {} {}",
            applied["apiVersion"].as_str().unwrap_or_default(),
            applied["kind"].as_str().unwrap_or_default(),
            api_version(&t.resource),
            info.kind
        )));
    }
    if applied["metadata"]["name"].as_str() != Some(name) {
        return Err(invalid(format!(
            "metadata.name: Invalid value: {}: must match the name on the URL",
            applied["metadata"]["name"]
        )));
    }
    Ok(applied)
}

/// The API server's guaranteed update: computes the next object from the
/// current one (None: absent, only when `create` allows it) and writes it
/// conditionally on the version it was computed from, again if another write
/// got in between. A body that names a resourceVersion itself is a
/// precondition, and its conflict is the client's.
fn guaranteed_update(
    store: &Store,
    t: &Target,
    name: &str,
    status_only: bool,
    create: bool,
    mut next: impl FnMut(Option<&Value>) -> Result<Value, StoreError>,
) -> Result<Value, StoreError> {
    let ns = t.namespace.as_deref().unwrap_or_default();
    for _ in 0..10 {
        let current = match store.get(&t.resource, ns, name) {
            Ok(c) => Some(c),
            Err(e) if e.code == 404 && create => None,
            Err(e) => return Err(e),
        };
        let mut object = next(current.as_ref())?;
        let Some(current) = current else {
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            match store.create(&t.resource, ns, object) {
                Err(e) if e.reason == "AlreadyExists" => continue,
                other => return other,
            }
        };
        let precondition = object["metadata"]["resourceVersion"]
            .as_str()
            .filter(|rv| {
                !rv.is_empty() && Some(*rv) != current["metadata"]["resourceVersion"].as_str()
            })
            .is_some();
        if !precondition {
            object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        }
        match store.update(&t.resource, ns, name, object, status_only) {
            Err(e) if e.code == 409 && !precondition => continue,
            other => return other,
        }
    }
    Err(StoreError {
        code: 409,
        reason: "Conflict",
        message: format!(
            "Operation cannot be fulfilled on {} \"{name}\": too many concurrent writes; try again",
            t.resource.plural
        ),
    })
}

/// Applies a PATCH body of the given media type to `doc` (strategic merge is
/// treated as a JSON merge patch; server-side apply is not served yet).
fn apply_patch(doc: &mut Value, content_type: &str, patch: Value) -> Result<(), StoreError> {
    match content_type.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            json_patch::merge(doc, &patch);
            Ok(())
        }
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(doc, &ops).map_err(|e| StoreError {
                code: 422,
                reason: "Invalid",
                message: format!("the JSON patch does not apply: {e}"),
            })
        }
        other => Err(StoreError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!("the patch type {other:?} is not supported by kube-sim yet"),
        }),
    }
}

/// `.spec.replicas` → `/spec/replicas`.
fn pointer(json_path: &str) -> String {
    json_path
        .trim_start_matches('.')
        .split('.')
        .fold(String::new(), |acc, part| format!("{acc}/{part}"))
}

/// The scale subresource: an `autoscaling/v1` Scale view of the object's replica paths.
#[allow(clippy::too_many_arguments)]
fn serve_scale(
    store: &Store,
    method: &Method,
    t: &Target,
    name: &str,
    paths: &Value,
    manager: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Served, StoreError> {
    let spec_path = pointer(
        paths["specReplicasPath"]
            .as_str()
            .unwrap_or(".spec.replicas"),
    );
    let status_path = pointer(
        paths["statusReplicasPath"]
            .as_str()
            .unwrap_or(".status.replicas"),
    );
    let selector_path = paths["labelSelectorPath"].as_str().map(pointer);
    let view = |object: &Value| {
        let m = &object["metadata"];
        let mut status =
            json!({"replicas": object.pointer(&status_path).cloned().unwrap_or(json!(0))});
        if let Some(sel) = selector_path.as_deref().and_then(|p| object.pointer(p)) {
            status["selector"] = sel.clone();
        }
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
               "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
               "spec": {"replicas": object.pointer(&spec_path).cloned().unwrap_or(json!(0))},
               "status": status})
    };
    let (resource, ns) = (&t.resource, t.namespace.as_deref().unwrap_or_default());
    let current = store.get(resource, ns, name)?;
    let wanted = match *method {
        Method::GET => return Ok((json_response(StatusCode::OK, &view(&current)), None)),
        Method::PUT => serde_json::from_slice::<Value>(body)
            .map_err(|e| bad_request(format!("the body is not JSON: {e}")))?,
        Method::PATCH => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| bad_request(format!("the body is not JSON: {e}")))?;
            let mut doc = view(&current);
            apply_patch(&mut doc, content_type, patch)?;
            doc
        }
        ref m => {
            return Err(StoreError {
                code: 405,
                reason: "MethodNotAllowed",
                message: format!("{m} is not allowed on scale"),
            });
        }
    };
    let replicas = wanted["spec"]["replicas"]
        .as_i64()
        .filter(|r| *r >= 0)
        .ok_or_else(|| StoreError {
            code: 422,
            reason: "Invalid",
            message: format!(
                "Scale \"{name}\" is invalid: spec.replicas: must be a non-negative integer"
            ),
        })?;
    let mut next = current.clone();
    if let Some(rv) = wanted["metadata"]["resourceVersion"].as_str() {
        next["metadata"]["resourceVersion"] = json!(rv);
    }
    set_pointer(&mut next, &spec_path, json!(replicas));
    let time = crate::store::now();
    let api_version = api_version(resource);
    let writer = fields::Writer {
        manager,
        api_version: &api_version,
        time: &time,
        scope: fields::Scope::Main {
            status_subresource: true,
        },
    };
    fields::record_update(Some(&current), &mut next, &writer);
    let updated = store.update(resource, ns, name, next, false)?;
    Ok((json_response(StatusCode::OK, &view(&updated)), None))
}

/// Sets the value at a JSON pointer, creating objects on the way.
fn set_pointer(doc: &mut Value, pointer: &str, value: Value) {
    let mut at = doc;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !at.is_object() {
            *at = json!({});
        }
        let map = at.as_object_mut().expect("just made an object");
        if i + 1 == parts.len() {
            map.insert(part.to_string(), value);
            return;
        }
        at = map.entry(part.to_string()).or_insert_with(|| json!({}));
    }
}

async fn watch(
    sim: &Arc<Sim>,
    resource: &ResourceId,
    info: &ResourceInfo,
    filter: Filter,
    query: &HashMap<String, String>,
    table: Option<crate::table::Columns>,
) -> Result<Response, StoreError> {
    let store = &sim.store;
    let from = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let api_version = api_version(resource);
    let kind = info.kind.clone();
    let line = {
        let (api_version, kind) = (api_version.clone(), kind.clone());
        move |type_: &str, mut object: Value| {
            if let Some(o) = object.as_object_mut() {
                o.insert("apiVersion".into(), json!(api_version));
                o.insert("kind".into(), json!(kind));
            }
            // `kubectl get -w`: every event carries a one-row Table.
            if let Some(columns) = &table {
                let rv = object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                object = columns.table(std::slice::from_ref(&object), &rv);
            }
            Bytes::from(format!("{}\n", json!({"type": type_, "object": object})))
        }
    };
    // No version (or "0"): start with the current state as ADDED events.
    let (initial, start) = if from.is_empty() || from == "0" {
        let page = store.list(resource, &filter, 0, None)?;
        (page.items, page.resource_version)
    } else {
        let rv = from
            .parse::<u64>()
            .map_err(|_| bad_request(format!("invalid resourceVersion {from:?}")))?;
        (Vec::new(), rv)
    };
    let (backlog, receiver) = match store.watch(resource, &filter, start) {
        Ok(w) => w,
        Err(e) if e.code == 410 => {
            // Like the real server: a 200 stream carrying one ERROR event.
            let body = format!("{}\n", json!({"type": "ERROR", "object": e.to_status()}));
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response());
        }
        Err(e) => return Err(e),
    };
    let mut last = start;
    let mut head: Vec<Bytes> = initial.into_iter().map(|o| line("ADDED", o)).collect();
    for e in backlog {
        last = e.resource_version;
        head.push(line(e.kind.as_str(), e.object));
    }
    let resource = resource.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    let drops = sim.faults.watch_drops();
    let live = futures::stream::unfold(
        (receiver, last, drops),
        move |(mut rx, mut last, mut drops)| {
            let (resource, filter, line, api_version, kind) = (
                resource.clone(),
                filter.clone(),
                line.clone(),
                api_version.clone(),
                kind.clone(),
            );
            async move {
                loop {
                    let tick = tokio::time::sleep(BOOKMARK_EVERY);
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => return None,
                        _ = drops.changed() => return None,
                        _ = tick, if bookmarks => {
                            let mark = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": last.to_string()}}});
                            return Some((Bytes::from(format!("{mark}\n")), (rx, last, drops)));
                        }
                        received = rx.recv() => match received {
                            Ok(WatchEvent { resource: r, namespace, resource_version, kind: k, object }) => {
                                if r != resource || resource_version <= last || !filter.matches(&namespace, &object) {
                                    continue;
                                }
                                last = resource_version;
                                let type_ = match k { EventType::Added => "ADDED", EventType::Modified => "MODIFIED", EventType::Deleted => "DELETED" };
                                return Some((line(type_, object), (rx, last, drops)));
                            }
                            // Fell behind or the store went away: end the watch; the client re-lists.
                            Err(_) => return None,
                        }
                    }
                }
            }
        },
    );
    let stream = futures::stream::iter(head)
        .chain(live)
        .map(Ok::<_, std::convert::Infallible>);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Every served (group, version), core ("") included, in order.
fn group_versions(store: &Store) -> Vec<(String, String)> {
    let mut gvs: Vec<(String, String)> = store
        .resources()
        .into_iter()
        .map(|(id, _)| (id.group, id.version))
        .collect();
    gvs.sort();
    gvs.dedup();
    gvs
}

fn openapi_document(sim: &Sim, group: &str, version: &str) -> Value {
    crate::openapi::document(group, version, &sim.store.resources(), |id| {
        sim.custom(id).and_then(|c| c.schema.map(|s| (*s).clone()))
    })
}

fn group_list(store: &Store) -> Value {
    let groups: Vec<Value> = group_versions(store)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The media type of aggregated discovery (`apidiscovery.k8s.io/v2`).
const AGGREGATED_DISCOVERY: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|t| {
                let t = t.replace(' ', "");
                t.contains("g=apidiscovery.k8s.io")
                    && t.contains("v=v2;")
                    && t.contains("as=APIGroupDiscoveryList")
            })
        })
}

/// Every group (core only for `/api`, the named groups for `/apis`) with its
/// versions and resources, as `kubectl` asks for first.
fn aggregated_discovery(sim: &Sim, core: bool) -> Value {
    let verbs = json!([
        "create", "delete", "get", "list", "patch", "update", "watch"
    ]);
    let items: Vec<Value> = group_versions(&sim.store)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .fold(Vec::<(String, Vec<String>)>::new(), |mut acc, (g, v)| {
            match acc.iter_mut().find(|(name, _)| *name == g) {
                Some((_, versions)) => versions.push(v),
                None => acc.push((g, vec![v])),
            }
            acc
        })
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| {
                    let resources: Vec<Value> = sim
                        .store
                        .resources()
                        .into_iter()
                        .filter(|(id, _)| id.group == group && id.version == *version)
                        .map(|(id, info)| {
                            let kind = json!({"group": group, "version": version, "kind": info.kind});
                            let mut subresources = Vec::new();
                            if info.status_subresource {
                                subresources.push(json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}));
                            }
                            if sim.custom(&id).and_then(|c| c.scale).is_some() {
                                subresources.push(json!({"subresource": "scale",
                                    "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                                    "verbs": ["get", "patch", "update"]}));
                            }
                            json!({"resource": id.plural, "responseKind": kind,
                                   "scope": if info.namespaced { "Namespaced" } else { "Cluster" },
                                   "singularResource": info.kind.to_lowercase(), "verbs": verbs,
                                   "shortNames": info.short_names, "subresources": subresources})
                        })
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn resource_list(sim: &Sim, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = sim
        .store
        .resources()
        .into_iter()
        .filter(|(id, _)| id.group == group && id.version == version)
        .flat_map(|(id, info)| {
            let main = json!({"name": id.plural, "singularName": info.kind.to_lowercase(), "namespaced": info.namespaced, "kind": info.kind,
                "shortNames": info.short_names, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]});
            let status = info.status_subresource.then(|| {
                json!({"name": format!("{}/status", id.plural), "singularName": "", "namespaced": info.namespaced, "kind": info.kind, "verbs": ["get", "patch", "update"]})
            });
            let scale = sim.custom(&id).and_then(|c| c.scale).map(|_| {
                json!({"name": format!("{}/scale", id.plural), "singularName": "", "namespaced": info.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
            });
            std::iter::once(main).chain(status).chain(scale)
        })
        .collect();
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
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
