//! Applying a plugin's patch to a rendered LeaderWorkerSet (pure).
//!
//! Plugins shape pod templates; they do not own the child's identity or its
//! place in the rollout. A patch may change the leader and worker pod
//! templates and the child's own labels and annotations, and nothing else.
//! A patch that changes anything more — names, namespace, owner references,
//! finalizers, uid or resourceVersion, `spec.replicas` or any other spec
//! field, a system label (on the child or its pods), the `initial-replicas`
//! annotation, or a placement affinity term the set asked for — is refused
//! with the field it touched, so the plugin's author learns of it instead of
//! the change silently vanishing. The result is bounded in size, so chained
//! `copy` operations cannot amplify a small patch into a huge object.

use disagg_api::keys;
use disagg_api::lws::LeaderWorkerSet;
use serde_json::{Map, Value};

/// A patch to an LWS, as a plugin returned it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LwsPatch {
    None,
    /// RFC 7386 merge patch.
    Merge(Value),
    /// RFC 6902 JSON patch.
    Json(Value),
}

/// The largest patched object accepted: the API server refuses a request
/// body over 1.5 MiB anyway.
pub const MAX_PATCHED_BYTES: usize = 3 << 19;

/// Pod template paths a patch may change, under `spec.leaderWorkerTemplate`.
const POD_TEMPLATES: [&str; 2] = ["workerTemplate", "leaderTemplate"];

/// Applies `patch` to `lws`. The error says why the patch is unusable.
pub fn apply(lws: &LeaderWorkerSet, patch: &LwsPatch) -> Result<LeaderWorkerSet, String> {
    let rendered = serde_json::to_value(lws).map_err(|e| e.to_string())?;
    let mut doc = rendered.clone();
    match patch {
        LwsPatch::None => return Ok(lws.clone()),
        LwsPatch::Merge(p) => {
            if !p.is_object() {
                return Err("a merge patch must be a JSON object".into());
            }
            // A merge patch's result is at most the object plus the patch.
            json_patch::merge(&mut doc, p);
        }
        LwsPatch::Json(p) => {
            let ops: json_patch::Patch = serde_json::from_value(p.clone())
                .map_err(|e| format!("not an RFC 6902 JSON patch: {e}"))?;
            apply_bounded(&mut doc, &ops, json_size(&rendered) + json_size(p))?;
        }
    }
    if json_size(&doc) > MAX_PATCHED_BYTES {
        return Err(too_large());
    }
    check_changes(&rendered, &doc)?;
    serde_json::from_value(doc)
        .map_err(|e| format!("the patched object is not a valid LeaderWorkerSet: {e}"))
}

fn too_large() -> String {
    format!(
        "the patched LeaderWorkerSet would be larger than {} KiB",
        MAX_PATCHED_BYTES >> 10
    )
}

/// Applies JSON patch operations one at a time, refusing before a `copy`
/// would take the object past the size limit (adds and replaces carry their
/// value in the patch, so only copies can grow it beyond `start`).
fn apply_bounded(doc: &mut Value, ops: &json_patch::Patch, start: usize) -> Result<(), String> {
    let mut bound = start;
    for op in &ops.0 {
        if let json_patch::PatchOperation::Copy(copy) = op {
            let copied = doc
                .pointer(copy.from.as_str())
                .map(json_size)
                .unwrap_or_default();
            bound = bound.saturating_add(copied);
            if bound > MAX_PATCHED_BYTES {
                return Err(too_large());
            }
        }
        json_patch::patch(doc, std::slice::from_ref(op))
            .map_err(|e| format!("JSON patch does not apply: {e}"))?;
    }
    Ok(())
}

/// Refuses every change outside the pod templates and the child's own
/// labels and annotations, naming the first field it finds changed.
fn check_changes(rendered: &Value, patched: &Value) -> Result<(), String> {
    let refuse = |field: &str, what: &str| {
        Err(format!(
            "the patch changes {field}, which {what}; a plugin may change only the pod templates and the child's own labels and annotations"
        ))
    };
    let empty = Map::new();
    let obj = |v: &Value| v.as_object().cloned().unwrap_or_default();
    let (before, after) = (obj(rendered), obj(patched));
    for key in keys_of(&before, &after) {
        let (b, a) = (before.get(key), after.get(key));
        match key {
            "metadata" => check_metadata(
                b.and_then(Value::as_object).unwrap_or(&empty),
                a.and_then(Value::as_object).unwrap_or(&empty),
            )?,
            "spec" => check_spec(
                b.and_then(Value::as_object).unwrap_or(&empty),
                a.and_then(Value::as_object).unwrap_or(&empty),
            )?,
            _ if b != a => return refuse(key, "the operator owns"),
            _ => {}
        }
    }
    Ok(())
}

fn check_metadata(before: &Map<String, Value>, after: &Map<String, Value>) -> Result<(), String> {
    for key in keys_of(before, after) {
        let (b, a) = (before.get(key), after.get(key));
        match key {
            "labels" => check_reserved(
                "metadata.labels",
                b,
                a,
                is_system_label,
                "is a system label",
            )?,
            "annotations" => check_reserved(
                "metadata.annotations",
                b,
                a,
                |k| k == keys::INITIAL_REPLICAS,
                "records the rollout's starting point",
            )?,
            _ if b != a => {
                return Err(format!(
                    "the patch changes metadata.{key}, which the operator owns (the child's identity and ownership); a plugin may change only the pod templates and the child's own labels and annotations"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Keys of a label or annotation map that `reserved` picks must be unchanged.
fn check_reserved(
    at: &str,
    before: Option<&Value>,
    after: Option<&Value>,
    reserved: impl Fn(&str) -> bool,
    why: &str,
) -> Result<(), String> {
    let empty = Map::new();
    let before = before.and_then(Value::as_object).unwrap_or(&empty);
    let after = after.and_then(Value::as_object).unwrap_or(&empty);
    for key in keys_of(before, after) {
        if reserved(key) && before.get(key) != after.get(key) {
            return Err(format!(
                "the patch changes {at}[{key:?}], which {why}; a plugin may not change it"
            ));
        }
    }
    Ok(())
}

fn check_spec(before: &Map<String, Value>, after: &Map<String, Value>) -> Result<(), String> {
    let owned = |field: &str| {
        Err(format!(
            "the patch changes spec.{field}, which comes from the set (replicas from the rollout); a plugin may change only the pod templates and the child's own labels and annotations"
        ))
    };
    let empty = Map::new();
    for key in keys_of(before, after) {
        let (b, a) = (before.get(key), after.get(key));
        if key != "leaderWorkerTemplate" {
            if b != a {
                return owned(key);
            }
            continue;
        }
        let b = b.and_then(Value::as_object).unwrap_or(&empty);
        let a = a.and_then(Value::as_object).unwrap_or(&empty);
        for field in keys_of(b, a) {
            let (tb, ta) = (b.get(field), a.get(field));
            if POD_TEMPLATES.contains(&field) {
                check_pod_template(&format!("spec.leaderWorkerTemplate.{field}"), tb, ta)?;
            } else if tb != ta {
                return owned(&format!("leaderWorkerTemplate.{field}"));
            }
        }
    }
    Ok(())
}

/// A pod template keeps its system labels and every required placement
/// affinity term it was rendered with; the rest is the plugin's to shape.
fn check_pod_template(
    at: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<(), String> {
    let null = Value::Null;
    let (before, after) = (before.unwrap_or(&null), after.unwrap_or(&null));
    check_reserved(
        &format!("{at}.metadata.labels"),
        before.pointer("/metadata/labels"),
        after.pointer("/metadata/labels"),
        is_system_label,
        "is a system label",
    )?;
    for kind in ["podAffinity", "podAntiAffinity"] {
        let path = format!("/spec/affinity/{kind}/requiredDuringSchedulingIgnoredDuringExecution");
        let kept = after.pointer(&path).and_then(Value::as_array);
        for term in before
            .pointer(&path)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if is_placement_term(term) && !kept.is_some_and(|k| k.contains(term)) {
                return Err(format!(
                    "the patch removes a {kind} term of the set's placementPolicy from {at}; a plugin may add affinity but not remove the placement the set asked for"
                ));
            }
        }
    }
    Ok(())
}

/// Placement terms select on the set's own labels.
fn is_placement_term(term: &Value) -> bool {
    let selector = &term["labelSelector"];
    selector["matchLabels"].get(keys::NAME).is_some()
        || selector["matchExpressions"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x["key"] == keys::NAME))
}

fn keys_of<'a>(a: &'a Map<String, Value>, b: &'a Map<String, Value>) -> Vec<&'a str> {
    let mut keys: Vec<&str> = a.keys().chain(b.keys()).map(String::as_str).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn is_system_label(key: &str) -> bool {
    [keys::NAME, keys::ROLE, keys::SLICE, keys::REVISION].contains(&key)
}

/// The length of a value's JSON text, without building it.
fn json_size(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, v).expect("a JSON value serialises");
    count.0
}
