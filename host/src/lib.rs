//! The DisaggregatedSet operator.
//!
//! Dependencies point one way (DESIGN §2):
//!
//! ```text
//! api (types, CRDs, validation) ← core (render, revision, plan, execute, status) ← CLI
//! ```
//!
//! The plugin runtime and the controller are not built yet; see README.
#![forbid(unsafe_code)]

pub mod api;
pub mod core;
pub mod input;
pub mod plugin;
