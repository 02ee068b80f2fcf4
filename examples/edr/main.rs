//! The seed's EDR API, rate limited: agents post telemetry, people log in and
//! read a dashboard, and each endpoint has its own limit.
//!
//! | route                      | policy      | counted by                | store down                   |
//! | -------------------------- | ----------- | ------------------------- | ---------------------------- |
//! | `POST /api/v1/telemetry/`  | `telemetry` | `X-Agent-Token` (hashed)  | limits in-process (fallback) |
//! | `POST /api/v1/auth/login/` | `login`     | client IP                 | fail closed                  |
//! | `GET  /api/v1/dashboard/`  | `dashboard` | user (`Bearer <user-id>`) | fail open                    |
//! | `GET  /healthz`            | none        |                           |                              |
//!
//! (As configured by the environment; a policy file may change any of it
//! but the routes.) A telemetry request without `X-Agent-Token` is answered
//! `401`.
//!
//! A telemetry batch is a JSON array of event objects, `[{…}, {…}]`, of at
//! most 1 MiB (`413` above that); what an event holds is the workers'
//! business. The limiter charges a batch, before its body is read, as many
//! requests as its `X-Event-Count` header says (1 without it); a count that
//! is not a whole number is a `400`, one that the limit could never admit a
//! `413`. The handler then counts the events in the body, and a batch that
//! does not hold exactly the number it was charged is refused with `400
//! {"error":"bad batch",…}` and not queued: a batch of more than one event
//! must declare them, and an undeclared, under- or over-declared batch, an
//! empty one, or a body that is not a UTF-8 JSON array of objects is
//! refused. What was charged stays charged. (With a policy file, the count
//! the body must match is what the file's telemetry `cost` charges: its
//! header's number, or a fixed cost.)
//!
//! Telemetry is where floods come from, so its policy does two more things.
//! Denials are remembered in-process (the block cache, 100,000 agents at
//! most): once an agent is over its limit, its requests are answered `429`
//! without asking Redis until its `Retry-After` has passed, so a flood from
//! one agent costs Redis nothing. And while Redis is away, each instance
//! keeps limiting telemetry by itself, at the limits divided by
//! `TELEMETRY_FALLBACK_DIVISOR`, rather than letting every agent through.
//!
//! With Redis, counters live in database 1 and accepted telemetry is pushed
//! onto the list `edr:telemetry` in database 0 of the same server, where the
//! seed's Celery workers would pick it up:
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/1 cargo run --example edr
//! curl -i -X POST -H 'X-Agent-Token: AGENT-1' -H 'X-Event-Count: 3' \
//!     -H 'X-Batch-Id: 2f1c9a5e-0001' \
//!     -d '[{"event":1},{"event":2},{"event":3}]' localhost:3000/api/v1/telemetry/
//! curl -i -H 'Authorization: Bearer alice' localhost:3000/api/v1/dashboard/
//! ```
//!
//! Without `REDIS_URL`, counters are kept in this process and telemetry is
//! accepted but not queued: `cargo run --example edr`. A queued batch is
//! answered `202 {"status":"queued"}`; without a queue (no `REDIS_URL`, or
//! `QUEUE_URL=off`) it is `202 {"status":"accepted"}`, as nothing is queued.
//!
//! The hand-off is idempotent, so that agents can retry. An agent names each
//! batch with `X-Batch-Id` (1 to 128 visible ASCII characters, such as a
//! UUID; ids are per `X-Agent-Token`); without one, a batch is known by its
//! bytes. One Lua script pushes a batch and marks it for
//! `QUEUE_DEDUP_SECONDS`, or, if it is marked already, does neither. The
//! guarantee: each batch is queued at most once per window (counted from its
//! first push), and
//! - `202 {"status":"queued"}` means it is queued, by this attempt or an
//!   earlier one;
//! - `503 {"error":"queue unavailable","retry_after":1}`, with
//!   `Retry-After: 1`, after waiting at most 250 ms for Redis, means it may or
//!   may not be queued (a push that timed out can still run later): retry
//!   with the same `X-Batch-Id` and the same bytes within the window, and it
//!   is queued exactly once;
//! - `409 {"error":"batch id reused",…}` means the id was given to other bytes
//!   within the window; nothing is queued.
//!
//! Two byte-identical batches without an id from one agent within the
//! window are one batch: an agent that may send the same bytes twice (a
//! heartbeat) gives each batch an id, or a timestamp in its events. The
//! marks are ordinary keys with a TTL in the queue's database: a Redis that
//! forgets them (restarted without persistence, or evicting under a
//! `volatile-*` or `allkeys-*` `maxmemory-policy`) forgets the window too.
//!
//! Environment (empty counts as unset):
//! - `LISTEN_ADDR`: default `127.0.0.1:3000`.
//! - `REDIS_URL`: rate-limit counters, e.g. `redis://:password@host:6379/1`.
//! - `QUEUE_URL`: where telemetry goes; default database 0 of `REDIS_URL`;
//!   `off` accepts telemetry without queueing it (to measure the limiter alone).
//! - `QUEUE_DEDUP_SECONDS` (`600`): how long a queued batch's id is
//!   remembered, so that retries within it are not queued again; longer than
//!   agents keep retrying a batch. A whole number from 1 to 604800 (a week).
//! - `TELEMETRY_RATE` (`1000/m`): one rate or a comma-separated list, such as
//!   `10/s,1000/m`; a request must fit every one of them, each with its own
//!   window. `LOGIN_RATE` (`10/h`), `DASHBOARD_RATE` (`60/m`): one rate each.
//!   A rate is `N/unit` with unit `s`, `m`, `h` or `d`, optionally multiplied
//!   as in `100/10s`.
//! - `TELEMETRY_ALGORITHM`: how telemetry is counted: `fixed` (the default;
//!   also `fixed_window`), `sliding` (`sliding_window`) or `gcra`.
//! - `TELEMETRY_BURST`: with `gcra` only, how many requests an agent may send
//!   at once, for every telemetry rate (default: each rate's own limit); a
//!   whole number of at least 1.
//! - `TELEMETRY_FALLBACK_DIVISOR` (`1`): while Redis is down, each instance
//!   limits telemetry in-process at every telemetry limit divided by this;
//!   set it to the number of app instances, so that together they stay near
//!   the shared limit. A whole number of at least 1.
//! - `TELEMETRY_BLOCK_CACHE` (`on`): `off` asks Redis about every telemetry
//!   request, denied agents included (for benchmarks).
//! - `TRUSTED_PROXIES`: comma-separated CIDRs whose `X-Forwarded-For` is
//!   believed for the login limit; default none (the socket peer is the client).
//! - `POLICY_FILE`: a TOML file of `[[policies]]` tables named `telemetry`,
//!   `login` or `dashboard`, as in `examples/edr-policies.toml`:
//!   `POLICY_FILE=examples/edr-policies.toml cargo run --example edr`. A policy
//!   in the file replaces everything the variables above say about it
//!   (`TELEMETRY_*`, `LOGIN_RATE` and `TRUSTED_PROXIES`, `DASHBOARD_RATE`;
//!   a warning names those that are set and so ignored); a policy the file
//!   leaves out keeps its environment settings and defaults. Every field is
//!   the file's to choose, so a file that omits `on_missing_key` for
//!   telemetry answers a missing token with the library's default `400`
//!   rather than `401`. Other names, and a name given twice, are errors.
//! - `RATE_LIMIT` (`on`): `off` serves the same routes with no rate limit at
//!   all, and so no `401` for a missing agent token either: a baseline for
//!   benchmarks, never for production (the log warns). The settings above
//!   are still checked.
//! - `RUST_LOG`: default `info`.
//!
//! A bad setting stops the program at startup with a message naming the
//! variable (or `POLICY_FILE` and the file), even a setting that the policy
//! file overrides. The log says which store holds the counters and, for each
//! policy, its algorithm, its limits and where they came from.

mod batch;
mod config;
mod queue;
mod telemetry;

use std::{io::IsTerminal, net::SocketAddr, process::ExitCode};

use axum::{
    Extension, Json, Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::Response,
    routing::{MethodRouter, get, post},
};
use axum_redis_ratelimit::{
    Algorithm, MemoryStore, Policy, RateLimitLayer, RedisStore, UserId, store::Store,
};
use serde_json::json;
use tracing_subscriber::EnvFilter;

use crate::{
    batch::BatchCost,
    config::{Config, Policies, PolicySpec, QueueTarget, StartupError},
    queue::EventQueue,
    telemetry::{json_error, telemetry_handler},
};

/// Telemetry batches are small; anything larger is a broken or hostile agent.
const MAX_TELEMETRY_BYTES: usize = 1024 * 1024;
/// How many events a telemetry batch holds, and so how many requests it costs.
const EVENT_COUNT_HEADER: HeaderName = HeaderName::from_static("x-event-count");
/// How many denied agents each instance remembers.
const BLOCK_CACHE_KEYS: usize = 100_000;
/// Whom telemetry is counted by, and whose batch ids are whose.
const AGENT_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-agent-token");

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

/// Where the rate-limit counters live, if anywhere.
enum Counters {
    /// `RATE_LIMIT=off`: no limiter at all.
    Off,
    Memory,
    Redis(RedisStore),
}

async fn run() -> Result<(), StartupError> {
    let config = Config::from_env()?;
    // Counters first: they are what REDIS_URL is mainly for.
    let counters = match &config.redis {
        _ if !config.rate_limit => {
            tracing::warn!(
                "RATE_LIMIT=off: NO RATE LIMITS on any route, and no 401 for a missing agent \
                 token; a baseline for benchmarks, never for production"
            );
            Counters::Off
        }
        Some(redis) => {
            let store = RedisStore::connect(&redis.url)
                .await
                .map_err(|e| StartupError::new("REDIS_URL", format!("{}: {e}", redis.shown)))?;
            tracing::info!(store = %redis.shown, "rate-limit counters in Redis");
            Counters::Redis(store)
        }
        None => {
            tracing::warn!(
                "REDIS_URL is not set: using the embedded in-memory store; counters are per \
                 process (not shared between instances) and lost on restart"
            );
            Counters::Memory
        }
    };
    if config.rate_limit {
        for spec in config.policies.all() {
            let policy = &spec.policy;
            tracing::info!(
                policy = policy.name(),
                algorithm = %policy.algorithm_kind(),
                limits = %limits_text(policy),
                from = %spec.origin,
                "rate-limit policy"
            );
        }
    }
    let queue = match &config.queue {
        QueueTarget::Off => {
            tracing::info!(
                "no telemetry queue (QUEUE_URL=off, or no REDIS_URL): events are accepted, \
                 not queued"
            );
            None
        }
        QueueTarget::Redis { var, info } => {
            Some(EventQueue::connect(var, info, config.dedup_window).await?)
        }
    };
    // The policies were checked when read, so this cannot fail on them.
    let policies = &config.policies;
    let app = match counters {
        Counters::Off => app::<MemoryStore>(policies, None, queue),
        Counters::Memory => app(policies, Some(MemoryStore::new()), queue),
        Counters::Redis(store) => app(policies, Some(store), queue),
    }
    .map_err(|e| StartupError::new("policies", e))?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartupError::new("LISTEN_ADDR", format!("{}: {e}", config.listen)))?;
    tracing::info!(addr = %config.listen, "EDR API listening");
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

/// `10/s burst 20, 1000/m burst 20`; bursts only for GCRA, the one
/// algorithm that has them.
fn limits_text(policy: &Policy) -> String {
    let gcra = policy.algorithm_kind() == Algorithm::Gcra;
    let limits = policy.limits().map(|limit| {
        if gcra {
            format!("{} burst {}", limit.rate(), limit.burst_size())
        } else {
            limit.rate().to_string()
        }
    });
    limits.collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------- app

#[derive(Clone)]
struct AppState {
    queue: Option<EventQueue>,
    batch_cost: BatchCost,
}

/// The routes, each behind its policy's limiter counting in `counters`, or
/// behind none without them (`RATE_LIMIT=off`).
fn app<St: Store>(
    policies: &Policies,
    counters: Option<St>,
    queue: Option<EventQueue>,
) -> Result<Router, axum_redis_ratelimit::Error> {
    let limited = |route: MethodRouter<AppState>, spec: &PolicySpec| match &counters {
        Some(store) => {
            RateLimitLayer::new(spec.policy.clone(), store.clone()).map(|l| route.route_layer(l))
        }
        None => Ok(route),
    };

    // The same routes and layers whatever the policies' source: a policy
    // file changes how requests are counted, not the order of checks.
    Ok(Router::new()
        .route(
            "/api/v1/telemetry/",
            limited(post(telemetry_handler), &policies.telemetry)?
                .layer(DefaultBodyLimit::max(MAX_TELEMETRY_BYTES)),
        )
        .route(
            "/api/v1/auth/login/",
            limited(post(login_handler), &policies.login)?,
        )
        .route(
            "/api/v1/dashboard/",
            // Layers added later run first: auth must set the UserId the
            // limiter counts by.
            limited(get(dashboard_handler), &policies.dashboard)?
                .route_layer(middleware::from_fn(require_user)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(AppState {
            queue,
            batch_cost: policies.telemetry_cost.clone(),
        }))
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
