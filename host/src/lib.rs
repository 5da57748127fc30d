//! The DisaggregatedSet operator.
//!
//! Dependencies point one way (DESIGN §2):
//!
//! ```text
//! api (types, CRDs, validation) ← core (render, revision, plan, execute, status)
//!     ← plugin (wasmtime runtime, bindings) ← controller (kube-rs) ← CLI
//! ```
#![forbid(unsafe_code)]

pub mod api;
pub mod controller;
pub mod core;
pub mod dev;
pub mod input;
pub mod plugin;
