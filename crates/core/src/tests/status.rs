use super::{child, target};
use crate::execute::decide;
use crate::status::{Hold, Observation, compute};
use disagg_api::validate::Violation;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn at(seconds: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
}

fn cond<'a>(
    s: &'a disagg_api::set::DisaggregatedSetStatus,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn steady_and_ready_is_available() {
    let t = target("r", &[("prefill", 2), ("decode", 3)]);
    let children = [
        child("r", "prefill", 2, None, 1),
        child("r", "decode", 3, None, 1),
    ];
    let d = decide(&t, &children);
    let o = Observation {
        generation: Some(4),
        target: &t,
        children: &children,
        decision: Some(&d),
        violations: &[],
        abort: None,
        hold: None,
        blocked: None,
        progress_deadline_seconds: None,
        previous: None,
        now: at(100),
    };
    let s = compute(&o);
    assert_eq!(s.observed_generation, Some(4));
    let names: Vec<_> = s
        .role_statuses
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.replicas,
                r.ready_replicas,
                r.updated_replicas,
            )
        })
        .collect();
    assert_eq!(names, [("prefill", 2, 2, 2), ("decode", 3, 3, 3)]);
    assert_eq!(
        (
            cond(&s, "Available").status.as_str(),
            cond(&s, "Available").reason.as_str()
        ),
        ("True", "AllRolesReady")
    );
    assert_eq!(cond(&s, "Progressing").status, "False");
    assert_eq!(cond(&s, "Valid").status, "True");
    assert_eq!(s.update_revision.as_deref(), Some("r"));
    assert_eq!(s.roles_ready.as_deref(), Some("prefill 2/2, decode 3/3"));
    assert!(s.rollout.is_none());
}

#[test]
fn rollout_is_progressing_sums_all_revisions_and_keeps_transition_times() {
    let t = target("new", &[("prefill", 2), ("decode", 2)]);
    let children = [
        child("old", "prefill", 1, Some(2), 1),
        child("old", "decode", 1, Some(2), 1),
        child("new", "prefill", 2, None, 2),
        child("new", "decode", 1, None, 2),
    ];
    let d = decide(&t, &children);
    let o = Observation {
        generation: Some(2),
        target: &t,
        children: &children,
        decision: Some(&d),
        violations: &[],
        abort: None,
        hold: None,
        blocked: None,
        progress_deadline_seconds: Some(60),
        previous: None,
        now: at(100),
    };
    let s1 = compute(&o);
    assert_eq!(
        (
            cond(&s1, "Progressing").status.as_str(),
            cond(&s1, "Progressing").reason.as_str()
        ),
        ("True", "RolloutInProgress")
    );
    assert_eq!(cond(&s1, "Available").status, "False");
    assert_eq!(s1.role_statuses[0].replicas, 3);
    assert_eq!(s1.role_statuses[0].updated_replicas, 2);
    assert_eq!(s1.current_revision.as_deref(), Some("old"));
    let r = s1.rollout.as_ref().unwrap();
    assert_eq!(
        (r.roles[1].old, r.roles[1].new, r.roles[1].target),
        (1, 1, 2)
    );
    assert_eq!(r.last_progress_time, Some(at(100)));

    // Same state 30s later: times stay, no Degraded yet.
    let later = Observation {
        previous: Some(&s1),
        now: at(130),
        ..o
    };
    let s2 = compute(&later);
    assert_eq!(cond(&s2, "Progressing").last_transition_time, at(100));
    assert_eq!(
        s2.rollout.as_ref().unwrap().last_progress_time,
        Some(at(100))
    );
    assert_eq!(cond(&s2, "Degraded").status, "False");
    // Past the deadline without progress: Degraded.
    let stalled = Observation {
        previous: Some(&s2),
        now: at(161),
        ..later
    };
    let s3 = compute(&stalled);
    assert_eq!(
        (
            cond(&s3, "Degraded").status.as_str(),
            cond(&s3, "Degraded").reason.as_str()
        ),
        ("True", "ProgressDeadlineExceeded")
    );
    assert_eq!(cond(&s3, "Degraded").last_transition_time, at(161));

    // The controller looks again exactly when the deadline passes: at 161 s,
    // the first whole second `compute` calls a stall.
    use crate::status::until_progress_deadline;
    let wait = until_progress_deadline(&s2, Some(60), &at(130)).unwrap();
    assert_eq!(wait, std::time::Duration::from_secs(31));
    let at_then = compute(&Observation {
        previous: Some(&s2),
        now: at(130 + wait.as_secs() as i64),
        ..later
    });
    assert_eq!(cond(&at_then, "Degraded").status, "True");
    assert_eq!(until_progress_deadline(&s3, Some(60), &at(161)), None);
    assert_eq!(until_progress_deadline(&s2, None, &at(130)), None);
}

#[test]
fn invalid_sets_and_holds_are_reported() {
    let t = target("r", &[("prefill", 2), ("decode", 2)]);
    let v = [Violation {
        field: "spec.roles[1].spec.rolloutStrategy.rollingUpdateConfiguration.partition".into(),
        message: "must be 0".into(),
    }];
    let hold = Hold {
        gate: "rollout-gate".into(),
        reason: "bake time".into(),
    };
    let o = Observation {
        generation: Some(1),
        target: &t,
        children: &[],
        decision: None,
        violations: &v,
        abort: None,
        hold: Some(&hold),
        blocked: None,
        progress_deadline_seconds: None,
        previous: None,
        now: at(5),
    };
    let s = compute(&o);
    let valid = cond(&s, "Valid");
    assert_eq!(
        (valid.status.as_str(), valid.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(valid.message.contains("partition: must be 0"));
    assert_eq!(cond(&s, "Available").status, "False");
    assert!(
        cond(&s, "RolloutHeld")
            .message
            .contains("rollout-gate: bake time")
    );
}
