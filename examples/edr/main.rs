//! The seed's EDR API, rate limited: agents post telemetry, people log in and
//! read a dashboard, and each endpoint has its own limit.
//!
//! | route                      | policy      | counted by                | store down                   |
//! | -------------------------- | ----------- | ------------------------- | ---------------------------- |
//! | `POST /api/v1/telemetry/`  | `telemetry` | `X-Agent-Token` (hashed)  | limits in-process (fallback) |
//! | `POST /api/v1/auth/login/` | `login`     | client IP                 | fail closed                  |
//! | `GET  /api/v1/dashboard/`  | `dashboard` | user (`Bearer <user-id>`) | fail open                    |
//! | `GET  /healthz`            | none        |                           |                              |
//! | `GET  /metrics`            | none        |                           |                              |
//!
//! (As configured by the environment; a policy file may change any of it
//! but the routes.) A telemetry request without `X-Agent-Token` is answered
//! `401`.
//!
//! `GET /metrics` serves what the limiter counts, in the Prometheus text
//! format (`prometheus.rs`): on the API's address, or alone on
//! `METRICS_ADDR`. Each policy's mode is `TELEMETRY_MODE`, `LOGIN_MODE` or
//! `DASHBOARD_MODE`: `block` (the default), `annotate` or `shadow`, which
//! blocks nothing and counts the would-be denials, to try a limit before it
//! blocks. The agent tokens of `TELEMETRY_EXEMPT_TOKENS` (an internal health
//! agent, say) skip the telemetry limit; their batches are queued as any.
//!
//! Telemetry is where floods come from, so its policy does two more things.
//! Denials are remembered in-process (the block cache, 100,000 agents at
//! most): once an agent is over its limit, its requests are answered `429`
//! without asking Redis until its `Retry-After` has passed, so a flood from
//! one agent costs Redis nothing. And while Redis is away, each instance
//! keeps limiting telemetry by itself, at the limits divided by
//! `TELEMETRY_FALLBACK_DIVISOR`, rather than letting every agent through.
//! With `TELEMETRY_LEASE=64` (and `TELEMETRY_INSTANCES`, the instances
//! sharing Redis), each instance takes slices of up to 64 events of an
//! agent's quota from Redis in one call and admits from them in-process,
//! so a busy agent costs Redis about one call per 64 batches; what an
//! instance has not spent goes back when idle and at shutdown (SIGTERM or
//! Ctrl-C), after the requests in flight are finished.
//!
//! The routes and the policies are below; the rest is in the modules:
//! `config.rs` (the environment: every variable, its default and its
//! check, and the Redis topology they name), `policies.rs` (the policies
//! checked, and `POLICY_FILE`, which may replace any of them but not the
//! routes), `telemetry.rs` (the telemetry handler), `batch.rs` (a batch
//! must hold the events it was charged for), `queue.rs` (the idempotent
//! hand-off to Redis), `celery.rs` (the Celery task messages it pushes).
//!
//! With Redis, counters live in database 1 and each accepted batch is
//! queued in database 0 of the same server as a Celery task,
//! `edr.tasks.process_telemetry(batch)` on the queue `celery`, which the
//! seed's Python Celery workers (`CELERY_BROKER_URL =
//! 'redis://localhost:6379/0'`) run as it is (`QUEUE_FORMAT=raw` pushes the
//! body as posted onto the list `edr:telemetry` instead):
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/1 cargo run --example edr
//! curl -i -X POST -H 'X-Agent-Token: AGENT-1' -H 'X-Event-Count: 3' \
//!     -H 'X-Batch-Id: 2f1c9a5e-0001' \
//!     -d '[{"event":1},{"event":2},{"event":3}]' localhost:3000/api/v1/telemetry/
//! curl -i -H 'Authorization: Bearer alice' localhost:3000/api/v1/dashboard/
//! cargo run --example edr -- --help    # every variable and its default
//! ```
//!
//! Instead of `REDIS_URL`, `REDIS_CLUSTER_NODES` names a Redis Cluster (its
//! database 0 holds both; the queue's batch marks carry the list's hash
//! tag, see `queue.rs`), and `REDIS_SENTINELS` with `REDIS_MASTER_NAME` the
//! master Sentinel names (database 1 for counters, 0 for the queue, as on
//! one server). `REDIS_TLS_CA`, `REDIS_TLS_CERT` and `REDIS_TLS_KEY` go with
//! `rediss://` URLs, in a build with `--features tls`:
//!
//! ```sh
//! REDIS_CLUSTER_NODES=redis://10.0.0.1:6379,redis://10.0.0.2:6379 cargo run --example edr
//! REDIS_SENTINELS=redis://10.0.0.1:26379,redis://10.0.0.2:26379 REDIS_MASTER_NAME=mymaster \
//!     cargo run --example edr
//! REDIS_URL=rediss://redis.internal:6380/1 REDIS_TLS_CA=/etc/redis/ca.pem \
//!     cargo run --features tls --example edr
//! ```
//!
//! Without any of them, counters are kept in this process and telemetry is
//! accepted but not queued: `cargo run --example edr`. A queued batch is
//! answered `202 {"status":"queued"}`; without a queue (no Redis, or
//! `QUEUE_URL=off`) it is `202 {"status":"accepted"}`, as nothing is queued.
//!
//! A bad setting stops the program at startup with a message naming the
//! variable (or `POLICY_FILE` and the file), even a setting that the policy
//! file overrides. The log says which store holds the counters and, for each
//! policy, its algorithm, its limits and where they came from.

mod batch;
mod celery;
mod config;
mod policies;
mod prometheus;
mod queue;
mod telemetry;

use std::{io::IsTerminal, net::SocketAddr, process::ExitCode, sync::Arc};

use axum::{
    Extension, Json, Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::Response,
    routing::{MethodRouter, get, post},
};
use axum_redis_ratelimit::{
    Algorithm, Cost, FailMode, Key, MemoryStore, OnMissingKey, Policy, RateLimitLayer, RedisStore,
    UserId, lease::LeaseHandle, store::Store,
};
use serde_json::json;
use tracing_subscriber::EnvFilter;

use crate::{
    batch::BatchCost,
    config::{Env, Redis, StartupError},
    policies::{Policies, PolicySpec},
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

// ---------------------------------------------------------------- policies

/// Per agent, a batch costing its `X-Event-Count`; `401` without a token.
fn telemetry_policy(env: &Env) -> Policy {
    let mut policy = Policy::new("telemetry")
        .algorithm(env.telemetry_algorithm)
        // Agent tokens are credentials: only their hash reaches Redis.
        .key(Key::header(AGENT_TOKEN_HEADER.as_str()).secret())
        .cost(Cost::header(EVENT_COUNT_HEADER.as_str()))
        .on_missing_key(OnMissingKey::Reject(StatusCode::UNAUTHORIZED))
        // Losing the agents' events to a Redis outage is worse than
        // limiting each instance alone for a while; letting every agent
        // through unlimited would be worse still.
        .on_store_error(FailMode::Fallback)
        .fallback_divisor(env.telemetry_fallback_divisor)
        .mode(env.telemetry_mode);
    for &rate in &env.telemetry_rate.0 {
        policy = policy.rate(rate);
    }
    if let Some(burst) = env.telemetry_burst {
        policy = policy.burst(burst);
    }
    // A flooding agent's requests are answered here, not by Redis.
    if env.telemetry_block_cache {
        policy = policy.block_cache(BLOCK_CACHE_KEYS);
    }
    // A busy agent's requests are mostly decided here too, from slices of
    // its quota taken from Redis.
    if let Some(slice) = env.telemetry_lease() {
        policy = policy
            .lease(slice.get())
            .lease_instances(env.telemetry_instances.get());
    }
    // Compared in constant time, with the header sent exactly once; never
    // logged or counted by value.
    if let Some(tokens) = &env.telemetry_exempt_tokens {
        policy = policy.exempt_header(AGENT_TOKEN_HEADER.as_str(), tokens.0.iter().cloned());
    }
    policy
}

/// Per client IP (behind `TRUSTED_PROXIES`, if any).
fn login_policy(env: &Env) -> Policy {
    Policy::new("login")
        .rate(env.login_rate)
        .key(Key::client_ip_with(env.trusted_proxies.clone()))
        // An unlimited login window invites password guessing.
        .fail_closed()
        .mode(env.login_mode)
}

/// Per user: the auth middleware in front of the limiter sets the user.
fn dashboard_policy(env: &Env) -> Policy {
    Policy::new("dashboard")
        .rate(env.dashboard_rate)
        .key(Key::user())
        .fail_open()
        .mode(env.dashboard_mode)
}

// ---------------------------------------------------------------- routes

/// What the handlers share, behind an `Arc`: axum clones the state for every
/// request.
struct AppState {
    queue: Option<EventQueue>,
    batch_cost: BatchCost,
}

/// The routes, each behind its policy's limiter counting in `counters`, or
/// behind none without them (`RATE_LIMIT=off`); and the handles that give
/// the limiters' leased slices back at shutdown.
fn app<St: Store>(
    policies: &Policies,
    counters: Option<St>,
    queue: Option<EventQueue>,
) -> Result<(Router, Vec<LeaseHandle>), axum_redis_ratelimit::Error> {
    let leases = std::cell::RefCell::new(Vec::new());
    let limited = |route: MethodRouter<Arc<AppState>>, spec: &PolicySpec| match &counters {
        Some(store) => RateLimitLayer::new(spec.policy.clone(), store.clone()).map(|layer| {
            if spec.policy.settings().lease.is_some() {
                leases.borrow_mut().push(layer.lease_handle());
            }
            route.route_layer(layer)
        }),
        None => Ok(route),
    };

    // The same routes and layers whatever the policies' source: a policy
    // file changes how requests are counted, not the order of checks.
    let router = Router::new()
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
        .with_state(Arc::new(AppState {
            queue,
            batch_cost: policies.telemetry_cost.clone(),
        }));
    Ok((router, leases.into_inner()))
}

// ---------------------------------------------------------------- startup

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
    let env = Env::load()?;
    // Whatever fails, no password the variables hold is printed.
    serve(&env).await.map_err(|err| env.scrub(err))
}

async fn serve(env: &Env) -> Result<(), StartupError> {
    if !env.metrics && env.metrics_addr.is_some() {
        return Err(StartupError::new(
            "METRICS_ADDR",
            "is set while METRICS=off: leave it unset, or turn the metrics on",
        ));
    }
    if env.metrics_addr == Some(env.listen_addr) {
        return Err(StartupError::new(
            "METRICS_ADDR",
            format!(
                "{} is LISTEN_ADDR too: leave METRICS_ADDR unset to serve /metrics on the \
                 API's address",
                env.listen_addr
            ),
        ));
    }
    // Before any layer is built: each registers its series with the
    // recorder installed at the time.
    let metrics = env.metrics.then(prometheus::install).transpose()?;
    let policies = Policies::new(
        env,
        [
            telemetry_policy(env),
            login_policy(env),
            dashboard_policy(env),
        ],
    )?;
    let redis = env.redis()?;
    let queue = env.queue(redis.as_ref())?;
    // Checked with or without a queue, as every setting is.
    let (format, mark_prefix) = env.hand_off(queue.as_ref().is_some_and(|queue| queue.cluster))?;
    // Counters first: they are what Redis is mainly for.
    let counters = counters(env, redis.as_ref()).await?;
    if env.rate_limit {
        for spec in policies.all() {
            let policy = &spec.policy;
            tracing::info!(
                policy = policy.name(),
                algorithm = %policy.settings().algorithm,
                limits = %limits_text(policy),
                from = %spec.origin,
                mode = %format!("{:?}", policy.settings().mode).to_lowercase(),
                exempt = %exempt_text(policy),
                lease = %lease_text(policy),
                "rate-limit policy"
            );
        }
    }
    let queue = match queue {
        None => {
            tracing::info!(
                "no telemetry queue (QUEUE_URL=off, or no Redis): events are accepted, not \
                 queued"
            );
            None
        }
        Some(queue) => Some(
            EventQueue::connect(&queue, env.queue_dedup_seconds, format, mark_prefix)
                .await
                .map_err(|e| {
                    let shown = format!("telemetry queue at {}", queue.shown);
                    env.redis_error(queue.var, &shown, e)
                })?,
        ),
    };
    if matches!(counters, Counters::Memory) {
        // Lease mode takes slices of a shared store's quota; a store in
        // this process has none to give.
        for spec in policies.all() {
            if spec.policy.settings().lease.is_some() {
                let (var, value) = match spec.origin.as_str() {
                    "environment" => ("TELEMETRY_LEASE", "leases telemetry".to_owned()),
                    file => (
                        "POLICY_FILE",
                        format!("{file:?} leases {}", spec.policy.name()),
                    ),
                };
                return Err(StartupError::new(
                    var,
                    format!(
                        "{value}, which needs Redis (REDIS_URL, REDIS_CLUSTER_NODES or \
                         REDIS_SENTINELS): in-process counters have no shared quota to lease"
                    ),
                ));
            }
        }
    }
    // The policies were checked when read, so this cannot fail on them.
    let policies = &policies;
    let (app, leases) = match counters {
        Counters::Off => app::<MemoryStore>(policies, None, queue),
        Counters::Memory => app(policies, Some(MemoryStore::new()), queue),
        Counters::Redis(store) => app(policies, Some(store), queue),
    }
    .map_err(|e| StartupError::new("policies", e))?;

    // Bound before serving, so that a taken address stops startup.
    let listener = tokio::net::TcpListener::bind(env.listen_addr)
        .await
        .map_err(|e| StartupError::new("LISTEN_ADDR", format!("{}: {e}", env.listen_addr)))?;
    let (app, metrics_listener) = match (metrics, env.metrics_addr) {
        (None, _) => (app, None),
        (Some(metrics), None) => (app.merge(prometheus::routes(metrics)), None),
        (Some(metrics), Some(addr)) => {
            let listener = (tokio::net::TcpListener::bind(addr).await)
                .map_err(|e| StartupError::new("METRICS_ADDR", format!("{addr}: {e}")))?;
            (app, Some((listener, prometheus::routes(metrics))))
        }
    };
    tracing::info!(addr = %env.listen_addr, "EDR API listening");
    if env.metrics {
        let metrics_at = env.metrics_addr.unwrap_or(env.listen_addr);
        tracing::info!(url = %format!("http://{metrics_at}/metrics"), "Prometheus metrics");
    }

    // One signal stops both servers, each finishing its requests in flight.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let on_stop = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    // The login limit counts client IPs, which the layer reads from ConnectInfo.
    let api = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(on_stop(stopped.clone()));
    let api = async { (api.await).map_err(|e| StartupError::new("server", e.to_string())) };
    let metrics = async {
        let Some((listener, routes)) = metrics_listener else {
            return Ok(());
        };
        (axum::serve(listener, routes).with_graceful_shutdown(on_stop(stopped)))
            .await
            .map_err(|e| StartupError::new("METRICS_ADDR", e.to_string()))
    };
    tokio::try_join!(api, metrics)?;
    // The requests are finished: what the instance leased and did not
    // spend goes back to Redis, into the windows it was granted in.
    for lease in leases {
        let released = lease.release().await;
        tracing::info!(
            slices = released.slices,
            units = released.units,
            credited = released.credited,
            failed = released.failed,
            "leased slices given back"
        );
    }
    tracing::info!("shut down");
    Ok(())
}

/// Where the counters go: nowhere (`RATE_LIMIT=off`, though a Redis
/// configuration is still checked), the Redis the variables name, checked
/// to answer, or this process.
async fn counters(env: &Env, redis: Option<&Redis>) -> Result<Counters, StartupError> {
    let fail = |redis: &Redis, err| env.redis_error(redis.var, &redis.shown, err);
    if !env.rate_limit {
        tracing::warn!(
            "RATE_LIMIT=off: NO RATE LIMITS on any route, and no 401 for a missing agent \
             token; a baseline for benchmarks, never for production"
        );
        if let Some(redis) = redis {
            // Connects to nothing: checks the configuration, TLS files included.
            RedisStore::connect_lazy(redis.counters.clone()).map_err(|e| fail(redis, e))?;
        }
        return Ok(Counters::Off);
    }
    let Some(redis) = redis else {
        tracing::warn!(
            "no Redis is set (REDIS_URL, REDIS_CLUSTER_NODES or REDIS_SENTINELS): using the \
             embedded in-memory store; counters are per process (not shared between \
             instances) and lost on restart"
        );
        return Ok(Counters::Memory);
    };
    let store = (RedisStore::connect(redis.counters.clone()).await).map_err(|e| fail(redis, e))?;
    tracing::info!(store = %redis.shown, "rate-limit counters in Redis");
    Ok(Counters::Redis(store))
}

/// What the policy lets through uncounted, without a secret: `none`, or
/// networks and how many values of which header.
fn exempt_text(policy: &Policy) -> String {
    let exempt = &policy.settings().exempt;
    let mut parts: Vec<String> = Vec::new();
    if !exempt.ips.is_empty() {
        parts.push(format!("from {}", exempt.ips.join(" ")));
    }
    for header in &exempt.headers {
        let n = header.values.len();
        let values = if n == 1 { "value" } else { "values" };
        parts.push(format!("{n} {} {values}", header.name));
    }
    if parts.is_empty() {
        return "none".to_owned();
    }
    parts.join(", ")
}

/// `off`, or the lease's largest slice and instances: `slices of up to 64, 4 instances`.
fn lease_text(policy: &Policy) -> String {
    match policy.settings().lease {
        None => "off".to_owned(),
        Some(lease) => format!(
            "slices of up to {}, {} instance{}",
            lease.max_slice,
            lease.instances,
            if lease.instances == 1 { "" } else { "s" }
        ),
    }
}

/// `10/s burst 20, 1000/m burst 20`; bursts only for GCRA, the one
/// algorithm that has them.
fn limits_text(policy: &Policy) -> String {
    let gcra = policy.settings().algorithm == Algorithm::Gcra;
    let limits = policy.limits().map(|limit| {
        if gcra {
            format!("{} burst {}", limit.rate(), limit.burst())
        } else {
            limit.rate().to_string()
        }
    });
    limits.collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------- handlers

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
