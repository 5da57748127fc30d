//! What the operator ships with, so that every way of running it — the
//! deployed operator, `disagg dev`, `disagg render` — binds and runs the
//! same plugins.

use crate::core::bindings::{DefaultBinding, parse_defaults};

/// The default bindings of `deploy/deployment.yaml` (`DISAGG_DEFAULT_PLUGINS`);
/// a test keeps the two equal.
pub const DEFAULT_PLUGINS: &str = r#"[{"name": "role-profile"}]"#;

/// The shipped plugins' ConfigMaps, as `kubectl apply -k deploy/` creates them.
pub const PLUGIN_CONFIGMAPS: [&str; 3] = [
    include_str!("../../deploy/plugins/role-profile.yaml"),
    include_str!("../../deploy/plugins/ratio-scaler.yaml"),
    include_str!("../../deploy/plugins/rollout-gate.yaml"),
];

/// The shipped plugins' ConfigMaps, parsed.
pub fn plugin_configmaps() -> Vec<k8s_openapi::api::core::v1::ConfigMap> {
    PLUGIN_CONFIGMAPS
        .iter()
        .map(|yaml| serde_yaml_ng::from_str(yaml).expect("deploy/plugins holds ConfigMaps"))
        .collect()
}

/// The component of the shipped plugin `name` (gzip-compressed), if there is one.
pub fn shipped_component(name: &str) -> Option<Vec<u8>> {
    plugin_configmaps()
        .into_iter()
        .find(|cm| cm.metadata.name.as_deref() == Some(name))
        .map(|cm| {
            crate::controller::plugins::component_of(&cm)
                .expect("deploy/plugins ConfigMaps hold a component")
        })
}

/// [`DEFAULT_PLUGINS`], parsed.
pub fn default_bindings() -> Vec<DefaultBinding> {
    parse_defaults(DEFAULT_PLUGINS).expect("DEFAULT_PLUGINS parses")
}
