//! The verbs on one object or collection: get, list, create, update, patch
//! (merge, JSON, server-side apply), delete, and the status and scale subresources.

use super::*;

/// A response, and the object as written (for side effects such as CRD registration).
pub(super) type Served = (Response, Option<Value>);

pub(super) async fn serve(
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
        .then(|| {
            // Built-in kinds print as kubectl shows them where it matters (Events).
            let builtin = (t.resource == events::stored()).then(crate::table::event_columns);
            crate::table::Columns::new(
                custom
                    .as_ref()
                    .and_then(|c| c.columns.as_ref())
                    .or(builtin.as_ref()),
            )
        });
    let parse_body = || -> Result<Value, StoreError> {
        serde_json::from_slice(body).map_err(|e| bad_request(format!("the body is not JSON: {e}")))
    };
    match (method.clone(), t.name.as_deref()) {
        (Method::GET, None) => {
            let filter = Filter {
                namespace: t.namespace.clone(),
                labels: Selector::parse(query.get("labelSelector").map_or("", String::as_str))
                    .map_err(bad_request)?,
                fields: Filter::parse_fields_of(
                    &t.resource,
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
            if let Some(n) = page.remaining {
                meta["remainingItemCount"] = json!(n);
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
pub(super) fn field_manager(query: &HashMap<String, String>, headers: &HeaderMap) -> String {
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
pub(super) fn parse_applied(
    body: &Bytes,
    t: &Target,
    info: &ResourceInfo,
    name: &str,
) -> Result<Value, StoreError> {
    // Clients send JSON (kube-rs, client-go, kubectl), which the YAML
    // parser reads too, at several times the cost; YAML is the fallback.
    let applied: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => serde_yaml_ng::from_slice(body)
            .map_err(|e| bad_request(format!("the apply body is not YAML or JSON: {e}")))?,
    };
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
pub(super) fn guaranteed_update(
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
pub(super) fn apply_patch(
    doc: &mut Value,
    content_type: &str,
    patch: Value,
) -> Result<(), StoreError> {
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
pub(super) fn pointer(json_path: &str) -> String {
    json_path
        .trim_start_matches('.')
        .split('.')
        .fold(String::new(), |acc, part| format!("{acc}/{part}"))
}

/// The scale subresource: an `autoscaling/v1` Scale view of the object's replica paths.
#[allow(clippy::too_many_arguments)]
pub(super) fn serve_scale(
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
        scope: fields::Scope::Scale,
    };
    fields::record_update(Some(&current), &mut next, &writer);
    let updated = store.update(resource, ns, name, next, false)?;
    Ok((json_response(StatusCode::OK, &view(&updated)), None))
}

/// Sets the value at a JSON pointer, creating objects on the way.
pub(super) fn set_pointer(doc: &mut Value, pointer: &str, value: Value) {
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
