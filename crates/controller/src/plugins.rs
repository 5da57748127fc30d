//! Where plugins come from while the operator runs: ConfigMaps
//! labelled `disaggregatedset.x-k8s.io/plugin: "true"` in the operator's
//! namespace, or, with `--plugin-dir`, files `NAME.wasm` / `NAME.wasm.gz` in a
//! directory (a mounted ConfigMap volume). A new component is compiled on a
//! thread of its own, each plugin apart from the others, and swapped in only
//! once it loads; a broken or slow one leaves the last good one in use and is
//! reported, and delays only the sets bound to it. Every change wakes every set.

use disagg_plugin::{LoadedPlugin, Plugin, Plugins, Runtime};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// The longest wait between tries of a load that could not call `describe`.
const LOAD_RETRIES_UP_TO: Duration = Duration::from_secs(8);

/// The plugins in use, by name.
pub struct Registry {
    runtime: Arc<Runtime>,
    loaded: RwLock<HashMap<String, Arc<LoadedPlugin>>>,
    /// The last load error per plugin (cleared by a good load or a removal).
    errors: RwLock<HashMap<String, String>>,
    /// The newest load asked for, per plugin: an older load that finishes
    /// later is thrown away. A name is loading while it is here.
    loading: std::sync::Mutex<HashMap<String, (u64, std::time::Instant)>>,
    next_load: std::sync::atomic::AtomicU64,
    /// Wakes every set after a change.
    changed: mpsc::UnboundedSender<()>,
}

/// How a component update went.
#[derive(Debug, PartialEq)]
pub enum Update {
    /// A new component is in use.
    Swapped,
    /// A newer component of the same plugin was handed in meanwhile; this one is dropped.
    Superseded,
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
            loading: Default::default(),
            next_load: Default::default(),
            changed,
        };
        (Arc::new(registry), wake)
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The component in use under `name`.
    pub fn component(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Starts a load of `name`: from now on it is loading, and only the load
    /// with the newest ticket may change what is in use.
    pub fn begin(&self, name: &str) -> u64 {
        let ticket = self
            .next_load
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (ticket, std::time::Instant::now()));
        ticket
    }

    /// How long the oldest unfinished load has run.
    pub fn oldest_load(&self) -> Option<Duration> {
        let loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        loading.values().map(|(_, since)| since.elapsed()).max()
    }

    /// Compiles and checks the component on the blocking pool (or takes the
    /// error that there is none), then swaps it in, unless a newer load of
    /// the same plugin began meanwhile.
    pub async fn load(
        self: &Arc<Self>,
        name: &str,
        ticket: u64,
        bytes: Result<Vec<u8>, String>,
    ) -> Update {
        let unchanged = bytes.as_ref().ok().and_then(|b| {
            let digest = Runtime::digest(b).ok()?;
            let current = self.component(name)?;
            (current.digest == digest && self.refused(name).is_none()).then_some(())
        });
        let result = match (unchanged, bytes) {
            (Some(()), _) => {
                self.finish(name, ticket);
                return Update::Unchanged;
            }
            (None, Err(e)) => Err(e),
            (None, Ok(bytes)) => self.compile_and_check(name, ticket, bytes).await,
        };
        if !self.finish(name, ticket) {
            return Update::Superseded;
        }
        match result {
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
            Err(e) => self.refuse(name, e),
        }
    }

    /// The runtime's load, on the blocking pool. A load whose `describe`
    /// could not be answered for a reason of the operator's own (no free
    /// call slot, starved of CPU) did not fail: it is tried again after 1,
    /// 2, 4 and 8 s, while it is still the newest, and only then refused.
    /// The plugin counts as loading meanwhile, so its sets wait for it.
    async fn compile_and_check(
        &self,
        name: &str,
        ticket: u64,
        bytes: Vec<u8>,
    ) -> Result<Arc<LoadedPlugin>, String> {
        let bytes = Arc::new(bytes);
        let mut backoff = Duration::from_secs(1);
        loop {
            let (runtime, owned, b) = (self.runtime.clone(), name.to_string(), bytes.clone());
            let result = tokio::task::spawn_blocking(move || runtime.load(&owned, &b))
                .await
                .unwrap_or_else(|e| {
                    Err(disagg_plugin::PluginError::InvalidComponent {
                        plugin: name.to_string(),
                        message: format!("the load task failed: {e}"),
                    })
                });
            match result {
                Err(e)
                    if e.retryable()
                        && backoff <= LOAD_RETRIES_UP_TO
                        && self.newest(name, ticket) =>
                {
                    tracing::info!(plugin = %name, error = %e, retry_in = ?backoff, "plugin load retried");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                other => return other.map_err(|e| e.to_string()),
            }
        }
    }

    fn newest(&self, name: &str, ticket: u64) -> bool {
        let loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        loading.get(name).map(|(t, _)| *t) == Some(ticket)
    }

    /// Ends the load `ticket` of `name`; whether it was the newest.
    fn finish(&self, name: &str, ticket: u64) -> bool {
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        let newest = loading.get(name).map(|(t, _)| *t) == Some(ticket);
        if newest {
            loading.remove(name);
        }
        newest
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
        self.loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
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
/// The registry is what the decide step looks plugins up in.
impl Plugins for Registry {
    fn get(&self, name: &str) -> Option<Arc<dyn Plugin>> {
        self.component(name).map(|p| p as Arc<dyn Plugin>)
    }

    fn loading_for(&self, name: &str) -> Option<Duration> {
        self.loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|(_, since)| since.elapsed())
    }

    fn refused(&self, name: &str) -> Option<String> {
        self.errors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

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
            let ticket = registry.begin(&name);
            // Each file loads on its own: a slow one holds up no other.
            tokio::spawn(async move {
                let read = path.clone();
                let bytes = tokio::task::spawn_blocking(move || std::fs::read(&read))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    .map_err(|e| format!("{}: {e}", path.display()));
                let outcome = registry.load(&name, ticket, bytes).await;
                match outcome {
                    Update::Refused(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "plugin refused; the last good version stays in use")
                    }
                    u => tracing::info!(path = %path.display(), ?u, "plugin file checked"),
                }
            });
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
    recorder: super::events::Events,
    health: Arc<super::health::Health>,
) {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(&format!("{}=true", disagg_api::keys::PLUGIN));
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
                    // Each ConfigMap loads on its own: a slow one holds up no other.
                    let ticket = registry.begin(&name);
                    tokio::spawn(load_configmap(
                        registry.clone(),
                        recorder.clone(),
                        cm,
                        ticket,
                    ));
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
        health.watcher_stopped();
    });
    let _ = synced.await;
}

async fn load_configmap(
    registry: Arc<Registry>,
    events: super::events::Events,
    cm: k8s_openapi::api::core::v1::ConfigMap,
    ticket: u64,
) {
    use kube::Resource;
    let name = kube::ResourceExt::name_any(&cm);
    let outcome = registry.load(&name, ticket, component_of(&cm)).await;
    match outcome {
        Update::Swapped => {
            tracing::info!(plugin = %name, digest = ?registry.component(&name).map(|p| p.digest.clone()), "plugin loaded")
        }
        Update::Unchanged | Update::Superseded => {}
        Update::Refused(reason) => {
            tracing::warn!(plugin = %name, %reason, "plugin refused; the last good version stays in use");
            events.record(
                cm.object_ref(&()),
                kube::runtime::events::EventType::Warning,
                "PluginRefused",
                "Load",
                &format!("{reason}; the last good version (if any) stays in use"),
            );
        }
    }
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
