//! The contract (`wit/plugin.wit`) as this host serves it: the generated
//! bindings, the one mapping between them and the core's host-side types
//! ([`disagg_core::plugins`]), and the checks on every answer (bounds,
//! sizes, truncated messages). Nothing outside this module sees a WIT type.
//!
//! The contract's version is written once, in the WIT file's `package` line;
//! [`contract_version`] reads it from the same file bindgen does. The host
//! also serves the frozen 0.1.0 contract (`wit/0.1.0/`): a component built
//! for it is called through its own bindings, with requests and answers
//! mapped to and from the current ones (it gets no signals and cannot abort).

use crate::runtime::LoadedPlugin;
use crate::sandbox::State;
use disagg_core::plugins::{
    GateDecision, GateRequest, Hook, LwsPatch, PatchRequest, Plugin, PluginError, PluginInfo,
    ScaleAdvice, ScaleRequest, ValidateRequest, Violation,
};
use disagg_core::text::truncate;
use wasmtime::Store;
use wasmtime::component::Component;

mod wit_world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "plugin",
        additional_derives: [PartialEq],
        // Hooks run as async calls so that a call blocked inside a host
        // function (a WASI sleep or poll) can be abandoned at its deadline;
        // the epoch deadline only interrupts Wasm code.
        exports: { default: async },
    });
}

/// The 0.1.0 contract, frozen: components built for it keep loading.
mod wit_v0_1 {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.0",
        world: "plugin",
        additional_derives: [PartialEq, Eq],
        exports: { default: async },
    });
}

use wit_v0_1::disaggregatedset::plugin::types as wit_old;
use wit_world::disaggregatedset::plugin::types as wit;

/// Every contract version this host serves, newest first: the current one
/// (`contract_version`, a test keeps them equal) and the frozen 0.1.0.
pub const SERVED: [&str; 2] = ["0.2.0", "0.1.0"];

/// A component pre-linked for the contract version it exports.
pub(crate) enum Pre {
    Current(wit_world::PluginPre<State>),
    V0_1(wit_v0_1::PluginPre<State>),
}

impl Pre {
    /// The contract version the component was built for.
    pub(crate) fn version(&self) -> &'static str {
        match self {
            Pre::Current(_) => SERVED[0],
            Pre::V0_1(_) => SERVED[1],
        }
    }
}

/// Adds the `host` interface of every served version to a linker.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<State>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    wit_world::Plugin::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    wit_v0_1::Plugin::add_to_linker::<State, HasSelf<State>>(linker, |s| s)
}

/// Pre-links a component for `version` (from [`check_version`]).
pub(crate) fn pre(
    version: &str,
    instance: wasmtime::component::InstancePre<State>,
) -> wasmtime::Result<Pre> {
    Ok(if version == SERVED[1] {
        Pre::V0_1(wit_v0_1::PluginPre::new(instance)?)
    } else {
        Pre::Current(wit_world::PluginPre::new(instance)?)
    })
}

/// The contract file bindgen reads.
const WIT: &str = include_str!("../../../wit/plugin.wit");
const PACKAGE: &str = "disaggregatedset:plugin";

/// The contract version this host serves: the version in `wit/plugin.wit`'s
/// `package disaggregatedset:plugin@…;` line.
pub fn contract_version() -> &'static str {
    WIT.lines()
        .find_map(|l| l.trim().strip_prefix("package disaggregatedset:plugin@"))
        .map(|v| v.trim_end_matches(';').trim())
        .expect("wit/plugin.wit names its package and version")
}

/// The interface a component exports its hooks as, at the version we serve.
fn hooks_export() -> String {
    format!("{PACKAGE}/hooks@{}", contract_version())
}

/// The contract version a component exports its hooks at, or why it cannot be served.
pub(crate) fn check_version(
    engine: &wasmtime::Engine,
    name: &str,
    component: &Component,
) -> Result<&'static str, PluginError> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(n, _)| n.to_string())
        .collect();
    let wanted = hooks_export();
    for version in SERVED {
        if exports.contains(&format!("{PACKAGE}/hooks@{version}")) {
            return Ok(version);
        }
    }
    let prefix = format!("{PACKAGE}/hooks");
    if let Some(other) = exports.iter().find(|e| e.starts_with(&prefix)) {
        return Err(PluginError::IncompatibleVersion {
            plugin: name.to_string(),
            found: other.clone(),
            supported: SERVED
                .iter()
                .map(|v| format!("{PACKAGE}/hooks@{v}"))
                .collect(),
        });
    }
    Err(PluginError::InvalidComponent {
        plugin: name.to_string(),
        message: format!(
            "it does not export {wanted} (it exports: {})",
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        ),
    })
}

impl wit::Host for State {}
impl wit_old::Host for State {}

impl wit_v0_1::disaggregatedset::plugin::host::Host for State {
    fn log(&mut self, level: wit_old::Level, message: String) {
        use wit_world::disaggregatedset::plugin::host::Host;
        let level = match level {
            wit_old::Level::Trace => wit::Level::Trace,
            wit_old::Level::Debug => wit::Level::Debug,
            wit_old::Level::Info => wit::Level::Info,
            wit_old::Level::Warn => wit::Level::Warn,
            wit_old::Level::Error => wit::Level::Error,
        };
        Host::log(self, level, message)
    }
}

impl wit_world::disaggregatedset::plugin::host::Host for State {
    fn log(&mut self, level: wit::Level, message: String) {
        let plugin = self.plugin.as_str();
        let message = truncate(&message, 4096);
        match level {
            wit::Level::Trace => tracing::trace!(plugin, "{message}"),
            wit::Level::Debug => tracing::debug!(plugin, "{message}"),
            wit::Level::Info => tracing::info!(plugin, "{message}"),
            wit::Level::Warn => tracing::warn!(plugin, "{message}"),
            wit::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// One hook call's input, in the contract's types.
pub(crate) enum Request {
    Describe,
    PatchRole(wit::PatchRequest),
    ScaleRole(wit::ScaleRequest),
    GateStep(wit::GateRequest),
    Validate(wit::ValidateRequest),
}

/// One hook call's output, as the guest returned it.
pub(crate) enum Response {
    Describe(PluginInfo),
    PatchRole(Result<wit::Patch, String>),
    ScaleRole(Result<Option<wit::ScaleAdvice>, String>),
    GateStep(Result<wit::GateDecision, String>),
    Validate(Vec<wit::Violation>),
}

/// Instantiates the component and makes one call, in its contract version.
pub(crate) async fn invoke(
    pre: &Pre,
    store: &mut Store<State>,
    request: &Request,
) -> wasmtime::Result<Response> {
    match pre {
        Pre::Current(pre) => {
            let plugin = pre.instantiate_async(&mut *store).await?;
            invoke_current(&plugin, store, request).await
        }
        Pre::V0_1(pre) => {
            let plugin = pre.instantiate_async(&mut *store).await?;
            v0_1::invoke(&plugin, store, request).await
        }
    }
}

async fn invoke_current(
    plugin: &wit_world::Plugin,
    store: &mut Store<State>,
    request: &Request,
) -> wasmtime::Result<Response> {
    let hooks = plugin.disaggregatedset_plugin_hooks();
    Ok(match request {
        Request::Describe => {
            let info = hooks.call_describe(store).await?;
            Response::Describe(PluginInfo {
                name: info.name,
                version: info.version,
                hooks: info.hooks.into_iter().map(hook).collect(),
            })
        }
        Request::PatchRole(r) => Response::PatchRole(hooks.call_patch_role(store, r).await?),
        Request::ScaleRole(r) => Response::ScaleRole(hooks.call_scale_role(store, r).await?),
        Request::GateStep(r) => Response::GateStep(hooks.call_gate_step(store, r).await?),
        Request::Validate(r) => Response::Validate(hooks.call_validate(store, r).await?),
    })
}

fn hook(h: wit::Hook) -> Hook {
    match h {
        wit::Hook::PatchRole => Hook::PatchRole,
        wit::Hook::ScaleRole => Hook::ScaleRole,
        wit::Hook::GateStep => Hook::GateStep,
        wit::Hook::Validate => Hook::Validate,
    }
}

/// Calls into a 0.1.0 component: the same requests less what 0.1.0 lacks,
/// its answers as the current contract's.
mod v0_1 {
    use super::{Request, Response, State, hook, wit, wit_old, wit_v0_1};
    use disagg_core::plugins::{Hook, PluginInfo};
    use wasmtime::Store;

    pub(super) async fn invoke(
        plugin: &wit_v0_1::Plugin,
        store: &mut Store<State>,
        request: &Request,
    ) -> wasmtime::Result<Response> {
        let hooks = plugin.disaggregatedset_plugin_hooks();
        Ok(match request {
            Request::Describe => {
                let info = hooks.call_describe(store).await?;
                Response::Describe(PluginInfo {
                    name: info.name,
                    version: info.version,
                    hooks: info.hooks.into_iter().map(old_hook).collect(),
                })
            }
            Request::PatchRole(r) => {
                let r = wit_old::PatchRequest {
                    set: r.set.clone(),
                    role: r.role.clone(),
                    slice: r.slice,
                    revision: r.revision.clone(),
                    lws: r.lws.clone(),
                    config: r.config.clone(),
                };
                let out = hooks.call_patch_role(store, &r).await?;
                Response::PatchRole(out.map(|p| match p {
                    wit_old::Patch::None => wit::Patch::None,
                    wit_old::Patch::Merge(t) => wit::Patch::Merge(t),
                    wit_old::Patch::JsonPatch(t) => wit::Patch::JsonPatch(t),
                }))
            }
            Request::ScaleRole(r) => {
                let r = wit_old::ScaleRequest {
                    set: r.set.clone(),
                    roles: r
                        .roles
                        .iter()
                        .map(|x| wit_old::RoleReplicas {
                            name: x.name.clone(),
                            desired: x.desired,
                            observed: x.observed,
                            ready: x.ready,
                        })
                        .collect(),
                    role: r.role.clone(),
                    config: r.config.clone(),
                };
                let out = hooks.call_scale_role(store, &r).await?;
                Response::ScaleRole(out.map(|a| {
                    a.map(|a| wit::ScaleAdvice {
                        replicas: a.replicas,
                        reason: a.reason,
                    })
                }))
            }
            Request::GateStep(r) => {
                let r = wit_old::GateRequest {
                    set_name: r.set_name.clone(),
                    namespace: r.namespace.clone(),
                    labels: r.labels.clone(),
                    annotations: r.annotations.clone(),
                    revision: r.revision.clone(),
                    slice: r.slice,
                    step: r.step,
                    total_steps: r.total_steps,
                    roles: r
                        .roles
                        .iter()
                        .map(|x| wit_old::RoleStep {
                            name: x.name.clone(),
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
                    config: r.config.clone(),
                };
                let out = hooks.call_gate_step(store, &r).await?;
                Response::GateStep(out.map(|d| match d {
                    wit_old::GateDecision::Proceed => wit::GateDecision::Proceed,
                    wit_old::GateDecision::Hold(h) => wit::GateDecision::Hold(wit::Hold {
                        reason: h.reason,
                        recheck_after_ms: h.recheck_after_ms,
                    }),
                }))
            }
            Request::Validate(r) => {
                let r = wit_old::ValidateRequest {
                    set: r.set.clone(),
                    config: r.config.clone(),
                };
                let out = hooks.call_validate(store, &r).await?;
                Response::Validate(
                    out.into_iter()
                        .map(|v| wit::Violation {
                            field: v.field,
                            message: v.message,
                        })
                        .collect(),
                )
            }
        })
    }

    fn old_hook(h: wit_old::Hook) -> Hook {
        hook(match h {
            wit_old::Hook::PatchRole => wit::Hook::PatchRole,
            wit_old::Hook::ScaleRole => wit::Hook::ScaleRole,
            wit_old::Hook::GateStep => wit::Hook::GateStep,
            wit_old::Hook::Validate => wit::Hook::Validate,
        })
    }
}

fn patch_request(r: &PatchRequest) -> wit::PatchRequest {
    wit::PatchRequest {
        set: r.set.clone(),
        role: r.role.clone(),
        slice: r.slice,
        revision: r.revision.clone(),
        lws: r.lws.clone(),
        config: r.config.clone(),
    }
}

fn scale_request(r: &ScaleRequest) -> wit::ScaleRequest {
    wit::ScaleRequest {
        set: r.set.clone(),
        roles: r
            .roles
            .iter()
            .map(|x| wit::RoleReplicas {
                name: x.name.clone(),
                desired: x.desired,
                observed: x.observed,
                ready: x.ready,
            })
            .collect(),
        role: r.role.clone(),
        config: r.config.clone(),
        signals: r.signals.iter().map(signal).collect(),
        last_scaled_ms: r.last_scaled_ms,
        now_ms: r.now_ms,
    }
}

fn signal(s: &disagg_core::plugins::Signal) -> wit::Signal {
    wit::Signal {
        name: s.name.clone(),
        role: s.role.clone(),
        evaluated_at_ms: s.evaluated_at_ms,
        samples: match &s.error {
            Some(why) => Err(why.clone()),
            None => Ok(s
                .samples
                .iter()
                .map(|x| wit::Sample {
                    labels: x.labels.clone(),
                    value: x.value,
                })
                .collect()),
        },
    }
}

fn gate_request(r: &GateRequest) -> wit::GateRequest {
    wit::GateRequest {
        set_name: r.set_name.clone(),
        namespace: r.namespace.clone(),
        labels: r.labels.clone(),
        annotations: r.annotations.clone(),
        revision: r.revision.clone(),
        old_revision: r.old_revision.clone(),
        slice: r.slice,
        step: r.step,
        total_steps: r.total_steps,
        roles: r
            .roles
            .iter()
            .map(|x| wit::RoleStep {
                name: x.name.clone(),
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
        config: r.config.clone(),
        signals: r.signals.iter().map(signal).collect(),
    }
}

/// The longest message a plugin's answer may put into status or an Event.
const MAX_MESSAGE_BYTES: usize = 512;
/// The most violations one plugin may report at once.
const MAX_VIOLATIONS: usize = 20;

impl LoadedPlugin {
    /// Runs `hook` with `request`, if the plugin implements it, and tells
    /// the runtime's observer how it went.
    fn run<R>(
        &self,
        hook: Hook,
        request: Request,
        answer: impl FnOnce(Response) -> Result<R, PluginError>,
    ) -> Result<R, PluginError> {
        let started = std::time::Instant::now();
        let result = if self.implements(hook) {
            self.runtime.call(self, &request).and_then(answer)
        } else {
            Err(PluginError::NotImplemented {
                plugin: self.name.clone(),
                hook,
            })
        };
        self.runtime
            .observed(&self.name, hook, started.elapsed(), result.as_ref().err());
        result
    }

    /// The plugin's own `err(message)`, kept short.
    fn failed(&self, message: String) -> PluginError {
        PluginError::Failed {
            plugin: self.name.clone(),
            message: truncate(&message, MAX_MESSAGE_BYTES),
        }
    }

    fn json(&self, text: &str) -> Result<serde_json::Value, PluginError> {
        let limit = self.runtime.limits.output_bytes;
        if text.len() > limit {
            return Err(PluginError::OutputTooLarge {
                plugin: self.name.clone(),
                limit_bytes: limit as u64,
            });
        }
        serde_json::from_str(text).map_err(|e| PluginError::BadOutput {
            plugin: self.name.clone(),
            message: format!("patch is not JSON: {e}"),
        })
    }
}

fn unexpected(hook: Hook) -> ! {
    unreachable!("{hook} answers with {hook}")
}

impl Plugin for LoadedPlugin {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn digest(&self) -> &str {
        &self.digest
    }

    /// The patch to apply to the rendered LWS.
    fn patch_role(&self, request: &PatchRequest) -> Result<LwsPatch, PluginError> {
        let hook = Hook::PatchRole;
        self.run(hook, Request::PatchRole(patch_request(request)), |out| {
            let Response::PatchRole(out) = out else {
                unexpected(hook)
            };
            match out.map_err(|m| self.failed(m))? {
                wit::Patch::None => Ok(LwsPatch::None),
                wit::Patch::Merge(text) => Ok(LwsPatch::Merge(self.json(&text)?)),
                wit::Patch::JsonPatch(text) => Ok(LwsPatch::Json(self.json(&text)?)),
            }
        })
    }

    /// A proposal for a role's replicas, if any, within `0..=MAX_REPLICAS`.
    fn scale_role(&self, request: &ScaleRequest) -> Result<Option<ScaleAdvice>, PluginError> {
        use disagg_api::limits::MAX_REPLICAS;
        let hook = Hook::ScaleRole;
        self.run(hook, Request::ScaleRole(scale_request(request)), |out| {
            let Response::ScaleRole(out) = out else {
                unexpected(hook)
            };
            let Some(a) = out.map_err(|m| self.failed(m))? else {
                return Ok(None);
            };
            if !(0..=MAX_REPLICAS).contains(&a.replicas) {
                return Err(PluginError::BadOutput {
                    plugin: self.name.clone(),
                    message: format!(
                        "proposed {} replicas for {}; advice must be 0 to {MAX_REPLICAS}",
                        a.replicas, request.role
                    ),
                });
            }
            Ok(Some(ScaleAdvice {
                replicas: a.replicas,
                reason: truncate(&a.reason, MAX_MESSAGE_BYTES),
            }))
        })
    }

    /// Proceed or hold.
    fn gate_step(&self, request: &GateRequest) -> Result<GateDecision, PluginError> {
        let hook = Hook::GateStep;
        self.run(hook, Request::GateStep(gate_request(request)), |out| {
            let Response::GateStep(out) = out else {
                unexpected(hook)
            };
            Ok(match out.map_err(|m| self.failed(m))? {
                wit::GateDecision::Proceed => GateDecision::Proceed,
                wit::GateDecision::Hold(h) => GateDecision::Hold {
                    reason: truncate(&h.reason, MAX_MESSAGE_BYTES),
                    recheck_after_ms: h.recheck_after_ms,
                },
                wit::GateDecision::Abort(reason) => GateDecision::Abort {
                    reason: truncate(&reason, MAX_MESSAGE_BYTES),
                },
            })
        })
    }

    /// Violations of the plugin's rules: at most [`MAX_VIOLATIONS`], each short.
    fn validate(&self, request: &ValidateRequest) -> Result<Vec<Violation>, PluginError> {
        let hook = Hook::Validate;
        let wit_request = wit::ValidateRequest {
            set: request.set.clone(),
            config: request.config.clone(),
        };
        self.run(hook, Request::Validate(wit_request), |out| {
            let Response::Validate(out) = out else {
                unexpected(hook)
            };
            let more = out.len().saturating_sub(MAX_VIOLATIONS);
            let mut list: Vec<Violation> = out
                .into_iter()
                .take(MAX_VIOLATIONS)
                .map(|v| Violation {
                    field: truncate(&v.field, 256),
                    message: truncate(&v.message, MAX_MESSAGE_BYTES),
                })
                .collect();
            if more > 0 {
                list.push(Violation {
                    field: "spec".into(),
                    message: format!("and {more} more violations"),
                });
            }
            Ok(list)
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_newest_served_version_is_the_wit_files() {
        assert_eq!(super::SERVED[0], super::contract_version());
        let frozen = include_str!("../../../wit/0.1.0/plugin.wit");
        assert!(frozen.contains("package disaggregatedset:plugin@0.1.0;"));
    }
}
