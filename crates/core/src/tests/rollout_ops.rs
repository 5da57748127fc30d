//! Scaling during a rollout, abort, and adoption of legacy children: the
//! executor's answers with plain values (`docs/planner.md`).

use super::{child, planned_for, target};
use crate::execute::{Action, Child, Mark, SliceState, Target, decide};
use crate::plan::Budget;
use crate::simulate;
use proptest::prelude::*;

/// Sum of `role`'s replicas at and not at `rev`.
fn counts(children: &[Child], rev: &str, role: &str) -> (i32, i32) {
    let of = |new: bool| {
        children
            .iter()
            .filter(|c| c.role == role && (c.revision == rev) == new)
            .map(|c| c.replicas)
            .sum()
    };
    (of(false), of(true))
}

#[test]
fn a_scale_up_mid_rollout_rescales_both_revisions_at_once() {
    // Prefill 4 → 8 half-way through a rollout: old 2 + new 2 become 4 + 4,
    // and the old side's start doubles with it, so the rollout stays at step 2 of 4.
    let before = target("b", &[("prefill", 4), ("decode", 2)]);
    let children = planned_for(
        &before,
        vec![
            child("a", "prefill", 2, Some(4), 1),
            child("a", "decode", 1, Some(2), 1),
            child("b", "prefill", 2, None, 2),
            child("b", "decode", 1, None, 2),
        ],
    );
    let after = target("b", &[("prefill", 8), ("decode", 2)]);
    let s = &decide(&after, &children).slices[0];
    assert_eq!(s.state, SliceState::Adjusting);
    assert_eq!(
        s.actions,
        vec![
            Action::Mark {
                name: "s-0-a-prefill".into(),
                mark: Some(Mark {
                    initial_replicas: 8,
                    target: 8
                }),
                replicas: Some(4),
            },
            Action::Scale {
                name: "s-0-b-prefill".into(),
                replicas: 4
            },
        ]
    );
    let mut children = children;
    simulate::apply(&after, &mut children, &s.actions, 3);
    let s = &decide(&after, &children).slices[0];
    assert_eq!(s.state, SliceState::Stepping, "{:?}", s.actions);
    assert_eq!(s.position, (4, 8));
}

#[test]
fn a_scale_down_mid_rollout_comes_off_both_sides_and_keeps_the_old_revision_whole() {
    // Decode 8 → 1 with old 4 + new 4: both sides come off by 8, rounded up,
    // to 1 + 1 (within 1 + maxSurge 1); the old revision keeps its decode
    // group while it still has prefill.
    let before = target("b", &[("prefill", 2), ("decode", 8)]);
    let children = planned_for(
        &before,
        vec![
            child("a", "prefill", 1, Some(2), 1),
            child("a", "decode", 4, Some(8), 1),
            child("b", "prefill", 1, None, 2),
            child("b", "decode", 4, None, 2),
        ],
    );
    let after = target("b", &[("prefill", 2), ("decode", 1)]);
    let mut children = children;
    let s = decide(&after, &children).slices.remove(0);
    assert_eq!(s.state, SliceState::Adjusting);
    simulate::apply(&after, &mut children, &s.actions, 3);
    let (old, new) = counts(&children, "b", "decode");
    assert_eq!((old, new), (1, 1));
    assert_eq!(
        counts(&children, "b", "prefill"),
        (1, 1),
        "other roles untouched"
    );
    simulate::rollout(&after, &mut children, 100);
    assert_eq!(counts(&children, "b", "decode"), (0, 1));
    assert_eq!(counts(&children, "b", "prefill"), (0, 2));
}

#[test]
fn a_lost_new_child_is_recreated_at_the_rollouts_position() {
    let t = target("new", &[("prefill", 4), ("decode", 4)]);
    let children = planned_for(
        &t,
        vec![
            child("old", "prefill", 2, Some(4), 1),
            child("old", "decode", 2, Some(4), 1),
            child("new", "prefill", 2, None, 2),
        ],
    );
    let s = &decide(&t, &children).slices[0];
    assert_eq!(s.state, SliceState::Adjusting);
    assert_eq!(
        s.actions,
        vec![Action::Create {
            slice: 0,
            role: "decode".into(),
            replicas: 2
        }]
    );
}

#[test]
fn an_abort_drains_the_new_revision_back_into_the_stable_one() {
    let t = target("b", &[("prefill", 3), ("decode", 3)]);
    let mut children = planned_for(
        &t,
        vec![
            child("a", "prefill", 1, Some(3), 1),
            child("a", "decode", 1, Some(3), 1),
            child("b", "prefill", 2, None, 2),
            child("b", "decode", 2, None, 2),
        ],
    );
    let aborted = Target {
        abort: true,
        ..t.clone()
    };
    let snaps = simulate::rollout(&aborted, &mut children, 100);
    assert!(snaps.len() > 2, "stepwise, not at once: {snaps:?}");
    for s in &snaps {
        for r in &s.roles {
            // Back towards A (now "new") within A's surge budget of 1.
            assert!(r.old + r.new <= r.target + 1, "{s:?}");
        }
    }
    let mut names: Vec<_> = children
        .iter()
        .map(|c| (c.name.as_str(), c.replicas))
        .collect();
    names.sort();
    assert_eq!(names, [("s-0-a-decode", 3), ("s-0-a-prefill", 3)]);
    assert!(children.iter().all(|c| c.mark().is_none()));
    // Steady at A while aborted: nothing more, and nothing created at B.
    let d = decide(&aborted, &children);
    assert_eq!(d.slices[0].state, SliceState::Steady);
    assert_eq!(d.slices[0].aborted_to.as_deref(), Some("a"));
    assert!(d.slices[0].actions.is_empty());
    // Resumed: B rolls out again from the start.
    let s = &decide(&t, &children).slices[0];
    assert_eq!(s.state, SliceState::RecordingRollout);
}

#[test]
fn an_abort_with_nothing_to_return_to_changes_nothing() {
    let t = target("b", &[("prefill", 2)]);
    let children = vec![child("b", "prefill", 2, None, 2)];
    let aborted = Target {
        abort: true,
        ..t.clone()
    };
    let s = &decide(&aborted, &children).slices[0];
    assert_eq!(
        (s.state.clone(), s.aborted_to.clone()),
        (SliceState::Steady, None)
    );
    assert!(s.actions.is_empty());
}

#[test]
fn upstreams_slice_0_children_from_before_slices_are_adopted() {
    // `<set>-<rev>-<role>` with no slice label: slice 0 at revision a.
    let t = target("a", &[("prefill", 2)]);
    let mut legacy = child("a", "prefill", 2, None, 1);
    legacy.name = "s-a-prefill".into();
    let d = decide(&t, &[legacy.clone()]);
    assert_eq!(d.slices[0].state, SliceState::Steady);
    assert!(d.actions().next().is_none(), "{:?}", d.slices[0].actions);
    // And drained like any old child when the template changes.
    let b = target("b", &[("prefill", 2)]);
    let mut children = vec![legacy];
    simulate::rollout(&b, &mut children, 100);
    let names: Vec<_> = children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["s-0-b-prefill"]);
}

/// Per role: replicas at A, at B, after the change; the budget.
type RoleCase = (i32, i32, i32, Budget);

fn case() -> impl Strategy<Value = (Vec<RoleCase>, usize)> {
    (
        prop::collection::vec(
            (1i32..10, 1i32..10, 0i32..12, 0i32..3, 0i32..3)
                .prop_map(|(old, new, later, s, u)| (old, new, later, Budget::from_absolute(s, u))),
            2..=3,
        ),
        0usize..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A rollout whose targets change after any number of passes: every write
    /// keeps each role within its new target + maxSurge (once it was there),
    /// no old revision is left with a role gone while another remains
    /// after a pass, and
    /// the rollout finishes at the new targets.
    #[test]
    fn replica_changes_mid_rollout_keep_the_bounds_and_finish((roles, passes) in case()) {
        let names: Vec<String> = (0..roles.len()).map(|i| format!("r{i}")).collect();
        let with = |rev: &str, pick: &dyn Fn(&RoleCase) -> i32| Target {
            set_name: "s".into(),
            revision: rev.into(),
            slices: 1,
            abort: false,
            roles: names.iter().zip(&roles).map(|(n, r)| crate::execute::TargetRole {
                name: n.clone(), replicas: pick(r), budget: r.3, start_after: vec![] }).collect(),
        };
        let a = with("a", &|r| r.0);
        let b = with("b", &|r| r.1);
        let later = with("b", &|r| r.2);
        let mut children = simulate::steady_children(&a, 0);
        for pass in 0..passes {
            let actions: Vec<Action> = decide(&b, &children).actions().cloned().collect();
            simulate::apply(&b, &mut children, &actions, pass as i64 + 1);
        }
        let within = |children: &[Child], t: &Target| -> Vec<bool> {
            t.roles.iter().map(|r| {
                let (o, n) = counts(children, &t.revision, &r.name);
                // A role with no new side (or scaled to 0) drains as removed roles do.
                n == 0 || o + n <= r.replicas + r.budget.max_surge
            }).collect()
        };
        let mut ok = within(&children, &later);
        for pass in 0..300 {
            let actions: Vec<Action> = decide(&later, &children).actions().cloned().collect();
            if actions.is_empty() {
                break;
            }
            prop_assert!(pass < 299, "no convergence");
            for action in actions {
                simulate::apply(&later, &mut children, std::slice::from_ref(&action), 100 + pass);
                for (i, now) in within(&children, &later).into_iter().enumerate() {
                    prop_assert!(!ok[i] || now, "after {action:?}: {} over its bound: {children:?}", names[i]);
                    ok[i] |= now;
                }
            }
            // Between passes (a step that empties a revision writes its roles one by one).
            let old: Vec<&Child> = children.iter().filter(|c| c.revision != "b" && c.mark().is_some()).collect();
            let zero = old.iter().filter(|c| c.replicas == 0).count();
            prop_assert!(zero == 0 || zero == old.len(), "orphaned: {old:?}");
        }
        for r in &later.roles {
            prop_assert_eq!(counts(&children, "b", &r.name), (0, r.replicas));
        }
    }
}

#[test]
fn a_role_that_starts_after_another_is_created_once_that_one_is_ready() {
    let mut t = target("a", &[("prefill", 2), ("decode", 2), ("router", 1)]);
    t.roles[1].start_after = vec!["prefill".into()];
    t.roles[2].start_after = vec!["decode".into()];
    let created = |children: &[Child]| -> Vec<String> {
        decide(&t, children).slices[0]
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { role, .. } => Some(role.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(created(&[]), ["prefill"]);
    let mut prefill = child("a", "prefill", 2, None, 1);
    prefill.ready_replicas = 1;
    assert_eq!(
        created(std::slice::from_ref(&prefill)),
        Vec::<String>::new(),
        "not ready yet"
    );
    prefill.ready_replicas = 2;
    assert_eq!(created(std::slice::from_ref(&prefill)), ["decode"]);
    let decode = child("a", "decode", 2, None, 2);
    assert_eq!(created(&[prefill.clone(), decode]), ["router"]);

    // In a rollout the new revision starts in the same order.
    let mut b = t.clone();
    b.revision = "b".into();
    let mut children = simulate::steady_children(&t, 0);
    let mut order = Vec::new();
    for pass in 0..100 {
        let actions: Vec<Action> = decide(&b, &children).actions().cloned().collect();
        if actions.is_empty() {
            break;
        }
        for a in &actions {
            if let Action::Create { role, .. } = a {
                order.push(role.clone());
            }
        }
        simulate::apply(&b, &mut children, &actions, pass + 1);
    }
    assert_eq!(order, ["prefill", "decode", "router"]);
    assert_eq!(counts(&children, "b", "router"), (0, 1));
}
