//! Redis trouble: killed, paused (SIGSTOP), restarted, or down at startup.
//! Each test has a redis-server of its own, since it breaks it.

mod common;

use std::{sync::Arc, time::Duration};

use axum::{Router, routing::post};
use axum_redis_ratelimit::{FailMode, Key, Policy, Rate, RateLimitLayer, RedisStore, layer::Stats};
use common::{HttpClient, RedisServer, Reply, eventually, serve, within};
use http::StatusCode;

const TOKEN: &str = "x-agent-token";
const TIMEOUT: Duration = Duration::from_millis(100);

struct App {
    http: HttpClient,
    stats: Arc<Stats>,
}

async fn app(store: RedisStore, on_error: FailMode) -> App {
    let policy = Policy::new("login")
        .rate(Rate::per_minute(3))
        .key(Key::header(TOKEN))
        .timeout(TIMEOUT)
        .on_store_error(on_error);
    let layer = RateLimitLayer::new(policy, store).unwrap();
    let stats = layer.stats();
    let router = Router::new()
        .route("/t", post(|| async { "ok" }))
        .layer(layer);
    App {
        http: HttpClient::new(&serve(router).await),
        stats,
    }
}

impl App {
    async fn post(&self, token: &str) -> Reply {
        // Far above the policy timeout: a guard against a hang, not a measurement.
        within(
            Duration::from_secs(5),
            self.http.post("/t", &[(TOKEN, token.as_bytes())]),
        )
        .await
    }

    /// Waits until decisions come from Redis again: a request is answered
    /// with the `RateLimit` fields, which only a decision produces.
    async fn await_recovery(&self, token: &str) {
        eventually(Duration::from_secs(10), || async {
            self.post(token).await.header("ratelimit").is_some()
        })
        .await;
        assert!(!self.stats.is_degraded());
    }
}

fn assert_failed_open(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert!(
        reply.header("ratelimit").is_none(),
        "no decision was made: {reply:?}"
    );
}

fn assert_failed_closed(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.body,
        r#"{"error":"Rate limiter unavailable","retry_after":1}"#
    );
}

#[tokio::test]
async fn killed_redis_fails_open_then_recovers_after_restart() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let app = app(
        RedisStore::connect(server.url()).await.unwrap(),
        FailMode::Open,
    )
    .await;
    assert_eq!(app.post("a").await.status, StatusCode::OK);

    server.kill();
    for _ in 0..5 {
        assert_failed_open(&app.post("a").await);
    }
    assert_eq!(app.stats.failed_open(), 5);
    assert!(app.stats.is_degraded());

    server.restart();
    app.await_recovery("b").await;
    // Limiting resumed: "c" gets exactly 3 (a fresh server lost the old counters).
    let statuses: Vec<_> = futures::future::join_all((0..5).map(|_| app.post("c"))).await;
    let ok = statuses
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(ok, 3, "{statuses:?}");
}

#[tokio::test]
async fn killed_redis_fails_closed_then_recovers_after_restart() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let app = app(
        RedisStore::connect(server.url()).await.unwrap(),
        FailMode::Closed,
    )
    .await;
    assert_eq!(app.post("a").await.status, StatusCode::OK);

    server.kill();
    for _ in 0..3 {
        assert_failed_closed(&app.post("a").await);
    }
    assert_eq!(app.stats.failed_closed(), 3);

    server.restart();
    app.await_recovery("b").await;
}

#[tokio::test]
async fn paused_redis_fails_open_within_the_timeout() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let app = app(
        RedisStore::connect(server.url()).await.unwrap(),
        FailMode::Open,
    )
    .await;
    assert_eq!(app.post("a").await.status, StatusCode::OK);

    server.pause();
    // The connection is open but nothing answers: only the policy's timeout
    // can produce these answers.
    for _ in 0..3 {
        assert_failed_open(&app.post("a").await);
    }
    assert_eq!(app.stats.store_errors(), 3);

    server.resume();
    app.await_recovery("a").await;
}

#[tokio::test]
async fn paused_redis_fails_closed_within_the_timeout() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let app = app(
        RedisStore::connect(server.url()).await.unwrap(),
        FailMode::Closed,
    )
    .await;
    assert_eq!(app.post("a").await.status, StatusCode::OK);

    server.pause();
    for _ in 0..3 {
        assert_failed_closed(&app.post("a").await);
    }
    server.resume();
    app.await_recovery("a").await;
}

#[tokio::test]
async fn an_app_started_while_redis_is_down_limits_once_it_is_up() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    server.kill();
    assert!(
        RedisStore::connect(server.url()).await.is_err(),
        "connect checks Redis"
    );
    let app = app(
        RedisStore::connect_lazy(server.url()).unwrap(),
        FailMode::Closed,
    )
    .await;
    assert_failed_closed(&app.post("a").await);

    server.restart();
    app.await_recovery("a").await;
}
