//! The decide step with plain values: observed objects in, a plan out, and
//! plugins played by closures (a fake [`Plugin`]).

use super::render::{set, two_roles};
use crate::bindings::DefaultBinding;
use crate::decide::{Observed, Plan, Write, WriteFailure, decide};
use crate::plugins::{
    GateDecision, GateRequest, Hook, LwsPatch, NoPlugins, PatchRequest, Plugin, PluginError,
    PluginInfo, Plugins, ScaleAdvice, ScaleRequest, ValidateRequest, Violation,
};
use crate::render::render_child;
use crate::revision::revision;
use crate::status::conditions;
use disagg_api::keys;
use disagg_api::lws::{LeaderWorkerSet, LeaderWorkerSetStatus};
use disagg_api::scaler::{DisaggregatedSetRoleScaler, DisaggregatedSetRoleScalerSpec};
use disagg_api::set::{DisaggregatedSet, FailurePolicy, PluginBinding};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

type Hook_<Req, Ans> = Box<dyn Fn(&Req) -> Result<Ans, PluginError> + Send + Sync>;

/// A plugin whose hooks are closures; hooks left unset are not implemented.
#[derive(Default)]
struct Fake {
    info: PluginInfo,
    digest: String,
    patch: Option<Hook_<PatchRequest, LwsPatch>>,
    scale: Option<Hook_<ScaleRequest, Option<ScaleAdvice>>>,
    gate: Option<Hook_<GateRequest, GateDecision>>,
    validate: Option<Hook_<ValidateRequest, Vec<Violation>>>,
}

fn missing(hook: Hook) -> PluginError {
    PluginError::NotImplemented {
        plugin: "fake".into(),
        hook,
    }
}

impl Plugin for Fake {
    fn info(&self) -> &PluginInfo {
        &self.info
    }
    fn digest(&self) -> &str {
        &self.digest
    }
    fn patch_role(&self, r: &PatchRequest) -> Result<LwsPatch, PluginError> {
        self.patch.as_ref().ok_or(missing(Hook::PatchRole))?(r)
    }
    fn scale_role(&self, r: &ScaleRequest) -> Result<Option<ScaleAdvice>, PluginError> {
        self.scale.as_ref().ok_or(missing(Hook::ScaleRole))?(r)
    }
    fn gate_step(&self, r: &GateRequest) -> Result<GateDecision, PluginError> {
        self.gate.as_ref().ok_or(missing(Hook::GateStep))?(r)
    }
    fn validate(&self, r: &ValidateRequest) -> Result<Vec<Violation>, PluginError> {
        self.validate.as_ref().ok_or(missing(Hook::Validate))?(r)
    }
}

fn fake(name: &str, hooks: &[Hook]) -> Fake {
    Fake {
        info: PluginInfo {
            name: name.into(),
            version: "1".into(),
            hooks: hooks.to_vec(),
        },
        digest: format!("sha256:{}", "a".repeat(64)),
        ..Fake::default()
    }
}

/// Plugins by name, one of them possibly still compiling.
#[derive(Default)]
struct Registry {
    plugins: BTreeMap<String, Arc<dyn Plugin>>,
    loading: BTreeMap<String, Duration>,
}

impl Registry {
    fn with(name: &str, plugin: Fake) -> Registry {
        let mut r = Registry::default();
        r.plugins.insert(name.into(), Arc::new(plugin));
        r
    }
}

impl Plugins for Registry {
    fn get(&self, name: &str) -> Option<Arc<dyn Plugin>> {
        self.plugins.get(name).cloned()
    }
    fn loading_for(&self, name: &str) -> Option<Duration> {
        self.loading.get(name).copied()
    }
}

fn binding(name: &str, policy: FailurePolicy) -> PluginBinding {
    PluginBinding {
        name: name.into(),
        config: None,
        roles: None,
        failure_policy: policy,
        digest: None,
        signals: Vec::new(),
    }
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn plan(set: &DisaggregatedSet, children: &[LeaderWorkerSet], plugins: &dyn Plugins) -> Plan {
    plan_with(set, children, &[], &[], plugins)
}

fn plan_with(
    set: &DisaggregatedSet,
    children: &[LeaderWorkerSet],
    scalers: &[DisaggregatedSetRoleScaler],
    defaults: &[DefaultBinding],
    plugins: &dyn Plugins,
) -> Plan {
    decide(&Observed {
        set,
        children,
        scalers,
        defaults,
        plugins,
        signals: &crate::signals::NoSignals,
        signal_interval: std::time::Duration::from_secs(15),
        now: now(),
    })
}

fn created(plan: &Plan) -> Vec<&LeaderWorkerSet> {
    plan.created_children().collect()
}

fn condition<'p>(plan: &'p Plan, type_: &str) -> (&'p str, &'p str, &'p str) {
    let c = plan
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition: {plan:?}"));
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

/// A child as the API server would return it: rendered, ready at `replicas`.
fn ready_child(
    set: &DisaggregatedSet,
    role: usize,
    rev: &str,
    replicas: i32,
    initial: Option<i32>,
) -> LeaderWorkerSet {
    let mut child = render_child(set, &set.spec.roles[role], 0, rev, replicas);
    if let Some(initial) = initial {
        // An old child mid-rollout, planned for the role's spec replicas, and
        // with another template (else it would be adopted as the current one).
        child.spec.leader_worker_template.size += 1;
        let target = set.spec.roles[role].spec.replicas;
        child.metadata.annotations = Some(BTreeMap::from([
            (keys::INITIAL_REPLICAS.to_string(), initial.to_string()),
            (keys::ROLLOUT_TARGET.to_string(), target.to_string()),
        ]));
    }
    child.status = Some(LeaderWorkerSetStatus {
        replicas,
        ready_replicas: replicas,
        ..Default::default()
    });
    child
}

#[test]
fn a_new_set_creates_each_role_with_its_rendered_object() {
    let s = set(two_roles());
    let p = plan(&s, &[], &NoPlugins);
    let rev = revision(&s.spec, &[]);
    let made = created(&p);
    assert_eq!(made.len(), 2);
    for (child, role) in made.iter().zip(&s.spec.roles) {
        // Exactly what rendering gives: what is rendered is what is applied.
        assert_eq!(
            **child,
            render_child(&s, role, 0, &rev, role.spec.replicas),
            "{}",
            role.name
        );
    }
    assert!(p.writes.iter().all(|w| w.scope.is_some()));
    assert_eq!(
        p.writes[0].write.event().unwrap().note,
        format!(
            "created LeaderWorkerSet llm-0-{rev}-prefill (role prefill, slice 0, revision {rev}) at 2 replicas"
        )
    );
    assert_eq!(condition(&p, conditions::PLUGINS_READY).0, "True");
    assert!(p.events.is_empty(), "{:?}", p.events);
    assert!(p.status_update().is_some(), "a set without status gets one");
}

#[test]
fn the_events_of_one_reconciles_writes_are_one_per_kind() {
    use crate::decide::Event;
    let s = set(two_roles());
    let p = plan(&s, &[], &NoPlugins);
    let mut events: Vec<Event> = p.writes.iter().filter_map(|w| w.write.event()).collect();
    let notes: Vec<String> = events.iter().map(|e| e.note.clone()).collect();
    events.push(Event::warning("PluginFailed", "Plugin", "x failed".into()));
    events.push(Event::normal("ScaledChild", "Rollout", "scaled a".into()));
    events.push(Event::normal(
        "PluginFailed",
        "Plugin",
        "a normal one".into(),
    ));
    let merged = Event::merge(events);
    let kinds: Vec<_> = merged.iter().map(|e| (e.reason, e.warning)).collect();
    assert_eq!(
        kinds,
        [
            ("CreatedChild", false),
            ("PluginFailed", true),
            ("ScaledChild", false),
            ("PluginFailed", false)
        ],
        "first-seen order, warnings apart from normal Events of the same reason"
    );
    assert_eq!(merged[0].note, notes.join("; "));
    assert_eq!(notes.len(), 2);
}

#[test]
fn a_set_being_deleted_is_left_to_garbage_collection() {
    let mut s = set(two_roles());
    s.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    let p = plan(&s, &[], &NoPlugins);
    assert!(p.writes.is_empty() && p.status.is_none() && p.recheck.is_none());
}

#[test]
fn a_settled_set_writes_nothing_and_its_own_status_is_no_change() {
    let s = set(two_roles());
    let rev = revision(&s.spec, &[]);
    let children = [
        ready_child(&s, 0, &rev, 2, None),
        ready_child(&s, 1, &rev, 3, None),
    ];
    let first = plan(&s, &children, &NoPlugins);
    assert!(first.writes.is_empty(), "{:?}", first.writes);
    // The status it wrote comes back on the next event: nothing to write again.
    let mut again = s.clone();
    again.status = first.status.clone();
    let second = plan(&again, &children, &NoPlugins);
    assert!(second.writes.is_empty());
    assert_eq!(second.status_update(), None);
    assert_eq!(condition(&second, conditions::AVAILABLE).0, "True");
}

#[test]
fn patch_plugins_shape_created_children_and_enter_the_revision() {
    let mut s = set(two_roles());
    s.spec.plugins = vec![binding("shaper", FailurePolicy::Fail)];
    let mut shaper = fake("shaper", &[Hook::PatchRole]);
    shaper.patch = Some(Box::new(|r| {
        assert!(r.set.contains("\"llm\"") && r.lws.contains(&r.role));
        Ok(LwsPatch::Merge(
            json!({"metadata": {"labels": {"shaped": r.role.clone()}}}),
        ))
    }));
    let p = plan(&s, &[], &Registry::with("shaper", shaper));
    let made = created(&p);
    assert_eq!(made.len(), 2);
    assert_eq!(
        made[1].metadata.labels.as_ref().unwrap()["shaped"],
        "decode"
    );
    let plain = revision(&s.spec, &[]);
    assert_ne!(p.target.as_ref().unwrap().revision, plain);
}

#[test]
fn a_failing_patch_under_fail_holds_its_role_and_under_ignore_is_skipped() {
    for (policy, children, status) in [
        (FailurePolicy::Fail, 1, "False"),
        (FailurePolicy::Ignore, 2, "False"),
    ] {
        let mut s = set(two_roles());
        s.spec.plugins = vec![PluginBinding {
            roles: Some(vec!["prefill".into()]),
            ..binding("shaper", policy)
        }];
        let mut shaper = fake("shaper", &[Hook::PatchRole]);
        shaper.patch = Some(Box::new(|_| {
            Err(PluginError::Timeout {
                plugin: "shaper".into(),
                limit_ms: 100,
            })
        }));
        let p = plan(&s, &[], &Registry::with("shaper", shaper));
        let made = created(&p);
        assert_eq!(made.len(), children, "{policy:?}");
        assert!(
            made.iter()
                .any(|c| c.metadata.name.as_deref().unwrap().ends_with("decode"))
        );
        let (st, reason, message) = condition(&p, conditions::PLUGINS_READY);
        assert_eq!((st, reason), (status, "PluginTimeout"), "{policy:?}");
        assert!(
            message.contains("patch-role") && message.contains("role prefill"),
            "{message}"
        );
        assert!(
            p.events
                .iter()
                .any(|e| e.warning && e.reason == "PluginFailed")
        );
        assert_eq!(p.new_failures, [("shaper".to_string(), "PluginTimeout")]);
        // Under Fail the held-back role is what the set is waiting for, not a rollout.
        let (_, progressing, why) = condition(&p, conditions::PROGRESSING);
        match policy {
            FailurePolicy::Fail => {
                assert_eq!(progressing, "PluginBlocked");
                assert!(
                    why.starts_with("changes to role prefill wait for plugins: shaper"),
                    "{why}"
                );
            }
            FailurePolicy::Ignore => assert_eq!(progressing, "RolloutInProgress"),
        }
    }
}

/// A patch cut off because the operator was short of CPU did not fail: under
/// `Ignore` too its role gets no child without it, and it is asked again soon.
#[test]
fn a_patch_starved_of_cpu_holds_its_role_under_ignore_and_is_retried() {
    let mut s = set(two_roles());
    s.spec.plugins = vec![PluginBinding {
        roles: Some(vec!["prefill".into()]),
        ..binding("shaper", FailurePolicy::Ignore)
    }];
    let mut shaper = fake("shaper", &[Hook::PatchRole]);
    shaper.patch = Some(Box::new(|_| {
        Err(PluginError::Starved {
            plugin: "shaper".into(),
            limit_ms: 100,
            used_ms: 12,
            wall_ms: 1000,
        })
    }));
    let p = plan(&s, &[], &Registry::with("shaper", shaper));
    let made = created(&p);
    assert_eq!(made.len(), 1);
    assert!(
        made[0]
            .metadata
            .name
            .as_deref()
            .unwrap()
            .ends_with("decode")
    );
    let (st, reason, message) = condition(&p, conditions::PLUGINS_READY);
    assert_eq!((st, reason), ("False", "PluginStarved"));
    assert!(message.contains("short of CPU"), "{message}");
    assert_eq!(p.recheck, Some(Duration::from_secs(1)));
}

#[test]
fn a_missing_plugin_under_fail_stops_the_whole_set() {
    let mut s = set(two_roles());
    s.spec.plugins = vec![binding("nowhere", FailurePolicy::Fail)];
    let p = plan(&s, &[], &NoPlugins);
    assert!(created(&p).is_empty());
    assert_eq!(condition(&p, conditions::PLUGINS_READY).1, "PluginMissing");
    let (_, reason, why) = condition(&p, conditions::PROGRESSING);
    assert_eq!(reason, "PluginBlocked");
    assert!(
        why.contains("role decode, prefill wait") && why.contains("nowhere"),
        "{why}"
    );
}

#[test]
fn a_plugin_still_compiling_holds_the_set_and_shows_after_a_moment() {
    let mut s = set(two_roles());
    s.spec.plugins = vec![binding("slow", FailurePolicy::Ignore)];
    let mut registry = Registry::default();
    registry
        .loading
        .insert("slow".into(), Duration::from_millis(300));
    let p = plan(&s, &[], &registry);
    assert!(p.writes.is_empty());
    assert_eq!(p.recheck, Some(Duration::from_millis(500)));
    assert_eq!(
        p.status_update(),
        Some(&Default::default()),
        "nothing shown yet"
    );
    registry
        .loading
        .insert("slow".into(), Duration::from_secs(3));
    let p = plan(&s, &[], &registry);
    assert!(p.writes.is_empty());
    let (st, reason, message) = condition(&p, conditions::PLUGINS_READY);
    assert_eq!((st, reason), ("False", "PluginLoading"));
    assert!(message.contains("slow"), "{message}");
}

#[test]
fn a_holding_gate_stops_the_step_and_says_so_once() {
    let mut s = set(two_roles());
    s.spec.plugins = vec![binding("gate", FailurePolicy::Fail)];
    let mut gate = fake("gate", &[Hook::GateStep]);
    gate.gate = Some(Box::new(|r| {
        assert_eq!((r.step, r.set_name.as_str()), (1, "llm"));
        Ok(GateDecision::Hold {
            reason: "waiting for approval".into(),
            recheck_after_ms: 7_000,
        })
    }));
    let plugins = Registry::with("gate", gate);
    // Mid-rollout: the old revision at full size, ready; the new one absent.
    let old = [
        ready_child(&s, 0, "0ld0ld00", 2, Some(2)),
        ready_child(&s, 1, "0ld0ld00", 3, Some(3)),
    ];
    let p = plan(&s, &old, &plugins);
    assert!(p.writes.is_empty(), "held: {:?}", p.writes);
    assert_eq!(p.recheck, Some(Duration::from_secs(7)));
    let held = p.events.iter().find(|e| e.reason == "RolloutHeld").unwrap();
    assert!(
        held.note.contains("held by gate: waiting for approval"),
        "{}",
        held.note
    );
    let rollout = p.status.as_ref().unwrap().rollout.clone().unwrap();
    assert_eq!(rollout.held_by.as_deref(), Some("gate"));
    // Seen again with that status: no second Event.
    let mut again = s.clone();
    again.status = p.status.clone();
    let p = plan(&again, &old, &plugins);
    assert!(
        p.events.iter().all(|e| e.reason != "RolloutHeld"),
        "{:?}",
        p.events
    );
}

#[test]
fn scaling_advice_sets_the_replicas_created() {
    let mut s = set(two_roles());
    s.spec.plugins = vec![binding("scaler", FailurePolicy::Fail)];
    let mut scaler = fake("scaler", &[Hook::ScaleRole]);
    scaler.scale = Some(Box::new(|r| {
        Ok((r.role == "decode").then(|| ScaleAdvice {
            replicas: 6,
            reason: "2 × prefill".into(),
        }))
    }));
    let p = plan(&s, &[], &Registry::with("scaler", scaler));
    let replicas: Vec<i32> = created(&p).iter().map(|c| c.spec.replicas).collect();
    assert_eq!(replicas, [2, 6]);
}

#[test]
fn plugin_violations_and_mandatory_overrides_make_the_set_invalid() {
    let mut s = set(two_roles());
    s.spec.plugins = vec![binding("policy", FailurePolicy::Ignore)];
    let defaults = [DefaultBinding {
        binding: binding("policy", FailurePolicy::Fail),
        mandatory: true,
    }];
    let mut policy = fake("policy", &[Hook::Validate]);
    policy.validate = Some(Box::new(|_| Ok(vec![])));
    let plugins = Registry::with("policy", policy);
    let p = plan_with(&s, &[], &[], &defaults, &plugins);
    assert!(p.writes.is_empty());
    assert_eq!(condition(&p, conditions::VALID).0, "False");
    assert!(p.violations[0].message.contains("mandatory"));
    assert!(p.events.iter().any(|e| e.reason == "Invalid"));

    // The plugin's own rules: its violations, named after it.
    s.spec.plugins.clear();
    let mut strict = fake("policy", &[Hook::Validate]);
    strict.validate = Some(Box::new(|_| {
        Ok(vec![Violation {
            field: "spec.roles".into(),
            message: "needs an encode role".into(),
        }])
    }));
    let p = plan_with(&s, &[], &[], &defaults, &Registry::with("policy", strict));
    assert!(p.writes.is_empty());
    assert_eq!(
        p.violations[0].message,
        "needs an encode role (plugin policy)"
    );
}

#[test]
fn external_roles_get_a_scaler_and_follow_it() {
    let mut spec = two_roles();
    spec["roles"][1]["scaling"] = json!({"mode": "External"});
    let s = set(spec);
    // No scaler yet: one is created at the role's replicas.
    let p = plan(&s, &[], &NoPlugins);
    let Write::CreateScaler(scaler) = &p.writes[0].write else {
        panic!("{:?}", p.writes)
    };
    assert_eq!(
        (scaler.metadata.name.as_deref(), scaler.spec.replicas),
        (Some("llm-decode"), 3)
    );
    // A scaler the set controls: its replicas win; its status is kept
    // current; a scaler of a role no longer External goes.
    let mut ours = DisaggregatedSetRoleScaler::new(
        "llm-decode",
        DisaggregatedSetRoleScalerSpec { replicas: 5 },
    );
    ours.metadata.owner_references = Some(vec![crate::render::owner_reference(&s)]);
    ours.metadata.labels = Some(BTreeMap::from([(
        keys::ROLE.to_string(),
        "decode".to_string(),
    )]));
    let mut stale = DisaggregatedSetRoleScaler::new(
        "llm-prefill",
        DisaggregatedSetRoleScalerSpec { replicas: 1 },
    );
    stale.metadata.owner_references = ours.metadata.owner_references.clone();
    stale.metadata.labels = Some(BTreeMap::from([(
        keys::ROLE.to_string(),
        "prefill".to_string(),
    )]));
    let p = plan_with(&s, &[], &[ours, stale], &[], &NoPlugins);
    let writes: Vec<&Write> = p.writes.iter().map(|w| &w.write).collect();
    assert!(
        matches!(writes[0], Write::ScalerStatus { name, replicas: 0, .. } if name == "llm-decode")
    );
    assert!(
        matches!(writes[1], Write::DeleteScaler { name } if name == "llm-prefill"),
        "{writes:?}"
    );
    let decode = created(&p)
        .into_iter()
        .find(|c| c.metadata.name.as_deref().unwrap().ends_with("decode"))
        .unwrap();
    assert_eq!(decode.spec.replicas, 5);
}

#[test]
fn refused_writes_are_reported_with_a_condition_an_event_and_a_retry() {
    let s = set(two_roles());
    let mut p = plan(&s, &[], &NoPlugins);
    let why = p.writes[0]
        .write
        .refused("GPU quota exceeded (403 Forbidden)");
    assert!(
        why.starts_with("cannot create LeaderWorkerSet llm-0-"),
        "{why}"
    );
    p.after_writes(&[WriteFailure {
        child: p.writes[0].write.object().to_string(),
        message: why.clone(),
        retry_in: Duration::from_secs(4),
        new: true,
    }]);
    let (st, reason, message) = condition(&p, conditions::REPLICA_FAILURE);
    assert_eq!((st, reason, message), ("True", "FailedWrite", why.as_str()));
    let event = p.events.iter().find(|e| e.reason == "FailedWrite").unwrap();
    assert!(
        event.warning && event.note.ends_with("retrying in 4 s"),
        "{}",
        event.note
    );
    assert_eq!(p.recheck, Some(Duration::from_secs(4)));
}

#[test]
fn a_gate_that_asks_to_abort_has_the_abort_written_and_signals_reported() {
    use disagg_api::set::SignalQuery;
    let mut s = set(two_roles());
    s.spec.plugins = vec![PluginBinding {
        signals: vec![SignalQuery {
            name: "ttft".into(),
            query: "q{r=\"{{revision}}\"}".into(),
        }],
        ..binding("gate", FailurePolicy::Fail)
    }];
    let mut gate = fake("gate", &[Hook::GateStep]);
    gate.gate = Some(Box::new(|r| {
        // No Prometheus here: the signal says why, and the gate decides anyway.
        assert_eq!(r.signals.len(), 1);
        assert!(
            r.signals[0]
                .error
                .as_deref()
                .unwrap()
                .contains("--prometheus-url")
        );
        assert_eq!(r.old_revision, "0ld0ld00");
        Ok(GateDecision::Abort {
            reason: "TTFT 2.4 s".into(),
        })
    }));
    let plugins = Registry::with("gate", gate);
    let old = [
        ready_child(&s, 0, "0ld0ld00", 2, Some(2)),
        ready_child(&s, 1, "0ld0ld00", 3, Some(3)),
    ];
    let p = plan(&s, &old, &plugins);
    let rev = p.target.as_ref().unwrap().revision.clone();
    let aborts: Vec<&Write> = p
        .writes
        .iter()
        .map(|w| &w.write)
        .filter(|w| matches!(w, Write::AbortSet { .. }))
        .collect();
    assert_eq!(
        aborts,
        [&Write::AbortSet {
            reason: "by gate gate: TTFT 2.4 s".into(),
            revision: rev,
        }]
    );
    assert!(
        p.writes
            .iter()
            .all(|w| !matches!(w.write, Write::CreateChild(_) | Write::ScaleChild { .. })),
        "the step is held until the abort is read back: {:?}",
        p.writes
    );
    let (st, reason, message) = condition(&p, conditions::SIGNALS_READY);
    assert_eq!((st, reason), ("False", "SignalUnavailable"));
    assert!(
        message.starts_with("gate/ttft: no Prometheus is configured"),
        "{message}"
    );
    // Signals make the set be looked at again soon (metrics change with no object changing).
    assert!(p.recheck.unwrap() <= Duration::from_secs(15));
}
