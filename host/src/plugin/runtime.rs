use super::error::PluginError;
use crate::core::patch::LwsPatch;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod wit_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        additional_derives: [PartialEq, Eq],
    });
}

use wit_world::disaggregatedset::plugin::types as wit;
use wit_world::{Plugin, PluginPre};

pub use wit::{GateDecision, Hook, RoleReplicas, RoleStep, ScaleAdvice, Violation};
/// Input of `patch-role`.
pub type PatchInput = wit::PatchRequest;
/// Input of `scale-role`.
pub type ScaleInput = wit::ScaleRequest;
/// Input of `gate-step`.
pub type GateInput = wit::GateRequest;

/// The contract version this host serves (`package disaggregatedset:plugin@…`).
pub const CONTRACT_VERSION: &str = "0.1.0";
const HOOKS_EXPORT: &str = "disaggregatedset:plugin/hooks";
/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Plugin calls running at once through the async wrappers; the rest wait.
const MAX_CONCURRENT_CALLS: usize = 16;
/// The largest component accepted, after gzip decompression.
const MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// Per-call limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub deadline: Duration,
    pub memory_bytes: usize,
    /// For a returned patch and for stdout/stderr each.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            output_bytes: 1 << 20,
        }
    }
}

/// What `describe` returned, plus load facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub hooks: Vec<Hook>,
}

/// A compiled, checked, pre-linked component.
pub struct LoadedPlugin {
    /// The name it is known by (its ConfigMap's name, or the CLI's NAME=).
    pub name: String,
    /// `sha256:<hex>` of the (decompressed) component.
    pub digest: String,
    pub info: PluginInfo,
    pub size_bytes: usize,
    pub compile_time: Duration,
    pre: PluginPre<State>,
}

impl LoadedPlugin {
    pub fn implements(&self, hook: Hook) -> bool {
        self.info.hooks.contains(&hook)
    }
}

/// Per-call store state.
struct State {
    plugin: String,
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for State {}

impl wit_world::disaggregatedset::plugin::host::Host for State {
    fn log(&mut self, level: wit::Level, message: String) {
        let plugin = self.plugin.as_str();
        let message = truncate(&message, 4096);
        match level {
            wit::Level::Trace => tracing::trace!(plugin, "{message}"),
            wit::Level::Debug => tracing::debug!(plugin, "{message}"),
            wit::Level::Info => tracing::info!(plugin, "{message}"),
            wit::Level::Warn => tracing::warn!(plugin, "{message}"),
            wit::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Refuses memory growth past the cap, and remembers that it did so the
/// resulting trap can be reported as out-of-memory rather than a crash.
struct Limiter {
    memory_bytes: usize,
    denied: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_bytes;
        self.denied |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The plugin runtime: one engine, a linker that provides only `host` and
/// sandboxed WASI stdio, and the compiled components by digest.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    limits: Limits,
    compiled: Mutex<HashMap<String, Arc<LoadedPlugin>>>,
    calls: tokio::sync::Semaphore,
    /// Told about every hook call, for metrics.
    observer: std::sync::OnceLock<Observer>,
    /// Calls in flight; the epoch ticker sleeps while there are none, so an
    /// idle operator burns no CPU.
    busy: Arc<Busy>,
}

/// Receives every hook call: plugin, hook, duration, and the error if it failed.
pub type Observer = Box<dyn Fn(&str, Hook, Duration, Option<&PluginError>) + Send + Sync>;

#[derive(Default)]
struct Busy {
    calls: Mutex<usize>,
    started: std::sync::Condvar,
}

/// Counts one call in flight for as long as it lives.
struct InFlight<'a>(&'a Busy);

impl<'a> InFlight<'a> {
    fn new(busy: &'a Busy) -> Self {
        *busy.calls.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        busy.started.notify_all();
        InFlight(busy)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        *self.0.calls.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
    }
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker (a thread that lives as long as the runtime).
    pub fn new(limits: Limits) -> Result<Arc<Runtime>, String> {
        let mut pool = PoolingAllocationConfig::default();
        // Slots for the calls that may run at once (async callers are held to
        // MAX_CONCURRENT_CALLS), with room for several core instances each.
        let slots = MAX_CONCURRENT_CALLS as u32 * 2;
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots)
            .total_tables(slots * 4)
            .max_memory_size(limits.memory_bytes)
            // Keeping the first MiBs of each slot resident (reset with memset, not
            // madvise) avoids page faults on fresh instances, which otherwise
            // dominate a call (DESIGN §8). Untouched pages still cost nothing.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine =
            Engine::new(&config).map_err(|e| format!("cannot start the Wasm engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| e.to_string())?;
        Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| e.to_string())?;
        let runtime = Arc::new(Runtime {
            engine,
            linker,
            limits,
            compiled: Mutex::new(HashMap::new()),
            calls: tokio::sync::Semaphore::new(MAX_CONCURRENT_CALLS),
            busy: Arc::default(),
            observer: std::sync::OnceLock::new(),
        });
        spawn_ticker(Arc::downgrade(&runtime), runtime.busy.clone());
        Ok(runtime)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The digest of a component's bytes (gzip is undone first).
    pub fn digest(bytes: &[u8]) -> Result<String, String> {
        Ok(sha256(&decompress(bytes)?))
    }

    /// Compiles (or finds already compiled) and checks a component: it must be
    /// a component exporting `hooks` at a version we serve, import nothing we
    /// do not provide, and answer `describe` within limits. CPU-heavy on first
    /// load: call it off the async executor.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<LoadedPlugin>, PluginError> {
        let invalid = |message: String| PluginError::InvalidComponent {
            plugin: name.to_string(),
            message,
        };
        let bytes = decompress(bytes).map_err(invalid)?;
        let digest = sha256(&bytes);
        if let Some(found) = self.cached(&digest)
            && found.name == name
        {
            return Ok(found);
        }
        let started = Instant::now();
        let component =
            Component::new(&self.engine, &bytes).map_err(|e| invalid(root_cause(&e)))?;
        let compile_time = started.elapsed();
        self.check_version(name, &component)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            invalid(format!(
                "imports something this host does not provide: {}",
                root_cause(&e)
            ))
        })?;
        let pre = PluginPre::new(instance_pre).map_err(|e| {
            invalid(format!(
                "does not match the plugin world: {}",
                root_cause(&e)
            ))
        })?;
        let mut loaded = LoadedPlugin {
            name: name.to_string(),
            digest: digest.clone(),
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                hooks: Vec::new(),
            },
            size_bytes: bytes.len(),
            compile_time,
            pre,
        };
        let info = self.call(&loaded, |p, s| {
            p.disaggregatedset_plugin_hooks().call_describe(s)
        })?;
        loaded.info = PluginInfo {
            name: info.name,
            version: info.version,
            hooks: info.hooks,
        };
        let loaded = Arc::new(loaded);
        self.compiled
            .lock()
            .expect("plugin cache lock")
            .insert(digest, loaded.clone());
        Ok(loaded)
    }

    fn cached(&self, digest: &str) -> Option<Arc<LoadedPlugin>> {
        self.compiled
            .lock()
            .expect("plugin cache lock")
            .get(digest)
            .cloned()
    }

    fn check_version(&self, name: &str, component: &Component) -> Result<(), PluginError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let wanted = format!("{HOOKS_EXPORT}@{CONTRACT_VERSION}");
        if exports.contains(&wanted) {
            return Ok(());
        }
        if let Some(other) = exports.iter().find(|e| e.starts_with(HOOKS_EXPORT)) {
            return Err(PluginError::IncompatibleVersion {
                plugin: name.to_string(),
                found: other.clone(),
                supported: vec![wanted],
            });
        }
        Err(PluginError::InvalidComponent {
            plugin: name.to_string(),
            message: format!(
                "it does not export {wanted} (it exports: {})",
                if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    exports.join(", ")
                }
            ),
        })
    }

    /// Sets the observer of hook calls (once; later calls are ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    fn observed<R>(
        &self,
        plugin: &LoadedPlugin,
        hook: Hook,
        f: impl FnOnce() -> Result<R, PluginError>,
    ) -> Result<R, PluginError> {
        let started = std::time::Instant::now();
        let result = f();
        if let Some(observe) = self.observer.get() {
            observe(&plugin.name, hook, started.elapsed(), result.as_ref().err());
        }
        result
    }

    /// Runs one hook on a fresh instance within the limits.
    fn call<R>(
        &self,
        plugin: &LoadedPlugin,
        f: impl FnOnce(&Plugin, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let limits = self.limits;
        let _in_flight = InFlight::new(&self.busy);
        let stdout = MemoryOutputPipe::new(limits.output_bytes);
        let stderr = MemoryOutputPipe::new(limits.output_bytes);
        // No preopened directories, environment, arguments or network.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut store = Store::new(
            &self.engine,
            State {
                plugin: plugin.name.clone(),
                wasi,
                table: ResourceTable::new(),
                limiter: Limiter {
                    memory_bytes: limits.memory_bytes,
                    denied: false,
                },
            },
        );
        store.limiter(|s| &mut s.limiter);
        let ticks = limits.deadline.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();

        let result = plugin
            .pre
            .instantiate(&mut store)
            .and_then(|instance| f(&instance, &mut store));
        forward_output(&plugin.name, "stdout", &stdout.contents());
        forward_output(&plugin.name, "stderr", &stderr.contents());
        result.map_err(|e| {
            let name = plugin.name.clone();
            if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                PluginError::Timeout {
                    plugin: name,
                    limit_ms: limits.deadline.as_millis() as u64,
                }
            } else if store.data().limiter.denied {
                PluginError::OutOfMemory {
                    plugin: name,
                    limit_bytes: limits.memory_bytes as u64,
                }
            } else if format!("{e:#}").contains("beyond capacity")
                || [&stdout, &stderr]
                    .iter()
                    .any(|p| p.contents().len() + 8192 >= limits.output_bytes)
            {
                PluginError::OutputTooLarge {
                    plugin: name,
                    limit_bytes: limits.output_bytes as u64,
                }
            } else {
                // A Rust guest prints its panic message to stderr before it traps.
                let said = String::from_utf8_lossy(&stderr.contents())
                    .trim()
                    .to_string();
                let message = if said.is_empty() {
                    root_cause(&e)
                } else {
                    format!("{}; it printed: {}", root_cause(&e), truncate(&said, 1024))
                };
                PluginError::Trap {
                    plugin: name,
                    message,
                }
            }
        })
    }

    fn require(
        &self,
        plugin: &LoadedPlugin,
        hook: Hook,
        label: &'static str,
    ) -> Result<(), PluginError> {
        if plugin.implements(hook) {
            Ok(())
        } else {
            Err(PluginError::NotImplemented {
                plugin: plugin.name.clone(),
                hook: label,
            })
        }
    }

    fn check_len(&self, plugin: &LoadedPlugin, len: usize) -> Result<(), PluginError> {
        if len > self.limits.output_bytes {
            return Err(PluginError::OutputTooLarge {
                plugin: plugin.name.clone(),
                limit_bytes: self.limits.output_bytes as u64,
            });
        }
        Ok(())
    }

    /// `patch-role`: the patch to apply to the rendered LWS.
    pub fn patch_role(
        &self,
        plugin: &LoadedPlugin,
        input: &PatchInput,
    ) -> Result<LwsPatch, PluginError> {
        self.observed(plugin, Hook::PatchRole, || {
            self.require(plugin, Hook::PatchRole, "patch-role")?;
            let out = self.call(plugin, |p, s| {
                p.disaggregatedset_plugin_hooks().call_patch_role(s, input)
            })?;
            let failed = |message| PluginError::Failed {
                plugin: plugin.name.clone(),
                message,
            };
            let parse = |text: &str| {
                self.check_len(plugin, text.len())?;
                serde_json::from_str(text).map_err(|e| PluginError::BadOutput {
                    plugin: plugin.name.clone(),
                    message: format!("patch is not JSON: {e}"),
                })
            };
            match out.map_err(failed)? {
                wit::Patch::None => Ok(LwsPatch::None),
                wit::Patch::Merge(text) => Ok(LwsPatch::Merge(parse(&text)?)),
                wit::Patch::JsonPatch(text) => Ok(LwsPatch::Json(parse(&text)?)),
            }
        })
    }

    /// `scale-role`: a proposal for a role's replicas, if any.
    pub fn scale_role(
        &self,
        plugin: &LoadedPlugin,
        input: &ScaleInput,
    ) -> Result<Option<ScaleAdvice>, PluginError> {
        self.observed(plugin, Hook::ScaleRole, || {
            self.require(plugin, Hook::ScaleRole, "scale-role")?;
            let out = self.call(plugin, |p, s| {
                p.disaggregatedset_plugin_hooks().call_scale_role(s, input)
            })?;
            let advice = out.map_err(|message| PluginError::Failed {
                plugin: plugin.name.clone(),
                message,
            })?;
            if let Some(a) = &advice {
                self.check_len(plugin, a.reason.len())?;
                if a.replicas < 0 {
                    return Err(PluginError::BadOutput {
                        plugin: plugin.name.clone(),
                        message: format!("proposed {} replicas for {}", a.replicas, input.role),
                    });
                }
            }
            Ok(advice)
        })
    }

    /// `gate-step`: proceed or hold.
    pub fn gate_step(
        &self,
        plugin: &LoadedPlugin,
        input: &GateInput,
    ) -> Result<GateDecision, PluginError> {
        self.observed(plugin, Hook::GateStep, || {
            self.require(plugin, Hook::GateStep, "gate-step")?;
            let out = self.call(plugin, |p, s| {
                p.disaggregatedset_plugin_hooks().call_gate_step(s, input)
            })?;
            let decision = out.map_err(|message| PluginError::Failed {
                plugin: plugin.name.clone(),
                message,
            })?;
            if let GateDecision::Hold(h) = &decision {
                self.check_len(plugin, h.reason.len())?;
            }
            Ok(decision)
        })
    }

    /// `validate`: violations of the plugin's rules.
    pub fn validate(
        &self,
        plugin: &LoadedPlugin,
        set_json: &str,
        config_json: &str,
    ) -> Result<Vec<Violation>, PluginError> {
        self.observed(plugin, Hook::Validate, || {
            self.require(plugin, Hook::Validate, "validate")?;
            let input = wit::ValidateRequest {
                set: set_json.to_string(),
                config: config_json.to_string(),
            };
            let out = self.call(plugin, |p, s| {
                p.disaggregatedset_plugin_hooks().call_validate(s, &input)
            })?;
            self.check_len(
                plugin,
                out.iter().map(|v| v.field.len() + v.message.len()).sum(),
            )?;
            Ok(out)
        })
    }

    /// [`Runtime::load`] on tokio's blocking pool.
    pub async fn load_async(
        self: &Arc<Self>,
        name: String,
        bytes: Vec<u8>,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let rt = self.clone();
        self.blocking(move || rt.load(&name, &bytes)).await
    }

    /// [`Runtime::patch_role`] on tokio's blocking pool.
    pub async fn patch_role_async(
        self: &Arc<Self>,
        plugin: Arc<LoadedPlugin>,
        input: PatchInput,
    ) -> Result<LwsPatch, PluginError> {
        let rt = self.clone();
        self.blocking(move || rt.patch_role(&plugin, &input)).await
    }

    /// [`Runtime::scale_role`] on tokio's blocking pool.
    pub async fn scale_role_async(
        self: &Arc<Self>,
        plugin: Arc<LoadedPlugin>,
        input: ScaleInput,
    ) -> Result<Option<ScaleAdvice>, PluginError> {
        let rt = self.clone();
        self.blocking(move || rt.scale_role(&plugin, &input)).await
    }

    /// [`Runtime::gate_step`] on tokio's blocking pool.
    pub async fn gate_step_async(
        self: &Arc<Self>,
        plugin: Arc<LoadedPlugin>,
        input: GateInput,
    ) -> Result<GateDecision, PluginError> {
        let rt = self.clone();
        self.blocking(move || rt.gate_step(&plugin, &input)).await
    }
}

impl Runtime {
    /// Runs a call on tokio's blocking pool, at most MAX_CONCURRENT_CALLS at once.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, PluginError> + Send + 'static,
    ) -> Result<T, PluginError> {
        let _permit = self
            .calls
            .acquire()
            .await
            .expect("the call semaphore is never closed");
        tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
            Err(PluginError::Trap {
                plugin: "<host>".into(),
                message: format!("the plugin call's thread failed: {e}"),
            })
        })
    }
}

/// Advances the engine's epoch while calls are in flight, until the runtime
/// is dropped. With no call in flight it waits (checking once a second
/// whether the runtime is gone), so it costs nothing when idle; deadlines
/// count ticks from their call's start, which always finds the ticker running.
fn spawn_ticker(runtime: Weak<Runtime>, busy: Arc<Busy>) {
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            loop {
                {
                    let mut calls = busy.calls.lock().unwrap_or_else(|p| p.into_inner());
                    while *calls == 0 {
                        if runtime.strong_count() == 0 {
                            return;
                        }
                        calls = busy
                            .started
                            .wait_timeout(calls, Duration::from_secs(1))
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                }
                let Some(rt) = runtime.upgrade() else { return };
                rt.engine.increment_epoch();
                drop(rt);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the plugin epoch thread");
}

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Undoes gzip (`plugin.wasm.gz`), refusing anything that inflates past the limit.
fn decompress(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_COMPONENT_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("invalid gzip: {e}"))?;
    if out.len() as u64 > MAX_COMPONENT_BYTES {
        return Err(format!(
            "decompresses to more than {} MiB",
            MAX_COMPONENT_BYTES >> 20
        ));
    }
    Ok(out)
}

/// The error chain on one line (wasmtime's messages span several).
fn root_cause(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    truncate(&text.split_whitespace().collect::<Vec<_>>().join(" "), 2048)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

fn forward_output(plugin: &str, stream: &str, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines().take(100) {
        tracing::info!(plugin, stream, "{}", truncate(line, 4096));
    }
}
