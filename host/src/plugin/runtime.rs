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
        // Hooks run as async calls so that a call blocked inside a host
        // function (a WASI sleep or poll) can be abandoned at its deadline;
        // the epoch deadline only interrupts Wasm code.
        exports: { default: async },
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

/// Per-call limits, and how many calls may run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub deadline: Duration,
    /// For all of a component's memories together.
    pub memory_bytes: usize,
    /// For a returned patch and for stdout/stderr each.
    pub output_bytes: usize,
    /// Calls that may run at once, from every caller together; the rest wait
    /// for a slot. Peak plugin memory is `concurrent_calls × memory_bytes`.
    pub concurrent_calls: usize,
    /// How long a call waits for a free slot before it is given up as
    /// `PluginBusy` (retried on the next reconcile, never skipped).
    pub slot_wait: Duration,
    /// The largest component accepted, after gzip decompression.
    pub component_bytes: usize,
    /// How long compiling one component may take before it is refused.
    pub compile_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            output_bytes: 1 << 20,
            concurrent_calls: 4,
            slot_wait: Duration::from_secs(5),
            // A ConfigMap holds at most 1 MiB, and gzip shrinks Wasm code about
            // 3×, so 4 MiB admits anything a ConfigMap can carry (every shipped
            // plugin is under 300 KiB) while bounding what one ConfigMap can
            // make the operator inflate, hold and compile. A JavaScript
            // component carries its engine (12 MB) and needs `--plugin-dir`
            // with a raised limit.
            component_bytes: 4 << 20,
            // Compiling a shipped plugin takes well under a second on one core.
            compile_deadline: Duration::from_secs(20),
        }
    }
}

impl Limits {
    /// For the CLI on an author's own machine (`disagg render`, `disagg plugin
    /// check`): the operator's call limits, but any component up to 64 MiB
    /// and as long a compile as it needs (a JavaScript component carries its
    /// engine: 12 MB, about 15 s to compile).
    pub fn for_tools() -> Limits {
        Limits {
            component_bytes: 64 << 20,
            compile_deadline: Duration::from_secs(600),
            ..Limits::default()
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

/// Refuses memory growth past the cap, counted over all of a component's
/// memories together (a component may hold several core instances, each with
/// its own memories), and remembers that it did so the resulting trap can be
/// reported as out-of-memory rather than a crash.
struct Limiter {
    memory_bytes: usize,
    /// Bytes of linear memory the instance holds, over all its memories.
    used: usize,
    denied: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called at instantiation too (from 0), so `used` covers every memory.
        let after = self.used.saturating_add(desired.saturating_sub(current));
        let ok = after <= self.memory_bytes;
        if ok {
            self.used = after;
        }
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
/// sandboxed WASI, and the compiled components by digest.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    limits: Limits,
    /// Compiled components by digest, for as long as someone holds them: a
    /// component no binding or registry entry references any more is freed.
    compiled: Mutex<HashMap<String, Weak<LoadedPlugin>>>,
    /// The one bound on calls running at once (see [`Limits::concurrent_calls`]).
    slots: tokio::sync::Semaphore,
    /// Drives calls: its timer abandons a call at its deadline even while the
    /// guest waits in a host function. Calls run on their caller's thread.
    executor: Option<tokio::runtime::Runtime>,
    /// Told about every hook call, for metrics.
    observer: std::sync::OnceLock<Observer>,
    /// Calls in flight; the epoch ticker sleeps while there are none, so an
    /// idle operator burns no CPU.
    busy: Arc<Busy>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Dropping a tokio runtime blocks, which panics on an async thread.
        if let Some(executor) = self.executor.take() {
            executor.shutdown_background();
        }
    }
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

/// One hook call's input.
enum Request<'r> {
    Describe,
    PatchRole(&'r PatchInput),
    ScaleRole(&'r ScaleInput),
    GateStep(&'r GateInput),
    Validate(&'r wit::ValidateRequest),
}

/// One hook call's output, as the guest returned it.
enum Response {
    Describe(wit::PluginInfo),
    PatchRole(Result<wit::Patch, String>),
    ScaleRole(Result<Option<ScaleAdvice>, String>),
    GateStep(Result<GateDecision, String>),
    Validate(Vec<Violation>),
}

async fn invoke(
    plugin: &Plugin,
    store: &mut Store<State>,
    request: Request<'_>,
) -> wasmtime::Result<Response> {
    let hooks = plugin.disaggregatedset_plugin_hooks();
    Ok(match request {
        Request::Describe => Response::Describe(hooks.call_describe(store).await?),
        Request::PatchRole(r) => Response::PatchRole(hooks.call_patch_role(store, r).await?),
        Request::ScaleRole(r) => Response::ScaleRole(hooks.call_scale_role(store, r).await?),
        Request::GateStep(r) => Response::GateStep(hooks.call_gate_step(store, r).await?),
        Request::Validate(r) => Response::Validate(hooks.call_validate(store, r).await?),
    })
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker (a thread that lives as long as the runtime).
    pub fn new(limits: Limits) -> Result<Arc<Runtime>, String> {
        if limits.concurrent_calls == 0 {
            return Err("at least one concurrent plugin call is needed".into());
        }
        let mut pool = PoolingAllocationConfig::default();
        // One slot per call that may run at once, plus one for a load's
        // `describe` (loads take a call slot too; the spare absorbs a slot
        // whose store is still being torn down), with room for several core
        // instances each. Calls never wait on the pool: the slots semaphore
        // admits no more than it holds.
        let slots = limits.concurrent_calls as u32 + 1;
        pool.total_component_instances(slots)
            .total_core_instances(slots * 16)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_memories_per_module(4)
            .total_memories(slots * 4)
            .total_tables(slots * 16)
            .total_stacks(slots)
            .max_memory_size(limits.memory_bytes)
            // Keeping the first MiBs of each slot resident (reset with memset, not
            // madvise) avoids page faults on fresh instances, which otherwise
            // dominate a call (benches/plugin_call.rs). Untouched pages still cost nothing.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            // The same for the call's fiber stack (async calls run on one).
            .async_stack_keep_resident(256 << 10);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .async_stack_size(1 << 20)
            .epoch_interruption(true)
            // Each component compiles on its own thread, not on a pool shared
            // by all: otherwise one huge function holds up every other load.
            .parallel_compilation(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine =
            Engine::new(&config).map_err(|e| format!("cannot start the Wasm engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| e.to_string())?;
        Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| e.to_string())?;
        let executor = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("plugin-timer")
            .enable_time()
            .build()
            .map_err(|e| format!("cannot start the plugin call executor: {e}"))?;
        let runtime = Arc::new(Runtime {
            engine,
            linker,
            limits,
            compiled: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(limits.concurrent_calls),
            executor: Some(executor),
            busy: Arc::default(),
            observer: std::sync::OnceLock::new(),
        });
        spawn_ticker(Arc::downgrade(&runtime), runtime.busy.clone());
        Ok(runtime)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The digest of a component's bytes (gzip is undone first, up to 64 MiB;
    /// [`Runtime::load`] holds components to the configured, smaller limit).
    pub fn digest(bytes: &[u8]) -> Result<String, String> {
        Ok(sha256(&decompress(bytes, 64 << 20)?))
    }

    /// Compiles (or finds already compiled) and checks a component: it must be
    /// a component exporting `hooks` at a version we serve, import nothing we
    /// do not provide, and answer `describe` within limits. CPU-heavy on first
    /// load, and blocking: call it off the async executor.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<LoadedPlugin>, PluginError> {
        let invalid = |message: String| PluginError::InvalidComponent {
            plugin: name.to_string(),
            message,
        };
        let bytes = decompress(bytes, self.limits.component_bytes).map_err(invalid)?;
        let digest = sha256(&bytes);
        if let Some(found) = self.cached(&digest)
            && found.name == name
        {
            return Ok(found);
        }
        let started = Instant::now();
        let component = self.compile(name, bytes.clone())?;
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
        let Response::Describe(info) = self.call(&loaded, Request::Describe)? else {
            unreachable!("describe answers with describe")
        };
        loaded.info = PluginInfo {
            name: truncate(&info.name, 256),
            version: truncate(&info.version, 256),
            hooks: info.hooks,
        };
        let loaded = Arc::new(loaded);
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        compiled.retain(|_, p| p.strong_count() > 0);
        compiled.insert(digest, Arc::downgrade(&loaded));
        Ok(loaded)
    }

    /// Compiles on a thread of its own, giving up after the compile deadline.
    /// Cranelift cannot be interrupted: a compile that overruns finishes on
    /// its thread (its time bounded by the size limit) and is thrown away.
    fn compile(&self, name: &str, bytes: Vec<u8>) -> Result<Component, PluginError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let engine = self.engine.clone();
        std::thread::Builder::new()
            .name(format!("compile-{name}"))
            .spawn(move || {
                let _ = tx.send(Component::new(&engine, &bytes));
            })
            .map_err(|e| PluginError::InvalidComponent {
                plugin: name.to_string(),
                message: format!("cannot start a compile thread: {e}"),
            })?;
        let deadline = self.limits.compile_deadline;
        match rx.recv_timeout(deadline) {
            Ok(compiled) => compiled.map_err(|e| PluginError::InvalidComponent {
                plugin: name.to_string(),
                message: root_cause(&e),
            }),
            Err(_) => Err(PluginError::InvalidComponent {
                plugin: name.to_string(),
                message: format!(
                    "compiling it took longer than {} ms; it is refused",
                    deadline.as_millis()
                ),
            }),
        }
    }

    fn cached(&self, digest: &str) -> Option<Arc<LoadedPlugin>> {
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .and_then(Weak::upgrade)
    }

    /// Compiled components still held by someone (what the cache keeps alive).
    pub fn compiled_count(&self) -> usize {
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| p.strong_count() > 0)
            .count()
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

    /// Runs one hook on a fresh instance within the limits, on the calling
    /// thread (blocking: call it off the async executor). It returns within
    /// the deadline plus a tick whatever the guest does: Wasm code is
    /// interrupted by the epoch, a host call it waits in is abandoned.
    fn call(&self, plugin: &LoadedPlugin, request: Request<'_>) -> Result<Response, PluginError> {
        let limits = self.limits;
        let name = || plugin.name.clone();
        // WASI's pollables (a guest's sleep) need tokio's timer; entering the
        // executor only sets a thread-local. The call itself is polled right
        // here, so an ordinary call costs no timer and no thread hand-off.
        let _context = self
            .executor
            .as_ref()
            .expect("the executor lives as long as the runtime")
            .enter();
        let busy = || PluginError::Busy {
            plugin: name(),
            waited_ms: limits.slot_wait.as_millis() as u64,
            slots: limits.concurrent_calls,
        };
        let _slot = match self.slots.try_acquire() {
            Ok(slot) => slot,
            Err(_) => match poll_until(self.slots.acquire(), Instant::now() + limits.slot_wait) {
                Some(Ok(slot)) => slot,
                _ => return Err(busy()),
            },
        };
        let _in_flight = InFlight::new(&self.busy);
        let stdout = MemoryOutputPipe::new(limits.output_bytes);
        let stderr = MemoryOutputPipe::new(limits.output_bytes);
        // No preopened directories, environment, arguments or network; stdin
        // is closed (docs/sandbox.md lists the whole WASI surface).
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
                    used: 0,
                    denied: false,
                },
            },
        );
        store.limiter(|s| &mut s.limiter);
        let ticks = limits.deadline.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();

        // The wall-clock bound: what the epoch cannot interrupt (a guest
        // waiting in poll, sleep or a read) is dropped here, instance and all.
        let wall = limits.deadline + 2 * EPOCH_TICK;
        let run = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            invoke(&instance, &mut store, request).await
        };
        let outcome = poll_until(run, Instant::now() + wall);
        forward_output(&plugin.name, "stdout", &stdout.contents());
        forward_output(&plugin.name, "stderr", &stderr.contents());
        let timeout = || PluginError::Timeout {
            plugin: name(),
            limit_ms: limits.deadline.as_millis() as u64,
        };
        let Some(result) = outcome else {
            return Err(timeout());
        };
        result.map_err(|e| {
            if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                timeout()
            } else if e
                .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
            {
                busy()
            } else if store.data().limiter.denied {
                PluginError::OutOfMemory {
                    plugin: name(),
                    limit_bytes: limits.memory_bytes as u64,
                }
            } else if format!("{e:#}").contains("beyond capacity")
                || [&stdout, &stderr]
                    .iter()
                    .any(|p| p.contents().len() + 8192 >= limits.output_bytes)
            {
                PluginError::OutputTooLarge {
                    plugin: name(),
                    limit_bytes: limits.output_bytes as u64,
                }
            } else if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                PluginError::Trap {
                    plugin: name(),
                    message: format!(
                        "it called exit({}); a plugin returns its answer instead",
                        exit.0
                    ),
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
                    plugin: name(),
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
            let Response::PatchRole(out) = self.call(plugin, Request::PatchRole(input))? else {
                unreachable!("patch-role answers with patch-role")
            };
            let failed = |message: String| PluginError::Failed {
                plugin: plugin.name.clone(),
                message: truncate(&message, MAX_MESSAGE_BYTES),
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
            let Response::ScaleRole(out) = self.call(plugin, Request::ScaleRole(input))? else {
                unreachable!("scale-role answers with scale-role")
            };
            let advice = out.map_err(|message| PluginError::Failed {
                plugin: plugin.name.clone(),
                message: truncate(&message, MAX_MESSAGE_BYTES),
            })?;
            let Some(mut a) = advice else {
                return Ok(None);
            };
            if !(0..=crate::api::limits::MAX_REPLICAS).contains(&a.replicas) {
                return Err(PluginError::BadOutput {
                    plugin: plugin.name.clone(),
                    message: format!(
                        "proposed {} replicas for {}; advice must be 0 to {}",
                        a.replicas,
                        input.role,
                        crate::api::limits::MAX_REPLICAS
                    ),
                });
            }
            a.reason = truncate(&a.reason, MAX_MESSAGE_BYTES);
            Ok(Some(a))
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
            let Response::GateStep(out) = self.call(plugin, Request::GateStep(input))? else {
                unreachable!("gate-step answers with gate-step")
            };
            let mut decision = out.map_err(|message| PluginError::Failed {
                plugin: plugin.name.clone(),
                message: truncate(&message, MAX_MESSAGE_BYTES),
            })?;
            if let GateDecision::Hold(h) = &mut decision {
                h.reason = truncate(&h.reason, MAX_MESSAGE_BYTES);
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
            let Response::Validate(mut out) = self.call(plugin, Request::Validate(&input))? else {
                unreachable!("validate answers with validate")
            };
            // What reaches status stays small: a few violations, each short.
            let more = out.len().saturating_sub(MAX_VIOLATIONS);
            out.truncate(MAX_VIOLATIONS);
            for v in &mut out {
                v.field = truncate(&v.field, 256);
                v.message = truncate(&v.message, MAX_MESSAGE_BYTES);
            }
            if more > 0 {
                out.push(Violation {
                    field: "spec".into(),
                    message: format!("and {more} more violations"),
                });
            }
            Ok(out)
        })
    }
}

/// The longest message a plugin's answer may put into status or an Event.
const MAX_MESSAGE_BYTES: usize = 512;
/// The most violations one plugin may report at once.
const MAX_VIOLATIONS: usize = 20;

/// Polls `future` on this thread until it is ready or `deadline` passes;
/// then it is dropped (for a plugin call: the instance and all with it).
fn poll_until<F: std::future::Future>(future: F, deadline: Instant) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        // Woken by the future (a slot freed, a guest's sleep ended), or timed out.
        std::thread::park_timeout(left);
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

/// Undoes gzip (`plugin.wasm.gz`), refusing anything larger than `max` bytes
/// after decompression (without inflating more than that).
fn decompress(bytes: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let too_large = || {
        format!(
            "the component is larger than the {} KiB limit (after gzip decompression)",
            max >> 10
        )
    };
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        if bytes.len() > max {
            return Err(too_large());
        }
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("invalid gzip: {e}"))?;
    if out.len() > max {
        return Err(too_large());
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
