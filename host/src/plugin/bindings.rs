//! Applying a set's plugin bindings (`spec.plugins`, DESIGN §3.2, §6.4):
//! which plugin runs for which role, in list order, and what a failure does.
//! Shared by `disagg render --plugin` and the controller; no kube here.

use super::{
    GateDecision, GateInput, Hook, LoadedPlugin, PatchInput, PluginError, Runtime, ScaleInput,
};
use crate::api::lws::LeaderWorkerSet;
use crate::api::set::{DisaggregatedSet, FailurePolicy, PluginBinding};
use crate::api::validate::Violation;
use crate::core::patch::apply;
use crate::core::revision::TemplatePlugin;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A binding with the component it resolved to.
#[derive(Clone)]
pub struct Bound {
    pub binding: PluginBinding,
    pub plugin: Arc<LoadedPlugin>,
}

impl Bound {
    fn applies_to(&self, role: &str) -> bool {
        self.binding
            .roles
            .as_ref()
            .is_none_or(|r| r.iter().any(|n| n == role))
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
    pub reason: &'static str,
    pub message: String,
}

impl Failure {
    fn new(b: &PluginBinding, role: Option<&str>, e: &PluginError) -> Failure {
        Failure {
            plugin: b.name.clone(),
            policy: b.failure_policy,
            role: role.map(str::to_string),
            reason: e.reason(),
            message: e.to_string(),
        }
    }

    /// Whether this failure stops changes (policy Fail) rather than skipping the plugin.
    pub fn blocks(&self) -> bool {
        self.policy == FailurePolicy::Fail
    }
}

/// The bindings a set runs with (DESIGN §6.3): the operator's default
/// bindings first, except those the set binds itself (by name), then the set's
/// own in its order, so the set's patches apply last. A set turns a default
/// off by binding it with `roles: []`.
pub fn effective(defaults: &[PluginBinding], own: &[PluginBinding]) -> Vec<PluginBinding> {
    defaults
        .iter()
        .filter(|d| own.iter().all(|b| b.name != d.name))
        .chain(own)
        .cloned()
        .collect()
}

/// Parses the operator's default bindings (`--default-plugins`): a YAML or
/// JSON list shaped like `spec.plugins`, checked as a set's bindings are.
pub fn parse_defaults(text: &str) -> Result<Vec<PluginBinding>, String> {
    let list: Vec<PluginBinding> = serde_yaml_ng::from_str(text)
        .map_err(|e| format!("--default-plugins: not a list of plugin bindings: {e}"))?;
    let problems = crate::api::validate::plugin_bindings(&list, "--default-plugins", None);
    if problems.is_empty() {
        Ok(list)
    } else {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Err(list.join("; "))
    }
}

/// Resolves bindings against the loaded plugins. A binding whose plugin
/// is missing, or whose digest pin does not match, is a failure.
pub fn resolve(
    bindings: &[PluginBinding],
    lookup: impl Fn(&str) -> Option<Arc<LoadedPlugin>>,
) -> (Vec<Bound>, Vec<Failure>) {
    let mut bound = Vec::new();
    let mut failures = Vec::new();
    for b in bindings {
        let fail = |reason: &'static str, message: String| Failure {
            plugin: b.name.clone(),
            policy: b.failure_policy,
            role: None,
            reason,
            message,
        };
        match lookup(&b.name) {
            None => failures.push(fail(
                "PluginMissing",
                format!(
                    "plugin {}: not found (no ConfigMap or file provides it)",
                    b.name
                ),
            )),
            Some(p) => match &b.digest {
                Some(pin) if *pin != p.digest => failures.push(fail(
                    "PluginDigestMismatch",
                    format!(
                        "plugin {}: pinned to {pin} but {} is available",
                        b.name, p.digest
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
            digest: &b.plugin.digest,
            config: b.binding.config.as_ref(),
            roles: b.binding.roles.as_deref(),
        })
        .collect()
}

/// Runs every `validate` hook. Violations are prefixed with the plugin's name.
pub fn validate(
    rt: &Runtime,
    set: &DisaggregatedSet,
    bound: &[Bound],
) -> (Vec<Violation>, Vec<Failure>) {
    let set_json = serde_json::to_string(set).expect("a set serialises");
    let mut violations = Vec::new();
    let mut failures = Vec::new();
    for b in bound.iter().filter(|b| b.plugin.implements(Hook::Validate)) {
        match rt.validate(&b.plugin, &set_json, &b.config_json()) {
            Ok(list) => violations.extend(list.into_iter().map(|v| Violation {
                field: v.field,
                message: format!("{} (plugin {})", v.message, b.binding.name),
            })),
            Err(e) => failures.push(Failure::new(&b.binding, None, &e)),
        }
    }
    (violations, failures)
}

/// Runs `scale-role` for every role a scaling plugin is bound to; later
/// bindings see earlier advice. `desired` is per role (spec order) and is updated in place.
pub fn scale(
    rt: &Runtime,
    set: &DisaggregatedSet,
    bound: &[Bound],
    desired: &mut BTreeMap<String, i32>,
    observed: &BTreeMap<String, (i32, i32)>,
) -> Vec<Failure> {
    let set_json = serde_json::to_string(set).expect("a set serialises");
    let mut failures = Vec::new();
    for b in bound
        .iter()
        .filter(|b| b.plugin.implements(Hook::ScaleRole))
    {
        for role in &set.spec.roles {
            if !b.applies_to(&role.name) {
                continue;
            }
            let input = ScaleInput {
                set: set_json.clone(),
                roles: set
                    .spec
                    .roles
                    .iter()
                    .map(|r| {
                        let (obs, ready) = observed.get(&r.name).copied().unwrap_or((0, 0));
                        super::RoleReplicas {
                            name: r.name.clone(),
                            desired: desired.get(&r.name).copied().unwrap_or(0),
                            observed: obs,
                            ready,
                        }
                    })
                    .collect(),
                role: role.name.clone(),
                config: b.config_json(),
            };
            match rt.scale_role(&b.plugin, &input) {
                Ok(Some(advice)) => {
                    desired.insert(role.name.clone(), advice.replicas);
                }
                Ok(None) => {}
                Err(e) => failures.push(Failure::new(&b.binding, Some(&role.name), &e)),
            }
        }
    }
    failures
}

/// Applies every `patch-role` bound to the child's role, in order.
/// Under Ignore a failing plugin is skipped; under Fail the role's child
/// cannot be rendered and the failure is returned.
pub fn patch(
    rt: &Runtime,
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
        let input = PatchInput {
            set: set_json.to_string(),
            role: role.to_string(),
            slice: slice.max(0) as u32,
            revision: revision.to_string(),
            lws: serde_json::to_string(&lws).expect("an LWS serialises"),
            config: b.config_json(),
        };
        let result = rt.patch_role(&b.plugin, &input).and_then(|p| {
            apply(&lws, &p).map_err(|message| PluginError::BadOutput {
                plugin: b.binding.name.clone(),
                message,
            })
        });
        match result {
            Ok(patched) => lws = patched,
            Err(e) => {
                let failure = Failure::new(&b.binding, Some(role), &e);
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
    rt: &Runtime,
    bound: &[Bound],
    input: &GateInput,
) -> (Option<(String, String, u64)>, Vec<Failure>) {
    let mut failures = Vec::new();
    for b in bound.iter().filter(|b| b.plugin.implements(Hook::GateStep)) {
        let input = GateInput {
            config: b.config_json(),
            ..input.clone()
        };
        match rt.gate_step(&b.plugin, &input) {
            Ok(GateDecision::Proceed) => {}
            Ok(GateDecision::Hold(h)) => {
                return (
                    Some((b.binding.name.clone(), h.reason, h.recheck_after_ms)),
                    failures,
                );
            }
            Err(e) => {
                let failure = Failure::new(&b.binding, None, &e);
                if failure.blocks() {
                    let reason = failure.message.clone();
                    failures.push(failure);
                    return (Some((b.binding.name.clone(), reason, 30_000)), failures);
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
        }
    }

    #[test]
    fn a_sets_own_binding_replaces_the_default_of_the_same_name() {
        let defaults = [binding("role-profile", None), binding("gate", None)];
        let own = [binding("scaler", None), binding("gate", Some(&[]))];
        let names: Vec<String> = effective(&defaults, &own)
            .into_iter()
            .map(|b| b.name)
            .collect();
        // Defaults first (so the set's own patches apply last), the overridden one dropped.
        assert_eq!(names, ["role-profile", "scaler", "gate"]);
        assert_eq!(effective(&defaults, &own)[2].roles, Some(vec![]));
        assert_eq!(effective(&[], &own), own.to_vec());
    }

    #[test]
    fn default_bindings_parse_from_yaml_or_json_and_are_checked() {
        let parsed = parse_defaults(r#"[{"name": "role-profile"}]"#).unwrap();
        assert_eq!(parsed, [binding("role-profile", None)]);
        let parsed =
            parse_defaults("- name: gate\n  roles: [decode]\n  failurePolicy: Ignore\n").unwrap();
        assert_eq!(parsed[0].failure_policy, FailurePolicy::Ignore);
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
