//! The seed's EDR API, rate limited: agents post telemetry, people log in and
//! read a dashboard, and each endpoint has its own limit.
//!
//! | route                       | policy      | counted by                | store down  |
//! | --------------------------- | ----------- | ------------------------- | ----------- |
//! | `POST /api/v1/telemetry/`   | `telemetry` | `X-Agent-Token` (hashed)  | fail open   |
//! | `POST /api/v1/auth/login/`  | `login`     | client IP                 | fail closed |
//! | `GET  /api/v1/dashboard/`   | `dashboard` | user (`Bearer <user-id>`) | fail open   |
//! | `GET  /healthz`             | none        |                           |             |
//!
//! With Redis, counters live in database 1 and accepted telemetry is pushed
//! onto the list `edr:telemetry` in database 0 of the same server, where the
//! seed's Celery workers would pick it up:
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/1 cargo run --example edr
//! curl -i -X POST -H 'X-Agent-Token: AGENT-1' -d '{"event":1}' localhost:3000/api/v1/telemetry/
//! curl -i -H 'Authorization: Bearer alice' localhost:3000/api/v1/dashboard/
//! ```
//!
//! Without `REDIS_URL`, counters are kept in this process and telemetry is
//! accepted but not queued: `cargo run --example edr`.
//!
//! Environment (empty counts as unset):
//! - `LISTEN_ADDR`: default `127.0.0.1:3000`.
//! - `REDIS_URL`: rate-limit counters, e.g. `redis://:password@host:6379/1`.
//! - `QUEUE_URL`: where telemetry goes; default database 0 of `REDIS_URL`;
//!   `off` accepts telemetry without queueing it (to measure the limiter alone).
//! - `TELEMETRY_RATE` (`1000/m`), `LOGIN_RATE` (`10/h`), `DASHBOARD_RATE`
//!   (`60/m`): `N/unit` with unit `s`, `m`, `h` or `d`, optionally multiplied
//!   as in `100/10s`.
//! - `TRUSTED_PROXIES`: comma-separated CIDRs whose `X-Forwarded-For` is
//!   believed for the login limit; default none (the socket peer is the client).
//! - `RUST_LOG`: default `info`.
//!
//! A bad setting stops the program at startup with a message naming the
//! variable.

use std::{env, fmt, io::IsTerminal, net::SocketAddr, process::ExitCode, time::Duration};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use axum_redis_ratelimit::{
    ClientIp, Key, MemoryStore, OnMissingKey, Policy, Rate, RateLimitLayer, RedisStore, UserId,
    store::Store,
};
use redis::{
    ConnectionInfo, IntoConnectionInfo,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use serde_json::json;
use tracing_subscriber::EnvFilter;

/// The list the seed's workers consume.
const QUEUE_KEY: &str = "edr:telemetry";
/// Telemetry batches are small; anything larger is a broken or hostile agent.
const MAX_TELEMETRY_BYTES: usize = 1024 * 1024;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Printed rather than logged, so that RUST_LOG=off cannot hide it.
            eprintln!("edr: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), StartupError> {
    let config = Config::from_env()?;
    // Counters first: they are what REDIS_URL is mainly for.
    let counters = match &config.redis {
        Some(redis) => {
            let store = RedisStore::connect(&redis.url)
                .await
                .map_err(|e| StartupError::new("REDIS_URL", format!("{}: {e}", redis.shown)))?;
            tracing::info!(store = %redis.shown, "rate-limit counters in Redis");
            Some(store)
        }
        None => {
            tracing::warn!(
                "REDIS_URL is not set: using the embedded in-memory store; counters are per \
                 process (not shared between instances) and lost on restart"
            );
            None
        }
    };
    let queue = match &config.queue {
        QueueTarget::Off => {
            tracing::info!(
                "no telemetry queue (QUEUE_URL=off, or no REDIS_URL): events are accepted, \
                 not queued"
            );
            None
        }
        QueueTarget::Redis { var, info } => Some(EventQueue::connect(var, info).await?),
    };
    let app = match counters {
        Some(store) => app(
            &config,
            Stores {
                counters: store,
                queue,
            },
        ),
        None => app(
            &config,
            Stores {
                counters: MemoryStore::new(),
                queue,
            },
        ),
    }
    .map_err(|e| StartupError::new("policies", e.to_string()))?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartupError::new("LISTEN_ADDR", format!("{}: {e}", config.listen)))?;
    tracing::info!(
        addr = %config.listen,
        telemetry = %config.telemetry_rate,
        login = %config.login_rate,
        dashboard = %config.dashboard_rate,
        "EDR API listening"
    );
    // The login limit counts client IPs, which the layer reads from ConnectInfo.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .map_err(|e| StartupError::new("server", e.to_string()))?;
    tracing::info!("shut down");
    Ok(())
}

// ---------------------------------------------------------------- config

/// Everything the environment configures, checked. No `Debug`: it holds
/// URLs with passwords.
struct Config {
    listen: SocketAddr,
    redis: Option<RedisTarget>,
    queue: QueueTarget,
    telemetry_rate: Rate,
    login_rate: Rate,
    dashboard_rate: Rate,
    client_ip: ClientIp,
}

struct RedisTarget {
    url: String,
    /// The URL without credentials, for logs and errors.
    shown: String,
}

enum QueueTarget {
    Off,
    /// `var` is the variable the target came from, for error messages.
    Redis {
        var: &'static str,
        info: Box<ConnectionInfo>,
    },
}

impl Config {
    fn from_env() -> Result<Self, StartupError> {
        let listen = match var("LISTEN_ADDR")? {
            None => SocketAddr::from(([127, 0, 0, 1], 3000)),
            Some(text) => text.parse().map_err(|_| {
                StartupError::new(
                    "LISTEN_ADDR",
                    format!("{text:?} is not an address such as 127.0.0.1:3000"),
                )
            })?,
        };
        let rate = |name: &'static str, default: &str| -> Result<Rate, StartupError> {
            let text = var(name)?.unwrap_or_else(|| default.to_owned());
            // The error quotes the value: `invalid rate "10/w": unknown unit…`.
            text.parse().map_err(|e| StartupError::new(name, e))
        };
        let telemetry_rate = rate("TELEMETRY_RATE", "1000/m")?;
        let login_rate = rate("LOGIN_RATE", "10/h")?;
        let dashboard_rate = rate("DASHBOARD_RATE", "60/m")?;

        let proxies = var("TRUSTED_PROXIES")?.unwrap_or_default();
        let client_ip = ClientIp::new()
            .trust_proxies(proxies.split(',').map(str::trim).filter(|s| !s.is_empty()))
            .map_err(|e| match e {
                axum_redis_ratelimit::Error::Config { reason, .. } => {
                    StartupError::new("TRUSTED_PROXIES", reason)
                }
                other => StartupError::new("TRUSTED_PROXIES", other),
            })?;

        let redis = match var("REDIS_URL")? {
            None => None,
            Some(url) => {
                connection_info("REDIS_URL", &url)?;
                Some(RedisTarget {
                    shown: redact(&url),
                    url,
                })
            }
        };
        let queue = match var("QUEUE_URL")? {
            Some(text) if text.eq_ignore_ascii_case("off") => QueueTarget::Off,
            Some(url) => QueueTarget::Redis {
                var: "QUEUE_URL",
                info: Box::new(connection_info("QUEUE_URL", &url)?),
            },
            // The seed's layout: counters in one database, Celery's queue in
            // database 0 of the same server.
            None => match &redis {
                Some(redis) => {
                    let info = connection_info("REDIS_URL", &redis.url)?;
                    let db0 = info.redis_settings().clone().set_db(0);
                    QueueTarget::Redis {
                        var: "REDIS_URL",
                        info: Box::new(info.set_redis_settings(db0)),
                    }
                }
                None => QueueTarget::Off,
            },
        };
        Ok(Self {
            listen,
            redis,
            queue,
            telemetry_rate,
            login_rate,
            dashboard_rate,
            client_ip,
        })
    }
}

/// The variable's value; unset and empty are both `None`.
fn var(name: &'static str) -> Result<Option<String>, StartupError> {
    match env::var(name) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value.trim().to_owned())),
        Err(env::VarError::NotPresent) => Ok(None),
        Err(env::VarError::NotUnicode(raw)) => Err(StartupError::new(
            name,
            format!("{:?} is not valid UTF-8", redact(&raw.to_string_lossy())),
        )),
    }
}

fn connection_info(name: &'static str, url: &str) -> Result<ConnectionInfo, StartupError> {
    url.into_connection_info().map_err(|e| {
        StartupError::new(
            name,
            format!(
                "{:?} is not a Redis URL such as redis://127.0.0.1:6379/1: {e}",
                redact(url)
            ),
        )
    })
}

/// `redis://user:secret@host/1` → `redis://***@host/1`. Over-redacts rather
/// than risk printing a password that contains an unescaped `/` or `@`.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => format!("{scheme}://***{}", &rest[at..]),
            None => url.to_owned(),
        },
        None if url.contains('@') => "***".to_owned(),
        None => url.to_owned(),
    }
}

/// Why the program did not start, naming the variable (or part) at fault.
#[derive(Debug)]
struct StartupError {
    what: &'static str,
    reason: String,
}

impl StartupError {
    fn new(what: &'static str, reason: impl fmt::Display) -> Self {
        Self {
            what,
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.reason)
    }
}

// ---------------------------------------------------------------- app

/// Where counters and accepted telemetry go.
struct Stores<St> {
    counters: St,
    queue: Option<EventQueue>,
}

#[derive(Clone)]
struct AppState {
    queue: Option<EventQueue>,
}

fn app<St: Store>(
    config: &Config,
    stores: Stores<St>,
) -> Result<Router, axum_redis_ratelimit::Error> {
    let telemetry = RateLimitLayer::new(
        Policy::new("telemetry")
            .rate(config.telemetry_rate)
            // Agent tokens are credentials: only their hash reaches Redis.
            .key(Key::header("X-Agent-Token").secret())
            .on_missing_key(OnMissingKey::Reject(StatusCode::UNAUTHORIZED))
            // Losing the limit for a while beats losing the agents' events.
            .fail_open(),
        stores.counters.clone(),
    )?;
    let login = RateLimitLayer::new(
        Policy::new("login")
            .rate(config.login_rate)
            .key(Key::client_ip_with(config.client_ip.clone()))
            // An unlimited login window invites password guessing.
            .fail_closed(),
        stores.counters.clone(),
    )?;
    let dashboard = RateLimitLayer::new(
        Policy::new("dashboard")
            .rate(config.dashboard_rate)
            .key(Key::user())
            .fail_open(),
        stores.counters,
    )?;

    Ok(Router::new()
        .route(
            "/api/v1/telemetry/",
            post(telemetry_handler)
                .route_layer(telemetry)
                .layer(DefaultBodyLimit::max(MAX_TELEMETRY_BYTES)),
        )
        .route(
            "/api/v1/auth/login/",
            post(login_handler).route_layer(login),
        )
        .route(
            "/api/v1/dashboard/",
            // Layers added later run first: auth must set the UserId the
            // limiter counts by.
            get(dashboard_handler)
                .route_layer(dashboard)
                .route_layer(middleware::from_fn(require_user)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(AppState {
            queue: stores.queue,
        }))
}

fn json_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

/// Runs only once the limiter has let the request through, so the body of a
/// refused request is never read.
async fn telemetry_handler(State(state): State<AppState>, body: Bytes) -> Response {
    if let Some(queue) = &state.queue
        && let Err(err) = queue.push(&body).await
    {
        tracing::error!(%err, bytes = body.len(), "telemetry not queued");
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "queue unavailable");
    }
    (StatusCode::ACCEPTED, Json(json!({ "status": "queued" }))).into_response()
}

/// A toy: the point is the limit in front of it.
async fn login_handler() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn dashboard_handler(Extension(UserId(user)): Extension<UserId>) -> Json<serde_json::Value> {
    Json(json!({ "user": &*user }))
}

/// Toy authentication: `Authorization: Bearer <user-id>` is taken at its word.
async fn require_user(mut request: Request, next: Next) -> Response {
    match bearer_user(request.headers().get(header::AUTHORIZATION)) {
        Some(user) => {
            request.extensions_mut().insert(UserId::from(user));
            next.run(request).await
        }
        None => {
            let mut response = json_error(StatusCode::UNAUTHORIZED, "unauthorized");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

fn bearer_user(header: Option<&HeaderValue>) -> Option<String> {
    let value = header?.to_str().ok()?;
    let (scheme, user) = value.split_once(' ')?;
    let user = user.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !user.is_empty()).then(|| user.to_owned())
}

// ---------------------------------------------------------------- queue

/// The hand-off to the workers: one multiplexed connection shared by all
/// requests, reconnecting by itself.
#[derive(Clone)]
struct EventQueue {
    connection: ConnectionManager,
}

impl EventQueue {
    async fn connect(var: &'static str, info: &ConnectionInfo) -> Result<Self, StartupError> {
        let shown = format!("{}, db {}", info.addr(), info.redis_settings().db());
        let client = redis::Client::open(info.clone()).map_err(|e| StartupError::new(var, e))?;
        // Bounded, so that a dead queue turns into a quick 503 rather than
        // agents waiting on a hung request.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| StartupError::new(var, format!("telemetry queue at {shown}: {e}")))?;
        tracing::info!(queue = %shown, list = QUEUE_KEY, "telemetry queued in Redis");
        Ok(Self { connection })
    }

    async fn push(&self, event: &[u8]) -> redis::RedisResult<()> {
        let mut connection = self.connection.clone();
        redis::cmd("RPUSH")
            .arg(QUEUE_KEY)
            .arg(event)
            .query_async::<i64>(&mut connection)
            .await
            .map(drop)
    }
}

// ---------------------------------------------------------------- shutdown

/// Ctrl-C, or SIGTERM from a process manager.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
