//! Garbage collection by ownerReferences: Background, Foreground and Orphan deletion.

use super::*;

impl Store {
    /// Garbage collection: deletes every object whose ownerReferences all name
    /// objects that no longer exist or are being deleted in the foreground,
    /// until none is left (dependents of dependents go too); then lets go of
    /// foreground-deleted owners whose dependents are all gone. Returns how
    /// many objects it deleted.
    pub fn collect_garbage(&self) -> usize {
        let mut deleted = 0;
        loop {
            let (orphans, released) = {
                let inner = self.lock();
                let foreground = |o: &Value| {
                    o["metadata"].get("deletionTimestamp").is_some()
                        && o["metadata"]["finalizers"]
                            .as_array()
                            .is_some_and(|f| f.iter().any(|f| f == FOREGROUND_DELETION))
                };
                let live: std::collections::HashSet<&str> = inner
                    .objects
                    .values()
                    .filter(|o| !foreground(o))
                    .filter_map(|o| o["metadata"]["uid"].as_str())
                    .collect();
                let owners = |o: &Value| -> Vec<String> {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r["uid"].as_str().map(str::to_string))
                        .collect()
                };
                let orphans: Vec<(ResourceId, String, String)> = inner
                    .objects
                    .iter()
                    .filter(|(_, o)| o["metadata"].get("deletionTimestamp").is_none())
                    .filter(|(_, o)| {
                        let refs = owners(o);
                        !refs.is_empty() && refs.iter().all(|u| !live.contains(u.as_str()))
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                let owning: std::collections::HashSet<String> =
                    inner.objects.values().flat_map(owners).collect();
                let released: Vec<((ResourceId, String, String), Value)> = inner
                    .objects
                    .iter()
                    .filter(|(_, o)| foreground(o))
                    .filter(|(_, o)| {
                        !o["metadata"]["uid"]
                            .as_str()
                            .is_some_and(|u| owning.contains(u))
                    })
                    .map(|(k, o)| (k.clone(), o.clone()))
                    .collect();
                (orphans, released)
            };
            if orphans.is_empty() && released.is_empty() {
                return deleted;
            }
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
        }
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
