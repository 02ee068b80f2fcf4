//! A small closed-loop HTTP load generator for the EDR example, for loopback
//! targets only.
//!
//! `concurrency` workers each send one request at a time (optionally paced
//! to a total `--rate`) until `--duration` has passed or `--max-requests`
//! have been sent; requests in flight then finish, each bounded by
//! `--timeout-ms`, so the program always ends by itself, at most
//! `duration + timeout` after it started.
//!
//! Each request POSTs a batch, as the EDR example defines it (a JSON array
//! of event objects), to the target with an `X-Agent-Token` drawn from a
//! pool of `--tokens` agents, or, for a `--flood` fraction of requests, from
//! a single flooding agent. The batch holds one event; with `--event-count
//! MIN-MAX` it also sends `X-Event-Count` (uniform in the range) and as many
//! events in the body, since the example refuses a batch whose body and
//! header disagree.
//!
//! ```sh
//! cargo run --release --example loadgen -- \
//!     --url http://127.0.0.1:3000/api/v1/telemetry/ --concurrency 32 \
//!     --duration 60 --tokens 2000 --flood 0.1 --json /tmp/loadgen.json
//! ```
//!
//! Every option can also be given in the environment as `LOADGEN_` and its
//! name in capitals with `_` for `-` (`LOADGEN_SLOW_MS=300`); the command
//! line wins. `--help` lists them.
//!
//! What it measures, per request: the status, or why there was none
//! (`connect`, `timeout`, `closed`, `reset`, …), and the latency from
//! handing the request to the client (connection from the pool, or a new
//! one) until the last byte of the response body arrived.
//!
//! * **no answer**: a transport error, or no complete response within
//!   `--timeout-ms` (default 5 s: far beyond anything the limiter allows, so
//!   a request that takes it is hung, not slow).
//! * **answered after the timeout** (`slow`): a complete response whose
//!   latency exceeded `--slow-ms`, default 250 ms. The limiter bounds its
//!   store call by the policy timeout (100 ms by default); the rest of the
//!   budget (150 ms) covers everything else a request goes through on a
//!   loaded two-core machine: the load generator's and the server's
//!   scheduling, hashing the token, routing, the handler and the loopback
//!   socket, which together take well under a millisecond when nothing is
//!   wrong. A slow answer means the store call was not cut off at its
//!   timeout (or something else blocked the server), not that the limiter
//!   was a little late.
//!
//! Only loopback targets are accepted (`127.0.0.0/8`, `::1`, or `localhost`
//! when it resolves to loopback addresses only): this is a tool for
//! exercising a local server, not anybody else's.

use std::{
    collections::BTreeMap,
    env,
    net::IpAddr,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, Uri,
    body::Bytes,
    header::{CONTENT_TYPE, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::json;

const DEFAULT_URL: &str = "http://127.0.0.1:3000/api/v1/telemetry/";
/// At most this many requests unless told otherwise: a bound even for a
/// mistyped duration.
const DEFAULT_MAX_REQUESTS: u64 = 100_000_000;
const FLOOD_TOKEN: &str = "loadgen-flood";

const HELP: &str = "\
loadgen: closed-loop POST load against a loopback HTTP target

options (each also as LOADGEN_<NAME>, e.g. LOADGEN_SLOW_MS=300):
  --url URL              target, loopback only [http://127.0.0.1:3000/api/v1/telemetry/]
  --concurrency N        requests in flight [32]
  --duration SECS        how long to send [10]
  --max-requests N       stop after this many requests [100000000]
  --rate RPS             total requests per second at most; 0: as fast as answered [0]
  --tokens N             agents in the token pool [2000]
  --flood FRACTION       share of requests from one flooding agent, 0 to 1 [0.1]
  --event-count MIN-MAX  send X-Event-Count, uniform in MIN..=MAX (or N), at most
                         10000, and as many events [not sent: one event]
  --timeout-ms MS        a request not answered in this time counts as no answer [5000]
  --slow-ms MS           answers slower than this are counted as slow [250]
  --threads N            runtime worker threads of the load generator [1]
  --progress SECS        a progress line on stderr every SECS; 0: none [10]
  --seed N               random seed [from the clock]
  --json FILE            also write the summary as JSON to FILE
";

fn main() -> ExitCode {
    let options = match Options::parse(env::args().skip(1).collect()) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("loadgen: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("loadgen: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: {err}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- options

struct Options {
    url: Uri,
    concurrency: usize,
    duration: Duration,
    max_requests: u64,
    rate: f64,
    tokens: u64,
    flood: f64,
    event_count: Option<(u64, u64)>,
    timeout: Duration,
    slow: Duration,
    threads: usize,
    progress: Duration,
    seed: u64,
    json: Option<String>,
}

impl Options {
    /// `Ok(None)` for `--help`.
    fn parse(args: Vec<String>) -> Result<Option<Self>, String> {
        let mut given: BTreeMap<String, String> = BTreeMap::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(None);
            }
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?} (see --help)"));
            };
            let (name, value) = match name.split_once('=') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| format!("--{name} needs a value"))?;
                    (name.to_owned(), value)
                }
            };
            if !NAMES.contains(&name.as_str()) {
                return Err(format!("unknown option --{name} (see --help)"));
            }
            given.insert(name, value);
        }
        let get = |name: &str| -> Option<String> {
            given.get(name).cloned().or_else(|| {
                let var = format!("LOADGEN_{}", name.to_uppercase().replace('-', "_"));
                env::var(var).ok().filter(|v| !v.trim().is_empty())
            })
        };

        let url_text = get("url").unwrap_or_else(|| DEFAULT_URL.to_owned());
        let url = loopback_url(&url_text)?;
        let event_count = match get("event-count") {
            None => None,
            Some(text) => Some(parse_range(&text)?),
        };
        let seed = match get("seed") {
            Some(text) => number(&text, "seed", 0, u64::MAX)?,
            None => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                now.as_nanos() as u64 ^ u64::from(std::process::id())
            }
        };
        Ok(Some(Self {
            url,
            concurrency: number(&opt(&get, "concurrency", "32"), "concurrency", 1, 4096)? as usize,
            duration: seconds(&opt(&get, "duration", "10"), "duration", 86_400.0)?,
            max_requests: number(
                &opt(&get, "max-requests", &DEFAULT_MAX_REQUESTS.to_string()),
                "max-requests",
                1,
                u64::MAX,
            )?,
            rate: fraction_or_float(&opt(&get, "rate", "0"), "rate", 0.0, 10_000_000.0)?,
            tokens: number(&opt(&get, "tokens", "2000"), "tokens", 1, 100_000_000)?,
            flood: fraction_or_float(&opt(&get, "flood", "0.1"), "flood", 0.0, 1.0)?,
            event_count,
            timeout: Duration::from_millis(number(
                &opt(&get, "timeout-ms", "5000"),
                "timeout-ms",
                1,
                600_000,
            )?),
            slow: Duration::from_millis(number(
                &opt(&get, "slow-ms", "250"),
                "slow-ms",
                1,
                600_000,
            )?),
            threads: number(&opt(&get, "threads", "1"), "threads", 1, 64)? as usize,
            progress: seconds(&opt(&get, "progress", "10"), "progress", 86_400.0)?,
            seed,
            json: get("json"),
        }))
    }
}

const NAMES: &[&str] = &[
    "url",
    "concurrency",
    "duration",
    "max-requests",
    "rate",
    "tokens",
    "flood",
    "event-count",
    "timeout-ms",
    "slow-ms",
    "threads",
    "progress",
    "seed",
    "json",
];

fn opt(get: &dyn Fn(&str) -> Option<String>, name: &str, default: &str) -> String {
    get(name).unwrap_or_else(|| default.to_owned())
}

fn number(text: &str, name: &str, min: u64, max: u64) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "--{name}: {text:?} is not a whole number from {min} to {max}"
        )),
    }
}

fn fraction_or_float(text: &str, name: &str, min: f64, max: f64) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && (min..=max).contains(&x) => Ok(x),
        _ => Err(format!(
            "--{name}: {text:?} is not a number from {min} to {max}"
        )),
    }
}

fn seconds(text: &str, name: &str, max: f64) -> Result<Duration, String> {
    let secs = fraction_or_float(text.trim_end_matches('s'), name, 0.0, max)?;
    Ok(Duration::from_secs_f64(secs))
}

/// Most events in one batch: its body (about 70 bytes an event) stays under
/// the EDR example's 1 MiB.
const MAX_EVENTS: u64 = 10_000;

/// `MIN-MAX` or `N`.
fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let lo = number(lo, "event-count", 1, MAX_EVENTS)?;
    let hi = number(hi, "event-count", 1, MAX_EVENTS)?;
    if lo > hi {
        return Err(format!(
            "--event-count: {text:?}: the minimum exceeds the maximum"
        ));
    }
    Ok((lo, hi))
}

/// The target, if it is a plain-HTTP URL on this machine.
fn loopback_url(text: &str) -> Result<Uri, String> {
    let url: Uri = text
        .parse()
        .map_err(|e| format!("--url: {text:?} is not a URL: {e}"))?;
    if url.scheme_str() != Some("http") {
        return Err(format!(
            "--url: {text:?}: only http:// targets are supported"
        ));
    }
    let host = url
        .host()
        .ok_or_else(|| format!("--url: {text:?} has no host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ok = match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost") && localhost_is_loopback(),
    };
    if !ok {
        return Err(format!(
            "--url: {text:?}: refusing a target that is not on this machine \
             (allowed: 127.0.0.0/8, ::1, localhost)"
        ));
    }
    Ok(url)
}

/// Whether every address `localhost` resolves to is a loopback address.
fn localhost_is_loopback() -> bool {
    use std::net::ToSocketAddrs;
    match ("localhost", 80).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------- stats

/// Latencies in microseconds, to within 1/64 (about 1.6 %), in a fixed
/// number of buckets whatever the number of requests.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

const SUB_BUCKETS: u64 = 64;

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; Self::index(u64::MAX) + 1],
            total: 0,
            max_us: 0,
        }
    }

    /// Values below 128 µs exactly; above, 64 buckets per power of two.
    fn index(us: u64) -> usize {
        if us < 2 * SUB_BUCKETS {
            return us as usize;
        }
        let exponent = 63 - u64::from(us.leading_zeros()); // >= 7
        let shift = exponent - 6;
        let mantissa = us >> shift; // 64..128
        (2 * SUB_BUCKETS + (shift - 1) * SUB_BUCKETS + (mantissa - SUB_BUCKETS)) as usize
    }

    /// The largest value that falls in bucket `index`.
    fn upper(index: usize) -> u64 {
        let index = index as u64;
        if index < 2 * SUB_BUCKETS {
            return index;
        }
        let shift = (index - 2 * SUB_BUCKETS) / SUB_BUCKETS + 1;
        let mantissa = (index - 2 * SUB_BUCKETS) % SUB_BUCKETS + SUB_BUCKETS;
        let end = (u128::from(mantissa + 1) << shift) - 1;
        u64::try_from(end).unwrap_or(u64::MAX)
    }

    fn record(&mut self, us: u64) {
        self.counts[Self::index(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// The value at quantile `q`, rounded up to its bucket's upper end (and
    /// never above the maximum seen).
    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::upper(index).min(self.max_us);
            }
        }
        self.max_us
    }
}

#[derive(Clone)]
struct Stats {
    sent: u64,
    status: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    /// Answers (any status) only: a request without one has no latency.
    latency: Histogram,
    slow: u64,
    slow_by_status: BTreeMap<u16, u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            sent: 0,
            status: BTreeMap::new(),
            errors: BTreeMap::new(),
            latency: Histogram::new(),
            slow: 0,
            slow_by_status: BTreeMap::new(),
        }
    }

    fn record(&mut self, outcome: &Outcome, slow: Duration) {
        self.sent += 1;
        match *outcome {
            Outcome::Answered { status, latency } => {
                *self.status.entry(status).or_default() += 1;
                self.latency.record(latency.as_micros() as u64);
                if latency > slow {
                    self.slow += 1;
                    *self.slow_by_status.entry(status).or_default() += 1;
                }
            }
            Outcome::Failed(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    fn answered(&self) -> u64 {
        self.status.values().sum()
    }

    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

enum Outcome {
    Answered { status: u16, latency: Duration },
    Failed(&'static str),
}

/// Everything the workers share.
struct Shared {
    client: Client<HttpConnector, Full<Bytes>>,
    options: Options,
    started: Instant,
    deadline: Instant,
    /// Requests handed out so far (for `--max-requests`).
    issued: AtomicU64,
    /// Nanoseconds after `started` of the next send slot (for `--rate`).
    next_slot_ns: AtomicU64,
    stop: AtomicBool,
    /// Everything, and since the last progress line.
    totals: Mutex<(Stats, Stats)>,
}

// ---------------------------------------------------------------- run

async fn run(options: Options) -> Result<(), String> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(options.timeout));
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(options.concurrency)
        .build(connector);
    let started = Instant::now();
    let shared = Arc::new(Shared {
        client,
        deadline: started + options.duration,
        started,
        issued: AtomicU64::new(0),
        next_slot_ns: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        totals: Mutex::new((Stats::new(), Stats::new())),
        options,
    });
    let o = &shared.options;
    eprintln!(
        "loadgen: POST {} for {:?}, {} in flight{}, {} tokens, {:.0} % from one flooding \
         token{}, timeout {} ms, slow above {} ms",
        o.url,
        o.duration,
        o.concurrency,
        if o.rate > 0.0 {
            format!(" at most {} req/s", o.rate)
        } else {
            String::new()
        },
        o.tokens,
        o.flood * 100.0,
        match o.event_count {
            Some((lo, hi)) => format!(", X-Event-Count {lo}..={hi}"),
            None => String::new(),
        },
        o.timeout.as_millis(),
        o.slow.as_millis(),
    );

    // Ctrl-C or SIGTERM: stop sending, let requests in flight finish, report.
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            stopped().await;
            eprintln!("loadgen: interrupted; finishing requests in flight");
            shared.stop.store(true, Ordering::Relaxed);
        });
    }
    let progress = (!shared.options.progress.is_zero()).then(|| {
        let shared = shared.clone();
        tokio::spawn(async move { progress(&shared).await })
    });

    let workers: Vec<_> = (0..shared.options.concurrency)
        .map(|worker| {
            let shared = shared.clone();
            tokio::spawn(async move { work(&shared, worker as u64).await })
        })
        .collect();
    for result in futures::future::join_all(workers).await {
        if let Err(err) = result {
            return Err(format!("a worker failed: {err}"));
        }
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let elapsed = shared.started.elapsed();
    let totals = shared.totals.lock().map_err(|_| "poisoned")?.0.clone();
    let summary = summary(&shared.options, &totals, elapsed);
    print_summary(&shared.options, &totals, elapsed);
    if let Some(path) = &shared.options.json {
        let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("--json {path}: {e}"))?;
    }
    Ok(())
}

async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn work(shared: &Shared, worker: u64) {
    let o = &shared.options;
    let mut rng = Rng::new(o.seed ^ worker.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut body = String::with_capacity(256);
    loop {
        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= shared.deadline {
            return;
        }
        let n = shared.issued.fetch_add(1, Ordering::Relaxed);
        if n >= o.max_requests {
            return;
        }
        if o.rate > 0.0 {
            let interval = (1e9 / o.rate) as u64;
            let slot = shared.next_slot_ns.fetch_add(interval, Ordering::Relaxed);
            let at = shared.started + Duration::from_nanos(slot);
            if at >= shared.deadline {
                return;
            }
            tokio::time::sleep_until(at.into()).await;
        }

        let token = if rng.unit() < o.flood {
            FLOOD_TOKEN.to_owned()
        } else {
            format!("loadgen-agent-{}", rng.below(o.tokens))
        };
        let events = o.event_count.map(|(lo, hi)| lo + rng.below(hi - lo + 1));
        body.clear();
        body.push('[');
        for i in 0..events.unwrap_or(1) {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                "{{\"seq\":{n},\"i\":{i},\"kind\":\"process_start\",\"pid\":{}}}",
                rng.below(65_536)
            ));
        }
        body.push(']');

        let mut request = Request::builder()
            .method(Method::POST)
            .uri(o.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("X-Agent-Token", token);
        if let Some(events) = events {
            request = request.header("X-Event-Count", events);
        }
        let request = match request.body(Full::new(Bytes::from(body.clone()))) {
            Ok(request) => request,
            Err(_) => {
                record(shared, Outcome::Failed("request"));
                continue;
            }
        };
        let outcome = send(&shared.client, request, o.timeout).await;
        record(shared, outcome);
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Outcome {
    let start = Instant::now();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| client_error(&e))?;
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| hyper_error("body", &e))?;
        Ok::<u16, &'static str>(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) => Outcome::Answered {
            status,
            latency: start.elapsed(),
        },
        Ok(Err(kind)) => Outcome::Failed(kind),
        Err(_) => Outcome::Failed("timeout"),
    }
}

/// A short name for why a request got no answer.
fn client_error(err: &hyper_util::client::legacy::Error) -> &'static str {
    if err.is_connect() {
        return "connect";
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            return hyper_error("send", hyper);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io_error(io);
        }
        source = cause.source();
    }
    "other"
}

fn hyper_error(context: &'static str, err: &hyper::Error) -> &'static str {
    if err.is_incomplete_message() {
        return "incomplete";
    }
    if err.is_closed() || err.is_canceled() {
        return "closed";
    }
    if err.is_parse() || err.is_parse_status() {
        return "parse";
    }
    if err.is_timeout() {
        return "timeout";
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io_error(io);
        }
        source = cause.source();
    }
    context
}

fn io_error(err: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused => "connect",
        ConnectionReset | ConnectionAborted | BrokenPipe => "reset",
        TimedOut => "timeout",
        _ => "io",
    }
}

fn record(shared: &Shared, outcome: Outcome) {
    let slow = shared.options.slow;
    if let Ok(mut totals) = shared.totals.lock() {
        totals.0.record(&outcome, slow);
        totals.1.record(&outcome, slow);
    }
}

async fn progress(shared: &Shared) {
    let every = shared.options.progress;
    let mut tick = tokio::time::interval_at((Instant::now() + every).into(), every);
    loop {
        tick.tick().await;
        let interval = match shared.totals.lock() {
            Ok(mut totals) => std::mem::replace(&mut totals.1, Stats::new()),
            Err(_) => return,
        };
        eprintln!(
            "loadgen: t={:>4.0}s sent={:<6} {} errors={} slow={} p99={:.1}ms max={:.1}ms",
            shared.started.elapsed().as_secs_f64(),
            interval.sent,
            statuses(&interval.status),
            if interval.errors.is_empty() {
                "0".to_owned()
            } else {
                format!("{:?}", interval.errors)
            },
            interval.slow,
            ms(interval.latency.quantile(0.99)),
            ms(interval.latency.max_us),
        );
    }
}

// ---------------------------------------------------------------- report

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn statuses(status: &BTreeMap<u16, u64>) -> String {
    if status.is_empty() {
        return "(no answers)".to_owned();
    }
    let parts: Vec<String> = status.iter().map(|(s, n)| format!("{s}={n}")).collect();
    parts.join(" ")
}

fn summary(options: &Options, stats: &Stats, elapsed: Duration) -> serde_json::Value {
    let map = |m: &BTreeMap<u16, u64>| -> serde_json::Map<String, serde_json::Value> {
        m.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
    };
    let latency = &stats.latency;
    json!({
        "target": options.url.to_string(),
        "concurrency": options.concurrency,
        "duration_s": options.duration.as_secs_f64(),
        "rate_limit_rps": options.rate,
        "elapsed_s": elapsed.as_secs_f64(),
        "tokens": options.tokens,
        "flood_fraction": options.flood,
        "event_count": options.event_count.map(|(lo, hi)| json!([lo, hi])),
        "timeout_ms": options.timeout.as_millis() as u64,
        "slow_ms": options.slow.as_millis() as u64,
        "sent": stats.sent,
        "answered": stats.answered(),
        "status": map(&stats.status),
        "no_answer": stats.failed(),
        "errors": stats.errors,
        "slow": stats.slow,
        "slow_by_status": map(&stats.slow_by_status),
        "throughput_rps": stats.sent as f64 / elapsed.as_secs_f64().max(1e-9),
        "latency_ms": {
            "p50": ms(latency.quantile(0.50)),
            "p90": ms(latency.quantile(0.90)),
            "p99": ms(latency.quantile(0.99)),
            "p999": ms(latency.quantile(0.999)),
            "max": ms(latency.max_us),
        },
    })
}

fn print_summary(options: &Options, stats: &Stats, elapsed: Duration) {
    let latency = &stats.latency;
    println!("loadgen summary");
    println!("  target:            POST {}", options.url);
    println!(
        "  elapsed:           {:.1} s ({:.0} requests/s, {} in flight)",
        elapsed.as_secs_f64(),
        stats.sent as f64 / elapsed.as_secs_f64().max(1e-9),
        options.concurrency
    );
    println!("  requests sent:     {}", stats.sent);
    println!(
        "  answered:          {}{}",
        stats.answered(),
        if stats.status.is_empty() {
            String::new()
        } else {
            format!(" ({})", statuses(&stats.status))
        }
    );
    println!(
        "  no answer:         {}{}",
        stats.failed(),
        if stats.errors.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = (stats.errors.iter())
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            format!(" ({})", parts.join(" "))
        }
    );
    println!(
        "  latency:           p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms(latency.quantile(0.50)),
        ms(latency.quantile(0.90)),
        ms(latency.quantile(0.99)),
        ms(latency.quantile(0.999)),
        ms(latency.max_us),
    );
    println!(
        "  answered after {} ms: {}{}",
        options.slow.as_millis(),
        stats.slow,
        if stats.slow_by_status.is_empty() {
            String::new()
        } else {
            format!(" ({})", statuses(&stats.slow_by_status))
        }
    );
}

// ---------------------------------------------------------------- random

/// splitmix64: enough to pick tokens, with no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// In `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_hold_their_values_within_one_64th() {
        let mut last = 0;
        for us in (0..200_000u64).chain([1 << 40, u64::MAX / 2, u64::MAX]) {
            let index = Histogram::index(us);
            assert!(index >= last, "buckets are ordered");
            last = index;
            let upper = Histogram::upper(index);
            assert!(upper >= us, "{us} above its bucket's end {upper}");
            assert!(upper - us <= us / 64, "{us}: bucket too wide ({upper})");
        }
    }

    #[test]
    fn quantiles_round_up_to_the_bucket_and_never_exceed_the_maximum() {
        let mut h = Histogram::new();
        for us in 1..=1000 {
            h.record(us);
        }
        let p50 = h.quantile(0.5);
        assert!((500..=508).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), 1000);
        assert_eq!(Histogram::new().quantile(0.99), 0);
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
        assert_eq!(parse_range("3").unwrap(), (3, 3));
        assert_eq!(parse_range("1-4").unwrap(), (1, 4));
        assert!(parse_range("4-1").is_err());
        assert!(parse_range("0-2").is_err());
        assert!(parse_range("1-10001").is_err());
        assert!(parse_range("x").is_err());
    }

    #[test]
    fn random_picks_stay_in_range() {
        let mut rng = Rng::new(7);
        for _ in 0..10_000 {
            assert!(rng.below(3) < 3);
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
