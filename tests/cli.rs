//! The `ratelimit` operators' tool, end to end: the built binary against
//! Redis servers the harness starts, reading the counters that a real layer
//! (from the same policy file) wrote for requests sent through it.
#![cfg(feature = "cli")]

mod common;

use std::{
    ffi::OsStr,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Output,
};

use axum::{Extension, Router, body::Body, extract::ConnectInfo, routing::post};
use axum_redis_ratelimit::{
    Policy, RateLimitLayer, RedisStore, config::PolicyFile, store::RedisConfig,
};
use common::{RedisServer, topology::TempDir, unique_prefix};
use http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

/// The policies of these tests, under `prefix`: a secret header with two
/// limits, a plain header, and client IPs grouped by /64.
fn policies_toml(prefix: &str) -> String {
    format!(
        r#"
[[policies]]
name = "telemetry"
prefix = "{prefix}"
rate = ["5/m", "20/h"]
key = {{ type = "header", name = "X-Agent-Token", secret = true }}

[[policies]]
name = "plain"
prefix = "{prefix}"
rate = "3/m"
key = {{ type = "header", name = "X-Client" }}

[[policies]]
name = "login"
prefix = "{prefix}"
algorithm = "sliding_window"
rate = "4/m"
key = {{ type = "client_ip", ipv6_prefix = 64 }}
"#
    )
}

/// A policy file in a directory of its own, and the policies it holds.
struct Fixture {
    dir: TempDir,
    file: PathBuf,
    policies: PolicyFile,
}

impl Fixture {
    fn new() -> Self {
        Self::with(&policies_toml(&unique_prefix()))
    }

    fn with(toml: &str) -> Self {
        let dir = TempDir::new("cli");
        let file = dir.path().join("policies.toml");
        std::fs::write(&file, toml).unwrap();
        let policies = toml::from_str(toml).unwrap();
        Self {
            dir,
            file,
            policies,
        }
    }

    /// The app the policy `name` of this file limits, over `store`, its
    /// clients at `peer` (the `ConnectInfo` a server would give).
    fn app(&self, name: &str, store: RedisStore, peer: &str) -> Router {
        let policy = Policy::from(self.policies.get(name).unwrap().clone());
        let layer = RateLimitLayer::new(policy, store).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        Router::new()
            .route("/t", post(|| async { "ok" }))
            .layer(layer)
            .layer(Extension(ConnectInfo(peer)))
    }
}

/// Sends `POST /t` with one header through `app`; the status and the
/// `r` (remaining) of its `RateLimit` field.
async fn send(app: &Router, header: (&str, &[u8])) -> (StatusCode, Option<u64>) {
    let request = Request::post("/t")
        .header(header.0, header.1)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let remaining = response.headers().get("ratelimit").map(|field| {
        let field = field.to_str().unwrap();
        let r = field.split(';').find_map(|p| p.strip_prefix("r=")).unwrap();
        r.parse().unwrap()
    });
    (response.status(), remaining)
}

/// Runs `ratelimit` with `args`, never with the caller's REDIS_URL or
/// POLICY_FILE (the machine's own Redis is not ours to touch).
async fn ratelimit<S: AsRef<OsStr>>(args: &[S]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ratelimit"))
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("POLICY_FILE")
        .output()
        .await
        .unwrap()
}

/// `ratelimit --policies FILE --redis URL --json ARGS…`, which must succeed;
/// its JSON document.
async fn json(file: &Path, redis: &str, args: &[&str]) -> Value {
    let mut all = vec![
        "--policies",
        file.to_str().unwrap(),
        "--redis",
        redis,
        "--json",
    ];
    all.extend(args);
    let output = ratelimit(&all).await;
    assert!(output.status.success(), "{args:?}: {}", shown(&output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", shown(&output)))
}

/// Standard output and error, for failure messages.
fn shown(output: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `(used, remaining)` of each limit of an `inspect --json`.
fn figures(report: &Value) -> Vec<(u64, u64)> {
    report["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["used"].as_u64().unwrap(),
                l["remaining"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn inspect_shows_what_the_layer_counted_for_secret_plain_and_ip_keys() {
    let fixture = Fixture::new();
    let url = RedisServer::shared().url();
    let store = RedisStore::connect(url).await.unwrap();

    // A secret token that also needs hashing (a space, braces).
    let token = "AGENT 1 {x}";
    let telemetry = fixture.app("telemetry", store.clone(), "203.0.113.9:1000");
    let mut last = None;
    for _ in 0..3 {
        let (status, remaining) = send(&telemetry, ("x-agent-token", token.as_bytes())).await;
        assert_eq!(status, StatusCode::OK);
        last = remaining;
    }
    let report = json(&fixture.file, url, &["inspect", "telemetry", token]).await;
    // The layer reports the limit with the fewest remaining: 5/m.
    assert_eq!(last, Some(2));
    assert_eq!(figures(&report), [(3, 2), (3, 17)], "{report}");
    let client = report["client"].as_str().unwrap();
    assert!(client.starts_with("x-agent-token:#"), "{client}");
    assert!(!report.to_string().contains("AGENT"), "{report}");
    // The key it read is the one the layer wrote.
    let redis_key = report["redis_key"].as_str().unwrap();
    let keys = common::keys_with_prefix(&format!("{redis_key}:")).await;
    assert_eq!(keys.len(), 2, "{redis_key}: {keys:?}");

    // A plain header, shown as stored.
    let plain = fixture.app("plain", store.clone(), "203.0.113.9:1000");
    let (_, remaining) = send(&plain, ("x-client", b"client-b")).await;
    let report = json(&fixture.file, url, &["inspect", "plain", "client-b"]).await;
    assert_eq!(remaining, Some(2));
    assert_eq!(figures(&report), [(1, 2)]);
    assert_eq!(report["client"], "x-client:client-b");

    // IPv6 clients counted by /64: any address of the network reads it.
    let login = fixture.app("login", store, "[2001:db8:1:2:3:4:5:6]:443");
    send(&login, ("x-any", b"1")).await;
    let (_, remaining) = send(&login, ("x-any", b"1")).await;
    let report = json(
        &fixture.file,
        url,
        &["inspect", "login", "2001:db8:1:2::99"],
    )
    .await;
    assert_eq!(remaining, Some(2));
    assert_eq!(figures(&report), [(2, 2)]);
    assert_eq!(report["client"], "ip:2001:db8:1:2::/64");

    // For people: a table.
    let file = fixture.file.to_str().unwrap();
    let args = ["-p", file, "--redis", url, "inspect", "telemetry", token];
    let output = ratelimit(&args).await;
    assert!(output.status.success(), "{}", shown(&output));
    let table = stdout(&output);
    for expected in ["LIMIT", "REMAINING", "5/m", "20/h", client] {
        assert!(table.contains(expected), "{expected}: {table}");
    }
    assert!(!table.contains("AGENT"), "{table}");
}

#[tokio::test]
async fn mistakes_fail_naming_what_is_wrong_and_never_show_a_password() {
    let fixture = Fixture::new();
    let file = fixture.file.to_str().unwrap();
    let url = RedisServer::shared().url();
    let cases: [(&[&str], &str); 6] = [
        (&["inspect", "nosuch", "x"], "no policy \"nosuch\""),
        (&["top", "nosuch"], "it defines telemetry, plain, login"),
        (
            &["inspect", "login", "not-an-ip"],
            "\"not-an-ip\" is not an IP address",
        ),
        (&["inspect", "plain"], "no VALUE"),
        (
            &["inspect", "plain", "x", "--key", "user"],
            "no key labelled \"user\"",
        ),
        (&["reset", "telemetry", ""], "invalid `value`"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["-p", file, "--redis", url];
        all.extend(args);
        let output = ratelimit(&all).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            shown(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            shown(&output)
        );
    }
    // No Redis given: a usage error naming the flags.
    let output = ratelimit(&["-p", file, "inspect", "plain", "x"]).await;
    assert_eq!(output.status.code(), Some(2), "{}", shown(&output));
    assert!(stderr(&output).contains("--redis"), "{}", shown(&output));

    // An unreachable Redis is a Redis error (1), its password never shown.
    let closed = format!("redis://:hunter2@127.0.0.1:{}/1", common::free_port());
    let output = ratelimit(&["-p", file, "--redis", &closed, "inspect", "plain", "x"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert!(!shown(&output).contains("hunter2"), "{}", shown(&output));
    let bad = "redis//:hunter2@127.0.0.1:1/1";
    let output = ratelimit(&["-p", file, "--redis", bad, "inspect", "plain", "x"]).await;
    assert_eq!(output.status.code(), Some(2), "{}", shown(&output));
    assert!(stderr(&output).contains("redis.url"), "{}", shown(&output));
    assert!(!shown(&output).contains("hunter2"), "{}", shown(&output));
}

#[tokio::test]
async fn reset_unblocks_the_client_and_leaves_every_other_client_alone() {
    let fixture = Fixture::new();
    let url = RedisServer::shared().url();
    let store = RedisStore::connect(url).await.unwrap();
    let plain = fixture.app("plain", store.clone(), "203.0.113.9:1000");
    for client in [&b"A"[..], b"B"] {
        for _ in 0..3 {
            assert_eq!(send(&plain, ("x-client", client)).await.0, StatusCode::OK);
        }
        let denied = send(&plain, ("x-client", client)).await.0;
        assert_eq!(denied, StatusCode::TOO_MANY_REQUESTS);
    }

    // Values crafted to look like B's key, or to match it as a pattern,
    // name other clients (hashed), and reset nothing of B's.
    for crafted in ["B}", "B*", "*", "?", "B:60", "x-client:B", "{x-client:B}"] {
        let report = json(&fixture.file, url, &["reset", "plain", crafted]).await;
        assert_eq!(report["deleted"], 0, "{crafted}: {report}");
    }
    let dry = json(&fixture.file, url, &["reset", "plain", "B", "--dry-run"]).await;
    assert_eq!(
        (dry["dry_run"].clone(), figures(&dry)),
        (true.into(), vec![(3, 0)])
    );
    let still = send(&plain, ("x-client", b"B")).await.0;
    assert_eq!(
        still,
        StatusCode::TOO_MANY_REQUESTS,
        "B must still be blocked"
    );

    // A is really unblocked: its next request is allowed.
    let report = json(&fixture.file, url, &["reset", "plain", "A"]).await;
    assert_eq!(report["deleted"], 1, "{report}");
    let (status, remaining) = send(&plain, ("x-client", b"A")).await;
    assert_eq!((status, remaining), (StatusCode::OK, Some(2)));
    let b = json(&fixture.file, url, &["inspect", "plain", "B"]).await;
    assert_eq!(figures(&b), [(3, 0)], "B's counters are untouched");
    assert_eq!(
        send(&plain, ("x-client", b"B")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    // A secret key is reset by its raw value, both its limits.
    let telemetry = fixture.app("telemetry", store, "203.0.113.9:1000");
    for _ in 0..6 {
        send(&telemetry, ("x-agent-token", b"T-1")).await;
    }
    let file = fixture.file.to_str().unwrap();
    let output = ratelimit(&["-p", file, "--redis", url, "reset", "telemetry", "T-1"]).await;
    assert!(output.status.success(), "{}", shown(&output));
    assert!(
        stdout(&output).contains("2 of 2 counters"),
        "{}",
        shown(&output)
    );
    let allowed = send(&telemetry, ("x-agent-token", b"T-1")).await;
    assert_eq!(allowed, (StatusCode::OK, Some(4)));
}

#[tokio::test]
async fn top_ranks_the_most_used_clients_first_within_its_scan_budget() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let url = server.url();
    // Many keys of others: SCAN has to walk past them.
    let mut conn = server.connection().await;
    let mut mset = redis::cmd("MSET");
    for i in 0..6000 {
        mset.arg(format!("other:app:{i}")).arg(i);
    }
    let () = mset.query_async(&mut conn).await.unwrap();

    let fixture = Fixture::new();
    let store = RedisStore::connect(url).await.unwrap();
    let plain = fixture.app("plain", store.clone(), "203.0.113.9:1000");
    for (client, requests) in [("light", 1), ("full", 3), ("half", 2)] {
        for _ in 0..requests {
            send(&plain, ("x-client", client.as_bytes())).await;
        }
    }
    let telemetry = fixture.app("telemetry", store, "203.0.113.9:1000");
    send(&telemetry, ("x-agent-token", b"SECRET-TOKEN")).await;

    let top = json(
        &fixture.file,
        url,
        &["top", "plain", "--scan-max", "100000"],
    )
    .await;
    let clients: Vec<&str> = top["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap())
        .collect();
    assert_eq!(
        clients,
        ["x-client:full", "x-client:half", "x-client:light"],
        "{top}"
    );
    assert_eq!(top["clients"][0]["fraction_used"], 1.0);
    assert_eq!(top["complete"], true, "{top}");
    let two = json(&fixture.file, url, &["top", "plain", "-n", "2"]).await;
    assert_eq!(two["clients"].as_array().unwrap().len(), 2, "{two}");

    // Secret clients stay hashed.
    let top = json(&fixture.file, url, &["top", "telemetry"]).await;
    let inspect = json(
        &fixture.file,
        url,
        &["inspect", "telemetry", "SECRET-TOKEN"],
    )
    .await;
    assert_eq!(top["clients"][0]["client"], inspect["client"], "{top}");
    assert!(!top.to_string().contains("SECRET"), "{top}");

    // A budget smaller than the keyspace stops early and says so.
    let file = fixture.file.to_str().unwrap();
    let args = [
        "-p",
        file,
        "--redis",
        url,
        "top",
        "plain",
        "--scan-max",
        "1000",
    ];
    let output = ratelimit(&args).await;
    assert!(output.status.success(), "{}", shown(&output));
    assert!(
        stdout(&output).contains("stopped early"),
        "{}",
        shown(&output)
    );
    let early = json(&fixture.file, url, &["top", "plain", "--scan-max", "1000"]).await;
    assert_eq!(
        (early["complete"].clone(), early["scanned"].clone()),
        (false.into(), 1000.into())
    );
    let whole = ratelimit(&["-p", file, "--redis", url, "top", "plain"]).await;
    let table = stdout(&whole);
    assert!(table.contains("scanned the whole keyspace"), "{table}");
    let full = table.lines().position(|l| l.contains("x-client:full"));
    let light = table.lines().position(|l| l.contains("x-client:light"));
    assert!(full < light && full.is_some(), "{table}");
}

#[tokio::test]
async fn check_prints_the_edr_limits_and_names_a_broken_field() {
    let edr = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/edr-policies.toml");
    let output = ratelimit(&["-p", edr, "check"]).await;
    assert!(output.status.success(), "{}", shown(&output));
    let table = stdout(&output);
    for expected in [
        "3 policies, all valid",
        "telemetry",
        "10/s burst 20, 1000/m burst 20",
        "x-agent-token (header, secret)",
        "login",
        "10/h",
        "dashboard",
        "60/m",
    ] {
        assert!(table.contains(expected), "{expected}: {table}");
    }
    let output = ratelimit(&["-p", edr, "check", "--json"]).await;
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["policies"][0]["limits"][1]["rate"], "1000/m");
    assert_eq!(report["policies"][1]["counter_pattern"], "rl:login:{*");

    let broken =
        |policy: &str| format!("[[policies]]\nname = \"p\"\nkey = {{ type = \"user\" }}\n{policy}");
    let cases = [
        (broken("rate = \"5/m\"\nburst = 3"), "policies.p.burst"),
        (
            broken("rate = \"5/m\"\ntimeout_ms = 0"),
            "policies.p.timeout",
        ),
        (broken("rate = \"5/w\""), "\"5/w\""),
        (broken("rate = \"5/m\"\ntypo = 1"), "typo"),
        (
            format!("{}\n{}", broken("rate = \"5/m\""), broken("rate = \"6/m\"")),
            "policies.p.name",
        ),
    ];
    for (toml, field) in cases {
        let fixture_dir = TempDir::new("cli-check");
        let path = fixture_dir.path().join("broken.toml");
        std::fs::write(&path, &toml).unwrap();
        let output = ratelimit(&[OsStr::new("-p"), path.as_os_str(), OsStr::new("check")]).await;
        assert_eq!(output.status.code(), Some(2), "{toml}: {}", shown(&output));
        assert!(
            stderr(&output).contains(field),
            "{field}: {}",
            shown(&output)
        );
    }
    let fixture = Fixture::with(&broken("rate = \"5/m\"\nburst = 3"));
    let args = [
        OsStr::new("-p"),
        fixture.file.as_os_str(),
        OsStr::new("check"),
        OsStr::new("--json"),
    ];
    let output = ratelimit(&args).await;
    assert_eq!(output.status.code(), Some(2), "{}", shown(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"][0]["field"], "policies.p.burst", "{report}");
    drop(fixture.dir);
}

/// `check` says which policies lease, with the largest slice, the app
/// servers sharing it and when an idle slice goes back.
#[tokio::test]
async fn check_prints_each_policys_lease_settings() {
    let fixture = Fixture::with(
        "[[policies]]\nname = \"telemetry\"\nrate = \"1000/m\"\n\
         key = { type = \"header\", name = \"x-agent-token\" }\n\
         lease = { max_slice = 64, instances = 4, idle_return_ms = 300 }\n\
         [[policies]]\nname = \"login\"\nrate = \"10/h\"\nkey = { type = \"client_ip\" }\n",
    );
    let args = [
        OsStr::new("-p"),
        fixture.file.as_os_str(),
        OsStr::new("check"),
    ];
    let output = ratelimit(&args).await;
    assert!(output.status.success(), "{}", shown(&output));
    let table = stdout(&output);
    let row = |name: &str| {
        table
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {table}"))
            .to_owned()
    };
    assert!(table.contains("LEASE"), "{table}");
    assert!(
        row("telemetry").ends_with("64 / 4 servers, back after 300ms"),
        "{table}"
    );
    assert!(row("login").ends_with("off"), "{table}");
    drop(fixture.dir);
}

#[cfg(feature = "sentinel")]
#[tokio::test]
async fn inspect_reset_and_top_follow_the_sentinels_master() {
    use common::topology::RedisSentinels;

    let sentinels = RedisSentinels::start();
    let config = RedisConfig::sentinel(sentinels.sentinel_urls(), sentinels.master_name()).db(1);
    let fixture = Fixture::new();
    let redis_config = fixture.dir.path().join("redis.toml");
    std::fs::write(&redis_config, toml::to_string(&config).unwrap()).unwrap();

    let store = RedisStore::connect(config).await.unwrap();
    let plain = fixture.app("plain", store, "203.0.113.9:1000");
    for _ in 0..3 {
        send(&plain, ("x-client", b"S")).await;
    }
    assert_eq!(
        send(&plain, ("x-client", b"S")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    let run = |args: &'static [&'static str]| {
        let (file, redis) = (fixture.file.clone(), redis_config.clone());
        async move {
            let mut all = vec![OsStr::new("-p"), file.as_os_str()];
            all.extend([
                OsStr::new("--redis-config"),
                redis.as_os_str(),
                OsStr::new("--json"),
            ]);
            all.extend(args.iter().map(OsStr::new));
            let output = ratelimit(&all).await;
            assert!(output.status.success(), "{args:?}: {}", shown(&output));
            serde_json::from_slice::<Value>(&output.stdout).unwrap()
        }
    };
    assert_eq!(figures(&run(&["inspect", "plain", "S"]).await), [(3, 0)]);
    let top = run(&["top", "plain"]).await;
    assert_eq!(top["clients"][0]["client"], "x-client:S", "{top}");
    assert_eq!(run(&["reset", "plain", "S"]).await["deleted"], 1);
    assert_eq!(send(&plain, ("x-client", b"S")).await.0, StatusCode::OK);
}

#[cfg(feature = "cluster")]
#[tokio::test]
async fn top_scans_every_primary_of_a_cluster() {
    use common::topology::RedisCluster;

    let cluster = RedisCluster::start();
    let config = RedisConfig::cluster(cluster.seed_urls());
    let fixture = Fixture::new();
    let redis_config = fixture.dir.path().join("redis.toml");
    std::fs::write(&redis_config, toml::to_string(&config).unwrap()).unwrap();
    let store = RedisStore::connect(config).await.unwrap();
    let plain = fixture.app("plain", store, "203.0.113.9:1000");
    let policy = Policy::from(fixture.policies.get("plain").unwrap().clone());
    // Clients until every primary holds one, each with its own count.
    let mut primaries = std::collections::HashSet::new();
    let mut clients = Vec::new();
    for i in 0.. {
        let client = format!("c{i}");
        let key = policy.client_key(None, client.as_bytes()).unwrap();
        primaries.insert(cluster.primary_for_key(&key));
        clients.push(client);
        if primaries.len() == 3 {
            break;
        }
    }
    for (i, client) in clients.iter().enumerate() {
        for _ in 0..=(i % 3) {
            send(&plain, ("x-client", client.as_bytes())).await;
        }
    }
    let file = fixture.file.to_str().unwrap();
    let args = [
        "-p",
        file,
        "--redis-config",
        redis_config.to_str().unwrap(),
        "--json",
        "top",
        "plain",
    ];
    let output = ratelimit(&args).await;
    assert!(output.status.success(), "{}", shown(&output));
    let top: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(top["clients_in_use"], clients.len(), "{top}");
    assert_eq!(top["complete"], true, "{top}");
}

/// The README's operator user: the limiter's ACL and `+scan` runs every
/// command; without `+scan`, `top` fails as a Redis error naming it.
#[tokio::test]
async fn an_operator_with_the_limiters_acl_and_scan_runs_every_command() {
    use common::topology::{LIMITER_ACL, create_user, url_with_user};

    let Some(server) = RedisServer::private() else {
        return;
    };
    // The default prefix, which the ACL's key pattern covers.
    let fixture = Fixture::with(&policies_toml("rl:"));
    let store = RedisStore::connect(server.url()).await.unwrap();
    let plain = fixture.app("plain", store, "203.0.113.9:1000");
    for _ in 0..3 {
        send(&plain, ("x-client", b"op")).await;
    }
    let mut rules = LIMITER_ACL.to_vec();
    create_user(server.url(), "no-scan", "s3cret", &rules);
    rules.push("+scan");
    create_user(server.url(), "operator", "s3cret", &rules);
    let operator = url_with_user(server.url(), "operator", "s3cret");
    assert_eq!(
        figures(&json(&fixture.file, &operator, &["inspect", "plain", "op"]).await),
        [(3, 0)]
    );
    let top = json(&fixture.file, &operator, &["top", "plain"]).await;
    assert_eq!(top["clients"][0]["client"], "x-client:op", "{top}");
    assert_eq!(
        json(&fixture.file, &operator, &["reset", "plain", "op"]).await["deleted"],
        1
    );

    let no_scan = url_with_user(server.url(), "no-scan", "s3cret");
    let file = fixture.file.to_str().unwrap();
    let output = ratelimit(&["-p", file, "--redis", &no_scan, "top", "plain"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert!(
        stderr(&output).to_lowercase().contains("scan"),
        "{}",
        shown(&output)
    );
    assert!(!shown(&output).contains("s3cret"), "{}", shown(&output));
}
