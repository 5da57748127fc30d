//! The engine and its components: one wasmtime `Engine` (epoch
//! interruption, the pooling allocator), a linker that provides only the
//! contract's `host` interface and sandboxed WASI, and loading — decompress,
//! compile with a deadline, check the contract version, `describe`.

use crate::budget;
use crate::contract::{self, Request, Response};
use crate::limits::Limits;
use crate::sandbox::{Busy, State, root_cause, spawn_ticker};
use disagg_core::plugins::{Hook, PluginError, PluginInfo};
use disagg_core::text::truncate;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

impl Drop for LoadedPlugin {
    fn drop(&mut self) {
        self.runtime
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A compiled, checked, pre-linked component, ready to be called through
/// [`disagg_core::plugins::Plugin`].
pub struct LoadedPlugin {
    /// The name it is known by (its ConfigMap's name, or the CLI's NAME=).
    pub name: String,
    /// `sha256:<hex>` of the (decompressed) component.
    pub digest: String,
    pub info: PluginInfo,
    pub size_bytes: usize,
    pub compile_time: Duration,
    pub(crate) pre: contract::Pre,
    /// Every call runs on this runtime's engine, within its limits.
    pub(crate) runtime: Arc<Runtime>,
}

impl LoadedPlugin {
    /// The contract version the component was built for (`0.2.0`, `0.1.0`).
    pub fn contract(&self) -> &'static str {
        self.pre.version()
    }

    /// The world it targets: `disaggregatedset:plugin/plugin@<contract>`.
    pub fn world(&self) -> String {
        format!("disaggregatedset:plugin/plugin@{}", self.contract())
    }
}

/// The plugin runtime: one engine, a linker that provides only `host` and
/// sandboxed WASI. It keeps no components: whoever loads one owns it (the
/// controller's registry, by plugin name), and it is freed when the last
/// holder — the registry, a decide in flight — lets go.
pub struct Runtime {
    pub(crate) engine: Engine,
    linker: Linker<State>,
    pub(crate) limits: Limits,
    /// Loaded components still held by someone.
    live: std::sync::atomic::AtomicUsize,
    /// Linear memory the last finished call held (for `disagg plugin run`).
    pub(crate) last_memory: std::sync::atomic::AtomicUsize,
    /// The one bound on calls running at once (see [`Limits::concurrent_calls`]).
    pub(crate) slots: tokio::sync::Semaphore,
    /// Drives calls: its timer abandons a call at its deadline even while the
    /// guest waits in a host function. Calls run on their caller's thread.
    pub(crate) executor: Option<tokio::runtime::Runtime>,
    /// Told about every hook call, for metrics.
    observer: std::sync::OnceLock<Observer>,
    /// Calls in flight; the epoch ticker sleeps while there are none, so an
    /// idle operator burns no CPU.
    pub(crate) busy: Arc<Busy>,
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

/// How often a compile's CPU time is checked against its deadline.
const COMPILE_CHECK: Duration = Duration::from_millis(50);

impl Runtime {
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
        contract::add_to_linker(&mut linker).map_err(|e| e.to_string())?;
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
            live: Default::default(),
            last_memory: Default::default(),
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

    /// Compiles and checks a component: it must be
    /// a component exporting `hooks` at a version we serve, import nothing we
    /// do not provide, and answer `describe` within limits. CPU-heavy on first
    /// load, and blocking: call it off the async executor.
    pub fn load(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let invalid = |message: String| PluginError::InvalidComponent {
            plugin: name.to_string(),
            message,
        };
        let bytes = decompress(bytes, self.limits.component_bytes).map_err(invalid)?;
        let digest = sha256(&bytes);
        let started = Instant::now();
        let component = self.compile(name, bytes.clone())?;
        let compile_time = started.elapsed();
        let version = contract::check_version(&self.engine, name, &component)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            invalid(format!(
                "imports something this host does not provide: {}",
                root_cause(&e)
            ))
        })?;
        let pre = contract::pre(version, instance_pre).map_err(|e| {
            invalid(format!(
                "does not match the plugin world: {}",
                root_cause(&e)
            ))
        })?;
        self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut loaded = LoadedPlugin {
            name: name.to_string(),
            digest,
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                hooks: Vec::new(),
            },
            size_bytes: bytes.len(),
            compile_time,
            pre,
            runtime: self.clone(),
        };
        let Response::Describe(info) = self.call(&loaded, &Request::Describe)? else {
            unreachable!("describe answers with describe")
        };
        loaded.info = PluginInfo {
            name: truncate(&info.name, 256),
            version: truncate(&info.version, 256),
            hooks: info.hooks,
        };
        Ok(Arc::new(loaded))
    }

    /// Compiles on a thread of its own, giving up once that thread has used
    /// the compile deadline of CPU time (wall-clock time where the kernel
    /// does not report a thread's: a busy node slows a compile, it does not
    /// get a good component refused). Cranelift cannot be interrupted: a
    /// compile that overruns finishes on its thread (its time bounded by the
    /// size limit) and is thrown away.
    fn compile(&self, name: &str, bytes: Vec<u8>) -> Result<Component, PluginError> {
        use std::sync::mpsc::RecvTimeoutError;
        let invalid = |message: String| PluginError::InvalidComponent {
            plugin: name.to_string(),
            message,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let engine = self.engine.clone();
        std::thread::Builder::new()
            .name(format!("compile-{name}"))
            .spawn(move || {
                let _ = tid_tx.send(budget::thread_id());
                let _ = tx.send(Component::new(&engine, &bytes));
            })
            .map_err(|e| invalid(format!("cannot start a compile thread: {e}")))?;
        let (deadline, started) = (self.limits.compile_deadline, Instant::now());
        // The compile thread's clock, if the kernel shows it (checked while it runs).
        let tid = tid_rx
            .recv()
            .ok()
            .filter(|&tid| budget::cpu_of_thread(tid).is_some());
        loop {
            match rx.recv_timeout(COMPILE_CHECK.min(deadline)) {
                Ok(compiled) => return compiled.map_err(|e| invalid(root_cause(&e))),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(invalid("the compile thread ended without a result".into()));
                }
                Err(RecvTimeoutError::Timeout) => {
                    let used = match tid {
                        Some(tid) => match budget::cpu_of_thread(tid) {
                            Some(used) => used,
                            // It has just ended: its result is already sent.
                            None => continue,
                        },
                        None => started.elapsed(),
                    };
                    if used >= deadline {
                        return Err(invalid(format!(
                            "compiling it took longer than {} ms of CPU time; it is refused",
                            deadline.as_millis()
                        )));
                    }
                }
            }
        }
    }

    /// Loaded components still held by someone: what this runtime's engine
    /// keeps compiled code for.
    pub fn compiled_count(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Bytes of linear memory the last call to finish held at its end, over
    /// all of its component's memories (on any thread: meant for one caller,
    /// such as `disagg plugin run`).
    pub fn last_call_memory(&self) -> usize {
        self.last_memory.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the observer of hook calls (once; later calls are ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    /// Tells the observer about one hook call.
    pub(crate) fn observed(
        &self,
        plugin: &str,
        hook: Hook,
        took: Duration,
        error: Option<&PluginError>,
    ) {
        if let Some(observe) = self.observer.get() {
            observe(plugin, hook, took, error);
        }
    }
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
