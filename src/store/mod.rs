//! Where counters live: [`RedisStore`] (shared by every app server) and
//! [`MemoryStore`] (one process).
//!
//! A store knows how to keep counters and run an
//! [`Algorithm`] over them atomically; it knows nothing of
//! HTTP, keys or policies.

mod memory;
mod redis;

use std::future::Future;

pub use self::{
    memory::MemoryStore,
    redis::{KeyScan, RedisConfig, RedisConnection, RedisStore, TlsFiles},
};
pub use crate::algorithm::MAX_LIMITS;
use crate::{
    Algorithm, Decision, Error,
    algorithm::{Limit, Script},
    key::layout,
    lease::{LeaseCall, LeaseFuture},
};

/// What one request would cost a client: `cost` requests on `key`, under
/// every one of `limits`. A store [`check`](Store::check)s a charge (counts
/// it if it fits) and, when a later layer refuses the request,
/// [`refund`](Store::refund)s it.
#[derive(Clone, Copy, Debug)]
pub struct Charge<'a> {
    /// The client's key up to its hash tag, e.g.
    /// `rl:telemetry:{x-agent-token:AGENT-1}`; each limit appends its part
    /// (`:60:fixed`) to name its counter. On a Redis Cluster every counter
    /// of a check (several limits, the sliding window's previous count)
    /// must share one slot: end the key with a hash tag, as the layer does.
    pub key: &'a str,
    /// The limits, all checked at once: a request denied by one is counted
    /// by none.
    pub limits: &'a [Limit],
    /// How to count.
    pub algorithm: Algorithm,
    /// How many requests this one counts as, at least 1. A cost above a
    /// limit's [`capacity`](Limit::capacity) is simply denied (and reported
    /// as if it were one above the smallest capacity); the layer answers
    /// such requests itself.
    pub cost: u64,
    /// The time in microseconds since the Unix epoch, when the application's
    /// clock is used; `None` for the store's own (each counter's Redis
    /// expiry).
    pub now_us: Option<u64>,
}

impl<'a> Charge<'a> {
    /// What a peek at `key`'s `limits` is checked as: a charge of 1. The
    /// stores then decide it with a cost of 0, which counts nothing.
    pub(crate) fn peek(
        key: &'a str,
        limits: &'a [Limit],
        algorithm: Algorithm,
        now_us: Option<u64>,
    ) -> Self {
        Self {
            key,
            limits,
            algorithm,
            cost: 1,
            now_us,
        }
    }

    /// Policies are checked when built; this guards direct callers of a
    /// store, so that both stores answer every check alike and exactly.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.limits.is_empty() || self.limits.len() > MAX_LIMITS {
            return Err(Error::config(
                "limits",
                format!(
                    "a check needs 1 to {MAX_LIMITS} limits, not {}",
                    self.limits.len()
                ),
            ));
        }
        for (i, limit) in self.limits.iter().enumerate() {
            limit.validate("limits.")?;
            // Counters are named by their window: two such limits would
            // count into one counter, twice.
            let window = limit.rate.window();
            if self.limits[..i].iter().any(|l| l.rate.window() == window) {
                return Err(Error::config(
                    "limits",
                    format!("two limits share the window of {}", limit.rate),
                ));
            }
        }
        if self.cost == 0 {
            return Err(Error::config("cost", "must be at least 1"));
        }
        Ok(())
    }

    /// The cost the stores count with: a cost above the smallest capacity
    /// is denied whatever its size, so it is capped just above it, which
    /// keeps every product within the exact range of both stores.
    pub(crate) fn counted_cost(&self) -> u64 {
        let capacity = self.limits.iter().map(|l| l.capacity(self.algorithm)).min();
        self.cost.min(capacity.unwrap_or(0).saturating_add(1))
    }

    /// The counter of `limit` for this check, written to `out` (cleared
    /// first): the client key and the limit's part, as in
    /// `rl:telemetry:{x-agent-token:AGENT-1}:60:gcra`. A store of your own
    /// keeps one counter per key it gives.
    pub fn counter_key(&self, limit: &Limit, out: &mut String) {
        layout::counter_key(self.key, limit, self.script(), out);
    }

    /// The script that decides this check: the algorithm's, on the clock
    /// the check names (a time given is the app's clock).
    pub(crate) fn script(&self) -> Script {
        Script::of(self.algorithm, self.now_us.is_some())
    }

    /// Calls `each` with the name of every counter a reset of `limit`
    /// deletes: the limit's counter on either clock, and the sliding
    /// window's previous count.
    pub(crate) fn each_counter_on_any_clock(&self, limit: &Limit, mut each: impl FnMut(&str)) {
        let mut name = String::new();
        for app_clock in [false, true] {
            let script = Script::of(self.algorithm, app_clock);
            layout::counter_key(self.key, limit, script, &mut name);
            each(&name);
            if script == Script::SlidingWindow {
                let counter = std::mem::take(&mut name);
                layout::previous_count_key(&counter, &mut name);
                each(&name);
            }
        }
    }
}

/// Counter storage that decides [`Charge`]s atomically. Implemented by
/// [`RedisStore`] and [`MemoryStore`]; another store (a database, a test
/// double) implements it too, with [`Charge::counter_key`] to name its
/// counters and [`Decision`] to answer (`tests/custom_store.rs` shows one).
pub trait Store: Clone + Send + Sync + 'static {
    /// The answer; stores that can answer at once use `std::future::Ready`.
    type Future: Future<Output = Result<Decision, Error>> + Send + 'static;

    /// Counts the request if it is within the rate and says what was decided.
    fn check(&self, check: Charge<'_>) -> Self::Future;

    /// What a [`refund`](Self::refund) answers.
    type Refund: Future<Output = Result<(), Error>> + Send + 'static;

    /// Gives back what an allowed `check` with the same key, limits and cost
    /// counted, because a later layer refused the request: each counter
    /// moves back by the cost (never below empty) if it has not expired.
    fn refund(&self, check: Charge<'_>) -> Self::Refund;

    /// Whether this store takes [`lease`](Self::lease) calls, which a
    /// policy in lease mode ([`Policy::lease`](crate::Policy::lease))
    /// needs: [`RedisStore`] does. `false` unless implemented.
    fn can_lease(&self) -> bool {
        false
    }

    /// Lease mode's one call (see [`lease`](crate::lease)): gives back the
    /// units an app server did not spend, crediting each limit only if its
    /// window is still the one they were granted in, then grants a slice of
    /// what every limit has left, all or nothing. Unless implemented, an
    /// error.
    fn lease(&self, call: LeaseCall<'_>) -> LeaseFuture {
        let _ = call;
        Box::pin(std::future::ready(Err(Error::config(
            "lease",
            "this store does not lease",
        ))))
    }
}
