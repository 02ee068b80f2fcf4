//! Keys known to be over their limit, answered in-process.
//!
//! Once the store has denied a request until some instant, asking it again
//! before then can only produce another denial: other app servers' traffic
//! can only push that instant later. So each app server remembers denials
//! and answers `429` itself until they run out, which during a flood from one
//! key costs the store nothing.
//!
//! A denial says when a request of *its* cost fits. A request of another cost
//! is answered from it only where the policy makes that cost's wait exact:
//! with a single limit, under a fixed window any larger cost waits for the
//! same window end, and under GCRA each unit of cost more (or less) waits one
//! emission interval more (or less). Otherwise the store is asked. A request
//! the store admits clears the key's denial, which it may have made stale.
//!
//! The wait reported is the store's, counted down, however long; but a denial
//! is trusted for at most [`MAX_BLOCK`], which bounds how long a counter reset
//! by hand in Redis goes unseen.
//!
//! Memory is bounded by the capacity. What to evict is `quick_cache`'s choice
//! (a CLOCK-PRO / S3-FIFO policy, constant work per insert whatever the
//! contents, and keys that keep being hit are kept over a flood of new ones);
//! a denial that has run out is never served and is dropped when found.

use std::{hash::RandomState, time::Duration};

use quick_cache::{OptionsBuilder, UnitWeighter, sync::Cache};
use tokio::time::Instant;

use crate::{Algorithm, Decision, algorithm::Limit};

/// Default number of keys remembered.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// How long a denial is trusted at most, whatever the store said: a bound
/// on how long a manual reset of a counter in Redis goes unseen.
pub const MAX_BLOCK: Duration = Duration::from_secs(60);

/// Shards of a large cache, each behind its own lock.
const SHARDS: usize = 16;

pub(crate) struct BlockCache {
    // SipHash (std's), not a fast unkeyed hash: the keys are the clients'.
    entries: Cache<Box<str>, Block, UnitWeighter, RandomState>,
    other_costs: OtherCosts,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("len", &self.entries.len())
            .field("capacity", &self.entries.capacity())
            .field("other_costs", &self.other_costs)
            .finish()
    }
}

/// What a denial of one cost says about other costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OtherCosts {
    /// Nothing: the store is asked.
    Ask,
    /// One fixed window: a larger cost fits when the window ends, as the
    /// denied one does; a smaller one may fit now.
    SameWindowEnd,
    /// One GCRA limit: a cost waits `interval_us` per unit more than another.
    Gcra { interval_us: u64 },
}

#[derive(Clone, Copy, Debug)]
struct Block {
    /// The cost denied, until `retry_at`.
    cost: u64,
    retry_at: Instant,
    /// `retry_at`, or [`MAX_BLOCK`] after the denial if that is sooner.
    trusted_until: Instant,
    reset_at: Instant,
    decision: Decision,
}

impl BlockCache {
    /// A cache of at most `capacity` keys for a policy of `algorithm` and
    /// `limits`.
    pub(crate) fn new(capacity: usize, algorithm: Algorithm, limits: &[Limit]) -> Self {
        let other_costs = match (algorithm, limits) {
            (Algorithm::FixedWindow, [_]) => OtherCosts::SameWindowEnd,
            (Algorithm::Gcra, [limit]) => OtherCosts::Gcra {
                interval_us: limit.interval_us(),
            },
            _ => OtherCosts::Ask,
        };
        // quick_cache gives each shard the capacity divided by their number,
        // rounded up; a multiple of that number keeps the total within it.
        let shards = if capacity >= SHARDS * 32 { SHARDS } else { 1 };
        let capacity = capacity - capacity % shards;
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(capacity)
            .weight_capacity(capacity as u64)
            .build()
            .expect("every option is set");
        Self {
            entries: Cache::with_options(
                options,
                UnitWeighter,
                RandomState::new(),
                Default::default(),
            ),
            other_costs,
        }
    }

    /// The denial in force for `key` at `cost`, with its times counted down
    /// to `now`; `None` when only the store can tell.
    pub(crate) fn get(&self, key: &str, cost: u64, now: Instant) -> Option<Decision> {
        let block = self.entries.get(key)?;
        if block.trusted_until <= now {
            self.entries.remove_if(key, |b| b.trusted_until <= now);
            return None;
        }
        let retry_at = block.retry_at_for(cost, self.other_costs)?;
        (retry_at > now).then(|| Decision {
            reset_after: block.reset_at.saturating_duration_since(now),
            retry_after: Some(retry_at - now),
            ..block.decision
        })
    }

    /// Remembers a denial of `cost` for `key`, replacing what was known of
    /// it, and then says how many keys the cache holds. An admission forgets
    /// the key, since it moved the key's counters (and so does a denial
    /// without a wait, which tells nothing).
    pub(crate) fn record(
        &self,
        key: &str,
        cost: u64,
        decision: &Decision,
        now: Instant,
    ) -> Option<usize> {
        let wait = decision
            .retry_after
            .filter(|d| !decision.allowed && !d.is_zero());
        let Some(retry_after) = wait else {
            self.entries.remove(key);
            return None;
        };
        let block = Block {
            cost,
            retry_at: now + retry_after,
            trusted_until: now + retry_after.min(MAX_BLOCK),
            reset_at: now + decision.reset_after,
            decision: *decision,
        };
        self.entries.insert(key.into(), block);
        Some(self.len())
    }

    /// Keys held, expired ones included until they are found or evicted.
    fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Block {
    /// When a request of `cost` fits, if this denial tells.
    fn retry_at_for(&self, cost: u64, other_costs: OtherCosts) -> Option<Instant> {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match (cost.cmp(&self.cost), other_costs) {
            (Equal, _) | (Greater, OtherCosts::SameWindowEnd) => Some(self.retry_at),
            (Greater, OtherCosts::Gcra { interval_us }) => {
                let more = interval_us.checked_mul(cost - self.cost)?;
                self.retry_at.checked_add(Duration::from_micros(more))
            }
            (Less, OtherCosts::Gcra { interval_us }) => {
                let less = interval_us.checked_mul(self.cost - cost)?;
                self.retry_at.checked_sub(Duration::from_micros(less))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rate;

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

    fn cache(capacity: usize, algorithm: Algorithm, limits: &[Rate]) -> BlockCache {
        let limits: Vec<_> = limits.iter().copied().map(Limit::new).collect();
        BlockCache::new(capacity, algorithm, &limits)
    }

    const PER_MINUTE: Rate = Rate::per_minute(10);

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_denial_is_answered_until_it_runs_out() {
        let cache = cache(100, Algorithm::SlidingWindow, &[PER_MINUTE]);
        let now = Instant::now();
        cache.record("k", 1, &denied(1000), now);
        let later = now + ms(400);
        let hit = cache.get("k", 1, later).unwrap();
        assert_eq!(hit.retry_after, Some(ms(600)));
        assert_eq!(hit.reset_after, ms(1600));
        assert!(cache.get("k", 1, now + ms(1000)).is_none());
        assert_eq!(cache.len(), 0, "found expired, dropped");
        assert!(cache.get("other", 1, later).is_none());
    }

    #[test]
    fn a_long_denial_keeps_its_wait_but_is_trusted_for_max_block() {
        let cache = cache(100, Algorithm::FixedWindow, &[Rate::per_hour(1)]);
        let now = Instant::now();
        cache.record("k", 1, &denied(3_600_000), now);
        let hit = cache.get("k", 1, now + Duration::from_secs(10)).unwrap();
        assert_eq!(hit.retry_after, Some(Duration::from_secs(3590)));
        assert!(cache.get("k", 1, now + MAX_BLOCK).is_none());
    }

    #[test]
    fn an_admission_forgets_the_denial() {
        let cache = cache(100, Algorithm::SlidingWindow, &[PER_MINUTE]);
        let now = Instant::now();
        cache.record("k", 10, &denied(1000), now);
        let admitted = Decision {
            allowed: true,
            retry_after: None,
            ..denied(1000)
        };
        cache.record("k", 5, &admitted, now);
        assert!(cache.get("k", 10, now).is_none());
    }

    #[test]
    fn the_store_is_asked_for_other_costs_unless_one_limit_makes_them_exact() {
        let now = Instant::now();
        let asked = [
            cache(100, Algorithm::SlidingWindow, &[PER_MINUTE]),
            cache(
                100,
                Algorithm::FixedWindow,
                &[PER_MINUTE, Rate::per_hour(100)],
            ),
            cache(100, Algorithm::Gcra, &[PER_MINUTE, Rate::per_hour(100)]),
        ];
        for cache in asked {
            cache.record("k", 5, &denied(10_000), now);
            assert!(cache.get("k", 5, now).is_some(), "{cache:?}");
            assert!(cache.get("k", 4, now).is_none(), "{cache:?}");
            assert!(cache.get("k", 6, now).is_none(), "{cache:?}");
        }
    }

    #[test]
    fn a_fixed_window_makes_a_larger_cost_wait_for_the_same_end() {
        let cache = cache(100, Algorithm::FixedWindow, &[PER_MINUTE]);
        let now = Instant::now();
        cache.record("k", 5, &denied(10_000), now);
        assert!(cache.get("k", 4, now).is_none(), "may fit now");
        let retry = |cost| cache.get("k", cost, now).unwrap().retry_after;
        assert_eq!(retry(5), Some(ms(10_000)));
        assert_eq!(retry(10), Some(ms(10_000)));
    }

    #[test]
    fn gcra_makes_each_unit_of_cost_wait_one_interval() {
        // 10/m: one every 6 s.
        let cache = cache(100, Algorithm::Gcra, &[PER_MINUTE]);
        let now = Instant::now();
        cache.record("k", 5, &denied(20_000), now);
        let retry = |cost| cache.get("k", cost, now).map(|d| d.retry_after.unwrap());
        assert_eq!(retry(10), Some(ms(50_000)));
        assert_eq!(retry(3), Some(ms(8_000)));
        assert_eq!(retry(2), Some(ms(2_000)));
        assert_eq!(retry(1), None, "fits now");
    }

    #[test]
    fn a_full_cache_stays_within_its_capacity_and_serves_the_latest_denial() {
        for capacity in [5, 1_000, 100_000] {
            let cache = cache(capacity, Algorithm::FixedWindow, &[PER_MINUTE]);
            let now = Instant::now();
            for i in 0..(capacity as u64 * 3).max(200_000) {
                let key = format!("k{i}");
                cache.record(&key, 1, &denied(1 + i % 5000), now);
                assert!(cache.get(&key, 1, now).is_some(), "{capacity}: {key}");
                if i % 1000 == 0 {
                    assert!(cache.len() <= capacity, "{capacity}: {}", cache.len());
                }
            }
            assert!(cache.len() <= capacity, "{capacity}: {}", cache.len());
            // Expired denials are never served, however full the cache.
            cache.record("short", 1, &denied(1), now);
            assert!(cache.get("short", 1, now + ms(1)).is_none());
        }
    }
}
