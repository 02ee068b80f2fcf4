//! The block cache: once Redis has denied a key, this app server answers
//! `429` for it by itself until the `Retry-After` has passed.

mod common;

use std::{sync::Arc, time::Duration};

use axum::{Router, routing::post};
use axum_redis_ratelimit::{Cost, Key, Policy, RateLimitLayer, RedisStore, layer::Stats};
use common::{HttpClient, RedisServer, command_calls, eventually, serve};
use http::StatusCode;

const TOKEN: &str = "x-agent-token";

async fn app(server: &RedisServer, rate: &str) -> (HttpClient, Arc<Stats>) {
    let policy = Policy::new("telemetry")
        .rate(rate.parse().unwrap())
        .key(Key::header(TOKEN))
        .cost(Cost::header("x-event-count"))
        .block_cache(1000);
    let layer =
        RateLimitLayer::new(policy, RedisStore::connect(server.url()).await.unwrap()).unwrap();
    let stats = layer.stats();
    let router = Router::new()
        .route("/t", post(|| async { "queued" }))
        .layer(layer);
    (HttpClient::new(&serve(router).await), stats)
}

async fn evalsha_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    command_calls(conn)
        .await
        .get("evalsha")
        .copied()
        .unwrap_or(0)
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
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();

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
            http.post("/t", &[(TOKEN, b"a"), ("x-event-count", n)])
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
