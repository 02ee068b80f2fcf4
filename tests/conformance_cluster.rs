//! The conformance suite on a Redis Cluster of 3 primaries and 3 replicas.
#![cfg(feature = "cluster")]

mod common;
#[path = "conformance/suite.rs"]
mod suite;

use axum_redis_ratelimit::store::RedisConfig;
use common::topology::RedisCluster;

fn target() -> RedisConfig {
    RedisConfig::cluster(RedisCluster::shared().seed_urls())
}
