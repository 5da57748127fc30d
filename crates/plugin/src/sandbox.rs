//! One sandboxed call: a fresh store and instance with WASI reduced to
//! captured stdout/stderr, the memory limiter, the call's time budget
//! (checked by the epoch while the guest runs, by the poll loop while it
//! waits), and the mapping of whatever went wrong to a [`PluginError`].
//! `docs/sandbox.md` says what a plugin can and cannot do.

use crate::budget::{Budget, Standing};
use crate::contract::{Request, Response, invoke};
use crate::runtime::{LoadedPlugin, Runtime};
use disagg_core::plugins::PluginError;
use disagg_core::text::truncate;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// How often the epoch advances: how often a running guest's budget is checked.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Epoch ticks until a running guest's budget is next checked: a tick of
/// wall-clock time is at most a tick of own time.
fn ticks(left: Duration) -> u64 {
    (left.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64).max(1)
}

/// Per-call store state.
pub(crate) struct State {
    pub(crate) plugin: String,
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
#[derive(Default)]
pub(crate) struct Busy {
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
    /// Runs one hook on a fresh instance within the limits, on the calling
    /// thread (blocking: call it off the async executor). It returns once
    /// the call's own time reaches the deadline (plus a tick) whatever the
    /// guest does — Wasm code is interrupted by the epoch, a host call it
    /// waits in is abandoned — and, on a thread starved of CPU, after ten
    /// deadlines at most (`budget`).
    pub(crate) fn call(
        &self,
        plugin: &LoadedPlugin,
        request: &Request,
    ) -> Result<Response, PluginError> {
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
            Err(_) => {
                let until = Instant::now() + limits.slot_wait;
                match poll_until(self.slots.acquire(), |_| {
                    until.checked_duration_since(Instant::now())
                }) {
                    Some(Ok(slot)) => slot,
                    _ => return Err(busy()),
                }
            }
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
        let budget = Arc::new(Budget::start(limits.deadline));
        // While the guest runs, the epoch checks its budget: the first
        // check comes at the deadline, as own time cannot outrun wall time.
        store.set_epoch_deadline(ticks(limits.deadline));
        let running = budget.clone();
        store.epoch_deadline_callback(move |_| {
            Ok(match running.standing() {
                Standing::Within(left) => wasmtime::UpdateDeadline::Continue(ticks(left)),
                Standing::Exhausted | Standing::Starved => wasmtime::UpdateDeadline::Interrupt,
            })
        });

        // While it waits in a host call the epoch cannot interrupt (poll,
        // sleep, a read), the wait counts as its own time; out of budget,
        // the call is dropped here, instance and all.
        let run = async { invoke(&plugin.pre, &mut store, request).await };
        let outcome = poll_until(run, |waited| {
            budget.waited(waited);
            match budget.standing() {
                Standing::Within(left) => Some(left),
                Standing::Exhausted | Standing::Starved => None,
            }
        });
        self.last_memory.store(
            store.data().limiter.used,
            std::sync::atomic::Ordering::Relaxed,
        );
        forward_output(&plugin.name, "stdout", &stdout.contents());
        forward_output(&plugin.name, "stderr", &stderr.contents());
        let timeout = || budget.error(name());
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
}

/// Polls `future` on this thread until it is ready, parking between polls
/// for as long as `left` allows: it is told how long the last park lasted
/// (zero before the first) and answers how long the next may, or `None` to
/// give up, which drops the future (for a plugin call: the instance and all).
fn poll_until<F: std::future::Future>(
    future: F,
    mut left: impl FnMut(Duration) -> Option<Duration>,
) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let mut parked = Duration::ZERO;
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
        let until = left(parked).filter(|d| !d.is_zero())?;
        // Woken by the future (a slot freed, a guest's sleep ended), or timed out.
        let since = Instant::now();
        std::thread::park_timeout(until);
        parked = since.elapsed();
    }
}

/// Advances the engine's epoch while calls are in flight, until the runtime
/// is dropped. With no call in flight it waits (checking once a second
/// whether the runtime is gone), so it costs nothing when idle; deadlines
/// count ticks from their call's start, which always finds the ticker running.
pub(crate) fn spawn_ticker(runtime: Weak<Runtime>, busy: Arc<Busy>) {
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

/// The error chain on one line (wasmtime's messages span several).
pub(crate) fn root_cause(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    truncate(&text.split_whitespace().collect::<Vec<_>>().join(" "), 2048)
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
