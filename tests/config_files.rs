//! Policies written in TOML and YAML, through serde, build the same layers
//! as the builder.

use axum_redis_ratelimit::{
    MemoryStore, RateLimitLayer,
    config::{PolicyConfig, PolicyFile},
};

const TOML: &str = r#"
[[policies]]
name = "telemetry"
algorithm = "gcra"
rate = ["10/s", "1000/m"]
burst = 20
key = { type = "header", name = "X-Agent-Token", secret = true }
cost = { header = "X-Event-Count" }
on_missing_key = { reject = 401 }
on_store_error = "fallback"
fallback_divisor = 4
block_cache = 50000
breaker = { failures = 5, cooldown_ms = 250 }
timeout_ms = 50

[[policies]]
name = "login"
rate = "10/h"
key = { type = "client_ip", trusted_proxies = ["10.0.0.0/8"], header = "forwarded", ipv6_prefix = 64 }
on_store_error = "closed"
methods = ["POST"]

[[policies]]
name = "dashboard"
algorithm = "sliding"
limits = [{ rate = "60/m" }]
clock = "app"
key = { type = "user", or = { type = "client_ip" } }
mode = "annotate"
legacy_headers = true
"#;

const YAML: &str = r#"
policies:
  - name: telemetry
    algorithm: gcra
    rate: ["10/s", "1000/m"]
    burst: 20
    key: { type: header, name: X-Agent-Token, secret: true }
    cost: { header: X-Event-Count }
    on_missing_key: { reject: 401 }
    on_store_error: fallback
    fallback_divisor: 4
    block_cache: 50000
    breaker: { failures: 5, cooldown_ms: 250 }
    timeout_ms: 50
  - name: login
    rate: 10/h
    key: { type: client_ip, trusted_proxies: ["10.0.0.0/8"], header: forwarded, ipv6_prefix: 64 }
    on_store_error: closed
    methods: [POST]
  - name: dashboard
    algorithm: sliding
    limits: [{ rate: 60/m }]
    clock: app
    key: { type: user, or: { type: client_ip } }
    mode: annotate
    legacy_headers: true
"#;

#[test]
fn toml_and_yaml_describe_the_same_policies() {
    let from_toml: PolicyFile = toml::from_str(TOML).unwrap();
    let from_yaml: PolicyFile = serde_yaml::from_str(YAML).unwrap();
    assert_eq!(from_toml, from_yaml);
    assert_eq!(from_toml.policies.len(), 3);
    // Each builds a layer: the file is checked as thoroughly as the builder.
    for config in from_toml.policies {
        let name = config.name.clone();
        let policy = config.into_policy();
        RateLimitLayer::new(policy, MemoryStore::new()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn a_file_round_trips_through_serde() {
    let file: PolicyFile = toml::from_str(TOML).unwrap();
    let again: PolicyFile = toml::from_str(&toml::to_string(&file).unwrap()).unwrap();
    assert_eq!(again, file);
}

#[test]
fn mistakes_in_a_file_are_reported_by_name() {
    let policy = |body: &str| format!("name = \"p\"\nkey = {{ type = \"user\" }}\n{body}");
    let parse_error = |body: &str| {
        toml::from_str::<PolicyConfig>(&policy(body))
            .unwrap_err()
            .to_string()
    };
    assert!(parse_error("rate = \"10/fortnight\"").contains("\"10/fortnight\""));
    assert!(parse_error("rate = \"1/s\"\nalgorithm = \"leaky\"").contains("leaky"));
    assert!(parse_error("rate = \"1/s\"\nrat = \"1/s\"").contains("rat"));
    // A burst is a NonZeroU64: zero is refused as the file is read, at its line.
    let zero_burst = parse_error("rate = \"1/s\"\nalgorithm = \"gcra\"\nburst = 0");
    assert!(
        zero_burst.contains("burst") && zero_burst.contains("nonzero"),
        "{zero_burst}"
    );
    let zero_limit_burst = parse_error("limits = [{ rate = \"1/s\", burst = 0 }]");
    assert!(zero_limit_burst.contains("nonzero"), "{zero_limit_burst}");
    let build_error = |body: &str| {
        let config: PolicyConfig = toml::from_str(&policy(body)).unwrap();
        let policy = config.into_policy();
        RateLimitLayer::new(policy, MemoryStore::new())
            .err()
            .unwrap()
            .to_string()
    };
    assert!(build_error("").contains("policies.p.rate"));
    assert!(build_error("rate = \"1/s\"\nburst = 5").contains("policies.p.burst"));
    assert!(build_error("rate = [\"1/s\", \"2/s\"]").contains("policies.p.rate"));
    assert!(build_error("rate = \"1/s\"\ncost = 0").contains("policies.p.cost"));
}

#[test]
fn lease_mode_in_a_file_is_the_builders() {
    use std::time::Duration;

    use axum_redis_ratelimit::{Key, Policy, Rate};

    let file: PolicyFile = toml::from_str(
        r#"
[[policies]]
name = "telemetry"
rate = "1000/m"
key = { type = "header", name = "X-Agent-Token" }

[policies.lease]
max_slice = 64
instances = 4
idle_return_ms = 100
capacity = 500

[[policies]]
name = "defaults"
rate = "1000/m"
key = { type = "header", name = "X-Agent-Token" }
lease = { max_slice = 16 }
"#,
    )
    .unwrap();
    let built = Policy::new("telemetry")
        .rate(Rate::per_minute(1000))
        .key(Key::header("X-Agent-Token"))
        .lease(64)
        .lease_instances(4)
        .lease_idle_return(Duration::from_millis(100))
        .lease_capacity(500);
    let from_file = file.get("telemetry").unwrap();
    assert_eq!(from_file.lease, built.settings().lease);
    let defaults = file.get("defaults").unwrap().lease.unwrap();
    assert_eq!(
        (defaults.max_slice, defaults.instances),
        (16, 1),
        "{defaults:?}"
    );
    assert_eq!(defaults.idle_return, Duration::from_millis(250));
    assert_eq!(defaults.capacity, 10_000);
    let again: PolicyFile = toml::from_str(&toml::to_string(&file).unwrap()).unwrap();
    assert_eq!(again, file);
}

#[test]
fn lease_mistakes_in_a_file_are_reported_by_name() {
    let policy =
        |body: &str| format!("name = \"p\"\nrate = \"10/s\"\nkey = {{ type = \"user\" }}\n{body}");
    let parse_error = |body: &str| {
        toml::from_str::<PolicyConfig>(&policy(body))
            .unwrap_err()
            .to_string()
    };
    assert!(parse_error("lease = { instances = 4 }").contains("max_slice"));
    assert!(parse_error("lease = { max_slice = 4, slice = 2 }").contains("slice"));
    let checked = |body: &str| {
        let config: PolicyConfig = toml::from_str(&policy(body)).unwrap();
        config.into_policy().validate().unwrap_err().to_string()
    };
    let zero = checked("lease = { max_slice = 0 }");
    assert!(zero.contains("policies.p.lease.max_slice"), "{zero}");
    let instances = checked("lease = { max_slice = 8, instances = 0 }");
    assert!(
        instances.contains("policies.p.lease.instances"),
        "{instances}"
    );
    let idle = checked("lease = { max_slice = 8, idle_return_ms = 0 }");
    assert!(idle.contains("policies.p.lease.idle_return_ms"), "{idle}");
    let capacity = checked("lease = { max_slice = 8, capacity = 0 }");
    assert!(capacity.contains("policies.p.lease.capacity"), "{capacity}");
    let gcra = checked("algorithm = \"gcra\"\nlease = { max_slice = 8 }");
    assert!(
        gcra.contains("policies.p.lease") && gcra.contains("gcra"),
        "{gcra}"
    );
    let app_clock = checked("clock = \"app\"\nlease = { max_slice = 8 }");
    assert!(app_clock.contains("policies.p.lease"), "{app_clock}");
}
