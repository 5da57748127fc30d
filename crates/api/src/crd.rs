//! The CRDs we own, generated from the Rust types. `disagg crds` prints them;
//! `deploy/crds/` holds the committed copy and CI checks the two agree.

use super::scaler::DisaggregatedSetRoleScaler;
use super::set::DisaggregatedSet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Our CRDs, in install order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        with_upstream_shape(DisaggregatedSet::crd()),
        with_upstream_shape(DisaggregatedSetRoleScaler::crd()),
    ]
}

/// Small differences between what schemars derives and upstream's schema,
/// mended so that our CRD accepts and defaults exactly what upstream's does:
/// - the root declares `apiVersion`, `kind` and `metadata`, as controller-gen does;
/// - a role's `spec` is optional upstream (the operator reports a role without
///   a pod template as invalid instead), and its Rust default is not a schema default;
/// - a scaler's `spec` is optional upstream (the operator always writes one).
fn with_upstream_shape(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let Some(version) = crd.spec.versions.first_mut() else {
        return crd;
    };
    let Some(schema) = version
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
    else {
        return crd;
    };
    let mut value = serde_json::to_value(&*schema).expect("a schema serialises to JSON");
    value["properties"]["apiVersion"] = serde_json::json!({"type": "string"});
    value["properties"]["kind"] = serde_json::json!({"type": "string"});
    value["properties"]["metadata"] = serde_json::json!({"type": "object"});
    if crd.spec.names.kind == "DisaggregatedSetRoleScaler"
        && let Some(o) = value.as_object_mut()
    {
        o.remove("required");
    }
    if let Some(role) = value
        .pointer_mut("/properties/spec/properties/roles/items")
        .and_then(serde_json::Value::as_object_mut)
    {
        if let Some(required) = role
            .get_mut("required")
            .and_then(serde_json::Value::as_array_mut)
        {
            required.retain(|r| r != "spec");
        }
        if let Some(spec) = role
            .get_mut("properties")
            .and_then(|p| p.get_mut("spec"))
            .and_then(serde_json::Value::as_object_mut)
        {
            spec.remove("default");
        }
    }
    *schema = serde_json::from_value(value).expect("the mended schema is still a schema");
    crd
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd).expect("a CRD serialises to YAML"));
    }
    out
}

/// The `openAPIV3Schema` of the DisaggregatedSet CRD we ship, built once.
pub fn set_schema() -> &'static serde_json::Value {
    static SCHEMA: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = crds()
            .into_iter()
            .find(|c| c.spec.names.kind == "DisaggregatedSet")
            .expect("we ship a DisaggregatedSet CRD");
        schema_of(&crd)
    })
}

/// The `openAPIV3Schema` of a CRD's first version, as JSON.
pub fn schema_of(crd: &CustomResourceDefinition) -> serde_json::Value {
    let version = crd.spec.versions.first().expect("a CRD has a version");
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a generated CRD has a schema");
    serde_json::to_value(schema).expect("a schema serialises to JSON")
}
