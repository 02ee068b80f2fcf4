//! Test harness: real `redis-server` processes on free ports, which tests can
//! kill, pause (SIGSTOP) and restart; an HTTP server on 127.0.0.1:0 with
//! `ConnectInfo`; a small client that reaches an app over that socket or
//! in-process; the policy, app and Redis look-ups most tests share.
//!
//! With `REDIS_URL` set, tests use that server instead (and skip the tests
//! that need to kill or pause it). Every test uses its own key prefix, so
//! nothing is flushed and tests never see each other's counters.
//!
//! The benches include this module too (through `benches/common`).
// Each test binary uses a part of the harness.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    future::Future,
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    process::{Child, Command},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use axum::{Router, body::Body, routing::post};
use axum_redis_ratelimit::{
    Algorithm, Cost, Key, Limit, Policy, RateLimitLayer, RedisStore,
    layer::Stats,
    store::{Charge, Store},
};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use redis::aio::MultiplexedConnection;
use tower::ServiceExt;

/// Production topologies: Redis Cluster, Sentinel, TLS, ACL users, Valkey.
pub mod topology;

/// A Redis server for tests: the user's `REDIS_URL`, or a server process
/// (`redis-server`, or `valkey-server` through
/// [`topology::start_valkey`]) child of this test binary.
pub struct RedisServer {
    url: String,
    /// The process and its directory, unless `REDIS_URL` names the server.
    process: Option<(topology::Node, topology::TempDir)>,
}

impl RedisServer {
    /// The server shared by all tests of this binary.
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var("REDIS_URL") {
            Ok(url) => RedisServer { url, process: None },
            Err(_) => RedisServer::start(),
        })
    }

    /// A server of this test's own, for tests that kill or pause it; `None`
    /// (and the test is skipped) when `REDIS_URL` points elsewhere.
    pub fn private() -> Option<RedisServer> {
        if std::env::var_os("REDIS_URL").is_some() {
            eprintln!("skipped: REDIS_URL is set, and this test must kill or pause Redis");
            return None;
        }
        Some(RedisServer::start())
    }

    fn start() -> RedisServer {
        Self::start_binary(std::path::Path::new("redis-server"), "redis")
    }

    /// `binary` (a `redis-server` or a compatible server) on a free port,
    /// answering.
    pub fn start_binary(binary: &std::path::Path, kind: &str) -> RedisServer {
        let dir = topology::TempDir::new(kind);
        let port = topology::free_ports(1)[0];
        let args = topology::data_args(port, dir.path());
        let node = topology::Node::start(binary, port, args, dir.path(), topology::Probe::Ping);
        RedisServer {
            url: format!("redis://127.0.0.1:{port}/1"),
            process: Some((node, dir)),
        }
    }

    /// `redis://127.0.0.1:<port>/1`: database 1, as the seed's rate limiter.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process of a server of this test's own.
    fn node(&self) -> &topology::Node {
        let process = self.process.as_ref();
        &process.expect("a server this test started").0
    }

    pub fn port(&self) -> u16 {
        self.node().port()
    }

    /// Starts the process (again) on the same port and waits until it answers.
    pub fn restart(&self) {
        self.node().restart();
    }

    /// Kills the process (SIGKILL) and waits for it to be gone.
    pub fn kill(&self) {
        self.node().kill();
    }

    /// SIGSTOP: the socket stays open, nothing answers.
    pub fn pause(&self) {
        self.node().pause();
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.node().resume();
    }

    /// A plain connection for inspecting what the limiter wrote.
    pub async fn connection(&self) -> MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// Spawns `command` so that the child is killed (SIGKILL) when this binary
/// exits, even if what owns the child is never dropped (the shared server
/// lives in a static, and statics are not dropped) or the binary is killed.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child exits,
/// not when the whole process does (`man 2 prctl`: the "parent" is "the
/// thread that created this process"). libtest runs a test on a thread that
/// ends with the test, so a child spawned there, such as the `redis-server`
/// later tests share, would be killed with the first test that used it.
/// Every child is therefore spawned from one thread that lives as long as
/// the process.
pub fn spawn_reaped(command: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut command, reply) in rx {
                unsafe {
                    command.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let _ = reply.send(command.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner.lock().unwrap().send((command, tx)).unwrap();
    rx.recv().unwrap()
}

/// A port nothing listens on right now, never handed out before in this
/// process, and below the kernel's ephemeral range: a port taken from that
/// range (`bind` to port 0) is free only until something else gets it, such
/// as the source port of any outgoing connection, or the same port handed to
/// another test starting servers at the same time; the server meant for it
/// then fails to start or, worse, another test's server answers on it.
pub fn free_port() -> u16 {
    const PORTS: std::ops::Range<u32> = 20_000..32_000;
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        // Test binaries run one after another; each starts elsewhere.
        AtomicU64::new(u64::from(std::process::id()) * 613)
    });
    let span = u64::from(PORTS.end - PORTS.start);
    for _ in 0..span {
        let offset = next.fetch_add(1, Ordering::Relaxed) % span;
        let port = u16::try_from(u64::from(PORTS.start) + offset).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORTS:?}");
}

/// Calls per command since the server started or the last
/// [`reset_command_stats`] (`INFO commandstats`); Redis counts the commands a
/// script runs too.
pub async fn command_calls(conn: &mut MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// The `EVALSHA` calls among [`command_calls`]: one per decision Redis made.
pub async fn evalsha_calls(conn: &mut MultiplexedConnection) -> u64 {
    command_calls(conn)
        .await
        .get("evalsha")
        .copied()
        .unwrap_or(0)
}

/// `CONFIG RESETSTAT`: [`command_calls`] count from zero again.
pub async fn reset_command_stats(conn: &mut MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .unwrap();
}

/// The keys of the shared server under `prefix`, sorted.
pub async fn keys_with_prefix(prefix: &str) -> Vec<String> {
    let mut conn = RedisServer::shared().connection().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    keys
}

/// The only key under `prefix`, checked to hold one hash tag.
pub async fn only_key(prefix: &str) -> String {
    let keys = keys_with_prefix(prefix).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = keys.into_iter().next().unwrap();
    assert_eq!(key.matches('{').count(), 1, "{key}");
    assert_eq!(key.matches('}').count(), 1, "{key}");
    key
}

/// `PTTL` of `key` on the shared server: -1 without a TTL, -2 if absent.
pub async fn pttl(key: &str) -> i64 {
    let mut conn = RedisServer::shared().connection().await;
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Removes the TTL of `key` on the shared server, as a restore or an
/// operator's `PERSIST` would; fails if it had none.
pub async fn persist(key: &str) {
    let mut conn = RedisServer::shared().connection().await;
    let persisted: bool = redis::cmd("PERSIST")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(persisted, "{key} had no TTL to remove");
}

/// `HGET key field`: a counter's count (`c`) or window end (`e`).
pub async fn hget<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    key: &str,
    field: &str,
) -> T {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(conn)
        .await
        .unwrap()
}

/// A Redis store on the shared server.
pub async fn redis() -> RedisStore {
    RedisStore::connect(RedisServer::shared().url())
        .await
        .unwrap()
}

/// A check of cost 1 on the store's own clock.
pub fn check<'a>(key: &'a str, limits: &'a [Limit], algorithm: Algorithm) -> Charge<'a> {
    Charge {
        key,
        limits,
        algorithm,
        cost: 1,
        now_us: None,
    }
}

/// The Redis key of the first limit of `charge`, as the store names it.
pub fn counter_key(charge: &Charge<'_>) -> String {
    let mut key = String::new();
    charge.counter_key(&charge.limits[0], &mut key);
    key
}

/// A current-thread runtime, for async code driven from a plain `fn`.
/// A non-zero number for burst sizes and rate limits.
pub fn nz(n: u64) -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(n).expect("test numbers are above zero")
}

pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A key prefix no other test uses, so tests never share counters.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "rltest:{}:{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The header most test policies key on.
pub const TOKEN: &str = "x-agent-token";

/// A policy named `telemetry` of `rate` per agent token, under a prefix of
/// this test's own.
pub fn telemetry(rate: &str) -> Policy {
    Policy::new("telemetry")
        .rate(rate.parse().unwrap())
        .key(Key::header(TOKEN))
        .prefix(unique_prefix())
}

/// The header a batch's cost is read from.
pub const EVENT_COUNT: &str = "x-event-count";

/// [`telemetry`] counted `algorithm`'s way, a request costing its
/// `X-Event-Count`.
pub fn batches(algorithm: Algorithm, rate: &str) -> Policy {
    telemetry(rate)
        .algorithm(algorithm)
        .cost(Cost::header(EVENT_COUNT))
}

/// `POST /t` ("queued") and `GET /t` ("read") behind a layer of `policy`
/// over `store`, and the layer's statistics.
pub fn app_and_stats(policy: Policy, store: impl Store) -> (Router, Arc<Stats>) {
    let layer = RateLimitLayer::new(policy, store).unwrap();
    let stats = layer.stats();
    let app = Router::new()
        .route("/t", post(|| async { "queued" }).get(|| async { "read" }))
        .layer(layer);
    (app, stats)
}

/// The app of [`app_and_stats`].
pub fn app(policy: Policy, store: impl Store) -> Router {
    app_and_stats(policy, store).0
}

/// A client of [`app`] in-process, for tests that need no socket.
pub fn in_process(policy: Policy, store: impl Store) -> HttpClient {
    HttpClient::in_process(app(policy, store))
}

/// A client of [`app`] served over a socket.
pub async fn client(policy: Policy, store: impl Store) -> HttpClient {
    HttpClient::new(&serve(app(policy, store)).await)
}

/// A client of [`app_and_stats`] served over a socket, and the statistics.
pub async fn client_and_stats(policy: Policy, store: impl Store) -> (HttpClient, Arc<Stats>) {
    let (app, stats) = app_and_stats(policy, store);
    (HttpClient::new(&serve(app).await), stats)
}

/// Serves `app` on 127.0.0.1:0 with `ConnectInfo`; returns the base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    format!("http://{addr}")
}

/// A response as a test looks at it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The first value of header `name`, which must be text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// A client of an app: HTTP/1 over a socket, or in-process, where the
/// request goes to the `Router` with `oneshot` (no `ConnectInfo`, no HTTP
/// parsing: tests of the client address or of raw bytes use a socket).
#[derive(Clone)]
pub struct HttpClient(Target);

#[derive(Clone)]
enum Target {
    Socket {
        client: Client<HttpConnector, Body>,
        base: String,
    },
    InProcess(Router),
}

impl HttpClient {
    /// A client of the server at `base` (`http://host:port`).
    pub fn new(base: &str) -> Self {
        Self(Target::Socket {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.to_owned(),
        })
    }

    /// A client that calls `app` in-process.
    pub fn in_process(app: Router) -> Self {
        Self(Target::InProcess(app))
    }

    /// Sends a request; headers are raw bytes so tests can send anything
    /// HTTP allows, non-UTF-8 included. Hangs are turned into failures.
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        self.send_body(method, path, headers, Vec::new()).await
    }

    /// The same, with a body.
    pub async fn send_body(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &[u8])],
        body: impl Into<Body>,
    ) -> Reply {
        let uri = match &self.0 {
            Target::Socket { base, .. } => format!("{base}{path}"),
            Target::InProcess(_) => path.to_owned(),
        };
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.into()).unwrap();
        let limit = Duration::from_secs(10);
        let response = match &self.0 {
            Target::Socket { client, .. } => within(limit, client.request(request))
                .await
                .expect("request failed")
                .map(Body::new),
            Target::InProcess(app) => within(limit, app.clone().oneshot(request))
                .await
                .unwrap_or_else(|never| match never {}),
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// A `GET` with no body.
    pub async fn get(&self, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        self.send(Method::GET, path, headers).await
    }

    /// A `POST` with no body.
    pub async fn post(&self, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        self.send(Method::POST, path, headers).await
    }
}

/// Awaits `future`, failing the test if it hangs: a guard against a stuck
/// test, never a timing assertion.
pub async fn within<F: Future>(limit: Duration, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("no answer within {limit:?}"))
}

/// Polls `condition` every 20 ms until it holds, failing after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(limit, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
