//! The object store: what etcd plus the generic registry do for the real API
//! server. Objects are JSON; the store owns `metadata.resourceVersion`, `uid`,
//! `creationTimestamp`, `generation` and `deletionTimestamp`.
//!
//! * resourceVersion: one counter for the whole store, so it is monotonic per
//!   object and per list, and a list's version orders it against every write.
//! * generation: 1 at create, bumped when anything outside `metadata` and
//!   `status` changes.
//! * Optimistic concurrency: a write that names a resourceVersion other than
//!   the current one is a 409 Conflict.
//! * Finalizers: delete sets `deletionTimestamp`; the object goes when its last
//!   finalizer is removed.
//! * Watch: every write appends to a log; a watch from resourceVersion N gets
//!   the events after N, then live ones. Compaction drops the log, and a watch
//!   from before it gets 410 Expired, as from etcd.
//! * Paged lists: every page of one list shows the store as of its first page
//!   and carries that page's resourceVersion, as etcd's MVCC reads do, so a
//!   client that watches from a paged list's version misses no change made
//!   while it paged (see [`Snapshot`]).

use crate::selector::Selector;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::broadcast;

/// The finalizer that holds an object while its dependents are deleted first.
pub const FOREGROUND_DELETION: &str = "foregroundDeletion";

mod gc;
mod types;

pub use types::*;

type Key = (ResourceId, String, String);

struct Inner {
    revision: u64,
    uids: u64,
    resources: BTreeMap<ResourceId, ResourceInfo>,
    /// Every object goes in and out through [`Inner::put`] and
    /// [`Inner::take`], which keep the ownership graph below.
    objects: BTreeMap<Key, Value>,
    /// The ownership graph, for the garbage collector: each object by uid,
    /// and each owner's dependents by the owner's uid.
    by_uid: HashMap<String, Key>,
    dependents: HashMap<String, BTreeSet<Key>>,
    log: VecDeque<WatchEvent>,
    /// Watches from a version below this one get 410 Expired.
    oldest_watchable: u64,
    /// The unserved pages of paged lists, newest last.
    snapshots: VecDeque<Snapshot>,
    snapshot_ids: u64,
}

/// What is left of a paged list after the pages served so far: the objects
/// that matched it when its first page was served, in list order. The store
/// has no MVCC, so it keeps them; etcd would read them at the list's
/// revision. A list is dropped when its last page is served, and beyond the
/// newest [`MAX_SNAPSHOTS`]; a continue token of one dropped gets 410
/// Expired, as after a compaction, and the client lists again.
struct Snapshot {
    id: u64,
    resource: ResourceId,
    revision: u64,
    rest: Vec<Value>,
}

/// How many unfinished paged lists the store keeps.
const MAX_SNAPSHOTS: usize = 32;

impl Inner {
    fn put(&mut self, key: Key, object: Value) {
        if let Some(old) = self.objects.remove(&key) {
            self.unindex(&key, &old);
        }
        self.index(&key, &object);
        self.objects.insert(key, object);
    }

    fn take(&mut self, key: &Key) -> Option<Value> {
        let old = self.objects.remove(key)?;
        self.unindex(key, &old);
        Some(old)
    }

    fn index(&mut self, key: &Key, object: &Value) {
        if let Some(uid) = uid_of(object) {
            self.by_uid.insert(uid.to_string(), key.clone());
        }
        for owner in owner_uids(object) {
            self.dependents
                .entry(owner.to_string())
                .or_default()
                .insert(key.clone());
        }
    }

    /// The next page of a paged list: `token` is `revision/list/offset`.
    fn next_page(
        &mut self,
        resource: &ResourceId,
        filter: &Filter,
        limit: usize,
        token: &str,
    ) -> Result<Page, StoreError> {
        let parsed: Vec<u64> = token.split('/').filter_map(|p| p.parse().ok()).collect();
        let [revision, id, offset] = parsed[..] else {
            return Err(StoreError::new(
                400,
                "BadRequest",
                format!("invalid continue token {token:?}"),
            ));
        };
        let expired = || {
            StoreError::new(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into())
        };
        if revision < self.oldest_watchable {
            return Err(expired());
        }
        let at = self
            .snapshots
            .iter()
            .position(|s| s.id == id && s.revision == revision && &s.resource == resource)
            .ok_or_else(expired)?;
        let rest = &self.snapshots[at].rest;
        let offset = (offset as usize).min(rest.len());
        let end = if limit == 0 {
            rest.len()
        } else {
            (offset + limit).min(rest.len())
        };
        let items: Vec<Value> = rest[offset..end]
            .iter()
            .filter(|o| filter.matches(o["metadata"]["namespace"].as_str().unwrap_or_default(), o))
            .cloned()
            .collect();
        let remaining = rest.len() - end;
        let continue_token = if remaining > 0 {
            Some(format!("{revision}/{id}/{end}"))
        } else {
            self.snapshots.remove(at);
            None
        };
        Ok(Page {
            items,
            resource_version: revision,
            remaining: continue_token.is_some().then_some(remaining),
            continue_token,
        })
    }

    fn unindex(&mut self, key: &Key, object: &Value) {
        if let Some(uid) = uid_of(object)
            && self.by_uid.get(uid) == Some(key)
        {
            self.by_uid.remove(uid);
        }
        for owner in owner_uids(object) {
            if let Some(dependents) = self.dependents.get_mut(owner) {
                dependents.remove(key);
                if dependents.is_empty() {
                    self.dependents.remove(owner);
                }
            }
        }
    }
}

fn uid_of(object: &Value) -> Option<&str> {
    object["metadata"]["uid"].as_str()
}

/// The uids in an object's ownerReferences.
fn owner_uids(object: &Value) -> impl Iterator<Item = &str> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}

/// The store. All operations are atomic.
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<WatchEvent>,
    max_log: usize,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(100_000)
    }
}

impl Store {
    /// A store that keeps the last `max_log` events for watches to resume from.
    pub fn new(max_log: usize) -> Self {
        Store {
            inner: Mutex::new(Inner {
                revision: 1,
                uids: 0,
                resources: BTreeMap::new(),
                objects: BTreeMap::new(),
                by_uid: HashMap::new(),
                dependents: HashMap::new(),
                log: VecDeque::new(),
                oldest_watchable: 0,
                snapshots: VecDeque::new(),
                snapshot_ids: 0,
            }),
            events: broadcast::channel(65_536).0,
            max_log,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, id: ResourceId, info: ResourceInfo) {
        self.lock().resources.insert(id, info);
    }

    /// Stops serving a resource type (its CRD went away) and forgets its objects.
    pub fn unregister(&self, id: &ResourceId) {
        let mut inner = self.lock();
        inner.resources.remove(id);
        let gone: Vec<Key> = inner
            .objects
            .keys()
            .filter(|(r, _, _)| r == id)
            .cloned()
            .collect();
        for key in gone {
            inner.take(&key);
        }
    }

    /// Every registered resource type.
    pub fn resources(&self) -> Vec<(ResourceId, ResourceInfo)> {
        self.lock()
            .resources
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn resource(&self, id: &ResourceId) -> Option<ResourceInfo> {
        self.lock().resources.get(id).cloned()
    }

    /// The current resourceVersion of the whole store.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    fn info(inner: &Inner, id: &ResourceId) -> Result<ResourceInfo, StoreError> {
        inner.resources.get(id).cloned().ok_or_else(|| {
            StoreError::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({})",
                    id.plural
                ),
            )
        })
    }

    fn commit(
        &self,
        inner: &mut Inner,
        resource: &ResourceId,
        namespace: &str,
        kind: EventType,
        object: Value,
    ) {
        let event = WatchEvent {
            resource: resource.clone(),
            namespace: namespace.to_string(),
            resource_version: inner.revision,
            kind,
            object: std::sync::Arc::new(object),
            at: std::time::Instant::now(),
        };
        inner.log.push_back(event.clone());
        while inner.log.len() > self.max_log {
            if let Some(e) = inner.log.pop_front() {
                inner.oldest_watchable = e.resource_version;
            }
        }
        let _ = self.events.send(event);
    }

    /// Creates an object. `metadata.name` (or `generateName`) is required.
    pub fn create(
        &self,
        resource: &ResourceId,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        let info = Self::info(&inner, resource)?;
        let namespace = if info.namespaced { namespace } else { "" };
        let meta = metadata(&mut object)?;
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) => format!("{prefix}{:05x}", inner.uids + 1),
                None => {
                    return Err(StoreError::invalid(format!(
                        "{} \"\": metadata.name: Required value: name or generateName is required",
                        info.kind
                    )));
                }
            },
        };
        let key = (resource.clone(), namespace.to_string(), name.clone());
        if inner.objects.contains_key(&key) {
            return Err(StoreError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", info.kind),
            ));
        }
        inner.revision += 1;
        inner.uids += 1;
        let meta = metadata(&mut object)?;
        meta.insert("name".into(), json!(name));
        if info.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        } else {
            meta.remove("namespace");
        }
        meta.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012x}", inner.uids)),
        );
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        meta.insert("resourceVersion".into(), json!(inner.revision.to_string()));
        meta.remove("deletionTimestamp");
        inner.put(key, object.clone());
        self.commit(
            &mut inner,
            resource,
            namespace,
            EventType::Added,
            object.clone(),
        );
        Ok(object)
    }

    pub fn get(
        &self,
        resource: &ResourceId,
        namespace: &str,
        name: &str,
    ) -> Result<Value, StoreError> {
        let inner = self.lock();
        let info = Self::info(&inner, resource)?;
        let namespace = if info.namespaced { namespace } else { "" };
        inner
            .objects
            .get(&(resource.clone(), namespace.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| StoreError::not_found(&info.kind, name))
    }

    /// Replaces an object (the main endpoint, or `status` when `status_only`).
    pub fn update(
        &self,
        resource: &ResourceId,
        namespace: &str,
        name: &str,
        mut object: Value,
        status_only: bool,
    ) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        let info = Self::info(&inner, resource)?;
        let namespace = if info.namespaced { namespace } else { "" };
        let key = (resource.clone(), namespace.to_string(), name.to_string());
        let current = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| StoreError::not_found(&info.kind, name))?;
        let wanted_rv = metadata(&mut object)?
            .get("resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        let current_rv = current["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(rv) = wanted_rv
            && !rv.is_empty()
            && rv != current_rv
        {
            return Err(StoreError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    resource.plural
                ),
            ));
        }
        if object["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != name)
        {
            return Err(StoreError::new(
                400,
                "BadRequest",
                format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    object["metadata"]["name"]
                ),
            ));
        }
        let mut next = if status_only {
            let mut n = current.clone();
            set_or_remove(&mut n, "status", object.get("status").cloned());
            // Field ownership of the status write travels with it.
            let owners = object["metadata"].get("managedFields").cloned();
            set_or_remove(&mut n["metadata"], "managedFields", owners);
            n
        } else {
            let mut n = object;
            if info.status_subresource {
                set_or_remove(&mut n, "status", current.get("status").cloned());
            }
            // System metadata is the store's.
            let cur_meta = current["metadata"].as_object().cloned().unwrap_or_default();
            let meta = metadata(&mut n)?;
            for k in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "namespace",
                "name",
            ] {
                match cur_meta.get(k) {
                    Some(v) => meta.insert(k.into(), v.clone()),
                    None => meta.remove(k),
                };
            }
            n
        };
        if next == current {
            return Ok(current);
        }
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        let bumped = if !same_but_meta_and_status(&next, &current) {
            generation + 1
        } else {
            generation
        };
        inner.revision += 1;
        let meta = metadata(&mut next)?;
        meta.insert("generation".into(), json!(bumped));
        meta.insert("resourceVersion".into(), json!(inner.revision.to_string()));
        let terminating = meta.contains_key("deletionTimestamp");
        let finalizers_left = meta
            .get("finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if terminating && !finalizers_left {
            inner.take(&key);
            self.commit(
                &mut inner,
                resource,
                namespace,
                EventType::Deleted,
                next.clone(),
            );
        } else {
            inner.put(key, next.clone());
            self.commit(
                &mut inner,
                resource,
                namespace,
                EventType::Modified,
                next.clone(),
            );
        }
        Ok(next)
    }

    /// Deletes an object, or marks it for deletion while finalizers remain.
    /// Returns the object as deleted (or as marked).
    pub fn delete(
        &self,
        resource: &ResourceId,
        namespace: &str,
        name: &str,
        precondition_rv: Option<&str>,
    ) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        let info = Self::info(&inner, resource)?;
        let namespace = if info.namespaced { namespace } else { "" };
        let key = (resource.clone(), namespace.to_string(), name.to_string());
        let mut object = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| StoreError::not_found(&info.kind, name))?;
        if let Some(rv) = precondition_rv
            && object["metadata"]["resourceVersion"].as_str() != Some(rv)
        {
            return Err(StoreError::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: resourceVersion {rv} does not match {} \"{name}\"",
                    resource.plural
                ),
            ));
        }
        let has_finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers && object["metadata"].get("deletionTimestamp").is_some() {
            return Ok(object);
        }
        inner.revision += 1;
        let rv = inner.revision.to_string();
        let meta = metadata(&mut object)?;
        meta.insert("resourceVersion".into(), json!(rv));
        if has_finalizers {
            meta.insert("deletionTimestamp".into(), json!(now()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            inner.put(key, object.clone());
            self.commit(
                &mut inner,
                resource,
                namespace,
                EventType::Modified,
                object.clone(),
            );
        } else {
            inner.take(&key);
            self.commit(
                &mut inner,
                resource,
                namespace,
                EventType::Deleted,
                object.clone(),
            );
        }
        Ok(object)
    }

    /// Lists objects, `limit` at a time (0: all), continuing from a token.
    /// Every page of a list is as of its first page (see [`Snapshot`]).
    pub fn list(
        &self,
        resource: &ResourceId,
        filter: &Filter,
        limit: usize,
        continue_token: Option<&str>,
    ) -> Result<Page, StoreError> {
        let mut inner = self.lock();
        Self::info(&inner, resource)?;
        if let Some(token) = continue_token.filter(|t| !t.is_empty()) {
            return inner.next_page(resource, filter, limit, token);
        }
        let mut items: Vec<Value> = inner
            .objects
            .range((resource.clone(), String::new(), String::new())..)
            .take_while(|((res, _, _), _)| res == resource)
            .filter(|((_, ns, _), object)| filter.matches(ns, object))
            .map(|(_, object)| object.clone())
            .collect();
        let revision = inner.revision;
        if limit == 0 || items.len() <= limit {
            return Ok(Page {
                items,
                resource_version: revision,
                continue_token: None,
                remaining: None,
            });
        }
        let rest = items.split_off(limit);
        let remaining = Some(rest.len());
        inner.snapshot_ids += 1;
        let id = inner.snapshot_ids;
        inner.snapshots.push_back(Snapshot {
            id,
            resource: resource.clone(),
            revision,
            rest,
        });
        while inner.snapshots.len() > MAX_SNAPSHOTS {
            inner.snapshots.pop_front();
        }
        Ok(Page {
            items,
            resource_version: revision,
            continue_token: Some(format!("{revision}/{id}/0")),
            remaining,
        })
    }

    /// Starts a watch from `resource_version` (exclusive): the events already
    /// logged after it, and a receiver for what comes next. The receiver sees
    /// every resource; filter with [`Filter::matches`] and `WatchEvent::resource`.
    /// A receiver that falls more than 65,536 events behind gets `Lagged`: the
    /// watch must then end, as a real one does, and the client re-lists.
    pub fn watch(
        &self,
        resource: &ResourceId,
        filter: &Filter,
        resource_version: u64,
    ) -> Result<(Vec<WatchEvent>, broadcast::Receiver<WatchEvent>), StoreError> {
        let inner = self.lock();
        Self::info(&inner, resource)?;
        if resource_version < inner.oldest_watchable {
            return Err(StoreError::new(
                410,
                "Expired",
                format!(
                    "too old resource version: {resource_version} ({})",
                    inner.oldest_watchable
                ),
            ));
        }
        // Subscribing under the lock: nothing can be missed or delivered twice.
        let receiver = self.events.subscribe();
        let backlog = inner
            .log
            .iter()
            .filter(|e| {
                e.resource_version > resource_version
                    && e.resource == *resource
                    && filter.matches(&e.namespace, &e.object)
            })
            .cloned()
            .collect();
        Ok((backlog, receiver))
    }

    /// Every change from now on (for background work such as garbage collection).
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }

    /// Forgets the watch log: resuming from any earlier version gets 410 Expired.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.log.clear();
        inner.oldest_watchable = inner.revision;
    }
}

fn metadata(object: &mut Value) -> Result<&mut Map<String, Value>, StoreError> {
    let obj = object.as_object_mut().ok_or_else(|| {
        StoreError::new(400, "BadRequest", "the body must be a JSON object".into())
    })?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    meta.as_object_mut()
        .ok_or_else(|| StoreError::new(400, "BadRequest", "metadata must be an object".into()))
}

fn set_or_remove(object: &mut Value, key: &str, value: Option<Value>) {
    if let Some(o) = object.as_object_mut() {
        match value {
            Some(v) => o.insert(key.into(), v),
            None => o.remove(key),
        };
    }
}

/// Whether `a` and `b` differ only in metadata and status (what leaves
/// `metadata.generation` alone), compared in place: an update is the
/// server's commonest request, and cloning both objects to compare them
/// cost more than the rest of it.
fn same_but_meta_and_status(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let counted = |k: &String| k != "metadata" && k != "status";
    a.keys().filter(|k| counted(k)).count() == b.keys().filter(|k| counted(k)).count()
        && a.iter()
            .filter(|(k, _)| counted(k))
            .all(|(k, v)| b.get(k) == Some(v))
}

/// The current time as the API server writes timestamps.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
