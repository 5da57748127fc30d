//! Kubernetes protobuf request bodies: what kubectl sends for the built-in
//! kinds it builds itself (`kubectl create configmap|namespace|secret|
//! serviceaccount`). The envelope (`k8s\0` + `runtime.Unknown`) and the typed
//! messages are decoded with k8s-pb's generated types, then turned into the
//! JSON the store keeps. Answers are JSON: kubectl and client-go ask for
//! protobuf *or* JSON; a client that accepts protobuf only gets 406, as a
//! real server answers for a media type it cannot produce.

use super::*;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use std::collections::BTreeMap;

/// The media type of Kubernetes protobuf.
pub(super) const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// Every protobuf body starts with this.
const MAGIC: &[u8] = b"k8s\0";

/// Whether the request's `Accept` allows a JSON answer (no `Accept` does).
pub(super) fn json_acceptable(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    accept.split(',').any(|t| {
        let media = t.split(';').next().unwrap_or_default().trim();
        matches!(media, "" | "*/*" | "application/*" | "application/json")
    })
}

/// The body as JSON, or why it cannot be read.
pub(super) fn to_json(body: &[u8]) -> Result<Bytes, StoreError> {
    let bad = |why: String| bad_request(format!("the protobuf body cannot be decoded: {why}"));
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s protobuf prefix".into()))?;
    let unknown = Unknown::decode(envelope).map_err(|e| bad(e.to_string()))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let (api_version, kind) = (
        type_meta.api_version.unwrap_or_default(),
        type_meta.kind.unwrap_or_default(),
    );
    let raw = unknown.raw.unwrap_or_default();
    let raw = raw.as_slice();
    let decoded = |e: prost::DecodeError| bad(format!("{api_version} {kind}: {e}"));
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => {
            let cm = core::ConfigMap::decode(raw).map_err(decoded)?;
            json!({"metadata": metadata(cm.metadata), "immutable": cm.immutable,
                   "data": cm.data, "binaryData": base64_map(cm.binary_data)})
        }
        ("v1", "Secret") => {
            let s = core::Secret::decode(raw).map_err(decoded)?;
            json!({"metadata": metadata(s.metadata), "immutable": s.immutable, "type": s.r#type,
                   "data": base64_map(s.data), "stringData": s.string_data})
        }
        ("v1", "Namespace") => {
            let ns = core::Namespace::decode(raw).map_err(decoded)?;
            let finalizers = ns.spec.map(|s| s.finalizers).unwrap_or_default();
            json!({"metadata": metadata(ns.metadata), "spec": {"finalizers": finalizers}})
        }
        ("v1", "ServiceAccount") => {
            let sa = core::ServiceAccount::decode(raw).map_err(decoded)?;
            json!({"metadata": metadata(sa.metadata),
                   "automountServiceAccountToken": sa.automount_service_account_token})
        }
        _ => {
            return Err(StoreError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "protobuf bodies are read for ConfigMap, Secret, Namespace and ServiceAccount, not {api_version} {kind}; send JSON"
                ),
            ));
        }
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    strip_unset(&mut object);
    Ok(Bytes::from(object.to_string()))
}

/// The fields of `ObjectMeta` a client may set on create.
fn metadata(m: Option<meta::ObjectMeta>) -> Value {
    let m = m.unwrap_or_default();
    let owners: Vec<Value> = m
        .owner_references
        .into_iter()
        .map(|o| {
            json!({"apiVersion": o.api_version, "kind": o.kind, "name": o.name, "uid": o.uid,
                   "controller": o.controller, "blockOwnerDeletion": o.block_owner_deletion})
        })
        .collect();
    json!({
        "name": m.name, "generateName": m.generate_name, "namespace": m.namespace,
        "labels": m.labels, "annotations": m.annotations,
        "ownerReferences": owners, "finalizers": m.finalizers,
        "resourceVersion": m.resource_version,
    })
}

fn base64_map(map: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    use base64::Engine as _;
    map.into_iter()
        .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
        .collect()
}

/// Unset protobuf fields are absent in JSON, not null or empty: pruned at
/// the object's own levels (top, `metadata`, `spec`), never inside a map of
/// user data, where an empty value (`--from-literal=k=`, a label `""`) is data.
fn strip_unset(object: &mut Value) {
    fn prune(level: &mut Value) {
        if let Value::Object(o) = level {
            o.retain(|_, x| {
                !(x.is_null()
                    || x.as_object().is_some_and(|m| m.is_empty())
                    || x.as_array().is_some_and(|a| a.is_empty())
                    || x.as_str() == Some(""))
            });
        }
    }
    for level in ["metadata", "spec"] {
        if let Some(inner) = object.get_mut(level) {
            prune(inner);
        }
    }
    prune(object);
}
