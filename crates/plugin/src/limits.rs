//! What one plugin call may use, and how many may run at once.

use std::time::Duration;

/// Per-call limits, and how many calls may run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A call's own time: its thread's CPU time plus its waits in host
    /// calls. Ten of it is the wall-clock bound (`budget`).
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
    /// How much CPU time compiling one component may take before it is
    /// refused (the compiling thread's; wall-clock time where the kernel does
    /// not report it).
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
