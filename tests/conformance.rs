//! The conformance suite (`tests/conformance/suite.rs`) on one Redis server.

mod common;
#[path = "conformance/suite.rs"]
mod suite;

use axum_redis_ratelimit::store::RedisConfig;

/// The shared server, or the user's `REDIS_URL`.
fn target() -> RedisConfig {
    RedisConfig::from(common::RedisServer::shared().url())
}
