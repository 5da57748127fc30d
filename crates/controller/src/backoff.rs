//! Per-object exponential backoff for writes the API server refuses (403,
//! 422, a webhook's or a quota's denial): each object waits on its own, so one
//! failing child slows neither its set's other children nor other sets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const FIRST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Backoff {
    objects: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    failures: u32,
    until: Instant,
    message: String,
}

impl Backoff {
    /// How much longer `key` must wait before it is written again, if at all.
    pub fn waiting(&self, key: &str) -> Option<Duration> {
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let left = objects
            .get(key)?
            .until
            .checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// The last failure of `key`.
    pub fn last(&self, key: &str) -> String {
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        objects
            .get(key)
            .map(|e| e.message.clone())
            .unwrap_or_default()
    }

    /// Records a failure; returns how long `key` now waits: 1 s doubling to
    /// 5 min, less up to half of it at random, so that objects failing
    /// together do not retry together.
    pub fn failed(&self, key: &str, message: &str) -> Duration {
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let entry = objects.entry(key.to_string()).or_insert(Entry {
            failures: 0,
            until: Instant::now(),
            message: String::new(),
        });
        entry.failures = entry.failures.saturating_add(1);
        let wait = delay(entry.failures, jitter(key, entry.failures));
        entry.until = Instant::now() + wait;
        entry.message = message.to_string();
        wait
    }

    pub fn succeeded(&self, key: &str) {
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// The wait after `failures` failures, `jitter` in `0.0..1.0` taking off up to half.
fn delay(failures: u32, jitter: f64) -> Duration {
    let full = FIRST
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(LONGEST);
    full.mul_f64(1.0 - jitter / 2.0)
}

/// A fraction in `0.0..1.0` that differs per object, attempt and moment.
fn jitter(key: &str, attempt: u32) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(key.as_bytes());
    h.write_u32(attempt);
    (h.finish() % 10_000) as f64 / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_five_minutes_with_up_to_half_taken_off() {
        assert_eq!(delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(delay(5, 0.0), Duration::from_secs(16));
        assert_eq!(delay(30, 0.0), LONGEST);
        assert_eq!(delay(u32::MAX, 0.0), LONGEST);
        assert_eq!(delay(3, 1.0), Duration::from_secs(2));
        assert!((0..100).all(|i| (0.0..1.0).contains(&jitter("ns/x", i))));
    }

    #[test]
    fn each_object_backs_off_on_its_own_until_it_succeeds() {
        let b = Backoff::default();
        assert_eq!(b.waiting("a"), None);
        let first = b.failed("a", "forbidden");
        assert!(first <= FIRST && first >= FIRST / 2, "{first:?}");
        assert!(b.waiting("a").is_some());
        assert_eq!(b.waiting("b"), None);
        assert_eq!(b.last("a"), "forbidden");
        let second = b.failed("a", "forbidden");
        assert!(second >= FIRST, "{second:?}");
        b.succeeded("a");
        assert_eq!(b.waiting("a"), None);
    }
}
