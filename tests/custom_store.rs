//! `Store` can be implemented outside the crate: a store of the
//! application's own, here one that wraps the memory store and records the
//! counters it was asked about, limits requests through the layer like the
//! built-in ones.

use std::sync::{Arc, Mutex};

use axum::{Router, body::Body, routing::post};
use axum_redis_ratelimit::{
    Key, MemoryStore, Policy, Rate, RateLimitLayer,
    store::{Charge, Store},
};
use http::{Request, StatusCode};
use tower::ServiceExt;

/// The memory store, with a log of the counters each check names.
#[derive(Clone, Default)]
struct Recording {
    inner: MemoryStore,
    counters: Arc<Mutex<Vec<String>>>,
}

impl Store for Recording {
    type Future = <MemoryStore as Store>::Future;
    type Refund = <MemoryStore as Store>::Refund;

    fn check(&self, check: Charge<'_>) -> Self::Future {
        let mut counter = String::new();
        for limit in check.limits {
            check.counter_key(limit, &mut counter);
            self.counters.lock().unwrap().push(counter.clone());
        }
        self.inner.check(check)
    }

    fn refund(&self, check: Charge<'_>) -> Self::Refund {
        self.inner.refund(check)
    }
}

#[tokio::test]
async fn a_store_of_ones_own_limits_through_the_layer() {
    let store = Recording::default();
    let policy = Policy::new("api")
        .rate(Rate::per_minute(2))
        .key(Key::header("x-agent-token"));
    let app = Router::new()
        .route("/t", post(|| async { "ok" }))
        .layer(RateLimitLayer::new(policy, store.clone()).unwrap());
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let request = Request::post("/t")
            .header("x-agent-token", "a")
            .body(Body::empty())
            .unwrap();
        statuses.push(app.clone().oneshot(request).await.unwrap().status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let counters = store.counters.lock().unwrap();
    assert_eq!(counters.len(), 3);
    assert!(
        counters
            .iter()
            .all(|c| c == "rl:api:{x-agent-token:a}:60:fixed")
    );
}
