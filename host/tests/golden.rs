use disagg::core::plan::PlanCase;
use std::path::PathBuf;

pub fn vectors_path() -> PathBuf {
    match std::env::var_os("DISAGG_SHARED") {
        Some(dir) => PathBuf::from(dir).join("spec/rollout-vectors.json"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/rollout-vectors.json"),
    }
}

#[test]
fn planner_reproduces_every_golden_vector() {
    let text = std::fs::read_to_string(vectors_path()).expect("read rollout-vectors.json");
    let cases: Vec<PlanCase> = serde_json::from_str(&text).unwrap();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in &cases {
        let mut mine = case.clone();
        mine.solve();
        if mine.steps != case.steps {
            failures.push(format!("{}:\n  want {:?}\n  got  {:?}", case.name, case.steps, mine.steps));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
