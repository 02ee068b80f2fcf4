//! The store where production Redis lives: an ACL user with only what the
//! limiter needs, TLS, Redis Cluster, Sentinel and Valkey, each against
//! real servers the harness starts.

mod common;

use std::time::Duration;

use axum_redis_ratelimit::{
    Algorithm, Error, Limit, Rate, RedisStore,
    store::{RedisConfig, RedisConnection, Store},
};
use common::{
    RedisServer, check,
    topology::{LIMITER_ACL, create_user, url_with_user},
    unique_prefix,
};

const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::Gcra,
];

/// Creates `name` with `rules` on `server` and gives the URL to log in as it.
fn user(server: &RedisServer, name: &str, rules: &[&str]) -> String {
    create_user(server.url(), name, "s3cret", rules);
    url_with_user(server.url(), name, "s3cret")
}

/// The startup error of a user with the limiter's ACL but for `rule`.
async fn startup_error_without(rule: &str) -> Option<Error> {
    let server = RedisServer::private()?;
    let rules: Vec<&str> = LIMITER_ACL.iter().copied().filter(|r| *r != rule).collect();
    let url = user(&server, &format!("no-{}", &rule[1..]), &rules);
    Some(RedisStore::connect(url.as_str()).await.unwrap_err())
}

#[tokio::test]
async fn the_documented_minimal_acl_runs_every_algorithm() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let url = user(&server, "limiter", LIMITER_ACL);
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
    let Some(error) = startup_error_without("+evalsha").await else {
        return;
    };
    assert_eq!(error.config_path().as_deref(), Some("redis"), "{error}");
    let message = error.to_string();
    assert!(message.contains("evalsha"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

/// What the scripts run on keys shows at the first decision that runs it,
/// as a key pattern does: a store error, which the fail mode answers, never
/// a decision. (A key's second request runs `INCRBY` in every algorithm;
/// GCRA's first writes with `PSETEX`.)
#[tokio::test]
async fn a_user_that_may_not_run_what_the_scripts_run_gets_store_errors_not_decisions() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let rules: Vec<&str> = LIMITER_ACL
        .iter()
        .copied()
        .filter(|r| *r != "+incrby")
        .collect();
    let url = user(&server, "no-incrby", &rules);
    let store = RedisStore::connect(url.as_str()).await.unwrap();
    let limits = [Limit::new(Rate::per_minute(2))];
    let key = format!("rl:{}{{agent}}", unique_prefix());
    for algorithm in ALGORITHMS {
        let charge = check(&key, &limits, algorithm);
        if let Err(error) = store.check(charge).await {
            assert!(error.is_store_error(), "{algorithm}: {error}");
        }
        let error = store.check(charge).await.unwrap_err();
        assert!(error.is_store_error(), "{algorithm}: {error}");
    }
}

#[tokio::test]
async fn a_user_confined_to_other_keys_gets_store_errors_not_decisions() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let url = user(&server, "other-keys", LIMITER_ACL);
    let store = RedisStore::connect(url.as_str()).await.unwrap();
    let limits = [Limit::new(Rate::per_minute(2))];
    let error = store
        .check(check("other:{agent}", &limits, Algorithm::FixedWindow))
        .await
        .unwrap_err();
    assert!(error.is_store_error(), "{error}");
}

/// The application's own commands and pipelines go where the store's do,
/// in the configured database.
#[tokio::test]
async fn a_redis_connection_carries_commands_and_pipelines_to_the_database() {
    use redis::aio::ConnectionLike;

    let url = RedisServer::shared().url();
    let mut conn = RedisConnection::open(url).unwrap();
    let db = url.rsplit_once('/').and_then(|(_, db)| db.parse().ok());
    assert_eq!(conn.get_db(), db.unwrap_or(0));
    let key = format!("{}{{pipe}}", unique_prefix());
    let (set, got): (String, i64) = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg(7)
        .cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((set.as_str(), got), ("OK", 7));
    let mut plain = RedisServer::shared().connection().await;
    let seen: i64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut plain)
        .await
        .unwrap();
    assert_eq!(seen, 7, "the URL's database");
}

#[test]
fn outside_a_tokio_runtime_opening_is_an_error_not_a_panic() {
    let error = RedisConnection::open("redis://127.0.0.1:1/3").unwrap_err();
    assert!(error.to_string().contains("Tokio runtime"), "{error}");
    let error = RedisStore::connect_lazy(RedisConfig::cluster(["redis://127.0.0.1:1"]));
    assert!(error.unwrap_err().to_string().contains("Tokio runtime"));
}

#[tokio::test]
async fn a_redis_connection_names_its_topology_and_database_but_no_secret() {
    use redis::aio::ConnectionLike;

    let one = RedisConnection::open("redis://user:hunter2@127.0.0.1:1/3").unwrap();
    assert_eq!(one.get_db(), 3);
    let shown = format!("{one:?}");
    assert!(
        shown.contains("standalone") && !shown.contains("hunter2"),
        "{shown}"
    );
    let cluster = RedisConnection::open(RedisConfig::cluster(["redis://127.0.0.1:1"])).unwrap();
    assert_eq!(cluster.get_db(), 0);
    assert!(format!("{cluster:?}").contains("cluster"));
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

/// Decides `n` requests of `key` at once on `stores` in turn; how many were
/// allowed, and the errors.
async fn burst(stores: &[RedisStore], key: &str, limits: &[Limit], n: usize) -> (usize, usize) {
    let checks = (0..n).map(|i| {
        let charge = check(key, limits, Algorithm::Gcra);
        // A bound against a hang, not a latency: on a loaded machine a
        // decision in the middle of a failover can take a second or more,
        // and one that timed out here might still have counted in Redis.
        tokio::time::timeout(
            Duration::from_secs(10),
            stores[i % stores.len()].check(charge),
        )
    });
    let decisions = futures::future::join_all(checks).await;
    let allowed = decisions
        .iter()
        .filter(|d| matches!(d, Ok(Ok(d)) if d.allowed))
        .count();
    (
        allowed,
        decisions.iter().filter(|d| !matches!(d, Ok(Ok(_)))).count(),
    )
}

#[cfg(feature = "cluster")]
mod cluster {
    use std::collections::HashSet;

    use axum_redis_ratelimit::{
        Algorithm, Limit, Rate, RedisStore,
        store::{RedisConfig, Store},
    };
    use futures::future::join_all;

    use super::{ALGORITHMS, Duration, burst, common::topology::RedisCluster};
    use crate::common::{check, unique_prefix};

    async fn store(cluster: &RedisCluster) -> RedisStore {
        RedisStore::connect(RedisConfig::cluster(cluster.seed_urls()))
            .await
            .unwrap()
    }

    /// Blocking harness work (starting nodes, failovers) off the runtime's
    /// thread, so that decisions keep running meanwhile.
    async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(work).await.unwrap()
    }

    #[tokio::test]
    async fn two_app_instances_admit_exactly_the_limit_on_every_primary() {
        let cluster = RedisCluster::shared();
        let stores = [store(cluster).await, store(cluster).await];
        let primaries = cluster.primaries();
        let tags: Vec<String> = primaries.iter().map(|&p| cluster.tag_on(p)).collect();
        let homes: HashSet<u16> = tags.iter().map(|t| cluster.primary_for_key(t)).collect();
        assert_eq!(homes.len(), 3, "the keys land on three primaries: {tags:?}");
        let limits = [
            Limit::new(Rate::per_minute(50)),
            Limit::new(Rate::per_hour(500)),
        ];
        for algorithm in ALGORITHMS {
            for tag in &tags {
                let key = format!("rl:{}{tag}", unique_prefix());
                let checks = (0..200).map(|i| {
                    let charge = check(&key, &limits, algorithm);
                    stores[i % 2].check(charge)
                });
                let decisions: Vec<_> = join_all(checks).await;
                let allowed = decisions
                    .iter()
                    .filter(|d| d.as_ref().unwrap().allowed)
                    .count();
                assert_eq!(allowed, 50, "{algorithm:?} on {tag}");
            }
        }
    }

    #[tokio::test]
    async fn a_script_flush_on_every_node_costs_no_decision() {
        let cluster = RedisCluster::shared();
        let store = store(cluster).await;
        let limits = [Limit::new(Rate::per_minute(5))];
        let key = format!("rl:{}{{flushed}}", unique_prefix());
        for remaining in [4, 3] {
            let decision = store
                .check(check(&key, &limits, Algorithm::FixedWindow))
                .await;
            assert_eq!(decision.unwrap().remaining, remaining);
            cluster.script_flush_all();
        }
        let decision = store
            .check(check(&key, &limits, Algorithm::FixedWindow))
            .await;
        assert_eq!(decision.unwrap().remaining, 2);
    }

    #[tokio::test]
    async fn a_replica_promoted_mid_load_loses_and_adds_nothing() {
        let cluster = blocking(RedisCluster::start).await;
        let store = store(&cluster).await;
        let primary = cluster.primaries()[0];
        let replica = cluster.replica_of(primary);
        let key = format!("rl:{}{}", unique_prefix(), cluster.tag_on(primary));
        let limits = [Limit::new(Rate::per_hour(150))];
        let (first, errors) = burst(std::slice::from_ref(&store), &key, &limits, 100).await;
        assert_eq!((first, errors), (100, 0));
        let cluster = std::sync::Arc::new(cluster);
        let promoting = {
            let cluster = cluster.clone();
            tokio::task::spawn_blocking(move || cluster.failover(replica))
        };
        let mut during = 0;
        while !promoting.is_finished() {
            let (allowed, errors) = burst(std::slice::from_ref(&store), &key, &limits, 5).await;
            assert_eq!(errors, 0, "a graceful failover fails no decision");
            during += allowed;
        }
        promoting.await.unwrap();
        assert_eq!(cluster.primary_for_key(&key), replica);
        let (after, errors) = burst(std::slice::from_ref(&store), &key, &limits, 100).await;
        assert_eq!(errors, 0);
        assert_eq!(
            first + during + after,
            150,
            "exactly the limit across the failover"
        );
    }

    #[tokio::test]
    async fn a_killed_primary_is_replaced_without_restarting_the_app() {
        let cluster = blocking(RedisCluster::start).await;
        let store = store(&cluster).await;
        let primary = cluster.primaries()[1];
        let key = format!("rl:{}{}", unique_prefix(), cluster.tag_on(primary));
        let limits = [Limit::new(Rate::per_hour(1000))];
        let charge = || check(&key, &limits, Algorithm::SlidingWindow);
        assert!(store.check(charge()).await.unwrap().allowed);
        let cluster = std::sync::Arc::new(cluster);
        {
            let cluster = cluster.clone();
            blocking(move || cluster.kill(primary)).await;
        }
        let killed = tokio::time::Instant::now();
        // Each decision is bounded as a policy's timeout bounds it; the gap
        // is the fail mode's, then the promoted replica answers.
        let mut failed = 0;
        loop {
            let answer = tokio::time::timeout(Duration::from_millis(100), store.check(charge()));
            match answer.await {
                Ok(Ok(decision)) => {
                    assert!(decision.allowed);
                    break;
                }
                _ => failed += 1,
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no new primary");
        }
        let gap = killed.elapsed();
        eprintln!(
            "cluster: decisions resumed {gap:?} after kill -9 of a primary ({failed} failed)"
        );
        let settled = cluster.clone();
        blocking(move || settled.wait_until_ok()).await;
        assert_ne!(cluster.primary_for_key(&key), primary);
    }

    #[tokio::test]
    async fn a_slot_migrated_by_hand_keeps_every_decision_and_count() {
        let cluster = blocking(RedisCluster::start).await;
        let store = store(&cluster).await;
        let [from, to, ..] = cluster.primaries()[..] else {
            panic!("three primaries");
        };
        let tag = cluster.tag_on(from);
        let key = format!("rl:{}{tag}", unique_prefix());
        let limits = [
            Limit::new(Rate::per_minute(30)),
            Limit::new(Rate::per_hour(300)),
        ];
        let counters: Vec<String> = ["60", "3600"].map(|w| format!("{key}:{w}:gcra")).into();
        let (mut allowed, errors) = burst(std::slice::from_ref(&store), &key, &limits, 10).await;
        assert_eq!(errors, 0);
        let migration = cluster.begin_migration(cluster.slot_of(&key), to);
        // MIGRATING on the source, the keys still there: answered by it.
        let (more, errors) = burst(std::slice::from_ref(&store), &key, &limits, 5).await;
        assert_eq!((more, errors), (5, 0));
        allowed += more;
        // The keys moved, the slot not yet: ASK, answered by the target.
        let names: Vec<&str> = counters.iter().map(String::as_str).collect();
        assert!(migration.move_keys_named(&names));
        let (more, errors) = burst(std::slice::from_ref(&store), &key, &limits, 5).await;
        assert_eq!((more, errors), (5, 0), "ASK is followed");
        allowed += more;
        migration.finish();
        assert_eq!(cluster.primary_for_key(&key), to);
        let (more, errors) = burst(std::slice::from_ref(&store), &key, &limits, 40).await;
        assert_eq!(errors, 0, "MOVED is followed");
        allowed += more;
        assert_eq!(allowed, 30, "counts carried across the migration");
    }
}

/// Asks until a decision comes back, each bounded as a policy's timeout
/// bounds it; the decision and how many calls failed before it.
async fn until_answered(store: &RedisStore, key: &str, limits: &[Limit]) -> (bool, usize) {
    let started = tokio::time::Instant::now();
    let mut failed = 0;
    loop {
        let charge = check(key, limits, Algorithm::FixedWindow);
        match tokio::time::timeout(Duration::from_millis(100), store.check(charge)).await {
            Ok(Ok(decision)) => return (decision.allowed, failed),
            _ => failed += 1,
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never answered again"
        );
    }
}

#[cfg(feature = "sentinel")]
mod sentinel {
    use std::sync::Arc;

    use axum_redis_ratelimit::{
        Limit, Rate, RedisStore,
        store::{RedisConfig, RedisConnection},
    };
    use redis::aio::ConnectionLike;

    use super::{
        common::topology::{RedisSentinels, query},
        until_answered,
    };
    use crate::common::unique_prefix;

    /// The commands the sentinel on `port` has processed since it started
    /// (a sentinel keeps no per-command statistics).
    fn commands(port: u16) -> u64 {
        let info: String = query(port, &["INFO", "stats"]).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    async fn start() -> (Arc<RedisSentinels>, RedisStore) {
        let set = Arc::new(
            tokio::task::spawn_blocking(RedisSentinels::start)
                .await
                .unwrap(),
        );
        let config = RedisConfig::sentinel(set.sentinel_urls(), set.master_name()).db(1);
        let connection = RedisConnection::open(config.clone()).unwrap();
        assert_eq!(connection.get_db(), 1);
        (set, RedisStore::connect(config).await.unwrap())
    }

    /// Whether the counter of client `key` (its one hourly limit) is in
    /// database 1 of the node on `port`.
    fn holds(port: u16, key: &str) -> bool {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/1")).unwrap();
        let mut conn = client.get_connection().unwrap();
        let counter = format!("{key}:3600:fixed");
        redis::cmd("EXISTS").arg(counter).query(&mut conn).unwrap()
    }

    #[tokio::test]
    async fn a_killed_master_is_followed_without_restarting_the_app() {
        let (set, store) = start().await;
        let limits = [Limit::new(Rate::per_hour(100))];
        let key = format!("rl:{}{{agent}}", unique_prefix());
        assert_eq!(until_answered(&store, &key, &limits).await, (true, 0));
        let old = set.master_port();
        let asked_before: u64 = set.sentinel_ports().iter().map(|&p| commands(p)).sum();
        let killed = tokio::time::Instant::now();
        set.kill(old);
        let (allowed, failed) = until_answered(&store, &key, &limits).await;
        assert!(allowed);
        let gap = killed.elapsed();
        eprintln!(
            "sentinel: decisions resumed {gap:?} after kill -9 of the master ({failed} failed)"
        );
        // Thousands of failed calls, but the sentinels are asked at most
        // every 200 ms. A question may reach all three sentinels with a few
        // commands each, and they talk among themselves during a failover:
        // ten commands per 200 ms is ample, against thousands unpaced.
        let asked_after: u64 = set.sentinel_ports().iter().map(|&p| commands(p)).sum();
        let asked = asked_after - asked_before;
        let bound = 10 * (gap.as_millis() as u64 / 200 + 5);
        eprintln!("sentinel: {asked} commands to the sentinels meanwhile, bound {bound}");
        assert!(
            asked <= bound,
            "{asked} commands to the sentinels in {gap:?}"
        );
        assert!(
            failed as u64 > bound,
            "the gap must outnumber the questions to show anything"
        );
        let waiting = set.clone();
        let new = tokio::task::spawn_blocking(move || waiting.wait_for_new_master(old))
            .await
            .unwrap();
        let fresh = format!("rl:{}{{after}}", unique_prefix());
        assert_eq!(until_answered(&store, &fresh, &limits).await, (true, 0));
        assert!(holds(new, &fresh), "written to the new master");
        // The old master comes back empty, a master until the sentinels
        // demote it: it must get none of the limiter's writes.
        let restarting = set.clone();
        tokio::task::spawn_blocking(move || restarting.restart(old))
            .await
            .unwrap();
        let later = format!("rl:{}{{later}}", unique_prefix());
        for _ in 0..20 {
            assert!(until_answered(&store, &later, &limits).await.0);
        }
        assert!(holds(new, &later));
        assert!(!holds(old, &later), "no write to the old master");
    }

    #[tokio::test]
    async fn a_master_demoted_in_place_is_left_at_its_first_readonly() {
        let (set, store) = start().await;
        let limits = [Limit::new(Rate::per_hour(100))];
        let key = format!("rl:{}{{agent}}", unique_prefix());
        assert_eq!(until_answered(&store, &key, &limits).await, (true, 0));
        let old = set.master_port();
        // A failover the sentinels run on their own: the old master stays up,
        // now a replica, and the store's connection to it stays open.
        let sentinel = set.sentinel_ports()[0];
        let () = query(sentinel, &["SENTINEL", "FAILOVER", set.master_name()]).unwrap();
        // Until the sentinels have turned the old master into a replica it
        // takes writes (Sentinel's own window, which the store cannot see);
        // from then on it answers READONLY, which sends the store to the new
        // master.
        let waiting = set.clone();
        let new = tokio::task::spawn_blocking(move || {
            let new = waiting.wait_for_new_master(old);
            waiting.wait_until_replica(old);
            new
        })
        .await
        .unwrap();
        let (allowed, failed) = until_answered(&store, &key, &limits).await;
        assert!(allowed);
        eprintln!("sentinel: {failed} decisions failed on the demoted master");
        let fresh = format!("rl:{}{{after}}", unique_prefix());
        assert_eq!(until_answered(&store, &fresh, &limits).await, (true, 0));
        assert!(holds(new, &fresh), "written to the new master");
    }
}

#[cfg(feature = "tls")]
mod tls {
    use std::sync::OnceLock;

    use axum_redis_ratelimit::{
        RedisStore,
        store::{RedisConfig, TlsFiles},
    };

    use super::{Duration, common::topology::TlsRedis};
    use crate::common::within;

    fn server() -> &'static TlsRedis {
        static SERVER: OnceLock<TlsRedis> = OnceLock::new();
        SERVER.get_or_init(TlsRedis::start)
    }

    fn config(files: TlsFiles) -> RedisConfig {
        RedisConfig::from(server().url()).tls(files)
    }

    async fn connect(config: RedisConfig) -> Result<RedisStore, axum_redis_ratelimit::Error> {
        // An error, never a hang: the bound is a guard, not a measurement.
        within(Duration::from_secs(10), RedisStore::connect(config)).await
    }

    #[tokio::test]
    async fn mutual_tls_connects_with_the_right_files() {
        let s = server();
        let files =
            TlsFiles::ca(s.ca_path()).client_cert(s.client_cert_path(), s.client_key_path());
        connect(config(files)).await.unwrap();
    }

    #[tokio::test]
    async fn without_a_client_certificate_the_server_refuses_at_startup() {
        let error = connect(config(TlsFiles::ca(server().ca_path())))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("CertificateRequired"), "{error}");
        assert!(error.is_store_error(), "{error}");
    }

    #[tokio::test]
    async fn a_client_certificate_of_another_ca_is_refused_at_startup() {
        let s = server();
        let files = TlsFiles::ca(s.ca_path())
            .client_cert(s.wrong_client_cert_path(), s.wrong_client_key_path());
        assert!(connect(config(files)).await.is_err());
    }

    #[tokio::test]
    async fn a_server_certificate_of_another_ca_is_refused_at_startup() {
        let s = server();
        let files =
            TlsFiles::ca(s.wrong_ca_path()).client_cert(s.client_cert_path(), s.client_key_path());
        let error = connect(config(files)).await.unwrap_err();
        assert!(
            error.to_string().to_lowercase().contains("certificate"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_plain_url_to_the_tls_port_is_an_error_not_a_hang() {
        let plain = server().url().replacen("rediss://", "redis://", 1);
        let error = connect(RedisConfig::from(plain)).await.unwrap_err();
        assert_eq!(error.config_path().as_deref(), Some("redis.url"), "{error}");
        assert!(error.to_string().contains("use rediss://"), "{error}");
    }

    #[test]
    fn a_missing_or_empty_file_is_named_at_startup() {
        let missing = RedisStore::connect_lazy(config(TlsFiles::ca("/nonexistent/ca.pem")));
        let error = missing.unwrap_err();
        assert_eq!(error.config_path().as_deref(), Some("redis.tls.ca"));
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
        let s = server();
        let not_a_key = TlsFiles::ca(s.ca_path()).client_cert(s.client_cert_path(), s.ca_path());
        let error = RedisStore::connect_lazy(config(not_a_key)).unwrap_err();
        assert_eq!(
            error.config_path().as_deref(),
            Some("redis.tls.key"),
            "{error}"
        );
        let key_as_ca = TlsFiles::ca(s.client_key_path());
        let error = RedisStore::connect_lazy(config(key_as_ca)).unwrap_err();
        assert_eq!(
            error.config_path().as_deref(),
            Some("redis.tls.ca"),
            "{error}"
        );
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        let plain = RedisConfig::from("redis://127.0.0.1:1").tls(TlsFiles::ca(s.ca_path()));
        let error = RedisStore::connect_lazy(plain).unwrap_err();
        assert_eq!(error.config_path().as_deref(), Some("redis.tls"), "{error}");
    }
}
