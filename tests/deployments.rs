//! The store where production Redis lives: an ACL user with only what the
//! limiter needs, TLS, Redis Cluster, Sentinel and Valkey, each against
//! real servers the harness starts.

mod common;

use axum_redis_ratelimit::{
    Algorithm, Error, Limit, Rate, RedisStore,
    store::{RedisConfig, Store},
};
use common::{RedisServer, check, unique_prefix};

/// The ACL the README documents for the limiter's user: the connection's
/// own commands, the scripts, what they run inside, and keys under the
/// limiter's prefix only.
const LIMITER_ACL: &[&str] = &[
    "resetkeys",
    "~rl:*",
    "resetchannels",
    "-@all",
    "+ping",
    "+hello",
    "+select",
    "+evalsha",
    "+eval",
    "+time",
    "+get",
    "+set",
    "+del",
    "+pttl",
    "+pexpire",
    "+hmget",
    "+hset",
    "+hincrby",
];

const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::Gcra,
];

/// Creates `name` with `rules` on `server` and gives the URL to log in as it.
async fn user(server: &RedisServer, name: &str, rules: &[&str]) -> String {
    let mut conn = server.connection().await;
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg(name)
        .arg("reset")
        .arg("on")
        .arg(">s3cret");
    for rule in rules {
        setuser.arg(rule);
    }
    let () = setuser.query_async(&mut conn).await.unwrap();
    server
        .url()
        .replacen("redis://", &format!("redis://{name}:s3cret@"), 1)
}

#[tokio::test]
async fn the_documented_minimal_acl_runs_every_algorithm() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let url = user(&server, "limiter", LIMITER_ACL).await;
    let store = RedisStore::connect(url.as_str()).await.unwrap();
    let limits = [
        Limit::new(Rate::per_minute(2)),
        Limit::new(Rate::per_hour(10)),
    ];
    for algorithm in ALGORITHMS {
        let key = format!("rl:{}{{agent}}", unique_prefix());
        let charge = check(&key, &limits, algorithm);
        let allowed: Vec<bool> = {
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(store.check(charge).await.unwrap().allowed);
            }
            seen
        };
        assert_eq!(allowed, [true, true, false], "{algorithm:?}");
        store.refund(charge).await.unwrap();
        assert!(store.check(charge).await.unwrap().allowed, "{algorithm:?}");
    }
}

#[tokio::test]
async fn a_user_without_evalsha_fails_at_startup_naming_the_permission() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let without: Vec<&str> = LIMITER_ACL
        .iter()
        .copied()
        .filter(|rule| *rule != "+evalsha")
        .collect();
    let url = user(&server, "no-evalsha", &without).await;
    let error = RedisStore::connect(url.as_str()).await.unwrap_err();
    assert_eq!(error.config_path().as_deref(), Some("redis"), "{error}");
    let message = error.to_string();
    assert!(message.contains("evalsha"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

#[tokio::test]
async fn a_user_that_may_not_run_what_the_scripts_run_fails_at_startup() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let without: Vec<&str> = LIMITER_ACL
        .iter()
        .copied()
        .filter(|rule| *rule != "+time")
        .collect();
    let url = user(&server, "no-time", &without).await;
    let error = RedisStore::connect(url.as_str()).await.unwrap_err();
    assert_eq!(error.config_path().as_deref(), Some("redis"), "{error}");
    assert!(error.to_string().contains("TIME"), "{error}");
}

#[tokio::test]
async fn a_user_confined_to_other_keys_gets_store_errors_not_decisions() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let url = user(&server, "other-keys", LIMITER_ACL).await;
    let store = RedisStore::connect(url.as_str()).await.unwrap();
    let limits = [Limit::new(Rate::per_minute(2))];
    let error = store
        .check(check("other:{agent}", &limits, Algorithm::FixedWindow))
        .await
        .unwrap_err();
    assert!(error.is_store_error(), "{error}");
}

#[test]
fn a_database_other_than_0_in_cluster_mode_is_a_startup_error() {
    let config = RedisConfig::cluster(["redis://127.0.0.1:7000/1"]);
    let error = RedisStore::connect_lazy(config).unwrap_err();
    assert_eq!(error.config_path().as_deref(), Some("redis.cluster_nodes"));
    assert!(error.to_string().contains("only database 0"), "{error}");
}

#[test]
fn two_topologies_at_once_is_a_startup_error() {
    let config: RedisConfig = toml::from_str(
        "url = \"redis://127.0.0.1:7000/1\"\nsentinels = [\"redis://127.0.0.1:26379\"]\n",
    )
    .unwrap();
    let error = RedisStore::connect_lazy(config).unwrap_err();
    assert!(matches!(error, Error::Config { .. }), "{error}");
    assert!(error.to_string().contains("redis.url"), "{error}");
    assert!(error.to_string().contains("redis.sentinels"), "{error}");
}
