use super::{child, planned_for, target};
use crate::execute::{Action, Mark, SliceState, decide};
use crate::plan::{Budget, RoleState, Step, next_step};
use crate::simulate;
use proptest::prelude::*;

fn scale(name: &str, replicas: i32) -> Action {
    Action::Scale {
        name: name.into(),
        replicas,
    }
}

fn delete(name: &str) -> Action {
    Action::Delete { name: name.into() }
}

#[test]
fn steady_state_creates_missing_children_and_scales_others() {
    let t = target("new", &[("prefill", 2), ("decode", 3)]);
    let d = decide(&t, &[child("new", "prefill", 1, None, 1)]);
    let s = &d.slices[0];
    assert_eq!(s.state, SliceState::Steady);
    assert_eq!(
        s.actions,
        vec![
            scale("s-0-new-prefill", 2),
            Action::Create {
                slice: 0,
                role: "decode".into(),
                replicas: 3
            }
        ]
    );
    let steady = [
        child("new", "prefill", 2, None, 1),
        child("new", "decode", 3, None, 1),
    ];
    assert!(decide(&t, &steady).actions().next().is_none());
}

/// The marks a rollout's bookkeeping writes on an old child.
fn mark(name: &str, initial_replicas: i32, target: i32) -> Action {
    Action::Mark {
        name: name.into(),
        mark: Some(Mark {
            initial_replicas,
            target,
        }),
        replicas: None,
    }
}

#[test]
fn a_rollout_first_records_initial_replicas_on_every_old_child() {
    let t = target("new", &[("prefill", 2), ("decode", 2)]);
    let children = [
        child("old", "prefill", 2, None, 1),
        child("old", "decode", 3, None, 1),
    ];
    let s = &decide(&t, &children).slices[0];
    assert_eq!(s.state, SliceState::RecordingRollout);
    assert_eq!(
        s.actions,
        vec![mark("s-0-old-prefill", 2, 2), mark("s-0-old-decode", 3, 2),]
    );
}

#[test]
fn a_new_old_revision_resets_the_bookkeeping_of_all_old_revisions() {
    // A→B in progress (A annotated), then C arrives: B joins the old side.
    let t = target("c", &[("prefill", 2)]);
    let children = [
        child("a", "prefill", 1, Some(2), 1),
        child("b", "prefill", 1, None, 2),
    ];
    let s = &decide(&t, &children).slices[0];
    assert_eq!(s.state, SliceState::RecordingRollout);
    assert!(s.actions.contains(&mark("s-0-a-prefill", 1, 2)));
    assert!(s.actions.contains(&mark("s-0-b-prefill", 1, 2)));
}

#[test]
fn the_readiness_gate_holds_steps_until_new_children_are_ready() {
    let t = target("new", &[("prefill", 2), ("decode", 2)]);
    let mut fresh = child("new", "decode", 1, None, 2);
    fresh.ready_replicas = 0;
    let children = planned_for(
        &t,
        vec![
            child("old", "prefill", 2, Some(2), 1),
            child("old", "decode", 2, Some(2), 1),
            child("new", "prefill", 1, None, 2),
            fresh,
        ],
    );
    let s = &decide(&t, &children).slices[0];
    assert_eq!(
        s.state,
        SliceState::WaitingForReady {
            not_ready: vec!["s-0-new-decode".into()]
        }
    );
    assert!(s.actions.is_empty());
}

#[test]
fn drains_the_newest_old_revision_first() {
    // Aggregate old = [3,3] (A 2+2, B 1+1); new at 1 each: the planner drains 1 per role.
    let t = target("c", &[("prefill", 3), ("decode", 3)]);
    let children = planned_for(
        &t,
        vec![
            child("a", "prefill", 2, Some(2), 1),
            child("a", "decode", 2, Some(2), 1),
            child("b", "prefill", 1, Some(1), 2),
            child("b", "decode", 1, Some(1), 2),
            child("c", "prefill", 1, None, 3),
            child("c", "decode", 1, None, 3),
        ],
    );
    let s = &decide(&t, &children).slices[0];
    assert_eq!(s.state, SliceState::Stepping);
    // B drains completely in this step: it is deleted, not scaled to 0.
    assert_eq!(
        s.actions,
        vec![delete("s-0-b-prefill"), delete("s-0-b-decode")]
    );
}

#[test]
fn an_old_revision_that_loses_a_role_loses_all_of_them() {
    // B has prefill 1, decode 2. One step drains one of each: B's prefill hits 0,
    // so B's decode goes to 0 with it rather than living on alone.
    let t = target("c", &[("prefill", 3), ("decode", 3)]);
    let children = planned_for(
        &t,
        vec![
            child("a", "prefill", 2, Some(2), 1),
            child("a", "decode", 1, Some(1), 1),
            child("b", "prefill", 1, Some(1), 2),
            child("b", "decode", 2, Some(2), 2),
            child("c", "prefill", 1, None, 3),
            child("c", "decode", 1, None, 3),
        ],
    );
    let s = &decide(&t, &children).slices[0];
    assert!(s.actions.contains(&delete("s-0-b-prefill")));
    assert!(s.actions.contains(&delete("s-0-b-decode")));
    assert!(
        !s.actions
            .iter()
            .any(|a| matches!(a, Action::Scale { name, .. } if name.starts_with("s-0-a-")))
    );
}

#[test]
fn the_last_step_deletes_the_old_children_rather_than_scaling_them_to_zero() {
    // New is complete; the old revision has one replica left in two roles
    // and none in the third: the step that drains it deletes all three.
    let t = target("new", &[("encode", 2), ("prefill", 2), ("decode", 2)]);
    let children = planned_for(
        &t,
        vec![
            child("old", "encode", 0, Some(2), 1),
            child("old", "prefill", 1, Some(2), 1),
            child("old", "decode", 1, Some(2), 1),
            child("new", "encode", 2, None, 2),
            child("new", "prefill", 2, None, 2),
            child("new", "decode", 2, None, 2),
        ],
    );
    let s = &decide(&t, &children).slices[0];
    assert_eq!(s.state, SliceState::Stepping);
    let mut got = s.actions.clone();
    got.sort_by_key(|a| format!("{a:?}"));
    assert_eq!(
        got,
        vec![
            delete("s-0-old-decode"),
            delete("s-0-old-encode"),
            delete("s-0-old-prefill")
        ]
    );
    // A step that leaves the old revision replicas still scales it.
    let children = planned_for(
        &t,
        vec![
            child("old", "encode", 1, Some(2), 1),
            child("old", "prefill", 2, Some(2), 1),
            child("old", "decode", 2, Some(2), 1),
            child("new", "encode", 1, None, 2),
            child("new", "prefill", 1, None, 2),
            child("new", "decode", 1, None, 2),
        ],
    );
    let s = &decide(&t, &children).slices[0];
    assert_eq!(s.state, SliceState::Stepping);
    assert!(s.actions.iter().any(|a| matches!(a, Action::Scale { .. })));
    assert!(!s.actions.iter().any(|a| matches!(a, Action::Delete { .. })));
}

#[test]
fn drained_revisions_are_deleted() {
    let t = target("new", &[("prefill", 2)]);
    let children = [
        child("old", "prefill", 0, Some(2), 1),
        child("new", "prefill", 2, None, 2),
    ];
    let d = decide(&t, &children);
    assert_eq!(
        d.slices[0].actions,
        vec![Action::Delete {
            name: "s-0-old-prefill".into()
        }]
    );
    assert_eq!(d.slices[0].state, SliceState::Steady);
}

#[test]
fn children_of_removed_slices_are_deleted() {
    let t = target("r", &[("prefill", 1)]);
    let mut extra = child("r", "prefill", 1, None, 1);
    extra.slice = 1;
    extra.name = "s-1-r-prefill".into();
    let d = decide(&t, &[child("r", "prefill", 1, None, 1), extra]);
    assert_eq!(
        d.removed_slices,
        vec![Action::Delete {
            name: "s-1-r-prefill".into()
        }]
    );
}

#[test]
fn a_foreign_child_is_never_touched_and_blocks_its_slice() {
    let t = target("new", &[("prefill", 2)]);
    let mut foreign = child("new", "prefill", 5, None, 1);
    foreign.owned = false;
    let d = decide(&t, &[foreign]);
    assert_eq!(
        d.slices[0].state,
        SliceState::Blocked {
            name: "s-0-new-prefill".into()
        }
    );
    assert!(d.actions().next().is_none());
    // A foreign object with another name is simply ignored.
    let mut other = child("zzz", "prefill", 5, None, 1);
    other.owned = false;
    let d = decide(&t, &[other]);
    assert!(matches!(
        &d.actions().collect::<Vec<_>>()[..],
        [Action::Create { .. }]
    ));
}

#[test]
fn a_missing_new_child_is_recreated_mid_rollout() {
    let t = target("new", &[("prefill", 2), ("decode", 2)]);
    let children = planned_for(
        &t,
        vec![
            child("old", "prefill", 1, Some(2), 1),
            child("old", "decode", 1, Some(2), 1),
            child("new", "prefill", 1, None, 2),
        ],
    );
    let s = &decide(&t, &children).slices[0];
    assert!(
        s.actions
            .iter()
            .any(|a| matches!(a, Action::Create { role, .. } if role == "decode"))
    );
}

#[test]
fn renamed_role_drains_with_its_revision_and_the_new_name_starts_from_zero() {
    let old = target("a", &[("prefill", 2), ("decode", 2)]);
    let new = target("b", &[("prefill", 2), ("generate", 2)]);
    let mut children = simulate::steady_children(&old, 0);
    let snaps = simulate::rollout(&new, &mut children, 1000);
    let first = &snaps[0].roles;
    let names: Vec<&str> = first.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["prefill", "generate", "decode"]);
    assert_eq!((first[1].initial_old, first[2].target), (0, 0));
    let mut names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["s-0-b-generate", "s-0-b-prefill"]);
    assert!(
        children
            .iter()
            .all(|c| c.replicas == 2 && c.initial_replicas.is_none())
    );
}

#[test]
fn rollback_mid_rollout_returns_to_the_old_children() {
    let a = target("a", &[("prefill", 3), ("decode", 3)]);
    let b = target("b", &[("prefill", 3), ("decode", 3)]);
    let mut children = simulate::steady_children(&a, 0);
    // Take a few passes towards B.
    for pass in 1..=4 {
        let actions: Vec<Action> = decide(&b, &children).actions().cloned().collect();
        simulate::apply(&b, &mut children, &actions, pass);
    }
    assert!(children.iter().any(|c| c.revision == "b" && c.replicas > 0));
    assert!(
        children
            .iter()
            .any(|c| c.revision == "a" && c.initial_replicas.is_some())
    );
    // Back to A: A's annotation goes, B is recorded as old.
    let s = &decide(&a, &children).slices[0];
    assert_eq!(s.state, SliceState::RecordingRollout);
    assert!(
        s.actions
            .iter()
            .any(|x| matches!(x, Action::Mark { name, mark: None, .. } if name == "s-0-a-prefill"))
    );
    simulate::rollout(&a, &mut children, 1000);
    assert!(
        children
            .iter()
            .all(|c| c.revision == "a" && c.replicas == 3 && c.initial_replicas.is_none())
    );
}

#[test]
fn the_executor_follows_the_golden_vectors() {
    let text = std::fs::read_to_string(crate::tests::planner_props::vectors_path()).unwrap();
    let cases: Vec<crate::plan::PlanCase> = serde_json::from_str(&text).unwrap();
    for case in cases
        .iter()
        .filter(|c| c.initial_old.iter().any(|v| *v > 0))
    {
        let roles: Vec<(&str, i32)> = case
            .roles
            .iter()
            .map(String::as_str)
            .zip(case.target.iter().copied())
            .collect();
        let mut new = target("new", &roles);
        for (r, b) in new.roles.iter_mut().zip(&case.config) {
            r.budget = *b;
        }
        let mut children: Vec<_> = case
            .roles
            .iter()
            .zip(&case.initial_old)
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| child("old", r, *n, None, 0))
            .collect();
        let snaps = simulate::rollout(&new, &mut children, 1000);
        let got: Vec<(Vec<i32>, Vec<i32>)> = snaps
            .iter()
            .map(|s| {
                (
                    s.roles.iter().map(|r| r.old).collect(),
                    s.roles.iter().map(|r| r.new).collect(),
                )
            })
            .collect();
        let want: Vec<(Vec<i32>, Vec<i32>)> = case
            .steps
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| (s.old.clone(), s.new.clone()))
            .collect();
        assert_eq!(got, want, "case {}", case.name);
    }
}

proptest! {
    /// From any mid-rollout state with one old revision, the executor's writes
    /// reach exactly the planner's next step, new side first.
    #[test]
    fn executor_applies_the_planner_step_scale_up_first(
        roles in prop::collection::vec((0i32..8, 0i32..8, 0i32..8, 0i32..8, 0i32..3, 0i32..3), 2..5)
    ) {
        let states: Vec<RoleState> = roles.iter().map(|&(init, cur_old, cur_new, tgt, s, u)| {
            let b = Budget::from_absolute(s, u);
            RoleState { initial_old: init, current_old: cur_old.min(init), current_new: cur_new, target: tgt, max_surge: b.max_surge, max_unavailable: b.max_unavailable }
        }).collect();
        let names: Vec<String> = (0..states.len()).map(|i| format!("r{i}")).collect();
        let mut t = target("new", &names.iter().map(|n| n.as_str()).zip(states.iter().map(|s| s.target)).collect::<Vec<_>>());
        for (r, s) in t.roles.iter_mut().zip(&states) {
            r.budget = Budget { max_surge: s.max_surge, max_unavailable: s.max_unavailable };
        }
        let mut children = Vec::new();
        for (n, s) in names.iter().zip(&states) {
            if s.initial_old > 0 { children.push(child("old", n, s.current_old, Some(s.initial_old), 1)); }
            if s.current_new > 0 { children.push(child("new", n, s.current_new, None, 2)); }
        }
        let children = planned_for(&t, children);
        prop_assume!(children.iter().any(|c| c.revision == "old" && c.replicas > 0));
        // A role with a target but no new child while another has one has
        // lost it: that is recreated before any step (tested on its own).
        let some_new = states.iter().any(|s| s.current_new > 0);
        prop_assume!(!some_new || states.iter().all(|s| s.target == 0 || s.current_new > 0));
        let d = decide(&t, &children);
        let slice = &d.slices[0];
        if let Step::Next { old, new } = next_step(&states) {
            prop_assert_eq!(&slice.state, &SliceState::Stepping);
            // New side first, except the drain of a role whose scale-up would
            // otherwise break its surge bound (a forced drain) goes before it.
            let last_up = slice.actions.iter().rposition(|a| matches!(a, Action::Create { .. }) || matches!(a, Action::Scale { name, .. } if name.contains("-new-")));
            for (at, a) in slice.actions.iter().enumerate() {
                let Action::Scale { name, .. } = a else { continue };
                if !name.contains("-old-") || last_up.is_none_or(|up| up < at) {
                    continue;
                }
                let i = names.iter().position(|n| name.ends_with(&format!("-{n}"))).unwrap();
                let forced = new[i] > states[i].current_new
                    && states[i].current_old + new[i] > states[i].target + states[i].max_surge;
                prop_assert!(forced, "scale-down before scale-up without need: {:?}", slice.actions);
            }
            let mut after = children.clone();
            simulate::apply(&t, &mut after, &slice.actions, 3);
            for (i, n) in names.iter().enumerate() {
                let o: i32 = after.iter().filter(|c| c.revision == "old" && c.role == *n).map(|c| c.replicas).sum();
                let w: i32 = after.iter().filter(|c| c.revision == "new" && c.role == *n).map(|c| c.replicas).sum();
                prop_assert_eq!((o, w), (old[i], new[i]), "role {}", n);
            }
        }
    }

    /// Whole rollouts through the executor, with roles added and removed and a
    /// third revision arriving midway, keep the bounds and finish clean.
    #[test]
    fn executor_rollouts_keep_bounds_and_finish(
        a in prop::collection::vec(1i32..7, 2..5),
        b in prop::collection::vec(1i32..7, 2..5),
        c in prop::collection::vec(1i32..7, 2..5),
        b_passes in 0usize..12,
    ) {
        let named = |rev: &str, sizes: &[i32]| {
            let roles: Vec<(String, i32)> = sizes.iter().enumerate().map(|(i, n)| (format!("r{i}"), *n)).collect();
            target(rev, &roles.iter().map(|(n, r)| (n.as_str(), *r)).collect::<Vec<_>>())
        };
        let (ta, tb, tc) = (named("a", &a), named("b", &b), named("c", &c));
        let mut children = simulate::steady_children(&ta, 0);
        let mut pass = 0i64;
        for (t, limit) in [(&tb, b_passes), (&tc, 10_000)] {
            for _ in 0..limit {
                pass += 1;
                let d = decide(t, &children);
                let actions: Vec<Action> = d.actions().cloned().collect();
                if actions.is_empty() { break; }
                simulate::apply(t, &mut children, &actions, pass);
                check_bounds(t, &children)?;
            }
        }
        prop_assert!(decide(&tc, &children).actions().next().is_none(), "did not converge");
        let mut want: Vec<(String, i32)> = tc.roles.iter().map(|r| (format!("s-0-c-{}", r.name), r.replicas)).collect();
        let mut got: Vec<(String, i32)> = children.iter().map(|c| (c.name.clone(), c.replicas)).collect();
        want.sort(); got.sort();
        prop_assert_eq!(got, want);
    }
}

/// Per role, old+new stays within target+maxSurge once new exists (for roles
/// whose old side started within that bound), and no old revision keeps one
/// role alive while another of its roles is gone.
fn check_bounds(
    t: &crate::execute::Target,
    children: &[crate::execute::Child],
) -> Result<(), TestCaseError> {
    for r in &t.roles {
        let new: i32 = children
            .iter()
            .filter(|c| c.revision == t.revision && c.role == r.name)
            .map(|c| c.replicas)
            .sum();
        let old: Vec<_> = children
            .iter()
            .filter(|c| c.revision != t.revision && c.role == r.name)
            .collect();
        let old_now: i32 = old.iter().map(|c| c.replicas).sum();
        let old_initial: i32 = old
            .iter()
            .map(|c| c.initial_replicas.unwrap_or(c.replicas))
            .sum();
        if new > 0 && old_initial <= r.replicas + r.budget.max_surge {
            prop_assert!(
                old_now + new <= r.replicas + r.budget.max_surge,
                "role {} old {} new {} target {}",
                r.name,
                old_now,
                new,
                r.replicas
            );
        }
    }
    let mut revisions: Vec<&str> = children
        .iter()
        .filter(|c| c.revision != t.revision)
        .map(|c| c.revision.as_str())
        .collect();
    revisions.dedup();
    for rev in revisions {
        let of: Vec<_> = children
            .iter()
            .filter(|c| c.revision == rev && c.initial_replicas.unwrap_or(0) > 0)
            .collect();
        let zero = of.iter().filter(|c| c.replicas == 0).count();
        prop_assert!(
            zero == 0 || zero == of.len(),
            "revision {} orphaned: {:?}",
            rev,
            of
        );
    }
    Ok(())
}

fn rollout_case() -> impl Strategy<Value = Vec<(i32, i32, Budget)>> {
    prop::collection::vec(
        (0i32..12, 0i32..12, 0i32..4, 0i32..4)
            .prop_map(|(old, new, s, u)| (old, new, Budget::from_absolute(s, u))),
        2..=4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The API shows every write on its own: after each single action of a
    /// rollout, every role with new replicas stays within target + maxSurge
    /// over all revisions (the drain of a forced-drain step lands first).
    #[test]
    fn every_intermediate_state_keeps_the_surge_bound(case in rollout_case()) {
        let names: Vec<String> = (0..case.len()).map(|i| format!("r{i}")).collect();
        let old_target = crate::execute::Target {
            set_name: "s".into(),
            revision: "aaaaaaaa".into(),
            slices: 1,
            abort: false,
            roles: names.iter().zip(&case).map(|(n, (old, _, b))| crate::execute::TargetRole {
                name: n.clone(), replicas: *old, budget: *b, start_after: vec![] }).collect(),
        };
        let new_target = crate::execute::Target {
            revision: "bbbbbbbb".into(),
            roles: names.iter().zip(&case).map(|(n, (_, new, b))| crate::execute::TargetRole {
                name: n.clone(), replicas: *new, budget: *b, start_after: vec![] }).collect(),
            ..old_target.clone()
        };
        let mut children = simulate::steady_children(&old_target, 0);
        for pass in 0..200 {
            let decision = decide(&new_target, &children);
            let actions: Vec<Action> = decision.actions().cloned().collect();
            if actions.is_empty() {
                break;
            }
            prop_assert!(pass < 199, "no convergence");
            for action in actions {
                simulate::apply(&new_target, &mut children, std::slice::from_ref(&action), pass + 1);
                for r in &new_target.roles {
                    let new: i32 = children.iter().filter(|c| c.role == r.name && c.revision == new_target.revision).map(|c| c.replicas).sum();
                    let total: i32 = children.iter().filter(|c| c.role == r.name).map(|c| c.replicas).sum();
                    prop_assert!(new == 0 || total <= r.replicas + r.budget.max_surge,
                        "after {action:?}: {} has {total} > {} + {}", r.name, r.replicas, r.budget.max_surge);
                }
            }
        }
    }
}

/// Numbers at their bounds — a million replicas, a million surge, a rollout
/// from the largest old revision — decide without overflowing, and observed
/// numbers past the bounds are clamped when read.
#[test]
fn rollouts_at_the_numeric_bounds_never_overflow() {
    use crate::execute::bounded;
    use disagg_api::limits::MAX_REPLICAS;
    assert_eq!(bounded(i32::MAX), MAX_REPLICAS);
    assert_eq!(bounded(i32::MIN), 0);
    for budget in [
        Budget::from_absolute(MAX_REPLICAS, 0),
        Budget::from_absolute(0, MAX_REPLICAS),
        Budget::from_absolute(MAX_REPLICAS, MAX_REPLICAS),
        Budget::DEFAULT,
    ] {
        let mut t = target(
            "new",
            &[("prefill", MAX_REPLICAS), ("decode", MAX_REPLICAS)],
        );
        t.slices = disagg_api::limits::MAX_SLICES;
        for r in &mut t.roles {
            r.budget = budget;
        }
        let mut children: Vec<_> = ["prefill", "decode"]
            .iter()
            .map(|r| child("old", r, MAX_REPLICAS, Some(MAX_REPLICAS), 1))
            .collect();
        // A few passes of the planner from the largest old revision.
        for _ in 0..4 {
            let d = decide(&t, &children);
            simulate::apply(&t, &mut children, &d.slices[0].actions, 2);
        }
        assert!(
            children
                .iter()
                .all(|c| (0..=MAX_REPLICAS).contains(&c.replicas))
        );
    }
}

/// Budgets resolve to at most the replica bound, however large the number
/// or percentage given, so `target + maxSurge` always fits an `i32`.
#[test]
fn budgets_resolve_within_the_replica_bound() {
    use crate::plan::resolve_budget;
    use disagg_api::limits::MAX_REPLICAS;
    use disagg_api::lws::RollingUpdateConfiguration;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    for (surge, unavailable) in [
        (IntOrString::Int(i32::MAX), IntOrString::Int(0)),
        (
            IntOrString::String("2147483647%".into()),
            IntOrString::Int(0),
        ),
        (IntOrString::Int(0), IntOrString::Int(i32::MAX)),
        (
            IntOrString::Int(0),
            IntOrString::String("999999999%".into()),
        ),
    ] {
        let cfg = RollingUpdateConfiguration {
            partition: 0,
            max_surge: surge.clone(),
            max_unavailable: unavailable.clone(),
        };
        let b = resolve_budget(Some(&cfg), MAX_REPLICAS);
        assert!(
            b.max_surge <= MAX_REPLICAS && b.max_unavailable <= MAX_REPLICAS,
            "{surge:?} {unavailable:?}: {b:?}"
        );
        assert!(MAX_REPLICAS.checked_add(b.max_surge).is_some());
    }
}
