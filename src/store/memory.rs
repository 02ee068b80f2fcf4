//! Counters in this process's memory.

use std::{
    collections::HashMap,
    future::{Ready, ready},
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex, PoisonError},
};

use tokio::time::Instant;

use super::{Check, Store};
use crate::{
    Algorithm, Decision, Error,
    algorithm::{Counter, fixed_window},
};

/// Shards, so that concurrent requests for different keys rarely wait on
/// one lock.
const SHARDS: usize = 64;

/// A shard sweeps out expired counters when it has grown to twice its size
/// after the last sweep, and never below this many entries; so memory stays
/// within twice the live keys plus a constant, at O(1) amortised cost.
const MIN_SWEEP_LEN: usize = 64;

/// Counters kept in this process: for a single instance, development and
/// tests of an application. They are not shared between processes and are
/// lost on restart; use [`RedisStore`](super::RedisStore) for that.
///
/// Time is read from `tokio::time::Instant`, so tests that pause Tokio's
/// clock control the windows.
///
/// ```
/// use axum_redis_ratelimit::{Algorithm, MemoryStore, Rate, store::{Check, Store}};
///
/// # tokio_test_block_on(async {
/// let store = MemoryStore::new();
/// let check = Check { key: "k", rate: Rate::per_minute(1), algorithm: Algorithm::FixedWindow, cost: 1 };
/// assert!(store.check(check).await.unwrap().allowed);
/// assert!(!store.check(check).await.unwrap().allowed);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Shard {
    counters: HashMap<Box<str>, Counter>,
    sweep_at_len: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    counters: HashMap::new(),
                    sweep_at_len: MIN_SWEEP_LEN,
                })
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                hasher: RandomState::new(),
                epoch: Instant::now(),
            }),
        }
    }

    /// Counters held, including expired ones not yet swept out.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).counters.len())
            .sum()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn decide(&self, check: Check<'_>) -> Decision {
        let now = self.now_ms();
        let index = self.inner.hasher.hash_one(check.key) as usize % SHARDS;
        let mut shard = lock(&self.inner.shards[index]);
        let apply = |counter: &mut Option<Counter>| match check.algorithm {
            Algorithm::FixedWindow => fixed_window::apply(
                counter,
                now,
                check.rate.limit(),
                check.rate.window_ms(),
                check.cost,
            ),
        };
        let reply = match shard.counters.get_mut(check.key) {
            Some(stored) => {
                let mut counter = Some(*stored);
                let reply = apply(&mut counter);
                match counter {
                    Some(counter) => *stored = counter,
                    None => {
                        shard.counters.remove(check.key);
                    }
                }
                reply
            }
            None => {
                let mut counter = None;
                let reply = apply(&mut counter);
                if let Some(counter) = counter {
                    shard.counters.insert(check.key.into(), counter);
                    shard.sweep_if_grown(now);
                }
                reply
            }
        };
        reply.into_decision(check.rate.limit())
    }
}

impl Shard {
    fn sweep_if_grown(&mut self, now_ms: u64) {
        if self.counters.len() >= self.sweep_at_len {
            self.counters.retain(|_, c| c.expires_at_ms > now_ms);
            self.sweep_at_len = (self.counters.len() * 2).max(MIN_SWEEP_LEN);
        }
    }
}

/// A panic while holding the lock leaves the counters consistent (each
/// update is one assignment), so poisoning is ignored.
fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store for MemoryStore {
    type Future = Ready<Result<Decision, Error>>;

    fn check(&self, check: Check<'_>) -> Self::Future {
        ready(Ok(self.decide(check)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Rate;

    fn check(key: &str) -> Check<'_> {
        Check {
            key,
            rate: Rate::per_second(1),
            algorithm: Algorithm::FixedWindow,
            cost: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expired_counters_are_reclaimed() {
        let store = MemoryStore::new();
        for round in 0..20 {
            for i in 0..5_000 {
                store.check(check(&format!("k{round}:{i}"))).await.unwrap();
            }
            tokio::time::advance(Duration::from_secs(2)).await;
            // Live keys are the 5,000 of this round; stale ones must not pile up.
            assert!(
                store.len() <= 2 * 5_000 + SHARDS * MIN_SWEEP_LEN,
                "{}",
                store.len()
            );
        }
    }
}
