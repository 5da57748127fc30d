//! `DisaggregatedSet` v1: the upstream-compatible part (`docs/api.md`) and our
//! extensions (§3.2).

use super::lws::LeaderWorkerSetSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A disaggregated inference deployment: roles (prefill, decode, encode, …)
/// that each become LeaderWorkerSets and roll out together.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "disaggregatedset.x-k8s.io",
    version = "v1",
    kind = "DisaggregatedSet",
    namespaced,
    status = "DisaggregatedSetStatus",
    derive = "PartialEq",
    doc = "DisaggregatedSet runs prefill, decode and optionally encode roles as separately scaled LeaderWorkerSets and rolls template changes out across all roles together.",
    printcolumn = r#"{"name": "Roles", "type": "string", "jsonPath": ".status.rolesReady", "description": "per role: ready groups over every revision / the groups the role asks for (mid-rollout, ready can exceed it by the surge)"}"#,
    printcolumn = r#"{"name": "Revision", "type": "string", "jsonPath": ".status.updateRevision"}"#,
    printcolumn = r#"{"name": "Available", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": PAUSED_RULE,
    "message": "replicas must be zero for all non-External roles or non-zero for all non-External roles",
}]))]
pub struct DisaggregatedSetSpec {
    /// The roles, 2 to 10, with unique names. Role order matters: it is part of the revision.
    #[schemars(length(min = 2, max = 10))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub roles: Vec<Role>,
    /// Independent copies of the whole role topology; `roles[].spec.replicas` is per slice.
    #[serde(default = "default_slices")]
    #[schemars(range(min = 1, max = 100))]
    pub slices: i32,
    /// How a slice's roles are co-located and slices spread across topology domains.
    /// Applied when a LeaderWorkerSet is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_policy: Option<PlacementPolicy>,
    /// Plugin bindings, applied in list order (extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub plugins: Vec<PluginBinding>,
    /// A rollout step that makes no progress for this long sets `Degraded` (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i32>,
}

/// The CEL rule for paused sets, also enforced by `validate`.
pub const PAUSED_RULE: &str = "self.roles.filter(r, !has(r.scaling) || r.scaling.mode != 'External').all(r, !has(r.spec.replicas) || r.spec.replicas == 0) || self.roles.filter(r, !has(r.scaling) || r.scaling.mode != 'External').all(r, has(r.spec.replicas) && r.spec.replicas > 0)";

fn default_slices() -> i32 {
    1
}

/// One role of the set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    /// Unique name of the role, a DNS label.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The LeaderWorkerSet spec for this role; `replicas` is per slice.
    /// Optional in the schema, as upstream; a role without a pod template is invalid.
    #[serde(default)]
    pub spec: LeaderWorkerSetSpec,
    /// Labels and annotations copied onto the role's LeaderWorkerSets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RoleMetadata>,
    /// Where replicas come from. Omit for Static.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<RoleScaling>,
    /// Roles whose groups of the same revision and slice must be ready before
    /// this role's are created (extension; upstream has no such field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub start_after: Vec<String>,
}

impl Role {
    pub fn is_external(&self) -> bool {
        matches!(
            self.scaling,
            Some(RoleScaling {
                mode: ScalingMode::External
            })
        )
    }
}

/// Metadata for the role's LeaderWorkerSets. Only `labels` and `annotations`
/// are used; the other fields are accepted for upstream compatibility.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Accepted for upstream compatibility; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Accepted for upstream compatibility; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Accepted for upstream compatibility; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalizers: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoleScaling {
    /// `Static` (replicas from the spec) or `External` (from a DisaggregatedSetRoleScaler).
    #[serde(default)]
    pub mode: ScalingMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ScalingMode {
    #[default]
    Static,
    External,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlacementPolicy {
    /// The placement guarantee.
    #[serde(default, rename = "type")]
    pub type_: PlacementType,
    /// Node-label key that defines a domain. Required unless `type` is None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PlacementType {
    #[default]
    None,
    /// A slice's roles share one topology domain, and no two slices share one.
    ExclusiveSlice,
    /// Each slice gets a topology domain to itself; its roles share it.
    ExclusiveTopology,
}

/// A plugin bound to this set (extension, `docs/api.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginBinding {
    /// The plugin's name: its ConfigMap's name in the operator's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Free-form configuration passed to the plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub config: Option<Map<String, Value>>,
    /// Roles the plugin applies to; all roles when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// What a plugin failure does: Fail stops changes to the role, Ignore skips the plugin.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Only ever run the component with this digest (`sha256:<64 hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub digest: Option<String>,
    /// Live metrics the plugin decides on: PromQL queries the operator
    /// evaluates against its Prometheus and passes in gate and scale
    /// requests (contract 0.2.0). `{{set}}`, `{{namespace}}`, `{{slice}}`,
    /// `{{role}}`, `{{revision}}` and `{{oldRevision}}` are replaced with
    /// the values of the request; a query naming `{{role}}` is evaluated once
    /// per role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub signals: Vec<SignalQuery>,
}

/// A named PromQL query (`spec.plugins[].signals[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalQuery {
    /// The name the plugin knows it by.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// PromQL, with placeholders.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailurePolicy {
    #[default]
    Fail,
    Ignore,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Observed state of a set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisaggregatedSetStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Per-role replica counts, in spec order, summed over slices and revisions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub role_statuses: Vec<RoleStatus>,
    /// Available, Progressing, and the extensions Degraded, RolloutHeld, PluginsReady, Valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The revision the oldest remaining children run (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision the spec asks for (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// The rollout in progress, if any (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Plugins in use (extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginStatus>,
    /// `role ready/desired` for every role, for `kubectl get` (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_ready: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    pub name: String,
    /// Groups of this role, over all slices and revisions.
    #[serde(default)]
    pub replicas: i32,
    /// Ready groups of this role, over all slices and revisions.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Groups of this role at the target revision.
    #[serde(default)]
    pub updated_replicas: i32,
    /// The role's target replicas per slice (after scaling hooks) (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// When `desiredReplicas` last changed (extension): scaling plugins' cool-down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Where the new revision stands on the planner's schedule: step `step` of
    /// `totalSteps`, measured by the slowest role (the furthest-behind slice).
    pub step: i32,
    pub total_steps: i32,
    /// Per-role old/new replicas now (summed over slices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleRollout>,
    /// The gate that holds the rollout, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// Why it is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_reason: Option<String>,
    /// When the per-role numbers last changed; drives `Degraded` after `progressDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleRollout {
    pub name: String,
    pub old: i32,
    pub new: i32,
    pub target: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    pub name: String,
    /// The digest of the component in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
