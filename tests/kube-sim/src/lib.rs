//! `kube-sim`: an in-memory Kubernetes API server for the operator's tests and
//! for `disagg dev` (DESIGN §7, issue #4).
//!
//! **Work in progress.** Built so far: the object store ([`store`]) with
//! resourceVersions, uid, creationTimestamp, generation, optimistic concurrency,
//! finalizers, label/field selectors, pagination, and a watch log with
//! compaction and 410 Expired; label-selector parsing ([`selector`]); and the
//! HTTP server ([`server`]) for the built-in kinds and for resources that
//! CRDs define (schema validation, pruning and defaults).
//! Fault injection lives in [`faults`].
//! Not built yet: server-side apply, CEL rules,
//! OpenAPI and aggregated discovery,
//! foreground deletion and the LWS simulator.
#![forbid(unsafe_code)]

pub mod faults;
pub mod fields;
pub mod lws_sim;
pub mod openapi;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;
