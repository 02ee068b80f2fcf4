//! The command line; each option can also be given in the environment.

use std::{
    net::{IpAddr, ToSocketAddrs},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, builder::TypedValueParser, value_parser};
use hyper::Uri;

/// Most events in one batch: its body (about 70 bytes an event) stays under
/// the EDR example's 1 MiB.
const MAX_EVENTS: u64 = 10_000;

/// loadgen: closed-loop POST load against a loopback HTTP target.
///
/// Every option can also be given in the environment as LOADGEN_ and its
/// name in capitals with _ for - (LOADGEN_SLOW_MS=300); the command line
/// wins.
#[derive(Debug, Parser)]
#[command(name = "loadgen", args_override_self = true)]
pub struct Options {
    /// Target, loopback only (127.0.0.0/8, ::1, localhost)
    #[arg(long, env = "LOADGEN_URL", value_name = "URL",
          default_value = "http://127.0.0.1:3000/api/v1/telemetry/", value_parser = loopback_url)]
    pub url: Uri,

    /// Requests in flight
    #[arg(long, env = "LOADGEN_CONCURRENCY", value_name = "N", default_value_t = 32,
          value_parser = value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,

    /// How long to send, in seconds
    #[arg(long, env = "LOADGEN_DURATION", value_name = "SECS", default_value = "10",
          value_parser = seconds)]
    pub duration: Duration,

    /// Stop after this many requests: a bound even for a mistyped duration
    #[arg(long, env = "LOADGEN_MAX_REQUESTS", value_name = "N", default_value_t = 100_000_000,
          value_parser = value_parser!(u64).range(1..))]
    pub max_requests: u64,

    /// Total requests per second at most; 0: as fast as answered
    #[arg(long, env = "LOADGEN_RATE", value_name = "RPS", default_value_t = 0.0,
          value_parser = |text: &str| number_in(text, 0.0, 10_000_000.0))]
    pub rate: f64,

    /// Agents in the token pool
    #[arg(long, env = "LOADGEN_TOKENS", value_name = "N", default_value_t = 2000,
          value_parser = value_parser!(u64).range(1..=100_000_000))]
    pub tokens: u64,

    /// Share of requests from one flooding agent, 0 to 1
    #[arg(long, env = "LOADGEN_FLOOD", value_name = "FRACTION", default_value_t = 0.1,
          value_parser = |text: &str| number_in(text, 0.0, 1.0))]
    pub flood: f64,

    /// Send X-Event-Count, uniform in MIN..=MAX (or N), at most 10000, and
    /// as many events [default: not sent, one event]
    #[arg(long, env = "LOADGEN_EVENT_COUNT", value_name = "MIN-MAX", value_parser = event_range)]
    pub event_count: Option<(u64, u64)>,

    /// A request not answered in this many milliseconds counts as no answer
    #[arg(long = "timeout-ms", env = "LOADGEN_TIMEOUT_MS", value_name = "MS", default_value = "5000",
          value_parser = millis())]
    pub timeout: Duration,

    /// Answers slower than this many milliseconds are counted as slow
    #[arg(long = "slow-ms", env = "LOADGEN_SLOW_MS", value_name = "MS", default_value = "250",
          value_parser = millis())]
    pub slow: Duration,

    /// Runtime worker threads of the load generator
    #[arg(long, env = "LOADGEN_THREADS", value_name = "N", default_value_t = 1,
          value_parser = value_parser!(u64).range(1..=64))]
    pub threads: u64,

    /// A progress line on stderr every SECS; 0: none
    #[arg(long, env = "LOADGEN_PROGRESS", value_name = "SECS", default_value = "10",
          value_parser = seconds)]
    pub progress: Duration,

    /// Random seed [default: a random one]
    #[arg(long, env = "LOADGEN_SEED", value_name = "N")]
    pub seed: Option<u64>,

    /// Also write the summary as JSON to FILE
    #[arg(long, env = "LOADGEN_JSON", value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// A finite number from `min` to `max`.
fn number_in(text: &str, min: f64, max: f64) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if (min..=max).contains(&x) => Ok(x),
        _ => Err(format!("not a number from {min} to {max}")),
    }
}

/// Seconds, whole or not, with or without a trailing `s`; at most a day.
fn seconds(text: &str) -> Result<Duration, String> {
    number_in(text.trim_end_matches('s'), 0.0, 86_400.0).map(Duration::from_secs_f64)
}

/// Whole milliseconds, from 1 to 10 minutes.
fn millis() -> impl TypedValueParser<Value = Duration> {
    value_parser!(u64)
        .range(1..=600_000)
        .map(Duration::from_millis)
}

/// `MIN-MAX` or `N`.
fn event_range(text: &str) -> Result<(u64, u64), String> {
    let bound = |part: &str| match part.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_EVENTS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{part:?} is not a whole number from 1 to {MAX_EVENTS}"
        )),
    };
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let (lo, hi) = (bound(lo)?, bound(hi)?);
    if lo > hi {
        return Err("the minimum exceeds the maximum".to_owned());
    }
    Ok((lo, hi))
}

/// The target, if it is a plain-HTTP URL on this machine: this is a tool
/// for exercising a local server, not anybody else's.
fn loopback_url(text: &str) -> Result<Uri, String> {
    let url: Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme_str() != Some("http") {
        return Err("only http:// targets are supported".to_owned());
    }
    let host = url.host().ok_or("the URL has no host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ok = match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost") && localhost_is_loopback(),
    };
    if !ok {
        return Err("refusing a target that is not on this machine \
                    (allowed: 127.0.0.0/8, ::1, localhost)"
            .to_owned());
    }
    Ok(url)
}

/// Whether every address `localhost` resolves to is a loopback address.
fn localhost_is_loopback() -> bool {
    match ("localhost", 80).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Options::command().debug_assert();
    }

    #[test]
    fn options_parse_as_documented() {
        let o = Options::try_parse_from([
            "loadgen",
            "--url=http://[::1]:8080/x",
            "--duration",
            "1.5s",
            "--rate",
            "250",
            "--event-count",
            "1-4",
            "--timeout-ms",
            "100",
            "--timeout-ms",
            "200",
        ])
        .unwrap();
        assert_eq!(o.url, "http://[::1]:8080/x");
        assert_eq!(o.duration, Duration::from_millis(1500));
        assert_eq!(o.rate, 250.0);
        assert_eq!(o.event_count, Some((1, 4)));
        assert_eq!(o.timeout, Duration::from_millis(200), "the last one wins");
        for bad in [
            &["--concurrency", "0"][..],
            &["--flood", "1.5"],
            &["--rate", "NaN"],
            &["--duration", "86401"],
            &["--slow-ms", "0"],
            &["--nope", "1"],
        ] {
            let args = ["loadgen"].iter().chain(bad);
            assert!(Options::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "http://127.0.0.1:3000/api/v1/telemetry/",
            "http://127.1.2.3/",
            "http://[::1]:8080/x",
        ] {
            assert!(loopback_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/",
            "http://192.168.1.1:3000/",
            "http://example.com/",
            "http://[::2]/",
            "http://[::ffff:8.8.8.8]/",
            "http://0.0.0.0:3000/",
            "https://127.0.0.1/",
            "http://localhost.example.com/",
            "/relative",
        ] {
            assert!(loopback_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_count_ranges() {
        assert_eq!(event_range("3").unwrap(), (3, 3));
        assert_eq!(event_range("1-4").unwrap(), (1, 4));
        assert!(event_range("4-1").is_err());
        assert!(event_range("0-2").is_err());
        assert!(event_range("1-10001").is_err());
        assert!(event_range("x").is_err());
    }
}
