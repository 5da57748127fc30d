//! The plugin contract as the decide step sees it: host-side types for every
//! hook's request and answer, and the two traits the decide step calls
//! through. `disagg-plugin` implements them over WebAssembly components
//! (mapping these types to and from the WIT types of each contract version it
//! serves); tests implement them with plain closures. Nothing here knows
//! about WIT, wasmtime or the API server.
//!
//! The contract itself is `wit/plugin.wit`; `docs/plugins.md` explains it.

mod error;

pub use crate::patch::LwsPatch;
pub use disagg_api::validate::Violation;
pub use error::PluginError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// A hook of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    PatchRole,
    ScaleRole,
    GateStep,
    Validate,
}

impl Hook {
    /// The hook's name in the contract, as status, Events and metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            Hook::PatchRole => "patch-role",
            Hook::ScaleRole => "scale-role",
            Hook::GateStep => "gate-step",
            Hook::Validate => "validate",
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a plugin says about itself (`describe`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub hooks: Vec<Hook>,
}

/// `patch-role`: a rendered child, to patch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PatchRequest {
    /// The set, as JSON.
    pub set: String,
    pub role: String,
    pub slice: u32,
    pub revision: String,
    /// The rendered LeaderWorkerSet, as JSON.
    pub lws: String,
    /// The binding's `config`, as JSON (`{}` when absent).
    pub config: String,
}

/// A role's replicas as `scale-role` sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleReplicas {
    pub name: String,
    /// What the set (and earlier scaling plugins) ask for, per slice.
    pub desired: i32,
    /// `status.replicas` over the role's children.
    pub observed: i32,
    pub ready: i32,
}

/// One labelled value of a signal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A binding's signal as evaluated for one request (`wit/plugin.wit`,
/// `signal`): samples, or why there are none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signal {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default)]
    pub evaluated_at_ms: u64,
    #[serde(default)]
    pub samples: Vec<Sample>,
    /// Set when there are no samples because evaluation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `scale-role`: one role's replicas, to advise on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleRequest {
    /// The set, as JSON.
    pub set: String,
    pub roles: Vec<RoleReplicas>,
    /// The role advised on.
    pub role: String,
    pub config: String,
    /// The binding's signals, evaluated for this role (0.2.0).
    #[serde(default)]
    pub signals: Vec<Signal>,
    /// When the role's desired replicas last changed, if known.
    #[serde(default)]
    pub last_scaled_ms: Option<u64>,
    #[serde(default)]
    pub now_ms: u64,
}

/// A scaling plugin's proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleAdvice {
    pub replicas: i32,
    pub reason: String,
}

/// A role's part of a rollout step, as `gate-step` sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleStep {
    pub name: String,
    pub old_now: i32,
    pub old_next: i32,
    pub new_now: i32,
    pub new_next: i32,
    pub target: i32,
    /// Every new-revision child of the role in this slice is ready.
    pub ready: bool,
}

/// `gate-step`: the step a slice is about to take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateRequest {
    pub set_name: String,
    pub namespace: String,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub revision: String,
    /// The oldest revision left in the slice (0.2.0).
    #[serde(default)]
    pub old_revision: String,
    pub slice: u32,
    /// 1-based.
    pub step: u32,
    pub total_steps: u32,
    pub roles: Vec<RoleStep>,
    /// Since the rollout last made progress.
    pub held_for_ms: u64,
    pub now_ms: u64,
    pub config: String,
    /// The binding's signals, evaluated for this slice (0.2.0).
    #[serde(default)]
    pub signals: Vec<Signal>,
}

/// A gate's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum GateDecision {
    Proceed,
    Hold {
        reason: String,
        recheck_after_ms: u64,
    },
    /// Roll back (0.2.0): the rollout is aborted with this reason.
    Abort {
        reason: String,
    },
}

/// `validate`: a set, to check against the plugin's rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidateRequest {
    pub set: String,
    pub config: String,
}

/// One loaded plugin. Every call is independent (the host runs each on a
/// fresh sandbox), may block for up to the host's deadline, and fails with a
/// [`PluginError`] that names the plugin.
pub trait Plugin: Send + Sync {
    /// `describe`'s answer.
    fn info(&self) -> &PluginInfo;
    /// `sha256:<hex>` of the component: what bindings pin and revisions hash.
    fn digest(&self) -> &str;
    fn patch_role(&self, request: &PatchRequest) -> Result<LwsPatch, PluginError>;
    fn scale_role(&self, request: &ScaleRequest) -> Result<Option<ScaleAdvice>, PluginError>;
    fn gate_step(&self, request: &GateRequest) -> Result<GateDecision, PluginError>;
    fn validate(&self, request: &ValidateRequest) -> Result<Vec<Violation>, PluginError>;

    fn implements(&self, hook: Hook) -> bool {
        self.info().hooks.contains(&hook)
    }
}

/// Where the decide step finds plugins, by the name bindings use.
pub trait Plugins {
    /// The component in use under `name`, if there is one.
    fn get(&self, name: &str) -> Option<Arc<dyn Plugin>>;
    /// How long a component of `name` has been compiling, if one is.
    fn loading_for(&self, _name: &str) -> Option<Duration> {
        None
    }
    /// Why the newest component of `name` was refused, if it was (the one
    /// [`Plugins::get`] returns, if any, is the last good one).
    fn refused(&self, _name: &str) -> Option<String> {
        None
    }
}

/// No plugins at all.
pub struct NoPlugins;

impl Plugins for NoPlugins {
    fn get(&self, _name: &str) -> Option<Arc<dyn Plugin>> {
        None
    }
}

/// Plugins by name, with nothing loading or refused (the CLI's, tests').
impl Plugins for std::collections::BTreeMap<String, Arc<dyn Plugin>> {
    fn get(&self, name: &str) -> Option<Arc<dyn Plugin>> {
        std::collections::BTreeMap::get(self, name).cloned()
    }
}
