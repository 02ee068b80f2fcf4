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
#[derive(Debug, Default)]
pub struct Stats {
    store_errors: AtomicU64,
    failed_open: AtomicU64,
    failed_closed: AtomicU64,
    degraded: AtomicBool,
}

impl Stats {
    /// Store calls that failed or timed out.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Relaxed)
    }

    /// Requests forwarded unlimited because the store failed.
    pub fn failed_open(&self) -> u64 {
        self.failed_open.load(Relaxed)
    }

    /// Requests answered 503 because the store failed.
    pub fn failed_closed(&self) -> u64 {
        self.failed_closed.load(Relaxed)
    }

    /// Whether the last store call failed.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Relaxed)
    }

    pub(crate) fn record_error(&self, policy: &str, error: &Error, mode: FailMode) {
        self.store_errors.fetch_add(1, Relaxed);
        match mode {
            FailMode::Open => self.failed_open.fetch_add(1, Relaxed),
            FailMode::Closed => self.failed_closed.fetch_add(1, Relaxed),
        };
        if !self.degraded.swap(true, Relaxed) {
            tracing::warn!(
                policy,
                %error,
                fail_mode = ?mode,
                "rate-limit store failing; requests are let through (open) or refused \
                 with 503 (closed) until it answers again"
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
