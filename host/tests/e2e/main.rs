//! End to end: the `disagg` binary, unmodified, runs as its own process
//! against the in-memory cluster (kube-sim, with its LWS simulator), and is
//! observed through the API only. One test binary, one module per theme.

mod bad_input;
#[path = "../common/mod.rs"]
mod common;
mod faults;
mod harness;
mod kubectl_verbs;
mod lifecycle;
mod plugins;
mod rollout_ops;
mod rollouts;
mod signals;
mod trust;
mod upstream;
