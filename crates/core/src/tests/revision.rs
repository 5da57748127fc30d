use super::render::{set, two_roles};
use crate::revision::{TemplatePlugin, canonical_json, revision};
use disagg_api::set::{PlacementPolicy, PlacementType, RoleScaling, ScalingMode};
use serde_json::json;

#[test]
fn revision_is_eight_hex_digits_and_stable() {
    let s = set(two_roles());
    let r = revision(&s.spec, &[]);
    assert_eq!(r.len(), 8);
    assert!(r.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(r, revision(&set(two_roles()).spec, &[]));
}

#[test]
fn template_role_order_and_names_change_the_revision() {
    let base = revision(&set(two_roles()).spec, &[]);
    let mut s = set(two_roles());
    s.spec.roles[1]
        .spec
        .leader_worker_template
        .worker_template
        .0["spec"]["containers"][0]["image"] = json!("j");
    assert_ne!(revision(&s.spec, &[]), base);
    let mut s = set(two_roles());
    s.spec.roles.swap(0, 1);
    assert_ne!(revision(&s.spec, &[]), base);
    let mut s = set(two_roles());
    s.spec.roles[1].name = "generate".into();
    assert_ne!(revision(&s.spec, &[]), base);
    let mut s = set(two_roles());
    s.spec.roles.pop();
    assert_ne!(revision(&s.spec, &[]), base);
}

#[test]
fn replicas_slices_placement_scaling_and_metadata_do_not() {
    let base = revision(&set(two_roles()).spec, &[]);
    let mut s = set(two_roles());
    s.spec.roles[0].spec.replicas = 9;
    s.spec.slices = 4;
    s.spec.placement_policy = Some(PlacementPolicy {
        type_: PlacementType::ExclusiveSlice,
        topology: Some("rack".into()),
    });
    s.spec.roles[1].scaling = Some(RoleScaling {
        mode: ScalingMode::External,
    });
    s.spec.roles[0].metadata = None;
    assert_eq!(revision(&s.spec, &[]), base);
}

#[test]
fn template_plugins_bound_to_a_role_change_the_revision() {
    let s = set(two_roles());
    let base = revision(&s.spec, &[]);
    let config = json!({"preset": "vllm"}).as_object().unwrap().clone();
    let decode = vec!["decode".to_string()];
    let p = |digest, roles| TemplatePlugin {
        name: "role-profile",
        digest,
        config: Some(&config),
        roles,
    };
    let with = revision(&s.spec, &[p("sha256:aa", None)]);
    assert_ne!(with, base);
    assert_ne!(revision(&s.spec, &[p("sha256:bb", None)]), with);
    assert_ne!(revision(&s.spec, &[p("sha256:aa", Some(&decode))]), with);
    let other = json!({"preset": "sglang"}).as_object().unwrap().clone();
    let q = TemplatePlugin {
        config: Some(&other),
        ..p("sha256:aa", None)
    };
    assert_ne!(revision(&s.spec, &[q]), with);
}

#[test]
fn canonical_json_sorts_keys_at_every_level() {
    let a = json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": null}});
    assert_eq!(
        canonical_json(&a),
        r#"{"a":{"c":null,"d":[1,{"y":1,"z":0}]},"b":1}"#
    );
}
