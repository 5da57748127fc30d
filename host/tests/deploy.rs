//! `deploy/` (what `kubectl apply -k deploy/` installs) checked against the
//! Kubernetes schemas (the k8s-openapi types, generated from the API's
//! OpenAPI: an unknown field or a wrong type fails), against our policies
//! (least privilege, hardened pod), and the plugin ConfigMaps against the
//! runtime and `plugins/`.

mod common;

use common::repo;
use serde_json::Value;
use std::process::Command;

fn kustomize() -> Option<Vec<Value>> {
    let out = match Command::new("kubectl")
        .arg("kustomize")
        .arg(repo("deploy"))
        .output()
    {
        Ok(out) => out,
        Err(_) if std::env::var_os("DISAGG_REQUIRE_EXAMPLES").is_none() => {
            eprintln!("SKIPPED: kubectl is not installed");
            return None;
        }
        Err(e) => panic!("kubectl: {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect(),
    )
}

/// Round-trips `doc` through the typed Kubernetes object; returns the first
/// path where something was lost or changed (an unknown or misspelt field).
fn check_typed<T: serde::de::DeserializeOwned + serde::Serialize>(
    doc: &Value,
) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).unwrap();
    first_difference(doc, &back, "").map_or(Ok(()), Err)
}

fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.iter().find_map(|(k, v)| match y.get(k) {
            None if !v.is_null() => Some(format!("{at}.{k}: not a field of this kind")),
            None => None,
            Some(w) => first_difference(v, w, &format!("{at}.{k}")),
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{at}[{i}]"))),
        _ if a == b => None,
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ => Some(format!("{at}: {a} is read back as {b}")),
    }
}

#[test]
fn the_manifests_match_the_kubernetes_schemas_and_our_policies() {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let Some(docs) = kustomize() else { return };
    let mut kinds = Vec::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let checked = match kind.as_str() {
            "Namespace" => check_typed::<core::Namespace>(doc),
            "ServiceAccount" => check_typed::<core::ServiceAccount>(doc),
            "ConfigMap" => check_typed::<core::ConfigMap>(doc),
            "Service" => check_typed::<core::Service>(doc),
            "Deployment" => check_typed::<apps::Deployment>(doc),
            "PodDisruptionBudget" => {
                check_typed::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(doc)
            }
            "ClusterRole" => check_typed::<rbac::ClusterRole>(doc),
            "ClusterRoleBinding" => check_typed::<rbac::ClusterRoleBinding>(doc),
            "Role" => check_typed::<rbac::Role>(doc),
            "RoleBinding" => check_typed::<rbac::RoleBinding>(doc),
            "CustomResourceDefinition" => check_typed::<CustomResourceDefinition>(doc),
            other => Err(format!("unexpected kind {other}")),
        };
        if let Err(e) = checked {
            panic!("{kind} {name}: {e}");
        }
        if doc["metadata"].get("namespace").is_some() {
            assert_eq!(doc["metadata"]["namespace"], "lws-system", "{kind} {name}");
        }
        kinds.push(kind);
    }
    for wanted in [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "Role",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ConfigMap",
    ] {
        assert!(
            kinds.iter().any(|k| k == wanted),
            "deploy/ installs no {wanted}"
        );
    }

    // Least privilege: no Secrets, no wildcards, ConfigMaps only through the namespaced Role.
    for doc in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")))
    {
        for rule in doc["rules"].as_array().unwrap() {
            let text = rule.to_string();
            assert!(!text.contains("secrets") && !text.contains('*'), "{text}");
            if doc["kind"] == "ClusterRole" {
                assert!(
                    !text.contains("configmaps"),
                    "ConfigMaps are read in the operator's namespace only: {text}"
                );
            }
        }
    }
    // The pod: non-root, read-only root filesystem, probes, requests.
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    // Two replicas never share a node, and a drain keeps one.
    assert_eq!(deployment["spec"]["replicas"], 2);
    let anti =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    let pdb = docs
        .iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .unwrap();
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let container = &pod["containers"][0];
    assert!(container["startupProbe"]["httpGet"]["path"].is_string());
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert!(container["livenessProbe"].is_object() && container["readinessProbe"].is_object());
    assert!(container["resources"]["requests"]["cpu"].is_string());

    // The default bindings parse, name shipped plugins, and are those `disagg dev` uses.
    let defaults = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DISAGG_DEFAULT_PLUGINS")
        .expect("the Deployment sets DISAGG_DEFAULT_PLUGINS")["value"]
        .as_str()
        .unwrap();
    let parsed = disagg::core::bindings::parse_defaults(defaults).unwrap();
    assert_eq!(
        parsed,
        disagg::core::bindings::parse_defaults(disagg::defaults::DEFAULT_PLUGINS).unwrap()
    );
    for b in &parsed {
        assert!(
            docs.iter()
                .any(|d| d["kind"] == "ConfigMap"
                    && d["metadata"]["name"] == b.binding.name.as_str()),
            "default plugin {} has no ConfigMap in deploy/",
            b.binding.name
        );
    }
}

#[test]
fn the_plugin_configmaps_hold_the_default_plugins_as_built_from_plugins() {
    use disagg::plugin::{Limits, Runtime};
    let rt = Runtime::new(Limits::default()).unwrap();
    for name in [
        "role-profile",
        "ratio-scaler",
        "rollout-gate",
        "slo-gate",
        "load-scaler",
    ] {
        let file = repo(&format!("deploy/plugins/{name}.yaml"));
        let cm: k8s_openapi::api::core::v1::ConfigMap =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(
            cm.metadata.labels.unwrap()[disagg::api::keys::PLUGIN],
            "true"
        );
        let bytes = &cm.binary_data.unwrap()["plugin.wasm.gz"].0;
        let plugin = rt
            .load(name, bytes)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(plugin.info.name, name);
        assert_eq!(
            cm.metadata.annotations.unwrap()["disaggregatedset.x-k8s.io/digest"],
            plugin.digest
        );
        // The same component the sources build today (deploy/generate-plugins.sh).
        let built = Runtime::digest(&std::fs::read(common::component(name)).unwrap()).unwrap();
        assert_eq!(
            plugin.digest, built,
            "deploy/plugins/{name}.yaml is stale: run deploy/generate-plugins.sh"
        );
    }
}
