//! What a decision costs Redis: one command, whatever the number of limits.
//! Counted with `INFO commandstats` on a server of this test's own.

mod common;

use axum_redis_ratelimit::{
    Algorithm, Limit, Rate, RedisStore,
    store::{Charge, Store},
};
use common::{RedisServer, check, command_calls, reset_command_stats};

#[tokio::test]
async fn a_decision_with_three_limits_is_one_command() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let store = RedisStore::connect(server.url()).await.unwrap();
    let limits = [
        Limit::new(Rate::per_second(10)),
        Limit::new(Rate::per_minute(100)),
        Limit::new(Rate::per_hour(1000)),
    ];
    let mut conn = server.connection().await;
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        let check = check("rl:p:{k}", &limits, algorithm);
        // The first call also loads the script (NOSCRIPT, then EVAL).
        store.check(check).await.unwrap();
        reset_command_stats(&mut conn).await;

        let decision = store.check(check).await.unwrap();
        assert!(decision.allowed);

        let calls = command_calls(&mut conn).await;
        assert_eq!(calls.get("evalsha"), Some(&1), "{algorithm:?}: {calls:?}");
        // Everything else was run by the script inside that one EVALSHA (or
        // is this test's own bookkeeping): no second round trip.
        let inside_scripts = [
            "incrby", "decrby", "hincrby", "time", "get", "psetex", "pttl", "pexpire", "del",
            "hmget", "hset",
        ];
        let own = ["config|resetstat", "info", "evalsha"];
        for name in calls.keys() {
            assert!(
                inside_scripts.contains(&name.as_str()) || own.contains(&name.as_str()),
                "{algorithm:?}: unexpected command {name}: {calls:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_denial_by_one_limit_leaves_the_others_unchanged_in_redis() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let store = RedisStore::connect(server.url()).await.unwrap();
    let limits = [
        Limit::new(Rate::per_second(1)),
        Limit::new(Rate::per_minute(100)),
    ];
    let check = check("rl:p:{k}", &limits, Algorithm::FixedWindow);
    assert!(store.check(check).await.unwrap().allowed);
    for _ in 0..5 {
        assert!(!store.check(check).await.unwrap().allowed);
    }
    let mut conn = server.connection().await;
    let per_minute: u64 = redis::cmd("GET")
        .arg("rl:p:{k}:60:fixed")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        per_minute, 1,
        "denied requests must not count on the per-minute limit"
    );
}

#[tokio::test]
async fn concurrent_decisions_share_one_connection() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let store = RedisStore::connect(server.url()).await.unwrap();
    let limits = [Limit::new(Rate::per_minute(1000))];
    let keys: Vec<String> = (0..500).map(|i| format!("rl:p:{{k{i}}}")).collect();
    let checks = keys
        .iter()
        .map(|key| store.check(check(key, &limits, Algorithm::Gcra)));
    for decision in futures::future::join_all(checks).await {
        assert!(decision.unwrap().allowed);
    }
    let mut conn = server.connection().await;
    let clients: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut conn)
        .await
        .unwrap();
    let connected = clients
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .to_owned();
    // The store's one multiplexed connection, and this test's.
    assert_eq!(connected, "2");
}

/// Only `NOSCRIPT` is answered by sending the script again (by `EVAL`):
/// any other error (here a counter key that holds the wrong type) is the
/// decision's, after one `EVALSHA`, since a script that ran may not run twice.
#[tokio::test]
async fn an_error_other_than_noscript_is_not_sent_again() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let store = RedisStore::connect(server.url()).await.unwrap();
    let limits = [Limit::new(Rate::per_minute(5))];
    let check = check("rl:p:{k}", &limits, Algorithm::FixedWindow);
    // Loaded once, on the first call, by its NOSCRIPT.
    store
        .check(Charge {
            key: "rl:p:{other}",
            ..check
        })
        .await
        .unwrap();
    let mut conn = server.connection().await;
    let _: () = redis::cmd("HSET")
        .arg("rl:p:{k}:60:fixed")
        .arg("not")
        .arg("a number")
        .query_async(&mut conn)
        .await
        .unwrap();
    reset_command_stats(&mut conn).await;
    let error = store.check(check).await.unwrap_err();
    assert!(error.to_string().contains("WRONGTYPE"), "{error}");
    let calls = command_calls(&mut conn).await;
    assert_eq!(calls.get("evalsha"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("script|load"), None, "{calls:?}");
    assert_eq!(calls.get("eval"), None, "{calls:?}");
}

/// A server that lost the scripts (restarted, `SCRIPT FLUSH`, a replica
/// just promoted) gets each by one `EVAL` to the node that lacks it, which
/// decides the request; the next decisions are `EVALSHA` again.
#[tokio::test]
async fn a_server_without_the_script_gets_it_by_one_eval() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let store = RedisStore::connect(server.url()).await.unwrap();
    let limits = [Limit::new(Rate::per_minute(5))];
    let check = check("rl:p:{k}", &limits, Algorithm::Gcra);
    let mut conn = server.connection().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    reset_command_stats(&mut conn).await;
    let first = store.check(check).await.unwrap();
    assert_eq!((first.allowed, first.remaining), (true, 4));
    let calls = command_calls(&mut conn).await;
    assert_eq!(calls.get("evalsha"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("eval"), Some(&1), "{calls:?}");
    reset_command_stats(&mut conn).await;
    let second = store.check(check).await.unwrap();
    assert_eq!(second.remaining, 3, "counted once each");
    let calls = command_calls(&mut conn).await;
    assert_eq!(calls.get("evalsha"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("eval"), None, "{calls:?}");
}
