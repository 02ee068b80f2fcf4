//! Bench-only code, not an example to copy: the hand-written limiter this
//! crate replaces, as a baseline for `scripts/loadbench.py`.
//!
//! The EDR example's telemetry route, `POST /api/v1/telemetry/` answering
//! `202 {"status":"accepted"}` (nothing is queued), behind an axum
//! middleware that does what the seed's limiter does for every request, in
//! three round trips on one shared connection:
//!
//! ```text
//! count = GET key;  if count >= limit: 429;  INCR key;  EXPIRE key <window>
//! ```
//!
//! keyed by the raw `X-Agent-Token` (401 without one). Its flaws are the
//! point of the comparison and stay in (see the README's "Why not GET, INCR,
//! EXPIRE?"): concurrent requests at the limit all pass, the window slides
//! with every request, and there is no `Retry-After`.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/1 TELEMETRY_RATE=1000/m \
//!     cargo run --release --example naive_baseline
//! ```
//!
//! Environment: `LISTEN_ADDR` (`127.0.0.1:3000`), `REDIS_URL` (required),
//! `TELEMETRY_RATE` (`1000/m`: `N/unit` as the crate's `Rate` reads it).

use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use axum_redis_ratelimit::Rate;
use redis::aio::ConnectionManager;
use serde_json::json;

struct Limiter {
    connection: ConnectionManager,
    limit: u64,
    window_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("naive_baseline: {err}");
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
        limit: rate.limit(),
        window_secs: rate.window().as_secs(),
    });

    let app = Router::new()
        .route(
            "/api/v1/telemetry/",
            post(telemetry).route_layer(middleware::from_fn_with_state(limiter, naive_limit)),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("LISTEN_ADDR: {listen}: {e}"))?;
    eprintln!("naive_baseline: listening on {listen}, {rate} per agent token");
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("server: {e}"))
}

async fn telemetry(_body: Bytes) -> Response {
    (StatusCode::ACCEPTED, Json(json!({ "status": "accepted" }))).into_response()
}

fn json_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

/// GET, then INCR and EXPIRE: three round trips, not atomic.
async fn naive_limit(
    State(limiter): State<Arc<Limiter>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = request
        .headers()
        .get("x-agent-token")
        .and_then(|v| v.to_str().ok())
    else {
        return json_error(StatusCode::UNAUTHORIZED, "missing agent token");
    };
    let key = format!("naive:telemetry:{token}");
    let mut connection = limiter.connection.clone();
    let count: redis::RedisResult<Option<u64>> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut connection)
        .await;
    match count {
        Ok(Some(count)) if count >= limiter.limit => {
            return json_error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
        }
        Ok(_) => {}
        Err(err) => {
            eprintln!("naive_baseline: GET: {err}");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "rate limiter failed");
        }
    }
    let counted: redis::RedisResult<()> = async {
        redis::cmd("INCR")
            .arg(&key)
            .query_async::<u64>(&mut connection)
            .await?;
        redis::cmd("EXPIRE")
            .arg(&key)
            .arg(limiter.window_secs)
            .query_async::<u64>(&mut connection)
            .await?;
        Ok(())
    }
    .await;
    if let Err(err) = counted {
        eprintln!("naive_baseline: INCR/EXPIRE: {err}");
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "rate limiter failed");
    }
    next.run(request).await
}
