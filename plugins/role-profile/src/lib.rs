//! `role-profile`: per-role patches to the pod templates, from config, with
//! presets for vLLM and SGLang prefill/decode disaggregation.
//!
//! ```yaml
//! plugins:
//!   - name: role-profile
//!     config:
//!       preset: vllm            # or sglang; optional
//!       container: vllm         # default: the first container
//!       roles:                  # optional, applied after the preset
//!         decode:
//!           args: ["--max-num-seqs", "512"]
//!           env: {VLLM_LOGGING_LEVEL: DEBUG}
//!           resources: {limits: {nvidia.com/gpu: "2"}}
//!           nodeSelector: {gpu: h100}
//!           tolerations: [{key: gpu, operator: Exists}]
//! ```
//!
//! A preset sets the KV-transfer arguments and env each engine needs for
//! prefill and decode, and puts the peer role's service address (the peer's
//! LeaderWorkerSet in the same slice and revision) in `DISAGG_PEER_ADDRESS`.

use disagg_plugin_sdk::{Hook, Patch, PatchRequest, Plugin, PodPatch, Value, json};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    preset: Option<Preset>,
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    roles: BTreeMap<String, RolePatch>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Preset {
    Vllm,
    Sglang,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RolePatch {
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    resources: Option<Value>,
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    tolerations: Vec<Value>,
}

pub struct RoleProfile;

impl Plugin for RoleProfile {
    const NAME: &'static str = "role-profile";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: &'static [Hook] = &[Hook::PatchRole];

    fn patch_role(req: PatchRequest) -> Result<Patch, String> {
        let cfg: Config = req.config()?;
        let mut patch = PodPatch::new(req.lws_json())?;
        let container = match &cfg.container {
            Some(c) => c.clone(),
            None => patch
                .first_container()
                .ok_or("the rendered LeaderWorkerSet has no container to patch")?
                .to_string(),
        };
        if let Some(preset) = cfg.preset {
            apply_preset(&mut patch, preset, &req, &container)?;
        }
        if let Some(rp) = cfg.roles.get(&req.role) {
            patch.args(&container, &rp.args);
            for (k, v) in &rp.env {
                patch.env(&container, k, v);
            }
            if let Some(r) = &rp.resources {
                patch.resources(&container, r.clone());
            }
            for (k, v) in &rp.node_selector {
                patch.node_selector(k, v);
            }
            for t in &rp.tolerations {
                patch.toleration(t.clone());
            }
        }
        Ok(patch.into_patch())
    }
}

/// The headless Service of the peer role's LWS in the same slice and revision.
fn peer_address(req: &PatchRequest, peer: &str) -> Result<String, String> {
    let (set, namespace) = req.set_meta()?;
    Ok(format!(
        "{set}-{}-{}-{peer}.{namespace}.svc.cluster.local",
        req.slice, req.revision
    ))
}

fn apply_preset(
    patch: &mut PodPatch,
    preset: Preset,
    req: &PatchRequest,
    container: &str,
) -> Result<(), String> {
    let (peer, producer) = match req.role.as_str() {
        "prefill" => ("decode", true),
        "decode" => ("prefill", false),
        _ => return Ok(()),
    };
    patch.env(container, "DISAGG_ROLE", &req.role);
    patch.env(container, "DISAGG_PEER_ADDRESS", &peer_address(req, peer)?);
    match preset {
        Preset::Vllm => {
            let kv = json!({
                "kv_connector": "NixlConnector",
                "kv_role": if producer { "kv_producer" } else { "kv_consumer" },
            });
            patch.args(
                container,
                &["--kv-transfer-config".to_string(), kv.to_string()],
            );
            patch.env(container, "VLLM_NIXL_SIDE_CHANNEL_PORT", "5600");
        }
        Preset::Sglang => {
            let mode = if producer { "prefill" } else { "decode" };
            patch.args(
                container,
                &[
                    "--disaggregation-mode",
                    mode,
                    "--disaggregation-transfer-backend",
                    "mooncake",
                ],
            );
            if producer {
                patch.args(container, &["--disaggregation-bootstrap-port", "8998"]);
            }
        }
    }
    Ok(())
}

disagg_plugin_sdk::export_plugin!(RoleProfile);
