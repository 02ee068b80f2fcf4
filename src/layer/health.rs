//! How a policy's store has been doing: counters, a circuit breaker, and an
//! outage logged once when it starts and once when it ends, not once per
//! request.

use std::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::time::Instant;

use crate::{Error, FailMode, policy::Breaker};

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
    breaker: Breaker,
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// Microseconds after `epoch` until which the breaker is open, or until
    /// the next probe may go; 0: closed.
    open_until_us: AtomicU64,
}

/// What the breaker says about calling the store now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Call,
    Skip,
}

impl Stats {
    pub(crate) fn new(breaker: Breaker) -> Self {
        Self {
            store_errors: AtomicU64::new(0),
            short_circuited: AtomicU64::new(0),
            failed_open: AtomicU64::new(0),
            failed_closed: AtomicU64::new(0),
            fell_back: AtomicU64::new(0),
            served_from_block_cache: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            breaker,
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_us: AtomicU64::new(0),
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

    fn now_us(&self) -> u64 {
        // Offset by one so that 0 can mean "closed".
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    fn cooldown_us(&self) -> u64 {
        Duration::from_millis(self.breaker.cooldown_ms).as_micros() as u64
    }

    /// Called before each store call. While the breaker is open, one
    /// request per cooldown goes through as a probe; the rest are skipped.
    /// A probe moves the next one a cooldown on, so a probe that never
    /// reports back (its request cancelled) cannot keep the breaker open.
    pub(crate) fn admit(&self) -> Admit {
        let open_until = self.open_until_us.load(Relaxed);
        if open_until == 0 {
            return Admit::Call;
        }
        let now = self.now_us();
        let next = now + self.cooldown_us();
        if now >= open_until
            && self
                .open_until_us
                .compare_exchange(open_until, next, Relaxed, Relaxed)
                .is_ok()
        {
            return Admit::Call;
        }
        self.short_circuited.fetch_add(1, Relaxed);
        Admit::Skip
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
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures >= self.breaker.failures || self.open_until_us.load(Relaxed) != 0 {
            self.open_until_us
                .store(self.now_us() + self.cooldown_us(), Relaxed);
        }
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
            self.consecutive_failures.store(0, Relaxed);
            self.open_until_us.store(0, Relaxed);
            tracing::info!(policy, "rate-limit store answers again; limiting resumed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(stats: &Stats) {
        let error = Error::Timeout(Duration::from_millis(100));
        stats.record_error("p", &error, FailMode::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_probes_once_per_cooldown_and_closes() {
        let stats = Stats::new(Breaker::default());
        for _ in 0..3 {
            assert_eq!(stats.admit(), Admit::Call);
            failing(&stats);
        }
        assert_eq!(stats.admit(), Admit::Skip);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(stats.admit(), Admit::Call, "the probe");
        assert_eq!(stats.admit(), Admit::Skip, "one probe at a time");
        // The probe never reports (its request was cancelled): another goes
        // a cooldown later.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(stats.admit(), Admit::Call);
        stats.record_success("p");
        assert_eq!(stats.admit(), Admit::Call);
        assert!(!stats.is_degraded());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_the_breaker() {
        let stats = Stats::new(Breaker {
            failures: 1,
            cooldown_ms: 100,
        });
        failing(&stats);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(stats.admit(), Admit::Call);
        failing(&stats);
        assert_eq!(stats.admit(), Admit::Skip);
        assert_eq!(stats.short_circuited(), 1);
    }
}
