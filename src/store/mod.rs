//! Where counters live: [`RedisStore`] (shared by every app server) and
//! [`MemoryStore`] (one process).
//!
//! A store knows how to keep counters and run an
//! [`Algorithm`](crate::Algorithm) over them atomically; it knows nothing of
//! HTTP, keys or policies.

mod memory;
mod redis;

use std::future::Future;

pub use self::{memory::MemoryStore, redis::RedisStore};
use crate::{Algorithm, Decision, Error, Rate};

/// One question to a store: may `cost` more requests be counted on `key`?
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    /// The full counter key, e.g. `rl:telemetry:{x-agent-token:AGENT-1}:60`.
    pub key: &'a str,
    /// The rate to enforce.
    pub rate: Rate,
    /// How to count.
    pub algorithm: Algorithm,
    /// How many requests this one counts as; never above `rate.limit()`.
    pub cost: u64,
}

/// Counter storage that decides [`Check`]s atomically.
pub trait Store: Clone + Send + Sync + 'static {
    /// The answer; stores that can answer at once use `std::future::Ready`.
    type Future: Future<Output = Result<Decision, Error>> + Send + 'static;

    /// Counts the request if it is within the rate and says what was decided.
    fn check(&self, check: Check<'_>) -> Self::Future;
}
