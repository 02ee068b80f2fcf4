//! The environment: every variable the example reads, its default and its
//! parser, as one `clap` struct (`cargo run --example edr -- --help` lists
//! them). The example takes no command-line arguments: each field is read
//! from its variable only. Empty (or blank) counts as unset.
//!
//! A bad value stops the program at startup with a message naming the
//! variable and quoting the value. What the library checks in a policy
//! (a burst only with GCRA, one limit per window…) is left to
//! `Policy::validate()`; see `policies.rs`, which names the variable behind
//! the field it reports. What the library checks in a Redis configuration
//! (`Error::Config` on a `redis.*` field) is named the same way, by
//! [`Env::redis_error`].
//!
//! Redis is one of three topologies, each named by its own variables:
//! `REDIS_URL` (one server), `REDIS_CLUSTER_NODES` (Redis Cluster) or
//! `REDIS_SENTINELS` with `REDIS_MASTER_NAME` (the master Sentinel names),
//! with `REDIS_TLS_CA`, `REDIS_TLS_CERT` and `REDIS_TLS_KEY` for any of
//! them; [`Env::redis`] checks that they name one. No password is ever
//! printed: URLs are shown redacted, and [`Env::scrub`] removes every
//! password the variables hold from a startup error.

use std::{ffi::OsStr, fmt, net::SocketAddr, num::NonZeroU64, path::PathBuf, time::Duration};

use axum_redis_ratelimit::{
    Algorithm, ClientIp, Error, Mode, Rate,
    store::{RedisConfig, TlsFiles},
};
use clap::{
    ArgAction, CommandFactory, FromArgMatches, Parser,
    error::{ContextKind, ContextValue},
    parser::ValueSource,
};
use redis::{ConnectionInfo, IntoConnectionInfo};

use crate::{
    celery::{CeleryTask, DEFAULT_QUEUE, DEFAULT_TASK},
    queue::{Format, RAW_QUEUE_KEY, mark_prefix},
};

/// Variables whose values are secrets as a whole (not URLs, which are shown
/// redacted): no message quotes them.
pub const SECRET_VARIABLES: &[&str] = &["TELEMETRY_EXEMPT_TOKENS"];

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

    /// Where to serve `GET /metrics` (the rate limiter's figures, in the
    /// Prometheus text format) instead of LISTEN_ADDR: a listener of its own
    /// that serves nothing else, say on an address only the scraper reaches.
    /// Unset: `/metrics` is a route of the API's address. Never rate limited.
    #[arg(env = "METRICS_ADDR", value_parser = socket_addr)]
    pub metrics_addr: Option<SocketAddr>,

    /// `off` installs no metrics recorder and serves no `/metrics`: the
    /// baseline against which `scripts/loadbench.py` measures what the
    /// metrics cost.
    #[arg(env = "METRICS", default_value = "on", value_parser = on_off,
          action = ArgAction::Set)]
    pub metrics: bool,

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

    /// Lease mode for telemetry: the largest slice of an agent's quota one
    /// instance takes from Redis in one call (say `64`), then admits from
    /// in-process until it is spent or its window ends; never more than the
    /// limit across instances. Fixed or sliding window with Redis only.
    /// Unset or `off`: every request asks Redis.
    #[arg(env = "TELEMETRY_LEASE", value_parser = lease_slice)]
    pub telemetry_lease: Option<LeaseSlice>,

    /// With TELEMETRY_LEASE: how many app instances share the agents'
    /// counters; a slice is at most what an agent has left divided by this.
    /// At least 1.
    #[arg(env = "TELEMETRY_INSTANCES", default_value = "1", value_parser = at_least_one)]
    pub telemetry_instances: NonZeroU64,

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

    /// What the telemetry limit does with an agent over it: `block` (429),
    /// `annotate` (forward, with the RateLimit fields) or `shadow` (forward,
    /// no RateLimit fields; the would-be denials are counted in /metrics as
    /// `shadow_denied` and logged), to try a limit on real traffic before it
    /// blocks. Shadow mode refuses nothing, not even a request without an
    /// agent token (counted as `missing_key`).
    #[arg(env = "TELEMETRY_MODE", default_value = "block", value_parser = mode)]
    pub telemetry_mode: Mode,

    /// The login limit's mode: `block`, `annotate` or `shadow`.
    #[arg(env = "LOGIN_MODE", default_value = "block", value_parser = mode)]
    pub login_mode: Mode,

    /// The dashboard limit's mode: `block`, `annotate` or `shadow`.
    #[arg(env = "DASHBOARD_MODE", default_value = "block", value_parser = mode)]
    pub dashboard_mode: Mode,

    /// Comma-separated agent tokens whose telemetry skips the limit (an
    /// internal health agent, say): counted in /metrics as `exempt`, still
    /// checked and queued as any batch. A request carrying its token header
    /// twice is not exempt. Secrets: never printed, compared in constant
    /// time.
    #[arg(env = "TELEMETRY_EXEMPT_TOKENS", value_parser = token_list,
          hide_env_values = true)]
    pub telemetry_exempt_tokens: Option<Tokens>,

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

    /// One Redis server, `redis://[user:password@]host:6379/1` or
    /// `rediss://` for TLS: rate-limit counters go to the URL's database
    /// (`/1`; 0 if the URL names none), accepted telemetry to its database 0.
    /// With no Redis at all (neither this, REDIS_CLUSTER_NODES nor
    /// REDIS_SENTINELS), counters are kept in this process (the log says so)
    /// and telemetry is not queued.
    #[arg(env = "REDIS_URL", value_parser = redis_url, hide_env_values = true)]
    pub redis_url: Option<RedisTarget>,

    /// Redis Cluster instead: comma-separated URLs of some of its nodes,
    /// `redis://[user:password@]host:6379` (the others are discovered). A
    /// cluster has only database 0, so counters (`rl:…`) and the queue
    /// (the list, `celery` or `edr:telemetry`, and its batch marks
    /// `{celery}:batch:…`) are told apart by key prefix; a node URL naming
    /// another database is an error.
    #[arg(env = "REDIS_CLUSTER_NODES", value_parser = cluster_nodes, hide_env_values = true)]
    pub redis_cluster_nodes: Option<UrlList>,

    /// Sentinel instead: comma-separated sentinel URLs,
    /// `redis://[:sentinel-password@]host:26379`, with REDIS_MASTER_NAME.
    /// Counters go to database 1 of the master, telemetry to its database 0,
    /// and failovers are followed.
    #[arg(env = "REDIS_SENTINELS", value_parser = sentinel_urls, hide_env_values = true)]
    pub redis_sentinels: Option<UrlList>,

    /// With REDIS_SENTINELS, and only then: the name the sentinels monitor
    /// the master by.
    #[arg(env = "REDIS_MASTER_NAME", value_parser = text)]
    pub redis_master_name: Option<String>,

    /// With REDIS_SENTINELS: the master's ACL user, if not `default`.
    #[arg(env = "REDIS_MASTER_USERNAME", value_parser = text)]
    pub redis_master_username: Option<String>,

    /// With REDIS_SENTINELS: the master's password, if it has one (the
    /// sentinels' own goes in their URLs).
    #[arg(env = "REDIS_MASTER_PASSWORD", value_parser = text, hide_env_values = true)]
    pub redis_master_password: Option<String>,

    /// A PEM file of the CA that signed the Redis servers' certificates,
    /// for `rediss://` URLs (default: the system's roots). TLS needs the
    /// example built with `--features tls`.
    #[arg(env = "REDIS_TLS_CA", value_parser = file_path)]
    pub redis_tls_ca: Option<PathBuf>,

    /// A PEM client certificate, for servers that require mutual TLS; with
    /// REDIS_TLS_KEY.
    #[arg(env = "REDIS_TLS_CERT", value_parser = file_path)]
    pub redis_tls_cert: Option<PathBuf>,

    /// The PEM private key of REDIS_TLS_CERT.
    #[arg(env = "REDIS_TLS_KEY", value_parser = file_path)]
    pub redis_tls_key: Option<PathBuf>,

    /// Where accepted telemetry goes (see QUEUE_FORMAT), if not
    /// where the counters are: the URL of one Redis server (not a cluster
    /// node), whatever holds the counters; the REDIS_TLS_* files apply to it
    /// if it is `rediss://`. Default: database 0 of REDIS_URL's server or of
    /// the Sentinel master, or the cluster of REDIS_CLUSTER_NODES. `off`
    /// accepts telemetry without queueing it (to measure the limiter alone).
    #[arg(env = "QUEUE_URL", value_parser = queue_url, hide_env_values = true)]
    pub queue_url: Option<QueueUrl>,

    /// How long a queued batch's id is remembered, so that retries within it
    /// are not queued again; longer than agents keep retrying a batch. A
    /// whole number of seconds from 1 to 604800 (a week).
    #[arg(env = "QUEUE_DEDUP_SECONDS", default_value = "600", value_parser = dedup_seconds)]
    pub queue_dedup_seconds: Duration,

    /// What accepted telemetry is queued as: `celery`, a Celery task message
    /// (protocol 2, JSON, kombu's Redis envelope) that runs CELERY_TASK on
    /// the batch, pushed onto the list CELERY_QUEUE, for Celery workers to
    /// run unchanged; or `raw`, the body as posted, pushed onto the list
    /// `edr:telemetry`, for consumers that are not Celery.
    #[arg(env = "QUEUE_FORMAT", default_value = "celery", value_parser = queue_format)]
    pub queue_format: QueueFormat,

    /// With QUEUE_FORMAT=celery: the Celery queue the workers consume (their
    /// `-Q`), which is the Redis list the tasks are pushed onto.
    #[arg(env = "CELERY_QUEUE", default_value = DEFAULT_QUEUE, value_parser = celery_name)]
    pub celery_queue: String,

    /// With QUEUE_FORMAT=celery: the name the workers know the task by. It
    /// is called with one argument, the batch: a list of event objects.
    #[arg(env = "CELERY_TASK", default_value = DEFAULT_TASK, value_parser = celery_name)]
    pub celery_task: String,

    /// The variables that were set, with their values (trimmed): for
    /// messages about them.
    #[arg(skip)]
    given: Vec<(String, String)>,
}

/// A checked Redis URL.
#[derive(Clone)]
pub struct RedisTarget {
    pub url: String,
    /// The URL without credentials, for logs and errors.
    pub shown: String,
}

/// Checked Redis URLs, from a comma-separated list.
#[derive(Clone)]
pub struct UrlList {
    pub urls: Vec<String>,
    /// The URLs without credentials, for logs and errors.
    pub shown: String,
}

/// `QUEUE_FORMAT`'s value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum QueueFormat {
    Raw,
    Celery,
}

/// `QUEUE_URL`'s value.
#[derive(Clone)]
pub enum QueueUrl {
    Off,
    Redis(RedisTarget),
}

/// The Redis the variables name: where the counters go, and where the queue
/// goes unless `QUEUE_URL` says otherwise.
pub struct Redis {
    /// The variable naming the topology (`REDIS_URL`, `REDIS_CLUSTER_NODES`
    /// or `REDIS_SENTINELS`), for messages.
    pub var: &'static str,
    /// The counters' configuration.
    pub counters: RedisConfig,
    /// Where the counters are, without credentials, for logs and errors.
    pub shown: String,
    /// The queue's default: database 0 of the same server or master, or
    /// the same cluster.
    pub queue: Queue,
}

/// A Redis to queue telemetry in.
#[derive(Clone)]
pub struct Queue {
    /// The variable it came from, for messages.
    pub var: &'static str,
    pub config: RedisConfig,
    /// Where it is, without credentials, for logs and errors.
    pub shown: String,
    /// A Redis Cluster: the batch marks must hash to the list's slot.
    pub cluster: bool,
}

/// The variables behind the `redis.*` fields the library's `Error::Config`
/// names. `redis.url` and `redis` (the whole configuration) are the
/// variable of the Redis at hand (`REDIS_URL` or `QUEUE_URL`, or the
/// topology's), `redis.tls` those of the TLS files that are set.
const REDIS_VARIABLES: &[(&str, &str)] = &[
    ("redis.cluster_nodes", "REDIS_CLUSTER_NODES"),
    ("redis.sentinels", "REDIS_SENTINELS"),
    ("redis.master_name", "REDIS_MASTER_NAME"),
    ("redis.username", "REDIS_MASTER_USERNAME"),
    ("redis.password", "REDIS_MASTER_PASSWORD"),
    ("redis.tls.ca", "REDIS_TLS_CA"),
    ("redis.tls.cert", "REDIS_TLS_CERT"),
    ("redis.tls.key", "REDIS_TLS_KEY"),
];

/// The database of the Sentinel master that holds the counters (the queue
/// is in database 0), as `REDIS_URL`'s `/1` in the documented layout.
const SENTINEL_COUNTERS_DB: i64 = 1;

/// `TELEMETRY_EXEMPT_TOKENS`'s tokens, trimmed. No `Debug`: they are
/// secrets.
#[derive(Clone)]
pub struct Tokens(pub Vec<String>);

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
                if SECRET_VARIABLES.contains(&name(var).as_str()) {
                    return Err(StartupError::new(
                        name(var),
                        "is not valid UTF-8 (the value is not shown: it holds secrets)",
                    ));
                }
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

    /// The Redis the variables name, checked: one topology at most, Sentinel
    /// settings only with Sentinel, both TLS client files or neither, and TLS
    /// files only with a `rediss://` URL to use them on. `None`: no Redis.
    pub fn redis(&self) -> Result<Option<Redis>, StartupError> {
        let var = self.topology()?;
        let tls = self.tls_files()?;
        if tls.is_some() && !self.urls().any(is_tls) {
            return Err(StartupError::new(
                self.tls_vars(),
                "set, but no Redis URL is rediss:// (REDIS_URL, REDIS_CLUSTER_NODES, \
                 REDIS_SENTINELS or QUEUE_URL): TLS is for rediss:// URLs",
            ));
        }
        // The TLS files go with the URLs that use TLS.
        let with_tls = |config: RedisConfig, urls: &[String]| match &tls {
            Some(files) if urls.iter().any(|url| is_tls(url)) => config.tls(files.clone()),
            _ => config,
        };
        let Some(var) = var else { return Ok(None) };

        if let Some(one) = &self.redis_url {
            let urls = [one.url.clone()];
            let db0 = with_db(&one.url, 0).unwrap_or_else(|| one.url.clone());
            return Ok(Some(Redis {
                var,
                counters: with_tls(RedisConfig::from(&one.url), &urls),
                shown: one.shown.clone(),
                queue: Queue {
                    var,
                    shown: redact(&db0),
                    config: with_tls(RedisConfig::from(db0), &urls),
                    cluster: false,
                },
            }));
        }
        if let Some(nodes) = &self.redis_cluster_nodes {
            let config = with_tls(RedisConfig::cluster(nodes.urls.clone()), &nodes.urls);
            let shown = format!("Redis Cluster via {}", nodes.shown);
            return Ok(Some(Redis {
                var,
                counters: config.clone(),
                shown: shown.clone(),
                queue: Queue {
                    var,
                    config,
                    shown,
                    cluster: true,
                },
            }));
        }
        let (Some(sentinels), Some(master_name)) = (&self.redis_sentinels, &self.redis_master_name)
        else {
            return Ok(None);
        };
        let mut config = RedisConfig::sentinel(sentinels.urls.clone(), master_name);
        config.username = self.redis_master_username.clone();
        config.password = self.redis_master_password.clone();
        let config = with_tls(config, &sentinels.urls);
        let shown = |db: i64| {
            let sentinels = &sentinels.shown;
            format!("master {master_name:?} of the sentinels {sentinels}, db {db}")
        };
        Ok(Some(Redis {
            var,
            counters: config.clone().db(SENTINEL_COUNTERS_DB),
            shown: shown(SENTINEL_COUNTERS_DB),
            queue: Queue {
                var,
                config: config.db(0),
                shown: shown(0),
                cluster: false,
            },
        }))
    }

    /// The variable naming the one topology set, if any: two are an error,
    /// and so are Sentinel's settings without the other half of Sentinel.
    fn topology(&self) -> Result<Option<&'static str>, StartupError> {
        let topologies = [
            ("REDIS_URL", self.redis_url.is_some()),
            ("REDIS_CLUSTER_NODES", self.redis_cluster_nodes.is_some()),
            ("REDIS_SENTINELS", self.redis_sentinels.is_some()),
        ];
        let set: Vec<&'static str> = (topologies.iter().filter(|(_, on)| *on))
            .map(|(var, _)| *var)
            .collect();
        if let [first, .., last] = set[..] {
            let (what, both) = match set.len() {
                2 => (format!("{first} and {last}"), "both are set"),
                _ => (format!("{first}, {} and {last}", set[1]), "all are set"),
            };
            return Err(StartupError::new(
                what,
                format!(
                    "{both}: choose one topology: REDIS_URL (one server), REDIS_CLUSTER_NODES \
                     (Redis Cluster), or REDIS_SENTINELS with REDIS_MASTER_NAME (Sentinel)"
                ),
            ));
        }
        if self.redis_sentinels.is_some() {
            if self.redis_master_name.is_none() {
                return Err(StartupError::new(
                    "REDIS_MASTER_NAME",
                    "is required with REDIS_SENTINELS: the name the sentinels monitor the \
                     master by",
                ));
            }
            return Ok(Some("REDIS_SENTINELS"));
        }
        let sentinel_only = [
            ("REDIS_MASTER_NAME", self.redis_master_name.is_some()),
            (
                "REDIS_MASTER_USERNAME",
                self.redis_master_username.is_some(),
            ),
            (
                "REDIS_MASTER_PASSWORD",
                self.redis_master_password.is_some(),
            ),
        ];
        if let Some((var, _)) = sentinel_only.iter().find(|(_, on)| *on) {
            let reason = match set.first() {
                Some(other) => format!(
                    "applies only with REDIS_SENTINELS, which is not set ({other} is, and its \
                     URLs carry their own credentials)"
                ),
                None => "is set but REDIS_SENTINELS is not: Sentinel needs both \
                         REDIS_SENTINELS and REDIS_MASTER_NAME"
                    .to_owned(),
            };
            return Err(StartupError::new(*var, reason));
        }
        Ok(set.first().copied())
    }

    /// Every Redis URL the variables hold: the topology's and `QUEUE_URL`'s.
    fn urls(&self) -> impl Iterator<Item = &str> {
        let one = self.redis_url.iter().map(|one| one.url.as_str());
        let lists = [&self.redis_cluster_nodes, &self.redis_sentinels];
        let listed = lists.into_iter().flatten().flat_map(|list| &list.urls);
        let queue = match &self.queue_url {
            Some(QueueUrl::Redis(queue)) => Some(queue.url.as_str()),
            _ => None,
        };
        one.chain(listed.map(String::as_str)).chain(queue)
    }

    /// Where telemetry goes: `QUEUE_URL` (one server, whatever holds the
    /// counters), else the queue of the Redis the variables name (database
    /// 0 of the server or master: the seed's layout, counters in one
    /// database and Celery's queue in database 0; or the same cluster),
    /// else nowhere (`None`).
    pub fn queue(&self, redis: Option<&Redis>) -> Result<Option<Queue>, StartupError> {
        Ok(match (&self.queue_url, redis) {
            (Some(QueueUrl::Off), _) | (None, None) => None,
            (Some(QueueUrl::Redis(queue)), _) => {
                let mut config = RedisConfig::from(&queue.url);
                if is_tls(&queue.url)
                    && let Some(files) = self.tls_files()?
                {
                    config = config.tls(files);
                }
                Some(Queue {
                    var: "QUEUE_URL",
                    config,
                    shown: queue.shown.clone(),
                    cluster: false,
                })
            }
            (None, Some(redis)) => Some(redis.queue.clone()),
        })
    }

    /// What the queue is handed (`QUEUE_FORMAT`, `CELERY_*`), and the prefix
    /// of its batch marks, for a queue in a Redis Cluster or not. The
    /// `CELERY_*` variables are refused with `QUEUE_FORMAT=raw`, which does
    /// not use them.
    pub fn hand_off(&self, cluster: bool) -> Result<(Format, String), StartupError> {
        let format = match self.queue_format {
            QueueFormat::Raw => {
                let celery = ["CELERY_QUEUE", "CELERY_TASK"];
                if let Some(var) = celery.into_iter().find(|var| self.given(var).is_some()) {
                    return Err(StartupError::new(
                        var,
                        "applies only with QUEUE_FORMAT=celery, and QUEUE_FORMAT is raw",
                    ));
                }
                Format::Raw
            }
            QueueFormat::Celery => {
                Format::Celery(CeleryTask::new(&self.celery_queue, &self.celery_task))
            }
        };
        let var = match format {
            Format::Raw => "QUEUE_FORMAT",
            Format::Celery(_) => "CELERY_QUEUE",
        };
        let prefix =
            mark_prefix(format.list(), cluster).map_err(|reason| StartupError::new(var, reason))?;
        Ok((format, prefix))
    }

    /// `REDIS_TLS_*` as the library takes them, checked for a certificate
    /// without its key (or the reverse) and for the `tls` feature.
    fn tls_files(&self) -> Result<Option<TlsFiles>, StartupError> {
        let (ca, cert, key) = (
            &self.redis_tls_ca,
            &self.redis_tls_cert,
            &self.redis_tls_key,
        );
        if ca.is_none() && cert.is_none() && key.is_none() {
            return Ok(None);
        }
        if !cfg!(feature = "tls") {
            return Err(StartupError::new(
                self.tls_vars(),
                "TLS needs the crate's `tls` feature: cargo run --features tls --example edr",
            ));
        }
        let mut files = TlsFiles::default();
        files.ca = ca.clone();
        match (cert, key) {
            (Some(cert), Some(key)) => files = files.client_cert(cert, key),
            (Some(_), None) => {
                return Err(StartupError::new(
                    "REDIS_TLS_KEY",
                    "is required with REDIS_TLS_CERT: the client certificate's private key",
                ));
            }
            (None, Some(_)) => {
                return Err(StartupError::new(
                    "REDIS_TLS_CERT",
                    "is required with REDIS_TLS_KEY: the client certificate of that key",
                ));
            }
            (None, None) => {}
        }
        Ok(Some(files))
    }

    /// The TLS variables that are set, as `REDIS_TLS_CA, REDIS_TLS_KEY`.
    fn tls_vars(&self) -> String {
        let vars = [
            ("REDIS_TLS_CA", self.redis_tls_ca.is_some()),
            ("REDIS_TLS_CERT", self.redis_tls_cert.is_some()),
            ("REDIS_TLS_KEY", self.redis_tls_key.is_some()),
        ];
        let set: Vec<&str> = (vars.iter().filter(|(_, on)| *on))
            .map(|(var, _)| *var)
            .collect();
        set.join(", ")
    }

    /// The library's error about the Redis that `var` names (shown as
    /// `shown`), naming the variable behind the setting at fault: an
    /// `Error::Config` by its field, anything else (Redis unreachable, a
    /// user without the scripts' permissions) by `var`.
    pub fn redis_error(&self, var: &'static str, shown: &str, err: Error) -> StartupError {
        let field = match &err {
            Error::Config { field, .. } => field.as_str(),
            _ => return StartupError::new(var, format!("{shown}: {err}")),
        };
        let named = REDIS_VARIABLES.iter().find(|(f, _)| *f == field);
        let what = match named {
            Some((_, named)) => (*named).to_owned(),
            None if field == "redis.tls" && !self.tls_vars().is_empty() => self.tls_vars(),
            None => var.to_owned(),
        };
        StartupError::new(what, format!("{shown}: {err}"))
    }

    /// `err` without any password the variables hold, in whatever form a
    /// message may quote it: a last line of defence, as URLs are shown
    /// redacted and the library's messages name no password.
    pub fn scrub(&self, err: StartupError) -> StartupError {
        let mut secrets: Vec<String> = self.urls().flat_map(passwords).collect();
        secrets.extend(self.redis_master_password.clone());
        secrets.extend(
            self.telemetry_exempt_tokens
                .iter()
                .flat_map(|t| t.0.clone()),
        );
        secrets.retain(|secret| !secret.is_empty());
        // The longest first, so that no part of one is left behind.
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        let scrub = |text: String| {
            (secrets.iter()).fold(text, |text, secret| text.replace(secret.as_str(), "***"))
        };
        StartupError {
            what: scrub(err.what),
            reason: scrub(err.reason),
        }
    }
}

/// The password in `url`, as written (percent-encoded) and as sent.
fn passwords(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(parsed) = redis::parse_redis_url(url) {
        found.extend(parsed.password().map(str::to_owned));
    }
    if let Ok(info) = url.into_connection_info() {
        found.extend(info.redis_settings().password().map(str::to_owned));
    }
    found
}

/// A URL the library connects to with TLS.
fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://")
}

/// `url` naming database `db` instead of its own: the path of a TCP URL,
/// the `db` parameter of a Unix socket's. `None` for a URL redis-rs cannot
/// read (the parsers refuse those).
fn with_db(url: &str, db: i64) -> Option<String> {
    let mut parsed = redis::parse_redis_url(url)?;
    if matches!(parsed.scheme(), "redis" | "rediss" | "valkey" | "valkeys") {
        parsed.set_path(&format!("/{db}"));
    } else {
        let others: Vec<(String, String)> = (parsed.query_pairs())
            .filter(|(name, _)| name != "db")
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        parsed
            .query_pairs_mut()
            .clear()
            .extend_pairs(others)
            .append_pair("db", &db.to_string());
    }
    Some(parsed.to_string())
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

/// `block`, `annotate` or `shadow`.
fn mode(text: &str) -> Result<Mode, String> {
    match text.trim() {
        text if text.eq_ignore_ascii_case("block") => Ok(Mode::Block),
        text if text.eq_ignore_ascii_case("annotate") => Ok(Mode::Annotate),
        text if text.eq_ignore_ascii_case("shadow") => Ok(Mode::Shadow),
        text => Err(format!(
            "{text:?} is not a mode: use block, annotate or shadow"
        )),
    }
}

/// Comma-separated tokens, each trimmed, none empty. The message never
/// quotes the value: the tokens are secrets.
fn token_list(text: &str) -> Result<Tokens, String> {
    let tokens: Vec<String> = text.split(',').map(|t| t.trim().to_owned()).collect();
    if let Some(at) = tokens.iter().position(String::is_empty) {
        return Err(format!(
            "entry {} of {} is empty: give comma-separated agent tokens, none empty (the \
             value is not shown: it holds secrets)",
            at + 1,
            tokens.len()
        ));
    }
    Ok(Tokens(tokens))
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

/// `TELEMETRY_LEASE`'s value: a slice size, or `off`.
#[derive(Clone, Copy, Debug)]
pub struct LeaseSlice(pub Option<NonZeroU64>);

fn lease_slice(text: &str) -> Result<LeaseSlice, String> {
    match text.trim() {
        text if text.eq_ignore_ascii_case("off") => Ok(LeaseSlice(None)),
        text => at_least_one(text)
            .map(|n| LeaseSlice(Some(n)))
            .map_err(|e| format!("{e} (or off)")),
    }
}

impl Env {
    /// The largest telemetry slice, if telemetry leases.
    pub fn telemetry_lease(&self) -> Option<NonZeroU64> {
        self.telemetry_lease.and_then(|lease| lease.0)
    }
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

fn file_path(text: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(text.trim()))
}

fn redis_url(text: &str) -> Result<RedisTarget, String> {
    let url = text.trim().to_owned();
    connection_info(&url)?;
    Ok(RedisTarget {
        shown: redact(&url),
        url,
    })
}

/// Comma-separated Redis URLs (blank items skipped), each checked, none
/// naming a database but 0: `why_not(db)` says why.
fn url_list(text: &str, why_not: fn(i64) -> String) -> Result<UrlList, String> {
    let mut urls = Vec::new();
    for url in text.split(',').map(str::trim).filter(|url| !url.is_empty()) {
        let db = connection_info(url)?.redis_settings().db();
        if db != 0 {
            return Err(format!("{:?}: {}", redact(url), why_not(db)));
        }
        urls.push(url.to_owned());
    }
    if urls.is_empty() {
        return Err(format!("{text:?} names no URL"));
    }
    let shown: Vec<String> = urls.iter().map(|url| redact(url)).collect();
    Ok(UrlList {
        shown: shown.join(", "),
        urls,
    })
}

fn cluster_nodes(text: &str) -> Result<UrlList, String> {
    url_list(text, |db| {
        format!(
            "a cluster has only database 0, so drop the /{db}: counters (`rl:…`) and the \
             queue (the list, `{DEFAULT_QUEUE}` or `{RAW_QUEUE_KEY}`, and its marks \
             `{{{DEFAULT_QUEUE}}}:batch:…`) are separated by key prefix instead"
        )
    })
}

fn sentinel_urls(text: &str) -> Result<UrlList, String> {
    url_list(text, |db| {
        format!(
            "a sentinel has no database to choose, so drop the /{db}: counters go to database \
             {SENTINEL_COUNTERS_DB} of the master, the queue to database 0"
        )
    })
}

fn queue_url(text: &str) -> Result<QueueUrl, String> {
    match text.trim() {
        text if text.eq_ignore_ascii_case("off") => Ok(QueueUrl::Off),
        url => redis_url(url).map(QueueUrl::Redis),
    }
}

/// `raw` or `celery`.
fn queue_format(text: &str) -> Result<QueueFormat, String> {
    match text.trim() {
        text if text.eq_ignore_ascii_case("raw") => Ok(QueueFormat::Raw),
        text if text.eq_ignore_ascii_case("celery") => Ok(QueueFormat::Celery),
        text => Err(format!("{text:?} is neither raw nor celery")),
    }
}

/// A Celery queue or task name: no spaces or control characters.
fn celery_name(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{text:?} is not a name: it has spaces or control characters"
        ));
    }
    Ok(text.to_owned())
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
    if is_tls(url) && !cfg!(feature = "tls") {
        return Err(format!(
            "{:?}: TLS needs the crate's `tls` feature: cargo run --features tls --example edr",
            redact(url)
        ));
    }
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
