use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use axum::response::{IntoResponse, Response};
use http::Request;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Timeout};
use tower::Service;

use super::service::Shared;
use crate::{
    Decision, Error, FailMode, Mode, headers,
    key::KeyBuffer,
    response::{self, RateLimitInfo, RateLimitStatus},
};

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, SF, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, S::Future, SF, B>,
        shared: Arc<Shared>,
    }
}

/// What a store call waits with: the ready service, the request, and what
/// the fail mode and the block cache need afterwards.
pub(super) struct Pending<S, B> {
    pub inner: S,
    pub request: Request<B>,
    pub key: KeyBuffer,
    pub cost: u64,
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, SF, B> {
        Checking {
            #[pin]
            check: Timeout<SF>,
            pending: Option<Pending<S, B>>,
        },
        // Waiting for the inner service; the decision goes into the headers.
        Calling {
            #[pin]
            future: F,
            decision: Option<Decision>,
        },
        // Answered by the layer itself.
        Done {
            response: Option<Response>,
        },
    }
}

/// Where a request goes once its decision (if any) is known.
pub(super) enum Next {
    Respond(Response),
    Forward(Option<Decision>),
}

impl Shared {
    /// Block mode answers a denial here; annotate mode records the decision
    /// for the handler; everything else is forwarded.
    pub(super) fn next<B>(&self, decision: Option<Decision>, request: &mut Request<B>) -> Next {
        let policy = &self.policy;
        let Some(decision) = decision else {
            return Next::Forward(None);
        };
        let info = || RateLimitInfo {
            policy: policy.name.clone(),
            decision,
        };
        match policy.mode {
            Mode::Block if !decision.allowed => {
                let info = info();
                let mut response = match &policy.on_rejected {
                    Some(hook) => hook(&info),
                    None => response::too_many_requests(&info),
                };
                headers::insert(response.headers_mut(), policy, &decision);
                return Next::Respond(response);
            }
            Mode::Block => {}
            Mode::Annotate => RateLimitStatus::record(request.extensions_mut(), info()),
        }
        Next::Forward(Some(decision))
    }

    /// The store failed, timed out or is skipped by the breaker: the fail
    /// mode decides.
    pub(super) fn unavailable<B>(&self, key: &str, cost: u64, request: &mut Request<B>) -> Next {
        let mode = self.policy.on_store_error;
        self.stats.record_fail_mode(mode);
        let decision = match (mode, &self.policy.fallback) {
            (FailMode::Closed, _) => return Next::Respond(response::store_unavailable()),
            (FailMode::Fallback, Some(fallback)) => {
                fallback.decide(key, cost, self.policy.algorithm)
            }
            _ => None,
        };
        self.next(decision, request)
    }

    /// Records a store decision (breaker, block cache).
    pub(super) fn decided(&self, key: &str, cost: u64, decision: &Decision) {
        self.stats.record_success(&self.policy.name);
        if let Some(cache) = &self.policy.block_cache {
            cache.record(key, cost, decision, Instant::now());
        }
    }
}

impl<S, SF, B> ResponseFuture<S, SF, B>
where
    S: Service<Request<B>>,
{
    pub(super) fn forward(
        future: S::Future,
        decision: Option<Decision>,
        shared: &Arc<Shared>,
    ) -> Self {
        Self::with(State::Calling { future, decision }, shared)
    }

    pub(super) fn respond(response: Response, shared: &Arc<Shared>) -> Self {
        Self::with(
            State::Done {
                response: Some(response),
            },
            shared,
        )
    }

    pub(super) fn check(check: Timeout<SF>, pending: Pending<S, B>, shared: &Arc<Shared>) -> Self {
        Self::with(
            State::Checking {
                check,
                pending: Some(pending),
            },
            shared,
        )
    }

    fn with(state: State<S, S::Future, SF, B>, shared: &Arc<Shared>) -> Self {
        Self {
            state,
            shared: shared.clone(),
        }
    }
}

impl<S, SF, B> Future for ResponseFuture<S, SF, B>
where
    S: Service<Request<B>>,
    S::Response: IntoResponse,
    SF: Future<Output = Result<Decision, Error>>,
{
    type Output = Result<Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared: &Shared = this.shared;
        let policy = &shared.policy;
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking { check, pending } => {
                    let outcome =
                        ready!(check.poll(cx)).unwrap_or(Err(Error::Timeout(policy.timeout)));
                    let Pending {
                        mut inner,
                        mut request,
                        key,
                        cost,
                    } = pending.take().expect("polled after completion");
                    let next = match outcome {
                        Ok(decision) => {
                            shared.decided(&key, cost, &decision);
                            shared.next(Some(decision), &mut request)
                        }
                        Err(error) => {
                            let mode = policy.on_store_error;
                            shared.stats.record_error(&policy.name, &error, mode);
                            shared.unavailable(&key, cost, &mut request)
                        }
                    };
                    match next {
                        Next::Respond(response) => return Poll::Ready(Ok(response)),
                        Next::Forward(decision) => {
                            let future = inner.call(request);
                            this.state.set(State::Calling { future, decision });
                        }
                    }
                }
                StateProj::Calling { future, decision } => {
                    let mut response = ready!(future.poll(cx))?.into_response();
                    if let Some(decision) = decision {
                        headers::insert(response.headers_mut(), policy, decision);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done { response } => {
                    return Poll::Ready(Ok(response.take().expect("polled after completion")));
                }
            }
        }
    }
}
