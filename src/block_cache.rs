//! Keys known to be over their limit, answered in-process.
//!
//! Once the store has denied a key until some instant, asking it again
//! before then can only produce another denial: other app servers' traffic
//! can only push that instant later. So each app server remembers denials
//! and answers `429` itself until they run out, which during a flood from one
//! key costs the store nothing. Memory is bounded; expired entries go first,
//! then those that expire soonest.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use crate::Decision;

const SHARDS: usize = 16;

/// Default number of keys remembered.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// How long a denial is trusted at most, whatever the store said: a bound
/// on how long a manual reset of a counter in Redis goes unseen.
const MAX_BLOCK: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct BlockCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
}

type Shard = HashMap<Box<str>, Block>;

#[derive(Clone, Copy, Debug)]
struct Block {
    /// The denial was for this cost; a smaller one may fit earlier.
    cost: u64,
    retry_at: Instant,
    reset_at: Instant,
    decision: Decision,
}

impl BlockCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The denial still in force for `key` at `cost`, with its times counted
    /// down to `now`.
    pub(crate) fn get(&self, key: &str, cost: u64, now: Instant) -> Option<Decision> {
        let block = *self.shard(key).get(key)?;
        if block.retry_at <= now || cost < block.cost {
            return None;
        }
        Some(Decision {
            reset_after: block.reset_at.saturating_duration_since(now),
            retry_after: Some(block.retry_at - now),
            ..block.decision
        })
    }

    /// Remembers a denial.
    pub(crate) fn insert(&self, key: &str, cost: u64, decision: &Decision, now: Instant) {
        let Some(retry_after) = decision.retry_after.filter(|d| !d.is_zero()) else {
            return;
        };
        let block = Block {
            cost,
            retry_at: now + retry_after.min(MAX_BLOCK),
            reset_at: now + decision.reset_after,
            decision: *decision,
        };
        let mut shard = self.shard(key);
        if let Some(existing) = shard.get_mut(key) {
            *existing = block;
            return;
        }
        if shard.len() >= self.per_shard {
            shard.retain(|_, b| b.retry_at > now);
        }
        if shard.len() >= self.per_shard {
            let soonest = shard
                .iter()
                .min_by_key(|(_, b)| b.retry_at)
                .map(|(k, _)| k.clone());
            if let Some(soonest) = soonest {
                shard.remove(&soonest);
            }
        }
        shard.insert(key.into(), block);
    }

    /// Keys held, expired ones included until they are swept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(retry_ms: u64) -> Decision {
        Decision {
            allowed: false,
            limit: 10,
            window: Duration::from_secs(60),
            remaining: 0,
            reset_after: Duration::from_millis(retry_ms * 2),
            retry_after: Some(Duration::from_millis(retry_ms)),
        }
    }

    #[test]
    fn a_denial_is_answered_until_it_runs_out() {
        let cache = BlockCache::new(100);
        let now = Instant::now();
        cache.insert("k", 1, &denied(1000), now);
        let later = now + Duration::from_millis(400);
        let hit = cache.get("k", 1, later).unwrap();
        assert_eq!(hit.retry_after, Some(Duration::from_millis(600)));
        assert_eq!(hit.reset_after, Duration::from_millis(1600));
        assert!(
            cache
                .get("k", 1, now + Duration::from_millis(1000))
                .is_none()
        );
        assert!(cache.get("other", 1, later).is_none());
    }

    #[test]
    fn a_smaller_cost_is_asked_again() {
        let cache = BlockCache::new(100);
        let now = Instant::now();
        cache.insert("k", 5, &denied(1000), now);
        assert!(cache.get("k", 1, now).is_none());
        assert!(cache.get("k", 5, now).is_some());
        assert!(cache.get("k", 9, now).is_some());
    }

    #[test]
    fn memory_stays_bounded_with_a_million_keys() {
        let cache = BlockCache::new(1_000);
        let now = Instant::now();
        for i in 0..1_000_000u64 {
            cache.insert(&format!("k{i}"), 1, &denied(1 + i % 5000), now);
        }
        assert!(cache.len() <= 1_000 + SHARDS, "{}", cache.len());
        // The survivors are those blocked longest.
        let kept_short = (0..1_000_000u64)
            .filter(|i| i % 5000 < 10)
            .take(100)
            .filter(|i| cache.get(&format!("k{i}"), 1, now).is_some())
            .count();
        assert_eq!(kept_short, 0);
    }
}
