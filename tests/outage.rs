//! Redis trouble: killed, paused (SIGSTOP), restarted, or down at startup.
//! Each test has a redis-server of its own, since it breaks it.

mod common;

use std::{sync::Arc, time::Duration};

use axum_redis_ratelimit::{FailMode, Key, Policy, Rate, RedisStore, layer::Stats};
use common::{HttpClient, RedisServer, Reply, TOKEN, client_and_stats, eventually, within};
use http::StatusCode;

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
    app_with(store, policy).await
}

async fn app_with(store: RedisStore, policy: Policy) -> App {
    let (http, stats) = client_and_stats(policy, store).await;
    App { http, stats }
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
    /// with the `RateLimit` fields, which only a decision produces, and the
    /// store is no longer marked as failing (a fallback decision has the
    /// fields too).
    async fn await_recovery(&self, token: &str) {
        eventually(Duration::from_secs(10), || async {
            self.post(token).await.header("ratelimit").is_some() && !self.stats.is_degraded()
        })
        .await;
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

#[derive(Clone, Copy, Debug)]
enum Trouble {
    /// SIGKILL: connections drop, reconnects are refused.
    Killed,
    /// SIGSTOP: the connection stays open and nothing answers, so only the
    /// policy's timeout can produce an answer.
    Paused,
}

/// Redis fails under `mode`; each request gets the fail mode's answer; once
/// Redis is back, limiting resumes with no restart of the app.
async fn fails_then_recovers(trouble: Trouble, mode: FailMode) {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let app = app(RedisStore::connect(server.url()).await.unwrap(), mode).await;
    assert_eq!(app.post("a").await.status, StatusCode::OK);

    match trouble {
        Trouble::Killed => server.kill(),
        Trouble::Paused => server.pause(),
    }
    for _ in 0..3 {
        let reply = app.post("a").await;
        match mode {
            FailMode::Closed => assert_failed_closed(&reply),
            _ => assert_failed_open(&reply),
        }
    }
    assert_eq!(app.stats.store_errors(), 3, "{trouble:?}");
    let answered_by_fail_mode = match mode {
        FailMode::Closed => app.stats.failed_closed(),
        _ => app.stats.failed_open(),
    };
    assert_eq!(answered_by_fail_mode, 3, "{trouble:?} {mode:?}");
    assert!(app.stats.is_degraded());

    match trouble {
        Trouble::Killed => server.restart(),
        Trouble::Paused => server.resume(),
    }
    app.await_recovery("b").await;
    // Limiting resumed: a fresh key gets exactly its 3.
    let replies = futures::future::join_all((0..5).map(|_| app.post("c"))).await;
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(ok, 3, "{replies:?}");
}

#[tokio::test]
async fn killed_redis_fails_open_then_recovers_after_restart() {
    fails_then_recovers(Trouble::Killed, FailMode::Open).await;
}

#[tokio::test]
async fn killed_redis_fails_closed_then_recovers_after_restart() {
    fails_then_recovers(Trouble::Killed, FailMode::Closed).await;
}

#[tokio::test]
async fn paused_redis_fails_open_within_the_timeout_then_recovers() {
    fails_then_recovers(Trouble::Paused, FailMode::Open).await;
}

#[tokio::test]
async fn paused_redis_fails_closed_within_the_timeout_then_recovers() {
    fails_then_recovers(Trouble::Paused, FailMode::Closed).await;
}

#[tokio::test]
async fn the_breaker_stops_waiting_on_a_paused_redis_and_probes_it_back() {
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
    for _ in 0..10 {
        assert_failed_open(&app.post("a").await);
    }
    // Three calls waited for the timeout; then the breaker opened and the
    // rest did not call Redis at all.
    assert_eq!(app.stats.store_errors(), 3);
    assert_eq!(app.stats.short_circuited(), 7);
    assert_eq!(app.stats.failed_open(), 10);

    server.resume();
    app.await_recovery("a").await;
    let before = app.stats.short_circuited();
    app.post("b").await;
    assert_eq!(
        app.stats.short_circuited(),
        before,
        "the breaker is closed again"
    );
}

#[tokio::test]
async fn the_fallback_keeps_limiting_in_process_while_redis_is_away() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let policy = Policy::new("telemetry")
        .rate(Rate::per_minute(4))
        .key(Key::header(TOKEN))
        .timeout(TIMEOUT)
        .on_store_error(FailMode::Fallback)
        .fallback_divisor(2);
    let app = app_with(RedisStore::connect(server.url()).await.unwrap(), policy).await;
    assert_eq!(app.post("a").await.status, StatusCode::OK);

    server.kill();
    // Four per minute shared by two servers: two per minute here.
    let statuses: Vec<_> = [
        app.post("b").await,
        app.post("b").await,
        app.post("b").await,
    ]
    .iter()
    .map(|r| r.status)
    .collect();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let limited = app.post("b").await;
    assert!(limited.header("retry-after").is_some() && limited.header("ratelimit").is_some());
    assert_eq!(app.stats.fell_back(), 4);

    server.restart();
    app.await_recovery("c").await;
    // Redis decides again, with its own (fresh) counters and the full limit.
    let remaining = app.post("b").await.header("ratelimit").unwrap().to_owned();
    assert!(remaining.contains(";r=3;"), "{remaining}");
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

/// A Redis slower than half a second, within a policy's longer timeout: the
/// decision waits for Redis and Redis decides. The connection adds no
/// shorter timeout of its own (redis-rs's default of 500 ms per reply cut
/// such a decision short, and the fail mode answered).
#[tokio::test]
async fn a_slow_redis_within_a_longer_timeout_still_decides() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let policy = Policy::new("patient")
        .rate(Rate::per_minute(3))
        .key(Key::header(TOKEN))
        .timeout(Duration::from_secs(4))
        .on_store_error(FailMode::Closed);
    let app = app_with(RedisStore::connect(server.url()).await.unwrap(), policy).await;
    assert_eq!(app.post("a").await.status, StatusCode::OK);

    // Redis holds every command for 800 ms from now (the pause is its own
    // clock's, not this test's).
    let mut admin = server.connection().await;
    let pause = Duration::from_millis(800);
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis() as u64)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let sent = tokio::time::Instant::now();
    let reply = app.post("a").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert!(sent.elapsed() >= pause, "the decision waited out the pause");
    assert!(
        reply.header("ratelimit").unwrap().contains(";r=1;"),
        "{reply:?}"
    );
    assert_eq!(app.stats.store_errors(), 0);
}

/// The mirror: outside a decision no policy bounds the wait, so the store's
/// own commands (the checks of `connect`, `peek`, `reset`, `scan`) and an
/// application's commands on a [`RedisConnection`] give up on a Redis that
/// answers nothing, with an error, instead of hanging.
#[tokio::test]
async fn a_paused_redis_fails_the_stores_own_commands_instead_of_hanging() {
    use axum_redis_ratelimit::{Algorithm, store::RedisConnection};

    let Some(server) = RedisServer::private() else {
        return;
    };
    let store = RedisStore::connect(server.url()).await.unwrap();
    let mut connection = RedisConnection::open(server.url()).unwrap();
    let _: () = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .unwrap();
    let limits = [Rate::per_minute(3).into()];
    let key = "rl:paused:{x-agent-token:a}";
    store
        .peek(key, &limits, Algorithm::FixedWindow, None)
        .await
        .unwrap();

    server.pause();
    let guard = Duration::from_secs(10);
    let peek = within(
        guard,
        store.peek(key, &limits, Algorithm::FixedWindow, None),
    )
    .await;
    assert!(peek.is_err(), "{peek:?}");
    let reset = within(guard, store.reset(key, &limits, Algorithm::FixedWindow)).await;
    assert!(reset.is_err(), "{reset:?}");
    let scan = within(guard, store.scan("rl:paused:*", 10_000)).await;
    assert!(scan.is_err(), "{scan:?}");
    let connect = within(guard, RedisStore::connect(server.url())).await;
    assert!(connect.is_err(), "connect checks that Redis answers");
    let ping = within(guard, redis::cmd("PING").query_async::<()>(&mut connection)).await;
    assert!(ping.is_err(), "{ping:?}");
    server.resume();
}
