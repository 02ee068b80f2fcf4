//! Lease mode against a real Redis: app servers take slices of a key's
//! quota and admit in-process; no window ever admits more than its limit
//! across them, unspent slices go back only into their own window, and a
//! release at shutdown leaves the counters holding exactly the units
//! admitted.

mod common;

use std::{sync::Arc, time::Duration};

use axum::{Router, routing::post};
use axum_redis_ratelimit::{
    Algorithm, Clock, Cost, Key, MemoryStore, Policy, RateLimitLayer, RedisStore, layer::Stats,
};
use common::{EVENT_COUNT, HttpClient, RedisServer, TOKEN, unique_prefix};
use http::StatusCode;

/// One app server: its own layer over its own Redis connection.
struct Instance {
    layer: RateLimitLayer<RedisStore>,
    http: HttpClient,
}

impl Instance {
    async fn new(policy: Policy) -> Self {
        let store = RedisStore::connect(RedisServer::shared().url())
            .await
            .unwrap();
        let layer = RateLimitLayer::new(policy, store).unwrap();
        let app = Router::new()
            .route("/t", post(|| async { "queued" }))
            .layer(layer.clone());
        Self {
            layer,
            http: HttpClient::in_process(app),
        }
    }

    fn stats(&self) -> Arc<Stats> {
        self.layer.stats()
    }

    /// A request of `agent` costing `cost`: whether it was admitted.
    async fn send(&self, agent: &str, cost: u64) -> bool {
        let cost = cost.to_string();
        let reply = self
            .http
            .post(
                "/t",
                &[(TOKEN, agent.as_bytes()), (EVENT_COUNT, cost.as_bytes())],
            )
            .await;
        match reply.status {
            StatusCode::OK => true,
            StatusCode::TOO_MANY_REQUESTS => false,
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
}

/// A leasing policy over `rate`, a request costing its `X-Event-Count`.
fn leasing(algorithm: Algorithm, rate: &str, max_slice: u64) -> Policy {
    Policy::new("telemetry")
        .rate(rate.parse().unwrap())
        .algorithm(algorithm)
        .key(Key::header(TOKEN))
        .cost(Cost::header(EVENT_COUNT))
        .prefix(unique_prefix())
        .lease(max_slice)
}

/// The counter of `agent` under `policy`'s only limit, as Redis holds it:
/// the count (the fixed window's integer, the sliding window's `c`).
async fn counter(policy: &Policy, agent: &str) -> u64 {
    let limit = policy.limits().next().unwrap();
    let client = policy.client_key(None, agent.as_bytes()).unwrap();
    let window = limit.rate().window().as_secs();
    let mut conn = RedisServer::shared().connection().await;
    match policy.settings().algorithm {
        Algorithm::SlidingWindow => {
            let count: Option<u64> = redis::cmd("HGET")
                .arg(format!("{client}:{window}:sliding"))
                .arg("c")
                .query_async(&mut conn)
                .await
                .unwrap();
            count.unwrap_or(0)
        }
        _ => {
            let count: Option<u64> = redis::cmd("GET")
                .arg(format!("{client}:{window}:fixed"))
                .query_async(&mut conn)
                .await
                .unwrap();
            count.unwrap_or(0)
        }
    }
}

const WINDOWS: [Algorithm; 2] = [Algorithm::FixedWindow, Algorithm::SlidingWindow];

#[tokio::test]
async fn one_instance_admits_exactly_the_limit_with_few_redis_calls() {
    for algorithm in WINDOWS {
        let policy = leasing(algorithm, "100/m", 16);
        let one = Instance::new(policy.clone()).await;
        let mut admitted = 0;
        for _ in 0..150 {
            admitted += u64::from(one.send("agent", 1).await);
        }
        assert_eq!(admitted, 100, "{algorithm:?}");
        assert_eq!(counter(&policy, "agent").await, 100, "{algorithm:?}");
        let stats = one.stats();
        // Slices of 1, 4, then 16 units: 8 grants for the 100 admitted,
        // then one call per denial (no block cache here).
        assert_eq!(stats.lease_units_granted(), 100, "{algorithm:?}");
        assert_eq!(stats.lease_grants(), 8 + 50, "{algorithm:?}");
        assert_eq!(stats.lease_local(), 100 - 8, "{algorithm:?}");
        let released = one.layer.release_leases().await;
        assert_eq!(
            released.units, 0,
            "{algorithm:?}: nothing left to give back"
        );
    }
}

#[tokio::test]
async fn a_release_leaves_the_counter_at_the_units_admitted() {
    for algorithm in WINDOWS {
        let policy = leasing(algorithm, "1000/m", 64).lease_idle_return(Duration::from_secs(60));
        let one = Instance::new(policy.clone()).await;
        for _ in 0..30 {
            assert!(one.send("agent", 1).await);
        }
        let held = counter(&policy, "agent").await;
        assert!(held > 30, "{algorithm:?}: slices were taken ahead ({held})");
        let released = one.layer.release_leases().await;
        assert_eq!(released.units, held - 30, "{algorithm:?}");
        assert_eq!(released.credited, held - 30, "{algorithm:?}");
        assert_eq!(counter(&policy, "agent").await, 30, "{algorithm:?}");
    }
}

#[tokio::test]
async fn leasing_is_refused_where_it_cannot_hold_its_bound() {
    let store = RedisStore::connect(RedisServer::shared().url())
        .await
        .unwrap();
    let refused = |policy: Policy| {
        RateLimitLayer::new(policy, store.clone())
            .unwrap_err()
            .to_string()
    };
    let gcra = refused(leasing(Algorithm::Gcra, "10/s", 8));
    assert!(gcra.contains("policies.telemetry.lease"), "{gcra}");
    assert!(
        gcra.contains("gcra") && gcra.contains("no window"),
        "{gcra}"
    );
    let app_clock = refused(leasing(Algorithm::FixedWindow, "10/s", 8).clock(Clock::App));
    assert!(
        app_clock.contains("policies.telemetry.lease"),
        "{app_clock}"
    );
    let zero = refused(leasing(Algorithm::FixedWindow, "10/s", 0));
    assert!(
        zero.contains("policies.telemetry.lease.max_slice"),
        "{zero}"
    );
    let instances = refused(leasing(Algorithm::FixedWindow, "10/s", 8).lease_instances(0));
    assert!(instances.contains("lease.instances"), "{instances}");
    let idle =
        refused(leasing(Algorithm::FixedWindow, "10/s", 8).lease_idle_return(Duration::ZERO));
    assert!(idle.contains("lease.idle_return_ms"), "{idle}");
    let memory = RateLimitLayer::new(
        leasing(Algorithm::FixedWindow, "10/s", 8),
        MemoryStore::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(memory.contains("policies.telemetry.lease"), "{memory}");
}
