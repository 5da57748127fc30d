//! The `disagg` CLI: the operator (`disagg run`), the offline tools
//! (`render`, `plan`, `crds`, `plugin`), and, with the `dev` feature (on by
//! default, off in the operator's image), `disagg dev`.
//!
//! The top of the crate graph (`docs/architecture.md`); each crate below
//! is re-exported under its short name:
//!
//! ```text
//! disagg-api ← disagg-core ← disagg-plugin ← disagg-controller ← disagg (CLI)
//!     ↑
//! kube-sim (tests, `disagg dev`)
//! ```
#![forbid(unsafe_code)]

pub use disagg_api as api;
pub use disagg_controller as controller;
pub use disagg_core as core;
pub use disagg_plugin as plugin;

pub mod defaults;
#[cfg(feature = "dev")]
pub mod dev;
pub mod input;
pub mod kubectl;
#[cfg(feature = "dev")]
pub mod local_prometheus;
pub mod plugin_new;
pub mod plugin_run;
pub mod render;
