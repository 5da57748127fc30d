//! The plugin runtime (DESIGN §6.2): sandboxed WebAssembly components that
//! implement `wit/plugin.wit`. No kube dependency lives here.
//!
//! * One [`Runtime`] holds one wasmtime `Engine` with epoch interruption and
//!   the pooling allocator.
//! * A component is compiled once per sha256 digest and kept pre-linked
//!   ([`LoadedPlugin`]); every call gets a fresh `Store` and instance, so a
//!   plugin that trapped or ran wild cannot affect the next call.
//! * Each call has a deadline, a memory cap and an output cap ([`Limits`]);
//!   breaking one is a typed [`PluginError`].
//! * Plugins see no filesystem, network, environment or arguments. Their
//!   stdout/stderr and `host.log` lines go to `tracing`, tagged with the plugin.
//! * Calls are synchronous and CPU-bound; async callers use the `*_async`
//!   wrappers, which run them on tokio's blocking pool.

pub mod bindings;
mod error;
mod runtime;

pub use error::PluginError;
pub use runtime::{
    CONTRACT_VERSION, GateDecision, GateInput, Hook, Limits, LoadedPlugin, Observer, PatchInput,
    PluginInfo, RoleReplicas, RoleStep, Runtime, ScaleAdvice, ScaleInput, Violation,
};
