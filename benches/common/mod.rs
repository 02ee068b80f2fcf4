//! What the benches share: the test harness (a `redis-server` of their own on
//! a free port, or `REDIS_URL`), their runtime and criterion's settings.
// Each bench uses a part of it.
#![allow(dead_code)]

#[path = "../../tests/common/mod.rs"]
mod harness;

use std::time::Duration;

use criterion::Criterion;
use tokio::runtime::Runtime;

// Under the names the tests use (`common::RedisServer`…).
pub use harness::*;

/// One runtime for every async bench, so that their figures compare: two
/// workers.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The settings the README's criterion figures were taken with; a bench
/// may change one.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}
