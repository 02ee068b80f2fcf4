//! The cost of one decision, `Store::check`, on each store.
//!
//! Group `decision`, ids `<store>/<algorithm>/<case>`:
//!
//! * `c1`: one check per iteration, over a pool of keys, all allowed;
//! * `c64`: 64 checks started together per iteration (`join_all`), so the
//!   Redis store pipelines them on its one multiplexed connection; the
//!   throughput criterion reports is per decision;
//! * `denied`: one key whose limit of 1 is spent, so every check is denied.
//!
//! The Redis store talks to a `redis-server` this bench starts on a free port
//! (the test harness's), or to `REDIS_URL` when set; keys carry a prefix of
//! their own, so nothing is flushed or shared.
//!
//! ```text
//! cargo bench --bench decision
//! ```

mod common;

use std::{
    hint::black_box,
    sync::atomic::{AtomicUsize, Ordering},
};

use axum_redis_ratelimit::{Algorithm, Limit, MemoryStore, Rate, RedisStore, store::Store};
use common::{RedisServer, check, config, runtime, unique_prefix};
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use futures::future::join_all;
use tokio::runtime::Runtime;

/// Keys the allowed cases cycle through: enough that the counters are
/// spread over the memory store's shards and Redis's keyspace, few enough
/// that they all stay live (the steady state of a busy API).
const KEYS: usize = 4096;

/// Checks started together in the concurrent case.
const CONCURRENCY: usize = 64;

/// Nothing is ever denied, and `limit × window` stays within the range a
/// policy accepts (both stores compute exactly below 2^53).
const UNLIMITED: [Limit; 1] = [Limit::new(Rate::per_minute(1_000_000_000))];

/// One request per day: after the first check, every check is denied.
const SPENT: [Limit; 1] = [Limit::new(Rate::per_day(1))];

const ALGORITHMS: [(Algorithm, &str); 3] = [
    (Algorithm::FixedWindow, "fixed_window"),
    (Algorithm::SlidingWindow, "sliding_window"),
    (Algorithm::Gcra, "gcra"),
];

/// The `c1`, `c64` and `denied` cases of one store and algorithm.
fn bench_store<St: Store>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &Runtime,
    store_name: &str,
    store: &St,
    (algorithm, algorithm_name): (Algorithm, &str),
) {
    let name = format!("{store_name}/{algorithm_name}");
    let check = |key, limits| check(key, limits, algorithm);
    let prefix = unique_prefix();
    let keys: Vec<String> = (0..KEYS)
        .map(|i| format!("{prefix}bench:{{k{i}}}"))
        .collect();
    let next = AtomicUsize::new(0);

    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("{name}/c1"), |b| {
        b.to_async(runtime).iter(|| {
            let i = next.fetch_add(1, Ordering::Relaxed) % KEYS;
            let decision = store.check(check(&keys[i], &UNLIMITED));
            async move {
                let decision = decision.await.expect("store failed");
                assert!(decision.allowed);
                black_box(decision)
            }
        });
    });

    group.throughput(Throughput::Elements(CONCURRENCY as u64));
    group.bench_function(format!("{name}/c{CONCURRENCY}"), |b| {
        b.to_async(runtime).iter(|| {
            let base = next.fetch_add(CONCURRENCY, Ordering::Relaxed);
            let checks = join_all(
                (base..base + CONCURRENCY).map(|i| store.check(check(&keys[i % KEYS], &UNLIMITED))),
            );
            async move {
                for decision in checks.await {
                    assert!(decision.expect("store failed").allowed);
                }
            }
        });
    });

    let spent = format!("{prefix}bench:{{spent}}");
    runtime.block_on(async {
        assert!(store.check(check(&spent, &SPENT)).await.unwrap().allowed);
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("{name}/denied"), |b| {
        b.to_async(runtime).iter(|| {
            let decision = store.check(check(&spent, &SPENT));
            async move {
                let decision = decision.await.expect("store failed");
                assert!(!decision.allowed);
                black_box(decision)
            }
        });
    });
}

fn decision(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("decision");

    let server = RedisServer::shared();
    let redis = runtime
        .block_on(RedisStore::connect(server.url()))
        .expect("connect to the bench's redis-server");
    // Side by side per algorithm, so that ratios come from one run.
    for algorithm in ALGORITHMS {
        bench_store(
            &mut group,
            &runtime,
            "memory",
            &MemoryStore::new(),
            algorithm,
        );
        bench_store(&mut group, &runtime, "redis", &redis, algorithm);
    }

    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = decision
}
criterion_main!(benches);
