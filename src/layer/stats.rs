//! How a policy's store has been doing: counters, and an outage logged once
//! when it starts and once when it ends, not once per request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::{Error, FailMode};

/// Counters of one layer, shared by all its clones.
///
/// ```
/// # use axum_redis_ratelimit::{Key, MemoryStore, Policy, Rate, RateLimitLayer};
/// let layer = RateLimitLayer::new(
///     Policy::new("p").rate(Rate::per_second(5)).key(Key::global()),
///     MemoryStore::new(),
/// ).unwrap();
/// assert_eq!(layer.stats().store_errors(), 0);
/// ```
#[derive(Debug)]
pub struct Stats {
    store_errors: AtomicU64,
    short_circuited: AtomicU64,
    failed_open: AtomicU64,
    failed_closed: AtomicU64,
    fell_back: AtomicU64,
    served_from_block_cache: AtomicU64,
    degraded: AtomicBool,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            store_errors: AtomicU64::new(0),
            short_circuited: AtomicU64::new(0),
            failed_open: AtomicU64::new(0),
            failed_closed: AtomicU64::new(0),
            fell_back: AtomicU64::new(0),
            served_from_block_cache: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
        }
    }

    /// Store calls that failed or timed out.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Relaxed)
    }

    /// Requests that did not call the store because the breaker was open.
    pub fn short_circuited(&self) -> u64 {
        self.short_circuited.load(Relaxed)
    }

    /// Requests forwarded unlimited because the store was unavailable.
    pub fn failed_open(&self) -> u64 {
        self.failed_open.load(Relaxed)
    }

    /// Requests answered 503 because the store was unavailable.
    pub fn failed_closed(&self) -> u64 {
        self.failed_closed.load(Relaxed)
    }

    /// Requests decided by the in-process fallback limiter.
    pub fn fell_back(&self) -> u64 {
        self.fell_back.load(Relaxed)
    }

    /// Requests answered `429` from the block cache, without the store.
    pub fn served_from_block_cache(&self) -> u64 {
        self.served_from_block_cache.load(Relaxed)
    }

    /// Whether the store is failing (the last call failed, or the breaker
    /// is open).
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Relaxed)
    }

    pub(crate) fn record_short_circuit(&self) {
        self.short_circuited.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_block_cache_hit(&self) {
        self.served_from_block_cache.fetch_add(1, Relaxed);
    }

    /// Counts a request the fail mode decided, for whatever reason.
    pub(crate) fn record_fail_mode(&self, mode: FailMode) {
        let counter = match mode {
            FailMode::Open => &self.failed_open,
            FailMode::Closed => &self.failed_closed,
            FailMode::Fallback => &self.fell_back,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_error(&self, policy: &str, error: &Error, mode: FailMode) {
        self.store_errors.fetch_add(1, Relaxed);
        if !self.degraded.swap(true, Relaxed) {
            tracing::warn!(
                policy,
                %error,
                fail_mode = ?mode,
                "rate-limit store failing; the fail mode decides until it answers again"
            );
        }
    }

    /// Cheap on the hot path: a read of a flag that is almost always false.
    pub(crate) fn record_success(&self, policy: &str) {
        if self.degraded.load(Relaxed) && self.degraded.swap(false, Relaxed) {
            tracing::info!(policy, "rate-limit store answers again; limiting resumed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let stats = Stats::new();
            let error = Error::Timeout(Duration::from_millis(100));
            for _ in 0..5 {
                stats.record_error("p", &error, FailMode::Open);
            }
            for _ in 0..5 {
                stats.record_success("p");
            }
        });
        let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.matches("store failing").count(), 1, "{log}");
        assert_eq!(log.matches("limiting resumed").count(), 1, "{log}");
    }

    #[test]
    fn an_outage_is_counted_and_ends_with_the_first_answer() {
        let stats = Stats::new();
        let error = Error::Timeout(Duration::from_millis(100));
        for _ in 0..3 {
            stats.record_error("p", &error, FailMode::Open);
            stats.record_fail_mode(FailMode::Open);
        }
        stats.record_short_circuit();
        assert!(stats.is_degraded());
        assert_eq!((stats.store_errors(), stats.failed_open()), (3, 3));
        assert_eq!(stats.short_circuited(), 1);
        stats.record_success("p");
        assert!(!stats.is_degraded());
    }
}
