//! Client-side `LeaderWorkerSet` v1 types (leaderworkerset.x-k8s.io), spec and
//! status. In a cluster the LWS project installs its CRD; the CRD derived
//! from these types (schema, status and scale subresources, as upstream's)
//! is what `disagg dev` serves, so `kubectl scale lws` works there too.

use super::fragments::{PodTemplate, VolumeClaimTemplate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The spec of a LeaderWorkerSet. Also the `spec` of every DisaggregatedSet role.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "leaderworkerset.x-k8s.io",
    version = "v1",
    kind = "LeaderWorkerSet",
    namespaced,
    status = "LeaderWorkerSetStatus",
    shortname = "lws",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.hpaPodSelector"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LeaderWorkerSetSpec {
    /// Number of leader-worker groups. For a DisaggregatedSet role this is per slice.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub replicas: i32,
    /// The template for leader and worker pods of each group.
    pub leader_worker_template: LeaderWorkerTemplate,
    /// How template changes roll out. For a DisaggregatedSet role the operator
    /// uses `maxSurge`/`maxUnavailable` for the coordinated rollout; `partition` must be 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_strategy: Option<RolloutStrategy>,
    /// When worker pods are created: with the leader (LeaderCreated) or once it is ready (LeaderReady).
    #[serde(default)]
    pub startup_policy: StartupPolicy,
    /// Headless-service subdomain policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<NetworkConfig>,
}

/// Leader and worker pod templates of one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaderWorkerTemplate {
    /// The pod template for leader pods. When absent, the leader uses the worker template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_template: Option<PodTemplate>,
    /// The pod template for worker pods.
    pub worker_template: PodTemplate,
    /// Pods per group, leader included.
    #[serde(default = "one")]
    pub size: i32,
    /// What happens to a group when one of its pods restarts.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// How each group is split into subgroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_group_policy: Option<SubGroupPolicy>,
    /// Claims that pods may reference; one PVC per pod is created from each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim_templates: Option<Vec<VolumeClaimTemplate>>,
    /// What happens to PVCs created from `volumeClaimTemplates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_retention_policy: Option<PvcRetentionPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    /// Deprecated upstream; same as `None`.
    Default,
    #[default]
    RecreateGroupOnPodRestart,
    RecreateGroupAfterStart,
    None,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StartupPolicy {
    #[default]
    LeaderCreated,
    LeaderReady,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubGroupPolicy {
    /// What type of subgroups to create.
    #[serde(default)]
    pub sub_group_policy_type: SubGroupPolicyType,
    /// Pods per subgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_group_size: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SubGroupPolicyType {
    #[default]
    LeaderWorker,
    LeaderExcluded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcRetentionPolicy {
    /// `Retain` (default) or `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_deleted: Option<String>,
    /// `Retain` (default) or `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_scaled: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// Only `RollingUpdate` exists.
    #[serde(default, rename = "type")]
    pub type_: RolloutStrategyType,
    /// Surge and unavailability budgets for the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update_configuration: Option<RollingUpdateConfiguration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RolloutStrategyType {
    #[default]
    RollingUpdate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdateConfiguration {
    /// Must be 0 for DisaggregatedSet roles.
    #[serde(default)]
    pub partition: i32,
    /// Groups that may be unavailable during the rollout: a number or a percentage of the target.
    #[serde(default = "int_or_string_one")]
    pub max_unavailable: IntOrString,
    /// Groups that may be created above the target: a number or a percentage of the target.
    #[serde(default = "int_or_string_zero")]
    pub max_surge: IntOrString,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    pub subdomain_policy: SubdomainPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SubdomainPolicy {
    Shared,
    UniquePerReplica,
}

/// The status the LWS controller reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaderWorkerSetStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Groups whose pods are all ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Groups at the LWS's own latest template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Groups that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Selector for HPA, over leader pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa_pod_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// Defaults equal to the schema's, so a spec built by `Default` (a role that
// omits `spec`) looks like one the API server defaulted.
impl Default for LeaderWorkerSetSpec {
    fn default() -> Self {
        LeaderWorkerSetSpec {
            replicas: one(),
            leader_worker_template: LeaderWorkerTemplate::default(),
            rollout_strategy: None,
            startup_policy: StartupPolicy::default(),
            network_config: None,
        }
    }
}

impl Default for LeaderWorkerTemplate {
    fn default() -> Self {
        LeaderWorkerTemplate {
            leader_template: None,
            worker_template: PodTemplate::default(),
            size: one(),
            restart_policy: RestartPolicy::default(),
            sub_group_policy: None,
            volume_claim_templates: None,
            persistent_volume_claim_retention_policy: None,
        }
    }
}

fn one() -> i32 {
    1
}
fn int_or_string_one() -> IntOrString {
    IntOrString::Int(1)
}
fn int_or_string_zero() -> IntOrString {
    IntOrString::Int(0)
}
