//! `disagg plugin run`: one hook call on a component, offline, as the
//! operator would make it — so a plugin can be tried before it is deployed.
//! The answer, the time it took and the memory it held are printed as JSON;
//! what the plugin logs or prints goes to stderr.

use crate::core::plugins::{
    GateRequest, Hook, PatchRequest, Plugin, RoleReplicas, ScaleRequest, ValidateRequest,
};
use crate::core::render::render_child;
use crate::core::revision::revision;
use crate::plugin::{Limits, Runtime};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::path::Path;

/// What to call and with what.
pub struct Call<'a> {
    pub file: &'a Path,
    pub hook: &'a str,
    /// The request, as JSON in the shape of `wit/plugin.wit` (camelCase).
    pub request: Option<&'a Path>,
    /// Or a set, to build the request the operator would send for it.
    pub set: Option<&'a Path>,
    /// The role a `--set` request is about (default: the first).
    pub role: Option<&'a str>,
    /// The binding's config (default: the set's binding of this plugin, or `{}`).
    pub config: Option<&'a str>,
    /// The call's deadline (default: the operator's).
    pub deadline: Option<std::time::Duration>,
}

/// Why a run printed no answer.
#[derive(Debug)]
pub enum Failed {
    /// The command's input (the file, the request, the set) is unusable.
    Input(String),
    /// The plugin was called and failed (timeout, trap, its own error, …).
    Plugin(String),
}

impl From<String> for Failed {
    fn from(e: String) -> Self {
        Failed::Input(e)
    }
}

pub fn run(call: &Call<'_>) -> Result<String, Failed> {
    let hook = match call.hook {
        "patch-role" => Hook::PatchRole,
        "scale-role" => Hook::ScaleRole,
        "gate-step" => Hook::GateStep,
        "validate" => Hook::Validate,
        other => {
            return Err(Failed::Input(format!(
                "--hook {other:?}: one of patch-role, scale-role, gate-step, validate"
            )));
        }
    };
    let bytes = std::fs::read(call.file)
        .map_err(|e| format!("{}: cannot read: {e}", call.file.display()))?;
    let name = call
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".gz").trim_end_matches(".wasm"))
        .unwrap_or("plugin");
    let tools = Limits::for_tools();
    let runtime = Runtime::new(Limits {
        deadline: call.deadline.unwrap_or(tools.deadline),
        ..tools
    })?;
    let plugin = runtime
        .load(name, &bytes)
        .map_err(|e| format!("{}: {e}", call.file.display()))?;
    let request = match (call.request, call.set) {
        (Some(path), None) => from_file(path)?,
        // The set's binding is found by the name the plugin gives itself.
        (None, Some(path)) => from_set(path, hook, &plugin.info().name, call.role, call.config)?,
        _ => {
            return Err(Failed::Input(
                "give exactly one of --request REQ.json and --set SET.yaml".into(),
            ));
        }
    };
    let started = std::time::Instant::now();
    let answer = match hook {
        Hook::PatchRole => plugin
            .patch_role(&typed::<PatchRequest>(request)?)
            .map(|a| json!(a)),
        Hook::ScaleRole => plugin
            .scale_role(&typed::<ScaleRequest>(request)?)
            .map(|a| json!(a)),
        Hook::GateStep => plugin
            .gate_step(&typed::<GateRequest>(request)?)
            .map(|a| json!(a)),
        Hook::Validate => plugin
            .validate(&typed::<ValidateRequest>(request)?)
            .map(|a| json!(a)),
    };
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let report = json!({
        "hook": hook.name(),
        "millis": (millis * 100.0).round() / 100.0,
        "memoryBytes": runtime.last_call_memory(),
    });
    match answer {
        Ok(answer) => {
            let mut report = report;
            report["answer"] = answer;
            Ok(format!(
                "{}\n",
                serde_json::to_string_pretty(&report).expect("JSON")
            ))
        }
        Err(e) => Err(Failed::Plugin(format!("{e} ({report})"))),
    }
}

/// A request file; `set`, `lws` and `config` may be JSON objects (they are
/// passed to the plugin as JSON text).
fn from_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut request: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    for key in ["set", "lws", "config"] {
        if let Some(v) = request.get(key).filter(|v| !v.is_string()) {
            request[key] = json!(v.to_string());
        }
    }
    if request.get("config").is_none() {
        request["config"] = json!("{}");
    }
    Ok(request)
}

/// The request the operator would send for a set with no children yet, for
/// one role: the rendered child (before other plugins' patches) for
/// `patch-role`, the spec's replicas for `scale-role`, the set for `validate`.
fn from_set(
    path: &Path,
    hook: Hook,
    plugin: &str,
    role: Option<&str>,
    config: Option<&str>,
) -> Result<Value, String> {
    let set = crate::input::load_set(path).map_err(|e| e.to_string())?;
    let config = match config {
        Some(c) => serde_json::from_str::<Value>(c)
            .map_err(|e| format!("--config: not JSON: {e}"))?
            .to_string(),
        None => set
            .spec
            .plugins
            .iter()
            .find(|b| b.name == plugin)
            .and_then(|b| b.config.clone())
            .map_or("{}".to_string(), |c| Value::Object(c).to_string()),
    };
    let spec = match role {
        Some(r) => set
            .spec
            .roles
            .iter()
            .find(|x| x.name == r)
            .ok_or_else(|| format!("--role {r}: the set has no such role"))?,
        None => &set.spec.roles[0],
    };
    let set_json = serde_json::to_string(&set).expect("a set serialises");
    Ok(match hook {
        Hook::PatchRole => {
            let rev = revision(&set.spec, &[]);
            let lws = render_child(&set, spec, 0, &rev, spec.spec.replicas);
            json!(PatchRequest {
                set: set_json,
                role: spec.name.clone(),
                slice: 0,
                revision: rev,
                lws: serde_json::to_string(&lws).expect("an LWS serialises"),
                config,
            })
        }
        Hook::ScaleRole => json!(ScaleRequest {
            set: set_json,
            roles: set
                .spec
                .roles
                .iter()
                .map(|r| RoleReplicas {
                    name: r.name.clone(),
                    desired: r.spec.replicas,
                    observed: 0,
                    ready: 0,
                })
                .collect(),
            role: spec.name.clone(),
            signals: Vec::new(),
            last_scaled_ms: None,
            now_ms: 0,
            config,
        }),
        Hook::Validate => json!(ValidateRequest {
            set: set_json,
            config
        }),
        Hook::GateStep => {
            return Err("gate-step needs --request: a step exists only mid-rollout (`disagg render --revision-from` shows a rollout's steps)".into());
        }
    })
}

fn typed<T: DeserializeOwned>(request: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(request)
        .map_err(|e| format!("the request: {}: {}", e.path(), e.inner()))
}
