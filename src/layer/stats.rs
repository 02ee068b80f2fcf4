//! How a policy's store has been doing: counters, and an outage logged once
//! when it starts and once when it ends, not once per request.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use crate::{Error, FailMode, metrics::Metrics, outcome::Outcome};

/// Counters of one layer, shared by all its clones; with the `metrics`
/// feature, the same figures go to the [`metrics`](https://docs.rs/metrics)
/// recorder the application installed (the README's Operating section lists
/// them).
///
/// ```
/// # use axum_redis_ratelimit::{Key, MemoryStore, Outcome, Policy, Rate, RateLimitLayer};
/// let layer = RateLimitLayer::new(
///     Policy::new("p").rate(Rate::per_second(5)).key(Key::global()),
///     MemoryStore::new(),
/// ).unwrap();
/// assert_eq!(layer.stats().store_errors(), 0);
/// assert_eq!(layer.stats().decisions(Outcome::Allowed), 0);
/// ```
#[derive(Debug)]
pub struct Stats {
    decisions: [AtomicU64; Outcome::ALL.len()],
    store_errors: AtomicU64,
    short_circuited: AtomicU64,
    degraded: AtomicBool,
    /// When the last shadow-mode denial was logged at `info`, in Unix
    /// milliseconds.
    shadow_logged_at: AtomicU64,
    lease: LeaseCounters,
    metrics: Metrics,
}

/// Lease mode's counters.
#[derive(Debug, Default)]
struct LeaseCounters {
    local: AtomicU64,
    grants: AtomicU64,
    returns: AtomicU64,
    granted: AtomicU64,
    returned: AtomicU64,
    dropped: AtomicU64,
}

impl Stats {
    pub(crate) fn new(policy: &str) -> Self {
        Self {
            decisions: Default::default(),
            store_errors: AtomicU64::new(0),
            short_circuited: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            shadow_logged_at: AtomicU64::new(0),
            lease: LeaseCounters::default(),
            metrics: Metrics::new(policy),
        }
    }

    /// Requests that ended in `outcome`.
    pub fn decisions(&self, outcome: Outcome) -> u64 {
        self.decisions[outcome.index()].load(Relaxed)
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
        self.decisions(Outcome::FailedOpen)
    }

    /// Requests answered 503 because the store was unavailable.
    pub fn failed_closed(&self) -> u64 {
        self.decisions(Outcome::FailedClosed)
    }

    /// Requests decided by the in-process fallback limiter.
    pub fn fell_back(&self) -> u64 {
        self.decisions(Outcome::FallbackAllowed) + self.decisions(Outcome::FallbackDenied)
    }

    /// Requests answered `429` from the block cache, without the store.
    pub fn served_from_block_cache(&self) -> u64 {
        self.decisions(Outcome::DeniedCached)
    }

    /// Whether the store is failing (the last call failed, or the breaker
    /// is open).
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Relaxed)
    }

    /// Lease mode: requests admitted from a slice this process held,
    /// without the store (counted as [`Outcome::Allowed`] too).
    pub fn lease_local(&self) -> u64 {
        self.lease.local.load(Relaxed)
    }

    /// Lease mode: store calls asking for a slice.
    pub fn lease_grants(&self) -> u64 {
        self.lease.grants.load(Relaxed)
    }

    /// Lease mode: store calls giving unspent units back (idle, evicted,
    /// released); a grant that hands leftovers in is not one of them.
    pub fn lease_returns(&self) -> u64 {
        self.lease.returns.load(Relaxed)
    }

    /// Lease mode: units the store granted.
    pub fn lease_units_granted(&self) -> u64 {
        self.lease.granted.load(Relaxed)
    }

    /// Lease mode: unspent units given back and credited to their window.
    pub fn lease_units_returned(&self) -> u64 {
        self.lease.returned.load(Relaxed)
    }

    /// Lease mode: unspent units lost: their window ended first, their
    /// give-back arrived after it, or failed.
    pub fn lease_units_dropped(&self) -> u64 {
        self.lease.dropped.load(Relaxed)
    }

    pub(crate) fn record_lease_local(&self) {
        self.lease.local.fetch_add(1, Relaxed);
        self.metrics.lease_local();
    }

    /// A lease call: a give-back (`true`) or a grant.
    pub(crate) fn record_lease_call(&self, give_back: bool) {
        let counter = match give_back {
            true => &self.lease.returns,
            false => &self.lease.grants,
        };
        counter.fetch_add(1, Relaxed);
        self.metrics.lease_call(give_back);
    }

    pub(crate) fn record_lease_units(&self, granted: u64, returned: u64, dropped: u64) {
        self.lease.granted.fetch_add(granted, Relaxed);
        self.lease.returned.fetch_add(returned, Relaxed);
        self.lease.dropped.fetch_add(dropped, Relaxed);
        self.metrics.lease_units(granted, returned, dropped);
    }

    /// Counts a request's outcome.
    pub(crate) fn record(&self, outcome: Outcome) {
        self.decisions[outcome.index()].fetch_add(1, Relaxed);
        self.metrics.decision(outcome);
    }

    /// Whether a shadow-mode denial may be logged at `info` at `now_ms`
    /// (Unix milliseconds): a second or more after the last, so a flood in
    /// shadow mode cannot flood the logs.
    pub(crate) fn shadow_log_due(&self, now_ms: u64) -> bool {
        let last = self.shadow_logged_at.load(Relaxed);
        now_ms >= last.saturating_add(1000)
            && self
                .shadow_logged_at
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok()
    }

    pub(crate) fn record_short_circuit(&self) {
        self.short_circuited.fetch_add(1, Relaxed);
    }

    /// A store call that answered or failed after `latency`.
    pub(crate) fn record_store_latency(&self, latency: Duration) {
        self.metrics.store_latency(latency);
    }

    /// The circuit breaker opened (`true`) or closed.
    pub(crate) fn record_breaker(&self, open: bool) {
        self.metrics.breaker(open);
    }

    /// The block cache now holds `entries` keys.
    pub(crate) fn record_block_cache_len(&self, entries: usize) {
        self.metrics.block_cache_len(entries);
    }

    pub(crate) fn record_error(&self, policy: &str, error: &Error, mode: FailMode) {
        self.store_errors.fetch_add(1, Relaxed);
        self.metrics.store_error();
        if !self.degraded.swap(true, Relaxed) {
            tracing::warn!(
                target: crate::outcome::STORE_TARGET,
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
            tracing::info!(target: crate::outcome::STORE_TARGET, policy, "rate-limit store answers again; limiting resumed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn shadow_denials_are_logged_a_second_apart_at_most() {
        let stats = Stats::new("p");
        let t = 1_800_000_000_000;
        assert!(stats.shadow_log_due(t), "the first is logged");
        for ms in [0, 1, 500, 999] {
            assert!(!stats.shadow_log_due(t + ms), "then none for a second");
        }
        assert!(stats.shadow_log_due(t + 1000));
        assert!(!stats.shadow_log_due(t + 1999));
        assert!(stats.shadow_log_due(t + 5000));
    }

    #[test]
    fn an_outage_is_counted_and_ends_with_the_first_answer() {
        let stats = Stats::new("p");
        let error = Error::Timeout(Duration::from_millis(100));
        for _ in 0..3 {
            stats.record_error("p", &error, FailMode::Open);
            stats.record(Outcome::FailedOpen);
        }
        stats.record_short_circuit();
        assert!(stats.is_degraded());
        assert_eq!((stats.store_errors(), stats.failed_open()), (3, 3));
        assert_eq!(stats.short_circuited(), 1);
        stats.record_success("p");
        assert!(!stats.is_degraded());
    }
}
