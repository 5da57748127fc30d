//! The pure core: no client, no I/O. Everything here is tested with plain values.
//!
//! Where it sits (`docs/architecture.md`):
//!
//! ```text
//! disagg-api ← disagg-core ← disagg-plugin ← disagg-controller ← disagg (CLI)
//! ```
//!
//! [`decide`] is the one entry point: observed objects in, a [`decide::Plan`]
//! out. Underneath it, `revision` and `render` turn a set into child objects,
//! `adopt` recognises children that already run the set's templates,
//! `plan` is the rollout planner (numbers only, `docs/planner.md`), `execute`
//! turns observed children into the next actions, `bindings` runs the set's
//! plugins through the [`plugins`] interface, and `status` summarises it all.
#![forbid(unsafe_code)]

pub mod adopt;
pub mod bindings;
pub mod decide;
pub mod execute;
pub mod patch;
pub mod plan;
pub mod plugins;
pub mod render;
pub mod revision;
pub mod signals;
pub mod simulate;
pub mod status;
pub mod text;

#[cfg(test)]
mod tests;
