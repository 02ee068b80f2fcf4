//! The layer in front of an axum `Router`, with counters in the harness's
//! Redis unless a test says otherwise. Requests reach the router in-process
//! (`oneshot`), or over real HTTP (`axum::serve` on 127.0.0.1:0 with
//! `ConnectInfo`) where the socket is the point: the client's address and
//! proxies, hostile header bytes, two app servers.

mod common;

use std::{
    convert::Infallible,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Body,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use axum_redis_ratelimit::{
    Algorithm, ClientIp, Clock, Cost, Key, MemoryStore, Mode, OnMissingKey, Policy, Rate,
    RateLimitLayer, RateLimitStatus, RedisStore, store::Store,
};
use common::{
    HttpClient, RedisServer, Reply, TOKEN, client, hget, in_process, keys_with_prefix, persist,
    pttl, redis, telemetry, unique_prefix,
};
use futures::future::join_all;
use http::{Method, Request, StatusCode};
use tower::{Service, ServiceExt};

fn statuses(replies: &[Reply]) -> (usize, usize) {
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let limited = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        ok + limited,
        replies.len(),
        "only 200 and 429 expected: {replies:?}"
    );
    (ok, limited)
}

async fn burst(clients: &[HttpClient], n: usize, token: &str) -> Vec<Reply> {
    join_all((0..n).map(|i| async move {
        clients[i % clients.len()]
            .post("/t", &[(TOKEN, token.as_bytes())])
            .await
    }))
    .await
}

#[tokio::test]
async fn exactly_the_limit_is_admitted_out_of_many_concurrent_requests() {
    let http = in_process(telemetry("20/m"), redis().await);
    assert_eq!(statuses(&burst(&[http], 100, "agent-1").await), (20, 80));
}

#[tokio::test]
async fn two_app_servers_share_one_limit_through_redis() {
    // Two routers, each with its own layer and connection, as two processes would have.
    let policy = telemetry("20/m");
    let first = client(policy.clone(), redis().await).await;
    let second = client(policy, redis().await).await;
    assert_eq!(
        statuses(&burst(&[first, second], 100, "agent-1").await),
        (20, 80)
    );
}

#[tokio::test]
async fn the_memory_store_admits_exactly_the_limit_too() {
    let http = in_process(telemetry("20/m"), MemoryStore::new());
    assert_eq!(statuses(&burst(&[http], 100, "agent-1").await), (20, 80));
}

#[tokio::test]
async fn keys_are_limited_independently() {
    let http = in_process(telemetry("2/m"), redis().await);
    assert_eq!(
        statuses(&burst(std::slice::from_ref(&http), 3, "a").await),
        (2, 1)
    );
    assert_eq!(statuses(&burst(&[http], 2, "b").await), (2, 0));
}

#[tokio::test]
async fn allowed_and_limited_responses_carry_the_ratelimit_fields() {
    let http = in_process(telemetry("2/m").legacy_headers(true), redis().await);
    let first = http.post("/t", &[(TOKEN, b"a")]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some(r#""telemetry";q=2;w=60"#)
    );
    let t = |reply: &Reply, remaining: u64| {
        let value = reply.header("ratelimit").unwrap();
        let prefix = format!(r#""telemetry";r={remaining};t="#);
        let t: u64 = value
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{value}"))
            .parse()
            .unwrap();
        assert!((1..=60).contains(&t), "{value}");
        t
    };
    t(&first, 1);
    assert_eq!(first.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    assert!(first.header("retry-after").is_none());

    http.post("/t", &[(TOKEN, b"a")]).await;
    let limited = http.post("/t", &[(TOKEN, b"a")]).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(t(&limited, 0), retry);
    assert_eq!(limited.header("content-type"), Some("application/json"));
    assert_eq!(
        limited.body,
        format!(r#"{{"error":"Too many requests","retry_after":{retry}}}"#)
    );
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
}

#[tokio::test]
async fn every_key_has_a_ttl_after_a_load() {
    let prefix = unique_prefix();
    let policy = telemetry("5/m").prefix(&prefix);
    let http = in_process(policy, redis().await);
    join_all((0..400).map(|i| {
        let token = format!("agent-{}", i % 100);
        let http = http.clone();
        async move { http.post("/t", &[(TOKEN, token.as_bytes())]).await }
    }))
    .await;
    let keys = keys_with_prefix(&prefix).await;
    assert_eq!(keys.len(), 100);
    for key in keys {
        let ttl = pttl(&key).await;
        assert!(ttl > 0 && ttl <= 60_000, "{key} has PTTL {ttl}");
    }
}

#[tokio::test]
async fn a_counter_that_lost_its_ttl_gets_it_back() {
    let prefix = unique_prefix();
    let policy = telemetry("5/m").prefix(&prefix);
    let http = in_process(policy, redis().await);
    http.post("/t", &[(TOKEN, b"a")]).await;
    let key = format!("{prefix}telemetry:{{{TOKEN}:a}}:60:fixed");
    persist(&key).await;
    assert_eq!(pttl(&key).await, -1);
    let reply = http.post("/t", &[(TOKEN, b"a")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let ttl = pttl(&key).await;
    assert!(ttl > 0, "PTTL {ttl}");
    let mut conn = RedisServer::shared().connection().await;
    let count: u64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 2);
}

#[tokio::test]
async fn redis_keys_are_readable_and_hash_tagged() {
    let prefix = unique_prefix();
    let policy = telemetry("5/m").prefix(&prefix);
    let http = in_process(policy, redis().await);
    http.post("/t", &[(TOKEN, b"AGENT-ABC123")]).await;
    assert_eq!(
        keys_with_prefix(&prefix).await,
        [format!(
            "{prefix}telemetry:{{x-agent-token:AGENT-ABC123}}:60:fixed"
        )]
    );
}

#[tokio::test]
async fn secret_keys_never_reach_redis_in_clear() {
    let login_file: axum_redis_ratelimit::config::PolicyConfig = toml::from_str(
        r#"
        name = "login"
        rate = "5/m"
        key = { type = "client_ip", secret = true }
        "#,
    )
    .unwrap();
    let token: &[(&str, &[u8])] = &[(TOKEN, b"AGENT-ABC123")];
    // Tokens, and client addresses too: in the builder and in a policy file.
    let cases = [
        (
            Key::header(TOKEN).secret(),
            token,
            "ABC123",
            "{x-agent-token:#",
        ),
        (Key::client_ip().secret(), &[][..], "127.0.0.1", "{ip:#"),
    ];
    let policies = cases
        .into_iter()
        .map(|(key, headers, clear, tag)| {
            let policy = Policy::new("p").rate(Rate::per_minute(5)).key(key);
            (policy, headers, clear, tag)
        })
        .chain([(login_file.into_policy(), &[][..], "127.0.0.1", "{ip:#")]);
    for (policy, headers, clear, tag) in policies {
        let prefix = unique_prefix();
        let http = client(policy.prefix(&prefix), redis().await).await;
        http.post("/t", headers).await;
        let keys = keys_with_prefix(&prefix).await;
        assert_eq!(keys.len(), 1);
        assert!(
            !keys[0].contains(clear) && keys[0].contains(tag),
            "{}",
            keys[0]
        );
    }
}

#[tokio::test]
async fn a_missing_key_gets_the_configured_outcome() {
    let store = MemoryStore::new();
    let default = client(telemetry("5/m"), store.clone()).await;
    let reply = default.post("/t", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body,
        r#"{"error":"Bad Request","missing_key":"x-agent-token"}"#
    );

    let unauthorized =
        telemetry("5/m").on_missing_key(OnMissingKey::Reject(StatusCode::UNAUTHORIZED));
    let reply = client(unauthorized, store.clone())
        .await
        .post("/t", &[])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let allow = client(
        telemetry("1/m").on_missing_key(OnMissingKey::Allow),
        store.clone(),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(allow.post("/t", &[]).await.status, StatusCode::OK);
    }

    // Falling back to the client IP: omitting the token does not escape.
    let fallback = telemetry("2/m").key(Key::header(TOKEN).or(Key::client_ip()));
    let http = client(fallback, store).await;
    let replies = join_all((0..4).map(|_| async { http.post("/t", &[]).await })).await;
    assert_eq!(statuses(&replies), (2, 2));
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let policy = telemetry("2/m").key(Key::client_ip());
    let http = client(policy, redis().await).await;
    let replies = join_all((0..4).map(|i| {
        let spoofed = format!("203.0.113.{i}");
        let http = http.clone();
        async move {
            http.post("/t", &[("x-forwarded-for", spoofed.as_bytes())])
                .await
        }
    }))
    .await;
    assert_eq!(
        statuses(&replies),
        (2, 2),
        "a forged header must not yield fresh keys"
    );
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_is_honoured() {
    let proxy = ClientIp::new().trust_proxies(["127.0.0.0/8"]);
    let prefix = unique_prefix();
    let policy = telemetry("1/m")
        .key(Key::client_ip_with(proxy))
        .prefix(&prefix);
    let http = client(policy, redis().await).await;
    for i in 0..3 {
        let chain = format!("203.0.113.{i}, 127.0.0.9");
        let reply = http
            .post("/t", &[("x-forwarded-for", chain.as_bytes())])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let again = http
        .post("/t", &[("x-forwarded-for", b"203.0.113.0")])
        .await;
    assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
    let mut keys = keys_with_prefix(&prefix).await;
    keys.sort();
    assert_eq!(
        keys[0],
        format!("{prefix}telemetry:{{ip:203.0.113.0}}:60:fixed")
    );
}

#[tokio::test]
async fn huge_and_binary_keys_are_limited_never_a_server_error() {
    let http = client(telemetry("2/m"), redis().await).await;
    let huge = vec![b'A'; 64 * 1024];
    let binary: &[u8] = b"\xff\xfe\x80agent";
    let braces: &[u8] = b"}{rl:other:{x-agent-token:victim}";
    for value in [&huge[..], binary, braces] {
        let replies =
            join_all((0..3).map(|_| async { http.post("/t", &[(TOKEN, value)]).await })).await;
        for reply in &replies {
            assert!(!reply.status.is_server_error(), "{reply:?}");
        }
        assert_eq!(statuses(&replies), (2, 1));
    }
    // The hostile values above did not touch the victim's counter.
    assert_eq!(
        http.post("/t", &[(TOKEN, b"victim")]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn annotate_mode_forwards_with_the_decision() {
    let policy = telemetry("1/m").mode(Mode::Annotate);
    let app = Router::new()
        .route(
            "/t",
            post(|status: RateLimitStatus| async move {
                let info = status.get("telemetry").unwrap();
                format!(
                    "exceeded={} remaining={}",
                    status.exceeded(),
                    info.decision.remaining
                )
            }),
        )
        .layer(RateLimitLayer::new(policy, redis().await).unwrap());
    let http = HttpClient::in_process(app);
    let first = http.post("/t", &[(TOKEN, b"a")]).await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (StatusCode::OK, "exceeded=false remaining=0")
    );
    let second = http.post("/t", &[(TOKEN, b"a")]).await;
    assert_eq!(
        (second.status, second.body.as_str()),
        (StatusCode::OK, "exceeded=true remaining=0")
    );
    assert!(second.header("ratelimit").unwrap().contains("r=0"));
}

#[tokio::test]
async fn only_the_configured_methods_are_limited() {
    let http = in_process(telemetry("1/m").methods([Method::POST]), MemoryStore::new());
    for _ in 0..3 {
        let reply = http.get("/t", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.header("ratelimit").is_none());
    }
    assert_eq!(
        http.post("/t", &[(TOKEN, b"a")]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.post("/t", &[(TOKEN, b"a")]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// axum answers `HEAD` with the `GET` handler, so a `GET` limit covers both,
/// in either order; a `POST` limit covers neither.
#[tokio::test]
async fn a_get_limit_also_counts_head_requests() {
    for first in [Method::GET, Method::HEAD] {
        let http = in_process(telemetry("2/m").methods([Method::GET]), MemoryStore::new());
        let second = if first == Method::GET {
            Method::HEAD
        } else {
            Method::GET
        };
        let token: &[(&str, &[u8])] = &[(TOKEN, b"a")];
        for method in [first.clone(), second.clone()] {
            assert_eq!(http.send(method, "/t", token).await.status, StatusCode::OK);
        }
        for method in [first, second] {
            let reply = http.send(method.clone(), "/t", token).await;
            assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{method}");
        }
    }
    let post_only = in_process(telemetry("1/m").methods([Method::POST]), MemoryStore::new());
    for _ in 0..3 {
        let reply = post_only.send(Method::HEAD, "/t", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_custom_rejection_keeps_the_standard_headers() {
    let policy = telemetry("1/m").on_rejected(|rejection| {
        (
            rejection.status(),
            format!("slow down, {}", rejection.policy()),
        )
            .into_response()
    });
    let http = in_process(policy, MemoryStore::new());
    http.post("/t", &[(TOKEN, b"a")]).await;
    let reply = http.post("/t", &[(TOKEN, b"a")]).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "slow down, telemetry")
    );
    assert!(reply.header("retry-after").is_some() && reply.header("ratelimit").is_some());
}

#[tokio::test]
async fn policies_stack_and_apply_per_route() {
    let store = MemoryStore::new();
    let burst = telemetry("1/s");
    let minute = Policy::new("minute")
        .rate(Rate::per_minute(10))
        .key(Key::header(TOKEN));
    let app = Router::new()
        .route("/t", post(|| async { "queued" }))
        .route_layer(RateLimitLayer::new(burst, store.clone()).unwrap())
        .route_layer(RateLimitLayer::new(minute, store).unwrap())
        .route("/healthz", get(|| async { "ok" }));
    let http = HttpClient::in_process(app);
    let reply = http.post("/t", &[(TOKEN, b"a")]).await;
    let items: Vec<_> = reply.headers.get_all("ratelimit-policy").iter().collect();
    assert_eq!(items, [r#""telemetry";q=1;w=1"#, r#""minute";q=10;w=60"#]);
    assert_eq!(reply.headers.get_all("ratelimit").iter().count(), 2);
    assert_eq!(
        http.post("/t", &[(TOKEN, b"a")]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..5 {
        assert_eq!(http.get("/healthz", &[]).await.status, StatusCode::OK);
    }
}

/// `Clock::App` counts on the application's clock: here the system's, which
/// a paused Tokio clock does not move, while the memory store's own clock
/// follows Tokio's.
#[tokio::test(start_paused = true)]
async fn the_app_clock_is_the_one_windows_are_counted_on() {
    for (clock, renewed) in [(Clock::Store, true), (Clock::App, false)] {
        let http = in_process(telemetry("1/m").clock(clock), MemoryStore::new());
        let send = || http.post("/t", &[(TOKEN, b"a")]);
        assert_eq!(send().await.status, StatusCode::OK);
        assert_eq!(send().await.status, StatusCode::TOO_MANY_REQUESTS);
        tokio::time::advance(Duration::from_secs(120)).await;
        let third = send().await.status;
        assert_eq!(third == StatusCode::OK, renewed, "{clock:?}");
    }
}

/// Where the fixed window's end lives: with `Clock::App`, in the counter,
/// as the app's time plus the window; with `Clock::Store`, nowhere but in
/// the counter's own Redis expiry, a window from its first request (Redis's
/// clock, so within a second of this machine's here).
#[tokio::test]
async fn redis_counters_hold_the_chosen_clocks_time() {
    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let window = 60_000;
    let mut conn = RedisServer::shared().connection().await;

    let prefix = unique_prefix();
    let policy = telemetry("5/m").clock(Clock::App).prefix(&prefix);
    let http = in_process(policy, redis().await);
    let before = now_ms();
    http.post("/t", &[(TOKEN, b"a")]).await;
    let after = now_ms();
    let key = format!("{prefix}telemetry:{{{TOKEN}:a}}:60:fixed:app");
    let end: u128 = hget(&mut conn, &key, "e").await;
    assert!(
        (before + window..=after + window).contains(&end),
        "{end} not within [{before}, {after}] + {window}"
    );

    let prefix = unique_prefix();
    let policy = telemetry("5/m").clock(Clock::Store).prefix(&prefix);
    let http = in_process(policy, redis().await);
    http.post("/t", &[(TOKEN, b"a")]).await;
    let key = format!("{prefix}telemetry:{{{TOKEN}:a}}:60:fixed");
    let ttl = pttl(&key).await;
    assert!(
        (window as i64 - 1000..=window as i64).contains(&ttl),
        "PTTL {ttl}"
    );
    let count: u64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// `inner` inside `outer` on one route.
fn stacked(inner: Policy, outer: Policy, store: impl Store) -> Router {
    Router::new()
        .route("/t", post(|| async { "queued" }))
        .route_layer(RateLimitLayer::new(inner, store.clone()).unwrap())
        .route_layer(RateLimitLayer::new(outer, store).unwrap())
}

/// A global `5/m` outside a per-key `1/m`: requests the inner policy refuses
/// spend nothing of the global quota, so one client cannot use up everyone's
/// with requests that were refused anyway. On the 429 the legacy fields are
/// the refusing policy's. With Redis and with the memory store, for every
/// algorithm, and refusals of every kind the inner layer makes.
#[tokio::test]
async fn requests_an_inner_policy_refuses_cost_the_outer_one_nothing() {
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        for redis_store in [false, true] {
            let prefix = unique_prefix();
            let global = Policy::new("global")
                .rate(Rate::per_minute(5))
                .algorithm(algorithm)
                .key(Key::global())
                .legacy_headers(true)
                .prefix(&prefix);
            let per_key = Policy::new("per-key")
                .rate(Rate::per_minute(1))
                .algorithm(algorithm)
                .key(Key::header(TOKEN))
                .cost(Cost::header("x-event-count"))
                .legacy_headers(true)
                .prefix(&prefix);
            let app = if redis_store {
                stacked(per_key, global, redis().await)
            } else {
                stacked(per_key, global, MemoryStore::new())
            };
            let http = HttpClient::in_process(app);
            let case = format!("{algorithm:?}, redis: {redis_store}");
            assert_eq!(
                http.post("/t", &[(TOKEN, b"a")]).await.status,
                StatusCode::OK
            );
            for _ in 0..4 {
                let refused = http.post("/t", &[(TOKEN, b"a")]).await;
                assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{case}");
                assert_eq!(refused.header("x-ratelimit-limit"), Some("1"), "{case}");
                assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"), "{case}");
                // The global item reports its quota as given back.
                let items: Vec<_> = refused.headers.get_all("ratelimit").iter().collect();
                assert!(
                    items[1].to_str().unwrap().starts_with(r#""global";r=4;"#),
                    "{case}: {items:?}"
                );
            }
            // Other refusals of the inner layer: a bad cost, a repeated key.
            let bad = http
                .post("/t", &[(TOKEN, b"b"), ("x-event-count", b"x")])
                .await;
            assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{case}");
            let repeated = http.post("/t", &[(TOKEN, b"b"), (TOKEN, b"c")]).await;
            assert_eq!(repeated.status, StatusCode::BAD_REQUEST, "{case}");
            // Four other clients still fit in the global quota. The legacy
            // trio is the per-key policy's (0 left), the last time on a tie.
            for token in [&b"b"[..], b"c", b"d", b"e"] {
                let reply = http.post("/t", &[(TOKEN, token)]).await;
                assert_eq!(reply.status, StatusCode::OK, "{case}: {reply:?}");
                assert_eq!(reply.header("x-ratelimit-limit"), Some("1"), "{case}");
            }
            let sixth = http.post("/t", &[(TOKEN, b"f")]).await;
            assert_eq!(sixth.status, StatusCode::TOO_MANY_REQUESTS, "{case}");
            assert_eq!(sixth.header("x-ratelimit-limit"), Some("5"), "{case}");
        }
    }
}

/// The legacy trio is the policy's with the fewest remaining, inner or outer.
#[tokio::test]
async fn the_legacy_fields_report_the_policy_with_the_fewest_left() {
    let per_key = telemetry("10/m").legacy_headers(true);
    let global = telemetry("2/m").key(Key::global()).legacy_headers(true);
    let http = HttpClient::in_process(stacked(per_key, global, MemoryStore::new()));
    let reply = http.post("/t", &[(TOKEN, b"a")]).await;
    assert_eq!(reply.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("1"));
}

#[tokio::test]
async fn clones_of_the_service_share_one_limit() {
    // tower::limit::RateLimit keeps its state per clone; this layer must not.
    let layer = RateLimitLayer::new(telemetry("3/m"), MemoryStore::new()).unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let request = Request::post("/t")
            .header(TOKEN, "a")
            .body(Body::empty())
            .unwrap();
        let mut clone = service.clone();
        statuses.push(
            clone
                .ready()
                .await
                .unwrap()
                .call(request)
                .await
                .unwrap()
                .status(),
        );
    }
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(limited, 3, "{statuses:?}");
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded() {
    let http = in_process(telemetry("3/m"), redis().await);
    assert_eq!(
        http.post("/t", &[(TOKEN, b"a")]).await.status,
        StatusCode::OK
    );
    let mut conn = RedisServer::shared().connection().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let reply = http.post("/t", &[(TOKEN, b"a")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.header("ratelimit").unwrap().contains("r=1"),
        "{reply:?}"
    );
}

#[tokio::test]
async fn a_batch_costs_its_event_count() {
    let policy = telemetry("10/m").cost(Cost::header("X-Event-Count"));
    let http = in_process(policy, redis().await);
    let send = |count: &'static [u8]| {
        let http = http.clone();
        async move {
            http.post("/t", &[(TOKEN, b"a"), ("x-event-count", count)])
                .await
        }
    };
    let four = send(b"4").await;
    assert_eq!(four.status, StatusCode::OK);
    assert!(
        four.header("ratelimit").unwrap().contains(";r=6;"),
        "{four:?}"
    );
    let one = http.post("/t", &[(TOKEN, b"a")]).await;
    assert!(
        one.header("ratelimit").unwrap().contains(";r=5;"),
        "no header costs 1: {one:?}"
    );
    for bad in [&b"abc"[..], b"0", b"-3", b"1e3", b"99999999999"] {
        let reply = send(bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
        assert!(
            reply.body.contains("x-event-count must be"),
            "{}",
            reply.body
        );
    }
    let too_big = send(b"11").await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        too_big.header("retry-after").is_none(),
        "waiting would not help"
    );
    assert_eq!(
        too_big.body,
        r#"{"error":"Request cost exceeds the rate limit","cost":11,"capacity":10}"#
    );
    // Five are left: a batch of five fits, then nothing does.
    assert_eq!(send(b"5").await.status, StatusCode::OK);
    assert_eq!(send(b"1").await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn several_limits_are_listed_and_the_most_restrictive_reported() {
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        let policy = telemetry("2/s")
            .rate(Rate::per_minute(100))
            .algorithm(algorithm);
        let http = in_process(policy, redis().await);
        let first = http.post("/t", &[(TOKEN, b"a")]).await;
        assert_eq!(
            first.header("ratelimit-policy"),
            Some(r#""telemetry-1s";q=2;w=1, "telemetry-60s";q=100;w=60"#)
        );
        assert!(
            first
                .header("ratelimit")
                .unwrap()
                .starts_with(r#""telemetry-1s";r=1;t="#),
            "{first:?}"
        );
        http.post("/t", &[(TOKEN, b"a")]).await;
        let denied = http.post("/t", &[(TOKEN, b"a")]).await;
        assert_eq!(
            denied.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{algorithm:?}"
        );
        assert!(
            denied
                .header("ratelimit")
                .unwrap()
                .starts_with(r#""telemetry-1s";r=0;t="#)
        );
        let retry: u64 = denied.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (1..=2).contains(&retry),
            "{algorithm:?}: Retry-After {retry}"
        );
    }
}

#[tokio::test]
async fn misconfiguration_fails_when_the_layer_is_built() {
    let err = RateLimitLayer::new(Policy::new("p").key(Key::global()), MemoryStore::new())
        .err()
        .unwrap();
    assert!(err.to_string().contains("policies.p.rate"), "{err}");
    let err = RedisStore::connect("http://nope").await.unwrap_err();
    assert!(err.to_string().contains("redis.url"), "{err}");
}
