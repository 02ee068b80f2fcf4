//! `ratelimit`: the operators' tool for axum-redis-ratelimit. It reads the
//! application's policy file and the counters in Redis:
//!
//! - `inspect POLICY VALUE`: a client's limits (used, remaining, reset),
//!   the value encoded into its key exactly as the layer encodes it;
//! - `reset POLICY VALUE`: deletes that client's counters;
//! - `top POLICY`: the clients nearest their limits, by a bounded `SCAN`;
//! - `check`: checks the policy file as the application would at startup
//!   and prints the limits it defines.
//!
//! A table for people, `--json` for scripts. Exit codes: 0 done, 1 Redis
//! failed, 2 a usage or configuration error.
//!
//! Build it with `cargo install axum-redis-ratelimit --features cli`.

mod check;
mod client;
mod output;
mod policies;
mod top;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use axum_redis_ratelimit::{Error, RedisStore, store::RedisConfig};
use clap::{Args, Parser, Subcommand};

/// Inspect, reset and rank the counters of axum-redis-ratelimit policies,
/// and check policy files.
#[derive(Parser, Debug)]
#[command(name = "ratelimit", version, max_term_width = 100)]
struct Cli {
    /// The policy file the application reads: TOML `[[policies]]` tables.
    #[arg(long, short, env = "POLICY_FILE", value_name = "FILE", global = true)]
    policies: Option<PathBuf>,

    #[command(flatten)]
    redis: RedisArgs,

    /// One JSON document on standard output instead of a table.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

/// Where the counters are, for the commands that read Redis.
#[derive(Args, Debug)]
struct RedisArgs {
    /// One Redis server: `redis://[user:password@]host:port/db` (`rediss://` for
    /// TLS, with the crate's `tls` feature).
    #[arg(
        long,
        env = "REDIS_URL",
        value_name = "URL",
        global = true,
        hide_env_values = true
    )]
    redis: Option<String>,

    /// A TOML file of the crate's RedisConfig, for a Sentinel set
    /// (`sentinels`, `master_name`, `db`…), a Cluster (`cluster_nodes`) or
    /// TLS files; instead of --redis.
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "redis")]
    redis_config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A client's counters under a policy: each limit's used, remaining and reset.
    Inspect(ClientArgs),
    /// Deletes a client's counters under a policy, so its next request starts afresh.
    Reset {
        #[command(flatten)]
        client: ClientArgs,
        /// Show what would be reset, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The clients of a policy nearest their limits, found by a bounded SCAN.
    Top {
        /// The policy's name.
        policy: String,
        /// How many clients to show.
        #[arg(long, short = 'n', default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
        /// Stop after examining about this many keys (SCAN COUNT 1000 per
        /// call), so a large Redis is never walked whole.
        #[arg(long, default_value_t = 10_000, value_name = "KEYS", value_parser = clap::value_parser!(u64).range(1..))]
        scan_max: u64,
    },
    /// Checks the policy file as the application does at startup and prints
    /// the limits it defines.
    Check,
}

/// A client of a policy, by the raw value the layer reads from requests.
#[derive(Args, Debug)]
struct ClientArgs {
    /// The policy's name.
    policy: String,
    /// The client's raw key value: the header's value (an agent token…), the
    /// user id, or the client's IP address; none for a global key. Secret
    /// keys are hashed here as the layer hashes them.
    value: Option<OsString>,
    /// Which key of the policy's `or` chain the value is for, by label
    /// (`x-agent-token`, `ip`, `user`, `global`); default: the first.
    #[arg(long = "key", value_name = "LABEL")]
    key: Option<String>,
}

/// What went wrong, and so the exit code.
#[derive(Debug)]
enum Failure {
    /// A usage or configuration error: exit code 2.
    Usage(String),
    /// Redis failed or answered unexpectedly: exit code 1.
    Redis(String),
    /// A configuration error with a report for standard output (`check
    /// --json`): exit code 2.
    Rejected { stdout: String, message: String },
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        // The crate's messages name settings, never a URL or a password.
        match error.is_store_error() {
            true => Self::Redis(error.to_string()),
            false => Self::Usage(error.to_string()),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(message)) => {
            eprintln!("ratelimit: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Redis(message)) => {
            eprintln!("ratelimit: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Rejected { stdout, message }) => {
            print!("{stdout}");
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

/// Runs the command; its output, or why it failed.
async fn run(cli: Cli) -> Result<String, Failure> {
    let path = cli.policies.ok_or_else(|| {
        Failure::Usage("no policy file: give --policies FILE or set POLICY_FILE".into())
    })?;
    let file = policies::read(&path)?;
    let json = cli.json;
    match cli.command {
        Command::Check => check::run(&path, &file, json),
        Command::Inspect(args) => {
            let target = client::Target::new(&file, &args)?;
            let store = connect(&cli.redis).await?;
            client::inspect(&store, &target, json).await
        }
        Command::Reset { client, dry_run } => {
            let target = client::Target::new(&file, &client)?;
            let store = connect(&cli.redis).await?;
            client::reset(&store, &target, dry_run, json).await
        }
        Command::Top {
            policy,
            limit,
            scan_max,
        } => {
            let policy = policies::find(&file, &policy)?;
            let store = connect(&cli.redis).await?;
            top::run(&store, &policy, limit, scan_max, json).await
        }
    }
}

/// Connects to the Redis the flags name, checking that this user may run
/// the limiter's scripts.
async fn connect(args: &RedisArgs) -> Result<RedisStore, Failure> {
    let config = match (&args.redis, &args.redis_config) {
        (Some(url), _) => RedisConfig::from(url),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::Usage(format!("--redis-config: cannot read {path:?}: {e}"))
            })?;
            // toml's message alone: its excerpt of the file could show a password.
            toml::from_str(&text).map_err(|e: toml::de::Error| {
                Failure::Usage(format!(
                    "--redis-config: {path:?} is not a Redis configuration: {}",
                    e.message()
                ))
            })?
        }
        (None, None) => {
            return Err(Failure::Usage(
                "no Redis: give --redis URL, set REDIS_URL, or give --redis-config FILE".into(),
            ));
        }
    };
    Ok(RedisStore::connect(config).await?)
}
