//! `kube-sim`: an in-memory Kubernetes API server for the operator's tests and
//! for `disagg dev` (`docs/architecture.md`, issue #4).
//!
//! The object store ([`store`]) keeps resourceVersions, uid, generation,
//! finalizers and the watch log; [`server`] serves it over the Kubernetes REST
//! paths (CRDs, subresources, watch, patches, [`fields`]: server-side apply,
//! [`openapi`], [`table`]: kubectl's printing); [`faults`] breaks it on
//! purpose; [`lws_sim`] plays the LWS controller. Known differences from a real
//! API server are listed in `tests/README.md`.
#![forbid(unsafe_code)]

pub mod faults;
pub mod fields;
pub mod lws_sim;
pub mod openapi;
pub mod selector;
pub mod server;
pub mod serving;
pub mod store;
pub mod table;

/// A kubeconfig for a plain-HTTP server on `addr` without authentication.
pub fn kubeconfig(addr: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-sim\n  cluster:\n    server: http://{addr}\nusers:\n- name: kube-sim\n  user: {{}}\ncontexts:\n- name: kube-sim\n  context:\n    cluster: kube-sim\n    user: kube-sim\n    namespace: default\ncurrent-context: kube-sim\n"
    )
}
