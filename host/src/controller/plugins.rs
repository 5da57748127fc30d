//! Where plugins come from while the operator runs (DESIGN §6.3): ConfigMaps
//! labelled `disaggregatedset.x-k8s.io/plugin: "true"` in the operator's
//! namespace, or, with `--plugin-dir`, files `NAME.wasm` / `NAME.wasm.gz` in a
//! directory (a mounted ConfigMap volume). A new component is compiled off the
//! async threads and swapped in only once it loads; a broken one leaves the
//! last good one in use and is reported. Every change wakes every set.

use crate::plugin::{LoadedPlugin, Runtime};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// The plugins in use, by name.
pub struct Registry {
    runtime: Arc<Runtime>,
    loaded: RwLock<HashMap<String, Arc<LoadedPlugin>>>,
    /// The last load error per plugin (cleared by a good load or a removal).
    errors: RwLock<HashMap<String, String>>,
    /// Wakes every set after a change.
    changed: mpsc::UnboundedSender<()>,
}

/// How a component update went.
#[derive(Debug, PartialEq)]
pub enum Update {
    /// A new component is in use.
    Swapped,
    /// The same bytes as the one in use: nothing to do.
    Unchanged,
    /// It did not load; the last good one (if any) stays in use.
    Refused(String),
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>) -> (Arc<Registry>, mpsc::UnboundedReceiver<()>) {
        let (changed, wake) = mpsc::unbounded_channel();
        let registry = Registry {
            runtime,
            loaded: RwLock::default(),
            errors: RwLock::default(),
            changed,
        };
        (Arc::new(registry), wake)
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Why the newest component of `name` was refused, if it was.
    pub fn error(&self, name: &str) -> Option<String> {
        self.errors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Compiles and checks `bytes` (blocking: call off the async threads), then swaps it in.
    pub fn update(&self, name: &str, bytes: &[u8]) -> Update {
        let digest = Runtime::digest(bytes).ok();
        if let (Some(d), Some(current)) = (&digest, self.get(name))
            && current.digest == *d
            && self.error(name).is_none()
        {
            return Update::Unchanged;
        }
        match self.runtime.load(name, bytes) {
            Ok(plugin) => {
                self.loaded
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.to_string(), plugin);
                self.errors
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
                let _ = self.changed.send(());
                Update::Swapped
            }
            Err(e) => self.refuse(name, e.to_string()),
        }
    }

    /// Records why the newest component of `name` cannot be used; the last
    /// good one stays in use, and the sets bound to it report the reason.
    pub fn refuse(&self, name: &str, message: String) -> Update {
        self.errors
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), message.clone());
        let _ = self.changed.send(());
        Update::Refused(message)
    }

    pub fn remove(&self, name: &str) {
        let was = self
            .loaded
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.errors
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if was.is_some() {
            let _ = self.changed.send(());
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// The component of a plugin ConfigMap: `binaryData["plugin.wasm"]`, or gzip in `plugin.wasm.gz`
/// (gzip is undone by the runtime).
pub fn component_of(cm: &k8s_openapi::api::core::v1::ConfigMap) -> Result<Vec<u8>, String> {
    let data = cm.binary_data.as_ref();
    data.and_then(|d| d.get("plugin.wasm").or_else(|| d.get("plugin.wasm.gz")))
        .map(|b| b.0.clone())
        .ok_or_else(|| {
            "the ConfigMap has no binaryData key plugin.wasm or plugin.wasm.gz".to_string()
        })
}

/// The plugin a directory entry holds: `NAME.wasm` or `NAME.wasm.gz`.
fn plugin_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let name = file
        .strip_suffix(".wasm.gz")
        .or_else(|| file.strip_suffix(".wasm"))?;
    (!name.is_empty() && !name.starts_with('.')).then(|| name.to_string())
}

/// Keeps the registry in step with a directory of `NAME.wasm[.gz]` files.
/// (A mounted ConfigMap volume changes by an atomic symlink swap, which a poll sees.)
pub struct DirectoryFollower {
    registry: Arc<Registry>,
    dir: PathBuf,
    seen: HashMap<String, (SystemTime, u64)>,
}

impl DirectoryFollower {
    pub fn new(registry: Arc<Registry>, dir: PathBuf) -> Self {
        DirectoryFollower {
            registry,
            dir,
            seen: HashMap::new(),
        }
    }

    /// Loads what is new or changed and drops what is gone.
    pub async fn scan(&mut self) {
        let dir = &self.dir;
        let mut present = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read --plugin-dir");
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = plugin_name(&path) else {
                continue;
            };
            // Follow symlinks: ConfigMap volumes are links into a timestamped directory.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            present.push(name.clone());
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if self.seen.get(&name) == Some(&stamp) {
                continue;
            }
            self.seen.insert(name.clone(), stamp);
            let registry = self.registry.clone();
            let outcome = tokio::task::spawn_blocking(move || match std::fs::read(&path) {
                Ok(bytes) => registry.update(&name, &bytes),
                Err(e) => registry.refuse(&name, format!("{}: {e}", path.display())),
            })
            .await;
            match outcome {
                Ok(Update::Refused(e)) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "plugin refused; the last good version stays in use")
                }
                Ok(u) => tracing::info!(dir = %dir.display(), ?u, "plugin file checked"),
                Err(e) => tracing::error!(error = %e, "plugin load task failed"),
            }
        }
        for gone in self
            .registry
            .names()
            .into_iter()
            .filter(|n| !present.contains(n))
        {
            self.seen.remove(&gone);
            self.registry.remove(&gone);
        }
    }

    pub async fn follow(mut self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.scan().await;
        }
    }
}

/// Keeps the registry in step with the plugin ConfigMaps of `namespace`.
/// Returns once the first full listing is loaded; the watch goes on in the background.
pub async fn follow_configmaps(
    registry: Arc<Registry>,
    client: kube::Client,
    namespace: &str,
    recorder: kube::runtime::events::Recorder,
) {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(&format!("{}=true", crate::api::keys::PLUGIN));
    let mut events = Box::pin(watcher::watcher(api, config).default_backoff());
    let (synced_tx, synced) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut synced_tx = Some(synced_tx);
        let mut listed: Vec<String> = Vec::new();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => listed.clear(),
                Ok(Event::InitApply(cm) | Event::Apply(cm)) => {
                    let name = kube::ResourceExt::name_any(&cm);
                    listed.push(name.clone());
                    load_configmap(&registry, &recorder, cm).await;
                }
                Ok(Event::Delete(cm)) => {
                    let name = kube::ResourceExt::name_any(&cm);
                    tracing::info!(plugin = %name, "plugin ConfigMap deleted");
                    registry.remove(&name);
                }
                Ok(Event::InitDone) => {
                    // Plugins deleted while the watch was down.
                    for gone in registry.names().into_iter().filter(|n| !listed.contains(n)) {
                        registry.remove(&gone);
                    }
                    if let Some(tx) = synced_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watching plugin ConfigMaps"),
            }
        }
    });
    let _ = synced.await;
}

async fn load_configmap(
    registry: &Arc<Registry>,
    recorder: &kube::runtime::events::Recorder,
    cm: k8s_openapi::api::core::v1::ConfigMap,
) {
    use kube::Resource;
    let name = kube::ResourceExt::name_any(&cm);
    let outcome = match component_of(&cm) {
        Err(e) => registry.refuse(&name, e),
        Ok(bytes) => {
            let (registry, name) = (registry.clone(), name.clone());
            tokio::task::spawn_blocking(move || registry.update(&name, &bytes))
                .await
                .unwrap_or_else(|e| Update::Refused(format!("the load task failed: {e}")))
        }
    };
    match outcome {
        Update::Swapped => {
            tracing::info!(plugin = %name, digest = ?registry.get(&name).map(|p| p.digest.clone()), "plugin loaded")
        }
        Update::Unchanged => {}
        Update::Refused(reason) => {
            tracing::warn!(plugin = %name, %reason, "plugin refused; the last good version stays in use");
            let event = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Warning,
                reason: "PluginRefused".into(),
                note: Some(truncate(&format!(
                    "{reason}; the last good version (if any) stays in use"
                ))),
                action: "Load".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &cm.object_ref(&())).await {
                tracing::warn!(error = %e, "cannot record an Event on the plugin ConfigMap");
            }
        }
    }
}

/// Event notes are limited to 1 kB.
pub fn truncate(s: &str) -> String {
    if s.len() <= 1000 {
        return s.to_string();
    }
    let mut end = 1000;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_entries_name_plugins() {
        assert_eq!(
            plugin_name(Path::new("/p/role-profile.wasm")).as_deref(),
            Some("role-profile")
        );
        assert_eq!(
            plugin_name(Path::new("/p/gate.wasm.gz")).as_deref(),
            Some("gate")
        );
        assert_eq!(plugin_name(Path::new("/p/..data")), None);
        assert_eq!(plugin_name(Path::new("/p/.wasm")), None);
        assert_eq!(plugin_name(Path::new("/p/readme.md")), None);
    }
}
