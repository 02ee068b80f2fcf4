//! Rate limiting for axum and tower services, with counters in Redis.
//!
//! A [`RateLimitLayer`] extracts a [`Key`] from each request (an agent
//! token, the client IP, the user…), asks a [`Store`](store::Store) in one
//! atomic round trip whether that key is within its [`Rate`], and either
//! forwards the request or answers `429 Too Many Requests` with
//! `Retry-After`. With [`RedisStore`] the counters are shared by every app
//! server, survive their restarts and expire by themselves; [`MemoryStore`]
//! keeps them in the process for a single instance or development.
//!
//! ```
//! use axum::{Router, routing::get};
//! use axum_redis_ratelimit::{Key, MemoryStore, Policy, RateLimitLayer};
//!
//! # fn main() -> Result<(), axum_redis_ratelimit::Error> {
//! let dashboard = Policy::new("dashboard")
//!     .rate("60/m".parse()?)
//!     .key(Key::user().or(Key::client_ip()));
//! let app: Router = Router::new()
//!     .route("/api/v1/dashboard/", get(|| async { "ok" }))
//!     .layer(RateLimitLayer::new(dashboard, MemoryStore::new())?);
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! - `cluster` (default): [`RedisConfig::cluster`](store::RedisConfig::cluster),
//!   Redis Cluster.
//! - `sentinel` (default): [`RedisConfig::sentinel`](store::RedisConfig::sentinel),
//!   the master a set of Sentinels names, followed through failovers.
//! - `tls`: `rediss://` and [`TlsFiles`](store::TlsFiles) (rustls with ring).
//! - `metrics` (default): the layer's figures for the
//!   [`metrics`](https://docs.rs/metrics) facade (see [`metrics`](mod@metrics)).
//!
//! No item is missing without a feature: a configuration that needs one
//! fails at startup saying which, so code and configuration files stay the
//! same whatever the build.
//!
//! The modules, each one concept, in the order a request meets them:
//! [`config`] (a policy's settings, from a file or the builder) and
//! [`policy`] (the builder and its checks); [`rate`] (what a rate is);
//! exemptions (requests let through uncounted, set on the policy);
//! [`key`] (whom to count, and the Redis key layout); [`cost`] (how much a
//! request counts); [`block_cache`] (denials answered in-process);
//! [`store`] (where counters live); [`lease`] (slices of a key's quota
//! decided in-process); [`algorithm`] (how to count, as a Lua
//! script and its in-memory twin); [`layer`] (the middleware: its state,
//! circuit breaker and counters); [`outcome`] (what became of a request,
//! and the log targets) and [`metrics`](mod@metrics) (the figures of it);
//! [`headers`] and [`response`] (what clients and handlers see); [`error`].

#![warn(missing_docs)]

pub mod algorithm;
pub mod block_cache;
pub mod config;
pub mod cost;
pub mod error;
mod exempt;
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
pub mod key;
pub mod layer;
pub mod lease;
pub mod metrics;
pub mod outcome;
pub mod policy;
pub mod rate;
pub mod response;
pub mod store;

pub use self::{
    algorithm::{Algorithm, Decision, Limit, LimitState},
    config::{Breaker, Clock, FailMode, Mode, OnMissingKey},
    cost::Cost,
    error::Error,
    key::{ClientIp, ForwardedHeader, Key, UserId},
    layer::{RateLimit, RateLimitLayer},
    outcome::Outcome,
    policy::Policy,
    rate::Rate,
    response::{RateLimitInfo, RateLimitStatus, Rejection},
    store::{MemoryStore, RedisStore},
};

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
