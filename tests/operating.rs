//! Operating a limiter: the metrics a scrape shows (read back with a real
//! exposition-format parser), the decision log and what it must never
//! contain, shadow mode, and exemptions, each tried the way a hostile client
//! or a bad day would.
#![cfg(feature = "metrics")]

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
use axum_redis_ratelimit::{
    Breaker, Cost, FailMode, ForwardedHeader, Key, MemoryStore, Mode, Outcome, Policy, Rate,
    RateLimitLayer, RateLimitStatus, RedisStore, config::PolicyFile, layer::Stats, metrics,
    outcome::STORE_TARGET, store::Store,
};
use common::{HttpClient, RedisServer, eventually, free_port, unique_prefix};
use http::{Method, Request, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower::ServiceExt;

/// The process's recorder, installed once for every test of this binary;
/// each test's policies have names of their own, so their series are apart.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(metrics::names::STORE_DURATION.into()),
                &metrics::STORE_DURATION_BUCKETS,
            )
            .unwrap()
            .install_recorder()
            .unwrap()
    })
}

/// A scrape, parsed as Prometheus would.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn now() -> Self {
        let text = recorder().render();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Self(prometheus_parse::Scrape::parse(lines).expect("the exposition format parses"))
    }

    /// The value of `name` with exactly these labels, if exported.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                other => panic!("{name}: unexpected {other:?}"),
            })
    }

    fn decisions(&self, policy: &str, outcome: Outcome) -> f64 {
        let labels = [("policy", policy), ("outcome", outcome.as_str())];
        self.value(metrics::names::DECISIONS, &labels)
            .unwrap_or(0.0)
    }

    /// Every label value of every series of `policy`.
    fn label_values(&self, policy: &str) -> Vec<String> {
        self.0
            .samples
            .iter()
            .filter(|s| s.labels.get("policy") == Some(policy))
            .flat_map(|s| s.labels.values().cloned().collect::<Vec<_>>())
            .collect()
    }
}

/// A policy name of this test's own, so its series are its own.
fn name(test: &str) -> String {
    format!(
        "{test}-{}",
        unique_prefix().trim_end_matches(':').replace(':', "-")
    )
}

fn app(layer: RateLimitLayer<impl Store>) -> Router {
    Router::new()
        .route(
            "/t",
            get(|status: RateLimitStatus| async move {
                // What annotate mode would hand the handler: nothing in shadow mode.
                if status.iter().next().is_some() {
                    "annotated"
                } else {
                    "plain"
                }
            })
            .post(|| async { "queued" }),
        )
        .layer(layer)
}

fn layer(policy: Policy, store: impl Store) -> (HttpClient, Arc<Stats>) {
    let layer = RateLimitLayer::new(policy, store).unwrap();
    let stats = layer.stats();
    (HttpClient::in_process(app(layer)), stats)
}

const AGENT: &str = "agent-7f3e9c-secret-token";

/// A request's header lines.
type Headers<'a> = &'a [(&'a str, &'a [u8])];

#[tokio::test]
async fn every_outcome_is_counted_by_policy_and_outcome_and_no_label_holds_a_client_value() {
    recorder();
    let policy = name("outcomes");
    let (client, stats) = layer(
        Policy::new(&policy)
            .rate(Rate::per_minute(2))
            .key(Key::header("x-agent-token").secret())
            .cost(Cost::header("x-event-count"))
            .exempt_header("x-agent-token", ["health-agent-token"])
            .block_cache(100),
        MemoryStore::new(),
    );
    let agent: &[(&str, &[u8])] = &[("x-agent-token", AGENT.as_bytes())];
    let sent: [(Headers, StatusCode, usize); 8] = [
        (agent, StatusCode::OK, 2),
        (agent, StatusCode::TOO_MANY_REQUESTS, 2),
        (&[], StatusCode::BAD_REQUEST, 1),
        (
            &[("x-agent-token", b"a"), ("x-agent-token", b"b")],
            StatusCode::BAD_REQUEST,
            1,
        ),
        (
            &[("x-agent-token", b"other"), ("x-event-count", b"lots")],
            StatusCode::BAD_REQUEST,
            1,
        ),
        (
            &[("x-agent-token", b"other"), ("x-event-count", b"3")],
            StatusCode::PAYLOAD_TOO_LARGE,
            1,
        ),
        (
            &[("x-agent-token", b"health-agent-token")],
            StatusCode::OK,
            3,
        ),
        (&[("x-agent-token", b"fresh")], StatusCode::OK, 1),
    ];
    for (headers, status, times) in sent {
        for _ in 0..times {
            assert_eq!(
                client.post("/t", headers).await.status,
                status,
                "{headers:?}"
            );
        }
    }
    let scrape = Scrape::now();
    // The agent's second denial came from the block cache, without the store.
    let expected = [
        (Outcome::Allowed, 3.0),
        (Outcome::Denied, 1.0),
        (Outcome::DeniedCached, 1.0),
        (Outcome::MissingKey, 1.0),
        (Outcome::RepeatedKey, 1.0),
        (Outcome::BadCost, 1.0),
        (Outcome::CostTooLarge, 1.0),
        (Outcome::Exempt, 3.0),
        (Outcome::FailedOpen, 0.0),
        (Outcome::ShadowDenied, 0.0),
    ];
    for (outcome, count) in expected {
        assert_eq!(scrape.decisions(&policy, outcome), count, "{outcome}");
        assert_eq!(stats.decisions(outcome) as f64, count, "{outcome} in Stats");
    }
    // Four store calls (3 allowed, 1 denied), each one histogram sample.
    let calls = scrape.value(
        &format!("{}_count", metrics::names::STORE_DURATION),
        &[("policy", &policy)],
    );
    assert_eq!(calls, Some(4.0));
    let cached = scrape.value(metrics::names::BLOCK_CACHE_ENTRIES, &[("policy", &policy)]);
    assert_eq!(cached, Some(1.0));
    assert!(
        scrape
            .value(metrics::names::MEMORY_STORE_COUNTERS, &[])
            .unwrap()
            >= 2.0
    );
    // Cardinality stays with the policies: no label carries a token, a
    // header value or a key, whatever the clients sent.
    for value in scrape.label_values(&policy) {
        let known = value == policy
            || Outcome::ALL.iter().any(|o| o.as_str() == value)
            || ["open", "closed"].contains(&value.as_str());
        assert!(
            known,
            "a label value that is not a policy or an outcome: {value:?}"
        );
    }
}

#[tokio::test]
async fn a_redis_outage_shows_in_errors_fail_mode_and_breaker_and_its_end_too() {
    recorder();
    let Some(server) = RedisServer::private() else {
        return;
    };
    let policy = name("outage");
    let capture = Capture::default();
    let _guard = capture.install("axum_redis_ratelimit::store=info");
    let store = RedisStore::connect(server.url()).await.unwrap();
    let (client, _) = layer(
        Policy::new(&policy)
            .rate(Rate::per_minute(1000))
            .key(Key::header("x-agent-token"))
            .prefix(unique_prefix())
            .breaker(Breaker::new(2, Duration::from_millis(50)))
            .timeout(Duration::from_millis(200))
            .fail_open(),
        store,
    );
    let agent: &[(&str, &[u8])] = &[("x-agent-token", b"agent-1")];
    assert_eq!(client.post("/t", agent).await.status, StatusCode::OK);
    server.kill();
    for _ in 0..5 {
        assert_eq!(client.post("/t", agent).await.status, StatusCode::OK);
    }
    let during = Scrape::now();
    let labels = [("policy", policy.as_str())];
    assert_eq!(during.decisions(&policy, Outcome::Allowed), 1.0);
    assert_eq!(during.decisions(&policy, Outcome::FailedOpen), 5.0);
    let errors = during.value(metrics::names::STORE_ERRORS, &labels).unwrap();
    assert!(errors >= 2.0, "{errors} store errors");
    assert_eq!(
        during.value(metrics::names::BREAKER_OPEN, &labels),
        Some(1.0)
    );
    let opened = [("policy", policy.as_str()), ("to", "open")];
    assert_eq!(
        during.value(metrics::names::BREAKER_TRANSITIONS, &opened),
        Some(1.0)
    );

    server.restart();
    eventually(Duration::from_secs(10), || async {
        client.post("/t", agent).await.status == StatusCode::OK
            && Scrape::now().value(metrics::names::BREAKER_OPEN, &labels) == Some(0.0)
    })
    .await;
    let after = Scrape::now();
    let closed = [("policy", policy.as_str()), ("to", "closed")];
    assert_eq!(
        after.value(metrics::names::BREAKER_TRANSITIONS, &closed),
        Some(1.0)
    );
    assert!(after.decisions(&policy, Outcome::Allowed) >= 2.0);
    // Logged once when it started and once when it ended, not per request.
    let log = capture.text();
    assert_eq!(log.matches("store failing").count(), 1, "{log}");
    assert_eq!(log.matches("limiting resumed").count(), 1, "{log}");
    assert!(log.contains(STORE_TARGET), "{log}");
}

/// Shadow mode and block mode over one store, the same policy and key: what
/// shadow mode counted, block mode then enforces.
#[tokio::test]
async fn shadow_mode_counts_as_usual_blocks_nothing_and_tells_the_client_nothing() {
    recorder();
    let policy = name("shadow");
    let store = MemoryStore::new();
    let rules = |mode| {
        Policy::new(&policy)
            .rate(Rate::per_minute(2))
            .key(Key::header("x-agent-token"))
            .cost(Cost::header("x-event-count"))
            .block_cache(10)
            .mode(mode)
    };
    let (shadow, stats) = layer(rules(Mode::Shadow), store.clone());
    let agent: &[(&str, &[u8])] = &[("x-agent-token", b"agent-1")];
    for _ in 0..5 {
        let reply = shadow.get("/t", agent).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "plain")
        );
        for field in [
            "ratelimit",
            "ratelimit-policy",
            "retry-after",
            "x-ratelimit-remaining",
        ] {
            assert!(reply.header(field).is_none(), "{field} in shadow mode");
        }
    }
    // What the layer would refuse, shadow mode forwards and counts.
    let refused: [&[(&str, &[u8])]; 4] = [
        &[],
        &[("x-agent-token", b"a"), ("x-agent-token", b"b")],
        &[("x-agent-token", b"b"), ("x-event-count", b"x")],
        &[("x-agent-token", b"c"), ("x-event-count", b"3")],
    ];
    for headers in refused {
        let reply = shadow.get("/t", headers).await;
        assert_eq!(reply.status, StatusCode::OK, "{headers:?}");
        assert!(reply.header("ratelimit").is_none());
    }
    let scrape = Scrape::now();
    assert_eq!(scrape.decisions(&policy, Outcome::Allowed), 2.0);
    // Three denials of agent-1 (the later ones from the block cache, still
    // forwarded) and the cost of 3 that no limit admits.
    assert_eq!(scrape.decisions(&policy, Outcome::ShadowDenied), 4.0);
    assert_eq!(stats.decisions(Outcome::ShadowDenied), 4);
    for outcome in [Outcome::MissingKey, Outcome::RepeatedKey, Outcome::BadCost] {
        assert_eq!(scrape.decisions(&policy, outcome), 1.0, "{outcome}");
    }
    for outcome in [Outcome::Denied, Outcome::DeniedCached] {
        assert_eq!(scrape.decisions(&policy, outcome), 0.0, "{outcome}");
    }
    // The shadow layer spent agent-1's quota: the block layer denies at once.
    let (block, _) = layer(rules(Mode::Block), store);
    let denied = block.get("/t", agent).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        block
            .get("/t", &[("x-agent-token", b"agent-2")])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn shadow_mode_forwards_through_an_outage_even_when_the_policy_fails_closed() {
    recorder();
    let policy = name("shadow-down");
    let url = format!("redis://127.0.0.1:{}", free_port());
    let store = RedisStore::connect_lazy(url.as_str()).unwrap();
    let rules = |mode| {
        Policy::new(&policy)
            .rate(Rate::per_minute(2))
            .key(Key::header("x-agent-token"))
            .on_store_error(FailMode::Closed)
            .mode(mode)
    };
    let agent: &[(&str, &[u8])] = &[("x-agent-token", b"agent-1")];
    let (shadow, _) = layer(rules(Mode::Shadow), store.clone());
    for _ in 0..3 {
        assert_eq!(shadow.get("/t", agent).await.status, StatusCode::OK);
    }
    assert_eq!(Scrape::now().decisions(&policy, Outcome::FailedOpen), 3.0);
    // The mirror: the same policy in block mode fails closed.
    let (block, _) = layer(rules(Mode::Block), store);
    let reply = block.get("/t", agent).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(Scrape::now().decisions(&policy, Outcome::FailedClosed), 1.0);
}

/// One request to `app` from `peer`, with `headers`.
async fn from(app: &Router, method: Method, peer: &str, headers: &[(&str, &str)]) -> StatusCode {
    let mut request = Request::builder().method(method).uri("/t");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Body::empty()).unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    app.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn an_exempt_header_value_skips_the_limit_and_nothing_near_it_does() {
    recorder();
    let policy = name("exempt-header");
    let layer = RateLimitLayer::new(
        Policy::new(&policy)
            .rate(Rate::per_minute(1))
            .key(Key::header("x-agent-token").secret())
            .methods([Method::GET])
            .exempt_header("X-Agent-Token", ["health-agent", "probe-2"]),
        MemoryStore::new(),
    )
    .unwrap();
    let stats = layer.stats();
    let app = app(layer);
    let peer = "192.0.2.1:5000";
    for method in [Method::GET, Method::HEAD] {
        for token in ["health-agent", "probe-2"] {
            for _ in 0..3 {
                let status = from(&app, method.clone(), peer, &[("x-agent-token", token)]).await;
                assert_eq!(status, StatusCode::OK, "{method} {token}");
            }
        }
    }
    assert_eq!(stats.decisions(Outcome::Exempt), 12);
    // Near misses are ordinary clients: each allowed once, then limited.
    for token in [
        "health-agen",
        "health-agent-2",
        "HEALTH-AGENT",
        "health-agent ",
        "health",
    ] {
        let headers = [("x-agent-token", token)];
        assert_eq!(
            from(&app, Method::GET, peer, &headers).await,
            StatusCode::OK,
            "{token:?}"
        );
        let again = from(&app, Method::HEAD, peer, &headers).await;
        assert_eq!(again, StatusCode::TOO_MANY_REQUESTS, "{token:?}");
    }
    // The exempt value beside another, or twice: not exempt (and the key
    // refuses a repeated header).
    for pair in [
        ["health-agent", "other"],
        ["other", "health-agent"],
        ["health-agent"; 2],
    ] {
        let headers = [("x-agent-token", pair[0]), ("x-agent-token", pair[1])];
        let status = from(&app, Method::GET, peer, &headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{pair:?}");
    }
    assert_eq!(stats.decisions(Outcome::Exempt), 12);
    assert_eq!(stats.decisions(Outcome::RepeatedKey), 3);
}

#[tokio::test]
async fn exempt_networks_match_the_client_not_a_header_it_forged() {
    let policy = |trusting: bool| {
        let policy = Policy::new("exempt-ip")
            .rate(Rate::per_minute(1))
            .key(Key::client_ip())
            .exempt_ips(["10.20.0.0/16", "2001:db8::1"]);
        match trusting {
            true => {
                policy.exempt_trusted_proxies(["203.0.113.0/24"], ForwardedHeader::XForwardedFor)
            }
            false => policy,
        }
    };
    let untrusting = app(RateLimitLayer::new(policy(false), MemoryStore::new()).unwrap());
    for peer in ["10.20.3.4:1", "[::ffff:10.20.3.4]:1", "[2001:db8::1]:1"] {
        for _ in 0..3 {
            assert_eq!(
                from(&untrusting, Method::GET, peer, &[]).await,
                StatusCode::OK,
                "{peer}"
            );
        }
    }
    // Next door, or claiming an exempt address in a header nobody trusts.
    for peer in ["10.21.0.1:1", "[2001:db8::2]:1"] {
        assert_eq!(
            from(&untrusting, Method::GET, peer, &[]).await,
            StatusCode::OK
        );
        let again = from(&untrusting, Method::GET, peer, &[]).await;
        assert_eq!(again, StatusCode::TOO_MANY_REQUESTS, "{peer}");
    }
    let forged = [("x-forwarded-for", "10.20.3.4")];
    let proxy = "203.0.113.5:1";
    assert_eq!(
        from(&untrusting, Method::GET, proxy, &forged).await,
        StatusCode::OK
    );
    assert_eq!(
        from(&untrusting, Method::GET, proxy, &forged).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Behind a trusted proxy, the header it appended is the client.
    let trusting = app(RateLimitLayer::new(policy(true), MemoryStore::new()).unwrap());
    for _ in 0..3 {
        assert_eq!(
            from(&trusting, Method::GET, proxy, &forged).await,
            StatusCode::OK
        );
    }
    // A client's own entry to the left of an untrusted one is not believed.
    let chained = [("x-forwarded-for", "10.20.3.4, 198.51.100.7")];
    assert_eq!(
        from(&trusting, Method::GET, proxy, &chained).await,
        StatusCode::OK
    );
    assert_eq!(
        from(&trusting, Method::GET, proxy, &chained).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn an_exempt_predicate_sees_the_request_head() {
    let layer = RateLimitLayer::new(
        Policy::new("exempt-fn")
            .rate(Rate::per_minute(1))
            .key(Key::global())
            .exempt_if(|parts| parts.uri.query() == Some("internal")),
        MemoryStore::new(),
    )
    .unwrap();
    let stats = layer.stats();
    let app = Router::new()
        .route("/t", get(|| async { "ok" }))
        .layer(layer);
    let send = |uri: &'static str| {
        let app = app.clone();
        async move {
            let request = Request::get(uri).body(Body::empty()).unwrap();
            app.oneshot(request).await.unwrap().status()
        }
    };
    for _ in 0..3 {
        assert_eq!(send("/t?internal").await, StatusCode::OK);
    }
    assert_eq!(send("/t?internal=no").await, StatusCode::OK);
    assert_eq!(send("/t").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(stats.decisions(Outcome::Exempt), 3);
}

#[tokio::test]
async fn exemptions_read_from_a_file_work_as_built_and_mistakes_name_their_field() {
    let file = |exempt: &str| {
        format!(
            "[[policies]]\nname = \"p\"\nrate = \"1/m\"\nkey = {{ type = \"header\", name = \"x-agent-token\" }}\n{exempt}"
        )
    };
    let good = file(
        "[policies.exempt]\nips = [\"10.0.0.0/8\"]\nheaders = [{ name = \"x-agent-token\", values = [\"health-agent\"] }]\n",
    );
    let parsed: PolicyFile = toml::from_str(&good).unwrap();
    let settings = parsed.get("p").unwrap().clone();
    // The token is a secret: Debug never shows it.
    assert!(
        !format!("{settings:?}").contains("health-agent"),
        "{settings:?}"
    );
    let policy: Policy = settings.into();
    assert!(!format!("{policy:?}").contains("health-agent"));
    let app = app(RateLimitLayer::new(policy, MemoryStore::new()).unwrap());
    let health = [("x-agent-token", "health-agent")];
    for peer in ["192.0.2.1:1", "10.1.2.3:1"] {
        for _ in 0..3 {
            assert_eq!(from(&app, Method::GET, peer, &health).await, StatusCode::OK);
        }
    }
    let other = [("x-agent-token", "other")];
    assert_eq!(
        from(&app, Method::GET, "192.0.2.1:1", &other).await,
        StatusCode::OK
    );
    assert_eq!(
        from(&app, Method::GET, "192.0.2.1:1", &other).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..3 {
        assert_eq!(
            from(&app, Method::GET, "10.9.9.9:1", &other).await,
            StatusCode::OK
        );
    }
    let mistakes = [
        (
            "[policies.exempt]\nips = [\"10.0.0.0/33\"]\n",
            "policies.p.exempt.ips",
        ),
        (
            "[policies.exempt]\nips = [\"10.0.0.0/8\"]\ntrusted_proxies = [\"proxy\"]\n",
            "policies.p.exempt.trusted_proxies",
        ),
        (
            "[policies.exempt]\nheaders = [{ name = \"x-agent-token\", values = [] }]\n",
            "policies.p.exempt.headers",
        ),
        (
            "[policies.exempt]\nheaders = [{ name = \"x agent\", values = [\"v\"] }]\n",
            "policies.p.exempt.headers",
        ),
    ];
    for (exempt, field) in mistakes {
        let parsed: PolicyFile = toml::from_str(&file(exempt)).unwrap();
        let policy: Policy = parsed.get("p").unwrap().clone().into();
        let error = RateLimitLayer::new(policy, MemoryStore::new()).unwrap_err();
        assert_eq!(error.config_path().as_deref(), Some(field), "{error}");
    }
    let unknown = file("[policies.exempt]\ntokens = [\"x\"]\n");
    assert!(toml::from_str::<PolicyFile>(&unknown).is_err());
}

/// Collects what a subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Logs of everything at `filter` while it is the thread's subscriber.
    fn install(&self, filter: &str) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

#[tokio::test]
async fn each_decision_is_logged_at_debug_with_a_hash_never_a_key_value() {
    let capture = Capture::default();
    let _guard = capture.install("axum_redis_ratelimit::decision=debug");
    let policy = name("logged");
    let secret_policy = Policy::new(&policy)
        .rate(Rate::per_minute(1))
        .key(
            Key::header("x-agent-token")
                .secret()
                .or(Key::header("x-user")),
        )
        .exempt_header("x-agent-token", ["health-agent-token"]);
    let (client, _) = layer(secret_policy, MemoryStore::new());
    let agent: &[(&str, &[u8])] = &[("x-agent-token", AGENT.as_bytes())];
    assert_eq!(client.post("/t", agent).await.status, StatusCode::OK);
    assert_eq!(
        client.post("/t", agent).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A plain value is no more logged than a secret one.
    let user: &[(&str, &[u8])] = &[("x-user", b"alice-plain-value")];
    assert_eq!(client.post("/t", user).await.status, StatusCode::OK);
    let health: &[(&str, &[u8])] = &[("x-agent-token", b"health-agent-token")];
    assert_eq!(client.post("/t", health).await.status, StatusCode::OK);
    assert_eq!(client.post("/t", &[]).await.status, StatusCode::BAD_REQUEST);
    let log = capture.text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&policy)).collect();
    assert_eq!(lines.len(), 5, "one line per decision:\n{log}");
    for (line, outcome) in
        lines
            .iter()
            .zip(["allowed", "denied", "allowed", "exempt", "missing_key"])
    {
        assert!(line.contains("rate_limit{"), "a span per decision: {line}");
        assert!(line.contains(&format!("outcome=\"{outcome}\"")), "{line}");
    }
    assert!(lines[0].contains("key_hash="), "{}", lines[0]);
    assert!(lines[0].contains("store_us="), "{}", lines[0]);
    assert!(
        lines[2].contains("x-user"),
        "the label is logged: {}",
        lines[2]
    );
    // The same client, the same hash: a client can be followed, not read.
    let hash = |line: &str| {
        line.split("key_hash=")
            .nth(1)
            .unwrap()
            .split([' ', '}'])
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(hash(lines[0]), hash(lines[1]));
    assert_ne!(hash(lines[0]), hash(lines[2]));
    for secret in [AGENT, "alice-plain-value", "health-agent-token", "#"] {
        assert!(!log.contains(secret), "{secret:?} logged:\n{log}");
    }
}

#[tokio::test]
async fn shadow_denials_reach_the_info_log_at_most_once_a_second() {
    let capture = Capture::default();
    let _guard = capture.install("axum_redis_ratelimit=info");
    let policy = name("shadow-log");
    let (client, stats) = layer(
        Policy::new(&policy)
            .rate(Rate::per_minute(1))
            .key(Key::header("x-agent-token").secret())
            .mode(Mode::Shadow),
        MemoryStore::new(),
    );
    let agent: &[(&str, &[u8])] = &[("x-agent-token", AGENT.as_bytes())];
    let started = std::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(client.post("/t", agent).await.status, StatusCode::OK);
    }
    let seconds = started.elapsed().as_secs() + 1;
    assert_eq!(stats.decisions(Outcome::ShadowDenied), 49);
    let log = capture.text();
    let logged = log.matches("would have been denied").count() as u64;
    assert!(
        (1..=seconds).contains(&logged),
        "{logged} lines in {seconds} s:\n{log}"
    );
    assert!(!log.contains(AGENT));
    assert!(!log.contains("rate_limit{"), "no debug span at info");
}

#[test]
fn outcomes_name_their_label_values_once_each() {
    let names: HashMap<&str, Outcome> = Outcome::ALL.iter().map(|o| (o.as_str(), *o)).collect();
    assert_eq!(names.len(), Outcome::ALL.len());
    for outcome in Outcome::ALL {
        assert_eq!(outcome.to_string(), outcome.as_str());
    }
}
