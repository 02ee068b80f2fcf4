//! `GET /metrics`: what the rate limiter counts (decisions by policy and
//! outcome, store latency, store errors, the circuit breakers, the block
//! cache), in the Prometheus text format, from the library's `metrics`
//! facade through `metrics-exporter-prometheus`. Never rate limited: the
//! route sits outside every limited route, or on a listener of its own
//! (`METRICS_ADDR`).
//!
//! The recorder is installed before the layers are built; each layer then
//! registers its series at its first request, so a policy no request has
//! reached yet has none.

use std::time::Duration;

use axum::{Router, http::header, routing::get};
use axum_redis_ratelimit::metrics::{STORE_DURATION_BUCKETS, names};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::time::MissedTickBehavior;

use crate::config::StartupError;

/// The Prometheus text exposition format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the recorder drains what histograms recorded into their
/// buckets, so that their memory stays bounded between scrapes (the
/// exporter's own default).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process's recorder, with the store latency histogram's
/// buckets (100 µs to 1 s), and starts its upkeep; must run in the runtime.
pub fn install() -> Result<PrometheusHandle, StartupError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::STORE_DURATION.to_owned()),
            &STORE_DURATION_BUCKETS,
        )
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| StartupError::new("metrics", e))?;
    if !cfg!(feature = "metrics") {
        tracing::warn!(
            "built without the crate's `metrics` feature: /metrics serves no rate-limit figures"
        );
    }
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `GET /metrics` alone, to merge into the API's routes or to serve on
/// `METRICS_ADDR`.
pub fn routes(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let text = handle.render();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], text) }
        }),
    )
}
