//! The work queue as metrics see it. kube-rs's `Controller` keeps its queue
//! to itself, so the operator follows the same triggers on their way in: a
//! set is queued from the watch event that concerns it (its own, a child's
//! or a scaler's) until its next reconcile starts. Several events for one
//! set are one entry, as in the controller's queue. Requeues a reconcile
//! asks for (a timer) and plugin swaps (every set at once) are not counted;
//! neither are events for sets that are gone (garbage collection deleting a
//! deleted set's children), which the controller does not reconcile either.
//!
//! * `disagg_reconcile_queue_depth`: sets waiting for a reconcile now;
//! * `disagg_step_latency_seconds`: from the event that queued a set to the
//!   first write of the reconcile it caused: the operator's reaction time,
//!   queueing, decide and all.

use super::metrics::Metrics;
use disagg_api::keys;
use disagg_api::set::DisaggregatedSet;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Queue {
    /// namespace/name of the set → when it was queued.
    waiting: Mutex<HashMap<String, Instant>>,
    /// The sets the controller reconciles (its store).
    sets: Store<DisaggregatedSet>,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(sets: Store<DisaggregatedSet>, metrics: Arc<Metrics>) -> Self {
        Queue {
            waiting: Mutex::default(),
            sets,
            metrics,
        }
    }

    /// A watch event about an object: the set it belongs to is queued (a
    /// set is its own; children and scalers name theirs by label).
    pub fn triggered<K: Resource>(&self, object: &K, is_set: bool) {
        let meta = object.meta();
        let set = if is_set {
            meta.name.as_ref()
        } else {
            meta.labels.as_ref().and_then(|l| l.get(keys::NAME))
        };
        let Some(set) = set else { return };
        let ns = meta.namespace.as_deref().unwrap_or_default();
        if self.sets.get(&ObjectRef::new(set).within(ns)).is_none() {
            return;
        }
        let mut waiting = self.lock();
        waiting
            .entry(format!("{ns}/{set}"))
            .or_insert_with(Instant::now);
        self.metrics.queue_depth(waiting.len());
    }

    /// The set is gone: it will not be reconciled again.
    pub fn forget(&self, set: &DisaggregatedSet) {
        let ns = set.meta().namespace.as_deref().unwrap_or_default();
        let name = set.meta().name.as_deref().unwrap_or_default();
        self.started(ns, name);
    }

    /// The set's reconcile starts: when it was queued, if a watch event
    /// queued it.
    pub fn started(&self, namespace: &str, name: &str) -> Option<Instant> {
        let mut waiting = self.lock();
        let since = waiting.remove(&format!("{namespace}/{name}"));
        self.metrics.queue_depth(waiting.len());
        since
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use disagg_api::lws::LeaderWorkerSet;

    fn child(ns: &str, set: Option<&str>) -> LeaderWorkerSet {
        let mut c: LeaderWorkerSet = serde_json::from_value(serde_json::json!({
            "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": {"name": "c", "namespace": ns},
            "spec": {"leaderWorkerTemplate": {"workerTemplate": {"spec": {"containers": []}}}}
        }))
        .unwrap();
        if let Some(set) = set {
            c.metadata.labels = Some([(keys::NAME.to_string(), set.to_string())].into());
        }
        c
    }

    fn set(ns: &str, name: &str) -> DisaggregatedSet {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "disaggregatedset.x-k8s.io/v1alpha1", "kind": "DisaggregatedSet",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"roles": []}
        }))
        .unwrap()
    }

    fn depth(m: &Metrics) -> Option<String> {
        m.encode()
            .lines()
            .find_map(|l| l.strip_prefix("disagg_reconcile_queue_depth "))
            .map(str::to_string)
    }

    #[test]
    fn events_for_one_set_are_one_entry_until_its_reconcile_starts() {
        use kube::runtime::watcher::Event;
        let metrics = Arc::new(Metrics::default());
        let (sets, mut writer) = kube::runtime::reflector::store();
        for (ns, name) in [("ns", "a"), ("other", "a")] {
            writer.apply_watcher_event(&Event::Apply(set(ns, name)));
        }
        let q = Queue::new(sets, metrics.clone());
        q.triggered(&child("ns", Some("a")), false);
        let first = q.lock()["ns/a"];
        q.triggered(&child("ns", Some("a")), false);
        q.triggered(&child("other", Some("a")), false);
        q.triggered(&child("ns", None), false); // no set: not ours
        q.triggered(&child("ns", Some("gone")), false); // a set not (or no longer) there
        assert_eq!(depth(&metrics).as_deref(), Some("2"));
        assert_eq!(
            q.started("ns", "a"),
            Some(first),
            "queued at the first event"
        );
        assert_eq!(
            q.started("ns", "a"),
            None,
            "a requeue was not a watch event"
        );
        assert_eq!(depth(&metrics).as_deref(), Some("1"));
        q.triggered(&set("other", "a"), true);
        assert_eq!(depth(&metrics).as_deref(), Some("1"), "the same set");

        // A queued set deleted before its reconcile leaves the queue.
        writer.apply_watcher_event(&Event::Delete(set("other", "a")));
        q.forget(&set("other", "a"));
        assert_eq!(depth(&metrics).as_deref(), Some("0"));
        q.triggered(&child("other", Some("a")), false); // its children going with it
        assert_eq!(depth(&metrics).as_deref(), Some("0"));
    }
}
