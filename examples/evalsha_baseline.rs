//! Bench-only code, not an example to copy: the least a careful user would
//! write by hand for a Redis rate limit, as the second baseline of
//! `scripts/loadbench.py` (variant `evalsha`). Issue 11 asks that the crate's
//! Redis store cost no more than this on the allowed path: it does more
//! (headers, several limits, healing, fallback), and should still not be
//! slower.
//!
//! The EDR example's telemetry route, `POST /api/v1/telemetry/` answering
//! `202 {"status":"accepted"}` (nothing is queued) once it has checked the
//! batch as the EDR example does (a JSON array holding exactly the events
//! its `X-Event-Count` declares, 1 without it; else 400), so that the two
//! servers differ in the limiter alone, behind an axum
//! middleware that makes one round trip per request: one `EVALSHA` (through
//! `redis::Script`, which loads the script on `NOSCRIPT`) on a
//! `ConnectionManager`, of the minimal fixed window in
//! `examples/minimal_baseline.lua`, the same file `scripts/redis_cost.sh`
//! measures as its baseline:
//!
//! ```text
//! count = INCRBY key <events>;  new key: PEXPIRE key <window ms>, ttl = window;  else ttl = PTTL key
//! count > limit: 429 with Retry-After = ttl + 1 ms rounded up to whole seconds
//! ```
//!
//! What makes it careful: the count and the expiry are atomic (concurrent
//! requests at the limit cannot all pass, no key is left without a TTL), the
//! window does not slide, `Retry-After` is never early, the key is the hex
//! SHA-256 of the `X-Agent-Token` (no two tokens share a key, and the
//! credential is not stored in clear), a token over 256 bytes is refused
//! with 400, none with 401, and a Redis error answers 503. What it lacks
//! against the crate: one limit only, no `RateLimit` headers, a key that
//! lost its TTL is not healed, denied requests are counted too (harmless in
//! a fixed window), no fallback or metrics.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/1 TELEMETRY_RATE=1000/m \
//!     cargo run --release --example evalsha_baseline
//! ```
//!
//! Environment: `LISTEN_ADDR` (`127.0.0.1:3000`), `REDIS_URL` (required),
//! `TELEMETRY_RATE` (`1000/m`: `N/unit` as the crate's `Rate` reads it).

use std::{fmt::Write as _, net::SocketAddr, process::ExitCode, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use axum_redis_ratelimit::Rate;
use redis::{Script, aio::ConnectionManager};
use serde::de::IgnoredAny;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Longest `X-Agent-Token` accepted; a longer one is refused with 400.
const MAX_TOKEN_BYTES: usize = 256;

/// A counter's key: this prefix and the hex SHA-256 of the agent token.
const KEY_PREFIX: &str = "evalsha:telemetry:";

struct Limiter {
    connection: ConnectionManager,
    script: Script,
    limit: u64,
    window_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("evalsha_baseline: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let listen: SocketAddr = var("LISTEN_ADDR")
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned())
        .parse()
        .map_err(|e| format!("LISTEN_ADDR: {e}"))?;
    let url = var("REDIS_URL").ok_or("REDIS_URL: required")?;
    let rate: Rate = var("TELEMETRY_RATE")
        .unwrap_or_else(|| "1000/m".to_owned())
        .parse()
        .map_err(|e| format!("TELEMETRY_RATE: {e}"))?;
    let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL: {e}"))?;
    let connection = ConnectionManager::new(client)
        .await
        .map_err(|e| format!("REDIS_URL: {e}"))?;
    let limiter = Arc::new(Limiter {
        connection,
        script: Script::new(include_str!("minimal_baseline.lua")),
        limit: rate.limit(),
        window_ms: u64::try_from(rate.window().as_millis())
            .map_err(|e| format!("TELEMETRY_RATE: {e}"))?,
    });

    let app = Router::new()
        .route(
            "/api/v1/telemetry/",
            post(telemetry).route_layer(middleware::from_fn_with_state(limiter, evalsha_limit)),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("LISTEN_ADDR: {listen}: {e}"))?;
    eprintln!("evalsha_baseline: listening on {listen}, {rate} per agent token");
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("server: {e}"))
}

async fn telemetry(headers: HeaderMap, body: Bytes) -> Response {
    let declared = declared_events(&headers);
    match serde_json::from_slice::<Vec<IgnoredAny>>(&body) {
        Ok(events) if Some(events.len() as u64) == declared => {
            (StatusCode::ACCEPTED, Json(json!({ "status": "accepted" }))).into_response()
        }
        _ => json_error(StatusCode::BAD_REQUEST, "bad batch"),
    }
}

/// The events a batch declares: `X-Event-Count`, a whole number from 1, or
/// 1 without it; `None` for anything else.
fn declared_events(headers: &HeaderMap) -> Option<u64> {
    match headers.get("x-event-count") {
        None => Some(1),
        Some(count) => count.to_str().ok()?.parse().ok().filter(|&n| n >= 1),
    }
}

fn json_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

/// One EVALSHA of the minimal fixed window: one round trip, atomic.
async fn evalsha_limit(
    State(limiter): State<Arc<Limiter>>,
    request: Request,
    next: Next,
) -> Response {
    let token = match request.headers().get("x-agent-token") {
        Some(token) if !token.is_empty() => token.as_bytes(),
        _ => return json_error(StatusCode::UNAUTHORIZED, "missing agent token"),
    };
    if token.len() > MAX_TOKEN_BYTES {
        return json_error(StatusCode::BAD_REQUEST, "agent token too long");
    }
    let Some(events) = declared_events(request.headers()) else {
        return json_error(StatusCode::BAD_REQUEST, "bad X-Event-Count");
    };
    let mut key = String::with_capacity(KEY_PREFIX.len() + 64);
    key.push_str(KEY_PREFIX);
    for byte in Sha256::digest(token) {
        let _ = write!(key, "{byte:02x}");
    }
    let mut connection = limiter.connection.clone();
    let reply: redis::RedisResult<(u64, i64)> = limiter
        .script
        .key(&key)
        .arg(events)
        .arg(limiter.window_ms)
        .invoke_async(&mut connection)
        .await;
    match reply {
        Ok((count, _)) if count <= limiter.limit => next.run(request).await,
        Ok((_, ttl_ms)) => {
            // -1: a key left without a TTL (by a restore or an operator, never
            // by this script), which this baseline does not heal: a window.
            let ttl_ms = u64::try_from(ttl_ms)
                .ok()
                .filter(|&ms| ms > 0)
                .unwrap_or(limiter.window_ms);
            // Redis keeps a key through the millisecond its PTTL reaches 0.
            let retry_after = (ttl_ms + 1).div_ceil(1000);
            let mut response = json_error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
            (response.headers_mut()).insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            response
        }
        Err(err) => {
            eprintln!("evalsha_baseline: EVALSHA: {err}");
            json_error(StatusCode::SERVICE_UNAVAILABLE, "rate limiter unavailable")
        }
    }
}
