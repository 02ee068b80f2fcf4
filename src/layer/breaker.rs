//! The circuit breaker: after enough store failures in a row, requests get
//! the fail mode at once instead of waiting for a store that is down, and
//! one probe per cooldown finds out when it is back.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::time::Instant;

use crate::config::Breaker;

/// What the breaker says about calling the store now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Call,
    Skip,
}

/// One layer's breaker, shared by all its clones; lock-free.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    settings: Breaker,
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// Microseconds after `epoch` until which the breaker is open, or until
    /// the next probe may go; 0: closed (an open breaker's is at least one
    /// cooldown, which policies require to be 1 ms or more).
    open_until_us: AtomicU64,
}

impl CircuitBreaker {
    pub(crate) fn new(settings: Breaker) -> Self {
        Self {
            settings,
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_us: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn cooldown_us(&self) -> u64 {
        Duration::from_millis(self.settings.cooldown_ms).as_micros() as u64
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
        Admit::Skip
    }

    /// A store call failed or timed out: enough in a row (or a failed
    /// probe) open the breaker for a cooldown. Whether this opened it.
    pub(crate) fn failure(&self) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures >= self.settings.failures || self.open_until_us.load(Relaxed) != 0 {
            let until = self.now_us() + self.cooldown_us();
            return self.open_until_us.swap(until, Relaxed) == 0;
        }
        false
    }

    /// A store call answered: the breaker closes. Whether this closed it.
    /// Cheap on the hot path, where it is already closed: two reads.
    pub(crate) fn success(&self) -> bool {
        if self.consecutive_failures.load(Relaxed) != 0 || self.open_until_us.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
            return self.open_until_us.swap(0, Relaxed) != 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_probes_once_per_cooldown_and_closes() {
        let breaker = CircuitBreaker::new(Breaker::default());
        for _ in 0..3 {
            assert_eq!(breaker.admit(), Admit::Call);
            breaker.failure();
        }
        assert_eq!(breaker.admit(), Admit::Skip);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(breaker.admit(), Admit::Call, "the probe");
        assert_eq!(breaker.admit(), Admit::Skip, "one probe at a time");
        // The probe never reports (its request was cancelled): another goes
        // a cooldown later.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(breaker.admit(), Admit::Call);
        breaker.success();
        assert_eq!(breaker.admit(), Admit::Call);
        // Closed again: it takes three failures in a row to open it, and an
        // answer in between starts the count again.
        breaker.failure();
        breaker.failure();
        assert_eq!(breaker.admit(), Admit::Call);
        breaker.success();
        breaker.failure();
        breaker.failure();
        assert_eq!(breaker.admit(), Admit::Call);
        breaker.failure();
        assert_eq!(breaker.admit(), Admit::Skip);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_the_breaker() {
        let breaker = CircuitBreaker::new(Breaker {
            failures: 1,
            cooldown_ms: 100,
        });
        breaker.failure();
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(breaker.admit(), Admit::Call);
        breaker.failure();
        assert_eq!(breaker.admit(), Admit::Skip);
    }
}
