//! Write plugins for the DisaggregatedSet operator in Rust.
//!
//! Implement [`Plugin`] (every hook has a default, so write only the ones you
//! need), list them in [`Plugin::HOOKS`], and export the type:
//!
//! ```ignore
//! use disagg_plugin_sdk::{GateDecision, GateRequest, Hook, Plugin};
//!
//! struct AlwaysProceed;
//!
//! impl Plugin for AlwaysProceed {
//!     const NAME: &'static str = "always-proceed";
//!     const VERSION: &'static str = "0.1.0";
//!     const HOOKS: &'static [Hook] = &[Hook::GateStep];
//!
//!     fn gate_step(_req: GateRequest) -> Result<GateDecision, String> {
//!         Ok(GateDecision::Proceed)
//!     }
//! }
//!
//! disagg_plugin_sdk::export_plugin!(AlwaysProceed);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release` and a
//! `crate-type = ["cdylib"]` library: the `.wasm` file is the component.
//! See this crate's README for the whole tutorial.

// Lets generated code name this crate the same way from inside and outside it.
extern crate self as disagg_plugin_sdk;

mod patch;
mod types;

pub use patch::PodPatch;
pub use serde_json::{self, Map, Value, json};
pub use types::*;

/// The generated WIT bindings. Plugin authors do not need them directly.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_bindings",
        runtime_path: "::disagg_plugin_sdk::__private::wit_bindgen::rt",
    });
}

/// A plugin. Every hook has a default; implement the ones you list in `HOOKS`.
pub trait Plugin {
    /// Reported by `describe` (the operator knows the plugin by its ConfigMap's name).
    const NAME: &'static str;
    /// Reported by `describe`.
    const VERSION: &'static str;
    /// The hooks this plugin implements; the host calls no others.
    const HOOKS: &'static [Hook];

    /// Patch the LeaderWorkerSet rendered for one role of one slice.
    fn patch_role(_req: PatchRequest) -> Result<Patch, String> {
        Ok(Patch::None)
    }

    /// Propose replicas for a role; `None` leaves it as it is.
    fn scale_role(_req: ScaleRequest) -> Result<Option<ScaleAdvice>, String> {
        Ok(None)
    }

    /// Decide whether the next rollout step may be taken.
    fn gate_step(_req: GateRequest) -> Result<GateDecision, String> {
        Ok(GateDecision::Proceed)
    }

    /// Check a set against your rules; an empty list passes.
    fn validate(_req: ValidateRequest) -> Result<Vec<Violation>, String> {
        Ok(Vec::new())
    }
}

/// Writes to the operator's log, tagged with the plugin's name.
pub mod log {
    use crate::bindings::disaggregatedset::plugin::host;
    use crate::bindings::disaggregatedset::plugin::types::Level;

    pub fn debug(message: &str) {
        host::log(Level::Debug, message);
    }
    pub fn info(message: &str) {
        host::log(Level::Info, message);
    }
    pub fn warn(message: &str) {
        host::log(Level::Warn, message);
    }
    pub fn error(message: &str) {
        host::log(Level::Error, message);
    }
}

/// Exports a [`Plugin`] as the component's `hooks`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __DisaggPluginExport;

        impl $crate::__private::Guest for __DisaggPluginExport {
            fn describe() -> $crate::__private::wit::PluginInfo {
                $crate::__private::describe::<$plugin>()
            }
            fn patch_role(
                request: $crate::__private::wit::PatchRequest,
            ) -> Result<$crate::__private::wit::Patch, String> {
                $crate::__private::patch_role::<$plugin>(request)
            }
            fn scale_role(
                request: $crate::__private::wit::ScaleRequest,
            ) -> Result<Option<$crate::__private::wit::ScaleAdvice>, String> {
                $crate::__private::scale_role::<$plugin>(request)
            }
            fn gate_step(
                request: $crate::__private::wit::GateRequest,
            ) -> Result<$crate::__private::wit::GateDecision, String> {
                $crate::__private::gate_step::<$plugin>(request)
            }
            fn validate(
                request: $crate::__private::wit::ValidateRequest,
            ) -> Vec<$crate::__private::wit::Violation> {
                $crate::__private::validate::<$plugin>(request)
            }
        }

        $crate::bindings::__export_bindings!(__DisaggPluginExport with_types_in $crate::bindings);
    };
}

/// Glue between the generated bindings and [`Plugin`]. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::disaggregatedset::plugin::types as wit;
    pub use crate::bindings::exports::disaggregatedset::plugin::hooks::Guest;
    pub use wit_bindgen;

    use crate::Plugin;

    pub fn describe<P: Plugin>() -> wit::PluginInfo {
        wit::PluginInfo {
            name: P::NAME.to_string(),
            version: P::VERSION.to_string(),
            hooks: P::HOOKS.iter().map(|h| h.to_wit()).collect(),
        }
    }

    pub fn patch_role<P: Plugin>(r: wit::PatchRequest) -> Result<wit::Patch, String> {
        P::patch_role(crate::PatchRequest::from_wit(r)?)?.into_wit()
    }

    pub fn scale_role<P: Plugin>(r: wit::ScaleRequest) -> Result<Option<wit::ScaleAdvice>, String> {
        Ok(
            P::scale_role(crate::ScaleRequest::from_wit(r)?)?.map(|a| wit::ScaleAdvice {
                replicas: a.replicas,
                reason: a.reason,
            }),
        )
    }

    pub fn gate_step<P: Plugin>(r: wit::GateRequest) -> Result<wit::GateDecision, String> {
        Ok(match P::gate_step(crate::GateRequest::from_wit(r)?)? {
            crate::GateDecision::Proceed => wit::GateDecision::Proceed,
            crate::GateDecision::Hold {
                reason,
                recheck_after_ms,
            } => wit::GateDecision::Hold(wit::Hold {
                reason,
                recheck_after_ms,
            }),
            crate::GateDecision::Abort(reason) => wit::GateDecision::Abort(reason),
        })
    }

    pub fn validate<P: Plugin>(r: wit::ValidateRequest) -> Vec<wit::Violation> {
        let result = crate::ValidateRequest::from_wit(r).and_then(P::validate);
        match result {
            Ok(list) => list
                .into_iter()
                .map(|v| wit::Violation {
                    field: v.field,
                    message: v.message,
                })
                .collect(),
            // `validate` has no error channel: a plugin that cannot check says so as a violation.
            Err(message) => vec![wit::Violation {
                field: "spec".into(),
                message: format!("plugin could not validate: {message}"),
            }],
        }
    }
}
