//! The environment: every variable the example reads, its default and its
//! parser, as one `clap` struct (`cargo run --example edr -- --help` lists
//! them). The example takes no command-line arguments: each field is read
//! from its variable only. Empty (or blank) counts as unset.
//!
//! A bad value stops the program at startup with a message naming the
//! variable and quoting the value. What the library checks in a policy
//! (a burst only with GCRA, one limit per window…) is left to
//! `Policy::validate()`; see `policies.rs`, which names the variable behind
//! the field it reports.

use std::{ffi::OsStr, fmt, net::SocketAddr, num::NonZeroU64, time::Duration};

use axum_redis_ratelimit::{Algorithm, ClientIp, Rate};
use clap::{
    ArgAction, CommandFactory, FromArgMatches, Parser,
    error::{ContextKind, ContextValue},
    parser::ValueSource,
};
use redis::{ConnectionInfo, IntoConnectionInfo};

/// The largest `QUEUE_DEDUP_SECONDS`: a week.
const MAX_DEDUP_SECONDS: u64 = 7 * 24 * 3600;

/// The EDR example's settings. No `Debug`: it holds URLs with passwords.
#[derive(Parser)]
#[command(
    name = "edr",
    about = "The EDR API, rate limited. Configured by environment variables only \
             (empty counts as unset); RUST_LOG (default `info`) sets the log level.",
    override_usage = "VARIABLE=value… edr",
    next_help_heading = "Environment"
)]
pub struct Env {
    /// Address to serve on.
    #[arg(env = "LISTEN_ADDR", default_value = "127.0.0.1:3000", value_parser = socket_addr)]
    pub listen_addr: SocketAddr,

    /// `off` serves the same routes with no rate limit at all (and so no 401
    /// for a missing agent token): a baseline for benchmarks, never for
    /// production (the log warns). The other settings are still checked.
    #[arg(env = "RATE_LIMIT", default_value = "on", value_parser = on_off,
          action = ArgAction::Set)]
    pub rate_limit: bool,

    /// How telemetry is counted: `fixed` (also `fixed_window`), `sliding`
    /// (`sliding_window`) or `gcra`.
    #[arg(env = "TELEMETRY_ALGORITHM", default_value = "fixed", value_parser = algorithm)]
    pub telemetry_algorithm: Algorithm,

    /// One rate or a comma-separated list, such as `10/s,1000/m`: a request
    /// must fit every one, each with its own window. A rate is `N/unit`,
    /// unit `s`, `m`, `h` or `d`, optionally multiplied as in `100/10s`.
    #[arg(env = "TELEMETRY_RATE", default_value = "1000/m", value_parser = rate_list)]
    pub telemetry_rate: Rates,

    /// With `gcra` only: how many requests an agent may send at once, for
    /// every telemetry rate (default: each rate's own limit); at least 1.
    #[arg(env = "TELEMETRY_BURST", value_parser = at_least_one)]
    pub telemetry_burst: Option<NonZeroU64>,

    /// While Redis is down, each instance limits telemetry in-process at
    /// every telemetry limit divided by this: the number of app instances,
    /// so that together they stay near the shared limit. At least 1.
    #[arg(env = "TELEMETRY_FALLBACK_DIVISOR", default_value = "1",
          value_parser = whole_number)]
    pub telemetry_fallback_divisor: u64,

    /// `off` asks Redis about every telemetry request, denied agents
    /// included (for benchmarks).
    #[arg(env = "TELEMETRY_BLOCK_CACHE", default_value = "on", value_parser = on_off,
          action = ArgAction::Set)]
    pub telemetry_block_cache: bool,

    /// Comma-separated CIDRs whose `X-Forwarded-For` is believed for the
    /// login limit; default none (the socket peer is the client).
    #[arg(env = "TRUSTED_PROXIES", default_value = "", hide_default_value = true,
          value_parser = trusted_proxies)]
    pub trusted_proxies: ClientIp,

    /// The login limit, one rate.
    #[arg(env = "LOGIN_RATE", default_value = "10/h", value_parser = rate)]
    pub login_rate: Rate,

    /// The dashboard limit, one rate.
    #[arg(env = "DASHBOARD_RATE", default_value = "60/m", value_parser = rate)]
    pub dashboard_rate: Rate,

    /// A TOML file of `[[policies]]` named `telemetry`, `login` or
    /// `dashboard`, as in `examples/edr-policies.toml`. A policy in the file
    /// replaces everything the variables above say about it (a warning names
    /// those set and so ignored, which are still checked); a policy it leaves
    /// out keeps its variables and defaults. Every field is the file's to
    /// choose: one that omits `on_missing_key` for telemetry answers a
    /// missing token with the library's `400`, not `401`. Other names, and a
    /// name given twice, are errors.
    #[arg(env = "POLICY_FILE", value_parser = text)]
    pub policy_file: Option<String>,

    /// Rate-limit counters, e.g. `redis://:password@host:6379/1`; unset, they
    /// are kept in this process (the log says so).
    #[arg(env = "REDIS_URL", value_parser = redis_url)]
    pub redis_url: Option<RedisTarget>,

    /// Where accepted telemetry goes (the list `edr:telemetry`); default
    /// database 0 of `REDIS_URL`; `off` accepts telemetry without queueing
    /// it (to measure the limiter alone).
    #[arg(env = "QUEUE_URL", value_parser = queue_url)]
    pub queue_url: Option<QueueUrl>,

    /// How long a queued batch's id is remembered, so that retries within it
    /// are not queued again; longer than agents keep retrying a batch. A
    /// whole number of seconds from 1 to 604800 (a week).
    #[arg(env = "QUEUE_DEDUP_SECONDS", default_value = "600", value_parser = dedup_seconds)]
    pub queue_dedup_seconds: Duration,

    /// The variables that were set, with their values (trimmed): for
    /// messages about them.
    #[arg(skip)]
    given: Vec<(String, String)>,
}

/// A checked Redis URL.
#[derive(Clone)]
pub struct RedisTarget {
    pub url: String,
    pub info: Box<ConnectionInfo>,
    /// The URL without credentials, for logs and errors.
    pub shown: String,
}

/// `QUEUE_URL`'s value.
#[derive(Clone)]
pub enum QueueUrl {
    Off,
    Redis(Box<ConnectionInfo>),
}

/// Where telemetry goes.
pub enum QueueTarget {
    Off,
    /// `var` is the variable the target came from, for error messages.
    Redis {
        var: &'static str,
        info: Box<ConnectionInfo>,
    },
}

/// `TELEMETRY_RATE`'s rates, in order (a newtype, as clap reads a `Vec` as
/// repeated values).
#[derive(Clone)]
pub struct Rates(pub Vec<Rate>);

impl Env {
    /// Reads and parses every variable; `--help` prints them and exits.
    pub fn load() -> Result<Self, StartupError> {
        let mut command = Self::command();
        match std::env::args_os().nth(1) {
            None => {}
            Some(arg) if arg == "-h" || arg == "--help" => {
                let _ = command.print_long_help();
                std::process::exit(0);
            }
            Some(arg) => {
                return Err(StartupError::new(
                    "arguments",
                    format!("{arg:?}: none are taken but --help; set environment variables"),
                ));
            }
        }
        for arg in command.get_arguments() {
            let Some(var) = arg.get_env() else { continue };
            if let Some(value) = std::env::var_os(var)
                && value.to_str().is_none()
            {
                let shown = redact(&value.to_string_lossy());
                return Err(StartupError::new(
                    name(var),
                    format!("{shown:?} is not valid UTF-8"),
                ));
            }
        }
        // Empty counts as unset: clap would parse "" (or "  ") as a value.
        let command = command.mut_args(|arg| match arg.get_env().and_then(value_of) {
            Some(value) if value.is_empty() => arg.env(None::<&'static str>),
            _ => arg,
        });
        // No arguments: every value comes from its variable or its default.
        let matches = (command.clone())
            .try_get_matches_from(["edr"])
            .map_err(|err| startup_error(&command, &err))?;
        let mut env = Self::from_arg_matches(&matches).map_err(|e| StartupError::new("edr", e))?;
        env.given = (command.get_arguments())
            .filter(|arg| {
                matches.value_source(arg.get_id().as_str()) == Some(ValueSource::EnvVariable)
            })
            .filter_map(|arg| {
                let var = arg.get_env()?;
                Some((name(var), value_of(var)?))
            })
            .collect();
        Ok(env)
    }

    /// The value `var` was set to, trimmed, if it was set.
    pub fn given(&self, var: &str) -> Option<&str> {
        let mut given = self.given.iter();
        given
            .find(|(name, _)| name == var)
            .map(|(_, value)| value.as_str())
    }

    /// Where telemetry goes: `QUEUE_URL`, else database 0 of `REDIS_URL`
    /// (the seed's layout: counters in one database, Celery's queue in
    /// database 0 of the same server), else nowhere.
    pub fn queue(&self) -> QueueTarget {
        match (&self.queue_url, &self.redis_url) {
            (Some(QueueUrl::Off), _) | (None, None) => QueueTarget::Off,
            (Some(QueueUrl::Redis(info)), _) => QueueTarget::Redis {
                var: "QUEUE_URL",
                info: info.clone(),
            },
            (None, Some(redis)) => {
                let db0 = redis.info.redis_settings().clone().set_db(0);
                QueueTarget::Redis {
                    var: "REDIS_URL",
                    info: Box::new((*redis.info).clone().set_redis_settings(db0)),
                }
            }
        }
    }
}

/// A variable's value, trimmed, if it is set and UTF-8.
fn value_of(var: &OsStr) -> Option<String> {
    Some(std::env::var_os(var)?.to_str()?.trim().to_owned())
}

fn name(var: &OsStr) -> String {
    var.to_string_lossy().into_owned()
}

/// clap's error for a bad value, as the variable's name and the parser's
/// message (which quotes the value).
fn startup_error(command: &clap::Command, err: &clap::Error) -> StartupError {
    let var = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(shown)) => (command.get_arguments())
            .find(|arg| arg.to_string() == *shown)
            .and_then(|arg| arg.get_env())
            .map(name),
        _ => None,
    };
    let reason = match std::error::Error::source(err) {
        Some(source) => source.to_string(),
        None => err.to_string(),
    };
    StartupError::new(var.unwrap_or_else(|| "edr".to_owned()), reason)
}

// ---------------------------------------------------------------- parsers
// Each gets the value as set (or the default) and quotes it in its message.

fn text(text: &str) -> Result<String, String> {
    Ok(text.trim().to_owned())
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    text.parse()
        .map_err(|_| format!("{text:?} is not an address such as 127.0.0.1:3000"))
}

/// `on` or `off`.
fn on_off(text: &str) -> Result<bool, String> {
    match text.trim() {
        text if text.eq_ignore_ascii_case("on") => Ok(true),
        text if text.eq_ignore_ascii_case("off") => Ok(false),
        text => Err(format!("{text:?} is neither on nor off")),
    }
}

/// A whole number; what it must be at least is the library's to say.
fn whole_number(text: &str) -> Result<u64, String> {
    let text = text.trim();
    (text.parse().ok())
        .filter(|_| !text.starts_with('+'))
        .ok_or_else(|| format!("{text:?} is not a whole number"))
}

fn at_least_one(text: &str) -> Result<NonZeroU64, String> {
    NonZeroU64::new(whole_number(text)?).ok_or_else(|| format!("{text:?} must be at least 1"))
}

fn algorithm(text: &str) -> Result<Algorithm, String> {
    let text = text.trim();
    text.parse().map_err(|_| {
        format!(
            "{text:?} is not an algorithm: use fixed, sliding or gcra (or fixed_window, \
             sliding_window)"
        )
    })
}

/// The error quotes the value: `invalid rate "10/w": unknown unit…`.
fn rate(text: &str) -> Result<Rate, String> {
    text.trim()
        .parse()
        .map_err(|e: axum_redis_ratelimit::Error| e.to_string())
}

/// A comma-separated list of rates; the error quotes the bad one.
fn rate_list(text: &str) -> Result<Rates, String> {
    text.split(',')
        .map(rate)
        .collect::<Result<_, _>>()
        .map(Rates)
}

fn trusted_proxies(text: &str) -> Result<ClientIp, String> {
    let cidrs = text.split(',').map(str::trim).filter(|s| !s.is_empty());
    let ip = ClientIp::new().trust_proxies(cidrs);
    match ip.check() {
        Ok(()) => Ok(ip),
        Err(axum_redis_ratelimit::Error::Config { reason, .. }) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

fn redis_url(text: &str) -> Result<RedisTarget, String> {
    let url = text.trim().to_owned();
    Ok(RedisTarget {
        info: Box::new(connection_info(&url)?),
        shown: redact(&url),
        url,
    })
}

fn queue_url(text: &str) -> Result<QueueUrl, String> {
    match text.trim() {
        text if text.eq_ignore_ascii_case("off") => Ok(QueueUrl::Off),
        url => Ok(QueueUrl::Redis(Box::new(connection_info(url)?))),
    }
}

fn dedup_seconds(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    (text.parse().ok())
        .filter(|s| (1..=MAX_DEDUP_SECONDS).contains(s) && !text.starts_with('+'))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            format!("{text:?} is not a whole number of seconds from 1 to {MAX_DEDUP_SECONDS}")
        })
}

fn connection_info(url: &str) -> Result<ConnectionInfo, String> {
    url.into_connection_info().map_err(|e| {
        format!(
            "{:?} is not a Redis URL such as redis://127.0.0.1:6379/1: {e}",
            redact(url)
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
    what: String,
    reason: String,
}

impl StartupError {
    pub fn new(what: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.reason)
    }
}
