use super::set::DisaggregatedSet;
use super::structural::{apply_defaults, check, prune};
use super::validate::validate;
use serde_json::{Value, json};

fn role(name: &str, replicas: i32) -> Value {
    json!({"name": name, "spec": {"replicas": replicas, "leaderWorkerTemplate": {"workerTemplate": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}})
}

fn set_with(name: &str, spec: Value) -> DisaggregatedSet {
    serde_json::from_value(json!({"apiVersion": "disaggregatedset.x-k8s.io/v1", "kind": "DisaggregatedSet", "metadata": {"name": name}, "spec": spec})).unwrap()
}

fn messages(s: &DisaggregatedSet) -> Vec<String> {
    validate(s).iter().map(ToString::to_string).collect()
}

#[test]
fn a_good_set_is_valid() {
    assert_eq!(
        messages(&set_with(
            "llm",
            json!({"roles": [role("prefill", 1), role("decode", 2)]})
        )),
        Vec::<String>::new()
    );
}

#[test]
fn each_rule_names_its_field() {
    let mut r1 = role("decode", 2);
    r1["spec"]["rolloutStrategy"] = json!({"type": "RollingUpdate", "rollingUpdateConfiguration": {"partition": 1, "maxSurge": 1, "maxUnavailable": 0}});
    let cases: Vec<(DisaggregatedSet, &str)> = vec![
        (
            set_with("llm", json!({"roles": [role("prefill", 1), r1]})),
            "spec.roles[1].spec.rolloutStrategy.rollingUpdateConfiguration.partition: must be 0",
        ),
        (
            set_with(
                "llm",
                json!({"roles": [role("prefill", 0), role("decode", 2)]}),
            ),
            "spec.roles: replicas must be zero for all non-External roles",
        ),
        (
            set_with(
                "1llm",
                json!({"roles": [role("prefill", 1), role("decode", 1)]}),
            ),
            "metadata.name: \"1llm\" must be a DNS-1035 label",
        ),
        (
            set_with("llm", json!({"roles": [role("prefill", 1)]})),
            "spec.roles: must have 2 to 10 roles, has 1",
        ),
        (
            set_with(
                "llm",
                json!({"roles": [role("prefill", 1), role("prefill", 1)]}),
            ),
            "spec.roles[1].name: duplicate role name",
        ),
        (
            set_with(
                "llm",
                json!({"roles": [role("prefill", 1), role("Decode", 1)]}),
            ),
            "spec.roles[1].name: \"Decode\" must be a DNS label",
        ),
        (
            set_with(
                &"a".repeat(50),
                json!({"roles": [role("prefill", 1), role("decode", 1)]}),
            ),
            "spec.roles[0].name: child LeaderWorkerSet name <set>-<slice>-<rev8>-<role> would be 69",
        ),
        (
            set_with(
                "llm",
                json!({"slices": 0, "roles": [role("prefill", 1), role("decode", 1)]}),
            ),
            "spec.slices: must be between 1 and 100, is 0",
        ),
        (
            set_with(
                "llm",
                json!({"placementPolicy": {"type": "ExclusiveSlice"}, "roles": [role("prefill", 1), role("decode", 1)]}),
            ),
            "spec.placementPolicy.topology: required when type is ExclusiveSlice",
        ),
        (
            set_with(
                "llm",
                json!({"plugins": [{"name": "gate", "roles": ["nope"]}], "roles": [role("prefill", 1), role("decode", 1)]}),
            ),
            "spec.plugins[0].roles[0]: no role named \"nope\"",
        ),
        (
            set_with(
                "llm",
                json!({"plugins": [{"name": "gate", "digest": "md5:1"}], "roles": [role("prefill", 1), role("decode", 1)]}),
            ),
            "spec.plugins[0].digest: \"md5:1\" must look like sha256:",
        ),
        (
            set_with(
                "llm",
                json!({"plugins": [{"name": "g"}, {"name": "g"}], "roles": [role("prefill", 1), role("decode", 1)]}),
            ),
            "spec.plugins[1].name: plugin \"g\" is bound twice",
        ),
        (
            set_with(
                "llm",
                json!({"roles": [{"name": "prefill"}, role("decode", 1)]}),
            ),
            "spec.roles[0].spec.leaderWorkerTemplate.workerTemplate.spec.containers: required",
        ),
        (
            set_with(
                "llm",
                json!({"progressDeadlineSeconds": 0, "roles": [role("prefill", 1), role("decode", 1)]}),
            ),
            "spec.progressDeadlineSeconds: must be at least 1",
        ),
    ];
    for (set, want) in cases {
        let got = messages(&set);
        assert!(
            got.iter().any(|m| m.starts_with(want)),
            "want {want:?}, got {got:?}"
        );
    }
}

#[test]
fn external_roles_do_not_count_for_pausing() {
    let mut ext = role("decode", 5);
    ext["scaling"] = json!({"mode": "External"});
    assert!(
        validate(&set_with(
            "llm",
            json!({"roles": [role("prefill", 0), role("encode", 0), ext]})
        ))
        .is_empty()
    );
}

#[test]
fn surge_and_unavailability_must_not_both_resolve_to_zero() {
    let mut r = role("decode", 3);
    // 10% of 3 rounds down to 0 for unavailability.
    r["spec"]["rolloutStrategy"] = json!({"type": "RollingUpdate", "rollingUpdateConfiguration": {"maxSurge": 0, "maxUnavailable": "10%"}});
    let got = messages(&set_with("llm", json!({"roles": [role("prefill", 1), r]})));
    assert!(
        got[0].contains("must not both resolve to 0 (for 3 replicas)"),
        "{got:?}"
    );
    let mut r = role("decode", 3);
    r["spec"]["rolloutStrategy"] = json!({"type": "RollingUpdate", "rollingUpdateConfiguration": {"maxSurge": "x%", "maxUnavailable": 0}});
    let got = messages(&set_with("llm", json!({"roles": [role("prefill", 1), r]})));
    assert!(
        got[0].contains("maxSurge: \"x%\" must be a non-negative integer or a percentage"),
        "{got:?}"
    );
}

#[test]
fn structural_check_reports_paths() {
    let schema = json!({"type": "object", "properties": {
    "spec": {"type": "object", "required": ["n"], "properties": {
        "n": {"type": "integer", "minimum": 1},
        "mode": {"type": "string", "enum": ["A", "B"]},
        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3},
        "list": {"type": "array", "maxItems": 1, "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        "ios": {"x-kubernetes-int-or-string": true},
    }}}});
    let v = json!({"spec": {"n": 0, "mode": "C", "name": "ABCD", "list": [{"k": "a", "z": 1}, {}], "free": {"any": 1}, "ios": "5%", "extra": true}});
    let mut got: Vec<String> = check(&schema, &v).iter().map(ToString::to_string).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            "spec.extra: unknown field",
            "spec.list: must have at most 1 items, has 2",
            "spec.list[0].z: unknown field",
            "spec.mode: unsupported value \"C\": supported values: \"A\", \"B\"",
            "spec.n: must be greater than or equal to 1, is 0",
            "spec.name: \"ABCD\" does not match the pattern ^[a-z]+$",
            "spec.name: may not be more than 3 characters long, is 4",
        ]
    );
    assert_eq!(
        check(&schema, &json!({"spec": {"ios": true}}))[1].to_string(),
        "spec.ios: must be an integer or a string, got boolean"
    );
    assert_eq!(
        check(&schema, &json!({"spec": {"n": "1"}}))[0].to_string(),
        "spec.n: must be of type integer, got string"
    );
}

#[test]
fn defaults_apply_top_down_and_drop_non_nullable_nulls() {
    let schema = json!({"type": "object", "properties": {
        "a": {"type": "object", "default": {}, "properties": {"b": {"type": "integer", "default": 3}}},
        "c": {"type": "string"},
        "d": {"type": "string", "nullable": true},
        "list": {"type": "array", "items": {"type": "object", "properties": {"e": {"type": "string", "default": "x"}}}},
    }});
    let mut v = json!({"c": null, "d": null, "list": [{}, {"e": "y"}]});
    apply_defaults(&schema, &mut v);
    assert_eq!(
        v,
        json!({"a": {"b": 3}, "d": null, "list": [{"e": "x"}, {"e": "y"}]})
    );
}

#[test]
fn pruning_drops_undeclared_fields_except_where_preserved() {
    let schema = json!({"type": "object", "properties": {
    "spec": {"type": "object", "properties": {
        "a": {"type": "integer"},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        "list": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
    }}}});
    let mut v = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n", "odd": 1},
        "spec": {"a": 1, "b": 2, "free": {"any": {"thing": 1}}, "list": [{"k": "x", "z": 1}], "map": {"p": "q"}}, "extra": true});
    let mut removed = prune(&schema, &mut v);
    removed.sort();
    assert_eq!(removed, ["extra", "spec.b", "spec.list[0].z"]);
    assert_eq!(
        v,
        json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n", "odd": 1},
        "spec": {"a": 1, "free": {"any": {"thing": 1}}, "list": [{"k": "x"}], "map": {"p": "q"}}})
    );
}

#[test]
fn start_after_names_other_roles_and_has_no_cycle() {
    let with = |orders: &[(&str, &[&str])]| {
        let roles: Vec<Value> = orders
            .iter()
            .map(|(name, after)| {
                let mut r = role(name, 1);
                r["startAfter"] = json!(after);
                r
            })
            .collect();
        messages(&set_with("llm", json!({ "roles": roles })))
    };
    assert_eq!(
        with(&[
            ("prefill", &[]),
            ("decode", &["prefill"]),
            ("router", &["decode", "prefill"])
        ]),
        Vec::<String>::new()
    );
    assert_eq!(
        with(&[("prefill", &["prefill"]), ("decode", &[])]),
        ["spec.roles[0].startAfter[0]: role prefill cannot start after itself"]
    );
    assert_eq!(
        with(&[("prefill", &[]), ("decode", &["encode"])]),
        ["spec.roles[1].startAfter[0]: \"encode\" is not a role of this set"]
    );
    assert_eq!(
        with(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"])]),
        ["spec.roles: startAfter forms a cycle: a → c → b → a"]
    );
}

#[test]
fn signal_queries_are_named_once_and_use_known_placeholders() {
    let with = |signals: Value| {
        messages(&set_with(
            "llm",
            json!({"roles": [role("prefill", 1), role("decode", 1)],
                   "plugins": [{"name": "slo-gate", "signals": signals}]}),
        ))
    };
    assert_eq!(
        with(json!([{"name": "ttft", "query": "x{r=\"{{revision}}\",o=\"{{ oldRevision }}\"}"}])),
        Vec::<String>::new()
    );
    assert_eq!(
        with(json!([{"name": "ttft", "query": "x"}, {"name": "ttft", "query": "y"}])),
        ["spec.plugins[0].signals[1].name: signal \"ttft\" is declared twice"]
    );
    let bad = with(json!([{"name": "Bad_Name", "query": "x{a=\"{{pod}}\"}"}]));
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0].starts_with("spec.plugins[0].signals[0].name: \"Bad_Name\" must be a DNS label")
    );
    assert!(bad[1].starts_with(
        "spec.plugins[0].signals[0].query: unknown placeholder {{pod}}; known: {{set}}"
    ));
    assert_eq!(
        with(json!([{"name": "q", "query": "  "}])),
        ["spec.plugins[0].signals[0].query: must be 1 to 4096 bytes of PromQL"]
    );
}
