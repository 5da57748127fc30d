//! The pure core: no client, no I/O. Everything here is tested with plain values.
//!
//! `revision` and `render` turn a set into child objects, `plan` decides the
//! next rollout step from numbers, `execute` turns observed children into the
//! API writes to make, and `status` summarises it all for the user.
pub mod execute;
pub mod patch;
pub mod plan;
pub mod render;
pub mod revision;
pub mod simulate;
pub mod status;

#[cfg(test)]
mod tests;
