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

use std::{
    env,
    fmt::{self, Write as _},
    io::IsTerminal,
    net::SocketAddr,
    process::ExitCode,
    sync::LazyLock,
    time::Duration,
};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};
use axum_redis_ratelimit::{
    Algorithm, ClientIp, Cost, FailMode, Key, Limit, MemoryStore, OnMissingKey, Policy, Rate,
    RateLimitLayer, RedisStore, UserId,
    config::{CostConfig, PolicyConfig, PolicyFile},
    cost::MAX_COST,
    store::Store,
};
use redis::{
    ConnectionInfo, IntoConnectionInfo,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing_subscriber::EnvFilter;

/// The list the seed's workers consume.
const QUEUE_KEY: &str = "edr:telemetry";
/// Telemetry batches are small; anything larger is a broken or hostile agent.
const MAX_TELEMETRY_BYTES: usize = 1024 * 1024;
/// How many events a telemetry batch holds, and so how many requests it costs.
const EVENT_COUNT_HEADER: HeaderName = HeaderName::from_static("x-event-count");
/// How many denied agents each instance remembers.
const BLOCK_CACHE_KEYS: usize = 100_000;
/// Whom telemetry is counted by, and whose batch ids are whose.
const AGENT_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-agent-token");
/// An agent's name for a batch, so that its retries are known as retries.
const BATCH_ID_HEADER: HeaderName = HeaderName::from_static("x-batch-id");
/// Queued batches are marked under `<prefix><hash>` for the dedup window.
const BATCH_MARK_PREFIX: &str = "edr:telemetry:batch:";
/// Longest a batch waits for the queue before its agent is told to retry.
const QUEUE_TIMEOUT: Duration = Duration::from_millis(250);
/// `QUEUE_DEDUP_SECONDS`: its default, and its largest value (a week).
const DEFAULT_DEDUP_SECONDS: u64 = 600;
const MAX_DEDUP_SECONDS: u64 = 7 * 24 * 3600;

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

// ---------------------------------------------------------------- config

/// Everything the environment configures, checked. No `Debug`: it holds
/// URLs with passwords.
struct Config {
    listen: SocketAddr,
    /// `false` with `RATE_LIMIT=off`.
    rate_limit: bool,
    redis: Option<RedisTarget>,
    queue: QueueTarget,
    /// How long a queued batch's id is remembered.
    dedup_window: Duration,
    policies: Policies,
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
        let rate_limit = on_off("RATE_LIMIT")?;
        // Every variable is checked, even those a policy file then overrides.
        let mut policies = Policies::from_env()?;
        if let Some(path) = var("POLICY_FILE")? {
            policies.apply_file(&path)?;
        }

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
        let dedup_seconds = match var("QUEUE_DEDUP_SECONDS")? {
            None => DEFAULT_DEDUP_SECONDS,
            Some(text) => text
                .parse()
                .ok()
                .filter(|s| (1..=MAX_DEDUP_SECONDS).contains(s) && !text.starts_with('+'))
                .ok_or_else(|| {
                    StartupError::new(
                        "QUEUE_DEDUP_SECONDS",
                        format!(
                            "{text:?} is not a whole number of seconds from 1 to \
                             {MAX_DEDUP_SECONDS}"
                        ),
                    )
                })?,
        };
        Ok(Self {
            listen,
            rate_limit,
            redis,
            queue,
            dedup_window: Duration::from_secs(dedup_seconds),
            policies,
        })
    }
}

/// The policies of the three limited routes, each checked.
struct Policies {
    telemetry: PolicySpec,
    /// What the telemetry policy charges a batch: the handler holds the
    /// body to it.
    telemetry_cost: BatchCost,
    login: PolicySpec,
    dashboard: PolicySpec,
}

/// A checked policy, and where it came from.
struct PolicySpec {
    policy: Policy,
    /// `environment`, or the policy file's path.
    origin: String,
    /// The variables that configure this policy when no file does.
    vars: &'static [&'static str],
}

const TELEMETRY_VARS: &[&str] = &[
    "TELEMETRY_RATE",
    "TELEMETRY_ALGORITHM",
    "TELEMETRY_BURST",
    "TELEMETRY_FALLBACK_DIVISOR",
    "TELEMETRY_BLOCK_CACHE",
];
const LOGIN_VARS: &[&str] = &["LOGIN_RATE", "TRUSTED_PROXIES"];
const DASHBOARD_VARS: &[&str] = &["DASHBOARD_RATE"];

impl Policies {
    fn all(&self) -> [&PolicySpec; 3] {
        [&self.telemetry, &self.login, &self.dashboard]
    }

    /// The policies as the environment and the defaults describe them.
    fn from_env() -> Result<Self, StartupError> {
        let algorithm = match var("TELEMETRY_ALGORITHM")? {
            None => Algorithm::default(),
            Some(text) => text.parse().map_err(|_| {
                StartupError::new(
                    "TELEMETRY_ALGORITHM",
                    format!(
                        "{text:?} is not an algorithm: use fixed, sliding or gcra \
                         (or fixed_window, sliding_window)"
                    ),
                )
            })?,
        };
        let rates = rate_list("TELEMETRY_RATE", "1000/m")?;
        let burst = at_least_one("TELEMETRY_BURST", "requests")?;
        if burst.is_some() && algorithm != Algorithm::Gcra {
            return Err(StartupError::new(
                "TELEMETRY_BURST",
                format!("a burst applies only to TELEMETRY_ALGORITHM=gcra, not {algorithm}"),
            ));
        }
        let divisor = at_least_one("TELEMETRY_FALLBACK_DIVISOR", "app instances")?;
        let mut telemetry = Policy::new("telemetry")
            .algorithm(algorithm)
            // Agent tokens are credentials: only their hash reaches Redis.
            .key(Key::header(AGENT_TOKEN_HEADER.as_str()).secret())
            .cost(Cost::header(EVENT_COUNT_HEADER.as_str()))
            .on_missing_key(OnMissingKey::Reject(StatusCode::UNAUTHORIZED))
            // Losing the agents' events to a Redis outage is worse than
            // limiting each instance alone for a while; letting every agent
            // through unlimited would be worse still.
            .on_store_error(FailMode::Fallback)
            .fallback_divisor(divisor.unwrap_or(1));
        // A flooding agent's requests are answered here, not by Redis.
        if on_off("TELEMETRY_BLOCK_CACHE")? {
            telemetry = telemetry.block_cache(BLOCK_CACHE_KEYS);
        }
        for &rate in &rates {
            let limit = Limit::new(rate);
            telemetry = telemetry.limit(burst.map_or(limit, |burst| limit.burst(burst)));
        }
        // With a burst, a rate too large to count may be the burst's fault.
        let telemetry_rate_vars = match burst {
            Some(_) => "TELEMETRY_RATE, TELEMETRY_BURST",
            None => "TELEMETRY_RATE",
        };
        let telemetry = PolicySpec::from_env(telemetry, telemetry_rate_vars, TELEMETRY_VARS)?;

        let proxies = var("TRUSTED_PROXIES")?.unwrap_or_default();
        let client_ip = ClientIp::new()
            .trust_proxies(proxies.split(',').map(str::trim).filter(|s| !s.is_empty()))
            .map_err(|e| match e {
                axum_redis_ratelimit::Error::Config { reason, .. } => {
                    StartupError::new("TRUSTED_PROXIES", reason)
                }
                other => StartupError::new("TRUSTED_PROXIES", other),
            })?;
        let login = Policy::new("login")
            .rate(one_rate("LOGIN_RATE", "10/h")?)
            .key(Key::client_ip_with(client_ip))
            // An unlimited login window invites password guessing.
            .fail_closed();
        let login = PolicySpec::from_env(login, "LOGIN_RATE", LOGIN_VARS)?;

        // The auth middleware in front of the limiter sets the user.
        let dashboard = Policy::new("dashboard")
            .rate(one_rate("DASHBOARD_RATE", "60/m")?)
            .key(Key::user())
            .fail_open();
        let dashboard = PolicySpec::from_env(dashboard, "DASHBOARD_RATE", DASHBOARD_VARS)?;
        Ok(Self {
            telemetry,
            telemetry_cost: BatchCost::Header(EVENT_COUNT_HEADER),
            login,
            dashboard,
        })
    }

    /// Replaces the policies that the file at `path` defines.
    fn apply_file(&mut self, path: &str) -> Result<(), StartupError> {
        let fail = |reason: String| StartupError::new("POLICY_FILE", reason);
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("cannot read {path:?}: {e}")))?;
        // The message is serde's and toml's: it quotes the bad value and
        // shows the line it is on.
        let file: PolicyFile = toml::from_str(&text)
            .map_err(|e| fail(format!("{path:?} is not a valid policy file: {e}")))?;
        let mut seen: Vec<String> = Vec::new();
        for config in file.policies {
            let name = config.name.clone();
            let slot = match name.as_str() {
                "telemetry" => &mut self.telemetry,
                "login" => &mut self.login,
                "dashboard" => &mut self.dashboard,
                other => {
                    return Err(fail(format!(
                        "{path:?}: unknown policy {other:?}: the limited routes' policies \
                         are telemetry, login and dashboard"
                    )));
                }
            };
            if seen.contains(&name) {
                return Err(fail(format!("{path:?}: policy {name:?} is defined twice")));
            }
            let ignored: Vec<&str> = (slot.vars.iter().copied())
                .filter(|v| matches!(var(v), Ok(Some(_))))
                .collect();
            let cost = config.cost.clone();
            *slot = PolicySpec::from_file(config, path)?;
            if name == "telemetry" {
                self.telemetry_cost = BatchCost::from_config(cost, path)?;
            }
            if !ignored.is_empty() {
                tracing::warn!(
                    policy = name,
                    ignored = %ignored.join(", "),
                    "POLICY_FILE defines this policy: its environment variables are ignored"
                );
            }
            seen.push(name);
        }
        Ok(())
    }
}

impl PolicySpec {
    /// Checks `policy`, blaming an error on the variables behind it:
    /// `rate_vars`, or `TELEMETRY_BURST` for a burst.
    fn from_env(
        policy: Policy,
        rate_vars: &'static str,
        vars: &'static [&'static str],
    ) -> Result<Self, StartupError> {
        policy.validate().map_err(|err| {
            let path = err.config_path().unwrap_or_default();
            match err {
                axum_redis_ratelimit::Error::Config { field, reason, .. } => {
                    let what = match field.as_str() {
                        "burst" => "TELEMETRY_BURST",
                        "rate" | "limits" => rate_vars,
                        _ => "policies",
                    };
                    StartupError::new(what, format!("{reason} (`{path}`)"))
                }
                other => StartupError::new(rate_vars, other),
            }
        })?;
        Ok(Self {
            policy,
            origin: "environment".to_owned(),
            vars,
        })
    }

    fn from_file(config: PolicyConfig, path: &str) -> Result<Self, StartupError> {
        let fail = |e: axum_redis_ratelimit::Error| {
            StartupError::new("POLICY_FILE", format!("{path:?}: {e}"))
        };
        let policy = config.into_policy().map_err(fail)?;
        policy.validate().map_err(fail)?;
        Ok(Self {
            policy,
            origin: path.to_owned(),
            vars: &[],
        })
    }
}

/// `on` (or unset) or `off`.
fn on_off(name: &'static str) -> Result<bool, StartupError> {
    match var(name)? {
        None => Ok(true),
        Some(text) if text.eq_ignore_ascii_case("on") => Ok(true),
        Some(text) if text.eq_ignore_ascii_case("off") => Ok(false),
        Some(text) => Err(StartupError::new(
            name,
            format!("{text:?} is neither on nor off"),
        )),
    }
}

/// A whole number of `what`, at least 1, if set.
fn at_least_one(name: &'static str, what: &str) -> Result<Option<u64>, StartupError> {
    let Some(text) = var(name)? else {
        return Ok(None);
    };
    match text.parse::<u64>() {
        Ok(n) if n >= 1 && !text.starts_with('+') => Ok(Some(n)),
        _ => Err(StartupError::new(
            name,
            format!("{text:?} is not a whole number of {what} of at least 1"),
        )),
    }
}

fn one_rate(name: &'static str, default: &str) -> Result<Rate, StartupError> {
    let text = var(name)?.unwrap_or_else(|| default.to_owned());
    // The error quotes the value: `invalid rate "10/w": unknown unit…`.
    text.parse().map_err(|e| StartupError::new(name, e))
}

/// A comma-separated list of rates, each with a window of its own.
fn rate_list(name: &'static str, default: &str) -> Result<Vec<Rate>, StartupError> {
    let text = var(name)?.unwrap_or_else(|| default.to_owned());
    let mut rates: Vec<Rate> = Vec::new();
    for part in text.split(',').map(str::trim) {
        // The error quotes the element: `invalid rate "10/w": unknown unit…`.
        let rate: Rate = part.parse().map_err(|e| StartupError::new(name, e))?;
        if let Some(same) = rates.iter().find(|r| r.window() == rate.window()) {
            return Err(StartupError::new(
                name,
                format!("{part:?} has the same window as {:?}", same.to_string()),
            ));
        }
        rates.push(rate);
    }
    Ok(rates)
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

fn json_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

/// Runs only once the limiter has let the request through, so the body of a
/// refused request is never read. The limiter charged what the head
/// declares; only a batch that holds exactly that many events goes on.
async fn telemetry_handler(State(state): State<AppState>, request: Request) -> Response {
    // Refused before a byte of it is read: a client that waits for
    // `100 Continue` never sends it.
    let length = (request.headers().get(header::CONTENT_LENGTH))
        .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|length| length > MAX_TELEMETRY_BYTES as u64) {
        return batch_too_large();
    }
    // Reading the body consumes `request`: keep its headers.
    let headers = request.headers().clone();
    let declared = match state.batch_cost.of(&headers) {
        Ok(declared) => declared,
        Err(detail) => return bad_batch(json!({ "error": "bad batch", "detail": detail })),
    };
    let batch_id = match batch_id(&headers) {
        Ok(id) => id,
        Err(detail) => return bad_batch(json!({ "error": "bad batch", "detail": detail })),
    };
    // Bytes reads at most MAX_TELEMETRY_BYTES (the route's DefaultBodyLimit).
    let body = match Bytes::from_request(request, &state).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return batch_too_large();
        }
        Err(rejection) => return json_error(rejection.status(), "cannot read the body"),
    };
    let events = match count_events(&body) {
        Ok(events) => events,
        Err(detail) => return bad_batch(json!({ "error": "bad batch", "detail": detail })),
    };
    if events != declared {
        let detail = match &state.batch_cost {
            _ if events == 0 => "an empty batch: a batch holds at least one event".to_owned(),
            BatchCost::Header(name) => {
                format!("{name} says {declared} (no {name}: 1) but the batch holds {events}")
            }
            BatchCost::Fixed(_) => format!(
                "every batch is charged {declared} and must hold as many events; this one \
                 holds {events}"
            ),
        };
        return bad_batch(json!({
            "error": "bad batch",
            "detail": detail,
            "events": events,
            "declared": declared,
        }));
    }

    // Without a queue nothing is queued, and the answer must not say so.
    let Some(queue) = &state.queue else {
        return (StatusCode::ACCEPTED, Json(json!({ "status": "accepted" }))).into_response();
    };
    let mark = BatchMark::new(
        &headers,
        batch_id.as_ref().map(HeaderValue::as_bytes),
        &body,
    );
    match queue.enqueue(&mark, &body).await {
        // A retry of a batch already queued is told what its first attempt
        // may never have heard.
        Ok(Enqueued::Queued | Enqueued::AlreadyQueued) => {
            (StatusCode::ACCEPTED, Json(json!({ "status": "queued" }))).into_response()
        }
        Ok(Enqueued::IdReused) => {
            let detail = format!(
                "{BATCH_ID_HEADER} names another batch of this agent's, queued within the \
                 last {} s",
                queue.window.as_secs()
            );
            let error = json!({ "error": "batch id reused", "detail": detail });
            (StatusCode::CONFLICT, Json(error)).into_response()
        }
        // The push may still run once Redis answers: the agent's retry, with
        // the same id or bytes, is then acknowledged without a second one.
        Err(err) => {
            tracing::error!(%err, bytes = body.len(), "telemetry not queued");
            let error = json!({ "error": "queue unavailable", "retry_after": 1 });
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(error)).into_response();
            let retry_after = HeaderValue::from_static("1");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
            response
        }
    }
}

/// `413`: the batch is refused, and not queued.
fn batch_too_large() -> Response {
    let error = json!({ "error": "batch too large", "max_bytes": MAX_TELEMETRY_BYTES });
    (StatusCode::PAYLOAD_TOO_LARGE, Json(error)).into_response()
}

/// `400`: the batch is refused, and not queued.
fn bad_batch(body: serde_json::Value) -> Response {
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
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

// ---------------------------------------------------------------- batches

/// The number of events in a batch: a UTF-8 JSON array of objects, counted
/// without building them. The message never quotes the body.
fn count_events(body: &[u8]) -> Result<u64, String> {
    const FORMAT: &str = "a batch is a JSON array of event objects";
    let text = std::str::from_utf8(body).map_err(|e| {
        format!(
            "the body is not UTF-8 (at byte {}): {FORMAT}",
            e.valid_up_to()
        )
    })?;
    let events: Vec<Event> = serde_json::from_str(text).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "not an array of event objects",
            serde_json::error::Category::Eof => "JSON that ends too early",
            _ => "not JSON",
        };
        format!(
            "the body is {what} (line {}, column {}): {FORMAT}",
            e.line(),
            e.column()
        )
    })?;
    Ok(events.len() as u64)
}

/// One event: any JSON object, skipped. (Zero-sized, so a `Vec` of them
/// allocates nothing.)
struct Event;

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Event;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Event)
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// What the telemetry policy charges a batch, in requests: the number of
/// events its body must hold.
#[derive(Clone)]
enum BatchCost {
    /// Every batch (a policy file's `cost = N`, or no `cost`: 1).
    Fixed(u64),
    /// The number in this header, 1 without it.
    Header(HeaderName),
}

impl BatchCost {
    /// What a policy file's telemetry `cost` charges.
    fn from_config(cost: Option<CostConfig>, path: &str) -> Result<Self, StartupError> {
        Ok(match cost {
            None => Self::Fixed(1),
            Some(CostConfig::Fixed(cost)) => Self::Fixed(cost),
            Some(CostConfig::Header { header }) => {
                Self::Header(HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    StartupError::new(
                        "POLICY_FILE",
                        format!("{path:?}: {header:?} is not a valid header name"),
                    )
                })?)
            }
        })
    }

    /// The charge, read as the limiter reads it (`Cost::header`): one line
    /// of at most 10 ASCII digits, from 1 to `MAX_COST`. The limiter has
    /// already refused any other value, unless there is no limiter.
    fn of(&self, headers: &HeaderMap) -> Result<u64, String> {
        let name = match self {
            Self::Fixed(cost) => return Ok(*cost),
            Self::Header(name) => name,
        };
        let mut values = headers.get_all(name).iter();
        let value = match (values.next(), values.next()) {
            (None, _) => return Ok(1),
            (Some(value), None) => Some(value.as_bytes())
                .filter(|digits| digits.len() <= 10 && digits.iter().all(u8::is_ascii_digit))
                .and_then(|digits| std::str::from_utf8(digits).ok()?.parse().ok())
                .filter(|count| (1..=MAX_COST).contains(count)),
            (Some(_), Some(_)) => None,
        };
        value.ok_or_else(|| format!("{name} must be one whole number from 1 to {MAX_COST}"))
    }
}

// ---------------------------------------------------------------- queue

/// The agent's name for its batch, if it gives one: one line of 1 to 128
/// visible ASCII characters (a UUID, a sequence number…).
fn batch_id(headers: &HeaderMap) -> Result<Option<HeaderValue>, String> {
    let mut values = headers.get_all(BATCH_ID_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(id), None)
            if (1..=128).contains(&id.len()) && id.as_bytes().iter().all(u8::is_ascii_graphic) =>
        {
            Ok(Some(id.clone()))
        }
        _ => Err(format!(
            "{BATCH_ID_HEADER} must be one line of 1 to 128 visible ASCII characters"
        )),
    }
}

/// A batch as the dedup window knows it: its `X-Batch-Id`, or without one
/// its bytes, within its agent's namespace (the `X-Agent-Token` lines), so
/// that no agent can pass its batch off as another's. Only hashes reach
/// Redis.
struct BatchMark {
    /// `edr:telemetry:batch:<hash of the token lines and the id or bytes>`.
    key: String,
    /// A hash of the bytes: tells a retry from another batch under the
    /// same id.
    digest: String,
}

impl BatchMark {
    fn new(headers: &HeaderMap, id: Option<&[u8]>, body: &[u8]) -> Self {
        let body_hash = Sha256::digest(body);
        // Every part is length-prefixed, so no two inputs hash the same bytes.
        let mut hash = Sha256::new();
        let tokens = headers.get_all(AGENT_TOKEN_HEADER);
        hash.update((tokens.iter().count() as u64).to_le_bytes());
        for part in tokens.iter().map(HeaderValue::as_bytes) {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        match id {
            Some(id) => {
                hash.update(b"id");
                hash.update((id.len() as u64).to_le_bytes());
                hash.update(id);
            }
            None => {
                hash.update(b"body");
                hash.update(body_hash);
            }
        }
        // 128 bits, as the limiter's keys.
        Self {
            key: format!("{BATCH_MARK_PREFIX}{}", hex(&hash.finalize()[..16])),
            digest: hex(&body_hash[..16]),
        }
    }
}

/// Lowercase hexadecimal.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// What became of a batch handed to the queue.
enum Enqueued {
    /// Pushed now.
    Queued,
    /// Pushed by an earlier attempt within the window, so not again.
    AlreadyQueued,
    /// Another batch was queued under its id within the window.
    IdReused,
}

/// Pushes a batch unless it is marked, and marks it for the window, in one
/// script: the mark and the push happen together or not at all, so each
/// batch is pushed at most once per window however its attempts fare. (The
/// push comes first: a script is not rolled back, and a push that fails,
/// say on a key that holds no list, must leave no mark.)
/// KEYS: the mark, the list. ARGV: the message, the batch's digest, the
/// window in ms. Returns 1 (queued), 0 (queued already) or -1 (id reused).
static ENQUEUE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local seen = redis.call('GET', KEYS[1])
if seen then
  if seen == ARGV[2] then return 0 end
  return -1
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// The hand-off to the workers: one multiplexed connection shared by all
/// requests, reconnecting by itself.
#[derive(Clone)]
struct EventQueue {
    connection: ConnectionManager,
    /// How long a batch stays marked once queued.
    window: Duration,
}

impl EventQueue {
    async fn connect(
        var: &'static str,
        info: &ConnectionInfo,
        window: Duration,
    ) -> Result<Self, StartupError> {
        let shown = format!("{}, db {}", info.addr(), info.redis_settings().db());
        let client = redis::Client::open(info.clone()).map_err(|e| StartupError::new(var, e))?;
        // Bounded, so that a dead queue turns into a quick 503 rather than
        // agents waiting on a hung request.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(QUEUE_TIMEOUT))
            .set_response_timeout(Some(QUEUE_TIMEOUT))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| StartupError::new(var, format!("telemetry queue at {shown}: {e}")))?;
        tracing::info!(
            queue = %shown,
            list = QUEUE_KEY,
            dedup_seconds = window.as_secs(),
            "telemetry queued in Redis"
        );
        Ok(Self { connection, window })
    }

    /// Queues `batch` at most once per window, within `QUEUE_TIMEOUT`. The
    /// message is the batch as posted; a change of format (say, to Celery's
    /// task messages) belongs here.
    async fn enqueue(&self, mark: &BatchMark, batch: &[u8]) -> redis::RedisResult<Enqueued> {
        let mut connection = self.connection.clone();
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let mut call = ENQUEUE.key(&mark.key);
        call.key(QUEUE_KEY)
            .arg(batch)
            .arg(&mark.digest)
            .arg(window_ms);
        let outcome =
            tokio::time::timeout(QUEUE_TIMEOUT, call.invoke_async::<i64>(&mut connection))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from the queue")
                })??;
        Ok(match outcome {
            1 => Enqueued::Queued,
            0 => Enqueued::AlreadyQueued,
            _ => Enqueued::IdReused,
        })
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
