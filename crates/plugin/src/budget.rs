//! What one call may spend. The deadline bounds the call's **own time**: the
//! CPU time of the thread that runs it plus the time the guest waits in a
//! host call (a sleep, a poll, a read). Time the node keeps the thread off
//! the CPU — a busy node, a CPU limit's throttling — is not the plugin's, so
//! it does not count: a plugin that needs 4 ms is not timed out because its
//! call took 150 ms of wall-clock time on a starved node. However starved,
//! a call ends after [`WALL_FACTOR`] deadlines of wall-clock time; that is
//! reported apart (`PluginStarved`) and retried, since the plugin did not fail.

use disagg_core::plugins::PluginError;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How many deadlines of wall-clock time a call may take at most, whatever
/// its own time: the bound on how long a caller waits.
pub(crate) const WALL_FACTOR: u32 = 10;

/// One call's clocks. Read on the thread that runs the call (its CPU clock
/// is that thread's): from the epoch callback while the guest runs, from the
/// poll loop while it waits.
pub(crate) struct Budget {
    limit: Duration,
    started: Instant,
    cpu_at_start: Duration,
    /// Nanoseconds the guest has waited in host calls so far.
    waited_ns: AtomicU64,
}

/// Where a call stands against its budget.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// It may go on for at most this long (own time or wall-clock time, whichever runs out first).
    Within(Duration),
    /// Its own time reached the deadline: the plugin's doing.
    Exhausted,
    /// Wall-clock time ran out with its own time still under the deadline.
    Starved,
}

impl Budget {
    /// Starts the clocks; call it on the thread that will run the call.
    pub(crate) fn start(limit: Duration) -> Budget {
        Budget {
            limit,
            started: Instant::now(),
            cpu_at_start: thread_cpu(),
            waited_ns: AtomicU64::new(0),
        }
    }

    /// Counts time the guest spent waiting in a host call.
    pub(crate) fn waited(&self, d: Duration) {
        self.waited_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    fn own(&self) -> Duration {
        thread_cpu().saturating_sub(self.cpu_at_start)
            + Duration::from_nanos(self.waited_ns.load(Relaxed))
    }

    pub(crate) fn standing(&self) -> Standing {
        judge(self.limit, self.own(), self.started.elapsed())
    }

    /// The error for a call cut off by this budget.
    pub(crate) fn error(&self, plugin: String) -> PluginError {
        let own = self.own();
        let limit_ms = self.limit.as_millis() as u64;
        if own >= self.limit {
            PluginError::Timeout { plugin, limit_ms }
        } else {
            PluginError::Starved {
                plugin,
                limit_ms,
                used_ms: own.as_millis() as u64,
                wall_ms: self.started.elapsed().as_millis() as u64,
            }
        }
    }
}

/// The rule, on plain values: own time first (a plugin that used its
/// deadline timed out, however long the call took), then wall-clock time.
fn judge(limit: Duration, own: Duration, elapsed: Duration) -> Standing {
    let wall = limit * WALL_FACTOR;
    if own >= limit {
        Standing::Exhausted
    } else if elapsed >= wall {
        Standing::Starved
    } else {
        Standing::Within((limit - own).min(wall - elapsed))
    }
}

/// This thread's CPU time (user and system).
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// This thread's id, for [`cpu_of_thread`] on another thread.
pub(crate) fn thread_id() -> i32 {
    rustix::thread::gettid().as_raw_pid()
}

/// The CPU time another thread of this process has used, from
/// `/proc/self/task/TID/schedstat` (nanoseconds on CPU), or `None` where the
/// kernel does not say. What a compile's deadline counts: Cranelift cannot
/// be interrupted, so the compile runs on a thread of its own and whoever
/// waits for it reads its clock.
pub(crate) fn cpu_of_thread(tid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn own_time_under_the_deadline_goes_on_for_what_is_left_of_either_clock() {
        assert_eq!(judge(100 * MS, 30 * MS, 40 * MS), Standing::Within(70 * MS));
        // Starved for most of its wall-clock time: that is what is left.
        assert_eq!(
            judge(100 * MS, 30 * MS, 950 * MS),
            Standing::Within(50 * MS)
        );
    }

    #[test]
    fn own_time_at_the_deadline_is_the_plugins_timeout_however_long_the_call_took() {
        assert_eq!(judge(100 * MS, 100 * MS, 100 * MS), Standing::Exhausted);
        assert_eq!(judge(100 * MS, 120 * MS, 5000 * MS), Standing::Exhausted);
    }

    #[test]
    fn wall_clock_time_past_ten_deadlines_with_own_time_left_is_starvation() {
        assert_eq!(judge(100 * MS, 40 * MS, 1000 * MS), Standing::Starved);
        assert_eq!(judge(20 * MS, 1 * MS, 200 * MS), Standing::Starved);
    }

    #[test]
    fn waiting_counts_as_own_time_and_cpu_is_this_threads() {
        let b = Budget::start(100 * MS);
        b.waited(60 * MS);
        assert!(b.own() >= 60 * MS);
        // Another thread's work is not this call's.
        std::thread::spawn(|| {
            let started = Instant::now();
            while started.elapsed() < 30 * MS {
                std::hint::black_box(0u64);
            }
        })
        .join()
        .unwrap();
        assert!(b.own() < 80 * MS, "{:?}", b.own());
        b.waited(50 * MS);
        assert_eq!(b.standing(), Standing::Exhausted);
        assert!(matches!(
            b.error("p".into()),
            PluginError::Timeout { limit_ms: 100, .. }
        ));
    }

    #[test]
    fn another_threads_cpu_time_counts_its_work_not_its_sleep() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            tx.send(thread_id()).unwrap();
            wait.recv().unwrap();
            // 40 ms of CPU, however long that takes on a loaded machine.
            let cpu = thread_cpu();
            while thread_cpu() - cpu < 40 * MS {
                std::hint::black_box(0u64);
            }
            tx.send(0).unwrap();
            wait.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        let before = cpu_of_thread(tid).expect("this kernel reports schedstat");
        std::thread::sleep(30 * MS);
        let idle = cpu_of_thread(tid).unwrap() - before;
        assert!(idle < 5 * MS, "{idle:?} while it slept");
        go.send(()).unwrap();
        rx.recv().unwrap();
        let busy = cpu_of_thread(tid).unwrap() - before;
        assert!(busy >= 35 * MS, "{busy:?} after 40 ms of work");
        go.send(()).unwrap();
        worker.join().unwrap();
        assert_eq!(cpu_of_thread(tid), None, "a finished thread has no clock");
    }

    #[test]
    fn time_off_the_cpu_is_not_own_time_and_past_the_wall_bound_is_starvation() {
        let b = Budget::start(2 * MS);
        // This thread is off the CPU, and the guest not waiting in a host call.
        std::thread::sleep(25 * MS);
        assert_eq!(b.standing(), Standing::Starved);
        match b.error("p".into()) {
            PluginError::Starved {
                limit_ms: 2,
                used_ms: 0,
                wall_ms,
                ..
            } => assert!(wall_ms >= 20, "{wall_ms}"),
            other => panic!("{other:?}"),
        }
    }
}
