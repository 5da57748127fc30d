//! The pure core: no client, no I/O. Everything here is tested with plain values.
pub mod plan;
