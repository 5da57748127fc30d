//! Typed plugin errors. Each names the plugin and what went wrong in words an
//! operator can act on; `reason()` is the short form used for Event reasons.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginError {
    /// The call's own time (CPU time and waits in host calls) reached its deadline.
    Timeout { plugin: String, limit_ms: u64 },
    /// The call was cut off at its wall-clock bound (ten deadlines) with
    /// its own time still under the deadline: the operator's thread was kept
    /// off the CPU, which is not the plugin's failure. Retried like `Busy`.
    Starved {
        plugin: String,
        limit_ms: u64,
        used_ms: u64,
        wall_ms: u64,
    },
    /// The plugin asked for more linear memory than allowed.
    OutOfMemory { plugin: String, limit_bytes: u64 },
    /// The plugin trapped (a Rust panic, `unreachable`, a bad memory access, …).
    Trap { plugin: String, message: String },
    /// The plugin returned or printed more than the output cap.
    OutputTooLarge { plugin: String, limit_bytes: u64 },
    /// The plugin returned something the host cannot use (invalid JSON, a patch that does not apply, …).
    BadOutput { plugin: String, message: String },
    /// The plugin returned an error of its own (`err(message)`).
    Failed { plugin: String, message: String },
    /// The plugin was built for a contract version this host does not serve.
    IncompatibleVersion {
        plugin: String,
        found: String,
        supported: Vec<String>,
    },
    /// The bytes are not a usable component (not Wasm, wrong world, unknown imports, …).
    InvalidComponent { plugin: String, message: String },
    /// The hook was called but the plugin does not implement it.
    NotImplemented { plugin: String, hook: super::Hook },
    /// Every call slot stayed taken: the call never started. Retried; never
    /// a reason to go on without the plugin, whatever its failure policy.
    Busy {
        plugin: String,
        waited_ms: u64,
        slots: usize,
    },
    /// The plugin's component is still being compiled. Retried like `Busy`.
    Loading { plugin: String },
}

impl PluginError {
    /// A CamelCase reason for Events and conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            PluginError::Timeout { .. } => "PluginTimeout",
            PluginError::Starved { .. } => "PluginStarved",
            PluginError::OutOfMemory { .. } => "PluginOutOfMemory",
            PluginError::Trap { .. } => "PluginTrapped",
            PluginError::OutputTooLarge { .. } => "PluginOutputTooLarge",
            PluginError::BadOutput { .. } => "PluginBadOutput",
            PluginError::Failed { .. } => "PluginFailed",
            PluginError::IncompatibleVersion { .. } => "PluginIncompatible",
            PluginError::InvalidComponent { .. } => "PluginInvalid",
            PluginError::NotImplemented { .. } => "PluginHookMissing",
            PluginError::Busy { .. } => "PluginBusy",
            PluginError::Loading { .. } => "PluginLoading",
        }
    }

    /// Whether the call did not happen, or did not finish, for a transient
    /// reason of the operator's own (no free slot, still compiling, starved
    /// of CPU): such a failure is retried, and holds back what the plugin
    /// would have decided under either failure policy.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            PluginError::Busy { .. } | PluginError::Loading { .. } | PluginError::Starved { .. }
        )
    }

    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Timeout { plugin, .. }
            | PluginError::Starved { plugin, .. }
            | PluginError::OutOfMemory { plugin, .. }
            | PluginError::Trap { plugin, .. }
            | PluginError::OutputTooLarge { plugin, .. }
            | PluginError::BadOutput { plugin, .. }
            | PluginError::Failed { plugin, .. }
            | PluginError::IncompatibleVersion { plugin, .. }
            | PluginError::InvalidComponent { plugin, .. }
            | PluginError::NotImplemented { plugin, .. }
            | PluginError::Busy { plugin, .. }
            | PluginError::Loading { plugin } => plugin,
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::Timeout { plugin, limit_ms } => {
                write!(
                    f,
                    "plugin {plugin}: timed out: it ran or waited for {limit_ms} ms (the per-call deadline)"
                )
            }
            PluginError::Starved {
                plugin,
                limit_ms,
                used_ms,
                wall_ms,
            } => write!(
                f,
                "plugin {plugin}: cut off after {wall_ms} ms having had only {used_ms} ms of its \
                 {limit_ms} ms deadline: the operator is short of CPU (a busy node, or a CPU \
                 limit throttling it); retrying"
            ),
            PluginError::OutOfMemory {
                plugin,
                limit_bytes,
            } => write!(
                f,
                "plugin {plugin}: out of memory: it asked for more than the {} MiB limit",
                limit_bytes >> 20
            ),
            PluginError::Trap { plugin, message } => {
                write!(f, "plugin {plugin}: trapped: {message}")
            }
            PluginError::OutputTooLarge {
                plugin,
                limit_bytes,
            } => write!(
                f,
                "plugin {plugin}: output over the {} KiB limit",
                limit_bytes >> 10
            ),
            PluginError::BadOutput { plugin, message } => {
                write!(f, "plugin {plugin}: bad output: {message}")
            }
            PluginError::Failed { plugin, message } => write!(f, "plugin {plugin}: {message}"),
            PluginError::IncompatibleVersion {
                plugin,
                found,
                supported,
            } => write!(
                f,
                "plugin {plugin}: built for contract {found}, which this operator does not serve; supported: {}",
                supported.join(", ")
            ),
            PluginError::InvalidComponent { plugin, message } => {
                write!(f, "plugin {plugin}: not a usable component: {message}")
            }
            PluginError::NotImplemented { plugin, hook } => {
                write!(
                    f,
                    "plugin {plugin}: does not implement {hook} (see its describe)"
                )
            }
            PluginError::Busy {
                plugin,
                waited_ms,
                slots,
            } => write!(
                f,
                "plugin {plugin}: not called: all {slots} plugin call slots stayed busy for {waited_ms} ms; retrying"
            ),
            PluginError::Loading { plugin } => {
                write!(f, "plugin {plugin}: still being compiled; retrying")
            }
        }
    }
}

impl std::error::Error for PluginError {}
