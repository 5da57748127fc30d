//! The plugin runtime, exercised with real compiled components: the default
//! plugins, the Rust example, and hostile ones.

mod bindings;
#[path = "../common/mod.rs"]
mod common;
mod sandbox;
mod shipped;

use common::{component, disagg, handmade_component, plugin_run, read, repo};
use disagg::core::patch::{LwsPatch, apply};
use disagg::core::render::render_child;
use disagg::core::revision::revision;
use disagg::plugin::{
    GateDecision, GateRequest, Hook, Limits, PatchRequest, Plugin, PluginError, RoleReplicas,
    Runtime, ScaleRequest,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::temp_file;

fn runtime() -> Arc<Runtime> {
    Runtime::new(Limits::default()).unwrap()
}

fn load(rt: &Arc<Runtime>, name: &str) -> Arc<disagg::plugin::LoadedPlugin> {
    rt.load(name, &read(&component(name)))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn patch_input(
    set_file: &str,
    role_index: usize,
    config: Value,
) -> (disagg::api::lws::LeaderWorkerSet, PatchRequest) {
    let set = disagg::input::load_set(&repo(set_file)).unwrap();
    let rev = revision(&set.spec, &[]);
    let role = &set.spec.roles[role_index];
    let lws = render_child(&set, role, 0, &rev, role.spec.replicas);
    let input = PatchRequest {
        set: serde_json::to_string(&set).unwrap(),
        role: role.name.clone(),
        slice: 0,
        revision: rev,
        lws: serde_json::to_string(&lws).unwrap(),
        config: config.to_string(),
    };
    (lws, input)
}

fn gate_input(
    config: Value,
    held_for_ms: u64,
    annotations: &[(&str, &str)],
    now_ms: u64,
) -> GateRequest {
    GateRequest {
        held_for_ms,
        now_ms,
        ..common::gate_request(annotations, config)
    }
}

fn container(lws: &disagg::api::lws::LeaderWorkerSet) -> Value {
    lws.spec.leader_worker_template.worker_template.0["spec"]["containers"][0].clone()
}

fn scale(
    p: &disagg::plugin::LoadedPlugin,
    role: &str,
    prefill: i32,
    config: Value,
) -> Result<Option<i32>, PluginError> {
    let input = ScaleRequest {
        set: "{}".into(),
        roles: vec![
            RoleReplicas {
                name: "prefill".into(),
                desired: prefill,
                observed: prefill,
                ready: prefill,
            },
            RoleReplicas {
                name: "decode".into(),
                desired: 1,
                observed: 1,
                ready: 1,
            },
        ],
        role: role.into(),
        config: config.to_string(),
        signals: vec![],
        last_scaled_ms: None,
        now_ms: 0,
    };
    p.scale_role(&input).map(|a| a.map(|a| a.replicas))
}
