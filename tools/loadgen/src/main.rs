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
//! cargo run --release -p loadgen -- \
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

mod options;
mod report;

use std::{
    fmt::Write as _,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request,
    body::Bytes,
    header::{CONTENT_TYPE, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rand::{RngExt, SeedableRng, rngs::SmallRng};

use crate::{
    options::Options,
    report::{Outcome, Stats},
};

const FLOOD_TOKEN: &str = "loadgen-flood";

fn main() -> ExitCode {
    // Bad options: clap's message and exit code 2; `--help`: exit code 0.
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads as usize)
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

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Everything the workers share.
struct Shared {
    client: HttpClient,
    options: Options,
    /// Each worker's random generator is seeded from this and its number.
    seed: u64,
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

async fn run(options: Options) -> Result<(), String> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(options.timeout));
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(options.concurrency as usize)
        .build(connector);
    let started = Instant::now();
    let shared = Arc::new(Shared {
        client,
        seed: options.seed.unwrap_or_else(rand::random),
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
    let progress = (!o.progress.is_zero()).then(|| {
        let shared = shared.clone();
        tokio::spawn(async move { progress(&shared).await })
    });

    let workers: Vec<_> = (0..o.concurrency)
        .map(|worker| {
            let shared = shared.clone();
            tokio::spawn(async move { work(&shared, worker).await })
        })
        .collect();
    for worker in workers {
        worker
            .await
            .map_err(|err| format!("a worker failed: {err}"))?;
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let elapsed = shared.started.elapsed();
    let totals = shared.totals.lock().map_err(|_| "poisoned")?.0.clone();
    totals.print(o, elapsed);
    if let Some(path) = &o.json {
        let text =
            serde_json::to_string_pretty(&totals.json(o, elapsed)).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Returns on Ctrl-C, or SIGTERM where there is one.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn work(shared: &Shared, worker: u64) {
    let o = &shared.options;
    let mut rng = SmallRng::seed_from_u64(shared.seed.wrapping_add(worker));
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

        let token = if rng.random_bool(o.flood) {
            FLOOD_TOKEN.to_owned()
        } else {
            format!("loadgen-agent-{}", rng.random_range(0..o.tokens))
        };
        let events = o.event_count.map(|(lo, hi)| rng.random_range(lo..=hi));
        body.clear();
        body.push('[');
        for i in 0..events.unwrap_or(1) {
            if i > 0 {
                body.push(',');
            }
            let pid = rng.random_range(0..65_536);
            let _ = write!(
                body,
                "{{\"seq\":{n},\"i\":{i},\"kind\":\"process_start\",\"pid\":{pid}}}"
            );
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
        let outcome = match request.body(Full::new(Bytes::from(body.clone()))) {
            Ok(request) => send(&shared.client, request, o.timeout).await,
            Err(_) => Outcome::Failed("request"),
        };
        if let Ok(mut totals) = shared.totals.lock() {
            totals.0.record(&outcome, o.slow);
            totals.1.record(&outcome, o.slow);
        }
    }
}

async fn send(client: &HttpClient, request: Request<Full<Bytes>>, timeout: Duration) -> Outcome {
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

async fn progress(shared: &Shared) {
    let every = shared.options.progress;
    let mut tick = tokio::time::interval_at((Instant::now() + every).into(), every);
    loop {
        tick.tick().await;
        let interval = match shared.totals.lock() {
            Ok(mut totals) => std::mem::replace(&mut totals.1, Stats::new()),
            Err(_) => return,
        };
        eprintln!("{}", interval.progress_line(shared.started.elapsed()));
    }
}
