//! `DisaggregatedSetRoleScaler` (`docs/api.md`): one per External role, with a
//! scale subresource so HPA/KEDA can drive that role.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "disaggregatedset.x-k8s.io",
    version = "v1",
    kind = "DisaggregatedSetRoleScaler",
    namespaced,
    status = "DisaggregatedSetRoleScalerStatus",
    derive = "PartialEq",
    shortname = "dsrs",
    doc = "DisaggregatedSetRoleScaler holds the desired replicas (per slice) of one External role of a DisaggregatedSet. The operator creates it; HPA, KEDA or kubectl scale drive it.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"}"#,
    printcolumn = r#"{"name": "Current", "type": "integer", "jsonPath": ".status.replicas"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DisaggregatedSetRoleScalerSpec {
    /// Desired groups of the role, per slice.
    // No maximum in the schema, as upstream's; the operator refuses more than
    // 1,000,000 on the set (`Valid=False`).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub replicas: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisaggregatedSetRoleScalerStatus {
    /// Groups of the role that exist, per slice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Label selector over the role's leader pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
