//! What the operator ships with, so that every way of running it — the
//! deployed operator, `disagg dev`, `disagg render` — binds and runs the
//! same plugins.

use crate::core::bindings::{DefaultBinding, parse_defaults};

/// The default bindings of `deploy/deployment.yaml` (`DISAGG_DEFAULT_PLUGINS`);
/// a test keeps the two equal.
pub const DEFAULT_PLUGINS: &str = r#"[{"name": "role-profile"}]"#;

/// The shipped plugins' ConfigMaps, as `kubectl apply -k deploy/` creates them.
pub const PLUGIN_CONFIGMAPS: [&str; 5] = [
    include_str!("../../deploy/plugins/role-profile.yaml"),
    include_str!("../../deploy/plugins/ratio-scaler.yaml"),
    include_str!("../../deploy/plugins/rollout-gate.yaml"),
    include_str!("../../deploy/plugins/slo-gate.yaml"),
    include_str!("../../deploy/plugins/load-scaler.yaml"),
];

/// The shipped plugins' ConfigMaps, parsed.
pub fn plugin_configmaps() -> Vec<k8s_openapi::api::core::v1::ConfigMap> {
    PLUGIN_CONFIGMAPS
        .iter()
        .map(|yaml| serde_yaml_ng::from_str(yaml).expect("deploy/plugins holds ConfigMaps"))
        .collect()
}

/// Every shipped plugin's component (gzip-compressed), by plugin name.
pub fn shipped_components() -> std::collections::BTreeMap<String, Vec<u8>> {
    plugin_configmaps()
        .into_iter()
        .map(|cm| {
            let bytes = crate::controller::plugins::component_of(&cm)
                .expect("deploy/plugins ConfigMaps hold a component");
            (cm.metadata.name.unwrap_or_default(), bytes)
        })
        .collect()
}

/// [`DEFAULT_PLUGINS`], parsed.
pub fn default_bindings() -> Vec<DefaultBinding> {
    parse_defaults(DEFAULT_PLUGINS).expect("DEFAULT_PLUGINS parses")
}
