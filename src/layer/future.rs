use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use axum::response::{IntoResponse, Response};
use http::Request;
use pin_project_lite::pin_project;
use tokio::time::{Timeout, error::Elapsed};
use tower::Service;

use super::service::Shared;
use crate::{
    Decision, Error, FailMode, Mode, headers,
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

pin_project! {
    #[project = StateProj]
    enum State<S, F, SF, B> {
        // Waiting for the store; `next` holds the ready service and the request.
        Checking {
            #[pin]
            check: Timeout<SF>,
            next: Option<(S, Request<B>)>,
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

impl<S, SF, B> ResponseFuture<S, SF, B>
where
    S: Service<Request<B>>,
{
    pub(super) fn forward(future: S::Future, shared: &Arc<Shared>) -> Self {
        Self::with(
            State::Calling {
                future,
                decision: None,
            },
            shared,
        )
    }

    pub(super) fn respond(response: Response, shared: &Arc<Shared>) -> Self {
        Self::with(
            State::Done {
                response: Some(response),
            },
            shared,
        )
    }

    pub(super) fn check(
        check: Timeout<SF>,
        inner: S,
        request: Request<B>,
        shared: &Arc<Shared>,
    ) -> Self {
        Self::with(
            State::Checking {
                check,
                next: Some((inner, request)),
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
                StateProj::Checking { check, next } => {
                    let outcome = flatten(ready!(check.poll(cx)), policy.timeout);
                    let (mut inner, mut request) = next.take().expect("polled after completion");
                    let decision = match outcome {
                        Ok(decision) => {
                            shared.stats.record_success(&policy.name);
                            decision
                        }
                        Err(error) => {
                            shared
                                .stats
                                .record_error(&policy.name, &error, policy.on_store_error);
                            if policy.on_store_error == FailMode::Closed {
                                return Poll::Ready(Ok(response::store_unavailable()));
                            }
                            let future = inner.call(request);
                            this.state.set(State::Calling {
                                future,
                                decision: None,
                            });
                            continue;
                        }
                    };
                    let info = || RateLimitInfo {
                        policy: policy.name.clone(),
                        decision,
                    };
                    match policy.mode {
                        Mode::Annotate => RateLimitStatus::record(request.extensions_mut(), info()),
                        Mode::Block if !decision.allowed => {
                            let info = info();
                            let mut response = match &policy.on_rejected {
                                Some(hook) => hook(&info),
                                None => response::too_many_requests(&info),
                            };
                            headers::insert(response.headers_mut(), policy, &decision);
                            return Poll::Ready(Ok(response));
                        }
                        Mode::Block => {}
                    }
                    let future = inner.call(request);
                    this.state.set(State::Calling {
                        future,
                        decision: Some(decision),
                    });
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

fn flatten(
    outcome: Result<Result<Decision, Error>, Elapsed>,
    timeout: std::time::Duration,
) -> Result<Decision, Error> {
    outcome.unwrap_or(Err(Error::Timeout(timeout)))
}
