//! The conformance suite over TLS with a client certificate (mutual TLS).
#![cfg(feature = "tls")]

mod common;
#[path = "conformance/suite.rs"]
mod suite;

use std::sync::OnceLock;

use axum_redis_ratelimit::store::{RedisConfig, TlsFiles};
use common::topology::TlsRedis;

fn target() -> RedisConfig {
    static SERVER: OnceLock<TlsRedis> = OnceLock::new();
    let server = SERVER.get_or_init(TlsRedis::start);
    let files = TlsFiles::ca(server.ca_path())
        .client_cert(server.client_cert_path(), server.client_key_path());
    RedisConfig::from(server.url()).tls(files)
}
