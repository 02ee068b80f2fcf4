//! Smoke tests of the topology harness (`tests/common/topology.rs`) itself,
//! with plain redis crate connections only: the cluster forms and spreads
//! hash tags over its primaries, fails over, moves a slot; the sentinels
//! report a master and elect a new one; TLS answers the right certificates
//! only; an ACL user gets the rules given; Valkey answers when installed.

mod common;

use std::time::{Duration, Instant};

use common::{
    RedisServer,
    topology::{
        ClientAuth, LIMITER_ACL, RedisCluster, RedisSentinels, Role, TlsRedis, connection,
        create_user, query, replica_link_up, role, start_valkey, url_with_user,
    },
};
use redis::AsyncCommands;

/// Runs a blocking harness call off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[test]
fn the_cluster_forms_with_three_primaries_each_with_a_replica() {
    let cluster = RedisCluster::shared();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{:?}", cluster.view());
    let mut replicas: Vec<u16> = primaries.iter().map(|&p| cluster.replica_of(p)).collect();
    for replica in &replicas {
        assert!(!primaries.contains(replica));
        assert!(matches!(
            role(*replica).unwrap(),
            Role::Replica {
                connected: true,
                ..
            }
        ));
        replica_link_up(*replica).unwrap();
    }
    let mut all: Vec<u16> = primaries.iter().chain(&replicas).copied().collect();
    all.sort();
    let mut ports = cluster.ports();
    ports.sort();
    assert_eq!(all, ports);
    replicas.sort();
    assert_eq!(replicas, cluster.replicas());
    assert_eq!(cluster.seed_urls().len(), 6);
}

#[test]
fn hash_tags_land_on_three_different_primaries() {
    let cluster = RedisCluster::shared();
    let primaries = cluster.primaries();
    // {a}, {b}, {c}…: the first tags that reach every primary.
    let mut found: Vec<(String, u16)> = Vec::new();
    for tag in (b'a'..=b'z').map(|c| format!("{{{}}}", c as char)) {
        let primary = cluster.primary_for_key(&tag);
        if !found.iter().any(|(_, p)| *p == primary) {
            found.push((tag, primary));
        }
    }
    assert_eq!(found.len(), 3, "{found:?}");
    for (tag, primary) in &found {
        let key = format!("rl:smoke:{tag}");
        assert_eq!(cluster.slot_of(&key), cluster.slot_of(tag));
        let mut conn = connection(*primary).unwrap();
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(*primary)
            .query(&mut conn)
            .unwrap();
        let stored: u16 = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
        assert_eq!(stored, *primary);
        // Another primary redirects.
        let other = primaries.iter().find(|p| *p != primary).unwrap();
        let error = query::<Option<String>>(*other, &["GET", &key]).unwrap_err();
        assert_eq!(error.code(), Some("MOVED"), "{error}");
    }
    for &primary in &primaries {
        let tag = cluster.tag_on(primary);
        assert_eq!(cluster.primary_for_key(&format!("x{tag}y")), primary);
    }
}

#[tokio::test]
async fn a_cluster_client_reaches_every_primary() {
    let cluster = blocking(RedisCluster::shared).await;
    let mut conn = cluster.client().get_async_connection().await.unwrap();
    for primary in cluster.primaries() {
        let key = format!("rl:client:{}", cluster.tag_on(primary));
        let () = conn.set(&key, primary).await.unwrap();
        let stored: u16 = conn.get(&key).await.unwrap();
        assert_eq!(stored, primary);
        let mut direct = connection(primary).unwrap();
        let exists: bool = redis::cmd("EXISTS").arg(&key).query(&mut direct).unwrap();
        assert!(exists, "{key} is not on {primary}");
    }
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 1")
        .query(&mut connection(cluster.primaries()[0]).unwrap())
        .unwrap();
    cluster.script_flush_all();
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query(&mut connection(cluster.primaries()[0]).unwrap())
        .unwrap();
    assert_eq!(exists, [false]);
}

#[test]
fn a_failover_kill_and_restart_move_the_primary_role() {
    let cluster = RedisCluster::start();
    let primary = cluster.primaries()[0];
    let replica = cluster.replica_of(primary);

    // Manual failover: the replica becomes primary, the primary its replica.
    cluster.failover(replica);
    let primaries = cluster.primaries();
    assert!(primaries.contains(&replica), "{primaries:?}");
    assert!(!primaries.contains(&primary), "{primaries:?}");
    assert_eq!(cluster.replica_of(replica), primary);

    // Killing the new primary: its replica (the first primary) takes over.
    let start = Instant::now();
    cluster.kill(replica);
    cluster.wait_until_ok();
    // Printed, not asserted: its time is the machine's load (the wait
    // gives up after its own limit).
    eprintln!("cluster failover took {:?}", start.elapsed());
    assert!(cluster.primaries().contains(&primary));

    // Restarted, the killed node rejoins as the replica.
    cluster.restart(replica);
    cluster.wait_until_ok();
    assert_eq!(cluster.replica_of(primary), replica);
    assert_eq!(cluster.primaries().len(), 3);
}

#[test]
fn a_slot_migration_moves_a_key() {
    let cluster = RedisCluster::start();
    let (moved, stays) = ("rl:{migrated}:a", "rl:{migrated}:b");
    let slot = cluster.slot_of(moved);
    let from = cluster.owner_of_slot(slot);
    let to = *cluster.primaries().iter().find(|&&p| p != from).unwrap();
    for key in [moved, stays] {
        let () = query(from, &["SET", key, "1"]).unwrap();
    }

    let migration = cluster.begin_migration(slot, to);
    assert!(migration.move_keys_named(&[moved]));
    // Between MIGRATING and the end: the source asks the client to ask the
    // target for a key it no longer has, and still serves the other.
    let error = query::<Option<String>>(from, &["GET", moved]).unwrap_err();
    assert_eq!(error.code(), Some("ASK"), "{error}");
    let value: String = query(from, &["GET", stays]).unwrap();
    assert_eq!(value, "1");
    assert_eq!(migration.move_keys(), 1);
    migration.finish();

    assert_eq!(cluster.owner_of_slot(slot), to);
    assert_eq!(cluster.primary_for_key(moved), to);
    for key in [moved, stays] {
        let value: String = query(to, &["GET", key]).unwrap();
        assert_eq!(value, "1");
        let error = query::<Option<String>>(from, &["GET", key]).unwrap_err();
        assert_eq!(error.code(), Some("MOVED"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentinels_report_a_master_and_elect_a_new_one() {
    let set = blocking(RedisSentinels::start).await;
    let set = std::sync::Arc::new(set);
    let [first, second] = set.data_ports()[..] else {
        unreachable!()
    };
    assert_eq!(set.master_name(), "mymaster");
    assert_eq!(set.master_port(), first);
    assert_eq!(set.sentinel_urls().len(), 3);

    let mut conn = set.client().get_async_connection().await.unwrap();
    let () = conn.set("rl:sentinel", 1).await.unwrap();
    // Replicated before the master goes.
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acked, 1);

    let start = Instant::now();
    let killed = set.kill_master();
    assert_eq!(killed, first);
    let new = blocking({
        let set = set.clone();
        move || set.wait_for_new_master(killed)
    })
    .await;
    // How long it took is the sentinels' configuration and the machine's
    // load, not a property of this harness: printed, not asserted (the
    // wait above gives up after FAILOVER_LIMIT).
    eprintln!("sentinel failover took {:?}", start.elapsed());
    assert_eq!(new, second);

    // A new client finds the new master, with the data.
    let mut conn = set.client().get_async_connection().await.unwrap();
    let value: i64 = conn.get("rl:sentinel").await.unwrap();
    assert_eq!(value, 1);

    // The old master, restarted as it was, is made a replica.
    let start = Instant::now();
    blocking({
        let set = set.clone();
        move || {
            set.restart(killed);
            set.wait_until_replica(killed);
        }
    })
    .await;
    eprintln!(
        "the old master was a replica again after {:?}",
        start.elapsed()
    );
}

#[test]
fn tls_answers_the_right_certificates_only() {
    let server = TlsRedis::start();
    assert_eq!(
        server.url(),
        format!("rediss://127.0.0.1:{}", server.port())
    );
    let ping = |certificates| -> redis::RedisResult<String> {
        let client = server.client_with(certificates);
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
        redis::cmd("PING").query(&mut conn)
    };
    assert_eq!(ping(server.right_certificates()).unwrap(), "PONG");

    let (ca, wrong_ca) = (server.ca_path(), server.wrong_ca_path());
    let client = (server.client_cert_path(), server.client_key_path());
    let wrong = (
        server.wrong_client_cert_path(),
        server.wrong_client_key_path(),
    );
    // A client certificate of another CA, or none, is refused…
    let refused = ping(server.certificates(&ca, Some((&wrong.0, &wrong.1))));
    assert!(refused.is_err(), "{refused:?}");
    let refused = ping(server.certificates(&ca, None));
    assert!(refused.is_err(), "{refused:?}");
    // …and the server is not trusted through another CA.
    let refused = ping(server.certificates(&wrong_ca, Some((&client.0, &client.1))));
    assert!(refused.is_err(), "{refused:?}");

    // Without client authentication, no client certificate is needed.
    let open = TlsRedis::start_with(ClientAuth::Off);
    let mut conn = open
        .client_with(open.certificates(&open.ca_path(), None))
        .get_connection()
        .unwrap();
    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn an_acl_user_gets_the_rules_given() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    // LIMITER_ACL and HGET, which this test's script calls besides HSET (a
    // script's commands are checked against the user's rules too).
    let rules = [LIMITER_ACL, &["+hget"]].concat();
    let skipped = create_user(server.url(), "limiter", "secret", &rules);
    // Redis 7.0 has no CLIENT SETINFO, 7.2 and Valkey do.
    assert!(
        skipped.iter().all(|r| r == "+client|setinfo"),
        "{skipped:?}"
    );

    // Database 0: no SELECT needed.
    let url = url_with_user(server.url(), "limiter", "secret");
    let url = url.strip_suffix("/1").unwrap();
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
    let script =
        "redis.call('HSET', KEYS[1], 'c', ARGV[1]) return redis.call('HGET', KEYS[1], 'c')";
    let eval = |conn: &mut redis::Connection, key: &str| {
        redis::cmd("EVAL")
            .arg(script)
            .arg(1)
            .arg(key)
            .arg("7")
            .query::<String>(conn)
    };
    assert_eq!(eval(&mut conn, "rl:acl").unwrap(), "7");
    // No key outside ~rl:*, no command outside the rules, in a script or not.
    let error = eval(&mut conn, "other:acl").unwrap_err();
    assert_eq!(error.code(), Some("NOPERM"), "{error}");
    let error = redis::cmd("EVAL")
        .arg("return redis.call('HGETALL', KEYS[1])")
        .arg(1)
        .arg("rl:acl")
        .query::<String>(&mut conn)
        .unwrap_err();
    assert!(error.to_string().contains("can't run"), "{error}");
    let error = redis::cmd("FLUSHDB")
        .query::<String>(&mut conn)
        .unwrap_err();
    assert_eq!(error.code(), Some("NOPERM"), "{error}");
}

#[tokio::test]
async fn valkey_answers_when_installed() {
    let Some(server) = start_valkey() else {
        return;
    };
    let mut conn = server.connection().await;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(info.contains("valkey_version"), "{info}");
}
