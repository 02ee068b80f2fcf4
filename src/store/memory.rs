//! Counters in this process's memory.

use std::{
    collections::HashMap,
    future::{Ready, ready},
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::time::Instant;

use super::{Charge, MAX_LIMITS, Store};
use crate::{
    Algorithm, Decision, Error, Limit, LimitState,
    algorithm::{self, Entry},
    key::KeyBuffer,
    metrics::memory_store_counters,
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
/// Its clock is the system time when the store was created plus a
/// `tokio::time::Instant` since, so tests that pause Tokio's clock control
/// the windows; a [`Charge`] may also bring its own time.
///
/// ```
/// use axum_redis_ratelimit::{Algorithm, MemoryStore, Rate, store::{Charge, Store}};
///
/// # tokio_test_block_on(async {
/// let store = MemoryStore::new();
/// let limits = [Rate::per_minute(1).into()];
/// let check = Charge { key: "k", limits: &limits, algorithm: Algorithm::FixedWindow, cost: 1, now_us: None };
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
    epoch_unix_us: u64,
}

#[derive(Debug)]
struct Shard {
    counters: HashMap<Box<str>, Entry>,
    sweep_at_len: usize,
    capacity: usize,
}

/// Default bound on the counters held: about 150 MB at most.
pub const DEFAULT_CAPACITY: usize = 1_000_000;

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store holding at most 1,000,000 counters.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// An empty store holding at most about `capacity` counters (one per
    /// key and limit). When full, expired counters go first, then those
    /// closest to expiring: their clients get a fresh window early, which
    /// admits more than the limit for them, the price of bounded memory.
    pub fn with_capacity(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    counters: HashMap::new(),
                    sweep_at_len: MIN_SWEEP_LEN.min(per_shard),
                    capacity: per_shard,
                })
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                hasher: RandomState::new(),
                epoch: Instant::now(),
                epoch_unix_us: algorithm::unix_now_us(),
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

    fn now_us(&self) -> u64 {
        self.inner.epoch_unix_us + self.inner.epoch.elapsed().as_micros() as u64
    }

    /// A valid check's time (its own, or this store's) and the locked shard
    /// of its client, which holds all that client's counters.
    fn open(&self, check: &Charge<'_>) -> Result<(u64, MutexGuard<'_, Shard>), Error> {
        check.validate()?;
        let now_us = check.now_us.unwrap_or_else(|| self.now_us());
        let index = self.inner.hasher.hash_one(check.key) as usize % SHARDS;
        Ok((now_us, lock(&self.inner.shards[index])))
    }

    /// Runs the algorithm's twin over the check's counters under one lock:
    /// the shard is chosen by the client's key, which all its counters share.
    pub(crate) fn decide(&self, check: Charge<'_>) -> Result<Decision, Error> {
        let (now_us, mut shard) = self.open(&check)?;
        let now_ms = now_us / 1000;
        let (limits, cost) = (check.limits, check.counted_cost());
        let mut key = KeyBuffer::take();
        let mut states = [None; MAX_LIMITS];
        let mut verdicts = [None; MAX_LIMITS];
        for (i, limit) in limits.iter().enumerate() {
            check.counter_key(limit, &mut key);
            let entry = shard
                .counters
                .get(key.as_str())
                .copied()
                .filter(|e| e.expires_at_ms > now_ms);
            let (verdict, state) = check.algorithm.decide(entry, now_us, limit, cost);
            (verdicts[i], states[i]) = (Some(verdict), state);
        }
        if verdicts.iter().flatten().all(|v| v.allowed) {
            for (limit, state) in limits.iter().zip(states) {
                check.counter_key(limit, &mut key);
                let state = state.expect("an allowed verdict carries its state");
                match shard.counters.get_mut(key.as_str()) {
                    Some(entry) => *entry = state,
                    None => {
                        shard.counters.insert(key.as_str().into(), state);
                        memory_store_counters(1);
                        shard.sweep_if_grown(now_ms);
                    }
                }
            }
        }
        Decision::combine(limits.iter().zip(verdicts.into_iter().flatten()))
            .ok_or_else(|| Error::config("limits", "a check needs at least one limit"))
    }

    /// Reads the counters of the client `key` under each of `limits`
    /// without counting anything: each limit's remaining requests and time
    /// to reset, as a check of cost 0 would see them; the Redis store's
    /// [`peek`](super::RedisStore::peek), in memory. `now_us` is the time
    /// in microseconds since the Unix epoch, or `None` for this store's
    /// clock.
    ///
    /// ```
    /// use axum_redis_ratelimit::{Algorithm, MemoryStore, Rate, store::{Charge, Store}};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// let limits = [Rate::per_minute(5).into()];
    /// let check = Charge { key: "rl:p:{k}", limits: &limits, algorithm: Algorithm::FixedWindow, cost: 2, now_us: None };
    /// store.check(check).await.unwrap();
    /// let [state] = store.peek("rl:p:{k}", &limits, Algorithm::FixedWindow, None).unwrap()[..] else { panic!() };
    /// assert_eq!((state.used, state.remaining), (2, 3));
    /// # });
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] for no limits, more than
    /// [`MAX_LIMITS`], or a limit beyond exact arithmetic.
    pub fn peek(
        &self,
        key: &str,
        limits: &[Limit],
        algorithm: Algorithm,
        now_us: Option<u64>,
    ) -> Result<Vec<LimitState>, Error> {
        let charge = Charge::peek(key, limits, algorithm, now_us);
        let (now_us, shard) = self.open(&charge)?;
        let mut counter = KeyBuffer::take();
        Ok(limits
            .iter()
            .map(|limit| {
                charge.counter_key(limit, &mut counter);
                let entry = shard
                    .counters
                    .get(counter.as_str())
                    .copied()
                    .filter(|e| e.expires_at_ms > now_us / 1000);
                let (verdict, _) = algorithm.decide(entry, now_us, limit, 0);
                LimitState::new(limit, algorithm, verdict)
            })
            .collect())
    }

    /// Deletes the counters of the client `key` under each of `limits`, so
    /// that its next request starts afresh; how many were live. The Redis
    /// store's [`reset`](super::RedisStore::reset), in memory.
    ///
    /// # Errors
    /// As [`peek`](Self::peek).
    pub fn reset(&self, key: &str, limits: &[Limit], algorithm: Algorithm) -> Result<u64, Error> {
        let charge = Charge {
            key,
            limits,
            algorithm,
            cost: 1,
            now_us: None,
        };
        let (now_us, mut shard) = self.open(&charge)?;
        let mut live = 0;
        for limit in limits {
            charge.each_counter_on_any_clock(limit, |counter| {
                let removed = shard.counters.remove(counter);
                live += u64::from(removed.is_some_and(|e| e.expires_at_ms > now_us / 1000));
            });
        }
        Ok(live)
    }

    /// Moves the check's live counters back by its cost, under one lock.
    pub(crate) fn give_back(&self, check: Charge<'_>) -> Result<(), Error> {
        let (now_us, mut shard) = self.open(&check)?;
        let cost = check.counted_cost();
        let mut key = KeyBuffer::take();
        for limit in check.limits {
            check.counter_key(limit, &mut key);
            let Some(entry) = shard.counters.get_mut(key.as_str()) else {
                continue;
            };
            if entry.expires_at_ms <= now_us / 1000 {
                continue;
            }
            match check.algorithm.refund(*entry, now_us, limit, cost) {
                Some(refunded) => *entry = refunded,
                None => {
                    if shard.counters.remove(key.as_str()).is_some() {
                        memory_store_counters(-1);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Shard {
    /// Called after an insert.
    fn sweep_if_grown(&mut self, now_ms: u64) {
        if self.counters.len() < self.sweep_at_len {
            return;
        }
        let before = self.counters.len();
        self.counters.retain(|_, e| e.expires_at_ms > now_ms);
        if self.counters.len() >= self.capacity {
            // Keep the 7/8 that expire last, so the next eviction is a
            // while away and the cost stays amortised.
            let keep = self.capacity - self.capacity / 8;
            let mut expiries: Vec<u64> = self.counters.values().map(|e| e.expires_at_ms).collect();
            let cut = expiries.len() - keep;
            let (_, &mut threshold, _) = expiries.select_nth_unstable(cut);
            let mut to_evict = cut;
            self.counters.retain(|_, e| {
                let evict = to_evict > 0 && e.expires_at_ms <= threshold;
                to_evict -= usize::from(evict);
                !evict
            });
        }
        self.sweep_at_len =
            (self.counters.len() * 2).clamp(MIN_SWEEP_LEN.min(self.capacity), self.capacity);
        memory_store_counters(self.counters.len() as isize - before as isize);
    }
}

impl Drop for Inner {
    /// The process-wide gauge loses this store's counters with it.
    fn drop(&mut self) {
        let held: usize = self.shards.iter().map(|s| lock(s).counters.len()).sum();
        memory_store_counters(-(held as isize));
    }
}

/// A panic while holding the lock leaves the counters consistent (each
/// update is one assignment), so poisoning is ignored.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store for MemoryStore {
    type Future = Ready<Result<Decision, Error>>;

    fn check(&self, check: Charge<'_>) -> Self::Future {
        ready(self.decide(check))
    }

    type Refund = Ready<Result<(), Error>>;

    fn refund(&self, check: Charge<'_>) -> Self::Refund {
        ready(self.give_back(check))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Rate;

    const LIMITS: [Limit; 1] = [Limit::new(Rate::per_second(1))];

    fn check(key: &str) -> Charge<'_> {
        Charge {
            key,
            limits: &LIMITS,
            algorithm: Algorithm::FixedWindow,
            cost: 1,
            now_us: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_million_keys_stay_within_the_capacity() {
        let store = MemoryStore::with_capacity(10_000);
        for i in 0..1_000_000 {
            store.check(check(&format!("k{i}"))).await.unwrap();
            // A millisecond per thousand keys, so that the newest expire
            // strictly last.
            if i % 1_000 == 999 {
                tokio::time::advance(Duration::from_millis(1)).await;
            }
        }
        assert!(store.len() <= 10_000 + SHARDS, "{}", store.len());
        // The newest keys, expiring last, are the ones kept.
        let newest = check("k999999");
        assert!(!store.check(newest).await.unwrap().allowed);
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
