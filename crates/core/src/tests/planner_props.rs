use crate::plan::resolve_budget;
use crate::plan::{Budget, PlanCase, RoleState, Step, next_step, simulate};
use disagg_api::lws::RollingUpdateConfiguration;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;
use std::path::PathBuf;

/// `shared/spec/rollout-vectors.json`.
pub fn vectors_path() -> PathBuf {
    test_support::shared("spec/rollout-vectors.json")
}

#[test]
fn planner_reproduces_every_golden_vector() {
    let text = std::fs::read_to_string(vectors_path()).expect("read rollout-vectors.json");
    let cases: Vec<PlanCase> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 13);
    for case in &cases {
        let mut mine = case.clone();
        mine.steps = None;
        mine.solve();
        assert_eq!(mine.steps, case.steps, "case {}", case.name);
    }
}

#[test]
fn config_resolution_follows_the_design() {
    assert_eq!(Budget::from_absolute(0, 0), Budget::DEFAULT);
    assert_eq!(
        Budget::from_absolute(2, 0),
        Budget {
            max_surge: 2,
            max_unavailable: 0
        }
    );
    assert_eq!(
        Budget::from_absolute(0, 3),
        Budget {
            max_surge: 0,
            max_unavailable: 3
        }
    );
    assert_eq!(
        Budget::from_absolute(2, 1),
        Budget {
            max_surge: 2,
            max_unavailable: 1
        }
    );
}

#[test]
fn an_old_revision_scaled_up_by_hand_is_clamped_first() {
    let r = |cur_old| RoleState {
        initial_old: 3,
        current_old: cur_old,
        current_new: 1,
        target: 3,
        max_surge: 1,
        max_unavailable: 0,
    };
    assert_eq!(
        next_step(&[r(5), r(3)]),
        Step::Next {
            old: vec![3, 3],
            new: vec![1, 1]
        }
    );
}

fn role() -> impl Strategy<Value = RoleState> {
    (0i32..25, 0i32..25, 0i32..6, 0i32..6).prop_map(|(initial_old, target, s, u)| {
        let b = Budget::from_absolute(s, u);
        RoleState {
            initial_old,
            current_old: initial_old,
            current_new: 0,
            target,
            max_surge: b.max_surge,
            max_unavailable: b.max_unavailable,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Over random sizes and configs with 2–5 roles: the per-role surge bound,
    /// no orphaned old revision, and termination within a bounded number of steps.
    #[test]
    fn planner_invariants(roles in prop::collection::vec(role(), 2..=5)) {
        let t = roles.iter().map(|r| {
            let batch = if r.max_surge > 0 { r.max_surge } else { r.max_unavailable.max(1) };
            (r.initial_old.max(r.target) + batch - 1) / batch
        }).max().unwrap() as usize;
        let bound = 3 * t + 3;
        let states = simulate(&roles, bound + 2);
        prop_assert!(states.len() <= bound, "{} states for T={}: {:?}", states.len(), t, states);
        let (last_old, last_new) = states.last().unwrap();
        prop_assert!(last_old.iter().all(|o| *o == 0), "old not drained: {:?}", states);
        prop_assert_eq!(last_new, &roles.iter().map(|r| r.target).collect::<Vec<_>>());
        let mut final_state = roles.clone();
        for (r, (o, n)) in final_state.iter_mut().zip(last_old.iter().zip(last_new)) { r.current_old = *o; r.current_new = *n; }
        prop_assert_eq!(next_step(&final_state), Step::Done);

        for (old, new) in &states {
            for (i, r) in roles.iter().enumerate() {
                if new[i] > 0 {
                    prop_assert!(old[i] + new[i] <= r.target + r.max_surge,
                        "role {i}: old {} + new {} > target {} + surge {}: {:?}", old[i], new[i], r.target, r.max_surge, states);
                }
                prop_assert!(old[i] <= r.initial_old && new[i] <= r.target.max(0));
            }
            let live: Vec<usize> = (0..roles.len()).filter(|&i| roles[i].initial_old > 0).collect();
            let zero = live.iter().filter(|&&i| old[i] == 0).count();
            prop_assert!(zero == 0 || zero == live.len(), "orphaned old revision: {:?}", states);
        }
        // Monotone: new never shrinks and old never grows.
        for w in states.windows(2) {
            for i in 0..roles.len() {
                prop_assert!(w[1].1[i] >= w[0].1[i] && w[1].0[i] <= w[0].0[i], "{:?}", states);
            }
        }
    }
}
#[test]
fn budgets_resolve_percentages_against_the_target() {
    let cfg = |s: IntOrString, u: IntOrString| RollingUpdateConfiguration {
        partition: 0,
        max_surge: s,
        max_unavailable: u,
    };
    let pct = |p: &str| IntOrString::String(p.into());
    assert_eq!(resolve_budget(None, 10), Budget::DEFAULT);
    // Surge rounds up, unavailability down.
    assert_eq!(
        resolve_budget(Some(&cfg(pct("25%"), pct("25%"))), 10),
        Budget {
            max_surge: 3,
            max_unavailable: 2
        }
    );
    assert_eq!(
        resolve_budget(Some(&cfg(pct("25%"), IntOrString::Int(0))), 10),
        Budget {
            max_surge: 3,
            max_unavailable: 0
        }
    );
    assert_eq!(
        resolve_budget(Some(&cfg(IntOrString::Int(0), IntOrString::Int(0))), 10),
        Budget::DEFAULT
    );
    // Upstream's defaults (maxSurge 0, maxUnavailable 1).
    assert_eq!(
        resolve_budget(Some(&cfg(IntOrString::Int(0), IntOrString::Int(1))), 10),
        Budget {
            max_surge: 0,
            max_unavailable: 1
        }
    );
}
