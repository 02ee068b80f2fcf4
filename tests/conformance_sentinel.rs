//! The conformance suite on the master of a Sentinel set (a master, a
//! replica, three sentinels).
#![cfg(feature = "sentinel")]

mod common;
#[path = "conformance/suite.rs"]
mod suite;

use std::sync::OnceLock;

use axum_redis_ratelimit::store::RedisConfig;
use common::topology::RedisSentinels;

fn target() -> RedisConfig {
    static SENTINELS: OnceLock<RedisSentinels> = OnceLock::new();
    let set = SENTINELS.get_or_init(RedisSentinels::start);
    RedisConfig::sentinel(set.sentinel_urls(), set.master_name()).db(1)
}
