//! One suite, two stores: the Redis store and the memory store must make the
//! same decisions. Each case runs against both (modules `memory_store` and
//! `redis_store` below). The memory store runs on Tokio's paused clock; the Redis
//! store on Redis's own clock, with one-second windows whose end the tests
//! await.

mod common;

use std::time::Duration;

use axum_redis_ratelimit::{
    Algorithm, Decision, MemoryStore, Rate, RedisStore,
    store::{Check, Store},
};
use common::{RedisServer, eventually, unique_prefix};
use futures::future::join_all;

trait Backend {
    async fn check(&self, key: &str, rate: Rate, cost: u64) -> Decision;
    /// Returns once the window of `key` has ended.
    async fn await_reset(&self, key: &str, decision: &Decision);
}

struct Memory {
    store: MemoryStore,
}

struct Redis {
    store: RedisStore,
    server: &'static RedisServer,
    prefix: String,
}

impl Memory {
    fn new() -> Self {
        Self {
            store: MemoryStore::new(),
        }
    }
}

impl Redis {
    async fn new() -> Self {
        let server = RedisServer::shared();
        Self {
            store: RedisStore::connect(server.url()).await.unwrap(),
            server,
            prefix: unique_prefix(),
        }
    }
}

async fn check_on(store: &impl Store, key: &str, rate: Rate, cost: u64) -> Decision {
    store
        .check(Check {
            key,
            rate,
            algorithm: Algorithm::FixedWindow,
            cost,
        })
        .await
        .unwrap()
}

impl Backend for Memory {
    async fn check(&self, key: &str, rate: Rate, cost: u64) -> Decision {
        check_on(&self.store, key, rate, cost).await
    }

    async fn await_reset(&self, _key: &str, decision: &Decision) {
        tokio::time::advance(decision.reset_after).await;
    }
}

impl Backend for Redis {
    async fn check(&self, key: &str, rate: Rate, cost: u64) -> Decision {
        check_on(&self.store, &format!("{}{key}", self.prefix), rate, cost).await
    }

    async fn await_reset(&self, key: &str, _decision: &Decision) {
        let key = format!("{}{key}", self.prefix);
        let conn = self.server.connection().await;
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

const THREE_PER_SECOND: Rate = Rate::per_second(3);

async fn admits_exactly_the_limit_then_denies(b: &impl Backend) {
    for remaining in [2, 1, 0] {
        let d = b.check("k", THREE_PER_SECOND, 1).await;
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (3, remaining));
        assert!(d.reset_after <= Duration::from_secs(1) && d.retry_after().is_none());
    }
    for _ in 0..5 {
        let d = b.check("k", THREE_PER_SECOND, 1).await;
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        let retry = d.retry_after().unwrap();
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_secs(1),
            "{retry:?}"
        );
        assert_eq!(retry, d.reset_after);
    }
}

async fn keys_are_independent(b: &impl Backend) {
    for _ in 0..3 {
        assert!(b.check("a", THREE_PER_SECOND, 1).await.allowed);
    }
    assert!(!b.check("a", THREE_PER_SECOND, 1).await.allowed);
    let other = b.check("b", THREE_PER_SECOND, 1).await;
    assert!(other.allowed);
    assert_eq!(other.remaining, 2);
}

async fn the_window_expires_and_renews(b: &impl Backend) {
    let first = b.check("w", THREE_PER_SECOND, 3).await;
    assert!(first.allowed);
    let denied = b.check("w", THREE_PER_SECOND, 1).await;
    assert!(!denied.allowed);
    assert!(
        denied.reset_after <= first.reset_after,
        "denials never extend the window"
    );
    b.await_reset("w", &denied).await;
    let renewed = b.check("w", THREE_PER_SECOND, 1).await;
    assert!(renewed.allowed);
    assert_eq!(renewed.remaining, 2);
}

async fn cost_is_counted_all_or_nothing(b: &impl Backend) {
    let five = Rate::per_second(5);
    let d = b.check("c", five, 3).await;
    assert!(d.allowed && d.remaining == 2);
    let d = b.check("c", five, 3).await;
    assert!(
        !d.allowed && d.remaining == 2,
        "a denied cost consumes nothing: {d:?}"
    );
    let d = b.check("c", five, 2).await;
    assert!(d.allowed && d.remaining == 0);
}

async fn concurrent_requests_admit_exactly_the_limit(b: &impl Backend) {
    let rate = Rate::per_minute(50);
    // All start before any is awaited, so the Redis store pipelines them.
    let decisions = join_all((0..200).map(|_| b.check("many", rate, 1))).await;
    let allowed = decisions.iter().filter(|d| d.allowed).count();
    assert_eq!(allowed, 50);
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test(start_paused = true)]
                async fn $case() {
                    super::$case(&super::Memory::new()).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::Redis::new().await).await;
                }
            )*
        }
    };
}

conformance!(
    admits_exactly_the_limit_then_denies,
    keys_are_independent,
    the_window_expires_and_renews,
    cost_is_counted_all_or_nothing,
    concurrent_requests_admit_exactly_the_limit,
);
