//! Memory with a million distinct keys passing through: the memory store and
//! the block cache stay within their capacity. Prints the process's resident
//! memory (Linux `/proc/self/statm`) before and after, per configuration, each
//! in a fresh child process so the figures do not mix.
//!
//! Then, with criterion, `block_cache/flood_into_full_1m`: the time per new
//! key once a block cache of 1,000,000 is full, each request a denial of a
//! key never seen (an attacker's flood of random tokens). The store denies
//! every request at once, so the figure is the layer's and the cache's.
//!
//! ```text
//! cargo bench --bench memory            # the table, then the flood
//! cargo bench --bench memory -- flood   # the flood alone
//! ```

mod common;

use std::{future::Ready, process::Command, time::Duration};

use axum::{Router, body::Body, routing::post};
use axum_redis_ratelimit::{
    Algorithm, Decision, Error, Key, Limit, MemoryStore, Policy, Rate, RateLimitLayer,
    store::{Charge, Store},
};
use common::{check, current_thread};
use criterion::Criterion;
use http::Request;
use tower::ServiceExt;

const KEYS: usize = 1_000_000;

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

async fn memory_store(capacity: usize) -> String {
    let store = MemoryStore::with_capacity(capacity);
    let limits = [Limit::new(Rate::per_minute(10))];
    for i in 0..KEYS {
        let key = format!("rl:telemetry:{{x-agent-token:agent-{i}}}");
        store
            .check(check(&key, &limits, Algorithm::FixedWindow))
            .await
            .unwrap();
    }
    format!("{} counters held", store.len())
}

async fn block_cache(capacity: usize) -> String {
    // Limit 1 and three requests per key: the second is denied by the store
    // and remembered, the third answered from the block cache.
    let policy = Policy::new("telemetry")
        .rate(Rate::per_minute(1))
        .key(Key::header("x-agent-token"))
        .block_cache(capacity);
    let store = MemoryStore::with_capacity(1024);
    let layer = RateLimitLayer::new(policy, store).unwrap();
    let stats = layer.stats();
    let app = Router::new().route("/", post(|| async { "" })).layer(layer);
    for i in 0..KEYS {
        for _ in 0..3 {
            let request = Request::post("/")
                .header("x-agent-token", format!("agent-{i}"))
                .body(Body::empty())
                .unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
    }
    format!(
        "{} served from the block cache",
        stats.served_from_block_cache()
    )
}

/// Denies every request for an hour, without a round trip.
#[derive(Clone)]
struct DenyAll;

impl Store for DenyAll {
    type Future = Ready<Result<Decision, Error>>;

    fn check(&self, _: Charge<'_>) -> Self::Future {
        const HOUR: Duration = Duration::from_secs(3600);
        std::future::ready(Ok(Decision {
            allowed: false,
            limit: 1,
            window: HOUR,
            remaining: 0,
            reset_after: HOUR,
            retry_after: Some(HOUR),
        }))
    }

    type Refund = Ready<Result<(), Error>>;

    /// Nothing was counted, so nothing is given back.
    fn refund(&self, _: Charge<'_>) -> Self::Refund {
        std::future::ready(Ok(()))
    }
}

fn flood(c: &mut Criterion) {
    const CAPACITY: usize = 1_000_000;
    let runtime = current_thread();
    let policy = Policy::new("telemetry")
        .rate(Rate::per_hour(1))
        .key(Key::header("x-agent-token"))
        .block_cache(CAPACITY);
    let app = Router::new()
        .route("/", post(|| async { "" }))
        .layer(RateLimitLayer::new(policy, DenyAll).unwrap());
    let mut next = 0u64;
    let mut deny_new_key = || {
        next += 1;
        let request = Request::post("/")
            .header("x-agent-token", format!("agent-{next}"))
            .body(Body::empty())
            .unwrap();
        runtime.block_on(app.clone().oneshot(request)).unwrap()
    };
    for _ in 0..CAPACITY {
        deny_new_key();
    }
    c.bench_function("block_cache/flood_into_full_1m", |b| {
        b.iter(&mut deny_new_key)
    });
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let runtime = current_thread();
    match args.next().as_deref() {
        Some(case @ ("store-100k" | "store-1m" | "cache-100k")) => {
            let before = rss_mib();
            let held = runtime.block_on(async {
                match case {
                    "store-100k" => memory_store(100_000).await,
                    "store-1m" => memory_store(1_000_000).await,
                    _ => block_cache(100_000).await,
                }
            });
            println!(
                "| {case} | {KEYS} | {held} | {before:.0} MiB | {:.0} MiB |",
                rss_mib()
            );
        }
        None => {
            println!("| case | distinct keys | held | RSS before | RSS after |");
            println!("|---|---:|---|---:|---:|");
            let exe = std::env::current_exe().unwrap();
            for case in ["store-100k", "store-1m", "cache-100k"] {
                let out = Command::new(&exe).arg(case).output().unwrap();
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
            criterion(flood);
        }
        // Anything else is for criterion (a filter, an option's value).
        Some(_) => criterion(flood),
    }
}

fn criterion(bench: fn(&mut Criterion)) {
    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
