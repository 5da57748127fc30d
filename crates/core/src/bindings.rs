//! Applying a set's plugin bindings (`spec.plugins`, `docs/plugins.md`):
//! which plugin runs for which role, in list order, and what a failure does.
//! The decide step ([`crate::decide`]) is the only caller.

use crate::patch::apply;
use crate::plugins::{
    GateDecision, GateRequest, Hook, PatchRequest, Plugin, PluginError, Plugins, RoleReplicas,
    ScaleRequest, ValidateRequest, Violation,
};
use crate::revision::TemplatePlugin;
use crate::signals::{Evaluator, Vars};
use disagg_api::lws::LeaderWorkerSet;
use disagg_api::set::{DisaggregatedSet, FailurePolicy, PluginBinding};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A binding with the component it resolved to.
#[derive(Clone)]
pub struct Bound {
    pub binding: PluginBinding,
    pub plugin: Arc<dyn Plugin>,
}

/// `roles` limits every hook alike: `patch-role` and `scale-role` run for
/// the listed roles only, `gate-step` is asked about steps that change one of
/// them, and `validate` runs while the set has one of them. Absent means
/// every role; `roles: []` turns the binding off.
impl Bound {
    fn applies_to(&self, role: &str) -> bool {
        self.binding
            .roles
            .as_ref()
            .is_none_or(|r| r.iter().any(|n| n == role))
    }

    fn applies_to_any<'r>(&self, mut roles: impl Iterator<Item = &'r str>) -> bool {
        roles.any(|r| self.applies_to(r))
    }

    fn config_json(&self) -> String {
        self.binding
            .config
            .as_ref()
            .map(|c| serde_json::Value::Object(c.clone()).to_string())
            .unwrap_or_else(|| "{}".into())
    }
}

/// A plugin problem, reported on the set as the failure policy says.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub plugin: String,
    pub policy: FailurePolicy,
    /// The role it concerns, if one.
    pub role: Option<String>,
    /// The hook that failed (none when the plugin could not be resolved).
    pub hook: Option<Hook>,
    pub reason: &'static str,
    pub message: String,
    /// The plugin was not asked at all (every call slot busy, still
    /// compiling), or its call was cut off for want of CPU: retried soon,
    /// and it holds back what the plugin would decide whatever the policy —
    /// `Ignore` skips a plugin that failed, not one that never got to answer.
    pub retry: bool,
}

impl Failure {
    fn new(b: &PluginBinding, hook: Hook, role: Option<&str>, e: &PluginError) -> Failure {
        Failure {
            plugin: b.name.clone(),
            policy: b.failure_policy,
            role: role.map(str::to_string),
            hook: Some(hook),
            reason: e.reason(),
            message: e.to_string(),
            retry: e.retryable(),
        }
    }

    /// One line for `PluginsReady`: plugin, hook, role, policy and what went wrong.
    pub fn describe(&self) -> String {
        let hook = self.hook.map(|h| format!("{h}, ")).unwrap_or_default();
        match &self.role {
            Some(r) => format!(
                "{} ({hook}role {r}, {:?}): {}",
                self.plugin, self.policy, self.message
            ),
            None => format!(
                "{} ({hook}{:?}): {}",
                self.plugin, self.policy, self.message
            ),
        }
    }

    /// Whether this failure stops changes (policy Fail, or a retry) rather than skipping the plugin.
    pub fn blocks(&self) -> bool {
        self.policy == FailurePolicy::Fail || self.retry
    }
}

/// One of the operator's own bindings (`--default-plugins`). A mandatory one
/// is organisation policy: every set runs it exactly as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct DefaultBinding {
    pub binding: PluginBinding,
    pub mandatory: bool,
}

/// The bindings a set runs with: the operator's default bindings first,
/// except optional ones the set binds itself (by name), then the set's own
/// in its order, so the set's patches apply last. A set turns an optional
/// default off by binding it with `roles: []`; it cannot touch a mandatory
/// one ([`overrides`] reports the attempt, and its own binding is dropped).
pub fn effective(defaults: &[DefaultBinding], own: &[PluginBinding]) -> Vec<PluginBinding> {
    let mandatory = |name: &str| {
        defaults
            .iter()
            .any(|d| d.mandatory && d.binding.name == name)
    };
    defaults
        .iter()
        .filter(|d| d.mandatory || own.iter().all(|b| b.name != d.binding.name))
        .map(|d| &d.binding)
        .chain(own.iter().filter(|b| !mandatory(&b.name)))
        .cloned()
        .collect()
}

/// A set's own bindings of plugins the operator makes mandatory: each is a
/// violation (the set is `Valid=False` until it drops the binding), whatever
/// it tries — another config, a digest pin, `Ignore`, `roles: []`.
pub fn overrides(defaults: &[DefaultBinding], own: &[PluginBinding]) -> Vec<Violation> {
    own.iter()
        .enumerate()
        .filter(|(_, b)| defaults.iter().any(|d| d.mandatory && d.binding.name == b.name))
        .map(|(i, b)| Violation {
            field: format!("spec.plugins[{i}]"),
            message: format!(
                "binds plugin {:?}, which the operator binds to every set as mandatory policy; a set cannot override or turn it off: remove this binding",
                b.name
            ),
        })
        .collect()
}

/// Parses the operator's default bindings (`--default-plugins`): a YAML or
/// JSON list shaped like `spec.plugins`, each entry optionally with
/// `mandatory: true`, checked as a set's bindings are.
pub fn parse_defaults(text: &str) -> Result<Vec<DefaultBinding>, String> {
    let not_a_list = |e: String| format!("--default-plugins: not a list of plugin bindings: {e}");
    let list: Vec<serde_json::Value> =
        serde_yaml_ng::from_str(text).map_err(|e| not_a_list(e.to_string()))?;
    let mut defaults = Vec::new();
    for (i, mut entry) in list.into_iter().enumerate() {
        let mandatory = match entry.as_object_mut().and_then(|o| o.remove("mandatory")) {
            None => false,
            Some(serde_json::Value::Bool(b)) => b,
            Some(other) => {
                return Err(format!(
                    "--default-plugins[{i}].mandatory: must be true or false, is {other}"
                ));
            }
        };
        let binding: PluginBinding =
            serde_json::from_value(entry).map_err(|e| not_a_list(format!("entry {i}: {e}")))?;
        defaults.push(DefaultBinding { binding, mandatory });
    }
    let bindings: Vec<PluginBinding> = defaults.iter().map(|d| d.binding.clone()).collect();
    let problems = disagg_api::validate::plugin_bindings(&bindings, "--default-plugins", None);
    if problems.is_empty() {
        Ok(defaults)
    } else {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Err(list.join("; "))
    }
}

/// Resolves bindings against the loaded plugins. A binding whose plugin
/// is missing, or whose digest pin does not match, is a failure; one whose
/// plugin is still compiling is a retried `PluginLoading`, whatever its policy.
pub fn resolve(bindings: &[PluginBinding], plugins: &dyn Plugins) -> (Vec<Bound>, Vec<Failure>) {
    let mut bound = Vec::new();
    let mut failures = Vec::new();
    for b in bindings {
        let fail = |reason: &'static str, message: String| Failure {
            plugin: b.name.clone(),
            policy: b.failure_policy,
            role: None,
            hook: None,
            reason,
            message,
            retry: false,
        };
        match plugins.get(&b.name) {
            None if plugins.loading_for(&b.name).is_some() => {
                let e = PluginError::Loading {
                    plugin: b.name.clone(),
                };
                failures.push(Failure {
                    retry: true,
                    ..fail(e.reason(), e.to_string())
                });
            }
            None => failures.push(fail(
                "PluginMissing",
                format!(
                    "plugin {}: not found (no ConfigMap or file provides it)",
                    b.name
                ),
            )),
            Some(p) => match &b.digest {
                Some(pin) if pin != p.digest() => failures.push(fail(
                    "PluginDigestMismatch",
                    format!(
                        "plugin {}: pinned to {pin} but {} is available",
                        b.name,
                        p.digest()
                    ),
                )),
                _ => bound.push(Bound {
                    binding: b.clone(),
                    plugin: p,
                }),
            },
        }
    }
    (bound, failures)
}

/// Template-patching plugins as they enter the revision hash.
pub fn template_plugins(bound: &[Bound]) -> Vec<TemplatePlugin<'_>> {
    bound
        .iter()
        .filter(|b| b.plugin.implements(Hook::PatchRole))
        .map(|b| TemplatePlugin {
            name: &b.binding.name,
            digest: b.plugin.digest(),
            config: b.binding.config.as_ref(),
            roles: b.binding.roles.as_deref(),
        })
        .collect()
}

/// Runs every `validate` hook. Violations are prefixed with the plugin's name.
pub fn validate(
    set: &DisaggregatedSet,
    set_json: &str,
    bound: &[Bound],
) -> (Vec<Violation>, Vec<Failure>) {
    let mut violations = Vec::new();
    let mut failures = Vec::new();
    for b in bound.iter().filter(|b| {
        b.plugin.implements(Hook::Validate)
            && b.applies_to_any(set.spec.roles.iter().map(|r| r.name.as_str()))
    }) {
        let request = ValidateRequest {
            set: set_json.to_string(),
            config: b.config_json(),
        };
        match b.plugin.validate(&request) {
            Ok(list) => violations.extend(list.into_iter().map(|v| Violation {
                field: v.field,
                message: format!("{} (plugin {})", v.message, b.binding.name),
            })),
            Err(e) => failures.push(Failure::new(&b.binding, Hook::Validate, None, &e)),
        }
    }
    (violations, failures)
}

/// Runs `scale-role` for every role a scaling plugin is bound to; later
/// bindings see earlier advice. `desired` is per role (spec order) and is updated in place.
pub fn scale(
    set: &DisaggregatedSet,
    set_json: &str,
    bound: &[Bound],
    desired: &mut BTreeMap<String, i32>,
    observed: &BTreeMap<String, (i32, i32)>,
    context: &ScaleContext<'_>,
) -> Vec<Failure> {
    let mut failures = Vec::new();
    for b in bound
        .iter()
        .filter(|b| b.plugin.implements(Hook::ScaleRole))
    {
        for role in &set.spec.roles {
            if !b.applies_to(&role.name) {
                continue;
            }
            let input = ScaleRequest {
                set: set_json.to_string(),
                roles: set
                    .spec
                    .roles
                    .iter()
                    .map(|r| {
                        let (obs, ready) = observed.get(&r.name).copied().unwrap_or((0, 0));
                        RoleReplicas {
                            name: r.name.clone(),
                            desired: desired.get(&r.name).copied().unwrap_or(0),
                            observed: obs,
                            ready,
                        }
                    })
                    .collect(),
                role: role.name.clone(),
                config: b.config_json(),
                signals: context.evaluator.evaluate(
                    &b.binding.name,
                    &b.binding.signals,
                    &context.vars,
                    &[&role.name],
                ),
                last_scaled_ms: context.last_scaled_ms.get(&role.name).copied(),
                now_ms: context.now_ms,
            };
            match b.plugin.scale_role(&input) {
                Ok(Some(advice)) => {
                    desired.insert(role.name.clone(), advice.replicas);
                }
                Ok(None) => {}
                Err(e) => failures.push(Failure::new(
                    &b.binding,
                    Hook::ScaleRole,
                    Some(&role.name),
                    &e,
                )),
            }
        }
    }
    failures
}

/// What scale requests carry beyond the set: signals, the clock, and when each
/// role's desired replicas last changed.
pub struct ScaleContext<'a> {
    pub evaluator: &'a Evaluator<'a>,
    pub vars: Vars<'a>,
    pub now_ms: u64,
    pub last_scaled_ms: BTreeMap<String, u64>,
}

/// What the gates decided about a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateOutcome {
    /// The named gate holds, for a reason, asking again after so many ms.
    Hold {
        gate: String,
        reason: String,
        recheck_ms: u64,
    },
    /// The named gate asks for the rollout to be aborted.
    Abort { gate: String, reason: String },
}

/// Applies every `patch-role` bound to the child's role, in order.
/// Under Ignore a failing plugin is skipped; under Fail the role's child
/// cannot be rendered and the failure is returned.
pub fn patch(
    set_json: &str,
    bound: &[Bound],
    role: &str,
    slice: i32,
    revision: &str,
    mut lws: LeaderWorkerSet,
) -> (Result<LeaderWorkerSet, Failure>, Vec<Failure>) {
    let mut skipped = Vec::new();
    for b in bound
        .iter()
        .filter(|b| b.plugin.implements(Hook::PatchRole) && b.applies_to(role))
    {
        let input = PatchRequest {
            set: set_json.to_string(),
            role: role.to_string(),
            slice: slice.max(0) as u32,
            revision: revision.to_string(),
            lws: serde_json::to_string(&lws).expect("an LWS serialises"),
            config: b.config_json(),
        };
        let result = b.plugin.patch_role(&input).and_then(|p| {
            apply(&lws, &p).map_err(|message| PluginError::BadOutput {
                plugin: b.binding.name.clone(),
                message,
            })
        });
        match result {
            Ok(patched) => lws = patched,
            Err(e) => {
                let failure = Failure::new(&b.binding, Hook::PatchRole, Some(role), &e);
                if failure.blocks() {
                    return (Err(failure), skipped);
                }
                skipped.push(failure);
            }
        }
    }
    (Ok(lws), skipped)
}

/// Asks every gate in order; the first hold wins. A failing gate under Fail holds
/// (the step is not taken); under Ignore it is skipped.
pub fn gate(
    bound: &[Bound],
    input: &GateRequest,
    evaluator: &Evaluator<'_>,
) -> (Option<GateOutcome>, Vec<Failure>) {
    let vars = Vars {
        set: &input.set_name,
        namespace: &input.namespace,
        slice: i32::try_from(input.slice).unwrap_or(0),
        revision: &input.revision,
        old_revision: &input.old_revision,
    };
    let roles: Vec<&str> = input.roles.iter().map(|r| r.name.as_str()).collect();
    let mut failures = Vec::new();
    let changing = input
        .roles
        .iter()
        .filter(|r| r.old_now != r.old_next || r.new_now != r.new_next)
        .map(|r| r.name.as_str());
    let changing: Vec<&str> = changing.collect();
    for b in bound.iter().filter(|b| {
        b.plugin.implements(Hook::GateStep) && b.applies_to_any(changing.iter().copied())
    }) {
        let input = GateRequest {
            config: b.config_json(),
            signals: evaluator.evaluate(&b.binding.name, &b.binding.signals, &vars, &roles),
            ..input.clone()
        };
        let gate = b.binding.name.clone();
        match b.plugin.gate_step(&input) {
            Ok(GateDecision::Proceed) => {}
            Ok(GateDecision::Hold {
                reason,
                recheck_after_ms,
            }) => {
                let hold = GateOutcome::Hold {
                    gate,
                    reason,
                    recheck_ms: recheck_after_ms,
                };
                return (Some(hold), failures);
            }
            Ok(GateDecision::Abort { reason }) => {
                return (Some(GateOutcome::Abort { gate, reason }), failures);
            }
            Err(e) => {
                let failure = Failure::new(&b.binding, Hook::GateStep, None, &e);
                if failure.blocks() {
                    let reason = failure.message.clone();
                    failures.push(failure);
                    let hold = GateOutcome::Hold {
                        gate,
                        reason,
                        recheck_ms: 30_000,
                    };
                    return (Some(hold), failures);
                }
                failures.push(failure);
            }
        }
    }
    (None, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(name: &str, roles: Option<&[&str]>) -> PluginBinding {
        PluginBinding {
            name: name.into(),
            config: None,
            roles: roles.map(|r| r.iter().map(|s| s.to_string()).collect()),
            failure_policy: FailurePolicy::Fail,
            digest: None,
            signals: Vec::new(),
        }
    }

    fn default(name: &str, mandatory: bool) -> DefaultBinding {
        DefaultBinding {
            binding: binding(name, None),
            mandatory,
        }
    }

    #[test]
    fn a_sets_own_binding_replaces_the_default_of_the_same_name() {
        let defaults = [default("role-profile", false), default("gate", false)];
        let own = [binding("scaler", None), binding("gate", Some(&[]))];
        let names: Vec<String> = effective(&defaults, &own)
            .into_iter()
            .map(|b| b.name)
            .collect();
        // Defaults first (so the set's own patches apply last), the overridden one dropped.
        assert_eq!(names, ["role-profile", "scaler", "gate"]);
        assert_eq!(effective(&defaults, &own)[2].roles, Some(vec![]));
        assert_eq!(effective(&[], &own), own.to_vec());
        assert!(overrides(&defaults, &own).is_empty());
    }

    /// The controller decides a set in place, off the blocking pool, when it
    /// has no effective binding; that is exactly when there are no defaults
    /// and the set binds nothing: overriding, turning off or colliding with
    /// a mandatory default always leaves one binding.
    #[test]
    fn no_binding_is_effective_only_without_defaults_and_own_bindings() {
        assert!(effective(&[], &[]).is_empty());
        for (defaults, own) in [
            (vec![default("gate", false)], vec![]),
            (vec![], vec![binding("gate", None)]),
            (
                vec![default("gate", false)],
                vec![binding("gate", Some(&[]))],
            ),
            (vec![default("gate", true)], vec![binding("gate", None)]),
        ] {
            assert_eq!(effective(&defaults, &own).len(), 1, "{defaults:?} {own:?}");
        }
    }

    /// Every way a set might touch a mandatory binding is refused by name, and
    /// the mandatory binding runs as configured.
    #[test]
    fn mandatory_defaults_cannot_be_overridden_or_turned_off() {
        let defaults = [default("policy", true), default("role-profile", false)];
        let attempts = [
            binding("policy", Some(&[])),
            PluginBinding {
                failure_policy: FailurePolicy::Ignore,
                ..binding("policy", None)
            },
            PluginBinding {
                digest: Some(format!("sha256:{}", "0".repeat(64))),
                ..binding("policy", None)
            },
            PluginBinding {
                config: Some(serde_json::Map::from_iter([("off".into(), true.into())])),
                ..binding("policy", None)
            },
        ];
        for attempt in attempts {
            let own = [binding("mine", None), attempt.clone()];
            let v = overrides(&defaults, &own);
            assert_eq!(v.len(), 1, "{attempt:?}");
            assert_eq!(v[0].field, "spec.plugins[1]");
            assert!(v[0].message.contains("\"policy\"") && v[0].message.contains("mandatory"));
            let eff = effective(&defaults, &own);
            assert_eq!(
                eff[0], defaults[0].binding,
                "the mandatory binding runs as configured"
            );
            assert_eq!(eff.iter().filter(|b| b.name == "policy").count(), 1);
        }
    }

    #[test]
    fn default_bindings_parse_from_yaml_or_json_and_are_checked() {
        let parsed = parse_defaults(r#"[{"name": "role-profile"}]"#).unwrap();
        assert_eq!(parsed, [default("role-profile", false)]);
        let parsed = parse_defaults(
            "- name: gate\n  roles: [decode]\n  failurePolicy: Ignore\n  mandatory: true\n",
        )
        .unwrap();
        assert_eq!(parsed[0].binding.failure_policy, FailurePolicy::Ignore);
        assert!(parsed[0].mandatory);
        let err = parse_defaults(r#"[{"name": "a", "mandatory": "yes"}]"#).unwrap_err();
        assert!(err.contains("--default-plugins[0].mandatory"), "{err}");
        assert_eq!(parse_defaults("[]").unwrap(), []);

        let err = parse_defaults("{name: x}").unwrap_err();
        assert!(err.contains("--default-plugins: not a list"), "{err}");
        let err = parse_defaults(r#"[{"name": "a"}, {"name": "a"}]"#).unwrap_err();
        assert!(
            err.contains("--default-plugins[1].name") && err.contains("bound twice"),
            "{err}"
        );
        let err = parse_defaults(r#"[{"name": "Bad_Name"}]"#).unwrap_err();
        assert!(err.contains("--default-plugins[0].name"), "{err}");
        let err = parse_defaults(r#"[{"name": "a", "digest": "md5:1"}]"#).unwrap_err();
        assert!(err.contains("--default-plugins[0].digest"), "{err}");
    }
}
