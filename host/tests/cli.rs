//! The `disagg` binary, run as a user would.

mod common;

use common::disagg;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;

/// A repository path as a command-line argument.
fn repo(path: &str) -> String {
    test_support::repo(path).display().to_string()
}

fn vectors() -> PathBuf {
    test_support::shared("spec/rollout-vectors.json")
}

fn temp(name: &str, text: &str) -> String {
    test_support::temp_file(name, text).display().to_string()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn plan_reproduces_every_golden_vector_from_cases_without_steps() {
    let golden: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(vectors()).unwrap()).unwrap();
    let stripped: Vec<Value> = golden
        .iter()
        .cloned()
        .map(|mut c| {
            c.as_object_mut().unwrap().remove("steps");
            c
        })
        .collect();
    let input = temp("cases.json", &serde_json::to_string(&stripped).unwrap());
    let out: Vec<Value> = serde_json::from_str(&stdout(&disagg(&["plan", &input]))).unwrap();
    assert_eq!(out, golden);
}

#[test]
fn render_prints_one_lws_per_slice_and_role() {
    let out = stdout(&disagg(&["render", "-f", &repo("examples/sglang-pd.yaml")]));
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 4);
    assert!(
        names[0].starts_with("qwen-pd-0-") && names[0].ends_with("-prefill"),
        "{names:?}"
    );
    assert!(names[3].starts_with("qwen-pd-1-") && names[3].ends_with("-decode"));
    assert!(docs.iter().all(|d| d["kind"] == "LeaderWorkerSet"));
    assert_eq!(docs[0]["spec"]["replicas"], 3);
    // Defaults the API server would apply are applied offline too.
    assert_eq!(docs[0]["spec"]["startupPolicy"], "LeaderCreated");
    assert_eq!(docs[3]["metadata"]["namespace"], "default");
}

#[test]
fn render_with_revision_from_prints_the_rollout() {
    let new = std::fs::read_to_string(repo("examples/vllm-pd.yaml"))
        .unwrap()
        .replace("v0.11.0", "v0.11.1");
    let new = temp("new.yaml", &new);
    let out = stdout(&disagg(&[
        "render",
        "-f",
        &new,
        "--revision-from",
        &repo("examples/vllm-pd.yaml"),
    ]));
    let steps: Vec<&str> = out.lines().filter(|l| l.starts_with("# step")).collect();
    // Numbered as status counts steps: k of T done (T = 4 here: decode's 4
    // groups one at a time), never going back, ending at T/T.
    assert_eq!(steps.first(), Some(&"# step 0/4: prefill 2/0, decode 4/0"));
    assert_eq!(steps.last(), Some(&"# step 4/4: prefill 0/2, decode 0/4"));
    let numbers: Vec<i32> = steps
        .iter()
        .map(|s| {
            s["# step ".len()..]
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
}

#[test]
fn bad_input_is_one_line_naming_file_and_field_with_exit_code_2() {
    let base = std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap();
    let cases = [
        (
            "unknown.yaml",
            base.replace(
                "          size: 1\n",
                "          size: 1\n          sise: 2\n",
            ),
            "spec.roles[0].spec.leaderWorkerTemplate.sise: unknown field",
        ),
        ("broken.yaml", "spec: [unclosed".to_string(), "invalid YAML"),
        (
            "partition.yaml",
            base.replacen(
                "maxSurge: 1\n",
                "maxSurge: 1\n            partition: 2\n",
                2,
            ),
            "spec.roles[0].spec.rolloutStrategy.rollingUpdateConfiguration.partition: must be 0",
        ),
        (
            "kind.yaml",
            base.replace("kind: DisaggregatedSet", "kind: Deployment"),
            "apiVersion/kind: expected disaggregatedset.x-k8s.io/v1 DisaggregatedSet",
        ),
        (
            "type.yaml",
            base.replace("replicas: 2", "replicas: two"),
            "spec.roles[0].spec.replicas: must be of type integer, got string",
        ),
        (
            // Upstream's schema allows a role without `spec`; the one thing it lacks is named.
            "nospec.yaml",
            "apiVersion: disaggregatedset.x-k8s.io/v1\nkind: DisaggregatedSet\nmetadata: {name: s}\nspec:\n  roles: [{name: a}, {name: b}]\n".to_string(),
            "spec.roles[0].spec.leaderWorkerTemplate.workerTemplate.spec.containers: required",
        ),
    ];
    for (name, text, want) in cases {
        let path = temp(name, &text);
        let o = disagg(&["render", "-f", &path]);
        assert_eq!(o.status.code(), Some(2), "{name}");
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&path) && err.contains(want), "{name}: {err}");
    }
    let o = disagg(&[
        "plan",
        &temp(
            "bad.json",
            r#"[{"name": "x", "roles": ["a"], "initialOld": [1, 2], "target": [1], "config": [{"maxSurge": 1, "maxUnavailable": 0}]}]"#,
        ),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8(o.stderr)
            .unwrap()
            .contains("[0].initialOld: has 2 entries but there are 1 roles")
    );
    let o = disagg(&[
        "plan",
        &temp(
            "bad2.json",
            r#"[{"name": "x", "roles": ["a"], "initialOld": [1], "target": [1], "config": [{"maxSurge": 1}], "extra": 1}]"#,
        ),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("[0]"), "{err}");
}

#[test]
fn crds_prints_the_committed_crds() {
    let out = stdout(&disagg(&["crds"]));
    assert_eq!(
        out,
        std::fs::read_to_string(repo("deploy/crds/disaggregatedset.x-k8s.io.yaml")).unwrap()
    );
}

/// `disagg … | head`: a reader that stops early is no error, and no panic.
#[test]
fn a_closed_pipe_is_not_an_error() {
    use std::io::Read as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_disagg"))
        .arg("crds")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is dropped here, with most of the ~650 KB unread.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// The revisions of the committed manifests, as the operator computes them
/// after the API server's defaulting (no plugins). Pinned: a change here means
/// the hash function, a dependency's serialisation or the schema's defaults
/// changed, and every set in every cluster would get a new revision. Adoption
/// by template equality (`disagg_core::adopt`) keeps such a change from
/// rolling anything out, but it must never happen by accident.
#[test]
fn the_revisions_of_committed_manifests_are_pinned() {
    let pinned = [
        ("examples/vllm-pd.yaml", "3e5fe072"),
        ("examples/sglang-pd.yaml", "cc220f09"),
        ("examples/epd-3role.yaml", "59071076"),
        ("examples/vllm-pd-plugins.yaml", "3e5fe072"),
        ("host/tests/fixtures/earlier-build/vllm-pd.yaml", "3e5fe072"),
    ];
    let got: Vec<(&str, String)> = pinned
        .iter()
        .map(|(file, _)| {
            let set = disagg::input::load_set(&test_support::repo(file)).unwrap();
            (*file, disagg::core::revision::revision(&set.spec, &[]))
        })
        .collect();
    let want: Vec<(&str, String)> = pinned.iter().map(|(f, r)| (*f, r.to_string())).collect();
    assert_eq!(got, want);
}
