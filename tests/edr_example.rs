//! End-to-end tests of the `edr` example (`examples/edr/`): the built
//! example runs as a child process on a free port, against a `redis-server`
//! of the test's own or its in-memory store, and is driven over HTTP.
//!
//! `cargo test` builds examples before tests, so the binary is
//! `target/<profile>/examples/edr`, next to this test's `deps/` folder;
//! `cargo test --test edr_example` alone does not, so a binary older than its
//! sources is refused.

mod common;

use std::{
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use axum::body::Body;
use axum_redis_ratelimit::metrics::STORE_DURATION_BUCKETS;
use common::{HttpClient, RedisServer, Reply, evalsha_calls, eventually, free_port, spawn_reaped};
use http::{Method, Request, StatusCode};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// Every variable the example reads: none may leak in from the outer
/// environment (a developer's `REDIS_URL`, `RUST_LOG=off`…).
const EXAMPLE_VARS: &[&str] = &[
    "LISTEN_ADDR",
    "REDIS_URL",
    "REDIS_CLUSTER_NODES",
    "REDIS_SENTINELS",
    "REDIS_MASTER_NAME",
    "REDIS_MASTER_USERNAME",
    "REDIS_MASTER_PASSWORD",
    "REDIS_TLS_CA",
    "REDIS_TLS_CERT",
    "REDIS_TLS_KEY",
    "QUEUE_URL",
    "QUEUE_DEDUP_SECONDS",
    "QUEUE_FORMAT",
    "CELERY_QUEUE",
    "CELERY_TASK",
    "TELEMETRY_RATE",
    "TELEMETRY_ALGORITHM",
    "TELEMETRY_BURST",
    "TELEMETRY_FALLBACK_DIVISOR",
    "TELEMETRY_BLOCK_CACHE",
    "TELEMETRY_LEASE",
    "TELEMETRY_INSTANCES",
    "RATE_LIMIT",
    "LOGIN_RATE",
    "DASHBOARD_RATE",
    "TRUSTED_PROXIES",
    "POLICY_FILE",
    "METRICS_ADDR",
    "TELEMETRY_MODE",
    "LOGIN_MODE",
    "DASHBOARD_MODE",
    "TELEMETRY_EXEMPT_TOKENS",
    "RUST_LOG",
];

/// Generous: a debug build under a loaded CI machine. Only a bound on a
/// hang, never a timing assertion.
const STARTUP: Duration = Duration::from_secs(30);

fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    // target/debug/deps/edr_example-xxxx → target/debug/examples/edr
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("edr"))
        .expect("the test binary lives in target/<profile>/deps");
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "example binary {} not found: build it with `cargo build --example edr` \
                 (`cargo test` builds examples, `cargo test --test edr_example` does not)",
                binary.display()
            )
        });
    // `cargo test --test edr_example` tests whatever binary is there: refuse
    // one older than its sources rather than pass or fail on old code.
    if let Some((modified, source)) = newest_source() {
        assert!(
            modified <= built,
            "example binary {} is older than {}: rebuild it with `cargo build --example edr` \
             (`cargo test` builds examples, `cargo test --test edr_example` does not)",
            binary.display(),
            source.display()
        );
    }
    binary
}

/// The most recently modified source of the example: itself or the library.
fn newest_source() -> Option<(SystemTime, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut pending = vec![root.join("examples").join("edr"), root.join("src")];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).into_iter().flatten().flatten();
            pending.extend(entries.map(|entry| entry.path()));
        } else if let Ok(modified) = meta.modified()
            && newest.as_ref().is_none_or(|(time, _)| modified > *time)
        {
            newest = Some((modified, path));
        }
    }
    newest
}

/// Starts the example on `port`, with a clean environment plus `env` and
/// its output sent to `output`; it dies with the test binary.
fn spawn(port: u16, env: &[(&str, &str)], output: impl Fn() -> Stdio) -> Child {
    let mut command = Command::new(example_binary());
    for var in EXAMPLE_VARS {
        command.env_remove(var);
    }
    command.env("LISTEN_ADDR", format!("127.0.0.1:{port}"));
    command.envs(env.iter().copied());
    command.stdout(output()).stderr(output());
    spawn_reaped(command).expect("spawn the edr example")
}

/// A running example; killed when dropped, so a failing test leaves no
/// server behind.
struct Edr {
    child: Child,
    http: HttpClient,
    base: String,
}

impl Edr {
    /// Starts the example and waits until `/healthz` answers.
    async fn start(env: &[(&str, &str)]) -> Edr {
        Self::start_with_output(env, Stdio::null).await
    }

    /// The same, with its stdout and stderr appended to the file at `log`.
    async fn start_logged(env: &[(&str, &str)], log: &str) -> Edr {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the log file");
        let output = move || Stdio::from(file.try_clone().expect("clone the log file"));
        Self::start_with_output(env, output).await
    }

    async fn start_with_output(env: &[(&str, &str)], output: impl Fn() -> Stdio) -> Edr {
        let port = free_port();
        let child = spawn(port, env, output);
        let base = format!("http://127.0.0.1:{port}");
        let mut edr = Edr {
            child,
            http: HttpClient::new(&base),
            base,
        };
        let probe = Client::builder(TokioExecutor::new()).build_http::<Body>();
        let healthz = format!("{}/healthz", edr.base);
        let child = &mut edr.child;
        eventually(STARTUP, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the edr example exited at startup with {status}");
            }
            let probe = probe.clone();
            let healthz = healthz.clone();
            async move {
                let request = Request::get(healthz).body(Body::empty()).unwrap();
                matches!(probe.request(request).await, Ok(r) if r.status() == StatusCode::OK)
            }
        })
        .await;
        edr
    }

    async fn get(&self, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        self.http.get(path, headers).await
    }

    async fn post(&self, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        self.http.post(path, headers).await
    }

    async fn post_body(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let body = body.to_owned();
        self.http
            .send_body(Method::POST, path, &headers, body)
            .await
    }

    /// Any bytes as a telemetry body.
    async fn post_bytes(&self, headers: &[(&str, &[u8])], body: impl Into<Vec<u8>>) -> Reply {
        self.http
            .send_body(Method::POST, TELEMETRY, headers, body.into())
            .await
    }

    /// Writes `request` on a connection of its own and reads until the
    /// server closes it: the status and the body.
    async fn raw(&self, request: &[u8]) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.strip_prefix("http://").expect("an http:// base");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut answer = Vec::new();
        common::within(Duration::from_secs(10), async {
            stream.write_all(request).await.expect("write the request");
            stream
                .read_to_end(&mut answer)
                .await
                .expect("read the answer");
        })
        .await;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
        (status.expect("a status line"), body.to_owned())
    }

    /// Telemetry as an honest agent posts it: as many events as its
    /// `X-Event-Count` says, one without it.
    async fn telemetry(&self, headers: &[(&str, &[u8])]) -> Reply {
        let declared = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("x-event-count"))
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
            .unwrap_or(1);
        self.post_bytes(headers, events(declared)).await
    }
}

/// A batch as the example defines it: a JSON array of `count` event objects.
fn events(count: usize) -> String {
    let events: Vec<String> = (0..count).map(|i| format!(r#"{{"event":{i}}}"#)).collect();
    format!("[{}]", events.join(","))
}

impl Drop for Edr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With `TELEMETRY_RATE=2/m`: agent 1's `batch` posted twice under one id
/// is queued once (both answered `queued`), and its third request of the
/// minute is refused.
async fn queued_once_then_limited(edr: &Edr, batch: &str) {
    let agent = ("x-agent-token", &b"AGENT-1"[..]);
    for _ in 0..2 {
        let reply = edr
            .post_bytes(&[agent, ("x-batch-id", b"batch-1")], batch)
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        assert_eq!(json(&reply), serde_json::json!({"status": "queued"}));
    }
    let reply = edr
        .post_bytes(&[agent, ("x-batch-id", b"batch-2")], batch)
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", reply.body))
}

/// The list Celery workers consume by default, where the example queues
/// telemetry as Celery tasks (`QUEUE_FORMAT=celery`, the default).
const CELERY_LIST: &str = "celery";
/// The list of `QUEUE_FORMAT=raw`.
const RAW_LIST: &str = "edr:telemetry";
/// What the example's Celery task messages hold after the batch:
/// `[[batch], {}, embed]`, the protocol-2 body.
const CELERY_EMBED: &str = r#"],{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]"#;

/// The batch a Celery task message runs its task on, byte for byte as it
/// was posted, after checking the envelope: JSON, a base64 body of the
/// protocol-2 triple whose one argument is the batch (see
/// `tests/celery_message.rs` for the rest of the envelope).
fn celery_batch(message: &str) -> String {
    use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
    let envelope: serde_json::Value = serde_json::from_str(message)
        .unwrap_or_else(|e| panic!("a Celery message is JSON ({e}): {message}"));
    assert_eq!(envelope["content-type"], "application/json", "{message}");
    assert_eq!(envelope["properties"]["body_encoding"], "base64");
    assert_eq!(envelope["headers"]["lang"], "py", "{message}");
    let body = envelope["body"].as_str().expect("a body");
    let body = String::from_utf8(BASE64.decode(body).expect("base64")).expect("UTF-8");
    let triple: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(triple[1], serde_json::json!({}), "{body}");
    let batch = (body
        .strip_prefix("[[")
        .and_then(|rest| rest.strip_suffix(CELERY_EMBED)))
    .unwrap_or_else(|| panic!("not [[batch], {{}}, embed]: {body}"));
    assert_eq!(
        triple[0][0],
        serde_json::from_str::<serde_json::Value>(batch).unwrap()
    );
    batch.to_owned()
}

/// The batches on `list` of `conn` (the list `celery`, or another
/// CELERY_QUEUE), oldest first: a Celery worker pops from the right end of
/// the list, so the oldest message is the last.
async fn celery_batches(conn: &mut redis::aio::MultiplexedConnection, list: &str) -> Vec<String> {
    let messages: Vec<String> = redis::cmd("LRANGE")
        .arg(list)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    messages.iter().rev().map(|m| celery_batch(m)).collect()
}

/// Database 0 of `server`, where the example queues telemetry.
async fn queue_db(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let url = server.url();
    let db0 = format!(
        "{}/0",
        url.strip_suffix("/1")
            .expect("private servers use database 1")
    );
    redis::Client::open(db0)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

const TELEMETRY: &str = "/api/v1/telemetry/";
const LOGIN: &str = "/api/v1/auth/login/";
const DASHBOARD: &str = "/api/v1/dashboard/";

#[tokio::test]
async fn telemetry_is_limited_per_agent_and_queued_in_db0_with_counters_in_db1() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let edr = Edr::start(&[("REDIS_URL", server.url()), ("TELEMETRY_RATE", "3/m")]).await;

    let reply = edr.post_body(TELEMETRY, &[], r#"[{"event":0}]"#).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");

    let token = ("X-Agent-Token", "AGENT-ABC123");
    let events: Vec<String> = (1..=3)
        .map(|i| format!(r#"[{{"event":{i},"host":"ws-{i}"}}]"#))
        .collect();
    for event in &events {
        let reply = edr.post_body(TELEMETRY, &[token], event).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(json(&reply), serde_json::json!({"status": "queued"}));
    }
    let reply = edr.post_body(TELEMETRY, &[token], r#"[{"event":4}]"#).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    let retry_after: u64 = reply
        .header("retry-after")
        .expect("Retry-After on a 429")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let ratelimit = reply.header("ratelimit").expect("RateLimit on a 429");
    assert!(ratelimit.starts_with(r#""telemetry";r=0;"#), "{ratelimit}");
    assert!(json(&reply)["retry_after"].is_u64(), "{reply:?}");

    // Exactly the accepted events, in order, as Celery tasks: neither the
    // 401 nor the 429 went to the workers.
    let mut db0 = queue_db(&server).await;
    assert_eq!(celery_batches(&mut db0, CELERY_LIST).await, events);
    let len: usize = redis::cmd("LLEN")
        .arg(CELERY_LIST)
        .query_async(&mut db0)
        .await
        .unwrap();
    assert_eq!(len, 3);
    let in_db0: Vec<String> = redis::cmd("KEYS")
        .arg("rl:*")
        .query_async(&mut db0)
        .await
        .unwrap();
    assert!(in_db0.is_empty(), "counters leaked into db 0: {in_db0:?}");

    let mut db1 = server.connection().await;
    let counters: Vec<String> = redis::cmd("KEYS")
        .arg("rl:telemetry:*")
        .query_async(&mut db1)
        .await
        .unwrap();
    assert_eq!(counters.len(), 1, "one agent, one counter: {counters:?}");
    assert!(
        !counters[0].contains("AGENT-ABC123"),
        "the token is a credential and must be hashed: {}",
        counters[0]
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&counters[0])
        .query_async(&mut db1)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 60_000, "counter TTL {pttl} ms");
}

/// The batches queued as Celery tasks on the list `celery`, oldest first.
async fn queued(server: &RedisServer) -> Vec<String> {
    celery_batches(&mut queue_db(server).await, CELERY_LIST).await
}

#[tokio::test]
async fn a_batch_is_queued_once_per_id_and_a_reused_id_is_refused() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let edr = Edr::start(&[("REDIS_URL", server.url())]).await;
    let agent1 = ("x-agent-token", &b"AGENT-1"[..]);
    let agent2 = ("x-agent-token", &b"AGENT-2"[..]);
    let first = r#"[{"event":"first"}]"#;
    let second = r#"[{"event":"second"}]"#;

    // A retry of a batch that is queued already is acknowledged, not
    // queued again.
    for _ in 0..2 {
        let reply = edr
            .post_bytes(&[agent1, ("x-batch-id", b"batch-1")], first)
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        assert_eq!(json(&reply), serde_json::json!({"status": "queued"}));
    }
    // Another batch under the same id is refused rather than dropped.
    let reply = edr
        .post_bytes(&[agent1, ("x-batch-id", b"batch-1")], second)
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
    assert_eq!(json(&reply)["error"], "batch id reused", "{reply:?}");
    // Ids are the agent's own: another agent's batch-1 is another batch.
    let reply = edr
        .post_bytes(&[agent2, ("x-batch-id", b"batch-1")], second)
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    // Without an id, a batch is known by its bytes.
    for _ in 0..2 {
        let reply = edr.post_bytes(&[agent1], second).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        assert_eq!(json(&reply), serde_json::json!({"status": "queued"}));
    }
    assert_eq!(queued(&server).await, [first, second, second]);

    // Ids that are not 1 to 128 visible ASCII characters, or two of them.
    let long = [b'x'; 129];
    let bad_ids: [&[(&str, &[u8])]; 5] = [
        &[agent1, ("x-batch-id", b"")],
        &[agent1, ("x-batch-id", &long)],
        &[agent1, ("x-batch-id", b"batch 2")],
        &[agent1, ("x-batch-id", b"caf\xc3\xa9")],
        &[
            agent1,
            ("x-batch-id", b"batch-2"),
            ("x-batch-id", b"batch-3"),
        ],
    ];
    for headers in bad_ids {
        let reply = edr.post_bytes(headers, r#"[{"event":"bad id"}]"#).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{headers:?}: {reply:?}"
        );
        let detail = json(&reply)["detail"].to_string();
        assert!(detail.contains("x-batch-id"), "{headers:?}: {reply:?}");
    }
    assert_eq!(queued(&server).await.len(), 3);

    // One mark per batch queued, hashed, and gone after the window.
    let mut db0 = queue_db(&server).await;
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg("celery:batch:*")
        .query_async(&mut db0)
        .await
        .unwrap();
    assert_eq!(marks.len(), 3, "{marks:?}");
    for mark in &marks {
        assert!(
            !mark.contains("AGENT") && !mark.contains("batch-1"),
            "{mark}"
        );
        let pttl: i64 = redis::cmd("PTTL")
            .arg(mark)
            .query_async(&mut db0)
            .await
            .unwrap();
        assert!(pttl > 0 && pttl <= 600_000, "{mark}: PTTL {pttl} ms");
    }

    // A push that fails leaves no mark, so the retry is queued.
    let _: () = redis::cmd("SET")
        .arg(CELERY_LIST)
        .arg("not a list")
        .query_async(&mut db0)
        .await
        .unwrap();
    let retried = [agent1, ("x-batch-id", &b"batch-9"[..])];
    let reply = edr.post_bytes(&retried, first).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("1"), "{reply:?}");
    let _: () = redis::cmd("DEL")
        .arg(CELERY_LIST)
        .query_async(&mut db0)
        .await
        .unwrap();
    let reply = edr.post_bytes(&retried, first).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    assert_eq!(queued(&server).await, [first]);
}

/// Posts one of `batches_answered_503_…`'s batches: its id, if any, and body.
async fn post_batch(edr: &Edr, (id, body): &(Option<String>, String)) -> Reply {
    let mut headers = vec![("x-agent-token", &b"AGENT-1"[..])];
    if let Some(id) = id {
        headers.push(("x-batch-id", id.as_bytes()));
    }
    edr.post_bytes(&headers, body.as_str()).await
}

#[tokio::test]
async fn batches_answered_503_while_the_queue_is_paused_are_queued_once_after_retries() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let edr = Edr::start(&[("REDIS_URL", server.url())]).await;
    let before = (None, events(1));
    assert_eq!(post_batch(&edr, &before).await.status, StatusCode::ACCEPTED);
    // Half carry an id; the others are known by their bytes.
    let batches: Vec<(Option<String>, String)> = (0..8)
        .map(|i| {
            let id = (i % 2 == 0).then(|| format!("batch-{i}"));
            (id, format!(r#"[{{"event":{i}}}]"#))
        })
        .collect();

    server.pause();
    let replies = futures::future::join_all(batches.iter().map(|b| post_batch(&edr, b))).await;
    server.resume();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert_eq!(reply.header("retry-after"), Some("1"), "{reply:?}");
        assert_eq!(json(reply)["error"], "queue unavailable", "{reply:?}");
    }

    // What a timeout cannot undo: Redis runs the pushes it received while
    // paused, so every batch answered 503 is queued all the same.
    eventually(Duration::from_secs(10), || async {
        queued(&server).await.len() == batches.len() + 1
    })
    .await;

    // The agents retry each batch as it was, until it is acknowledged:
    // retries of batches queued already are acknowledged without a push.
    for batch in &batches {
        common::within(Duration::from_secs(10), async {
            loop {
                let reply = post_batch(&edr, batch).await;
                if reply.status == StatusCode::ACCEPTED {
                    break;
                }
                assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
            }
        })
        .await;
    }
    let mut queued = queued(&server).await;
    let mut expected: Vec<String> = batches.iter().map(|(_, body)| body.clone()).collect();
    expected.push(before.1);
    queued.sort();
    expected.sort();
    assert_eq!(queued, expected, "each batch exactly once");
}

#[tokio::test]
async fn queue_format_raw_and_the_celery_names_choose_the_list_and_the_message() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let agent = ("x-agent-token", &b"AGENT-1"[..]);
    let first = r#"[{"event":"first"}]"#;
    let second = r#"[{"event":"second"}]"#;
    let mut db0 = queue_db(&server).await;

    // QUEUE_FORMAT=raw: the bodies as posted on `edr:telemetry`, in order,
    // each once, for consumers that are not Celery.
    let edr = Edr::start(&[("REDIS_URL", server.url()), ("QUEUE_FORMAT", "raw")]).await;
    for (id, body) in [
        (&b"batch-1"[..], first),
        (b"batch-1", first),
        (b"batch-2", second),
    ] {
        let reply = edr.post_bytes(&[agent, ("x-batch-id", id)], body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    }
    drop(edr);
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(RAW_LIST)
        .arg(0)
        .arg(-1)
        .query_async(&mut db0)
        .await
        .unwrap();
    assert_eq!(raw, [first, second]);
    assert_eq!(keys(&mut db0, "edr:telemetry:batch:*").await.len(), 2);
    assert_eq!(
        keys(&mut db0, "*").await.len(),
        3,
        "nothing but the list and marks"
    );

    // CELERY_QUEUE and CELERY_TASK: the workers' queue is the list, and the
    // messages name the task.
    let edr = Edr::start(&[
        ("REDIS_URL", server.url()),
        ("CELERY_QUEUE", "edr-telemetry"),
        ("CELERY_TASK", "acme.ingest.batch"),
    ])
    .await;
    for (id, body) in [
        (&b"batch-1"[..], first),
        (b"batch-1", first),
        (b"batch-3", second),
    ] {
        let reply = edr.post_bytes(&[agent, ("x-batch-id", id)], body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    }
    assert_eq!(
        celery_batches(&mut db0, "edr-telemetry").await,
        [first, second]
    );
    let messages: Vec<String> = redis::cmd("LRANGE")
        .arg("edr-telemetry")
        .arg(0)
        .arg(-1)
        .query_async(&mut db0)
        .await
        .unwrap();
    for message in &messages {
        let envelope: serde_json::Value = serde_json::from_str(message).unwrap();
        assert_eq!(envelope["headers"]["task"], "acme.ingest.batch");
        let info = &envelope["properties"]["delivery_info"];
        assert_eq!(info["routing_key"], "edr-telemetry", "{message}");
    }
    // The marks are the list's, and another format's marks are not.
    assert_eq!(keys(&mut db0, "edr-telemetry:batch:*").await.len(), 2);
    assert!(keys(&mut db0, CELERY_LIST).await.is_empty());
}

/// The virtual environment of Python's `celery` (with its Redis transport)
/// and `redis`: `CELERY_VENV`, or `/opt/celery-venv`, where `.ci/run`
/// installs them. Without it the Celery test is skipped, saying so, but
/// not in CI (`CI` set), which always has it.
fn celery_venv() -> Option<PathBuf> {
    let venv = std::env::var_os("CELERY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/celery-venv"));
    let python = venv.join("bin").join("python");
    let found = Command::new(&python)
        .args(["-c", "import celery, redis, kombu.transport.redis"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return Some(venv);
    }
    let why = format!(
        "no Python with celery[redis] at {} (set CELERY_VENV, or run: python3 -m venv \
         /opt/celery-venv && /opt/celery-venv/bin/pip install 'celery[redis]' redis)",
        python.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{why}: CI installs it in .ci/run");
    }
    eprintln!("skipped: {why}");
    None
}

/// A Python Celery worker (`tests/celery/edr/tasks.py`), consuming the
/// queue `celery` of `broker` with one process and recording each run on
/// the list `edr:runs` of `record`, with `env` for the rest (such as
/// `CELERY_MASTER_NAME`). Killed when dropped; its log is kept for
/// failures.
struct CeleryWorker {
    child: Child,
    log: PathBuf,
}

impl CeleryWorker {
    fn start(venv: &Path, broker: &str, record: &str, env: &[(&str, &str)]) -> CeleryWorker {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("celery");
        let log = std::env::temp_dir().join(format!(
            "edr-celery-worker-{}-{}.log",
            std::process::id(),
            free_port()
        ));
        let file = std::fs::File::create(&log).expect("create the worker's log");
        let mut command = Command::new(venv.join("bin").join("celery"));
        command
            .current_dir(&dir)
            .args(["-A", "edr.tasks", "worker", "-Q", CELERY_LIST])
            // One task at a time, in the order the queue hands them out.
            .args(["--pool", "solo", "--concurrency", "1", "--loglevel", "INFO"])
            .args([
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
            ])
            .arg(format!("--hostname=edr-test-{}@%h", std::process::id()))
            .env("CELERY_BROKER_URL", broker)
            .env("EDR_RECORD_URL", record)
            .envs(env.iter().copied())
            .env("PYTHONPATH", &dir)
            // No __pycache__ left in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the log, twice"))
            .stderr(file);
        let child = spawn_reaped(command).expect("spawn the Celery worker");
        CeleryWorker { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The runs recorded so far: each task's id, routing key, whether it
    /// was redelivered, and its batch.
    async fn runs(conn: &mut redis::aio::MultiplexedConnection) -> Vec<serde_json::Value> {
        let runs: Vec<String> = redis::cmd("LRANGE")
            .arg("edr:runs")
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await
            .unwrap();
        (runs.iter())
            .map(|run| serde_json::from_str(run).expect("a run is JSON"))
            .collect()
    }

    /// Waits until a run's batch is `batch`, failing with the worker's log
    /// if it exits or `limit` passes (a bound on a hang, not a timing
    /// assertion).
    async fn wait_for_batch(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        batch: &serde_json::Value,
        limit: Duration,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let runs = Self::runs(conn).await;
            if runs.iter().any(|run| run["batch"] == *batch) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the Celery worker exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the Celery worker did not run {batch} within {limit:?}; runs {runs:?}; \
                 log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for CeleryWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `server`'s URL naming database `db`.
fn server_db(server: &RedisServer, db: u8) -> String {
    let url = server.url();
    let base = url
        .strip_suffix("/1")
        .expect("private servers use database 1");
    format!("{base}/{db}")
}

#[tokio::test]
async fn a_python_celery_worker_runs_exactly_the_accepted_batches_once() {
    let Some(venv) = celery_venv() else {
        return;
    };
    let Some(server) = RedisServer::private() else {
        return;
    };
    // The seed's layout: counters in database 1, Celery's broker in 0; the
    // worker records its runs in 2.
    let mut worker =
        CeleryWorker::start(&venv, &server_db(&server, 0), &server_db(&server, 2), &[]);
    let edr = Edr::start(&[("REDIS_URL", server.url()), ("TELEMETRY_RATE", "10/m")]).await;
    let mut record = redis::Client::open(server_db(&server, 2))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut accepted: Vec<serde_json::Value> = Vec::new();

    // Posts `batch` for `agent`, with `X-Event-Count` its length and the
    // id, if any: the reply, and the batch as JSON.
    async fn post(edr: &Edr, agent: &str, id: Option<&str>, batch: &str) -> Reply {
        let parsed: serde_json::Value = serde_json::from_str(batch).unwrap();
        let count = parsed.as_array().unwrap().len().to_string();
        let mut headers = vec![
            ("x-agent-token", agent.as_bytes()),
            ("x-event-count", count.as_bytes()),
        ];
        if let Some(id) = id {
            headers.push(("x-batch-id", id.as_bytes()));
        }
        edr.post_bytes(&headers, batch.to_owned()).await
    }
    let parse = |batch: &str| serde_json::from_str::<serde_json::Value>(batch).unwrap();

    // The worker is up once it has run a first batch (Python starting is
    // what takes time).
    let ready = r#"[{"event":"ready"}]"#;
    let reply = post(&edr, "AGENT-READY", Some("ready"), ready).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    accepted.push(parse(ready));
    worker
        .wait_for_batch(&mut record, &parse(ready), Duration::from_secs(60))
        .await;

    // Agent 1: accepted batches (one retried, charged again, not run
    // again), then over its 10 a minute: denied, never run.
    let a1 = r#"[{"event":"process_start","pid":4242,"cmd":"C:\\Windows\\cmd.exe /c \"whoami\""},{"event":"dns","q":"ex\u00e4mple.com"},{"event":"net","bytes":12345678901234567890},{"event":"file","sha256":null,"tags":["a",{"nested":[1,2.5,true]}]}]"#;
    let a2 = r#"[{"event":"logon","user":"älice"},{"event":"logoff","user":"bob"}]"#;
    for (id, batch, status) in [
        ("a1-1", a1, StatusCode::ACCEPTED),
        ("a1-1", a1, StatusCode::ACCEPTED),
        ("a1-2", a2, StatusCode::ACCEPTED),
        (
            "a1-3",
            r#"[{"event":"denied-1"}]"#,
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            "a1-4",
            r#"[{"event":"denied-2"},{"event":"denied-3"}]"#,
            StatusCode::TOO_MANY_REQUESTS,
        ),
    ] {
        let reply = post(&edr, "AGENT-1", Some(id), batch).await;
        assert_eq!(reply.status, status, "{id}: {reply:?}");
    }
    accepted.extend([parse(a1), parse(a2)]);

    // Agent 2: batches with ids and one known by its bytes, retried.
    let b1 = r#"[{"event":"b1"}]"#;
    let b2 = r#"[{"event":"b2","n":1},{"event":"b2","n":2},{"event":"b2","n":3}]"#;
    let b3 = r#"[{"event":"no id","x":1},{"event":"no id","x":2}]"#;
    for (id, batch, status) in [
        (Some("b-1"), b1, StatusCode::ACCEPTED),
        (Some("b-2"), b2, StatusCode::ACCEPTED),
        (None, b3, StatusCode::ACCEPTED),
        (None, b3, StatusCode::ACCEPTED),
        (
            Some("b-4"),
            r#"[{"e":1},{"e":2},{"e":3},{"e":4},{"e":5}]"#,
            StatusCode::TOO_MANY_REQUESTS,
        ),
    ] {
        let reply = post(&edr, "AGENT-2", id, batch).await;
        assert_eq!(reply.status, status, "{id:?}: {reply:?}");
    }
    accepted.extend([parse(b1), parse(b2), parse(b3)]);

    // Batches posted while Redis is paused: each answered 503, retried with
    // the same id and bytes once Redis is back until acknowledged. Their
    // pushes, which Redis runs when it resumes, and their retries are one
    // task each.
    let paused: Vec<(String, String, String)> = (1..=4)
        .map(|i| {
            let batch = format!(r#"[{{"event":"paused","i":{i}}}]"#);
            (format!("AGENT-P{i}"), format!("p-{i}"), batch)
        })
        .collect();
    server.pause();
    let replies = futures::future::join_all(
        (paused.iter()).map(|(agent, id, batch)| post(&edr, agent, Some(id), batch)),
    )
    .await;
    server.resume();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    }
    for (agent, id, batch) in &paused {
        common::within(Duration::from_secs(10), async {
            loop {
                let reply = post(&edr, agent, Some(id), batch).await;
                if reply.status == StatusCode::ACCEPTED {
                    break;
                }
                assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
            }
        })
        .await;
        accepted.push(parse(batch));
    }

    // A last batch: the queue is first in, first out and the worker runs
    // one task at a time, so once it has run this one it has run all that
    // was queued before it.
    let last = r#"[{"event":"last"}]"#;
    let reply = post(&edr, "AGENT-LAST", Some("last"), last).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    accepted.push(parse(last));
    worker
        .wait_for_batch(&mut record, &parse(last), Duration::from_secs(30))
        .await;
    let mut db0 = queue_db(&server).await;
    let left: usize = redis::cmd("LLEN")
        .arg(CELERY_LIST)
        .query_async(&mut db0)
        .await
        .unwrap();
    assert_eq!(left, 0, "tasks left on the queue");

    // Exactly the accepted batches, each run once, as posted (compared as
    // JSON: the task receives lists of dicts, and Python writes them back
    // in its own spacing), each its own task, none redelivered.
    let runs = CeleryWorker::runs(&mut record).await;
    let mut ran: Vec<String> = runs.iter().map(|run| run["batch"].to_string()).collect();
    let mut expected: Vec<String> = accepted.iter().map(|batch| batch.to_string()).collect();
    ran.sort();
    expected.sort();
    assert_eq!(
        ran,
        expected,
        "the batches the worker ran; log:\n{}",
        worker.log()
    );
    let ids: std::collections::HashSet<&str> = runs
        .iter()
        .map(|run| run["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), runs.len(), "a task id ran twice: {runs:?}");
    for run in &runs {
        assert_eq!(run["routing_key"], CELERY_LIST, "{run}");
        assert_eq!(run["redelivered"], false, "{run}");
    }
    // The big number and the escapes survived the trip through Python.
    let first = runs.iter().find(|run| run["batch"] == parse(a1)).unwrap();
    assert_eq!(first["batch"][2]["bytes"], 12345678901234567890_u64);
    assert_eq!(first["batch"][1]["q"], "exämple.com");
    drop(edr);
}

#[tokio::test]
async fn dashboard_is_limited_per_user_after_authentication() {
    let edr = Edr::start(&[("DASHBOARD_RATE", "2/m")]).await;

    for headers in [
        &[][..],
        &[("authorization", &b"Basic YWxpY2U6cHc="[..])][..],
        &[("authorization", &b"Bearer "[..])][..],
        &[("authorization", &b"Bearer \xff"[..])][..],
    ] {
        let reply = edr.get(DASHBOARD, headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(json(&reply), serde_json::json!({"error": "unauthorized"}));
        // Refused before the limiter, which would have added its headers.
        assert_eq!(reply.header("ratelimit"), None, "{reply:?}");
    }

    let alice = [("authorization", &b"Bearer alice"[..])];
    for _ in 0..2 {
        let reply = edr.get(DASHBOARD, &alice).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(json(&reply), serde_json::json!({"user": "alice"}));
    }
    let reply = edr.get(DASHBOARD, &alice).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");

    let reply = edr
        .get(DASHBOARD, &[("authorization", &b"Bearer bob"[..])])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "another user, another counter"
    );
    assert_eq!(json(&reply), serde_json::json!({"user": "bob"}));

    // User ids come from clients: the JSON must be escaped, not spliced.
    let reply = edr
        .get(DASHBOARD, &[("authorization", &br#"Bearer "q\uote"#[..])])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(json(&reply)["user"], r#""q\uote"#);

    for _ in 0..50 {
        let reply = edr.get("/healthz", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "ok");
    }
}

#[tokio::test]
async fn login_fails_closed_and_telemetry_falls_back_when_redis_dies() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    // With the queue on, telemetry would rightly answer 503 once Redis is
    // gone; this test is about the limiter's fail modes alone.
    let edr = Edr::start(&[
        ("REDIS_URL", server.url()),
        ("LOGIN_RATE", "2/h"),
        ("QUEUE_URL", "off"),
    ])
    .await;
    let token = [("x-agent-token", &b"AGENT-1"[..])];

    let reply = edr.post(LOGIN, &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(json(&reply), serde_json::json!({"status": "ok"}));
    assert_eq!(edr.telemetry(&token).await.status, StatusCode::ACCEPTED);

    server.kill();

    let reply = edr.post(LOGIN, &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("1"));
    let reply = edr.telemetry(&token).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    assert_eq!(json(&reply), serde_json::json!({"status": "accepted"}));
}

#[tokio::test]
async fn telemetry_stays_limited_per_instance_while_redis_is_down() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let edr = Edr::start(&[
        ("REDIS_URL", server.url()),
        ("TELEMETRY_RATE", "2/m"),
        ("QUEUE_URL", "off"),
    ])
    .await;
    // Counted in Redis while it is there…
    let reply = edr.telemetry(&[("x-agent-token", &b"AGENT-1"[..])]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let mut db1 = server.connection().await;
    let counters: Vec<String> = redis::cmd("KEYS")
        .arg("rl:telemetry:*")
        .query_async(&mut db1)
        .await
        .unwrap();
    assert_eq!(counters.len(), 1, "{counters:?}");

    server.kill();

    // …and in this process once it is gone: not fail open, which would
    // accept every request. The in-process counters start from nothing.
    for agent in [&b"AGENT-1"[..], b"AGENT-2"] {
        let token = [("x-agent-token", agent)];
        for _ in 0..2 {
            let reply = edr.telemetry(&token).await;
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        }
        let reply = edr.telemetry(&token).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
        assert!(reply.header("retry-after").is_some(), "{reply:?}");
        let ratelimit = reply.header("ratelimit").expect("RateLimit on a 429");
        assert!(ratelimit.starts_with(r#""telemetry";r=0;"#), "{ratelimit}");
    }
}

#[tokio::test]
async fn rate_limit_off_serves_the_routes_unlimited() {
    let edr = Edr::start(&[
        ("RATE_LIMIT", "off"),
        ("TELEMETRY_RATE", "2/m"),
        ("LOGIN_RATE", "1/h"),
        ("DASHBOARD_RATE", "1/m"),
    ])
    .await;
    let token = [("x-agent-token", &b"AGENT-1"[..])];
    let alice = [("authorization", &b"Bearer alice"[..])];
    for _ in 0..10 {
        let reply = edr.telemetry(&token).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        assert_eq!(json(&reply), serde_json::json!({"status": "accepted"}));
        assert_eq!(reply.header("ratelimit"), None, "{reply:?}");
        assert_eq!(reply.header("ratelimit-policy"), None, "{reply:?}");
        let reply = edr.post(LOGIN, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.header("ratelimit"), None, "{reply:?}");
        let reply = edr.get(DASHBOARD, &alice).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.header("ratelimit"), None, "{reply:?}");
    }
    // Nothing checks the agent token without the limiter; authentication
    // still guards the dashboard.
    let reply = edr.telemetry(&[]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let reply = edr.get(DASHBOARD, &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");

    // Any other value is a mistake, not a way to turn limits off.
    let (status, output) = run_to_exit(&[("RATE_LIMIT", "no")]);
    assert!(!status.success(), "{status}: {output}");
    assert!(output.contains(r#"RATE_LIMIT: "no""#), "{output}");
}

#[tokio::test]
async fn the_block_cache_answers_a_flooding_agent_without_redis() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let mut db1 = server.connection().await;
    for (block_cache, expected) in [("on", 1), ("off", 19)] {
        let edr = Edr::start(&[
            ("REDIS_URL", server.url()),
            ("TELEMETRY_RATE", "1/m"),
            ("TELEMETRY_BLOCK_CACHE", block_cache),
            ("QUEUE_URL", "off"),
        ])
        .await;
        let agent = format!("AGENT-{block_cache}");
        let token = [("x-agent-token", agent.as_bytes())];
        let reply = edr.telemetry(&token).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        // The first denial is Redis's; with the cache, the only one.
        let before = evalsha_calls(&mut db1).await;
        for _ in 0..19 {
            let reply = edr.telemetry(&token).await;
            assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
            assert!(reply.header("retry-after").is_some(), "{reply:?}");
        }
        let calls = evalsha_calls(&mut db1).await - before;
        assert_eq!(
            calls, expected,
            "TELEMETRY_BLOCK_CACHE={block_cache}: EVALSHA calls for 19 denied requests"
        );
    }
}

#[tokio::test]
async fn memory_mode_starts_without_redis_and_limits() {
    let edr = Edr::start(&[("TELEMETRY_RATE", "2/m")]).await;
    let token = [("x-agent-token", &b"AGENT-1"[..])];
    for _ in 0..2 {
        let reply = edr.telemetry(&token).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    }
    let reply = edr.telemetry(&token).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    assert!(reply.header("retry-after").is_some());
    // Login and dashboard limits work without Redis too.
    assert_eq!(edr.post(LOGIN, &[]).await.status, StatusCode::OK);
    let reply = edr
        .get(DASHBOARD, &[("authorization", &b"Bearer u1"[..])])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn without_a_queue_telemetry_is_accepted_not_queued() {
    let token = ("x-agent-token", "AGENT-1");
    // The in-memory store has no queue at all…
    let edr = Edr::start(&[]).await;
    let reply = edr.post_body(TELEMETRY, &[token], r#"[{"event":1}]"#).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    assert_eq!(json(&reply), serde_json::json!({"status": "accepted"}));
    drop(edr);

    // …and QUEUE_URL=off turns it off with Redis holding the counters.
    let Some(server) = RedisServer::private() else {
        return;
    };
    let edr = Edr::start(&[("REDIS_URL", server.url()), ("QUEUE_URL", "off")]).await;
    let reply = edr.post_body(TELEMETRY, &[token], r#"[{"event":1}]"#).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    assert_eq!(json(&reply), serde_json::json!({"status": "accepted"}));
    let mut db0 = queue_db(&server).await;
    assert!(
        keys(&mut db0, "*").await.is_empty(),
        "QUEUE_URL=off queued telemetry"
    );
}

/// Runs the example with `env` and returns its exit status and all it
/// printed; fails if it is still running after `STARTUP`.
fn run_to_exit(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut child = spawn(free_port(), env, Stdio::piped);
    let deadline = Instant::now() + STARTUP;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the example started with {env:?} instead of refusing to");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The process has exited, so both pipes are at their end. (What it
    // prints at startup is far below a pipe's buffer, so it cannot block.)
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut output).expect("read stdout");
    }
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut output).expect("read stderr");
    }
    (status, output)
}

#[test]
fn bad_configuration_stops_startup_naming_the_variable() {
    let (status, output) = run_to_exit(&[("TELEMETRY_RATE", "10/w")]);
    assert!(!status.success(), "{status}: {output}");
    assert!(
        output.contains(r#"TELEMETRY_RATE: invalid rate "10/w""#),
        "{output}"
    );
    assert!(!output.contains("panicked"), "{output}");

    for (var, value) in [
        ("LOGIN_RATE", "0/h"),
        ("DASHBOARD_RATE", "sixty"),
        ("TRUSTED_PROXIES", "10.0.0.0/8, not-a-cidr"),
        ("LISTEN_ADDR", "localhost"),
        ("QUEUE_URL", "rabbit://queue"),
        ("QUEUE_DEDUP_SECONDS", "0"),
        ("QUEUE_DEDUP_SECONDS", "a minute"),
        ("QUEUE_FORMAT", "json"),
        ("CELERY_QUEUE", "edr telemetry"),
        ("CELERY_TASK", "process telemetry"),
        ("REDIS_URL", "http://127.0.0.1/1"),
        ("METRICS_ADDR", "localhost"),
        ("TELEMETRY_MODE", "sometimes"),
        ("LOGIN_MODE", "blocking"),
        ("DASHBOARD_MODE", "off"),
    ] {
        let (status, output) = run_to_exit(&[(var, value)]);
        assert!(!status.success(), "{var}={value}: {status}: {output}");
        assert!(output.contains(&format!("{var}: ")), "{var}: {output}");
        let quoted = value.rsplit(", ").next().unwrap();
        assert!(output.contains(&format!("{quoted:?}")), "{var}: {output}");
        assert!(!output.contains("panicked"), "{var}: {output}");
    }

    // An unreachable Redis is fatal too, and its password is never printed.
    let closed = format!("redis://:hunter2@127.0.0.1:{}/1", free_port());
    let (status, output) = run_to_exit(&[("REDIS_URL", &closed)]);
    assert!(!status.success(), "{status}: {output}");
    assert!(output.contains("REDIS_URL: "), "{output}");
    assert!(!output.contains("hunter2"), "password printed: {output}");
}

#[tokio::test]
async fn gcra_admits_a_burst_at_once_within_every_telemetry_limit() {
    let edr = Edr::start(&[
        ("TELEMETRY_ALGORITHM", "gcra"),
        ("TELEMETRY_RATE", "2/s,5/m"),
        ("TELEMETRY_BURST", "3"),
    ])
    .await;
    let token = [("x-agent-token", &b"AGENT-1"[..])];
    // The burst of 3 stretches the 2/s limit's quota to 4 per 2 s.
    let policy = r#""telemetry-1s";q=4;w=2, "telemetry-60s";q=5;w=60"#;
    for _ in 0..3 {
        let reply = edr.telemetry(&token).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        assert_eq!(reply.header("ratelimit-policy"), Some(policy), "{reply:?}");
    }
    // The 5/m limit with a burst of 3 frees one request every 12 s: far
    // longer than these requests take, however slow the machine.
    let reply = edr.telemetry(&token).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    assert_eq!(reply.header("ratelimit-policy"), Some(policy), "{reply:?}");
    let ratelimit = reply.header("ratelimit").expect("RateLimit on a 429");
    assert!(
        ratelimit.starts_with(r#""telemetry-60s";r=0;"#),
        "the limit that refused is reported: {ratelimit}"
    );
    let retry_after: u64 = reply
        .header("retry-after")
        .expect("Retry-After on a 429")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=12).contains(&retry_after), "{retry_after}");

    // Another agent has a burst of its own.
    let other = [("x-agent-token", &b"AGENT-2"[..])];
    assert_eq!(edr.telemetry(&other).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn every_algorithm_name_starts_and_limits() {
    for algorithm in ["fixed", "fixed_window", "sliding", "sliding_window", "gcra"] {
        let edr = Edr::start(&[
            ("TELEMETRY_ALGORITHM", algorithm),
            ("TELEMETRY_RATE", "1/m"),
        ])
        .await;
        let token = [("x-agent-token", &b"AGENT-1"[..])];
        let reply = edr.telemetry(&token).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{algorithm}: {reply:?}");
        let reply = edr.telemetry(&token).await;
        assert_eq!(
            reply.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{algorithm}: {reply:?}"
        );
    }
}

#[tokio::test]
async fn a_batch_costs_its_event_count() {
    let edr = Edr::start(&[("TELEMETRY_RATE", "10/m")]).await;
    let batch = |count: &'static str| {
        [
            ("x-agent-token", &b"AGENT-1"[..]),
            ("x-event-count", count.as_bytes()),
        ]
    };

    let reply = edr.telemetry(&batch("4")).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let ratelimit = reply.header("ratelimit").expect("RateLimit on a 202");
    assert!(ratelimit.starts_with(r#""telemetry";r=6;"#), "{ratelimit}");

    let reply = edr.telemetry(&batch("abc")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert!(reply.body.contains("x-event-count"), "{reply:?}");

    let reply = edr.telemetry(&batch("11")).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");
    assert_eq!(json(&reply)["cost"], 11, "{reply:?}");
    assert_eq!(json(&reply)["capacity"], 10, "{reply:?}");
    // Waiting would not help, so no time to wait is given.
    assert_eq!(reply.header("retry-after"), None, "{reply:?}");

    // Neither refused batch was counted; no header counts as one event.
    let reply = edr.telemetry(&[("x-agent-token", &b"AGENT-1"[..])]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let ratelimit = reply.header("ratelimit").expect("RateLimit on a 202");
    assert!(ratelimit.starts_with(r#""telemetry";r=5;"#), "{ratelimit}");

    let reply = edr.telemetry(&batch("6")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    let reply = edr.telemetry(&batch("5")).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
}

#[tokio::test]
async fn a_batch_must_hold_exactly_the_events_it_is_charged_for() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let edr = Edr::start(&[("REDIS_URL", server.url()), ("TELEMETRY_RATE", "100/m")]).await;
    let token = ("x-agent-token", &b"AGENT-1"[..]);

    // The rogue agent: 5,000 events, no X-Event-Count. The limiter charges
    // the 1 it declares; the handler counts 5,000 and refuses the batch.
    let reply = edr.post_bytes(&[token], events(5000)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(json(&reply)["error"], "bad batch", "{reply:?}");
    assert_eq!(json(&reply)["events"], 5000, "{reply:?}");
    assert_eq!(json(&reply)["declared"], 1, "{reply:?}");
    let ratelimit = reply.header("ratelimit").expect("RateLimit on a 400");
    assert!(ratelimit.starts_with(r#""telemetry";r=99;"#), "{ratelimit}");

    // Under- and over-declared batches.
    for (declared, held) in [(2, 50), (5, 2)] {
        let count = declared.to_string();
        let headers = [token, ("x-event-count", count.as_bytes())];
        let reply = edr.post_bytes(&headers, events(held)).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{declared}: {reply:?}"
        );
        assert_eq!(json(&reply)["events"], held, "{reply:?}");
        assert_eq!(json(&reply)["declared"], declared, "{reply:?}");
    }

    // Not a batch at all: a clear 400, never an echo of what was sent.
    let not_batches: Vec<(&str, Vec<u8>)> = vec![
        ("text", b"hello, workers".to_vec()),
        ("binary", b"\xff\x00\x01binary\xfe".to_vec()),
        (
            "invalid UTF-8 in an event",
            b"[{\"host\":\"\xff\"}]".to_vec(),
        ),
        ("an object", br#"{"events":[{"event":1}]}"#.to_vec()),
        ("a number as event", b"[1]".to_vec()),
        ("an array as event", b"[[]]".to_vec()),
        ("truncated", br#"[{"event":1}"#.to_vec()),
        (
            "trailing bytes",
            br#"[{"event":1}] hello, workers"#.to_vec(),
        ),
        ("deep nesting", "[".repeat(100_000).into_bytes()),
        (
            "deep nesting in an event",
            format!(r#"[{{"a":{}"#, "[".repeat(100_000)).into_bytes(),
        ),
        ("empty body", Vec::new()),
        ("empty batch", b"[]".to_vec()),
    ];
    for (what, body) in not_batches {
        let reply = edr.post_bytes(&[token], body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{what}: {reply:?}");
        assert_eq!(json(&reply)["error"], "bad batch", "{what}: {reply:?}");
        assert!(json(&reply)["detail"].is_string(), "{what}: {reply:?}");
        assert!(!reply.body.contains("hello"), "{what}: echoed: {reply:?}");
    }

    // Above the 1 MiB a batch may be: refused on its Content-Length before
    // a byte of it is sent, or once 1 MiB and one byte of a chunked body
    // have been read. (Over a raw socket that sends no more than that, as
    // bytes left unread when the server closes would reset the connection
    // and could destroy the answer.)
    let head = "POST /api/v1/telemetry/ HTTP/1.1\r\nHost: edr\r\nX-Agent-Token: AGENT-1\r\n\
                Connection: close\r\n";
    let declared = format!("{head}Content-Length: {}\r\n\r\n", 2 << 20);
    let mut chunked = format!(
        "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        (1 << 20) + 1
    );
    chunked.push_str(&"x".repeat((1 << 20) + 1));
    for (what, request) in [("Content-Length", declared), ("chunked", chunked)] {
        let (status, body) = edr.raw(request.as_bytes()).await;
        assert_eq!(status, 413, "{what}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
        assert_eq!(body["error"], "batch too large", "{what}: {body}");
        assert_eq!(body["max_bytes"], 1 << 20, "{what}: {body}");
    }

    // Honest batches are queued; none of the refused ones was.
    let reply = edr.post_bytes(&[token], events(1)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let reply = edr
        .post_bytes(&[token, ("x-event-count", b"3")], events(3))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    assert_eq!(queued(&server).await, [events(1), events(3)]);
}

/// Variables to run the example with.
type Env<'a> = &'a [(&'a str, &'a str)];

#[test]
fn bad_algorithm_rates_or_burst_stop_startup_naming_the_variable() {
    // The variables, what the error must name, and what it must quote.
    let cases: &[(Env, &str, &str)] = &[
        (
            &[("TELEMETRY_ALGORITHM", "bogus")],
            "TELEMETRY_ALGORITHM: ",
            r#""bogus""#,
        ),
        // A burst with the default (fixed window) or the sliding window.
        (&[("TELEMETRY_BURST", "5")], "TELEMETRY_BURST: ", "gcra"),
        (
            &[("TELEMETRY_ALGORITHM", "sliding"), ("TELEMETRY_BURST", "5")],
            "TELEMETRY_BURST: ",
            "gcra",
        ),
        (
            &[("TELEMETRY_ALGORITHM", "gcra"), ("TELEMETRY_BURST", "0")],
            "TELEMETRY_BURST: ",
            r#""0""#,
        ),
        (
            &[("TELEMETRY_RATE", "10/s, 5/w")],
            "TELEMETRY_RATE: ",
            r#""5/w""#,
        ),
        // The library's check (one limit per window); the value quoted is
        // the variable's.
        (
            &[("TELEMETRY_RATE", "10/s,20/s")],
            "TELEMETRY_RATE: ",
            r#""10/s,20/s""#,
        ),
        (
            &[("TELEMETRY_FALLBACK_DIVISOR", "0")],
            "TELEMETRY_FALLBACK_DIVISOR: ",
            r#""0""#,
        ),
        (
            &[("TELEMETRY_FALLBACK_DIVISOR", "two")],
            "TELEMETRY_FALLBACK_DIVISOR: ",
            r#""two""#,
        ),
        (
            &[("TELEMETRY_BLOCK_CACHE", "100")],
            "TELEMETRY_BLOCK_CACHE: ",
            r#""100""#,
        ),
    ];
    for (env, named, quoted) in cases {
        let (status, output) = run_to_exit(env);
        assert!(!status.success(), "{env:?}: {status}: {output}");
        assert!(output.contains(named), "{env:?}: {output}");
        assert!(output.contains(quoted), "{env:?}: {output}");
        assert!(!output.contains("panicked"), "{env:?}: {output}");
    }
}

/// The sample policy file, wherever the tests run from.
const SAMPLE_POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/edr-policies.toml");

#[tokio::test]
async fn a_policy_file_replaces_the_environment_and_keeps_the_routes() {
    // The file's telemetry policy wins over the variable.
    let edr = Edr::start(&[("POLICY_FILE", SAMPLE_POLICIES), ("TELEMETRY_RATE", "2/m")]).await;

    let reply = edr.telemetry(&[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    let token = ("x-agent-token", &b"AGENT-1"[..]);
    let reply = edr.telemetry(&[token]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some(r#""telemetry-1s";q=20;w=2, "telemetry-60s";q=1000;w=60"#),
        "{reply:?}"
    );
    // The file's burst of 20 is the largest batch it can ever admit.
    let reply = edr.telemetry(&[token, ("x-event-count", &b"21"[..])]).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");
    assert_eq!(json(&reply)["capacity"], 20, "{reply:?}");

    let reply = edr.post(LOGIN, &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some(r#""login";q=10;w=3600"#)
    );

    let reply = edr.get(DASHBOARD, &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    assert_eq!(
        reply.header("ratelimit"),
        None,
        "auth runs first: {reply:?}"
    );
    let reply = edr
        .get(DASHBOARD, &[("authorization", &b"Bearer alice"[..])])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(json(&reply), serde_json::json!({"user": "alice"}));
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some(r#""dashboard";q=60;w=60"#)
    );
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("edr-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write a temporary file");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn policies_left_out_of_the_file_keep_their_environment_settings() {
    let file = TempFile::new(
        "dashboard-only.toml",
        "[[policies]]\nname = \"dashboard\"\nrate = \"1/m\"\nkey = { type = \"user\" }\n",
    );
    let edr = Edr::start(&[("POLICY_FILE", file.path()), ("TELEMETRY_RATE", "3/m")]).await;

    let reply = edr.telemetry(&[("x-agent-token", &b"AGENT-1"[..])]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some(r#""telemetry";q=3;w=60"#)
    );
    let alice = [("authorization", &b"Bearer alice"[..])];
    let reply = edr.get(DASHBOARD, &alice).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some(r#""dashboard";q=1;w=60"#)
    );
    let reply = edr.get(DASHBOARD, &alice).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
}

#[tokio::test]
async fn a_policy_files_telemetry_cost_is_what_a_batch_must_hold() {
    let token = ("x-agent-token", &b"AGENT-1"[..]);
    let telemetry = "[[policies]]\nname = \"telemetry\"\nrate = \"100/m\"\n\
                     key = { type = \"header\", name = \"X-Agent-Token\" }\n";
    // A fixed cost of 2: every batch holds two events, whatever it says.
    let file = TempFile::new("cost-2.toml", &format!("{telemetry}cost = 2\n"));
    let edr = Edr::start(&[("POLICY_FILE", file.path())]).await;
    let reply = edr.post_bytes(&[token], events(1)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(json(&reply)["declared"], 2, "{reply:?}");
    let reply = edr
        .post_bytes(&[token, ("x-event-count", b"3")], events(3))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    let reply = edr.post_bytes(&[token], events(2)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    drop(edr);

    // No cost at all: every batch is charged 1, so holds one event.
    let file = TempFile::new("no-cost.toml", telemetry);
    let edr = Edr::start(&[("POLICY_FILE", file.path())]).await;
    let reply = edr
        .post_bytes(&[token, ("x-event-count", b"2")], events(2))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(json(&reply)["declared"], 1, "{reply:?}");
    let reply = edr.post_bytes(&[token], events(1)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
}

#[test]
fn a_bad_policy_file_stops_startup_naming_it() {
    let missing = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/no-such-policies.toml"
    );
    let (status, output) = run_to_exit(&[("POLICY_FILE", missing)]);
    assert!(!status.success(), "{status}: {output}");
    assert!(output.contains("POLICY_FILE: "), "{output}");
    assert!(output.contains(missing), "{output}");
    assert!(!output.contains("panicked"), "{output}");

    let bad_rate = "[[policies]]\nname = \"telemetry\"\nrate = [\"10/s\", \"5/w\"]\n\
                    key = { type = \"header\", name = \"X-Agent-Token\" }\n";
    let bad_burst = "[[policies]]\nname = \"login\"\nrate = \"10/h\"\nburst = 5\n\
                     key = { type = \"client_ip\" }\n";
    let unknown = "[[policies]]\nname = \"telemtry\"\nrate = \"10/s\"\n\
                   key = { type = \"user\" }\n";
    for (name, contents, quoted) in [
        // serde's message, quoting the value, from the TOML parser.
        ("bad-rate.toml", bad_rate, r#"invalid rate "5/w""#),
        // The library's own check, naming the field.
        ("bad-burst.toml", bad_burst, "policies.login.burst"),
        // A typo would otherwise leave the route on its defaults.
        ("unknown.toml", unknown, r#""telemtry""#),
        ("not-toml.toml", "policies = [", "TOML parse error"),
    ] {
        let file = TempFile::new(name, contents);
        let (status, output) = run_to_exit(&[("POLICY_FILE", file.path())]);
        assert!(!status.success(), "{name}: {status}: {output}");
        assert!(output.contains("POLICY_FILE: "), "{name}: {output}");
        assert!(output.contains(file.path()), "{name}: {output}");
        assert!(output.contains(quoted), "{name}: {output}");
        assert!(!output.contains("panicked"), "{name}: {output}");
    }
}

#[test]
fn the_log_names_the_store_and_each_policy() {
    // An address in use: the example logs its setup, then fails to listen.
    let taken = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = taken.local_addr().unwrap().to_string();
    let (status, output) = run_to_exit(&[
        ("LISTEN_ADDR", &addr),
        ("TELEMETRY_ALGORITHM", "gcra"),
        ("TELEMETRY_RATE", "2/s,5/m"),
        ("TELEMETRY_BURST", "3"),
    ]);
    assert!(!status.success(), "{status}: {output}");
    assert!(output.contains("LISTEN_ADDR: "), "{output}");
    assert!(output.contains("in-memory store"), "{output}");
    for line in [
        "algorithm=gcra limits=2/s burst 3, 5/m burst 3 from=environment",
        "algorithm=fixed_window limits=10/h from=environment",
        "algorithm=fixed_window limits=60/m from=environment",
    ] {
        assert!(output.contains(line), "{line}: {output}");
    }

    let (_, output) = run_to_exit(&[("LISTEN_ADDR", &addr), ("POLICY_FILE", SAMPLE_POLICIES)]);
    let from_file =
        format!("algorithm=gcra limits=10/s burst 20, 1000/m burst 20 from={SAMPLE_POLICIES}");
    assert!(output.contains(&from_file), "{output}");

    // Each policy's mode, and how many tokens are exempt, never which.
    let (_, output) = run_to_exit(&[
        ("LISTEN_ADDR", &addr),
        ("TELEMETRY_MODE", "shadow"),
        ("TELEMETRY_EXEMPT_TOKENS", "HEALTH-5e11c0"),
        ("LOGIN_MODE", "annotate"),
    ]);
    for line in [
        "limits=1000/m from=environment mode=shadow exempt=1 x-agent-token value",
        "limits=10/h from=environment mode=annotate exempt=none",
        "limits=60/m from=environment mode=block exempt=none",
    ] {
        assert!(output.contains(line), "{line}: {output}");
    }
    assert!(
        !output.contains("HEALTH-5e11c0"),
        "a token printed: {output}"
    );

    // A policy from the file takes its mode from the file, and the log
    // names the variables it overrides.
    let (_, output) = run_to_exit(&[
        ("LISTEN_ADDR", &addr),
        ("POLICY_FILE", SAMPLE_POLICIES),
        ("TELEMETRY_MODE", "shadow"),
        ("TELEMETRY_EXEMPT_TOKENS", "HEALTH-5e11c0"),
    ]);
    assert!(
        output.contains("ignored=TELEMETRY_MODE, TELEMETRY_EXEMPT_TOKENS"),
        "{output}"
    );
    let telemetry = format!("1000/m burst 20 from={SAMPLE_POLICIES} mode=block exempt=none");
    assert!(output.contains(&telemetry), "{output}");
    assert!(
        !output.contains("HEALTH-5e11c0"),
        "a token printed: {output}"
    );
}

#[test]
fn two_topologies_stop_startup_naming_both_variables() {
    let url = "redis://:hunter2@127.0.0.1:6399/1";
    let node = "redis://:hunter2@127.0.0.1:7000";
    let sentinel = "redis://:hunter2@127.0.0.1:26379";
    let cases: &[(Env, &[&str])] = &[
        (
            &[("REDIS_URL", url), ("REDIS_CLUSTER_NODES", node)],
            &["REDIS_URL", "REDIS_CLUSTER_NODES"],
        ),
        (
            &[
                ("REDIS_URL", url),
                ("REDIS_SENTINELS", sentinel),
                ("REDIS_MASTER_NAME", "mymaster"),
            ],
            &["REDIS_URL", "REDIS_SENTINELS"],
        ),
        (
            &[
                ("REDIS_CLUSTER_NODES", node),
                ("REDIS_SENTINELS", sentinel),
                ("REDIS_MASTER_NAME", "mymaster"),
            ],
            &["REDIS_CLUSTER_NODES", "REDIS_SENTINELS"],
        ),
        (
            &[
                ("REDIS_URL", url),
                ("REDIS_CLUSTER_NODES", node),
                ("REDIS_SENTINELS", sentinel),
                ("REDIS_MASTER_NAME", "mymaster"),
            ],
            &["REDIS_URL", "REDIS_CLUSTER_NODES", "REDIS_SENTINELS"],
        ),
    ];
    for (env, named) in cases {
        let (status, output) = run_to_exit(env);
        assert!(!status.success(), "{env:?}: {status}: {output}");
        // The first line of the error names every variable set.
        let error = output
            .lines()
            .find(|l| l.starts_with("edr: "))
            .unwrap_or("");
        let head = error.split(": ").nth(1).unwrap_or("");
        for var in *named {
            assert!(head.contains(var), "{var}: {output}");
        }
        assert!(output.contains("choose one topology"), "{output}");
        assert!(!output.contains("hunter2"), "password printed: {output}");
        assert!(!output.contains("panicked"), "{output}");
    }
}

#[test]
fn sentinels_and_master_name_stop_startup_without_each_other() {
    let sentinel = "redis://127.0.0.1:26379";
    let cases: &[(Env, &str)] = &[
        // The sentinels, but not which master.
        (&[("REDIS_SENTINELS", sentinel)], "REDIS_MASTER_NAME: "),
        (
            &[
                ("REDIS_SENTINELS", sentinel),
                ("REDIS_MASTER_PASSWORD", "hunter3"),
            ],
            "REDIS_MASTER_NAME: ",
        ),
        // A master, but no sentinels to ask for it.
        (&[("REDIS_MASTER_NAME", "mymaster")], "REDIS_MASTER_NAME: "),
        (
            &[
                ("REDIS_URL", "redis://127.0.0.1:6399/1"),
                ("REDIS_MASTER_NAME", "mymaster"),
            ],
            "REDIS_MASTER_NAME: ",
        ),
        // The master's credentials belong to Sentinel alone.
        (
            &[
                ("REDIS_URL", "redis://127.0.0.1:6399/1"),
                ("REDIS_MASTER_PASSWORD", "hunter3"),
            ],
            "REDIS_MASTER_PASSWORD: ",
        ),
        // A sentinel has no database to choose.
        (
            &[
                ("REDIS_SENTINELS", "redis://127.0.0.1:26379/1"),
                ("REDIS_MASTER_NAME", "mymaster"),
            ],
            "REDIS_SENTINELS: ",
        ),
    ];
    for (env, named) in cases {
        let (status, output) = run_to_exit(env);
        assert!(!status.success(), "{env:?}: {status}: {output}");
        assert!(output.contains(named), "{env:?}: {output}");
        assert!(output.contains("REDIS_SENTINELS"), "{env:?}: {output}");
        assert!(!output.contains("hunter3"), "password printed: {output}");
        assert!(!output.contains("panicked"), "{env:?}: {output}");
    }

    // Sentinels that do not answer stop startup too, naming them, with
    // neither their password nor the master's.
    let closed = format!("redis://:hunter2@127.0.0.1:{}", free_port());
    let (status, output) = run_to_exit(&[
        ("REDIS_SENTINELS", &closed),
        ("REDIS_MASTER_NAME", "mymaster"),
        ("REDIS_MASTER_PASSWORD", "hunter3"),
    ]);
    assert!(!status.success(), "{status}: {output}");
    assert!(output.contains("REDIS_SENTINELS: "), "{output}");
    assert!(!output.contains("hunter"), "password printed: {output}");
}

#[test]
fn celery_settings_stop_startup_where_they_cannot_apply() {
    // The raw format has no Celery queue or task.
    for var in ["CELERY_QUEUE", "CELERY_TASK"] {
        let (status, output) = run_to_exit(&[("QUEUE_FORMAT", "raw"), (var, "edr")]);
        assert!(!status.success(), "{var}: {status}: {output}");
        assert!(output.contains(&format!("{var}: ")), "{var}: {output}");
        assert!(output.contains("QUEUE_FORMAT=celery"), "{var}: {output}");
    }
    // In a cluster, a queue with a `}` but no hash tag: no mark could share
    // its slot. Refused before anything connects.
    let node = format!("redis://127.0.0.1:{}", free_port());
    let (status, output) =
        run_to_exit(&[("REDIS_CLUSTER_NODES", &node), ("CELERY_QUEUE", "edr}x")]);
    assert!(!status.success(), "{status}: {output}");
    assert!(output.contains("CELERY_QUEUE: "), "{output}");
    assert!(output.contains("hash tag"), "{output}");
    assert!(!output.contains("panicked"), "{output}");
}

#[test]
fn a_cluster_node_url_with_a_database_stops_startup() {
    let nodes = "redis://:hunter2@127.0.0.1:7000,redis://:hunter2@127.0.0.1:7001/1";
    let (status, output) = run_to_exit(&[("REDIS_CLUSTER_NODES", nodes)]);
    assert!(!status.success(), "{status}: {output}");
    assert!(output.contains("REDIS_CLUSTER_NODES: "), "{output}");
    assert!(output.contains("127.0.0.1:7001/1"), "{output}");
    assert!(output.contains("only database 0"), "{output}");
    assert!(output.contains("key prefix"), "{output}");
    assert!(!output.contains("hunter2"), "password printed: {output}");
    assert!(!output.contains("panicked"), "{output}");
}

#[test]
fn a_missing_tls_file_stops_startup_naming_the_variable_and_the_path() {
    let missing = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/no-such-ca.pem");
    let rediss = format!("rediss://:hunter2@127.0.0.1:{}/1", free_port());
    // The example is built with the crate's features, as this test is:
    // without `tls`, any TLS setting is refused for want of it.
    if !cfg!(feature = "tls") {
        let plain = format!("redis://:hunter2@127.0.0.1:{}/1", free_port());
        let cases: [(Env, &str); 2] = [
            (
                &[("REDIS_URL", &plain), ("REDIS_TLS_CA", missing)],
                "REDIS_TLS_CA: ",
            ),
            (&[("REDIS_URL", &rediss)], "REDIS_URL: "),
        ];
        for (env, named) in cases {
            let (status, output) = run_to_exit(env);
            assert!(!status.success(), "{env:?}: {status}: {output}");
            assert!(output.contains(named), "{env:?}: {output}");
            assert!(output.contains("`tls` feature"), "{env:?}: {output}");
            assert!(!output.contains("hunter2"), "password printed: {output}");
        }
        return;
    }
    let (status, output) = run_to_exit(&[("REDIS_URL", &rediss), ("REDIS_TLS_CA", missing)]);
    assert!(!status.success(), "{status}: {output}");
    assert!(output.contains("REDIS_TLS_CA: "), "{output}");
    assert!(!output.contains("hunter2"), "password printed: {output}");
    assert!(!output.contains("panicked"), "{output}");
    assert!(output.contains(missing), "{output}");

    // The same file for a cluster's nodes.
    let node = format!("rediss://127.0.0.1:{}", free_port());
    let (status, output) =
        run_to_exit(&[("REDIS_CLUSTER_NODES", &node), ("REDIS_TLS_CA", missing)]);
    assert!(!status.success(), "{status}: {output}");
    assert!(output.contains("REDIS_TLS_CA: "), "{output}");
    assert!(output.contains(missing), "{output}");

    let cases: &[(Env, &str)] = &[
        // TLS files with nothing to use them on.
        (
            &[
                ("REDIS_URL", "redis://127.0.0.1:6399/1"),
                ("REDIS_TLS_CA", missing),
            ],
            "REDIS_TLS_CA: ",
        ),
        (&[("REDIS_TLS_CA", missing)], "REDIS_TLS_CA: "),
        // A client certificate without its key, and the reverse.
        (
            &[("REDIS_URL", &rediss), ("REDIS_TLS_CERT", missing)],
            "REDIS_TLS_KEY: ",
        ),
        (
            &[("REDIS_URL", &rediss), ("REDIS_TLS_KEY", missing)],
            "REDIS_TLS_CERT: ",
        ),
        (
            &[
                ("REDIS_URL", &rediss),
                ("REDIS_TLS_CERT", missing),
                ("REDIS_TLS_KEY", missing),
            ],
            "REDIS_TLS_CERT: ",
        ),
    ];
    for (env, named) in cases {
        let (status, output) = run_to_exit(env);
        assert!(!status.success(), "{env:?}: {status}: {output}");
        assert!(output.contains(named), "{env:?}: {output}");
        assert!(!output.contains("hunter2"), "password printed: {output}");
        assert!(!output.contains("panicked"), "{env:?}: {output}");
    }
}

/// A `redis-server` of a test's own other than [`RedisServer`]'s: a
/// cluster node or a sentinel. Killed when dropped, its files removed.
struct RedisProcess {
    child: Child,
    port: u16,
    files: Vec<PathBuf>,
}

impl RedisProcess {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection to it (database 0).
    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Waits until its answer to `command` is as `expected`.
    async fn wait_for<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
        expected: impl Fn(&T) -> bool,
    ) {
        let client = redis::Client::open(self.url()).unwrap();
        eventually(Duration::from_secs(10), || async {
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            matches!(command.query_async(&mut conn).await, Ok(value) if expected(&value))
        })
        .await;
    }

    /// A Redis Cluster of one node that holds every slot: enough for the
    /// cluster's rules (a script's keys in one slot, database 0 only).
    async fn cluster_node() -> RedisProcess {
        let port = free_port();
        let nodes =
            std::env::temp_dir().join(format!("edr-{}-nodes-{port}.conf", std::process::id()));
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-announce-ip", "127.0.0.1"])
            // The bus port would be the port + 10000, beyond 65535 for a
            // high free port.
            .args(["--cluster-port", &free_port().to_string()])
            .arg("--cluster-config-file")
            .arg(&nodes)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_reaped(command).expect("redis-server must be installed");
        let node = RedisProcess {
            child,
            port,
            files: vec![nodes],
        };
        node.wait_for(&redis::cmd("PING"), |_: &String| true).await;
        let _: () = redis::cmd("CLUSTER")
            .arg(&["ADDSLOTSRANGE", "0", "16383"][..])
            .query_async(&mut node.connection().await)
            .await
            .unwrap();
        let mut info = redis::cmd("CLUSTER");
        info.arg("INFO");
        node.wait_for(&info, |info: &String| info.contains("cluster_state:ok"))
            .await;
        node
    }

    /// A sentinel that monitors `master` as `mymaster`.
    async fn sentinel(master: &RedisServer) -> RedisProcess {
        let port = free_port();
        let master_port = master
            .url()
            .rsplit(':')
            .next()
            .and_then(|rest| rest.split('/').next())
            .expect("redis://127.0.0.1:<port>/1");
        let config =
            std::env::temp_dir().join(format!("edr-{}-sentinel-{port}.conf", std::process::id()));
        // A sentinel rewrites its configuration file, so it must have one.
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n",
                std::env::temp_dir().display()
            ),
        )
        .expect("write the sentinel's configuration");
        let mut command = Command::new("redis-server");
        command
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_reaped(command).expect("redis-server must be installed");
        let sentinel = RedisProcess {
            child,
            port,
            files: vec![config],
        };
        let mut ask = redis::cmd("SENTINEL");
        ask.arg(&["GET-MASTER-ADDR-BY-NAME", "mymaster"][..]);
        sentinel
            .wait_for(&ask, |addr: &Vec<String>| addr.len() == 2)
            .await;
        sentinel
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// `KEYS pattern` on `conn`, sorted.
async fn keys(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn telemetry_follows_a_redis_cluster_with_the_marks_in_the_lists_slot() {
    if std::env::var_os("REDIS_URL").is_some() {
        eprintln!("skipped: REDIS_URL is set, and this test runs a cluster node of its own");
        return;
    }
    let node = RedisProcess::cluster_node().await;
    // Database 0 may be named: it is the only one.
    let seed = format!("{}/0", node.url());
    let edr = Edr::start(&[("REDIS_CLUSTER_NODES", &seed), ("TELEMETRY_RATE", "2/m")]).await;
    let batch = r#"[{"event":"cluster"}]"#;
    // Counted in the cluster: the third request of the minute is refused.
    queued_once_then_limited(&edr, batch).await;
    let other = ("x-agent-token", &b"AGENT-2"[..]);
    let reply = edr
        .post_bytes(&[other, ("x-batch-id", b"batch-1")], "[{}]")
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let reply = edr
        .post_bytes(&[other, ("x-batch-id", b"batch-1")], "[{},{}]")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");

    let mut conn = node.connection().await;
    let queued = celery_batches(&mut conn, CELERY_LIST).await;
    assert_eq!(queued, [batch, "[{}]"], "the workers' list keeps its name");
    let marks = keys(&mut conn, "{celery}:batch:*").await;
    assert_eq!(marks.len(), 2, "{marks:?}");
    let slot = |key: &str| {
        let mut keyslot = redis::cmd("CLUSTER");
        keyslot.arg("KEYSLOT").arg(key);
        keyslot
    };
    let list_slot: i64 = slot(CELERY_LIST).query_async(&mut conn).await.unwrap();
    for mark in &marks {
        let mark_slot: i64 = slot(mark).query_async(&mut conn).await.unwrap();
        assert_eq!(mark_slot, list_slot, "{mark}");
    }
    let counters = keys(&mut conn, "rl:telemetry:*").await;
    assert_eq!(counters.len(), 2, "one counter per agent: {counters:?}");
    drop(edr);

    // The raw list, and a Celery queue with a hash tag of its own: the
    // marks hash to the list's slot all the same.
    let cases = [
        (("QUEUE_FORMAT", "raw"), RAW_LIST, "{edr:telemetry}:batch:*"),
        (
            ("CELERY_QUEUE", "{edr}telemetry"),
            "{edr}telemetry",
            "{edr}telemetry:batch:*",
        ),
    ];
    for (setting, list, pattern) in cases {
        let edr = Edr::start(&[("REDIS_CLUSTER_NODES", &seed), setting]).await;
        let agent = ("x-agent-token", list.as_bytes());
        for _ in 0..2 {
            let reply = edr
                .post_bytes(&[agent, ("x-batch-id", b"batch-1")], batch)
                .await;
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{list}: {reply:?}");
        }
        let len: usize = redis::cmd("LLEN")
            .arg(list)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 1, "{list}");
        let marks = keys(&mut conn, pattern).await;
        assert_eq!(marks.len(), 1, "{list}: {marks:?}");
        let list_slot: i64 = slot(list).query_async(&mut conn).await.unwrap();
        let mark_slot: i64 = slot(&marks[0]).query_async(&mut conn).await.unwrap();
        assert_eq!(mark_slot, list_slot, "{list}: {}", marks[0]);
    }
}

#[tokio::test]
async fn telemetry_follows_the_sentinel_master_counters_in_db1_and_queue_in_db0() {
    let Some(master) = RedisServer::private() else {
        return;
    };
    let sentinel = RedisProcess::sentinel(&master).await;
    let edr = Edr::start(&[
        ("REDIS_SENTINELS", &sentinel.url()),
        ("REDIS_MASTER_NAME", "mymaster"),
        ("TELEMETRY_RATE", "2/m"),
    ])
    .await;
    let batch = r#"[{"event":"sentinel"}]"#;
    queued_once_then_limited(&edr, batch).await;

    // As on one server: the queue and its marks in database 0, the
    // counters in database 1.
    assert_eq!(queued(&master).await, [batch]);
    let mut db0 = queue_db(&master).await;
    assert_eq!(keys(&mut db0, "celery:batch:*").await.len(), 1);
    assert!(keys(&mut db0, "rl:*").await.is_empty(), "counters in db 0");
    let mut db1 = master.connection().await;
    assert_eq!(keys(&mut db1, "rl:telemetry:*").await.len(), 1);
    let in_db1 = keys(&mut db1, "*").await;
    assert!(
        in_db1.iter().all(|key| key.starts_with("rl:")),
        "the queue in db 1: {in_db1:?}"
    );

    // A Celery worker that finds the master through the sentinels too
    // (kombu's `sentinel://` transport) runs it.
    let Some(venv) = celery_venv() else {
        return;
    };
    let broker = format!(
        "{}/0",
        sentinel.url().replacen("redis://", "sentinel://", 1)
    );
    let mut worker = CeleryWorker::start(
        &venv,
        &broker,
        &server_db(&master, 2),
        &[("CELERY_MASTER_NAME", "mymaster")],
    );
    let mut record = redis::Client::open(server_db(&master, 2))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_str(batch).unwrap();
    worker
        .wait_for_batch(&mut record, &parsed, Duration::from_secs(60))
        .await;
    assert_eq!(CeleryWorker::runs(&mut record).await.len(), 1);
    assert!(queued(&master).await.is_empty(), "a task left on the queue");
}

// ---------------------------------------------------------------- metrics

/// A scrape of `GET /metrics`, read by an exposition-format parser.
struct Scrape(prometheus_parse::Scrape);

/// The numbers of one kind per outcome (or other label), zeros left out.
type Counts = std::collections::BTreeMap<String, u64>;

impl Scrape {
    /// `/metrics` of `http`: `200`, the text format, parsed.
    async fn of(http: &HttpClient) -> Scrape {
        let reply = http.get("/metrics", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let content_type = reply.header("content-type").expect("a content type");
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        assert_eq!(reply.header("ratelimit"), None, "/metrics is not limited");
        let lines = reply.body.lines().map(|line| Ok(line.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("the exposition format"))
    }

    /// The samples of `metric` whose labels include `labels`.
    fn samples<'a>(
        &'a self,
        metric: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> {
        self.0.samples.iter().filter(move |sample| {
            sample.metric == metric
                && (labels.iter()).all(|(name, value)| sample.labels.get(name) == Some(*value))
        })
    }

    /// The one number of `metric` with `labels` (a counter, a gauge, or a
    /// histogram's `_count`, which the parser leaves untyped), or `None`
    /// when there is no such series.
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = (self.samples(metric, labels))
            .map(|sample| match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{metric}{labels:?} is not one number: {other:?}"),
            })
            .collect();
        assert!(found.len() <= 1, "{metric}{labels:?}: {found:?}");
        found.first().copied()
    }

    /// As [`Scrape::value`], the series required, as a whole number.
    fn number(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        let value = (self.value(metric, labels))
            .unwrap_or_else(|| panic!("no series {metric}{labels:?}: {:?}", self.0.samples));
        assert!(value >= 0.0 && value.fract() == 0.0, "{metric}: {value}");
        value as u64
    }

    /// `ratelimit_decisions_total` of `policy` by outcome, zeros left out.
    fn decisions(&self, policy: &str) -> Counts {
        let labels = [("policy", policy)];
        (self.samples("ratelimit_decisions_total", &labels))
            .map(|sample| {
                let outcome = sample.labels.get("outcome").expect("an outcome label");
                (
                    outcome.to_owned(),
                    self.number(&sample.metric, &[("policy", policy), ("outcome", outcome)]),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// One of `policy`'s decisions by `outcome`, 0 if none.
    fn decided(&self, policy: &str, outcome: &str) -> u64 {
        self.decisions(policy).get(outcome).copied().unwrap_or(0)
    }

    /// Store calls of `policy` whose time was recorded: the latency
    /// histogram's count, checked against its `+Inf` bucket and its buckets
    /// checked to be the library's.
    fn store_calls(&self, policy: &str) -> u64 {
        let labels = [("policy", policy)];
        let metric = "ratelimit_store_duration_seconds";
        let histogram: Vec<_> = self.samples(metric, &labels).collect();
        let [histogram] = histogram[..] else {
            panic!("one histogram for {policy}: {histogram:?}");
        };
        let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
            panic!("{metric} is not a histogram: {histogram:?}");
        };
        let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
        let mut expected = STORE_DURATION_BUCKETS.to_vec();
        expected.push(f64::INFINITY);
        assert_eq!(bounds, expected, "{metric}'s buckets");
        let count = self.number(&format!("{metric}_count"), &labels);
        assert_eq!(
            buckets.last().unwrap().count,
            count as f64,
            "{metric}: +Inf"
        );
        count
    }

    /// What `/metrics` says of every policy must hold whatever happened:
    /// no label naming anything but a policy and fixed words, and each
    /// store call timed once (an answer, `allowed` or `denied`, or an
    /// error; in shadow mode a would-be denial may come from the block cache
    /// instead, so there the test counts them itself).
    fn check(&self, tokens: &[&str]) {
        for sample in &self.0.samples {
            for (name, value) in sample.labels.iter() {
                assert!(
                    ["policy", "outcome", "to"].contains(&name.as_str()),
                    "label {name}={value:?} on {}",
                    sample.metric
                );
                for token in tokens {
                    assert!(
                        !value.contains(token),
                        "{}: {name}={value:?}",
                        sample.metric
                    );
                }
            }
            if let Some(policy) = sample.labels.get("policy") {
                assert!(
                    ["telemetry", "login", "dashboard"].contains(&policy),
                    "{sample:?}"
                );
            }
        }
        for policy in ["telemetry", "login", "dashboard"] {
            let decisions = self.decisions(policy);
            if decisions.is_empty() || decisions.contains_key("shadow_denied") {
                continue;
            }
            let answered = self.decided(policy, "allowed") + self.decided(policy, "denied");
            let errors = self.number("ratelimit_store_errors_total", &[("policy", policy)]);
            assert_eq!(
                self.store_calls(policy),
                answered + errors,
                "{policy}: one latency per store call"
            );
        }
    }

    fn breaker_open(&self, policy: &str) -> u64 {
        self.number("ratelimit_breaker_open", &[("policy", policy)])
    }

    fn breaker_transitions(&self, policy: &str, to: &str) -> u64 {
        let labels = [("policy", policy), ("to", to)];
        self.number("ratelimit_breaker_transitions_total", &labels)
    }

    fn store_errors(&self, policy: &str) -> u64 {
        self.number("ratelimit_store_errors_total", &[("policy", policy)])
    }
}

/// `[("allowed", 3), …]` as [`Counts`].
fn counts(pairs: &[(&str, u64)]) -> Counts {
    (pairs.iter())
        .filter(|(_, n)| *n > 0)
        .map(|(outcome, n)| ((*outcome).to_owned(), *n))
        .collect()
}

/// Adds one `outcome` to `counts`.
fn count(counts: &mut Counts, outcome: &str) {
    *counts.entry(outcome.to_owned()).or_default() += 1;
}

/// The outcome a telemetry answer stands for, when it can only be one.
fn telemetry_outcome(reply: &Reply, redis_up: bool) -> &'static str {
    match (reply.status, redis_up) {
        (StatusCode::ACCEPTED, true) => "allowed",
        (StatusCode::ACCEPTED, false) => "fallback_allowed",
        (StatusCode::TOO_MANY_REQUESTS, false) => "fallback_denied",
        _ => panic!("unexpected answer: {reply:?}"),
    }
}

/// The exempt agent tokens of the metrics tests, secrets that must show up
/// nowhere.
const EXEMPT_TOKENS: [&str; 2] = ["HEALTH-7f3a9c2e", "HEALTH-b41d0285"];

#[tokio::test]
async fn metrics_count_every_outcome_through_a_redis_outage() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let exempt = EXEMPT_TOKENS[0];
    let edr = Edr::start(&[
        ("REDIS_URL", server.url()),
        ("TELEMETRY_RATE", "3/m"),
        ("LOGIN_RATE", "5/h"),
        ("DASHBOARD_RATE", "5/m"),
        ("TELEMETRY_EXEMPT_TOKENS", exempt),
        // The limiter alone: with the queue in the same Redis, telemetry
        // would rightly answer 503 during the outage.
        ("QUEUE_URL", "off"),
    ])
    .await;
    let agents = ["AGENT-A1", "AGENT-B2", "AGENT-C3", "AGENT-D4"];
    let mut secrets: Vec<&str> = agents.to_vec();
    secrets.push(exempt);
    let token = |agent: &'static str| [("x-agent-token", agent.as_bytes())];
    let alice = [("authorization", &b"Bearer alice"[..])];

    // A layer's series appear with its first request.
    let scrape = Scrape::of(&edr.http).await;
    for policy in ["telemetry", "login", "dashboard"] {
        assert_eq!(scrape.decisions(policy), Counts::new(), "{policy}");
    }

    // Redis up: allowed, denied (by Redis, then by the block cache), no
    // token, exempt; and /metrics scraped more often than any limit allows.
    let mut telemetry = Counts::new();
    let mut sent = 0;
    for expected in [202, 202, 202, 429, 429] {
        let reply = edr.telemetry(&token(agents[0])).await;
        assert_eq!(reply.status.as_u16(), expected, "{reply:?}");
        sent += 1;
    }
    telemetry.extend(counts(&[
        ("allowed", 3),
        ("denied", 1),
        ("denied_cached", 1),
    ]));
    assert_eq!(
        edr.telemetry(&token(agents[1])).await.status,
        StatusCode::ACCEPTED
    );
    count(&mut telemetry, "allowed");
    for _ in 0..2 {
        let reply = edr.telemetry(&[]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
        count(&mut telemetry, "missing_key");
    }
    for _ in 0..4 {
        let reply = edr.telemetry(&[("x-agent-token", exempt.as_bytes())]).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        assert_eq!(reply.header("ratelimit"), None, "exempt: {reply:?}");
        count(&mut telemetry, "exempt");
    }
    sent += 1 + 2 + 4;
    assert_eq!(edr.post(LOGIN, &[]).await.status, StatusCode::OK);
    assert_eq!(edr.get(DASHBOARD, &alice).await.status, StatusCode::OK);
    for _ in 0..12 {
        Scrape::of(&edr.http).await;
    }
    let scrape = Scrape::of(&edr.http).await;
    scrape.check(&secrets);
    assert_eq!(scrape.decisions("telemetry"), telemetry);
    assert_eq!(scrape.decisions("login"), counts(&[("allowed", 1)]));
    assert_eq!(scrape.decisions("dashboard"), counts(&[("allowed", 1)]));
    // Redis answered 5 telemetry requests: the cached denial and the
    // exempt and token-less requests never reached it.
    assert_eq!(scrape.store_calls("telemetry"), 5);
    assert_eq!(scrape.store_calls("login"), 1);
    assert_eq!(
        scrape.number("ratelimit_block_cache_entries", &[("policy", "telemetry")]),
        1
    );
    for policy in ["telemetry", "login", "dashboard"] {
        assert_eq!(scrape.store_errors(policy), 0, "{policy}");
        assert_eq!(scrape.breaker_open(policy), 0, "{policy}");
    }

    // Redis down: login fails closed, the dashboard open, telemetry falls
    // back to the in-process limiter until the breaker opens, and after.
    server.kill();
    let reply = edr.post(LOGIN, &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    let reply = edr.get(DASHBOARD, &alice).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let scrape = loop {
        let reply = edr.telemetry(&token(agents[2])).await;
        count(&mut telemetry, telemetry_outcome(&reply, false));
        sent += 1;
        let scrape = Scrape::of(&edr.http).await;
        if scrape.breaker_open("telemetry") == 1 {
            break scrape;
        }
        assert!(Instant::now() < deadline, "the breaker never opened");
    };
    scrape.check(&secrets);
    assert_eq!(scrape.decisions("telemetry"), telemetry);
    assert!(scrape.decided("telemetry", "fallback_allowed") >= 1);
    // The default breaker opens after 3 failures in a row.
    assert!(scrape.store_errors("telemetry") >= 3);
    assert_eq!(scrape.breaker_transitions("telemetry", "open"), 1);
    assert_eq!(scrape.breaker_transitions("telemetry", "closed"), 0);
    assert_eq!(
        scrape.decisions("login"),
        counts(&[("allowed", 1), ("failed_closed", 1)])
    );
    assert_eq!(
        scrape.decisions("dashboard"),
        counts(&[("allowed", 1), ("failed_open", 1)])
    );
    for policy in ["login", "dashboard"] {
        // One failure: not enough to open the breaker.
        assert_eq!(scrape.store_errors(policy), 1, "{policy}");
        assert_eq!(scrape.breaker_open(policy), 0, "{policy}");
    }

    // Redis back: once a probe succeeds, the breaker closes and Redis
    // counts again. Each poll is a fresh agent, decided by the fallback or
    // by Redis: only their sum is known.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut polls, mut i) = (0, 0);
    let scrape = loop {
        let agent = format!("AGENT-POLL-{i}");
        i += 1;
        let reply = edr.telemetry(&[("x-agent-token", agent.as_bytes())]).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        (polls, sent) = (polls + 1, sent + 1);
        let scrape = Scrape::of(&edr.http).await;
        if scrape.breaker_open("telemetry") == 0 {
            break scrape;
        }
        assert!(Instant::now() < deadline, "the breaker never closed");
    };
    scrape.check(&secrets);
    assert!(scrape.breaker_transitions("telemetry", "closed") >= 1);
    let was = |outcome: &str| telemetry.get(outcome).copied().unwrap_or(0);
    let polled = |scrape: &Scrape| {
        (scrape.decided("telemetry", "allowed") - was("allowed"))
            + (scrape.decided("telemetry", "fallback_allowed") - was("fallback_allowed"))
    };
    assert_eq!(polled(&scrape), polls);

    // Limited by Redis again: 3 allowed, then denied.
    let before = scrape;
    for expected in [202, 202, 202, 429] {
        let reply = edr.telemetry(&token(agents[3])).await;
        assert_eq!(reply.status.as_u16(), expected, "{reply:?}");
        sent += 1;
    }
    let after = Scrape::of(&edr.http).await;
    after.check(&secrets);
    for (outcome, more) in [("allowed", 3), ("denied", 1), ("fallback_allowed", 0)] {
        let delta = after.decided("telemetry", outcome) - before.decided("telemetry", outcome);
        assert_eq!(delta, more, "{outcome}");
    }
    assert_eq!(
        after.store_calls("telemetry") - before.store_calls("telemetry"),
        4
    );
    assert_eq!(
        after.store_errors("telemetry"),
        before.store_errors("telemetry")
    );
    assert_eq!(after.breaker_open("telemetry"), 0);
    // Every telemetry request counted once, under one outcome.
    assert_eq!(after.decisions("telemetry").values().sum::<u64>(), sent);
}

#[tokio::test]
async fn metrics_addr_serves_metrics_alone_and_the_api_none() {
    let addr = format!("127.0.0.1:{}", free_port());
    let edr = Edr::start(&[("METRICS_ADDR", &addr), ("TELEMETRY_RATE", "1/m")]).await;
    let metrics = HttpClient::new(&format!("http://{addr}"));

    let reply = edr.get("/metrics", &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    let token = [("x-agent-token", &b"AGENT-1"[..])];
    assert_eq!(edr.telemetry(&token).await.status, StatusCode::ACCEPTED);
    assert_eq!(
        edr.telemetry(&token).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let scrape = Scrape::of(&metrics).await;
    scrape.check(&["AGENT-1"]);
    assert_eq!(
        scrape.decisions("telemetry"),
        counts(&[("allowed", 1), ("denied", 1)])
    );
    // The in-memory store's calls are timed too.
    assert_eq!(scrape.store_calls("telemetry"), 2);
    // Only /metrics there.
    for path in ["/healthz", TELEMETRY, "/"] {
        let reply = metrics.get(path, &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}: {reply:?}");
    }
    drop(edr);

    // Refused at startup: the API's own address, or one that is taken.
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let (status, output) = run_to_exit(&[("LISTEN_ADDR", &listen), ("METRICS_ADDR", &listen)]);
    assert!(!status.success(), "{status}: {output}");
    assert!(output.contains("METRICS_ADDR: "), "{output}");
    assert!(output.contains("LISTEN_ADDR"), "{output}");
    let taken = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let taken = taken.local_addr().unwrap().to_string();
    let (status, output) = run_to_exit(&[("METRICS_ADDR", &taken)]);
    assert!(!status.success(), "{status}: {output}");
    assert!(
        output.contains(&format!("METRICS_ADDR: {taken}")),
        "{output}"
    );
    let (status, output) = run_to_exit(&[("METRICS", "off"), ("METRICS_ADDR", &taken)]);
    assert!(!status.success(), "{status}: {output}");
    assert!(
        output.contains("METRICS_ADDR: is set while METRICS=off"),
        "{output}"
    );
}

/// `METRICS=off`, the load benchmark's baseline: no /metrics, limits as
/// ever.
#[tokio::test]
async fn metrics_off_serves_no_metrics_and_still_limits() {
    let edr = Edr::start(&[("METRICS", "off"), ("TELEMETRY_RATE", "1/m")]).await;
    assert_eq!(edr.get("/metrics", &[]).await.status, StatusCode::NOT_FOUND);
    let token = [("x-agent-token", &b"AGENT-1"[..])];
    assert_eq!(edr.telemetry(&token).await.status, StatusCode::ACCEPTED);
    assert_eq!(
        edr.telemetry(&token).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn shadow_mode_blocks_nothing_and_counts_the_would_be_denials() {
    let edr = Edr::start(&[
        ("TELEMETRY_MODE", "shadow"),
        ("TELEMETRY_RATE", "2/m"),
        ("LOGIN_MODE", "annotate"),
        ("LOGIN_RATE", "2/h"),
        // Any case, as the other words.
        ("DASHBOARD_MODE", "Block"),
        ("DASHBOARD_RATE", "1/m"),
    ])
    .await;
    let token = [("x-agent-token", &b"AGENT-1"[..])];
    for _ in 0..5 {
        let reply = edr.telemetry(&token).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        for field in ["ratelimit", "ratelimit-policy", "retry-after"] {
            assert_eq!(reply.header(field), None, "{field}: {reply:?}");
        }
    }
    // Shadow mode refuses nothing: not even a request without a token.
    let reply = edr.telemetry(&[]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");

    // Annotate: forwarded with the RateLimit fields, never Retry-After.
    for remaining in ["r=1", "r=0", "r=0"] {
        let reply = edr.post(LOGIN, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let ratelimit = reply
            .header("ratelimit")
            .expect("RateLimit in annotate mode");
        assert!(ratelimit.contains(remaining), "{ratelimit}");
        assert_eq!(reply.header("retry-after"), None, "{reply:?}");
    }
    let alice = [("authorization", &b"Bearer alice"[..])];
    assert_eq!(edr.get(DASHBOARD, &alice).await.status, StatusCode::OK);
    let reply = edr.get(DASHBOARD, &alice).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");

    let scrape = Scrape::of(&edr.http).await;
    scrape.check(&["AGENT-1"]);
    assert_eq!(
        scrape.decisions("telemetry"),
        counts(&[("allowed", 2), ("shadow_denied", 3), ("missing_key", 1)])
    );
    // The block cache spares the store in shadow mode too: the first
    // would-be denial is the store's, the next two the cache's.
    assert_eq!(scrape.store_calls("telemetry"), 3);
    assert_eq!(
        scrape.decisions("login"),
        counts(&[("allowed", 2), ("denied", 1)])
    );
    assert_eq!(
        scrape.decisions("dashboard"),
        counts(&[("allowed", 1), ("denied", 1)])
    );
}

#[tokio::test]
async fn exempt_agent_tokens_skip_the_limit_are_counted_and_never_printed() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let log = TempFile::new("exempt-tokens.log", "");
    let edr = Edr::start_logged(
        &[
            ("REDIS_URL", server.url()),
            ("TELEMETRY_RATE", "2/m"),
            // Trimmed around each comma.
            (
                "TELEMETRY_EXEMPT_TOKENS",
                &format!(" {} , {} ", EXEMPT_TOKENS[0], EXEMPT_TOKENS[1]),
            ),
            // Every line the example and the library write, decisions too.
            ("RUST_LOG", "debug"),
        ],
        log.path(),
    )
    .await;
    // Each batch with an id of its own: identical bytes would be one batch.
    let mut batches = 0;
    for exempt in EXEMPT_TOKENS {
        for _ in 0..3 {
            let id = format!("batch-{batches}");
            let headers = [
                ("x-agent-token", exempt.as_bytes()),
                ("x-batch-id", id.as_bytes()),
            ];
            let reply = edr.telemetry(&headers).await;
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
            assert_eq!(json(&reply), serde_json::json!({"status": "queued"}));
            assert_eq!(reply.header("ratelimit"), None, "exempt: {reply:?}");
            batches += 1;
        }
    }
    let agent = ("x-agent-token", &b"AGENT-1"[..]);
    for (n, expected) in [202, 202, 429].into_iter().enumerate() {
        let id = format!("batch-{n}");
        let reply = edr.telemetry(&[agent, ("x-batch-id", id.as_bytes())]).await;
        assert_eq!(reply.status.as_u16(), expected, "{reply:?}");
    }
    batches += 2;
    // The token header twice, even the exempt token twice, is no exemption:
    // the key refuses it, as any repeated token.
    let twice = EXEMPT_TOKENS[0].as_bytes();
    for pair in [
        [("x-agent-token", twice); 2],
        [("x-agent-token", twice), agent],
    ] {
        let reply = edr.telemetry(&pair).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
        assert_eq!(json(&reply)["repeated_key"], "x-agent-token", "{reply:?}");
    }

    // The exempt agents' batches are queued as any other.
    assert_eq!(queued(&server).await.len(), batches);
    let scrape = Scrape::of(&edr.http).await;
    scrape.check(&[EXEMPT_TOKENS[0], EXEMPT_TOKENS[1], "AGENT-1"]);
    assert_eq!(
        scrape.decisions("telemetry"),
        counts(&[
            ("exempt", 6),
            ("allowed", 2),
            ("denied", 1),
            ("repeated_key", 2)
        ])
    );
    drop(edr);

    let log = std::fs::read_to_string(log.path()).expect("the example's log");
    assert!(log.contains("exempt=2 x-agent-token values"), "{log}");
    assert!(log.contains("rate-limit decision"), "debug lines: {log}");
    for token in EXEMPT_TOKENS {
        assert!(!log.contains(token), "{token} in the log: {log}");
    }

    // Nor in a refusal, nor in the help.
    let (status, output) = run_to_exit(&[(
        "TELEMETRY_EXEMPT_TOKENS",
        &format!("{},,{}", EXEMPT_TOKENS[0], EXEMPT_TOKENS[1]),
    )]);
    assert!(!status.success(), "{status}: {output}");
    assert!(
        output.contains("TELEMETRY_EXEMPT_TOKENS: entry 2 of 3 is empty"),
        "{output}"
    );
    let help = Command::new(example_binary())
        .arg("--help")
        .env("TELEMETRY_EXEMPT_TOKENS", EXEMPT_TOKENS[0])
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("TELEMETRY_EXEMPT_TOKENS"), "{help}");
    for text in [output.as_str(), &*help] {
        for token in EXEMPT_TOKENS {
            assert!(!text.contains(token), "{token}: {text}");
        }
    }
}

/// The agent's one counter in database 1, and its count.
async fn telemetry_count(db1: &mut redis::aio::MultiplexedConnection) -> u64 {
    let counters = keys(db1, "rl:telemetry:*").await;
    assert_eq!(counters.len(), 1, "{counters:?}");
    let count: Option<u64> = redis::cmd("GET")
        .arg(&counters[0])
        .query_async(db1)
        .await
        .unwrap();
    count.unwrap_or(0)
}

#[tokio::test]
async fn telemetry_leases_slices_and_gives_them_back_at_shutdown() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let log = std::env::temp_dir().join(format!("edr-lease-{}.log", std::process::id()));
    let log = log.to_str().unwrap().to_owned();
    let _ = std::fs::remove_file(&log);
    let mut edr = Edr::start_logged(
        &[
            ("REDIS_URL", server.url()),
            ("TELEMETRY_RATE", "1000/m"),
            ("TELEMETRY_LEASE", "64"),
            ("TELEMETRY_INSTANCES", "2"),
            ("QUEUE_URL", "off"),
        ],
        &log,
    )
    .await;
    let mut db1 = server.connection().await;
    let before = evalsha_calls(&mut db1).await;
    let token = [("x-agent-token", &b"AGENT-1"[..])];
    for _ in 0..100 {
        let reply = edr.telemetry(&token).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    }
    // Slices of 1 until the agent has spent 4, then of 4, 16 and 64: 8
    // calls for 100 batches, and units taken ahead of the batches.
    assert_eq!(evalsha_calls(&mut db1).await - before, 8);
    assert_eq!(telemetry_count(&mut db1).await, 4 + 4 + 16 + 64 + 64);
    // SIGTERM: the server finishes its requests, then gives back what it
    // did not spend.
    let pid = i32::try_from(edr.child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let child = &mut edr.child;
    let mut exited = None;
    eventually(STARTUP, || {
        exited = exited.or_else(|| child.try_wait().unwrap());
        std::future::ready(exited.is_some())
    })
    .await;
    assert!(exited.unwrap().success(), "{exited:?}");
    assert_eq!(
        telemetry_count(&mut db1).await,
        100,
        "exactly the batches admitted"
    );
    let output = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(output.contains("leased slices given back"), "{output}");
    assert!(
        output.contains("lease=slices of up to 64, 2 instances"),
        "{output}"
    );
}

#[test]
fn bad_lease_settings_stop_startup_naming_the_variable() {
    for (env, var) in [
        (&[("TELEMETRY_LEASE", "0")][..], "TELEMETRY_LEASE"),
        (&[("TELEMETRY_LEASE", "lots")][..], "TELEMETRY_LEASE"),
        (&[("TELEMETRY_INSTANCES", "0")][..], "TELEMETRY_INSTANCES"),
        (
            &[("TELEMETRY_LEASE", "64"), ("TELEMETRY_ALGORITHM", "gcra")][..],
            "TELEMETRY_LEASE",
        ),
        // No Redis: in-process counters have nothing to lease.
        (&[("TELEMETRY_LEASE", "64")][..], "TELEMETRY_LEASE"),
    ] {
        let (status, output) = run_to_exit(env);
        assert!(!status.success(), "{env:?}: {status}: {output}");
        assert!(output.contains(&format!("{var}: ")), "{env:?}: {output}");
        assert!(!output.contains("panicked"), "{env:?}: {output}");
    }
    let (_, output) = run_to_exit(&[("TELEMETRY_LEASE", "64")]);
    assert!(output.contains("needs Redis"), "{output}");
    let (_, output) = run_to_exit(&[("TELEMETRY_LEASE", "64"), ("TELEMETRY_ALGORITHM", "gcra")]);
    assert!(output.contains("no window"), "{output}");
}
