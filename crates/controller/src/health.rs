//! Liveness: `/healthz` fails when the operator is wedged — a reconcile
//! running far longer than any bounded step can take (API calls and plugin
//! calls all have deadlines), a plugin load that never ends, or the plugin
//! watcher gone — so the kubelet restarts it instead of leaving sets stalled.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longer than any reconcile takes when each of its requests and plugin calls
/// returns within its own deadline.
pub const WEDGED_AFTER: Duration = Duration::from_secs(120);

#[derive(Default)]
pub struct Health {
    running: Mutex<HashMap<u64, (String, Instant)>>,
    next: AtomicU64,
    watcher_stopped: AtomicBool,
}

/// One reconcile in progress, for as long as it lives.
pub struct Running<'a> {
    health: &'a Health,
    id: u64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.health
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Health {
    pub fn reconciling(&self, what: String) -> Running<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (what, Instant::now()));
        Running { health: self, id }
    }

    /// The plugin watcher's task ended (it never should).
    pub fn watcher_stopped(&self) {
        self.watcher_stopped.store(true, Ordering::SeqCst);
    }

    /// Why the operator is wedged, if it is; `loading_for` is the age of the
    /// oldest unfinished plugin load.
    pub fn wedged(&self, loading_for: Option<Duration>) -> Option<String> {
        if self.watcher_stopped.load(Ordering::SeqCst) {
            return Some("the plugin watcher stopped".into());
        }
        if let Some(age) = loading_for.filter(|a| *a > WEDGED_AFTER) {
            return Some(format!("a plugin load has run for {} s", age.as_secs()));
        }
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .values()
            .find(|(_, since)| since.elapsed() > WEDGED_AFTER)
            .map(|(what, since)| {
                format!(
                    "reconciling {what} has run for {} s",
                    since.elapsed().as_secs()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wedged_when_a_reconcile_or_load_runs_too_long_or_the_watcher_stops() {
        let h = Health::default();
        assert_eq!(h.wedged(None), None);
        {
            let _r = h.reconciling("default/a".into());
            assert_eq!(h.wedged(Some(Duration::from_secs(1))), None);
            h.running
                .lock()
                .unwrap()
                .values_mut()
                .for_each(|(_, t)| *t = Instant::now() - WEDGED_AFTER - Duration::from_secs(1));
            assert!(h.wedged(None).unwrap().contains("default/a"));
        }
        assert_eq!(h.wedged(None), None, "a finished reconcile is forgotten");
        assert!(
            h.wedged(Some(WEDGED_AFTER * 2))
                .unwrap()
                .contains("plugin load")
        );
        h.watcher_stopped();
        assert!(h.wedged(None).unwrap().contains("watcher"));
    }
}
