//! Typed requests and responses, with JSON already parsed.

use crate::__private::wit;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A hook a plugin can implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    PatchRole,
    ScaleRole,
    GateStep,
    Validate,
}

impl Hook {
    pub(crate) fn to_wit(self) -> wit::Hook {
        match self {
            Hook::PatchRole => wit::Hook::PatchRole,
            Hook::ScaleRole => wit::Hook::ScaleRole,
            Hook::GateStep => wit::Hook::GateStep,
            Hook::Validate => wit::Hook::Validate,
        }
    }
}

fn parse(what: &str, text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("host sent invalid JSON for {what}: {e}"))
}

/// Deserialises a binding's `config` into your own type, with a message that says what is wrong.
fn config_as<T: DeserializeOwned>(config: &Value) -> Result<T, String> {
    serde_json::from_value(config.clone()).map_err(|e| format!("invalid config: {e}"))
}

/// Input of `patch-role`. The set and the LWS stay JSON text until asked
/// for: most plugins need only a little of them, and parsing is the costly part.
#[derive(Clone, Debug)]
pub struct PatchRequest {
    set_json: String,
    pub role: String,
    pub slice: u32,
    pub revision: String,
    lws_json: String,
    /// The binding's config (`{}` when absent).
    pub config: Value,
}

impl PatchRequest {
    pub(crate) fn from_wit(r: wit::PatchRequest) -> Result<Self, String> {
        Ok(PatchRequest {
            set_json: r.set,
            role: r.role,
            slice: r.slice,
            revision: r.revision,
            lws_json: r.lws,
            config: parse("config", &r.config)?,
        })
    }

    /// The config as your own type.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, String> {
        config_as(&self.config)
    }

    /// The rendered LeaderWorkerSet as JSON text (for [`crate::PodPatch::new`]).
    pub fn lws_json(&self) -> &str {
        &self.lws_json
    }

    /// The rendered LeaderWorkerSet, parsed.
    pub fn lws(&self) -> Result<Value, String> {
        parse("lws", &self.lws_json)
    }

    /// The whole DisaggregatedSet, parsed.
    pub fn set(&self) -> Result<Value, String> {
        parse("set", &self.set_json)
    }

    /// The set's name and namespace, read without parsing the rest.
    pub fn set_meta(&self) -> Result<(String, String), String> {
        #[derive(serde::Deserialize)]
        struct Obj {
            metadata: Meta,
        }
        #[derive(serde::Deserialize)]
        struct Meta {
            #[serde(default)]
            name: String,
            #[serde(default)]
            namespace: Option<String>,
        }
        let o: Obj = serde_json::from_str(&self.set_json)
            .map_err(|e| format!("host sent an invalid set: {e}"))?;
        Ok((
            o.metadata.name,
            o.metadata.namespace.unwrap_or_else(|| "default".into()),
        ))
    }
}

/// What `patch-role` returns.
#[derive(Clone, Debug, PartialEq)]
pub enum Patch {
    None,
    /// An RFC 7386 merge patch.
    Merge(Value),
    /// An RFC 6902 JSON patch (an array of operations).
    Json(Value),
}

impl Patch {
    pub(crate) fn into_wit(self) -> Result<wit::Patch, String> {
        Ok(match self {
            Patch::None => wit::Patch::None,
            Patch::Merge(v) => wit::Patch::Merge(v.to_string()),
            Patch::Json(v) => wit::Patch::JsonPatch(v.to_string()),
        })
    }
}

/// One role's replicas (per slice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleReplicas {
    pub name: String,
    pub desired: i32,
    pub observed: i32,
    pub ready: i32,
}

/// One labelled value of a signal.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of one of its labels.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A signal the binding declared, as the operator evaluated it for this
/// request: samples, or why there are none (decide safely on an error).
#[derive(Clone, Debug, PartialEq)]
pub struct Signal {
    pub name: String,
    /// The role it was evaluated for, when its query names `{{role}}`.
    pub role: Option<String>,
    pub evaluated_at_ms: u64,
    pub samples: Result<Vec<Sample>, String>,
}

impl Signal {
    fn from_wit(s: wit::Signal) -> Self {
        Signal {
            name: s.name,
            role: s.role,
            evaluated_at_ms: s.evaluated_at_ms,
            samples: s.samples.map(|list| {
                list.into_iter()
                    .map(|x| Sample {
                        labels: x.labels,
                        value: x.value,
                    })
                    .collect()
            }),
        }
    }

    /// The one value of a signal that yields one sample (a sum, a
    /// quantile); an error when it is unavailable, empty, or has several.
    pub fn value(&self) -> Result<f64, String> {
        match &self.samples {
            Err(why) => Err(format!("signal {} is unavailable: {why}", self.name)),
            Ok(list) if list.is_empty() => Err(format!("signal {} has no samples", self.name)),
            Ok(list) if list.len() > 1 => Err(format!(
                "signal {} has {} samples; aggregate it to one in its query",
                self.name,
                list.len()
            )),
            Ok(list) => Ok(list[0].value),
        }
    }
}

/// The signal named `name` (for `role`, when given) among `signals`.
fn find<'a>(signals: &'a [Signal], name: &str, role: Option<&str>) -> Option<&'a Signal> {
    signals
        .iter()
        .find(|s| s.name == name && (role.is_none() || s.role.as_deref() == role))
}

/// Input of `scale-role`.
#[derive(Clone, Debug)]
pub struct ScaleRequest {
    pub set: Value,
    pub roles: Vec<RoleReplicas>,
    /// The role to advise on.
    pub role: String,
    pub config: Value,
    /// The binding's signals, evaluated for this role.
    pub signals: Vec<Signal>,
    /// When the role's desired replicas last changed (ms since the epoch), if known.
    pub last_scaled_ms: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub now_ms: u64,
}

impl ScaleRequest {
    pub(crate) fn from_wit(r: wit::ScaleRequest) -> Result<Self, String> {
        Ok(ScaleRequest {
            set: parse("set", &r.set)?,
            roles: r
                .roles
                .into_iter()
                .map(|x| RoleReplicas {
                    name: x.name,
                    desired: x.desired,
                    observed: x.observed,
                    ready: x.ready,
                })
                .collect(),
            role: r.role,
            config: parse("config", &r.config)?,
            signals: r.signals.into_iter().map(Signal::from_wit).collect(),
            last_scaled_ms: r.last_scaled_ms,
            now_ms: r.now_ms,
        })
    }

    pub fn config<T: DeserializeOwned>(&self) -> Result<T, String> {
        config_as(&self.config)
    }

    /// The signal named `name`.
    pub fn signal(&self, name: &str) -> Option<&Signal> {
        find(&self.signals, name, None)
    }

    /// The named role's numbers.
    pub fn role_named(&self, name: &str) -> Option<&RoleReplicas> {
        self.roles.iter().find(|r| r.name == name)
    }
}

/// A proposal for a role's replicas (per slice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleAdvice {
    pub replicas: i32,
    pub reason: String,
}

/// One role in a planned rollout step (per slice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleStep {
    pub name: String,
    pub old_now: i32,
    pub old_next: i32,
    pub new_now: i32,
    pub new_next: i32,
    pub target: i32,
    pub ready: bool,
}

/// Input of `gate-step`.
#[derive(Clone, Debug)]
pub struct GateRequest {
    pub set_name: String,
    pub namespace: String,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub revision: String,
    /// The revision it replaces (the oldest left in the slice).
    pub old_revision: String,
    pub slice: u32,
    /// The schedule position of the step about to be taken (1-based).
    pub step: u32,
    pub total_steps: u32,
    pub roles: Vec<RoleStep>,
    /// How long the current state has held.
    pub held_for_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub now_ms: u64,
    pub config: Value,
    /// The binding's signals, evaluated for this slice.
    pub signals: Vec<Signal>,
}

impl GateRequest {
    pub(crate) fn from_wit(r: wit::GateRequest) -> Result<Self, String> {
        Ok(GateRequest {
            set_name: r.set_name,
            namespace: r.namespace,
            labels: r.labels,
            annotations: r.annotations,
            revision: r.revision,
            old_revision: r.old_revision,
            slice: r.slice,
            step: r.step,
            total_steps: r.total_steps,
            roles: r
                .roles
                .into_iter()
                .map(|x| RoleStep {
                    name: x.name,
                    old_now: x.old_now,
                    old_next: x.old_next,
                    new_now: x.new_now,
                    new_next: x.new_next,
                    target: x.target,
                    ready: x.ready,
                })
                .collect(),
            held_for_ms: r.held_for_ms,
            now_ms: r.now_ms,
            config: parse("config", &r.config)?,
            signals: r.signals.into_iter().map(Signal::from_wit).collect(),
        })
    }

    /// The signal named `name` (for `role`, when the query names `{{role}}`).
    pub fn signal(&self, name: &str, role: Option<&str>) -> Option<&Signal> {
        find(&self.signals, name, role)
    }

    pub fn config<T: DeserializeOwned>(&self) -> Result<T, String> {
        config_as(&self.config)
    }

    /// The value of an annotation on the set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What `gate-step` decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateDecision {
    Proceed,
    Hold {
        reason: String,
        recheck_after_ms: u64,
    },
    /// Roll back: the operator aborts the rollout with this reason.
    Abort(String),
}

impl GateDecision {
    /// Hold for `reason`, asking again after `recheck_after_ms`.
    pub fn hold(reason: impl Into<String>, recheck_after_ms: u64) -> Self {
        GateDecision::Hold {
            reason: reason.into(),
            recheck_after_ms,
        }
    }
}

/// Input of `validate`.
#[derive(Clone, Debug)]
pub struct ValidateRequest {
    pub set: Value,
    pub config: Value,
}

impl ValidateRequest {
    pub(crate) fn from_wit(r: wit::ValidateRequest) -> Result<Self, String> {
        Ok(ValidateRequest {
            set: parse("set", &r.set)?,
            config: parse("config", &r.config)?,
        })
    }

    pub fn config<T: DeserializeOwned>(&self) -> Result<T, String> {
        config_as(&self.config)
    }
}

/// One broken rule: the field (`spec.roles[1].spec.replicas`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            field: field.into(),
            message: message.into(),
        }
    }
}
