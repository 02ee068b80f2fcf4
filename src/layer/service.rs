use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use axum::response::{IntoResponse, Response};
use http::Request;
use tower::{Layer, Service};

use super::{
    breaker::CircuitBreaker,
    future::{Check, Counted, Pending, ResponseFuture},
    state::{Compiled, Noted, Route, Shared, Source, Step},
    stats::Stats,
};
use crate::{
    Error, Policy,
    lease::{LeaseHandle, LeaseRelease, Table},
    store::{Charge, Store},
};

/// Applies one [`Policy`] to every request of the wrapped service. Stack
/// several layers for several policies.
pub struct RateLimitLayer<St> {
    shared: Arc<Shared<St>>,
}

impl<St: Store> RateLimitLayer<St> {
    /// Checks `policy` and binds it to `store`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first setting that cannot work.
    pub fn new(policy: Policy, store: St) -> Result<Self, Error> {
        let policy = Compiled::new(policy)?;
        let stats = Arc::new(Stats::new(&policy.name));
        let leases = match policy.settings.lease {
            Some(_) if !store.can_lease() => {
                let reason = "needs a store that leases, such as RedisStore (a MemoryStore \
                              counts in this process already, so there is nothing to lease)";
                return Err(Error::config("lease", reason).in_policy(&policy.name));
            }
            Some(lease) => Some(Arc::new(Table::new(
                lease,
                &policy.limits,
                policy.settings.algorithm,
                policy.settings.timeout,
                store.clone(),
                stats.clone(),
            ))),
            None => None,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                stats,
                breaker: CircuitBreaker::new(policy.settings.breaker),
                policy,
                store,
                leases,
            }),
        })
    }

    /// Counters of store failures, shared by every service this layer made.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Lease mode: gives every unspent unit this layer holds back to the
    /// window it was granted in, and stops leasing (each later request
    /// takes exactly its cost, so none strands a unit). Call it at graceful
    /// shutdown, once the server has finished its requests: when it
    /// returns, the store's counters hold exactly the units admitted. A
    /// policy without leases gives back nothing. The same as
    /// [`lease_handle`](Self::lease_handle)`().release()`.
    ///
    /// ```no_run
    /// use axum::{Router, routing::post};
    /// use axum_redis_ratelimit::{Key, Policy, Rate, RateLimitLayer, RedisStore};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::connect("redis://127.0.0.1:6379/1").await?;
    /// let policy = Policy::new("telemetry")
    ///     .rate(Rate::per_minute(1000))
    ///     .key(Key::header("X-Agent-Token"))
    ///     .lease(64);
    /// let layer = RateLimitLayer::new(policy, store)?;
    /// let app = Router::new()
    ///     .route("/api/v1/telemetry/", post(|| async { "queued" }))
    ///     .route_layer(layer.clone());
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
    ///     .await?;
    /// let released = layer.release_leases().await;
    /// assert_eq!(released.failed, 0, "Redis took every unit back");
    /// # Ok(()) }
    /// ```
    pub async fn release_leases(&self) -> LeaseRelease {
        self.lease_handle().release().await
    }

    /// A handle that gives back this layer's unspent slices
    /// ([`LeaseHandle::release`]), whatever the store's type: what an
    /// application keeps for its shutdown when the layer itself is buried in
    /// a router. See [`lease`](crate::lease).
    pub fn lease_handle(&self) -> LeaseHandle {
        let table = self.shared.leases.clone();
        LeaseHandle::new(table.map(|t| t as Arc<dyn crate::lease::Release>))
    }
}

impl<St> Clone for RateLimitLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S, St> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimit<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The middleware [`RateLimitLayer`] produces. Clones share the policy, the
/// store and the counters.
pub struct RateLimit<S, St> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S, St> RateLimit<S, St> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug, St: fmt::Debug> fmt::Debug for RateLimit<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy.name)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

impl<St: fmt::Debug> fmt::Debug for RateLimitLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policy", &self.shared.policy.name)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

impl<S: Clone, St> Clone for RateLimit<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, St, B> Service<Request<B>> for RateLimit<S, St>
where
    S: Service<Request<B>> + Clone,
    S::Response: IntoResponse,
    St: Store,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, St, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let route = self.shared.route(&parts);
        let mut request = Request::from_parts(parts, body);
        let (key, cost) = match route {
            Route::Pass => {
                return ResponseFuture::forward(self.inner.call(request), None, &self.shared);
            }
            Route::Refuse(rejection) => {
                return ResponseFuture::respond(self.shared.reject(rejection), &self.shared);
            }
            Route::Ask { key, cost } => (key, cost),
        };
        // Lease mode: from this process's slice, while it lasts (even with
        // the breaker open).
        let leases = self.shared.leases.as_ref();
        let spent = leases.and_then(|l| l.spend(&key, cost, tokio::time::Instant::now()));
        if let Some((decision, generation)) = spent {
            self.shared.stats.record_lease_local();
            let noted = Noted::new(&key, cost);
            let step = self
                .shared
                .outcome(decision, Source::Lease, &mut request, noted);
            return match step {
                Step::Respond(response) => ResponseFuture::respond(response, &self.shared),
                Step::Forward(decision) => {
                    let counted = Counted {
                        key,
                        cost,
                        lease: Some(generation),
                    };
                    let future = self.inner.call(request);
                    ResponseFuture::forward_counted(future, decision, counted, &self.shared)
                }
            };
        }
        if let Some(step) = self.shared.decide_in_process(&key, cost, &mut request) {
            return self.finish(step, request);
        }
        let policy = &self.shared.policy;
        // One clock read for the latency and the timeout's deadline.
        let asked = tokio::time::Instant::now();
        let check = match leases {
            Some(leases) => Check::lease(leases.clone().take(key.as_str().to_owned(), cost)),
            None => Check::store(self.shared.store.check(Charge {
                key: &key,
                limits: &policy.limits,
                algorithm: policy.settings.algorithm,
                cost,
                now_us: policy.now_us(),
            })),
        };
        // The clone is the one that is not yet ready; the ready one goes with
        // the request (tower's usual dance).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let pending = Pending {
            inner,
            request,
            counted: Counted {
                key,
                cost,
                lease: None,
            },
            asked,
        };
        ResponseFuture::check(
            match asked.checked_add(policy.settings.timeout) {
                Some(deadline) => tokio::time::timeout_at(deadline, check),
                None => tokio::time::timeout(policy.settings.timeout, check),
            },
            pending,
            &self.shared,
        )
    }
}

impl<S, St> RateLimit<S, St> {
    /// Answers or forwards a request decided without waiting for the store.
    fn finish<B>(&mut self, step: Step, request: Request<B>) -> ResponseFuture<S, St, B>
    where
        S: Service<Request<B>>,
        St: Store,
    {
        match step {
            Step::Respond(response) => ResponseFuture::respond(response, &self.shared),
            Step::Forward(decision) => {
                ResponseFuture::forward(self.inner.call(request), decision, &self.shared)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        future::{Ready, ready},
        sync::atomic::{AtomicBool, Ordering::Relaxed},
        task::Waker,
    };

    use super::*;
    use crate::{Key, MemoryStore, Rate};

    /// A service that is ready only once its gate is open.
    #[derive(Clone, Debug)]
    struct Gate(Arc<AtomicBool>);

    impl Service<Request<()>> for Gate {
        type Response = Response;
        type Error = Infallible;
        type Future = Ready<Result<Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            match self.0.load(Relaxed) {
                true => Poll::Ready(Ok(())),
                false => Poll::Pending,
            }
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            ready(Ok(Response::default()))
        }
    }

    /// A store that is always down.
    #[derive(Clone, Debug)]
    struct Down;

    impl Store for Down {
        type Future = Ready<Result<crate::Decision, Error>>;
        type Refund = Ready<Result<(), Error>>;

        fn check(&self, _: Charge<'_>) -> Self::Future {
            ready(Err(Error::Timeout(std::time::Duration::ZERO)))
        }

        fn refund(&self, _: Charge<'_>) -> Self::Refund {
            ready(Ok(()))
        }
    }

    async fn send<St: Store>(layer: &RateLimitLayer<St>, headers: &[(&str, &str)]) -> Response {
        let mut request = Request::new(());
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().append(name, value.parse().unwrap());
        }
        let mut service = layer.layer(Gate(Arc::new(AtomicBool::new(true))));
        service.call(request).await.unwrap()
    }

    /// One hook shapes every refusal; the layer still adds the fields that
    /// go with each.
    #[tokio::test]
    async fn the_rejection_hook_answers_every_refusal() {
        let policy = || {
            Policy::new("p")
                .rate(Rate::per_minute(2))
                .key(Key::header("x-k"))
                .cost(crate::Cost::header("x-c"))
                .fail_closed()
                .on_rejected(|rejection| {
                    let body = format!("{} {}", rejection.policy(), rejection.status().as_u16());
                    (rejection.status(), body).into_response()
                })
        };
        let layer = RateLimitLayer::new(policy(), MemoryStore::new()).unwrap();
        let cases: [(&[(&str, &str)], u16); 4] = [
            (&[], 400),
            (&[("x-k", "a"), ("x-k", "b")], 400),
            (&[("x-k", "a"), ("x-c", "x")], 400),
            (&[("x-k", "a"), ("x-c", "3")], 413),
        ];
        for (headers, status) in cases {
            let response = send(&layer, headers).await;
            assert_eq!(response.status().as_u16(), status, "{headers:?}");
            assert!(response.headers().get("retry-after").is_none());
        }
        for _ in 0..2 {
            assert_eq!(send(&layer, &[("x-k", "a")]).await.status(), 200);
        }
        let limited = send(&layer, &[("x-k", "a")]).await;
        assert_eq!(limited.status(), 429);
        assert!(limited.headers().contains_key("retry-after"));
        assert!(limited.headers().contains_key("ratelimit"));
        let down = RateLimitLayer::new(policy(), Down).unwrap();
        let unavailable = send(&down, &[("x-k", "a")]).await;
        assert_eq!(unavailable.status(), 503);
        assert_eq!(unavailable.headers()["retry-after"], "1");
        use http_body_util::BodyExt;
        let body = unavailable.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"p 503");
    }

    /// A timeout too long to add to the clock still decides: the deadline
    /// falls back to tokio's far future instead of overflowing.
    #[tokio::test]
    async fn a_timeout_beyond_the_clocks_range_still_decides() {
        let policy = Policy::new("p")
            .rate(Rate::per_minute(1))
            .key(Key::global())
            .timeout(std::time::Duration::MAX)
            .fail_closed();
        let layer = RateLimitLayer::new(policy, Down).unwrap();
        assert_eq!(send(&layer, &[]).await.status(), 503);
    }

    /// A switched-off policy lets everything through, from the builder and
    /// from a file alike.
    #[tokio::test]
    async fn a_disabled_policy_limits_nothing() {
        let file: crate::config::PolicyConfig = serde_json::from_str(
            r#"{"name":"p","rate":"1/m","key":{"type":"global"},"enabled":false}"#,
        )
        .unwrap();
        let built = Policy::new("p")
            .rate(Rate::per_minute(1))
            .key(Key::global())
            .enabled(false);
        for policy in [built.clone(), file.into_policy()] {
            let layer = RateLimitLayer::new(policy, MemoryStore::new()).unwrap();
            for _ in 0..3 {
                let response = send(&layer, &[]).await;
                assert_eq!(response.status(), 200);
                assert!(!response.headers().contains_key("ratelimit"));
            }
        }
        let on = RateLimitLayer::new(built.enabled(true), MemoryStore::new()).unwrap();
        assert_eq!(send(&on, &[]).await.status(), 200);
        assert_eq!(send(&on, &[]).await.status(), 429);
    }

    #[tokio::test]
    async fn the_middleware_is_ready_when_its_service_is_and_gives_it_back() {
        let policy = Policy::new("gate")
            .rate(Rate::per_minute(1))
            .key(Key::global());
        let layer = RateLimitLayer::new(policy, MemoryStore::new()).unwrap();
        assert!(format!("{layer:?}").contains("\"gate\""));
        let open = Arc::new(AtomicBool::new(false));
        let mut service = layer.layer(Gate(open.clone()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(service.poll_ready(&mut cx).is_pending());
        open.store(true, Relaxed);
        assert!(service.poll_ready(&mut cx).is_ready());
        assert!(format!("{service:?}").contains("Gate"));
        let future = service.call(Request::new(()));
        assert!(format!("{future:?}").contains("\"gate\""), "{future:?}");
        assert!(service.get_ref().0.load(Relaxed));
        service.get_mut().0.store(false, Relaxed);
        assert!(!service.into_inner().0.load(Relaxed));
    }
}
