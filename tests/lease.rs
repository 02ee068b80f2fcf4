//! Lease mode against a real Redis: app servers take slices of a key's
//! quota and admit in-process; no window ever admits more than its limit
//! across them, unspent slices go back only into their own window, and a
//! release at shutdown leaves the counters holding exactly the units
//! admitted.

mod common;

use std::{sync::Arc, time::Duration};

use axum::{Router, routing::post};
use axum_redis_ratelimit::{
    Algorithm, Clock, Cost, FailMode, Key, Limit, MemoryStore, Outcome, Policy, RateLimitLayer,
    RedisStore, layer::Stats,
};
use common::{
    EVENT_COUNT, HttpClient, RedisServer, Reply, TOKEN, check, counter_key, eventually,
    keys_with_prefix, serve,
    topology::{LIMITER_ACL, create_user, url_with_user},
    unique_prefix, within,
};
use futures::future::join_all;
use http::StatusCode;

/// One app server: its own layer over its own Redis connection.
struct Instance {
    layer: RateLimitLayer<RedisStore>,
    http: HttpClient,
}

impl Instance {
    /// In-process, on the harness's shared Redis.
    async fn new(policy: Policy) -> Self {
        Self::on(RedisServer::shared(), policy).await
    }

    /// In-process, on `server`.
    async fn on(server: &RedisServer, policy: Policy) -> Self {
        Self::at(server.url(), policy).await
    }

    /// In-process, on the Redis at `url`.
    async fn at(url: &str, policy: Policy) -> Self {
        let store = RedisStore::connect(url).await.unwrap();
        let layer = RateLimitLayer::new(policy, store).unwrap();
        Self {
            http: HttpClient::in_process(router(&layer)),
            layer,
        }
    }

    /// Served over a socket, as a separate app server would be.
    async fn served(policy: Policy) -> Self {
        let store = RedisStore::connect(RedisServer::shared().url())
            .await
            .unwrap();
        let layer = RateLimitLayer::new(policy, store).unwrap();
        Self {
            http: HttpClient::new(&serve(router(&layer)).await),
            layer,
        }
    }

    async fn post(&self, agent: &str, cost: u64) -> Reply {
        let cost = cost.to_string();
        let headers = [(TOKEN, agent.as_bytes()), (EVENT_COUNT, cost.as_bytes())];
        within(Duration::from_secs(10), self.http.post("/t", &headers)).await
    }

    fn stats(&self) -> Arc<Stats> {
        self.layer.stats()
    }

    /// A request of `agent` costing `cost`: whether it was admitted.
    async fn send(&self, agent: &str, cost: u64) -> bool {
        let reply = self.post(agent, cost).await;
        match reply.status {
            StatusCode::OK => true,
            StatusCode::TOO_MANY_REQUESTS => false,
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
}

fn router(layer: &RateLimitLayer<RedisStore>) -> Router {
    Router::new()
        .route("/t", post(|| async { "queued" }))
        .layer(layer.clone())
}

/// Five requests of `agent` to `one`: slices of 1 until the key has spent 4
/// in this app server (its pace is trusted then), then of 4, 3 of which
/// are left over; 8 counted in Redis.
async fn warm_up(one: &Instance, agent: &str) {
    for _ in 0..5 {
        assert!(one.send(agent, 1).await);
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
/// the count of its window (both windows' counters are integers).
async fn counter(policy: &Policy, agent: &str) -> u64 {
    let limits: Vec<Limit> = policy.limits().collect();
    let client = policy.client_key(None, agent.as_bytes()).unwrap();
    let key = counter_key(&check(&client, &limits, policy.settings().algorithm));
    let mut conn = RedisServer::shared().connection().await;
    let count: Option<u64> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    count.unwrap_or(0)
}

const WINDOWS: [Algorithm; 2] = [Algorithm::FixedWindow, Algorithm::SlidingWindow];

/// The most limits a policy may have, each leased: every grant's reply holds
/// every limit's figures, and the tightest limit is the one that binds.
#[tokio::test]
async fn a_policy_with_the_most_limits_leases_and_binds_at_the_tightest() {
    for algorithm in WINDOWS {
        let mut policy = leasing(algorithm, "12/s", 8).lease_idle_return(Duration::from_secs(60));
        for rate in [
            "1000/2s", "1000/3s", "1000/m", "1000/h", "1000/d", "1000/2d", "1000/3d",
        ] {
            policy = policy.rate(rate.parse().unwrap());
        }
        let one = Instance::new(policy.clone()).await;
        let mut admitted = 0;
        for _ in 0..30 {
            admitted += u64::from(one.send("agent", 1).await);
        }
        assert_eq!(admitted, 12, "{algorithm:?}");
        assert_eq!(one.stats().store_errors(), 0, "{algorithm:?}");
        assert!(
            one.stats().lease_local() > 0,
            "{algorithm:?}: slices were spent"
        );
    }
}

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
        // Slices of 1 until the key has spent 4 here (its pace is trusted
        // then), of 4, then of 16 (the last one what is left): 11 grants for
        // the 100 admitted, then one call per denial (no block cache here).
        assert_eq!(stats.lease_units_granted(), 100, "{algorithm:?}");
        assert_eq!(stats.lease_grants(), 11 + 50, "{algorithm:?}");
        assert_eq!(stats.lease_local(), 100 - 11, "{algorithm:?}");
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

#[tokio::test]
async fn an_idle_slice_goes_back_by_itself() {
    for algorithm in WINDOWS {
        let policy = leasing(algorithm, "1000/m", 64).lease_idle_return(Duration::from_millis(50));
        let one = Instance::new(policy.clone()).await;
        warm_up(&one, "agent").await;
        eventually(Duration::from_secs(10), || async {
            counter(&policy, "agent").await == 5
        })
        .await;
        let stats = one.stats();
        assert_eq!(stats.lease_units_returned(), 3, "{algorithm:?}");
        assert!(stats.lease_returns() >= 1);
        assert_eq!(one.layer.release_leases().await.units, 0);
    }
}

#[tokio::test]
async fn an_evicted_slice_goes_back_first() {
    let policy = leasing(Algorithm::FixedWindow, "1000/m", 64)
        .lease_capacity(1)
        .lease_idle_return(Duration::from_secs(60));
    let one = Instance::new(policy.clone()).await;
    warm_up(&one, "a").await;
    assert_eq!(counter(&policy, "a").await, 8);
    // The table holds one key: b's slot evicts a's, whose 3 units go back.
    assert!(one.send("b", 1).await);
    eventually(Duration::from_secs(10), || async {
        counter(&policy, "a").await == 5
    })
    .await;
    assert_eq!(one.stats().lease_units_returned(), 3);
}

/// Waits until the window the units were granted in is over: for the fixed
/// window, Redis has expired its counter; for the sliding window, its
/// counter has at most a window to live (it then holds the previous count).
async fn until_the_window_rolls(policy: &Policy, agent: &str) {
    let limit = policy.limits().next().unwrap();
    let window_ms = limit.rate().window().as_millis() as i64;
    let client = policy.client_key(None, agent.as_bytes()).unwrap();
    let key = format!("{client}:{}:sliding", window_ms / 1000);
    eventually(Duration::from_secs(10), || async {
        match policy.settings().algorithm {
            Algorithm::SlidingWindow => {
                let mut conn = RedisServer::shared().connection().await;
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                ttl <= window_ms
            }
            _ => counter(policy, agent).await == 0,
        }
    })
    .await;
}

#[tokio::test]
async fn a_give_back_after_its_window_rolled_over_credits_nothing() {
    for algorithm in WINDOWS {
        let policy = leasing(algorithm, "20/s", 64).lease_idle_return(Duration::from_secs(60));
        let first = Instance::new(policy.clone()).await;
        let second = Instance::new(policy.clone()).await;
        warm_up(&first, "agent").await;
        until_the_window_rolls(&policy, "agent").await;
        // A new window, counted by the second app server.
        assert!(second.send("agent", 1).await);
        assert_eq!(counter(&policy, "agent").await, 1, "{algorithm:?}");
        // The first gives back its 3 unspent units of the old window.
        let released = first.layer.release_leases().await;
        assert_eq!((released.units, released.credited), (3, 0), "{algorithm:?}");
        assert_eq!(
            counter(&policy, "agent").await,
            1,
            "{algorithm:?}: not credited"
        );
        assert_eq!(first.stats().lease_units_dropped(), 3);
    }
}

#[tokio::test]
async fn a_cost_above_the_slice_asks_redis_and_never_admits_on_credit() {
    for algorithm in WINDOWS {
        let policy = leasing(algorithm, "20/m", 4).lease_idle_return(Duration::from_secs(60));
        let one = Instance::new(policy.clone()).await;
        warm_up(&one, "agent").await;
        assert_eq!(counter(&policy, "agent").await, 8);
        // 16 > the 3 held: they are handed in with a call for 16, which
        // 20 − 5 cannot grant. Denied, and the 3 are back in Redis.
        assert!(!one.send("agent", 16).await);
        assert_eq!(counter(&policy, "agent").await, 5, "{algorithm:?}");
        // 15, above the largest slice: exactly 15 granted.
        assert!(one.send("agent", 15).await);
        assert_eq!(counter(&policy, "agent").await, 20, "{algorithm:?}");
        assert!(!one.send("agent", 1).await);
        // A cost above the limit is refused before any store call.
        let reply = one.post("agent", 21).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}

#[tokio::test]
async fn a_crashed_app_server_loses_at_most_its_slice() {
    for algorithm in WINDOWS {
        let policy = leasing(algorithm, "100/m", 16).lease_idle_return(Duration::from_secs(60));
        let crashing = Instance::new(policy.clone()).await;
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += u64::from(crashing.send("agent", 1).await);
        }
        let held = counter(&policy, "agent").await - admitted;
        assert!(held > 0 && held <= 16, "{algorithm:?}: {held}");
        // Gone without a release, as a crash: its slice stays counted.
        drop(crashing);
        let survivor = Instance::new(policy.clone()).await;
        for _ in 0..200 {
            admitted += u64::from(survivor.send("agent", 1).await);
        }
        assert_eq!(admitted, 100 - held, "{algorithm:?}");
        assert_eq!(counter(&policy, "agent").await, 100);
    }
}

/// A policy's counters as Redis holds them: each key's `DUMP` and its
/// expiry (`PEXPIRETIME`, ms since the epoch).
type Snapshot = Vec<(String, Vec<u8>, i64)>;

async fn snapshot(policy: &Policy) -> Snapshot {
    let mut conn = RedisServer::shared().connection().await;
    let mut taken = Vec::new();
    for key in keys_with_prefix(policy.counter_pattern().trim_end_matches('*')).await {
        let (dump, expiry): (Vec<u8>, i64) = redis::pipe()
            .cmd("DUMP")
            .arg(&key)
            .cmd("PEXPIRETIME")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        taken.push((key, dump, expiry));
    }
    taken
}

/// Puts `policy`'s counters back as `snapshot` holds them, as a replica
/// promoted then would: the same values and the same absolute expiries
/// (replicas receive expiries as `PEXPIREAT`); a counter made since is gone.
async fn roll_back(policy: &Policy, snapshot: &Snapshot) {
    let mut conn = RedisServer::shared().connection().await;
    for key in keys_with_prefix(policy.counter_pattern().trim_end_matches('*')).await {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for (key, dump, expiry) in snapshot {
        assert!(*expiry > 0, "{key} has an expiry");
        let _: () = redis::cmd("RESTORE")
            .arg(key)
            .arg(expiry)
            .arg(dump)
            .arg("REPLACE")
            .arg("ABSTTL")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// A Redis failover that loses the writes not yet replicated, modelled on
/// the harness's server: the counters go back to what a replica promoted
/// at the snapshot holds, while the two app servers keep every slice they
/// were granted since. The README's bound: the window admits at most the
/// limit plus the grants forgotten, and those are at most the units
/// admitted between the snapshot and the failover plus one slice per app
/// server held unspent.
#[tokio::test]
async fn a_failover_that_loses_writes_costs_at_most_the_forgotten_grants() {
    for algorithm in WINDOWS {
        let max_slice = 8;
        let policy = leasing(algorithm, "100/h", max_slice)
            .lease_instances(2)
            .lease_idle_return(Duration::from_secs(3600));
        let servers = [
            Instance::new(policy.clone()).await,
            Instance::new(policy.clone()).await,
        ];
        let mut admitted = 0;
        for i in 0..30 {
            admitted += u64::from(servers[i % 2].send("agent", 1).await);
        }
        let replicated = snapshot(&policy).await;
        let counted = counter(&policy, "agent").await;
        // Acknowledged by the primary, never replicated.
        let mut in_the_lag = 0;
        for i in 0..25 {
            in_the_lag += u64::from(servers[i % 2].send("agent", 1).await);
        }
        let forgotten = counter(&policy, "agent").await - counted;
        roll_back(&policy, &replicated).await;
        assert_eq!(counter(&policy, "agent").await, counted, "{algorithm:?}");
        admitted += in_the_lag;
        let mut refused_in_a_row = 0;
        for i in 0..400 {
            if servers[i % 2].send("agent", 1).await {
                admitted += 1;
                refused_in_a_row = 0;
            } else {
                refused_in_a_row += 1;
            }
        }
        assert_eq!(in_the_lag, 25, "{algorithm:?}");
        // The failover did forget grants (25 requests on two servers with
        // slices of at most 8 take at least one each)…
        assert!(forgotten >= 2, "{algorithm:?}: {forgotten} forgotten");
        // …at most the units admitted meanwhile and a slice per server…
        assert!(
            forgotten <= in_the_lag + 2 * max_slice,
            "{algorithm:?}: {forgotten} forgotten, {in_the_lag} admitted meanwhile"
        );
        // …and the window admits no more than the limit and those.
        assert!(
            admitted <= 100 + forgotten,
            "{algorithm:?}: {admitted} admitted, {forgotten} forgotten"
        );
        // It still binds: the key ends refused, with the limit reached.
        assert!(refused_in_a_row > 100, "{algorithm:?}");
        assert!(admitted >= 100, "{algorithm:?}: {admitted}");
    }
}

/// Requests sent to `servers` in turn, all at once.
async fn burst(servers: &[Instance], n: usize, agent: &str) -> u64 {
    let sent = (0..n).map(|i| servers[i % servers.len()].send(agent, 1));
    join_all(sent).await.into_iter().map(u64::from).sum()
}

#[tokio::test]
async fn two_app_servers_admit_exactly_the_limit() {
    for algorithm in WINDOWS {
        let policy = leasing(algorithm, "100/m", 8)
            .lease_instances(2)
            .lease_idle_return(Duration::from_secs(60));
        let servers = [
            Instance::served(policy.clone()).await,
            Instance::served(policy.clone()).await,
        ];
        let mut admitted = burst(&servers, 300, "agent").await;
        // Every request was decided by Redis or a slice: none waited in a
        // queue of grants until the policy's timeout called it a store
        // failure (the fail mode would have admitted it).
        let errors: u64 = servers.iter().map(|s| s.stats().store_errors()).sum();
        assert_eq!(errors, 0, "{algorithm:?}");
        assert!(admitted <= 100, "{algorithm:?}: {admitted}");
        // What one server still holds, it admits; a server Redis refuses
        // holds nothing. Once both are refused, every unit was spent.
        let (mut refused_in_a_row, mut sent) = (0, 300);
        for i in 0.. {
            sent += 1;
            if servers[i % 2].send("agent", 1).await {
                admitted += 1;
                refused_in_a_row = 0;
            } else {
                refused_in_a_row += 1;
            }
            if refused_in_a_row == 2 {
                break;
            }
        }
        assert_eq!(admitted, 100, "{algorithm:?}");
        assert_eq!(counter(&policy, "agent").await, 100, "{algorithm:?}");
        // A request asks Redis once at most (a grant for its slot, or its
        // cost alone once it has waited long enough for others' grants).
        let grants: u64 = servers.iter().map(|s| s.stats().lease_grants()).sum();
        assert!(
            grants <= sent,
            "{algorithm:?}: {grants} calls for {sent} requests"
        );
    }
}

#[tokio::test]
async fn the_block_cache_answers_the_denials_of_a_leased_key() {
    let policy = leasing(Algorithm::FixedWindow, "20/m", 8).block_cache(100);
    let one = Instance::new(policy).await;
    let mut admitted = 0;
    for _ in 0..25 {
        admitted += u64::from(one.send("agent", 1).await);
    }
    assert_eq!(admitted, 20);
    let stats = one.stats();
    let grants = stats.lease_grants();
    for _ in 0..50 {
        let reply = one.post("agent", 1).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(reply.header("retry-after").is_some());
    }
    assert_eq!(stats.lease_grants(), grants, "denials answered in-process");
    assert!(stats.decisions(Outcome::DeniedCached) >= 50);
}

#[tokio::test]
async fn headers_report_what_the_slice_holds_and_retry_after_from_redis() {
    let policy =
        leasing(Algorithm::FixedWindow, "20/m", 16).lease_idle_return(Duration::from_secs(60));
    let one = Instance::new(policy).await;
    let remaining = |reply: &Reply| -> u64 {
        let field = reply.header("ratelimit").unwrap();
        let r = field.split(";r=").nth(1).unwrap();
        r.split(';').next().unwrap().parse().unwrap()
    };
    // Slices of 1, then of 4: what this server holds, not what Redis has.
    for _ in 0..4 {
        assert_eq!(remaining(&one.post("agent", 1).await), 0);
    }
    assert_eq!(remaining(&one.post("agent", 1).await), 3);
    assert_eq!(remaining(&one.post("agent", 1).await), 2);
    for _ in 0..14 {
        assert_eq!(one.post("agent", 1).await.status, StatusCode::OK);
    }
    let denied = one.post("agent", 1).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = denied.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (59..=60).contains(&retry),
        "the rest of the window: {retry}"
    );
}

#[tokio::test]
async fn while_redis_is_away_the_slice_is_spent_then_the_fail_mode_decides() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let policy = leasing(Algorithm::FixedWindow, "1000/m", 64)
        .lease_idle_return(Duration::from_secs(60))
        .timeout(Duration::from_millis(100))
        .on_store_error(FailMode::Fallback);
    let one = Instance::on(&server, policy).await;
    // Slices of 1 (four), 4, 16, then 64: 63 held after 25 requests.
    for _ in 0..25 {
        assert!(one.send("agent", 1).await);
    }
    server.kill();
    let stats = one.stats();
    let local = stats.lease_local();
    for _ in 0..63 {
        assert!(one.send("agent", 1).await);
    }
    assert_eq!(stats.lease_local(), local + 63, "spent from the slice");
    assert_eq!(stats.fell_back(), 0);
    // The slice is spent: the fallback limiter decides.
    assert!(one.send("agent", 1).await);
    assert_eq!(stats.fell_back(), 1);
    assert!(stats.store_errors() >= 1);
}

#[tokio::test]
async fn a_slice_is_never_spent_after_its_window_ends() {
    for algorithm in WINDOWS {
        let policy = leasing(algorithm, "1000/s", 64).lease_idle_return(Duration::from_secs(60));
        let one = Instance::new(policy.clone()).await;
        // Slices of 1 (four), 4, 16 and 64: 63 left.
        for _ in 0..25 {
            assert!(one.send("agent", 1).await);
        }
        let stats = one.stats();
        let (grants, granted) = (stats.lease_grants(), stats.lease_units_granted());
        until_the_window_rolls(&policy, "agent").await;
        // Whatever this server still holds belongs to a window that is
        // over: the next request asks Redis, and the new window counts only
        // what that grant took.
        assert!(one.send("agent", 1).await);
        assert_eq!(stats.lease_grants(), grants + 1, "{algorithm:?}");
        let fresh = stats.lease_units_granted() - granted;
        assert_eq!(counter(&policy, "agent").await, fresh, "{algorithm:?}");
    }
}

#[tokio::test]
async fn the_documented_acl_and_pexpiretime_is_all_lease_mode_needs() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let mut rules = LIMITER_ACL.to_vec();
    rules.push("+pexpiretime");
    create_user(server.url(), "leaser", "s3cret", &rules);
    let url = url_with_user(server.url(), "leaser", "s3cret");
    for algorithm in WINDOWS {
        // The ACL's keys are under `rl:`.
        let prefix = format!("rl:{}", unique_prefix());
        let policy = leasing(algorithm, "10/m", 4).prefix(prefix).fail_closed();
        let one = Instance::at(&url, policy).await;
        let mut admitted = 0;
        for _ in 0..12 {
            admitted += u64::from(one.send("agent", 1).await);
        }
        assert_eq!(admitted, 10, "{algorithm:?}");
        assert_eq!(one.stats().store_errors(), 0, "{algorithm:?}");
        assert_eq!(one.layer.release_leases().await.failed, 0);
    }
    // Without it, the fixed window's slices fail (here closed: 503); a
    // key's first four requests, each granted its cost alone, are decided
    // by the plain script, which needs no PEXPIRETIME.
    create_user(server.url(), "no-pexpiretime", "s3cret", LIMITER_ACL);
    let url = url_with_user(server.url(), "no-pexpiretime", "s3cret");
    let prefix = format!("rl:{}", unique_prefix());
    let policy = leasing(Algorithm::FixedWindow, "10/m", 4)
        .prefix(prefix)
        .fail_closed();
    let one = Instance::at(&url, policy).await;
    for _ in 0..4 {
        assert!(one.send("agent", 1).await);
    }
    let reply = one.post("agent", 1).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(one.stats().store_errors(), 1);
}

#[tokio::test]
async fn a_key_at_a_slow_pace_takes_its_cost_alone_and_gives_nothing_back() {
    for algorithm in WINDOWS {
        // Half the idle period is 125 ms: a request every 100 ms or more
        // spends less than one unit in it.
        let policy = leasing(algorithm, "1000/m", 64);
        let one = Instance::new(policy.clone()).await;
        for _ in 0..5 {
            assert!(one.send("agent", 1).await);
            // The workload's pace, not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stats = one.stats();
        assert_eq!(stats.lease_grants(), 5, "{algorithm:?}: one call a request");
        assert_eq!(
            stats.lease_units_granted(),
            5,
            "{algorithm:?}: nothing ahead"
        );
        assert_eq!(
            stats.lease_returns(),
            0,
            "{algorithm:?}: nothing to give back"
        );
        assert_eq!(counter(&policy, "agent").await, 5);
    }
}
