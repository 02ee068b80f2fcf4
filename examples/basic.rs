//! The shortest complete program: one route, limited to 5 requests a minute
//! per client IP, with counters in memory, or in Redis when `REDIS_URL` is
//! set.
//!
//! ```sh
//! cargo run --example basic
//! # or, counters in Redis: REDIS_URL=redis://127.0.0.1:6379/1 cargo run --example basic
//! for i in 1 2 3 4 5 6; do curl -i http://127.0.0.1:3000/; done
//! ```
//!
//! Every answer carries `RateLimit-Policy` and `RateLimit` headers; the
//! sixth within a minute is `429 Too Many Requests` with `Retry-After`.

use std::net::SocketAddr;

use axum::{Router, routing::get};
use axum_redis_ratelimit::{Key, MemoryStore, Policy, Rate, RateLimitLayer, RedisStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policy = Policy::new("hello")
        .rate(Rate::per_minute(5))
        .key(Key::client_ip());

    let routes = Router::new().route("/", get(|| async { "hello\n" }));
    // The two stores are different types, so each arm builds its own layer.
    let app = match std::env::var("REDIS_URL") {
        Ok(url) => {
            let store = RedisStore::connect(&url).await?;
            routes.route_layer(RateLimitLayer::new(policy, store)?)
        }
        Err(_) => routes.route_layer(RateLimitLayer::new(policy, MemoryStore::new())?),
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    // The client-IP key reads the peer address from ConnectInfo.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await?;
    Ok(())
}
