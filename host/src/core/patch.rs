//! Applying a plugin's patch to a rendered LeaderWorkerSet (pure).
//!
//! Plugins shape templates; they do not own the child's identity. After the
//! patch, the name, namespace, ownerReferences, `spec.replicas` and the system
//! labels are put back as rendered, so a plugin can neither rename, re-own,
//! rescale nor relabel a child out of its set.

use crate::api::keys;
use crate::api::lws::LeaderWorkerSet;
use serde_json::Value;

/// A patch to an LWS, as a plugin returned it.
#[derive(Clone, Debug, PartialEq)]
pub enum LwsPatch {
    None,
    /// RFC 7386 merge patch.
    Merge(Value),
    /// RFC 6902 JSON patch.
    Json(Value),
}

/// Applies `patch` to `lws`. The error says why the patch is unusable.
pub fn apply(lws: &LeaderWorkerSet, patch: &LwsPatch) -> Result<LeaderWorkerSet, String> {
    let mut doc = serde_json::to_value(lws).map_err(|e| e.to_string())?;
    match patch {
        LwsPatch::None => return Ok(lws.clone()),
        LwsPatch::Merge(p) => {
            if !p.is_object() {
                return Err("a merge patch must be a JSON object".into());
            }
            json_patch::merge(&mut doc, p);
        }
        LwsPatch::Json(p) => {
            let ops: json_patch::Patch = serde_json::from_value(p.clone())
                .map_err(|e| format!("not an RFC 6902 JSON patch: {e}"))?;
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| format!("JSON patch does not apply: {e}"))?;
        }
    }
    let mut patched: LeaderWorkerSet = serde_json::from_value(doc)
        .map_err(|e| format!("the patched object is not a valid LeaderWorkerSet: {e}"))?;
    restore_identity(lws, &mut patched);
    Ok(patched)
}

fn restore_identity(rendered: &LeaderWorkerSet, patched: &mut LeaderWorkerSet) {
    let m = &rendered.metadata;
    patched.metadata.name.clone_from(&m.name);
    patched.metadata.namespace.clone_from(&m.namespace);
    patched
        .metadata
        .owner_references
        .clone_from(&m.owner_references);
    patched.spec.replicas = rendered.spec.replicas;
    let system: Vec<(String, String)> = m
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| is_system_label(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    patched
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .extend(system.iter().cloned());
    let t = &mut patched.spec.leader_worker_template;
    for pod in std::iter::once(&mut t.worker_template.0)
        .chain(t.leader_template.as_mut().map(|p| &mut p.0))
    {
        let meta = pod
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if !meta.is_object() {
            *meta = Value::Object(Default::default());
        }
        let labels = meta
            .as_object_mut()
            .expect("just made an object")
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if !labels.is_object() {
            *labels = Value::Object(Default::default());
        }
        let labels = labels.as_object_mut().expect("just made an object");
        for (k, v) in &system {
            labels.insert(k.clone(), Value::String(v.clone()));
        }
    }
}

fn is_system_label(key: &str) -> bool {
    [keys::NAME, keys::ROLE, keys::SLICE, keys::REVISION].contains(&key)
}
