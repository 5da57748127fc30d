//! API types: `DisaggregatedSet`, `DisaggregatedSetRoleScaler`, and client-side
//! `LeaderWorkerSet`, plus the generated CRDs and operator-side validation.
//!
//! The bottom of the crate graph (see `docs/architecture.md`): it depends on
//! no other crate of the operator, and everything else depends on it.
//!
//! ```text
//! disagg-api ← disagg-core ← disagg-plugin ← disagg-controller ← disagg (CLI)
//! ```
#![forbid(unsafe_code)]

pub mod crd;
pub mod fragments;
pub mod lws;
pub mod scaler;
pub mod set;
/// Structural-schema checks, pruning and defaulting: the API server's rules,
/// shared with kube-sim.
pub use disagg_schema as structural;
pub mod validate;

/// Upper bounds on the numbers of a set, shared by the CRD schema, validation
/// and plugin advice, so that no arithmetic on them can overflow an `i32`.
pub mod limits {
    /// Replicas of one role per slice (upstream LWS caps replicas at 1,000,000).
    pub const MAX_REPLICAS: i32 = 1_000_000;
    /// Slices of one set.
    pub const MAX_SLICES: i32 = 100;
}

/// Label and annotation keys shared by the operator, routers and tools (upstream-compatible).
pub mod keys {
    /// The set a child belongs to.
    pub const NAME: &str = "disaggregatedset.x-k8s.io/name";
    /// The role a child serves.
    pub const ROLE: &str = "disaggregatedset.x-k8s.io/role";
    /// The slice index of a child.
    pub const SLICE: &str = "disaggregatedset.x-k8s.io/slice";
    /// The 8-hex-digit revision of a child.
    pub const REVISION: &str = "disaggregatedset.x-k8s.io/revision";
    /// Old replicas when the current rollout began, on old-revision children.
    pub const INITIAL_REPLICAS: &str = "disaggregatedset.x-k8s.io/initial-replicas";
    /// The role's target replicas the current rollout was planned for, on
    /// old-revision children (ours; upstream's children lack it). A target
    /// that differs rescales the rollout (`docs/planner.md`).
    pub const ROLLOUT_TARGET: &str = "disaggregatedset.x-k8s.io/rollout-target";
    /// Set by a user (or `kubectl disagg abort`): roll the set back to its
    /// stable revision. The value says who and why.
    pub const ABORT: &str = "disaggregatedset.x-k8s.io/abort";
    /// The revision an abort applies to; without it, whatever the spec names.
    pub const ABORT_REVISION: &str = "disaggregatedset.x-k8s.io/abort-revision";
    /// Set by a user (or `kubectl disagg pause`): take no rollout step. The
    /// value says who and why.
    pub const PAUSED: &str = "disaggregatedset.x-k8s.io/paused";
    /// A child's template fingerprint, in the operator's watch cache only
    /// (which drops the templates themselves); never written to the API.
    pub const TEMPLATE_FINGERPRINT: &str = "disaggregatedset.x-k8s.io/template-fingerprint";
    /// Marks a ConfigMap as a plugin.
    pub const PLUGIN: &str = "disaggregatedset.x-k8s.io/plugin";
    /// Manual approval of a rollout step, read by the rollout-gate plugin.
    pub const APPROVE_STEP: &str = "disaggregatedset.x-k8s.io/approve-step";
}

#[cfg(test)]
mod tests;
