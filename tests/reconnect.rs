//! Redis restarted under a running app: the first decision once it is back
//! is Redis's, not the fail mode's. Each test has a redis-server of its own,
//! since it kills it.

mod common;

use std::time::Duration;

use axum_redis_ratelimit::{
    Algorithm, FailMode, Key, Policy, Rate, RedisStore, algorithm::Limit, store::Store,
};
use common::{RedisServer, check, client_and_stats, unique_prefix, within};
use http::StatusCode;

/// Kills the server and starts it again on the same port; `restart` returns
/// once a client of its own gets an answer to `PING`. It blocks this thread,
/// so the tests run on a multi-threaded runtime: the connection's tasks go on
/// meanwhile, as they do in an application while Redis restarts.
fn restart(server: &RedisServer) {
    server.kill();
    server.restart();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_decision_after_a_restart_is_counted_once_by_redis() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let store = RedisStore::connect(server.url()).await.unwrap();
    let key = unique_prefix();
    let limits = [Limit::new(Rate::per_minute(10))];
    let check = check(&key, &limits, Algorithm::FixedWindow);
    assert_eq!(store.check(check).await.unwrap().remaining, 9);

    restart(&server);
    // A guard against a hang, not a measurement.
    let decision = within(Duration::from_secs(5), store.check(check))
        .await
        .expect("Redis is back: the decision must not fail");
    // The restarted Redis starts empty (no persistence): exactly one request
    // counted, so no retry counted it twice.
    assert!(decision.allowed);
    assert_eq!(decision.remaining, 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fail_closed_login_admits_the_first_request_after_a_restart() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let policy = Policy::new("login")
        .rate(Rate::per_hour(10))
        .key(Key::header("x-user"))
        .on_store_error(FailMode::Closed)
        // Generous, so a busy test machine cannot turn this into a timeout;
        // the retry needs a connect and a few round trips.
        .timeout(Duration::from_secs(2));
    let (http, stats) =
        client_and_stats(policy, RedisStore::connect(server.url()).await.unwrap()).await;
    let login = || http.post("/t", &[("x-user", b"alice")]);
    assert_eq!(login().await.status, StatusCode::OK);

    restart(&server);
    let reply = login().await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert!(
        reply.header("ratelimit").unwrap().contains(";r=9;"),
        "{reply:?}"
    );
    assert_eq!(stats.store_errors(), 0);
}
