//! The environment, checked: every variable, its default, and the policies
//! it and the policy file describe.

use std::{env, fmt, net::SocketAddr, time::Duration};

use axum::http::StatusCode;
use axum_redis_ratelimit::{
    Algorithm, ClientIp, Cost, FailMode, Key, Limit, OnMissingKey, Policy, Rate,
    config::{PolicyConfig, PolicyFile},
};
use redis::{ConnectionInfo, IntoConnectionInfo};

use crate::{AGENT_TOKEN_HEADER, BLOCK_CACHE_KEYS, EVENT_COUNT_HEADER, batch::BatchCost};

/// `QUEUE_DEDUP_SECONDS`: its default, and its largest value (a week).
const DEFAULT_DEDUP_SECONDS: u64 = 600;
const MAX_DEDUP_SECONDS: u64 = 7 * 24 * 3600;

/// Everything the environment configures, checked. No `Debug`: it holds
/// URLs with passwords.
pub struct Config {
    pub listen: SocketAddr,
    /// `false` with `RATE_LIMIT=off`.
    pub rate_limit: bool,
    pub redis: Option<RedisTarget>,
    pub queue: QueueTarget,
    /// How long a queued batch's id is remembered.
    pub dedup_window: Duration,
    pub policies: Policies,
}

pub struct RedisTarget {
    pub url: String,
    /// The URL without credentials, for logs and errors.
    pub shown: String,
}

pub enum QueueTarget {
    Off,
    /// `var` is the variable the target came from, for error messages.
    Redis {
        var: &'static str,
        info: Box<ConnectionInfo>,
    },
}

impl Config {
    pub fn from_env() -> Result<Self, StartupError> {
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
pub struct Policies {
    pub telemetry: PolicySpec,
    /// What the telemetry policy charges a batch: the handler holds the
    /// body to it.
    pub telemetry_cost: BatchCost,
    pub login: PolicySpec,
    pub dashboard: PolicySpec,
}

/// A checked policy, and where it came from.
pub struct PolicySpec {
    pub policy: Policy,
    /// `environment`, or the policy file's path.
    pub origin: String,
    /// The variables that configure this policy when no file does.
    pub vars: &'static [&'static str],
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
    pub fn all(&self) -> [&PolicySpec; 3] {
        [&self.telemetry, &self.login, &self.dashboard]
    }

    /// The policies as the environment and the defaults describe them.
    pub fn from_env() -> Result<Self, StartupError> {
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
    pub fn apply_file(&mut self, path: &str) -> Result<(), StartupError> {
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
    pub fn from_env(
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

    pub fn from_file(config: PolicyConfig, path: &str) -> Result<Self, StartupError> {
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
pub fn on_off(name: &'static str) -> Result<bool, StartupError> {
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
pub fn at_least_one(name: &'static str, what: &str) -> Result<Option<u64>, StartupError> {
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

pub fn one_rate(name: &'static str, default: &str) -> Result<Rate, StartupError> {
    let text = var(name)?.unwrap_or_else(|| default.to_owned());
    // The error quotes the value: `invalid rate "10/w": unknown unit…`.
    text.parse().map_err(|e| StartupError::new(name, e))
}

/// A comma-separated list of rates, each with a window of its own.
pub fn rate_list(name: &'static str, default: &str) -> Result<Vec<Rate>, StartupError> {
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
pub fn var(name: &'static str) -> Result<Option<String>, StartupError> {
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

pub fn connection_info(name: &'static str, url: &str) -> Result<ConnectionInfo, StartupError> {
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
pub fn redact(url: &str) -> String {
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
pub struct StartupError {
    pub what: &'static str,
    pub reason: String,
}

impl StartupError {
    pub fn new(what: &'static str, reason: impl fmt::Display) -> Self {
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
