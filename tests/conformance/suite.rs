//! One suite, two stores: the Redis store and the memory store must make the
//! same decisions, on every Redis topology. Each `tests/conformance*.rs`
//! binary runs this suite against its own target (`super::target()`): one
//! server, a Cluster, Sentinel, TLS, Valkey.
//!
//! Most cases pass the time explicitly (the policy setting `Clock::App`), so
//! both stores see the same clock and every decision can be compared exactly,
//! property tests included. The logical clock starts an hour ahead of the
//! real one, so Redis's own expiry never fires during a test and the scripts'
//! own notion of time is what is tested. The last cases use each store's own
//! clock: Redis `TIME`, and Tokio's paused clock for the memory store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum_redis_ratelimit::{
    Algorithm, Decision, Limit, LimitState, MemoryStore, Rate, RedisStore,
    store::{Charge, RedisConnection, Store},
};
use futures::future::join_all;
use proptest::prelude::*;

use super::common::{check, counter_key, current_thread, eventually, nz, unique_prefix};

/// A Redis store on this binary's target.
async fn redis() -> RedisStore {
    RedisStore::connect(super::target()).await.unwrap()
}

/// A plain connection to the target, to look at what the store wrote.
fn inspect() -> RedisConnection {
    RedisConnection::open(super::target()).unwrap()
}

/// `PTTL` of `key`: -1 without a TTL, -2 if absent.
async fn pttl(key: &str) -> i64 {
    let pttl = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut inspect())
        .await;
    pttl.unwrap()
}

/// Removes the TTL of `key`, as a restore or an operator's `PERSIST` would;
/// fails if it had none.
async fn persist(key: &str) {
    let persist: redis::RedisResult<bool> = redis::cmd("PERSIST")
        .arg(key)
        .query_async(&mut inspect())
        .await;
    assert!(persist.unwrap(), "{key} had no TTL to remove");
}

const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::Gcra,
];

/// Both stores, asked the same questions at the same logical time.
struct Pair {
    memory: MemoryStore,
    redis: RedisStore,
    prefix: String,
    now_us: u64,
}

impl Pair {
    async fn new() -> Self {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        Self {
            memory: MemoryStore::new(),
            redis: redis().await,
            prefix: unique_prefix(),
            // A whole second, so that window arithmetic in tests reads easily.
            now_us: (real / 1_000_000 + 3600) * 1_000_000,
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now_us += by.as_micros() as u64;
    }

    /// `key` under this pair's prefix, at this pair's time.
    fn check_of<'a>(
        &self,
        key: &'a str,
        algorithm: Algorithm,
        limits: &'a [Limit],
        cost: u64,
    ) -> Charge<'a> {
        Charge {
            key,
            limits,
            algorithm,
            cost,
            now_us: Some(self.now_us),
        }
    }

    /// Asks both stores; they must agree exactly.
    async fn check(
        &self,
        key: &str,
        algorithm: Algorithm,
        limits: &[Limit],
        cost: u64,
    ) -> Decision {
        let key = format!("{}{{{key}}}", self.prefix);
        let check = self.check_of(&key, algorithm, limits, cost);
        let memory = self.memory.check(check).await.unwrap();
        let redis = self.redis.check(check).await.unwrap();
        assert_eq!(
            memory, redis,
            "stores disagree on {key} cost {cost} at {}",
            self.now_us
        );
        memory
    }

    /// Peeks in both stores; they must agree exactly.
    async fn peek(&self, key: &str, algorithm: Algorithm, limits: &[Limit]) -> Vec<LimitState> {
        let key = format!("{}{{{key}}}", self.prefix);
        let now = Some(self.now_us);
        let memory = self.memory.peek(&key, limits, algorithm, now).unwrap();
        let redis = self.redis.peek(&key, limits, algorithm, now).await.unwrap();
        assert_eq!(
            memory, redis,
            "stores disagree on a peek of {key} at {now:?}"
        );
        memory
    }

    /// Resets in both stores; they must agree on how many counters existed.
    async fn reset(&self, key: &str, algorithm: Algorithm, limits: &[Limit]) -> u64 {
        let key = format!("{}{{{key}}}", self.prefix);
        let memory = self.memory.reset(&key, limits, algorithm).unwrap();
        let redis = self.redis.reset(&key, limits, algorithm).await.unwrap();
        assert_eq!(memory, redis, "stores disagree on a reset of {key}");
        memory
    }

    /// Refunds in both stores.
    async fn refund(&self, key: &str, algorithm: Algorithm, limits: &[Limit], cost: u64) {
        let key = format!("{}{{{key}}}", self.prefix);
        let check = self.check_of(&key, algorithm, limits, cost);
        self.memory.refund(check).await.unwrap();
        self.redis.refund(check).await.unwrap();
    }
}

fn limits(rates: &[&str]) -> Vec<Limit> {
    rates
        .iter()
        .map(|r| Limit::new(r.parse().unwrap()))
        .collect()
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[tokio::test]
async fn every_algorithm_admits_exactly_the_limit_then_reports_an_honest_retry() {
    for algorithm in ALGORITHMS {
        let pair = Pair::new().await;
        let three = limits(&["3/s"]);
        for remaining in [2, 1, 0] {
            let d = pair.check("k", algorithm, &three, 1).await;
            assert_eq!(
                (d.allowed, d.remaining, d.retry_after),
                (true, remaining, None),
                "{algorithm:?}"
            );
        }
        let denied = pair.check("k", algorithm, &three, 1).await;
        assert!(!denied.allowed, "{algorithm:?}");
        let retry = denied.retry_after.unwrap();
        // A sliding window may wait into the next window for the previous one to fade.
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_secs(2),
            "{algorithm:?} {retry:?}"
        );
        // Not a moment earlier…
        let mut early = Pair {
            now_us: pair.now_us + retry.as_micros() as u64 - 1,
            ..pair
        };
        assert!(
            !early.check("k", algorithm, &three, 1).await.allowed,
            "{algorithm:?} early"
        );
        // …but then it is.
        early.advance(Duration::from_micros(1));
        assert!(
            early.check("k", algorithm, &three, 1).await.allowed,
            "{algorithm:?} on time"
        );
    }
}

#[tokio::test]
async fn the_fixed_window_opens_at_the_first_request_and_renews_when_it_ends() {
    let mut pair = Pair::new().await;
    let three = limits(&["3/s"]);
    let first = pair.check("k", Algorithm::FixedWindow, &three, 3).await;
    assert_eq!(first.reset_after, Duration::from_secs(1));
    pair.advance(ms(999));
    let last_ms = pair.check("k", Algorithm::FixedWindow, &three, 1).await;
    assert_eq!((last_ms.allowed, last_ms.retry_after), (false, Some(ms(1))));
    pair.advance(ms(1));
    let renewed = pair.check("k", Algorithm::FixedWindow, &three, 1).await;
    assert_eq!(
        (renewed.allowed, renewed.remaining, renewed.reset_after),
        (true, 2, ms(1000))
    );
}

#[tokio::test]
async fn keys_are_independent_and_costs_all_or_nothing() {
    for algorithm in ALGORITHMS {
        let pair = Pair::new().await;
        let five = limits(&["5/s"]);
        let d = pair.check("a", algorithm, &five, 3).await;
        assert_eq!((d.allowed, d.remaining), (true, 2), "{algorithm:?}");
        let d = pair.check("a", algorithm, &five, 3).await;
        assert_eq!(
            (d.allowed, d.remaining),
            (false, 2),
            "{algorithm:?}: a denial consumes nothing"
        );
        let d = pair.check("a", algorithm, &five, 2).await;
        assert_eq!((d.allowed, d.remaining), (true, 0), "{algorithm:?}");
        let other = pair.check("b", algorithm, &five, 1).await;
        assert_eq!((other.allowed, other.remaining), (true, 4), "{algorithm:?}");
    }
}

#[tokio::test]
async fn a_request_denied_by_one_limit_is_counted_by_none() {
    for algorithm in ALGORITHMS {
        let pair = Pair::new().await;
        let both = limits(&["2/s", "10/m"]);
        for _ in 0..2 {
            assert!(pair.check("k", algorithm, &both, 1).await.allowed);
        }
        let denied = pair.check("k", algorithm, &both, 1).await;
        assert_eq!(
            (denied.allowed, denied.limit),
            (false, 2),
            "{algorithm:?}: the per-second limit denies"
        );
        // The per-minute limit alone shows it spent 2, not 3.
        let minute = pair.check("k", algorithm, &limits(&["10/m"]), 1).await;
        assert_eq!(minute.remaining, 7, "{algorithm:?}");
    }
}

#[tokio::test]
async fn the_most_restrictive_limit_is_reported() {
    let mut pair = Pair::new().await;
    let both = limits(&["10/s", "12/m"]);
    let d = pair.check("k", Algorithm::FixedWindow, &both, 9).await;
    assert_eq!(
        (d.limit, d.remaining, d.window),
        (10, 1, Duration::from_secs(1))
    );
    pair.advance(ms(1000));
    let d = pair.check("k", Algorithm::FixedWindow, &both, 2).await;
    assert_eq!(
        (d.limit, d.remaining, d.window),
        (12, 1, Duration::from_secs(60))
    );
    let d = pair.check("k", Algorithm::FixedWindow, &both, 2).await;
    assert_eq!(
        (d.allowed, d.limit, d.retry_after),
        (false, 12, Some(ms(59_000)))
    );
}

#[tokio::test]
async fn a_check_with_no_or_too_many_limits_or_two_on_one_window_is_an_error() {
    let pair = Pair::new().await;
    let nine: Vec<_> = (1..=9)
        .map(|s| Limit::new(Rate::new(nz(5), Duration::from_secs(s)).unwrap()))
        .collect();
    // Counters are named by their window: these two would share one.
    let one_window = limits(&["5/m", "10/m"]);
    for limits in [&[][..], &nine[..], &one_window[..]] {
        let check = check("rl:p:{k}", limits, Algorithm::FixedWindow);
        for error in [
            pair.memory.check(check).await.unwrap_err(),
            pair.redis.check(check).await.unwrap_err(),
        ] {
            assert!(error.to_string().contains("limits"), "{error}");
        }
    }
}

/// The edge that motivates the other algorithms: `limit` just before a
/// window boundary and `limit` just after it.
#[tokio::test]
async fn only_the_fixed_window_admits_twice_the_limit_at_an_edge() {
    for algorithm in ALGORITHMS {
        let mut pair = Pair::new().await;
        let ten = limits(&["10/s"]);
        pair.check("k", algorithm, &ten, 1).await;
        pair.advance(ms(998));
        let mut admitted = 1;
        for _ in 0..2 {
            for _ in 0..12 {
                admitted += u64::from(pair.check("k", algorithm, &ten, 1).await.allowed);
            }
            pair.advance(ms(2));
        }
        // All of these fell within 3 ms.
        match algorithm {
            Algorithm::FixedWindow => assert_eq!(admitted, 20),
            _ => assert!(admitted <= 11, "{algorithm:?} admitted {admitted}"),
        }
    }
}

/// Sliding windows and GCRA keep their documented bounds whatever the
/// arrival pattern: in any span of one window, sliding admits at most twice
/// the limit; in any span `t`, GCRA admits at most `burst + t / T`.
#[test]
fn sliding_window_and_gcra_keep_their_bounds_under_random_load() {
    let runtime = current_thread();
    let steps = proptest::collection::vec(0u64..300, 20..150);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(16));
    runner
        .run(&(prop::bool::ANY, steps), |(gcra, steps)| {
            let algorithm = if gcra {
                Algorithm::Gcra
            } else {
                Algorithm::SlidingWindow
            };
            let admitted = runtime.block_on(async {
                let mut pair = Pair::new().await;
                let (start, ten) = (pair.now_us, limits(&["10/s"]));
                let mut admitted = Vec::new();
                for step in steps {
                    pair.advance(ms(step));
                    if pair.check("k", algorithm, &ten, 1).await.allowed {
                        admitted.push(pair.now_us - start);
                    }
                }
                admitted
            });
            for (i, &from) in admitted.iter().enumerate() {
                for span in [100_000u64, 500_000, 1_000_000] {
                    let within = admitted[i..]
                        .iter()
                        .take_while(|&&t| t < from + span)
                        .count() as u64;
                    // GCRA: burst + span / T with T = 100 ms. Sliding: twice the limit.
                    let bound = if gcra { 10 + span / 100_000 } else { 20 };
                    prop_assert!(
                        within <= bound,
                        "{:?}: {} in {} us",
                        algorithm,
                        within,
                        span
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Random sequences of (time step, key, cost), the same for both stores,
/// for every algorithm and a few limit sets: every decision must match.
#[test]
fn both_stores_make_identical_decisions_on_random_sequences() {
    let runtime = current_thread();
    let limit_sets = [
        vec![Limit::new(Rate::per_second(3))],
        vec![
            Limit::new("5/2s".parse().unwrap()),
            Limit::new(Rate::per_minute(12)),
        ],
        vec![
            Limit::new(Rate::per_second(4)).with_burst(nz(6)),
            Limit::new(Rate::per_minute(30)).with_burst(nz(2)),
        ],
    ];
    // Steps in microseconds, biased towards the edges where off-by-ones
    // live: the same instant, a few microseconds, around a window or an
    // emission interval, and anywhere.
    let step = prop_oneof![
        0u64..5,
        0u64..2_000,
        999_000u64..1_001_000,
        332_000u64..335_000,
        0u64..1_500_000,
    ];
    let op = (step, 0usize..3, 1u64..4);
    let sequence = proptest::collection::vec(op, 1..60);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(160));
    runner
        .run(&(0usize..3, 0usize..3, sequence), |(a, l, ops)| {
            let (algorithm, limits) = (ALGORITHMS[a], &limit_sets[l]);
            // Bursts are for GCRA only; other algorithms use the plain rates.
            let limits: Vec<_> = match algorithm {
                Algorithm::Gcra => limits.clone(),
                _ => limits.iter().map(|l| Limit::new(l.rate())).collect(),
            };
            runtime.block_on(async {
                let mut pair = Pair::new().await;
                for (step, key, cost) in ops {
                    pair.advance(Duration::from_micros(step));
                    pair.check(&format!("k{key}"), algorithm, &limits, cost)
                        .await;
                }
            });
            Ok(())
        })
        .unwrap();
}

/// With the store's own clock: Redis `TIME` inside the script, or Tokio's
/// (paused) clock for the memory store.
trait OwnClock {
    async fn check(&self, key: &str, rate: Rate, algorithm: Algorithm) -> Decision;
    async fn await_reset(&self, key: &str, decision: &Decision);
}

struct Memory(MemoryStore);

struct Redis(RedisStore, String);

async fn check_on(store: &impl Store, key: &str, rate: Rate, algorithm: Algorithm) -> Decision {
    let limits = [Limit::new(rate)];
    store.check(check(key, &limits, algorithm)).await.unwrap()
}

impl OwnClock for Memory {
    async fn check(&self, key: &str, rate: Rate, algorithm: Algorithm) -> Decision {
        check_on(&self.0, key, rate, algorithm).await
    }

    async fn await_reset(&self, _key: &str, decision: &Decision) {
        tokio::time::advance(decision.reset_after).await;
    }
}

impl OwnClock for Redis {
    async fn check(&self, key: &str, rate: Rate, algorithm: Algorithm) -> Decision {
        check_on(&self.0, &format!("{}{key}", self.1), rate, algorithm).await
    }

    /// Waits until Redis has expired the counter: the window is over.
    async fn await_reset(&self, key: &str, _decision: &Decision) {
        let key = format!("{}{key}", self.1);
        let limits = [Limit::new(Rate::per_second(1))];
        let key = counter_key(&check(&key, &limits, Algorithm::FixedWindow));
        let conn = inspect();
        eventually(Duration::from_secs(5), || {
            let (key, mut conn) = (key.clone(), conn.clone());
            async move {
                let exists: bool = redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                !exists
            }
        })
        .await;
    }
}

async fn the_window_expires_and_renews(store: &impl OwnClock) {
    let three = Rate::per_second(3);
    for _ in 0..3 {
        assert!(
            store
                .check("w", three, Algorithm::FixedWindow)
                .await
                .allowed
        );
    }
    let denied = store.check("w", three, Algorithm::FixedWindow).await;
    assert!(!denied.allowed);
    store.await_reset("w", &denied).await;
    let renewed = store.check("w", three, Algorithm::FixedWindow).await;
    assert_eq!((renewed.allowed, renewed.remaining), (true, 2));
}

async fn concurrent_requests_admit_exactly_the_limit(store: &impl OwnClock) {
    for algorithm in ALGORITHMS {
        // A hash tag, as the layer writes: on a Cluster, the sliding
        // window's two keys share its slot.
        let key = format!("{{many-{algorithm:?}}}");
        // All start before any is awaited, so the Redis store pipelines them.
        let decisions =
            join_all((0..200).map(|_| store.check(&key, Rate::per_minute(50), algorithm))).await;
        assert_eq!(
            decisions.iter().filter(|d| d.allowed).count(),
            50,
            "{algorithm:?}"
        );
    }
}

macro_rules! own_clock {
    ($($case:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test(start_paused = true)]
                async fn $case() {
                    super::$case(&super::Memory(super::MemoryStore::new())).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test]
                async fn $case() {
                    let store = super::redis().await;
                    super::$case(&super::Redis(store, super::unique_prefix())).await;
                }
            )*
        }
    };
}

own_clock!(
    the_window_expires_and_renews,
    concurrent_requests_admit_exactly_the_limit
);

fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// `Clock::App` with the app's clock two hours behind Redis's, or ahead of
/// it: Redis expires keys by its own clock, so an expiry written as an
/// instant of the app's clock would drop every counter at once (behind) or
/// keep it for hours (ahead). Skew may shift windows, never lift the limit.
#[tokio::test]
async fn an_app_clock_behind_or_ahead_of_redis_never_weakens_the_limit() {
    let two_hours = 2 * 3600 * 1_000_000u64;
    let redis = redis().await;
    for algorithm in ALGORITHMS {
        for skew in [-(two_hours as i64), -300_000, 300_000, two_hours as i64] {
            let client = format!("{}{{k}}", unique_prefix());
            let five = limits(&["5/m"]);
            let (mut admitted, mut key) = (0, String::new());
            for _ in 0..100 {
                let check = Charge {
                    key: &client,
                    limits: &five,
                    algorithm,
                    cost: 1,
                    now_us: Some(unix_now_us().saturating_add_signed(skew)),
                };
                admitted += u32::from(redis.check(check).await.unwrap().allowed);
                key = counter_key(&check);
            }
            assert_eq!(
                admitted, 5,
                "{algorithm:?} with the app clock {skew} us off"
            );
            // And the counter lives no longer than its algorithm needs.
            let ttl = pttl(&key).await;
            assert!(
                ttl > 0 && ttl <= 120_000,
                "{algorithm:?} {skew}: PTTL {ttl}"
            );
        }
    }
}

/// Two app servers whose clocks differ by 50 ms take turns around a window
/// boundary: the one behind must count in the newer window, not reset it.
#[tokio::test]
async fn app_servers_with_skewed_clocks_never_reset_each_others_windows() {
    for algorithm in ALGORITHMS {
        let mut pair = Pair::new().await;
        let five = limits(&["5/s"]);
        // 10 ms past a second boundary on the clock that is ahead.
        let ahead = pair.now_us + 10_000;
        let mut admitted = 0;
        for i in 0..40 {
            let skew = if i % 2 == 0 { 0 } else { 50_000 };
            pair.now_us = ahead + i * 1_000 - skew;
            admitted += u32::from(pair.check("k", algorithm, &five, 1).await.allowed);
        }
        assert_eq!(admitted, 5, "{algorithm:?}");
    }
}

/// A client whose clock is behind the sliding window it finds is told to
/// wait from its own clock: never less than the clock that is ahead says.
#[tokio::test]
async fn a_caller_behind_the_window_waits_on_its_own_clock() {
    let mut pair = Pair::new().await;
    let five = limits(&["5/s"]);
    let start = pair.now_us;
    pair.check("k", Algorithm::SlidingWindow, &five, 5).await;
    pair.now_us = start + 100_000;
    let ahead = pair.check("k", Algorithm::SlidingWindow, &five, 1).await;
    pair.now_us = start - 50_000;
    let behind = pair.check("k", Algorithm::SlidingWindow, &five, 1).await;
    assert!(!ahead.allowed && !behind.allowed);
    assert_eq!(
        behind.retry_after.unwrap(),
        ahead.retry_after.unwrap() + ms(150),
    );
}

/// A counter whose TTL was removed (PERSIST, a restore) gets one back from
/// the next request, allowed or denied, with every algorithm on either
/// clock. On Redis's clock a GCRA key's expiry is its clock: without it the
/// TAT is unknown, so it is read as a full bucket (the strictest reading,
/// for at most one tolerance) rather than an empty one.
#[tokio::test]
async fn every_algorithm_gives_a_persisted_counter_its_ttl_back() {
    let redis = redis().await;
    for algorithm in ALGORITHMS {
        for app_clock in [false, true] {
            let client = format!("{}{{k}}", unique_prefix());
            let three = limits(&["3/m"]);
            let check = |cost| Charge {
                cost,
                now_us: app_clock.then(unix_now_us),
                ..check(&client, &three, algorithm)
            };
            let what = format!("{algorithm:?}, app clock {app_clock}");
            let key = counter_key(&check(1));
            assert!(redis.check(check(1)).await.unwrap().allowed);
            persist(&key).await;
            let next = redis.check(check(1)).await.unwrap();
            assert!(pttl(&key).await > 0, "{what}: after a persist");
            if algorithm == Algorithm::Gcra && !app_clock {
                assert!(!next.allowed, "{what}");
                assert!(next.retry_after.unwrap() <= Duration::from_secs(60));
                continue;
            }
            assert!(next.allowed, "{what}");
            assert!(redis.check(check(1)).await.unwrap().allowed);
            persist(&key).await;
            assert!(!redis.check(check(1)).await.unwrap().allowed, "{what}");
            assert!(pttl(&key).await > 0, "{what}: denied");
        }
    }
    // The sliding window's previous count on Redis's clock too: restored
    // with its counter, both get an expiry back.
    let client = format!("{}{{k}}", unique_prefix());
    let three = limits(&["3/m"]);
    let sliding = check(&client, &three, Algorithm::SlidingWindow);
    let key = counter_key(&sliding);
    let previous = format!("{key}:prev");
    assert!(redis.check(sliding).await.unwrap().allowed);
    let _: bool = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(30_000)
        .query_async(&mut inspect())
        .await
        .unwrap();
    assert!(redis.check(sliding).await.unwrap().allowed);
    persist(&key).await;
    persist(&previous).await;
    assert!(redis.check(sliding).await.unwrap().allowed);
    assert!(pttl(&key).await > 0 && pttl(&previous).await > 0);
}

/// Through the public `Store` API, costs near `u64::MAX` are denied by both
/// stores alike (the memory store used to wrap around and admit them), and
/// limits beyond exact arithmetic are errors in both.
#[tokio::test]
async fn huge_costs_and_limits_get_the_same_answer_from_both_stores() {
    for algorithm in ALGORITHMS {
        let pair = Pair::new().await;
        let limits = match algorithm {
            Algorithm::Gcra => vec![Limit::new(Rate::per_second(10)).with_burst(nz(20))],
            _ => limits(&["10/s"]),
        };
        for cost in [1 << 62, 1 << 63, u64::MAX - 1, u64::MAX] {
            let d = pair.check("k", algorithm, &limits, cost).await;
            assert!(!d.allowed, "{algorithm:?} admitted cost {cost}");
        }
        assert!(
            pair.check("k", algorithm, &limits, 10).await.allowed,
            "{algorithm:?}"
        );
        let zero = Charge {
            cost: 0,
            ..check("rl:p:{z}", &limits, algorithm)
        };
        let huge = [Limit::new(Rate::per_day(1 << 40))];
        let too_large = Charge {
            limits: &huge,
            cost: 1,
            ..zero
        };
        for check in [zero, too_large] {
            for error in [
                pair.memory.check(check).await.unwrap_err(),
                pair.redis.check(check).await.unwrap_err(),
            ] {
                let error = error.to_string();
                assert!(
                    error.contains("cost") || error.contains("limits.rate"),
                    "{error}"
                );
            }
        }
    }
}

/// A refund gives back exactly what an allowed check counted, in both stores
/// alike: afterwards the key answers as if the request had never come, and
/// a refund never makes room beyond an empty counter.
#[tokio::test]
async fn a_refund_gives_back_exactly_what_was_counted() {
    for algorithm in ALGORITHMS {
        let mut pair = Pair::new().await;
        let both = limits(&["5/s", "20/m"]);
        // The reference key "j" sees only the first request, of cost 2.
        pair.check("k", algorithm, &both, 2).await;
        pair.check("j", algorithm, &both, 2).await;
        pair.advance(ms(100));
        let charged = pair.check("k", algorithm, &both, 3).await;
        assert!(charged.allowed, "{algorithm:?}");
        pair.refund("k", algorithm, &both, 3).await;
        let refunded = pair.check("k", algorithm, &both, 3).await;
        let reference = pair.check("j", algorithm, &both, 3).await;
        assert_eq!(refunded, reference, "{algorithm:?}");
        // Refunds beyond what was counted leave an empty counter, no credit.
        for _ in 0..5 {
            pair.refund("k", algorithm, &both, 5).await;
        }
        let fresh = pair.check("n", algorithm, &both, 5).await;
        assert_eq!(
            pair.check("k", algorithm, &both, 5).await.remaining,
            fresh.remaining
        );
        assert!(
            !pair.check("k", algorithm, &both, 1).await.allowed,
            "{algorithm:?}"
        );
        // A refund of a key that does not exist, or has expired, creates none.
        pair.refund("absent", algorithm, &both, 1).await;
        pair.advance(Duration::from_secs(180));
        pair.refund("k", algorithm, &both, 1).await;
        let after = pair.check("k", algorithm, &both, 5).await;
        assert_eq!((after.allowed, after.remaining), (true, 0), "{algorithm:?}");
    }
}

/// A peek (the script with a cost of 0) decides every limit and commits
/// nothing: on every algorithm both stores read the same figures, a key
/// peeked before each request gets exactly the decisions of a key never
/// peeked, each limit shows what the check just reported for it, and an
/// absent key shows the full limit.
#[tokio::test]
async fn peeking_never_changes_the_next_decision() {
    for algorithm in ALGORITHMS {
        let mut pair = Pair::new().await;
        let both = match algorithm {
            Algorithm::Gcra => vec![
                Limit::new(Rate::per_second(4)).with_burst(nz(6)),
                Limit::new(Rate::per_minute(30)),
            ],
            _ => limits(&["4/s", "30/m"]),
        };
        for (state, limit) in pair.peek("k", algorithm, &both).await.iter().zip(&both) {
            let capacity = limit.capacity(algorithm);
            assert_eq!(
                (state.limit, state.capacity, state.remaining, state.used),
                (*limit, capacity, capacity, 0),
                "{algorithm:?}: an absent key has its full limit"
            );
            assert_eq!(state.reset_after, Duration::ZERO, "{algorithm:?}");
        }
        for step in 0..40 {
            // Peeks a little before the requests, where a peek that
            // opened a window or moved a bucket would show.
            for _ in 0..3 {
                pair.peek("k", algorithm, &both).await;
            }
            pair.advance(ms(15));
            let peeked = pair.check("k", algorithm, &both, 1 + step % 2).await;
            let never = pair.check("j", algorithm, &both, 1 + step % 2).await;
            assert_eq!(peeked, never, "{algorithm:?} step {step}");
            let after = pair.peek("k", algorithm, &both).await;
            let reported = after
                .iter()
                .find(|s| s.limit.rate().window() == peeked.window)
                .unwrap();
            assert_eq!(
                reported.remaining, peeked.remaining,
                "{algorithm:?} step {step}"
            );
            assert_eq!(reported.used, reported.capacity - reported.remaining);
            pair.advance(ms(30));
        }
        // The keys were pushed to denials along the way: still identical.
        assert_eq!(
            pair.check("k", algorithm, &both, 1).await,
            pair.check("j", algorithm, &both, 1).await
        );
    }
}

/// A reset deletes a client's counters in both stores alike: its next
/// request is a fresh key's, another client's counters stay, and a second
/// reset finds nothing.
#[tokio::test]
async fn a_reset_starts_the_client_afresh_and_only_that_client() {
    for algorithm in ALGORITHMS {
        let pair = Pair::new().await;
        let both = limits(&["2/s", "10/m"]);
        for key in ["k", "other"] {
            pair.check(key, algorithm, &both, 2).await;
            assert!(!pair.check(key, algorithm, &both, 1).await.allowed);
        }
        assert_eq!(pair.reset("k", algorithm, &both).await, 2, "{algorithm:?}");
        let fresh = pair.check("fresh", algorithm, &both, 1).await;
        assert_eq!(pair.check("k", algorithm, &both, 1).await, fresh);
        assert!(!pair.check("other", algorithm, &both, 1).await.allowed);
        assert_eq!(pair.reset("never", algorithm, &both).await, 0);
    }
}

/// `GET` of `key`, parsed: `None` if absent.
async fn counter_value(key: &str) -> Option<i64> {
    let value = redis::cmd("GET").arg(key).query_async(&mut inspect()).await;
    value.unwrap()
}

/// The three algorithms on Redis's clock (`fixed_window.lua`,
/// `sliding_window.lua`, `gcra.lua`: each counter's expiry is its clock, no
/// clock is read) against
/// their twins in the memory store: random costs, refunds and peeks on a few
/// clients under one to three limits whose windows and emission intervals
/// are far longer than the test, so Redis's time plays no part but in the
/// time left, which counts down. Every answer agrees on admission and what
/// remains; Redis's reset and `Retry-After` are never later than the twin's
/// (whose time stands still) by more than the millisecond Redis's expiry
/// counts in, and never zero (but a reset where nothing is used); and
/// after every step each counter in Redis holds a valid value (a count,
/// positive for the fixed window; for GCRA the time from its TAT to its
/// expiry, never negative) and has an expiry. (No window ends during the
/// test: the sliding window's rollover has a test of its own.)
#[test]
fn every_algorithm_on_redis_clock_decides_as_its_twin() {
    let runtime = current_thread();
    let limit_sets = [
        limits(&["3/h"]),
        limits(&["5/h", "12/d"]),
        limits(&["2/m", "4/h", "7/d"]),
    ];
    // (client, cost, what: 0 and 1 check, 2 refund, 3 peek)
    let op = (0usize..3, 1u64..5, 0u8..4);
    let sequence = proptest::collection::vec(op, 1..40);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&(0usize..3, 0usize..3, sequence), |(a, l, ops)| {
            let algorithm = ALGORITHMS[a];
            let limits = &limit_sets[l];
            runtime.block_on(async {
                let (memory, redis, prefix) = (MemoryStore::new(), redis().await, unique_prefix());
                let now = Some(unix_now_us());
                let (ms, zero) = (Duration::from_millis(1), Duration::ZERO);
                for (client, cost, what) in ops {
                    let key = format!("{prefix}{{k{client}}}");
                    let on_redis = check(&key, limits, algorithm);
                    let charge = Charge { cost, ..on_redis };
                    let on_memory = Charge {
                        now_us: now,
                        ..charge
                    };
                    match what {
                        0 | 1 => {
                            let m = memory.check(on_memory).await.unwrap();
                            let r = redis.check(charge).await.unwrap();
                            let figures =
                                |d: &Decision| (d.allowed, d.remaining, d.limit, d.window);
                            assert_eq!(figures(&m), figures(&r), "{key} cost {cost}");
                            assert!(
                                r.reset_after <= m.reset_after + ms
                                    && (r.reset_after > zero || m.reset_after == zero),
                                "{key} cost {cost}: {m:?} {r:?}"
                            );
                            match (m.retry_after, r.retry_after) {
                                (None, None) => {}
                                (Some(m), Some(r)) => assert!(r > zero && r <= m + ms),
                                other => panic!("{key}: Retry-After {other:?}"),
                            }
                        }
                        2 => {
                            memory.refund(on_memory).await.unwrap();
                            redis.refund(charge).await.unwrap();
                        }
                        _ => {
                            let m = memory.peek(&key, limits, algorithm, now).unwrap();
                            let r = redis.peek(&key, limits, algorithm, None).await.unwrap();
                            let used = |s: &[LimitState]| -> Vec<(u64, u64)> {
                                s.iter().map(|s| (s.remaining, s.used)).collect()
                            };
                            assert_eq!(used(&m), used(&r), "peek of {key}");
                        }
                    }
                    for limit in limits {
                        let mut counter = String::new();
                        on_redis.counter_key(limit, &mut counter);
                        if let Some(value) = counter_value(&counter).await {
                            let least = i64::from(algorithm == Algorithm::FixedWindow);
                            assert!(value >= least, "{counter} holds {value}");
                            assert!(pttl(&counter).await > 0, "{counter} has no expiry");
                        }
                    }
                }
            });
            Ok(())
        })
        .unwrap();
}

/// On Redis's clock the fixed and sliding windows count first and take back
/// a denied request: a new client's request denied by any limit, or a cost
/// above the limit, leaves no counter behind, and a peek or a refund of a
/// client with no counters creates none.
#[tokio::test]
async fn a_denied_request_leaves_no_counter_behind_on_redis_clock() {
    for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
        denied_requests_leave_no_counter_behind(algorithm).await;
    }
}

async fn denied_requests_leave_no_counter_behind(algorithm: Algorithm) {
    let redis = redis().await;
    let client = format!("{}{{k}}", unique_prefix());
    let two = limits(&["5/h", "2/d"]);
    let keys: Vec<String> = two
        .iter()
        .flat_map(|limit| {
            let mut key = String::new();
            check(&client, &two, algorithm).counter_key(limit, &mut key);
            let previous = format!("{key}:prev");
            [key, previous]
        })
        .collect();
    let charge = |cost| Charge {
        cost,
        ..check(&client, &two, algorithm)
    };
    // Denied by the second limit alone: the first, with room, keeps nothing.
    assert!(!redis.check(charge(3)).await.unwrap().allowed);
    // Denied by both.
    assert!(!redis.check(charge(9)).await.unwrap().allowed);
    redis.peek(&client, &two, algorithm, None).await.unwrap();
    redis.refund(charge(1)).await.unwrap();
    for key in &keys {
        assert_eq!(counter_value(key).await, None, "{algorithm}: {key}");
    }
    // The mirror case: counters that exist are taken back to where they were.
    assert!(redis.check(charge(1)).await.unwrap().allowed);
    assert!(!redis.check(charge(2)).await.unwrap().allowed);
    let counters = keys.iter().filter(|k| !k.ends_with(":prev"));
    for key in counters.clone() {
        assert_eq!(counter_value(key).await, Some(1), "{algorithm}: {key}");
    }
    // A refund to nothing deletes the fixed window's counters: the next
    // request opens a new window. The sliding window's stay at 0 in their
    // window, whose end the next window's weight is counted from.
    redis.refund(charge(1)).await.unwrap();
    let emptied = (algorithm == Algorithm::SlidingWindow).then_some(0);
    for key in counters {
        assert_eq!(counter_value(key).await, emptied, "{algorithm}: {key}");
    }
}

/// On Redis's clock the sliding window's clock is its counter's expiry, one
/// window after the window's end, so a test moves time by moving that
/// expiry (`PEXPIRE`), as a window ending would, without waiting for it.
/// A counter whose window has ended is the previous count of the next
/// window: weighted by the time left, written beside the new counter
/// (`<counter>:prev`) when that window admits its first request, and
/// neither taken back by a refund nor lost by a denial.
#[tokio::test]
async fn the_sliding_window_on_redis_clock_rolls_over_by_its_counters_expiry() {
    let redis = redis().await;
    let client = format!("{}{{k}}", unique_prefix());
    let five = limits(&["5/s"]);
    let charge = |cost| Charge {
        cost,
        ..check(&client, &five, Algorithm::SlidingWindow)
    };
    let key = counter_key(&charge(1));
    let previous = format!("{key}:prev");
    let first = redis.check(charge(3)).await.unwrap();
    assert!(first.allowed && first.remaining == 2, "{first:?}");
    let ttl = pttl(&key).await;
    assert!(
        (1001..=2000).contains(&ttl),
        "a new counter lives two windows: {ttl}"
    );
    assert_eq!(pttl(&previous).await, -2);
    // The window ended 450 ms ago: its 3 weigh 3 × 0.55 (a few ms less as
    // Redis's time runs on).
    let expire = |key: String, ms: u64| async move {
        let set: bool = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(ms)
            .query_async(&mut inspect())
            .await
            .unwrap();
        assert!(set, "{key}");
    };
    expire(key.clone(), 550).await;
    let rolled = redis.check(charge(2)).await.unwrap();
    assert!(rolled.allowed && rolled.remaining == 1, "{rolled:?}");
    assert_eq!(counter_value(&key).await, Some(2));
    assert_eq!(counter_value(&previous).await, Some(3));
    let (key_ttl, previous_ttl) = (pttl(&key).await, pttl(&previous).await);
    assert!((1001..=1550).contains(&key_ttl), "{key_ttl}");
    assert!((1..=550).contains(&previous_ttl), "{previous_ttl}");
    // The mirror case: 3 × 0.55 + 2 + 2 is over 5. Denied, nothing moves,
    // and the wait is until the previous window's weight has fallen to 1:
    // 2/3 of the way through the window, under 550 ms from now.
    let denied = redis.check(charge(2)).await.unwrap();
    assert!(!denied.allowed, "{denied:?}");
    let retry = denied.retry_after.unwrap();
    assert!(retry > ms(0) && retry <= ms(550), "{retry:?}");
    assert_eq!(counter_value(&key).await, Some(2));
    assert_eq!(counter_value(&previous).await, Some(3));
    // A refund gives back in the current window only.
    redis.refund(charge(1)).await.unwrap();
    assert_eq!(counter_value(&key).await, Some(1));
    assert_eq!(counter_value(&previous).await, Some(3));
    expire(key.clone(), 300).await;
    redis.refund(charge(1)).await.unwrap();
    assert_eq!(
        counter_value(&key).await,
        Some(1),
        "its window ended: it stays"
    );
    // A denial where the window ended rolls nothing over; the next
    // admission does: the ended window's 1 becomes the previous count.
    assert!(!redis.check(charge(5)).await.unwrap().allowed);
    assert_eq!(counter_value(&key).await, Some(1));
    assert!(redis.check(charge(4)).await.unwrap().allowed);
    assert_eq!(counter_value(&key).await, Some(4));
    assert_eq!(counter_value(&previous).await, Some(1));
}

/// Lease mode on this topology: two app servers (each its own layer, lease
/// table and connection) share the key, under both windows. Requests in
/// turn admit exactly the limit across the two; a second key's unspent
/// slices go back at release, after which its counter holds exactly the
/// units admitted.
#[tokio::test]
async fn lease_mode_admits_exactly_the_limit_and_returns_every_unspent_unit() {
    use axum::body::Body;
    use axum_redis_ratelimit::{Key, Policy, RateLimitLayer};
    use http::{Request, Response, StatusCode};
    use tower::{Layer, ServiceExt, service_fn};

    for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
        let policy = Policy::new("telemetry")
            .rate(Rate::per_minute(40))
            .algorithm(algorithm)
            .key(Key::header("x-agent-token"))
            .prefix(unique_prefix())
            .lease(8)
            .lease_instances(2)
            .lease_idle_return(Duration::from_secs(60));
        let servers = [
            RateLimitLayer::new(policy.clone(), redis().await).unwrap(),
            RateLimitLayer::new(policy.clone(), redis().await).unwrap(),
        ];
        let send = |server: usize, agent: &'static str| {
            let handler = service_fn(|_: Request<Body>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
            });
            let request = Request::builder()
                .header("x-agent-token", agent)
                .body(Body::empty())
                .unwrap();
            let service = servers[server].layer(handler);
            async move { service.oneshot(request).await.unwrap().status() == StatusCode::OK }
        };
        let rate = limits(&["40/m"]);
        let counter = |agent: &str| {
            let client = policy.client_key(None, agent.as_bytes()).unwrap();
            counter_key(&check(&client, &rate, algorithm))
        };
        let mut admitted = 0;
        for i in 0..100 {
            admitted += u64::from(send(i % 2, "agent-a").await);
        }
        assert_eq!(admitted, 40, "{algorithm:?}");
        assert_eq!(counter_value(&counter("agent-a")).await, Some(40));
        // A busy key's slices grow past what it spends here: 30 requests
        // leave units held in both servers, which go back at release.
        for i in 0..30 {
            assert!(send(i % 2, "agent-b").await, "{algorithm:?}");
        }
        let local: u64 = servers.iter().map(|s| s.stats().lease_local()).sum();
        assert!(
            local > 0,
            "{algorithm:?}: no request was admitted from a slice"
        );
        for server in &servers {
            assert_eq!(server.release_leases().await.failed, 0);
        }
        assert_eq!(
            counter_value(&counter("agent-b")).await,
            Some(30),
            "{algorithm:?}: after the release"
        );
    }
}

/// `Retry-After` is never early on Redis's clock, tried the way a client
/// would: refused, it waits exactly the `retry_after` it was given, and is
/// admitted. Each counter's expiry is its clock, so waiting is moving every
/// expiry of the client back by that much (Redis's own time runs on too,
/// which only adds to the wait); five rounds per algorithm, each refused
/// afresh first.
#[tokio::test]
async fn a_client_retrying_when_told_is_admitted_on_redis_clock() {
    let redis = redis().await;
    for algorithm in ALGORITHMS {
        let client = format!("{}{{k}}", unique_prefix());
        let five = limits(&["5/s"]);
        let charge = check(&client, &five, algorithm);
        let counter = counter_key(&charge);
        let keys = [counter.clone(), format!("{counter}:prev")];
        for round in 0..5 {
            let mut denied = None;
            for _ in 0..10 {
                let decision = redis.check(charge).await.unwrap();
                if !decision.allowed {
                    denied = Some(decision);
                    break;
                }
            }
            let denied = denied.expect("ten requests of a 5/s limit");
            let wait = denied.retry_after.unwrap();
            // Redis's expiries count whole milliseconds, and so do the waits.
            assert_eq!(wait.as_micros() % 1000, 0, "{algorithm:?}: {wait:?}");
            let wait_ms = wait.as_millis() as i64;
            for key in &keys {
                let ttl = pttl(key).await;
                if ttl > wait_ms {
                    let _: bool = redis::cmd("PEXPIRE")
                        .arg(key)
                        .arg(ttl - wait_ms)
                        .query_async(&mut inspect())
                        .await
                        .unwrap();
                } else if ttl >= 0 {
                    let _: i64 = redis::cmd("DEL")
                        .arg(key)
                        .query_async(&mut inspect())
                        .await
                        .unwrap();
                }
            }
            let retried = redis.check(charge).await.unwrap();
            assert!(
                retried.allowed,
                "{algorithm:?}, round {round}: told to wait {wait:?}, refused again: {retried:?}"
            );
        }
    }
}
