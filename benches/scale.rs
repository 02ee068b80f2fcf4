//! Cost per decision as the work grows: distinct keys (10, 10k, 1M) and
//! limits per policy (1, 2, 4), on both stores. Flat lines are the goal.
//!
//! Group `scale`, ids `<store>/keys=<n>` (one limit) and
//! `<store>/limits=<n>` (10k keys); 64 decisions started together per
//! iteration, throughput per decision.
//!
//! ```text
//! cargo bench --bench scale
//! ```

mod common;

use std::{
    num::NonZeroU64,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use axum_redis_ratelimit::{Algorithm, Limit, MemoryStore, Rate, RedisStore, store::Store};
use common::{RedisServer, check, config, runtime, unique_prefix};
use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use futures::future::join_all;
use tokio::runtime::Runtime;

const CONCURRENCY: usize = 64;

/// Never denied, within the bounds a policy accepts.
fn limits(n: usize) -> Vec<Limit> {
    (1..=n as u64)
        .map(|minutes| {
            Limit::new(
                Rate::new(
                    NonZeroU64::new(1_000_000_000).unwrap(),
                    Duration::from_secs(60 * minutes),
                )
                .unwrap(),
            )
        })
        .collect()
}

fn bench<St: Store>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    id: &str,
    store: &St,
    keys: usize,
    limits: &[Limit],
) {
    let prefix = unique_prefix();
    let keys: Vec<String> = (0..keys).map(|i| format!("{prefix}{{k{i}}}")).collect();
    let next = AtomicUsize::new(0);
    group.bench_function(id, |b| {
        b.to_async(runtime).iter(|| {
            let base = next.fetch_add(CONCURRENCY, Ordering::Relaxed);
            let checks = (base..base + CONCURRENCY)
                .map(|i| store.check(check(&keys[i % keys.len()], limits, Algorithm::FixedWindow)));
            let decisions = join_all(checks);
            async move {
                for decision in decisions.await {
                    assert!(decision.expect("store failed").allowed);
                }
            }
        });
    });
}

fn scale(c: &mut Criterion) {
    let runtime = runtime();
    let redis = runtime
        .block_on(RedisStore::connect(RedisServer::shared().url()))
        .unwrap();
    let memory = MemoryStore::with_capacity(2_000_000);
    let mut group = c.benchmark_group("scale");
    group.throughput(Throughput::Elements(CONCURRENCY as u64));
    for keys in [10, 10_000, 1_000_000] {
        bench(
            &mut group,
            &runtime,
            &format!("memory/keys={keys}"),
            &memory,
            keys,
            &limits(1),
        );
        bench(
            &mut group,
            &runtime,
            &format!("redis/keys={keys}"),
            &redis,
            keys,
            &limits(1),
        );
    }
    for n in [1, 2, 4] {
        bench(
            &mut group,
            &runtime,
            &format!("memory/limits={n}"),
            &memory,
            10_000,
            &limits(n),
        );
        bench(
            &mut group,
            &runtime,
            &format!("redis/limits={n}"),
            &redis,
            10_000,
            &limits(n),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config().sample_size(30);
    targets = scale
}
criterion_main!(benches);
