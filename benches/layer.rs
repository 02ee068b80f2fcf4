//! The overhead of the layer: a trivial service called bare and wrapped by
//! `RateLimitLayer`.
//!
//! Group `layer`, ids:
//!
//! * `bare`: the service alone;
//! * `memory/allowed`: memory store, key from the `x-agent-token` header,
//!   cycling over a pool of tokens, never denied;
//! * `memory/allowed_secret`: the same with `Key::secret()`, which hashes the
//!   token (SHA-256) before it becomes part of the counter key;
//! * `memory/denied`: one token whose limit of 1 is spent, so every request
//!   is answered `429` by the layer itself;
//! * `redis/allowed`: as `memory/allowed` on the Redis store (a
//!   `redis-server` this bench starts, or `REDIS_URL`);
//! * `redis/denied`, `redis/denied_block_cache`: a flood from one spent
//!   token on the Redis store, without and with the block cache.
//!
//! Every iteration builds its `http::Request` (the same one in every case) and
//! calls a clone of the service with `oneshot`, so the differences between
//! ids are the layer's.
//!
//! ```text
//! cargo bench --bench layer
//! ```

mod common;

use std::{
    convert::Infallible,
    hint::black_box,
    sync::atomic::{AtomicUsize, Ordering},
};

use axum::{body::Body, response::Response};
use axum_redis_ratelimit::{
    Key, MemoryStore, Policy, Rate, RateLimitLayer, RedisStore, headers::RATELIMIT, store::Store,
};
use common::{RedisServer, config, runtime, unique_prefix};
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderValue, Method, Request, StatusCode};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt, service_fn};

/// Tokens the allowed cases cycle through.
const TOKENS: usize = 4096;

/// Nothing is ever denied (and within the bounds a policy accepts).
const UNLIMITED: Rate = Rate::per_minute(1_000_000_000);

/// One request per day: after the first, every request is denied.
const SPENT: Rate = Rate::per_day(1);

const HEADER: &str = "x-agent-token";

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// The innermost service: `200` with an empty body.
fn trivial() -> impl Service<Request<Body>, Response = Response, Error = Infallible> + Clone {
    service_fn(|_request: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    })
}

fn request(token: &HeaderValue) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("/api/v1/telemetry/")
        .header(HEADER, token.clone())
        .body(Body::empty())
        .expect("valid request")
}

fn policy(rate: Rate, key: Key) -> Policy {
    Policy::new("telemetry").rate(rate).key(key)
}

/// Benchmarks `service` under `id`; every response must have `status`, and
/// carry the `RateLimit` field when `limited` (a response without it was let
/// through because the store failed).
fn bench_service<S>(
    group: &mut Group<'_>,
    runtime: &Runtime,
    id: &str,
    service: S,
    tokens: &[HeaderValue],
    status: StatusCode,
    limited: bool,
) where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    let next = AtomicUsize::new(0);
    group.bench_function(id, |b| {
        b.to_async(runtime).iter(|| {
            let token = &tokens[next.fetch_add(1, Ordering::Relaxed) % tokens.len()];
            let response = service.clone().oneshot(request(token));
            async move {
                let response = response.await.unwrap_or_else(|e| match e {});
                assert_eq!(response.status(), status);
                assert_eq!(response.headers().contains_key(RATELIMIT), limited);
                black_box(response)
            }
        });
    });
}

/// Wraps the trivial service in a layer of `policy` over `store` and
/// benchmarks it; reports store failures, which would make the figures those
/// of the fail-open path.
#[allow(clippy::too_many_arguments)]
fn bench_layer<St: Store>(
    group: &mut Group<'_>,
    runtime: &Runtime,
    id: &str,
    policy: Policy,
    store: St,
    tokens: &[HeaderValue],
    status: StatusCode,
) {
    let layer = RateLimitLayer::new(policy, store).expect("valid policy");
    let stats = layer.stats();
    bench_service(
        group,
        runtime,
        id,
        layer.layer(trivial()),
        tokens,
        status,
        true,
    );
    assert_eq!(stats.store_errors(), 0, "{id}: the store failed");
}

/// Spends the limit of `token` under `policy` in `store`: one request, which
/// must be let through.
fn spend<St: Store>(runtime: &Runtime, policy: Policy, store: St, token: &HeaderValue) {
    let layer = RateLimitLayer::new(policy, store).expect("policy");
    let first = runtime
        .block_on(layer.layer(trivial()).oneshot(request(token)))
        .unwrap_or_else(|e| match e {});
    assert_eq!(first.status(), StatusCode::OK);
}

fn layer(c: &mut Criterion) {
    let runtime = runtime();
    // Unique per run, so a Redis given by REDIS_URL holds no old counters.
    let prefix = unique_prefix().replace(':', "-");
    let tokens: Vec<HeaderValue> = (0..TOKENS)
        .map(|i| HeaderValue::try_from(format!("AGENT-{prefix}{i}")).expect("header-safe"))
        .collect();
    let spent = [tokens[0].clone()];

    let mut group = c.benchmark_group("layer");
    group.throughput(Throughput::Elements(1));

    bench_service(
        &mut group,
        &runtime,
        "bare",
        trivial(),
        &tokens,
        StatusCode::OK,
        false,
    );

    let by_token = || Key::header(HEADER);
    bench_layer(
        &mut group,
        &runtime,
        "memory/allowed",
        policy(UNLIMITED, by_token()),
        MemoryStore::new(),
        &tokens,
        StatusCode::OK,
    );
    bench_layer(
        &mut group,
        &runtime,
        "memory/allowed_secret",
        policy(UNLIMITED, by_token().secret()),
        MemoryStore::new(),
        &tokens,
        StatusCode::OK,
    );

    let store = MemoryStore::new();
    spend(
        &runtime,
        policy(SPENT, by_token()),
        store.clone(),
        &spent[0],
    );
    bench_layer(
        &mut group,
        &runtime,
        "memory/denied",
        policy(SPENT, by_token()),
        store,
        &spent,
        StatusCode::TOO_MANY_REQUESTS,
    );

    let server = RedisServer::shared();
    let redis = runtime
        .block_on(RedisStore::connect(server.url()))
        .expect("connect to the bench's redis-server");
    bench_layer(
        &mut group,
        &runtime,
        "redis/allowed",
        policy(UNLIMITED, by_token()).prefix(format!("rl-{prefix}:")),
        redis.clone(),
        &tokens,
        StatusCode::OK,
    );
    // A flood from one spent token, with and without the block cache.
    for (id, block_cache) in [("redis/denied", false), ("redis/denied_block_cache", true)] {
        let mut spent_policy =
            policy(SPENT, by_token()).prefix(format!("rl-{prefix}-{block_cache}:"));
        if block_cache {
            spent_policy = spent_policy.block_cache(1000);
        }
        spend(&runtime, spent_policy.clone(), redis.clone(), &spent[0]);
        bench_layer(
            &mut group,
            &runtime,
            id,
            spent_policy,
            redis.clone(),
            &spent,
            StatusCode::TOO_MANY_REQUESTS,
        );
    }

    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = layer
}
criterion_main!(benches);
