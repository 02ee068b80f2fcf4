//! End-to-end tests of `examples/evalsha_baseline.rs`, the minimal
//! single-`EVALSHA` middleware `scripts/loadbench.py` measures the crate
//! against (variant `evalsha`): the built example runs as a child process on
//! a free port against a `redis-server` of the test's own, driven over HTTP.
//! A baseline that over-admitted or skipped its round trip would make the
//! comparison meaningless, so its behaviour is pinned here.
//!
//! `cargo test` builds examples before tests; `cargo test --test
//! evalsha_baseline` alone does not, so a binary older than its sources is
//! refused (build it with `cargo build --example evalsha_baseline`).

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use common::{HttpClient, RedisServer, Reply, command_calls, eventually, free_port, spawn_reaped};
use http::{Method, StatusCode};
use sha2::{Digest, Sha256};

const TELEMETRY: &str = "/api/v1/telemetry/";

/// Generous: a debug build on a loaded machine. Only a bound on a hang.
const STARTUP: Duration = Duration::from_secs(30);

fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    // target/debug/deps/evalsha_baseline-xxxx → target/debug/examples/evalsha_baseline
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("evalsha_baseline"))
        .expect("the test binary lives in target/<profile>/deps");
    let stale = |why: String| -> ! {
        panic!(
            "{why}: build it with `cargo build --example evalsha_baseline` (`cargo test` \
             builds examples, `cargo test --test evalsha_baseline` does not)"
        )
    };
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| stale(format!("{} not found", binary.display())));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = root.join("examples");
    let sources = [
        examples.join("evalsha_baseline.rs"),
        examples.join("minimal_baseline.lua"),
        root.join("src").join("rate.rs"),
    ];
    for source in sources {
        let modified = std::fs::metadata(&source).and_then(|m| m.modified());
        if modified.is_ok_and(|modified| modified > built) {
            stale(format!(
                "{} is older than {}",
                binary.display(),
                source.display()
            ));
        }
    }
    binary
}

/// The running example; killed when dropped.
struct Baseline {
    child: Child,
    http: HttpClient,
}

impl Baseline {
    /// Starts the example against `redis_url` with `TELEMETRY_RATE=rate`
    /// and waits until `/healthz` answers.
    async fn start(redis_url: &str, rate: &str) -> Baseline {
        let port = free_port();
        let mut command = Command::new(example_binary());
        command
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("REDIS_URL", redis_url)
            .env("TELEMETRY_RATE", rate)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_reaped(command).expect("spawn the evalsha_baseline example");
        let mut baseline = Baseline {
            child,
            http: HttpClient::new(&format!("http://127.0.0.1:{port}")),
        };
        let probe = HttpClient::new(&format!("http://127.0.0.1:{port}"));
        let child = &mut baseline.child;
        eventually(STARTUP, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the evalsha_baseline example exited at startup with {status}");
            }
            let probe = probe.clone();
            async move {
                // A refused connection is an error, not a reply: probe the port first.
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                    && probe.get("/healthz", &[]).await.status == StatusCode::OK
            }
        })
        .await;
        baseline
    }

    /// A batch of one event, as the load benchmark sends.
    async fn post(&self, token: Option<&[u8]>) -> Reply {
        let headers: Vec<(&str, &[u8])> = token.map(|t| ("x-agent-token", t)).into_iter().collect();
        let body = r#"[{"event":"process_start"}]"#;
        (self.http)
            .send_body(Method::POST, TELEMETRY, &headers, body)
            .await
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token no other test (nor an earlier run against the same `REDIS_URL`)
/// uses.
fn token(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("AGENT-{name}-{}-{nanos}", std::process::id())
}

/// The key the example keeps `token`'s count under.
fn key_of(token: &str) -> String {
    let hex: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("evalsha:telemetry:{hex}")
}

fn retry_after(reply: &Reply) -> u64 {
    let value = reply
        .header("retry-after")
        .expect("a 429 carries Retry-After");
    value.parse().expect("Retry-After in whole seconds")
}

#[tokio::test]
async fn admits_exactly_the_limit_under_concurrency_then_429_with_retry_after() {
    let server = RedisServer::shared();
    let baseline = Baseline::start(server.url(), "10/m").await;
    let agent = token("exact");

    let replies =
        futures::future::join_all((0..25).map(|_| baseline.post(Some(agent.as_bytes())))).await;
    let accepted: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .collect();
    let denied: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!((accepted.len(), denied.len()), (10, 15), "{replies:?}");
    for reply in accepted {
        assert_eq!(reply.body, r#"{"status":"accepted"}"#);
    }
    for reply in denied {
        // At most the window and the millisecond Redis keeps a key at PTTL 0.
        assert!((1..=61).contains(&retry_after(reply)), "{reply:?}");
    }

    // One counter per token, under the hash of the token (never the token
    // itself), expiring within the window.
    let mut redis = server.connection().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key_of(&agent))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((1..=60_000).contains(&ttl), "PTTL {ttl}");
    let clear: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{agent}*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(clear.is_empty(), "{clear:?}");

    // Another agent has its own count.
    let other = token("exact-other");
    assert_eq!(
        baseline.post(Some(other.as_bytes())).await.status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn retry_after_is_never_early() {
    let baseline = Baseline::start(RedisServer::shared().url(), "2/2s").await;
    let agent = token("retry");
    // Until the first 429: a window may end between two requests.
    let mut denied = None;
    for _ in 0..20 {
        let reply = baseline.post(Some(agent.as_bytes())).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            denied = Some((reply, Instant::now()));
            break;
        }
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    }
    let (reply, at) = denied.expect("a 429 within 20 requests at 2 per 2 s");
    let wait = retry_after(&reply);
    assert!((1..=3).contains(&wait), "{reply:?}");

    // Waited as told, from when the answer came: admitted.
    tokio::time::sleep_until((at + Duration::from_secs(wait)).into()).await;
    let reply = baseline.post(Some(agent.as_bytes())).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
}

#[tokio::test]
async fn refuses_a_missing_or_over_long_token() {
    let baseline = Baseline::start(RedisServer::shared().url(), "1000/m").await;

    let reply = baseline.post(None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    assert_eq!(
        baseline.post(Some(b"")).await.status,
        StatusCode::UNAUTHORIZED
    );

    let long = format!("{}-{}", token("long"), "x".repeat(256));
    let reply = baseline.post(Some(&long.as_bytes()[..257])).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    let reply = baseline.post(Some(&long.as_bytes()[..256])).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
}

/// The baseline does the EDR example's batch check, so that the load
/// benchmark compares the limiters alone: a batch is charged the events it
/// declares and must hold exactly those.
#[tokio::test]
async fn a_batch_is_charged_its_declared_events_and_must_hold_them() {
    let baseline = Baseline::start(RedisServer::shared().url(), "10/m").await;
    let agent = token("batch");
    let send = |count: &'static [u8], body: &'static str| {
        let headers = [
            ("x-agent-token", agent.as_bytes()),
            ("x-event-count", count),
        ];
        let http = &baseline.http;
        async move {
            (http
                .send_body(Method::POST, TELEMETRY, &headers, body)
                .await)
                .status
        }
    };
    let three = r#"[{"a":1},{"b":2},{"c":3}]"#;
    assert_eq!(send(b"3", three).await, StatusCode::ACCEPTED);
    // Charged 2, then refused by the handler: it holds 3.
    assert_eq!(send(b"2", three).await, StatusCode::BAD_REQUEST);
    assert_eq!(send(b"x", three).await, StatusCode::BAD_REQUEST);
    // 3 + 2 + 3 = 8 of 10, then 11: refused.
    assert_eq!(send(b"3", three).await, StatusCode::ACCEPTED);
    assert_eq!(send(b"3", three).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn one_evalsha_per_request_and_503_while_redis_is_down() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let baseline = Baseline::start(server.url(), "1000/m").await;
    let agent = token("down");
    // The first call loads the script (EVALSHA answered NOSCRIPT, SCRIPT LOAD).
    assert_eq!(
        baseline.post(Some(agent.as_bytes())).await.status,
        StatusCode::ACCEPTED
    );

    let mut redis = server.connection().await;
    common::reset_command_stats(&mut redis).await;
    for _ in 0..5 {
        assert_eq!(
            baseline.post(Some(agent.as_bytes())).await.status,
            StatusCode::ACCEPTED
        );
    }
    let mut calls = command_calls(&mut redis).await;
    // Ours: the reset and this look-up.
    calls.remove("config|resetstat");
    calls.remove("info");
    // Top level, one EVALSHA a request; inside it, INCRBY and PTTL (the
    // counter is not new).
    let expected = [("evalsha", 5), ("incrby", 5), ("pttl", 5)];
    let expected: HashMap<String, u64> = expected.map(|(name, n)| (name.to_owned(), n)).into();
    assert_eq!(calls, expected);

    server.kill();
    let reply = baseline.post(Some(agent.as_bytes())).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.body, r#"{"error":"rate limiter unavailable"}"#);

    // Back, with an empty script cache: reconnected, and the script is
    // loaded again on NOSCRIPT.
    server.restart();
    eventually(STARTUP, || async {
        baseline.post(Some(agent.as_bytes())).await.status == StatusCode::ACCEPTED
    })
    .await;
}
