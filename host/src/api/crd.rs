//! The CRDs we own, generated from the Rust types. `disagg crds` prints them;
//! `deploy/crds/` holds the committed copy and CI checks the two agree.

use super::scaler::DisaggregatedSetRoleScaler;
use super::set::DisaggregatedSet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Our CRDs, in install order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![DisaggregatedSet::crd(), DisaggregatedSetRoleScaler::crd()]
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
