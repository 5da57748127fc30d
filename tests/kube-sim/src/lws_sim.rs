//! The LWS simulator: plays the LeaderWorkerSet controller and the kubelet for
//! every LeaderWorkerSet in the store, so that its status follows its spec.
//!
//! Each LWS has `spec.replicas` groups. A group is created when the LWS scales
//! up (or its template changes, which recreates every group) and becomes ready
//! `group_delay` later, unless held unready. The simulator writes
//! `status.replicas`, `readyReplicas`, `updatedReplicas`, `observedGeneration`,
//! `hpaPodSelector` and the `Available`/`Progressing` conditions through the
//! status subresource, only when they change.
//!
//! Holding groups unready, for tests:
//! * `unready_fraction` in [`LwsSimConfig`] holds that fraction of every
//!   LWS's groups (rounded down; the highest indices);
//! * the annotation [`UNREADY_ANNOTATION`] on one LWS holds `"all"` or the
//!   given number of its groups.

use crate::fields;
use crate::store::{Filter, ResourceId, Store};
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Holds `"all"` or N of one LWS's groups unready.
pub const UNREADY_ANNOTATION: &str = "kube-sim.x-k8s.io/unready-groups";
/// The field manager of the simulator's status writes.
pub const MANAGER: &str = "kube-sim-lws-controller";

/// How the simulated groups behave; adjustable while running.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LwsSimConfig {
    /// From a group's creation until it is ready.
    pub group_delay: Duration,
    /// The fraction of every LWS's groups that never become ready.
    pub unready_fraction: f64,
}

impl LwsSimConfig {
    /// From the admin endpoint's JSON: `{"groupDelayMs": 200, "unreadyFraction": 0.5}`.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let delay = v["groupDelayMs"].as_u64().unwrap_or(0);
        let fraction = v["unreadyFraction"].as_f64().unwrap_or(0.0);
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!("unreadyFraction must be in [0, 1], got {fraction}"));
        }
        Ok(LwsSimConfig {
            group_delay: Duration::from_millis(delay),
            unready_fraction: fraction,
        })
    }
}

/// The shared, adjustable configuration of a running simulator; a change
/// applies to every LWS at once.
#[derive(Clone)]
pub struct LwsSimControls(Arc<watch::Sender<LwsSimConfig>>);

impl Default for LwsSimControls {
    fn default() -> Self {
        LwsSimControls(Arc::new(watch::Sender::new(LwsSimConfig::default())))
    }
}

impl LwsSimControls {
    pub fn set(&self, config: LwsSimConfig) {
        self.0.send_replace(config);
    }
    pub fn get(&self) -> LwsSimConfig {
        self.0.borrow().clone()
    }
}

pub fn lws_resource() -> ResourceId {
    ResourceId::new("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")
}

/// What the simulator remembers of one LWS.
struct Groups {
    uid: String,
    template: Value,
    /// When each group (by index) was created.
    created: Vec<Instant>,
}

/// Starts the simulator on `store`. It runs until the store's event stream closes.
pub fn spawn(store: Arc<Store>, controls: LwsSimControls) -> tokio::task::JoinHandle<()> {
    let mut events = store.subscribe();
    let mut changes = controls.0.subscribe();
    tokio::spawn(async move {
        let mut state: HashMap<(String, String), Groups> = HashMap::new();
        let mut due = Due::default();
        // Pick up what exists already.
        let mut dirty: Vec<(String, String)> = list_all(&store);
        loop {
            let now = Instant::now();
            let config = controls.get();
            // Every group that became ready since the last pass, whatever woke
            // us (an event can win the race against the timer).
            dirty.extend(due.until(now));
            dirty.sort();
            dirty.dedup();
            for key in dirty.drain(..) {
                sync(&store, &mut state, &mut due, &key, &config, now);
            }
            // Sleep until the next group becomes ready, or an LWS changes.
            let wake = due.next().unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                received = events.recv() => match received {
                    Ok(e) if e.resource == lws_resource() => {
                        let name = e.object["metadata"]["name"].as_str().unwrap_or_default().to_string();
                        dirty.push((e.namespace, name));
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => dirty = list_all(&store),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep_until(wake) => {}
                _ = changes.changed() => {
                    // A new delay moves every group's ready moment.
                    due = Due::of(&state, controls.get().group_delay);
                    dirty = list_all(&store);
                }
            }
        }
    })
}

fn list_all(store: &Store) -> Vec<(String, String)> {
    store
        .list(&lws_resource(), &Filter::default(), 0, None)
        .map(|page| {
            page.items
                .iter()
                .map(|o| {
                    let m = &o["metadata"];
                    (
                        m["namespace"].as_str().unwrap_or_default().to_string(),
                        m["name"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// When groups become ready, earliest first, and which LWS each is of: a
/// pass looks at the LWSs whose moment has come, not at every LWS (which, per
/// event, made the simulator quadratic in the number of LWSs).
#[derive(Default)]
struct Due(BinaryHeap<Reverse<(Instant, (String, String))>>);

impl Due {
    /// Every group not yet ready, at `delay` after its creation.
    fn of(state: &HashMap<(String, String), Groups>, delay: Duration) -> Due {
        let now = Instant::now();
        let mut due = Due::default();
        for (key, groups) in state {
            for created in &groups.created {
                if *created + delay > now {
                    due.at(*created + delay, key);
                }
            }
        }
        due
    }

    fn at(&mut self, when: Instant, key: &(String, String)) {
        self.0.push(Reverse((when, key.clone())));
    }

    /// The LWSs with a group ready by `now`, taken off the queue.
    fn until(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        while self.0.peek().is_some_and(|Reverse((t, _))| *t <= now) {
            if let Some(Reverse((_, key))) = self.0.pop() {
                keys.push(key);
            }
        }
        keys
    }

    /// When the next group becomes ready.
    fn next(&self) -> Option<Instant> {
        self.0.peek().map(|Reverse((t, _))| *t)
    }
}

/// Brings one LWS's groups and status up to date.
fn sync(
    store: &Store,
    state: &mut HashMap<(String, String), Groups>,
    due: &mut Due,
    key: &(String, String),
    config: &LwsSimConfig,
    now: Instant,
) {
    let Ok(lws) = store.get(&lws_resource(), &key.0, &key.1) else {
        state.remove(key);
        return;
    };
    let uid = lws["metadata"]["uid"].as_str().unwrap_or_default();
    let template = lws["spec"]["leaderWorkerTemplate"].clone();
    let replicas = lws["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    let groups = state.entry(key.clone()).or_insert_with(|| Groups {
        uid: uid.to_string(),
        template: template.clone(),
        created: Vec::new(),
    });
    if groups.uid != uid || groups.template != template {
        // A new object, or a new template: every group is recreated.
        groups.uid = uid.to_string();
        groups.template = template;
        groups.created.clear();
    }
    groups.created.truncate(replicas);
    if groups.created.len() < replicas && !config.group_delay.is_zero() {
        due.at(now + config.group_delay, key);
    }
    while groups.created.len() < replicas {
        groups.created.push(now);
    }
    let held = held_unready(&lws, replicas, config.unready_fraction);
    let ready = groups
        .created
        .iter()
        .take(replicas - held)
        .filter(|c| **c + config.group_delay <= now)
        .count();
    // Groups exist the moment they are created; all of them run the current template.
    if let Some(status) = status(&lws, replicas, ready)
        && let Err(e) = write_status(store, &lws, status)
        && e.code != 409
        && e.code != 404
    {
        eprintln!("kube-sim lws simulator: status of {}/{}: {e}", key.0, key.1);
    }
    // A 409 means the LWS changed meanwhile; its event brings it back here.
}

/// How many groups are held unready by the annotation or the configured fraction.
fn held_unready(lws: &Value, replicas: usize, fraction: f64) -> usize {
    match lws["metadata"]["annotations"][UNREADY_ANNOTATION].as_str() {
        Some("all") => replicas,
        Some(n) => n.trim().parse::<usize>().unwrap_or(0).min(replicas),
        None => ((replicas as f64) * fraction).floor() as usize,
    }
}

/// The status an LWS with `ready` of `replicas` groups ready should have, or
/// None when it already has it (also for status writers on a real server).
pub fn status(lws: &Value, replicas: usize, ready: usize) -> Option<Value> {
    let current = &lws["status"];
    let name = lws["metadata"]["name"].as_str().unwrap_or_default();
    let available = ready == replicas;
    let condition = |type_: &str, on: bool, reason: &str, message: String| {
        let status = if on { "True" } else { "False" };
        // Keep the transition time while the condition's status is unchanged.
        let since = current["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_ && c["status"] == status)
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(crate::store::now()));
        json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since})
    };
    let wanted = json!({
        "replicas": replicas,
        "readyReplicas": ready,
        "updatedReplicas": replicas,
        "observedGeneration": lws["metadata"]["generation"],
        "hpaPodSelector": format!("leaderworkerset.sigs.k8s.io/name={name},leaderworkerset.sigs.k8s.io/worker-index=0"),
        "conditions": [
            condition("Available", available, if available { "AllGroupsReady" } else { "GroupsNotReady" },
                      format!("{ready}/{replicas} groups are ready")),
            condition("Progressing", !available, if available { "GroupsReady" } else { "GroupsProgressing" },
                      if available { "all groups are ready".to_string() } else { format!("waiting for {} groups", replicas - ready) }),
        ],
    });
    (current != &wanted).then_some(wanted)
}

fn write_status(
    store: &Store,
    lws: &Value,
    status: Value,
) -> Result<Value, crate::store::StoreError> {
    let mut next = lws.clone();
    next["status"] = status;
    let time = crate::store::now();
    fields::record_update(
        Some(lws),
        &mut next,
        &fields::Writer {
            manager: MANAGER,
            api_version: "leaderworkerset.x-k8s.io/v1",
            time: &time,
            scope: fields::Scope::Status,
        },
    );
    let m = &lws["metadata"];
    store.update(
        &lws_resource(),
        m["namespace"].as_str().unwrap_or_default(),
        m["name"].as_str().unwrap_or_default(),
        next,
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_follow_the_annotation_before_the_fraction() {
        let lws = |a: Value| json!({"metadata": {"annotations": a}});
        assert_eq!(held_unready(&lws(json!({})), 4, 0.5), 2);
        assert_eq!(held_unready(&lws(json!({})), 3, 0.5), 1);
        assert_eq!(
            held_unready(&lws(json!({UNREADY_ANNOTATION: "all"})), 4, 0.0),
            4
        );
        assert_eq!(
            held_unready(&lws(json!({UNREADY_ANNOTATION: "9"})), 4, 0.0),
            4
        );
        assert_eq!(
            held_unready(&lws(json!({UNREADY_ANNOTATION: "1"})), 4, 0.9),
            1
        );
    }

    #[test]
    fn status_is_none_when_unchanged() {
        let mut lws = json!({"metadata": {"name": "x", "generation": 2}, "spec": {"replicas": 2}});
        let s = status(&lws, 2, 1).unwrap();
        assert_eq!(s["readyReplicas"], 1);
        assert_eq!(s["conditions"][0]["status"], "False");
        lws["status"] = s;
        assert!(status(&lws, 2, 1).is_none());
        let s = status(&lws, 2, 2).unwrap();
        assert_eq!(s["conditions"][0]["status"], "True");
    }
}
