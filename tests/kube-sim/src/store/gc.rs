//! Garbage collection by ownerReferences: Background, Foreground and Orphan deletion.

use super::*;

/// Being deleted in the foreground: marked, and held until its dependents are gone.
fn foreground(object: &Value) -> bool {
    object["metadata"].get("deletionTimestamp").is_some()
        && object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == FOREGROUND_DELETION))
}

impl Inner {
    /// Whether the owner `uid` no longer holds its dependents: it is gone,
    /// or being deleted in the foreground.
    fn owner_gone(&self, uid: &str) -> bool {
        self.by_uid
            .get(uid)
            .and_then(|key| self.objects.get(key))
            .is_none_or(foreground)
    }

    /// Whether `object` is garbage: not being deleted yet, and every one of
    /// its owners gone.
    fn garbage(&self, object: &Value) -> bool {
        object["metadata"].get("deletionTimestamp").is_none()
            && owner_uids(object).next().is_some()
            && owner_uids(object).all(|u| self.owner_gone(u))
    }

    /// Whether a foreground deletion may finish: no dependents are left.
    fn releasable(&self, object: &Value) -> bool {
        foreground(object) && uid_of(object).is_none_or(|u| !self.dependents.contains_key(u))
    }
}

impl Store {
    /// Garbage collection after one change, through the ownership graph:
    /// the changed object (its owners may be gone already), its dependents
    /// (it may be gone or going in the foreground) and its owners (a
    /// foreground deletion waits for its last dependent). What this deletes
    /// comes back as changes of its own, so dependents of dependents go too.
    /// Returns how many objects it deleted.
    pub fn collect_garbage_after(&self, change: &WatchEvent) -> usize {
        let name = change.object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (change.resource.clone(), change.namespace.clone(), name);
        let (garbage, release) = {
            let inner = self.lock();
            let mut garbage = BTreeSet::from([key.clone()]);
            let mut release = BTreeSet::from([key]);
            if let Some(dependents) = uid_of(&change.object).and_then(|u| inner.dependents.get(u)) {
                garbage.extend(dependents.iter().cloned());
            }
            release.extend(owner_uids(&change.object).filter_map(|u| inner.by_uid.get(u).cloned()));
            (garbage, release)
        };
        self.sweep(garbage, release).0
    }

    /// Garbage collection of the whole store, until nothing is left to
    /// collect (for a collector that missed changes). Returns how many
    /// objects it deleted.
    pub fn collect_garbage(&self) -> usize {
        let mut deleted = 0;
        loop {
            let all: BTreeSet<Key> = self.lock().objects.keys().cloned().collect();
            let (n, changed) = self.sweep(all.clone(), all);
            deleted += n;
            if !changed {
                return deleted;
            }
        }
    }

    /// Deletes those of `garbage` that are garbage and lets go of those of
    /// `release` whose foreground deletion may finish. Returns how many it
    /// deleted, and whether it changed anything.
    fn sweep(&self, garbage: BTreeSet<Key>, release: BTreeSet<Key>) -> (usize, bool) {
        let (orphans, released) = {
            let inner = self.lock();
            let orphans: Vec<Key> = garbage
                .into_iter()
                .filter(|k| inner.objects.get(k).is_some_and(|o| inner.garbage(o)))
                .collect();
            let released: Vec<(Key, Value)> = release
                .into_iter()
                .filter_map(|k| {
                    let o = inner.objects.get(&k).filter(|o| inner.releasable(o))?;
                    Some((k, o.clone()))
                })
                .collect();
            (orphans, released)
        };
        let changed = !orphans.is_empty() || !released.is_empty();
        let mut deleted = 0;
        for (resource, ns, name) in orphans {
            if self.delete(&resource, &ns, &name, None).is_ok() {
                deleted += 1;
            }
        }
        for ((resource, ns, name), mut owner) in released {
            if let Some(f) = owner["metadata"]["finalizers"].as_array_mut() {
                f.retain(|f| f != FOREGROUND_DELETION);
            }
            let _ = self.update(&resource, &ns, &name, owner, false);
        }
        (deleted, changed)
    }

    /// Starts a foreground deletion: the object stays, marked, until the
    /// garbage collector has deleted its dependents.
    pub fn delete_foreground(
        &self,
        resource: &ResourceId,
        namespace: &str,
        name: &str,
        precondition_rv: Option<&str>,
    ) -> Result<Value, StoreError> {
        let mut object = self.get(resource, namespace, name)?;
        if let Some(rv) = precondition_rv {
            object["metadata"]["resourceVersion"] = json!(rv);
        }
        let finalizers = object["metadata"]
            .as_object_mut()
            .ok_or_else(|| StoreError::invalid("metadata must be an object".into()))?
            .entry("finalizers")
            .or_insert_with(|| json!([]));
        if let Some(list) = finalizers.as_array_mut()
            && !list.iter().any(|f| f == FOREGROUND_DELETION)
        {
            list.push(json!(FOREGROUND_DELETION));
        }
        let marked = self.update(resource, namespace, name, object, false)?;
        let rv = marked["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        self.delete(resource, namespace, name, rv.as_deref())
    }

    /// Removes ownerReferences to `owner_uid` from every object (delete with
    /// `propagationPolicy: Orphan`).
    pub fn orphan_dependents(&self, owner_uid: &str) {
        let dependents: Vec<(ResourceId, String, String, Value)> = {
            let inner = self.lock();
            inner
                .objects
                .iter()
                .filter(|(_, o)| {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r["uid"] == owner_uid))
                })
                .map(|((r, ns, name), o)| (r.clone(), ns.clone(), name.clone(), o.clone()))
                .collect()
        };
        for (resource, ns, name, mut object) in dependents {
            if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != owner_uid);
            }
            let _ = self.update(&resource, &ns, &name, object, false);
        }
    }
}
