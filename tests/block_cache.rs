//! The block cache: once Redis has denied a key, this app server answers
//! `429` for it by itself until the `Retry-After` has passed, and never with
//! a `Retry-After` earlier than Redis would give.

mod common;

use std::{sync::Arc, time::Duration};

use axum_redis_ratelimit::{
    Algorithm, Policy, RedisStore,
    config::{PolicyConfig, PolicyFile},
    layer::Stats,
};
use common::{
    EVENT_COUNT, HttpClient, RedisServer, Reply, TOKEN, batches, client_and_stats, evalsha_calls,
    eventually, reset_command_stats,
};
use http::StatusCode;

async fn app(server: &RedisServer, rate: &str) -> (HttpClient, Arc<Stats>) {
    serve_policy(
        server,
        batches(Algorithm::FixedWindow, rate).block_cache(1000),
    )
    .await
}

async fn serve_policy(server: &RedisServer, policy: Policy) -> (HttpClient, Arc<Stats>) {
    client_and_stats(policy, RedisStore::connect(server.url()).await.unwrap()).await
}

/// One policy served twice over the same Redis: with the block cache, and
/// without it as the reference for what Redis itself answers (a denied
/// request counts nothing, so asking the reference changes no counter).
struct Pair {
    cached: HttpClient,
    stats: Arc<Stats>,
    store: HttpClient,
}

impl Pair {
    /// `policy` with a block cache, and `reference`: the same without one.
    async fn new(server: &RedisServer, policy: Policy, reference: Policy) -> Pair {
        let (cached, stats) = serve_policy(server, policy).await;
        let (store, _) = serve_policy(server, reference).await;
        Pair {
            cached,
            stats,
            store,
        }
    }

    async fn send(http: &HttpClient, cost: u64) -> Reply {
        let cost = cost.to_string();
        http.post("/t", &[(TOKEN, b"agent"), (EVENT_COUNT, cost.as_bytes())])
            .await
    }

    /// A request of `cost` through the cache.
    async fn cached(&self, cost: u64) -> Reply {
        Self::send(&self.cached, cost).await
    }

    /// Asks the cached side for a denial of `cost` and checks its
    /// `Retry-After` against Redis's, asked just before and just after: a
    /// denial's true wait only shrinks as time passes, so the cached answer
    /// must lie between the two (within the second that `Retry-After`
    /// rounds up to), and above all never below the later one.
    async fn denied_like_the_store(&self, cost: u64) -> u64 {
        let before = retry_after(&Self::send(&self.store, cost).await);
        let cached = retry_after(&self.cached(cost).await);
        let after = retry_after(&Self::send(&self.store, cost).await);
        assert!(
            after <= cached,
            "cost {cost}: the cache says retry after {cached} s, Redis {after} s"
        );
        assert!(
            cached <= before + 1,
            "cost {cost}: the cache says retry after {cached} s, Redis {before} s"
        );
        cached
    }
}

fn retry_after(reply: &Reply) -> u64 {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    reply.header("retry-after").unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_flood_from_one_key_costs_redis_nothing_once_denied() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let (http, stats) = app(&server, "2/m").await;
    let mut conn = server.connection().await;
    assert_eq!(
        http.post("/t", &[(TOKEN, b"rogue")]).await.status,
        StatusCode::OK
    );
    reset_command_stats(&mut conn).await;

    assert_eq!(
        http.post("/t", &[(TOKEN, b"rogue")]).await.status,
        StatusCode::OK
    );
    let first = http.post("/t", &[(TOKEN, b"rogue")]).await;
    assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
    let mut previous: u64 = first.header("retry-after").unwrap().parse().unwrap();
    for _ in 0..50 {
        let reply = http.post("/t", &[(TOKEN, b"rogue")]).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            reply.header("ratelimit").unwrap().contains(";r=0;"),
            "{reply:?}"
        );
        let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (1..=previous).contains(&retry),
            "counts down: {retry} after {previous}"
        );
        previous = retry;
    }
    assert_eq!(
        evalsha_calls(&mut conn).await,
        2,
        "one allowed, one denied; the rest from the cache"
    );
    assert_eq!(stats.served_from_block_cache(), 50);
    // Other keys still go to Redis.
    assert_eq!(
        http.post("/t", &[(TOKEN, b"polite")]).await.status,
        StatusCode::OK
    );
    assert_eq!(evalsha_calls(&mut conn).await, 3);
}

#[tokio::test]
async fn the_store_is_asked_again_once_the_block_runs_out() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let (http, stats) = app(&server, "1/s").await;
    http.post("/t", &[(TOKEN, b"a")]).await;
    assert_eq!(
        http.post("/t", &[(TOKEN, b"a")]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    eventually(Duration::from_secs(5), || async {
        http.post("/t", &[(TOKEN, b"a")]).await.status == StatusCode::OK
    })
    .await;
    assert!(stats.served_from_block_cache() > 0);
}

#[tokio::test]
async fn a_cheaper_request_is_not_blocked_by_a_costlier_denial() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let (http, stats) = app(&server, "5/m").await;
    let batch = |n: &'static [u8]| {
        let http = http.clone();
        async move {
            http.post("/t", &[(TOKEN, b"a"), (EVENT_COUNT, n)])
                .await
                .status
        }
    };
    assert_eq!(batch(b"3").await, StatusCode::OK);
    assert_eq!(batch(b"3").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(batch(b"4").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(stats.served_from_block_cache(), 1);
    assert_eq!(
        batch(b"2").await,
        StatusCode::OK,
        "two still fit: Redis is asked"
    );
}

#[tokio::test]
async fn a_block_longer_than_the_cache_trusts_it_keeps_its_true_retry_after() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let policy = batches(Algorithm::FixedWindow, "1/h");
    let pair = Pair::new(&server, policy.clone().block_cache(1000), policy).await;
    assert_eq!(pair.cached(1).await.status, StatusCode::OK);
    let from_store = retry_after(&pair.cached(1).await);
    assert!(from_store > 3500, "{from_store}");
    let cached = pair.denied_like_the_store(1).await;
    assert_eq!(pair.stats.served_from_block_cache(), 1);
    assert!(cached > 3500, "{cached}");
}

/// A cost-10 request fills the limit, a cost-1 request is denied and
/// remembered, then a cost-10 one must wait as long as Redis says, not the
/// cost-1 request's wait.
async fn a_costlier_request_waits_as_long_as_the_store_says(algorithm: Algorithm) {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let policy = batches(algorithm, "10/m");
    let pair = Pair::new(&server, policy.clone().block_cache(1000), policy).await;
    assert_eq!(pair.cached(10).await.status, StatusCode::OK);
    retry_after(&pair.cached(1).await);
    pair.denied_like_the_store(10).await;
}

/// The mirror: the costlier denial is remembered, and a cheaper request
/// gets its own, shorter wait.
async fn a_cheaper_request_waits_as_long_as_the_store_says(algorithm: Algorithm) {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let policy = batches(algorithm, "10/m");
    let pair = Pair::new(&server, policy.clone().block_cache(1000), policy).await;
    assert_eq!(pair.cached(10).await.status, StatusCode::OK);
    let costly = retry_after(&pair.cached(10).await);
    let cheap = pair.denied_like_the_store(1).await;
    assert!(
        cheap <= costly,
        "{algorithm}: cost 1 {cheap} s, cost 10 {costly} s"
    );
}

/// A denial of cost 9 is remembered; a cost-2 request that still fits is
/// admitted and spends part of what was left, so cost 9 now waits longer
/// than the remembered denial said.
async fn an_admission_in_between_makes_the_store_answer(algorithm: Algorithm) {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let policy = batches(algorithm, "10/m");
    let pair = Pair::new(&server, policy.clone().block_cache(1000), policy).await;
    assert_eq!(pair.cached(2).await.status, StatusCode::OK);
    retry_after(&pair.cached(9).await);
    assert_eq!(pair.cached(2).await.status, StatusCode::OK);
    pair.denied_like_the_store(9).await;
}

#[tokio::test]
async fn fixed_window_admission_in_between() {
    an_admission_in_between_makes_the_store_answer(Algorithm::FixedWindow).await;
}

#[tokio::test]
async fn sliding_window_admission_in_between() {
    an_admission_in_between_makes_the_store_answer(Algorithm::SlidingWindow).await;
}

#[tokio::test]
async fn gcra_admission_in_between() {
    an_admission_in_between_makes_the_store_answer(Algorithm::Gcra).await;
}

#[tokio::test]
async fn fixed_window_costlier_after_cheaper() {
    a_costlier_request_waits_as_long_as_the_store_says(Algorithm::FixedWindow).await;
}

#[tokio::test]
async fn fixed_window_cheaper_after_costlier() {
    a_cheaper_request_waits_as_long_as_the_store_says(Algorithm::FixedWindow).await;
}

#[tokio::test]
async fn sliding_window_costlier_after_cheaper() {
    a_costlier_request_waits_as_long_as_the_store_says(Algorithm::SlidingWindow).await;
}

#[tokio::test]
async fn sliding_window_cheaper_after_costlier() {
    a_cheaper_request_waits_as_long_as_the_store_says(Algorithm::SlidingWindow).await;
}

#[tokio::test]
async fn gcra_costlier_after_cheaper() {
    a_costlier_request_waits_as_long_as_the_store_says(Algorithm::Gcra).await;
}

#[tokio::test]
async fn gcra_cheaper_after_costlier() {
    a_cheaper_request_waits_as_long_as_the_store_says(Algorithm::Gcra).await;
}

/// The shipped example's telemetry policy: GCRA, two limits, a burst of 20.
#[tokio::test]
async fn the_shipped_telemetry_policy_gives_a_batch_its_own_retry_after() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/edr-policies.toml"
    ))
    .unwrap();
    let file: PolicyFile = toml::from_str(&file).unwrap();
    let shipped = file.get("telemetry").unwrap().clone();
    assert!(shipped.block_cache.is_some());
    let mut reference: PolicyConfig = shipped.clone();
    reference.block_cache = None;
    let pair = Pair::new(&server, shipped.into_policy(), reference.into_policy()).await;
    assert_eq!(pair.cached(20).await.status, StatusCode::OK);
    assert_eq!(pair.cached(1).await.status, StatusCode::TOO_MANY_REQUESTS);
    pair.denied_like_the_store(20).await;
}
