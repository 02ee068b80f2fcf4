//! The tower middleware: [`RateLimitLayer`] and the [`RateLimit`] service.
//!
//! For each request the layer extracts the policy's key, asks the store in
//! one round trip, and then forwards the request (adding the `RateLimit`
//! headers to the response), answers `429` with `Retry-After`, or, in
//! [`Mode::Annotate`](crate::Mode::Annotate), forwards it with the decision
//! in its extensions. A store that fails or exceeds the policy's timeout
//! triggers the policy's [`FailMode`](crate::FailMode).
//!
//! Any tower service over `http::Request<B>` can be wrapped, axum's or not
//! (a hyper `service_fn`, a tonic server), as long as its responses are
//! `http::Response<R>` with an [`http_body::Body`] `R` of `Bytes` (or
//! anything else axum's `IntoResponse` takes). The layer answers with
//! `http::Response<axum::body::Body>`, which boxes the inner service's body
//! unchanged, trailers included (`tests/any_service.rs`).
//!
//! [`http_body::Body`]: https://docs.rs/http-body/1/http_body/trait.Body.html
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::post};
//! use axum_redis_ratelimit::{Key, MemoryStore, Policy, Rate, RateLimitLayer};
//!
//! # fn app() -> Result<Router, axum_redis_ratelimit::Error> {
//! let store = MemoryStore::new(); // or RedisStore::connect(url).await?
//! let telemetry = RateLimitLayer::new(
//!     Policy::new("telemetry")
//!         .rate(Rate::per_minute(1000))
//!         .key(Key::header("X-Agent-Token").secret()),
//!     store,
//! )?;
//! let app = Router::new()
//!     .route("/api/v1/telemetry/", post(|| async { "queued" }))
//!     .route_layer(telemetry);
//! # Ok(app) }
//! # app().unwrap();
//! ```

mod breaker;
mod future;
mod service;
mod state;
mod stats;

pub use self::{
    future::ResponseFuture,
    service::{RateLimit, RateLimitLayer},
    stats::Stats,
};
