//! The plugin host: sandboxed WebAssembly components that implement
//! `wit/plugin.wit`, behind the core's plugin interface
//! ([`disagg_core::plugins::Plugin`]). No kube dependency lives here.
//!
//! ```text
//! disagg-api ← disagg-core ← disagg-plugin ← disagg-controller ← disagg (CLI)
//! ```
//!
//! * `runtime`: one wasmtime `Engine` with epoch interruption and the
//!   pooling allocator; loading (decompress, compile with a deadline, check
//!   the contract version, `describe`). The runtime keeps no components:
//!   whoever loads one owns it (the controller's registry, by name), and it
//!   is freed with its last holder ([`Runtime::compiled_count`]).
//! * `sandbox`: every call gets a fresh `Store` and instance, so a plugin
//!   that trapped or ran wild cannot affect the next call; each has a
//!   deadline, a memory cap and an output cap ([`Limits`]); breaking one is
//!   a typed [`PluginError`]. Plugins see no filesystem, network,
//!   environment or arguments (`docs/sandbox.md`).
//! * `budget`: what the deadline counts — the call's own time (its thread's
//!   CPU time and its waits in host calls), not time the node kept it off
//!   the CPU — and the wall-clock bound of ten deadlines behind it.
//! * `contract`: the WIT bindings and their one mapping to and from the
//!   core's types; nothing else here or above sees a WIT type.
//!
//! Calls block their thread for up to the deadline (ten on a starved node):
//! async callers run them off their executor (the controller decides on
//! tokio's blocking pool).
#![forbid(unsafe_code)]

mod budget;
mod contract;
mod limits;
mod runtime;
mod sandbox;

pub use contract::contract_version;
pub use disagg_core::plugins::*;
pub use limits::Limits;
pub use runtime::{LoadedPlugin, Observer, Runtime};
