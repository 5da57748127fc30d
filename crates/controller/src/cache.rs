//! What the operator knows of the cluster between reconciles, so that a
//! reconcile makes no API reads: reflector stores of every set's children and
//! scalers, fed by the same watches that trigger reconciles, and the
//! operator's own writes those stores have not shown yet.
//!
//! A store lags the API server by a watch event. Acting on a store that has
//! not yet seen the operator's last write would repeat it (harmless, since
//! every write is idempotent, but it is load) or take a step from an older
//! state. So every write is remembered as an [`Expectation`] on its object
//! until the store shows it (ReplicaSet-style expectations, checked by
//! resourceVersion), and a set with an unmet expectation is not decided:
//! the watch event that meets it triggers the next reconcile. An expectation
//! the store never meets (a watch that dropped the event and relisted after
//! the object changed again) expires after [`EXPECTATION_TTL`].

use disagg_api::keys;
use disagg_api::lws::LeaderWorkerSet;
use disagg_api::scaler::DisaggregatedSetRoleScaler;
use disagg_api::set::{DisaggregatedSet, DisaggregatedSetStatus};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a write may stay unseen before the set is decided anyway.
pub const EXPECTATION_TTL: Duration = Duration::from_secs(5);

/// Which store an expectation is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Child,
    Scaler,
}

/// A write of the operator's that its store must show before the set is
/// decided again.
#[derive(Clone, Debug)]
pub struct Expectation {
    pub kind: Kind,
    pub name: String,
    /// The resourceVersion the write produced, or `None` for a delete (the
    /// object must be gone or going).
    pub version: Option<String>,
}

struct Pending {
    expectation: Expectation,
    since: Instant,
}

/// The stores and what the operator expects them to show.
pub struct Caches {
    pub children: Store<LeaderWorkerSet>,
    pub scalers: Store<DisaggregatedSetRoleScaler>,
    /// Which of the stores' objects are which set's.
    child_index: Arc<Index>,
    scaler_index: Arc<Index>,
    /// Per set (namespace/name): writes not yet seen.
    pending: Mutex<HashMap<String, Vec<Pending>>>,
    /// Per set: the status last written and the set's resourceVersion after it.
    statuses: Mutex<HashMap<String, (String, DisaggregatedSetStatus)>>,
    /// Per set: when its status was last written.
    status_times: Mutex<HashMap<String, Instant>>,
    /// Whether both stores have listed, once one waiter has found out.
    listed: tokio::sync::OnceCell<bool>,
}

fn key(set: &DisaggregatedSet) -> String {
    format!("{}/{}", set.namespace().unwrap_or_default(), set.name_any())
}

/// Whether `seen` is `wanted` or later. Resource versions are opaque to
/// clients, but every etcd-backed server (and kube-sim) issues increasing
/// integers; anything else is compared for equality only, and the
/// expectation's expiry covers the rest.
fn at_least(seen: Option<&str>, wanted: &str) -> bool {
    let Some(seen) = seen else { return false };
    match (seen.parse::<u64>(), wanted.parse::<u64>()) {
        (Ok(s), Ok(w)) => s >= w,
        _ => seen == wanted,
    }
}

impl Caches {
    pub fn new(
        children: Store<LeaderWorkerSet>,
        scalers: Store<DisaggregatedSetRoleScaler>,
    ) -> Self {
        Caches {
            children,
            scalers,
            child_index: Arc::default(),
            scaler_index: Arc::default(),
            pending: Mutex::default(),
            statuses: Mutex::default(),
            status_times: Mutex::default(),
            listed: tokio::sync::OnceCell::new(),
        }
    }

    /// Waits until both stores have listed once (a reconcile before that
    /// would see a set with no children and create them all); `false` if a
    /// store's watch is gone for good.
    ///
    /// One waiter at a time waits on the stores; the rest wait on it.
    /// kube-runtime's `Store::wait_until_ready` keeps the waker of its last
    /// poller only (a `futures` oneshot), so of the reconciles a starting
    /// operator runs at once, all but one would sleep through the list and
    /// on to their timeout.
    pub async fn ready(&self) -> bool {
        *self
            .listed
            .get_or_init(|| async {
                self.children.wait_until_ready().await.is_ok()
                    && self.scalers.wait_until_ready().await.is_ok()
            })
            .await
    }

    /// The set's children, as the store shows them.
    pub fn children_of(&self, set: &DisaggregatedSet) -> Vec<LeaderWorkerSet> {
        owned(&self.children, &self.child_index, set)
    }

    /// The set's scalers, as the store shows them.
    pub fn scalers_of(&self, set: &DisaggregatedSet) -> Vec<DisaggregatedSetRoleScaler> {
        owned(&self.scalers, &self.scaler_index, set)
    }

    /// The indexes the children's and the scalers' watches keep (see [`Index`]).
    pub fn indexes(&self) -> (Arc<Index>, Arc<Index>) {
        (self.child_index.clone(), self.scaler_index.clone())
    }

    /// Remembers a write the stores must show before the set is decided again.
    pub fn expect(&self, set: &DisaggregatedSet, expectation: Expectation) {
        self.pending
            .lock()
            .expect("expectations lock")
            .entry(key(set))
            .or_default()
            .push(Pending {
                expectation,
                since: Instant::now(),
            });
    }

    /// Drops the set's met and expired expectations; returns how long the
    /// oldest unmet one may still be waited for, or `None` when the stores
    /// show every write (the set can be decided).
    pub fn unmet(&self, set: &DisaggregatedSet) -> Option<Duration> {
        let mut pending = self.pending.lock().expect("expectations lock");
        let list = pending.get_mut(&key(set))?;
        let ns = set.namespace().unwrap_or_default();
        list.retain(|p| p.since.elapsed() < EXPECTATION_TTL && !self.shows(&ns, &p.expectation));
        let wait = list
            .iter()
            .map(|p| EXPECTATION_TTL.saturating_sub(p.since.elapsed()))
            .max();
        if list.is_empty() {
            pending.remove(&key(set));
        }
        wait
    }

    fn shows(&self, ns: &str, e: &Expectation) -> bool {
        let (version, deleting) = match e.kind {
            Kind::Child => found(&self.children, ns, &e.name),
            Kind::Scaler => found(&self.scalers, ns, &e.name),
        };
        match &e.version {
            Some(wanted) => at_least(version.as_deref(), wanted),
            None => version.is_none() || deleting,
        }
    }

    /// Remembers the status just written and the set's version after it.
    pub fn wrote_status(
        &self,
        set: &DisaggregatedSet,
        version: String,
        status: DisaggregatedSetStatus,
    ) {
        self.statuses
            .lock()
            .expect("statuses lock")
            .insert(key(set), (version, status));
        self.status_times
            .lock()
            .expect("status times lock")
            .insert(key(set), Instant::now());
    }

    /// How long until the set's status may be written again, if its last
    /// write was less than `every` ago.
    pub fn status_wait(&self, set: &DisaggregatedSet, every: Duration) -> Option<Duration> {
        let times = self.status_times.lock().expect("status times lock");
        let since = times.get(&key(set))?.elapsed();
        (since < every).then(|| every - since)
    }

    /// The set as the operator knows it: the store's copy, with the status
    /// last written when the store has not shown that write yet (so that a
    /// reconcile between the write and its watch event neither writes the
    /// same status again nor decides from the older one).
    pub fn freshest(&self, set: &Arc<DisaggregatedSet>) -> Arc<DisaggregatedSet> {
        let mut statuses = self.statuses.lock().expect("statuses lock");
        let k = key(set);
        let Some((version, status)) = statuses.get(&k) else {
            return set.clone();
        };
        if at_least(set.resource_version().as_deref(), version) {
            statuses.remove(&k);
            return set.clone();
        }
        let mut newer = (**set).clone();
        newer.status = Some(status.clone());
        Arc::new(newer)
    }

    /// Forgets a set that is gone.
    pub fn forget(&self, set: &DisaggregatedSet) {
        self.pending
            .lock()
            .expect("expectations lock")
            .remove(&key(set));
        self.statuses
            .lock()
            .expect("statuses lock")
            .remove(&key(set));
        self.status_times
            .lock()
            .expect("status times lock")
            .remove(&key(set));
    }
}

/// The objects of `store` labelled as `set`'s, found through `index`.
fn owned<K>(store: &Store<K>, index: &Index, set: &DisaggregatedSet) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let owner = (set.namespace().unwrap_or_default(), set.name_any());
    index
        .names(&owner)
        .iter()
        .filter_map(|name| store.get(&ObjectRef::new(name).within(&owner.0)))
        .filter(|o| owner_of(&**o).as_ref() == Some(&owner))
        .map(|o| (*o).clone())
        .collect()
}

/// The set (namespace, name) an object is labelled as belonging to.
fn owner_of<K: Resource>(object: &K) -> Option<(String, String)> {
    let set = object.meta().labels.as_ref()?.get(keys::NAME)?;
    Some((
        object.meta().namespace.clone().unwrap_or_default(),
        set.clone(),
    ))
}

/// Which objects of a store are which set's, by the set-name label. A
/// reflector store answers "every object" only, and filtering thousands of
/// children twice per reconcile was the operator's largest cost at 1,000
/// sets. The watch that fills the store keeps the index: names are added
/// before the store sees an object (so the index never misses one the store
/// has) and removed after the store lets it go; reads check every name
/// against the store, so a name the index still holds is harmless.
#[derive(Default)]
pub struct Index(Mutex<HashMap<(String, String), std::collections::BTreeSet<String>>>);

impl Index {
    /// Before the store applies `event`.
    pub fn before_store<K: Resource>(&self, event: &watcher::Event<K>) {
        if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = event
            && let Some(owner) = owner_of(o)
        {
            let mut index = self.0.lock().expect("index lock");
            index.entry(owner).or_default().insert(o.name_any());
        }
    }

    /// After the store has applied `event`: a deleted object's name goes;
    /// after a relist, so do the names of objects the store no longer has
    /// (deleted while the watch was down) or that moved to another set.
    pub fn after_store<K>(&self, event: &watcher::Event<K>, store: &Store<K>)
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let mut index = self.0.lock().expect("index lock");
        match event {
            watcher::Event::Delete(o) => {
                if let Some(owner) = owner_of(o)
                    && let Some(names) = index.get_mut(&owner)
                {
                    names.remove(&o.name_any());
                    if names.is_empty() {
                        index.remove(&owner);
                    }
                }
            }
            watcher::Event::InitDone => {
                index.retain(|owner, names| {
                    names.retain(|name| {
                        store
                            .get(&ObjectRef::new(name).within(&owner.0))
                            .is_some_and(|o| owner_of(&*o).as_ref() == Some(owner))
                    });
                    !names.is_empty()
                });
            }
            _ => {}
        }
    }

    fn names(&self, owner: &(String, String)) -> Vec<String> {
        let index = self.0.lock().expect("index lock");
        index
            .get(owner)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// An object's resourceVersion in the store, and whether it is being deleted.
fn found<K>(store: &Store<K>, ns: &str, name: &str) -> (Option<String>, bool)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    match store.get(&ObjectRef::new(name).within(ns)) {
        Some(o) => (
            o.meta().resource_version.clone(),
            o.meta().deletion_timestamp.is_some(),
        ),
        None => (None, false),
    }
}

/// What the stores keep of an object: everything but managedFields and
/// kubectl's last-applied copy, which the core never reads and which are
/// most of an object's size.
pub fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// What the children's store keeps: [`slim`], and no pod templates. The core
/// reads a child's labels, annotations, owner, replicas and status, never its
/// templates (it renders the wanted ones from the set), and the templates are
/// most of an LWS: as JSON trees, several KiB each.
pub fn slim_child(child: &mut LeaderWorkerSet) {
    slim(child);
    // What adoption compares templates by (`disagg_core::adopt`), kept in their stead.
    let fingerprint = disagg_core::adopt::fingerprint(&child.spec.leader_worker_template);
    child
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(keys::TEMPLATE_FINGERPRINT.to_string(), fingerprint);
    let template = &mut child.spec.leader_worker_template;
    template.leader_template = None;
    template.worker_template = Default::default();
    template.volume_claim_templates = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn lws(name: &str, version: &str) -> LeaderWorkerSet {
        let mut o: LeaderWorkerSet = serde_json::from_value(serde_json::json!({
            "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": version,
                         "labels": {keys::NAME: "llm"}},
            "spec": {"leaderWorkerTemplate": {"workerTemplate": {"spec": {"containers": []}}}}
        }))
        .unwrap();
        o.metadata.resource_version = Some(version.into());
        o
    }

    fn set() -> DisaggregatedSet {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "disaggregatedset.x-k8s.io/v1alpha1", "kind": "DisaggregatedSet",
            "metadata": {"name": "llm", "namespace": "ns", "resourceVersion": "10"},
            "spec": {"roles": []}
        }))
        .unwrap()
    }

    /// Caches over two empty stores that nothing writes to.
    fn empty() -> Caches {
        Caches::new(
            store::<LeaderWorkerSet>().0,
            store::<DisaggregatedSetRoleScaler>().0,
        )
    }

    /// Every reconcile of a starting operator waits for the stores' first
    /// list at once; all of them must go on when it arrives, not only the
    /// last to have looked (kube-runtime's own wait wakes one waiter).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_goes_on_once_the_stores_have_listed() {
        let (children, mut children_writer) = store::<LeaderWorkerSet>();
        let (scalers, mut scalers_writer) = store::<DisaggregatedSetRoleScaler>();
        let caches = Arc::new(Caches::new(children, scalers));
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let caches = caches.clone();
                tokio::spawn(async move { caches.ready().await })
            })
            .collect();
        // Let every waiter poll (and park) before the lists arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for event in [Event::Init, Event::InitDone] {
            children_writer.apply_watcher_event(&event);
        }
        for event in [Event::Init, Event::InitDone] {
            scalers_writer.apply_watcher_event(&event);
        }
        for (i, waiter) in waiters.into_iter().enumerate() {
            let ready = tokio::time::timeout(Duration::from_secs(2), waiter).await;
            assert!(
                matches!(ready, Ok(Ok(true))),
                "waiter {i} still waiting 2 s after both stores listed"
            );
        }
    }

    /// What the watch does with each event: index, store, index.
    fn watched(
        writer: &mut kube::runtime::reflector::store::Writer<LeaderWorkerSet>,
        index: &Index,
        event: Event<LeaderWorkerSet>,
    ) {
        index.before_store(&event);
        writer.apply_watcher_event(&event);
        index.after_store(&event, &writer.as_reader());
    }

    fn names(children: Vec<LeaderWorkerSet>) -> Vec<String> {
        children.iter().map(|c| c.name_any()).collect()
    }

    #[test]
    fn a_sets_children_are_found_through_the_index_as_the_store_changes() {
        let (children, mut writer) = store::<LeaderWorkerSet>();
        let (scalers, _s) = store::<DisaggregatedSetRoleScaler>();
        let caches = Caches::new(children, scalers);
        let (index, _) = caches.indexes();
        let set = set();
        let mut other = lws("other-a", "3");
        other.labels_mut().insert(keys::NAME.into(), "other".into());
        watched(&mut writer, &index, Event::Apply(lws("llm-b", "4")));
        watched(&mut writer, &index, Event::Apply(lws("llm-a", "5")));
        watched(&mut writer, &index, Event::Apply(other.clone()));
        assert_eq!(names(caches.children_of(&set)), ["llm-a", "llm-b"]);

        watched(&mut writer, &index, Event::Delete(lws("llm-b", "6")));
        assert_eq!(names(caches.children_of(&set)), ["llm-a"]);

        // Relabelled to another set: no longer this set's.
        let mut moved = lws("llm-a", "7");
        moved.labels_mut().insert(keys::NAME.into(), "other".into());
        watched(&mut writer, &index, Event::Apply(moved));
        assert!(caches.children_of(&set).is_empty());

        // A relist that no longer has what was deleted while the watch was
        // down: the store and the index both drop it.
        watched(&mut writer, &index, Event::Apply(lws("llm-c", "8")));
        for event in [
            Event::Init,
            Event::InitApply(lws("llm-d", "9")),
            Event::InitDone,
        ] {
            watched(&mut writer, &index, event);
        }
        assert_eq!(names(caches.children_of(&set)), ["llm-d"]);
        assert_eq!(index.names(&("ns".into(), "llm".into())), ["llm-d"]);
        assert!(index.names(&("ns".into(), "other".into())).is_empty());
    }

    #[test]
    fn a_write_is_awaited_until_the_store_shows_its_version() {
        let (children, mut writer) = store::<LeaderWorkerSet>();
        let (scalers, _scalers_writer) = store::<DisaggregatedSetRoleScaler>();
        let caches = Caches::new(children, scalers);
        let set = set();
        writer.apply_watcher_event(&Event::Apply(lws("llm-a", "5")));
        caches.expect(
            &set,
            Expectation {
                kind: Kind::Child,
                name: "llm-a".into(),
                version: Some("7".into()),
            },
        );
        assert!(
            caches.unmet(&set).is_some(),
            "the store still shows version 5"
        );
        writer.apply_watcher_event(&Event::Apply(lws("llm-a", "8")));
        assert_eq!(caches.unmet(&set), None, "a later version meets it");

        caches.expect(
            &set,
            Expectation {
                kind: Kind::Child,
                name: "llm-a".into(),
                version: None,
            },
        );
        assert!(
            caches.unmet(&set).is_some(),
            "a delete waits for the object to go"
        );
        writer.apply_watcher_event(&Event::Delete(lws("llm-a", "9")));
        assert_eq!(caches.unmet(&set), None);
        assert_eq!(caches.children_of(&set).len(), 0);
    }

    #[test]
    fn a_status_written_moments_ago_waits_out_the_interval() {
        let caches = empty();
        let set = Arc::new(set());
        let every = Duration::from_secs(60);
        assert_eq!(caches.status_wait(&set, every), None, "never written");
        caches.wrote_status(&set, "11".into(), DisaggregatedSetStatus::default());
        let wait = caches.status_wait(&set, every).expect("just written");
        assert!(wait > Duration::from_secs(59) && wait <= every, "{wait:?}");
        assert_eq!(caches.status_wait(&set, Duration::ZERO), None);
        caches.forget(&set);
        assert_eq!(caches.status_wait(&set, every), None, "a set that is gone");
    }

    #[test]
    fn the_status_last_written_stands_in_until_the_store_shows_it() {
        let caches = empty();
        let stale = Arc::new(set());
        let status = DisaggregatedSetStatus {
            observed_generation: Some(3),
            ..Default::default()
        };
        caches.wrote_status(&stale, "11".into(), status.clone());
        assert_eq!(caches.freshest(&stale).status, Some(status));
        let mut seen = set();
        seen.metadata.resource_version = Some("11".into());
        let seen = Arc::new(seen);
        assert_eq!(
            caches.freshest(&seen).status,
            None,
            "the store's copy wins once it has the write"
        );
    }

    #[test]
    fn the_store_keeps_what_the_core_reads_of_a_child() {
        let mut child = lws("llm-a", "5");
        child.metadata.managed_fields = Some(vec![Default::default()]);
        child.spec.replicas = 3;
        slim_child(&mut child);
        assert_eq!(child.metadata.managed_fields, None);
        assert!(
            child
                .spec
                .leader_worker_template
                .worker_template
                .0
                .is_empty()
        );
        assert_eq!(child.spec.replicas, 3);
        assert_eq!(child.metadata.labels.unwrap()[keys::NAME], "llm");
    }

    #[test]
    fn versions_compare_as_numbers_where_they_are_numbers() {
        assert!(at_least(Some("10"), "9"));
        assert!(!at_least(Some("9"), "10"));
        assert!(at_least(Some("abc"), "abc"));
        assert!(!at_least(Some("abd"), "abc"));
        assert!(!at_least(None, "1"));
    }
}
