use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use axum::response::{IntoResponse, Response};
use http::Request;
use pin_project_lite::pin_project;
use tokio::time::Timeout;
use tower::Service;

use super::state::{Noted, Shared, Source, Step};
use crate::{
    Decision, Error, headers,
    key::KeyBuffer,
    lease::Taken,
    store::{Charge, Store},
};

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, St, B>
    where
        S: Service<Request<B>>,
        St: Store,
    {
        #[pin]
        state: State<S, S::Future, St, B>,
        shared: Arc<Shared<St>>,
    }
}

impl<S, St, B> std::fmt::Debug for ResponseFuture<S, St, B>
where
    S: Service<Request<B>>,
    St: Store,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("policy", &self.shared.policy.name)
            .finish_non_exhaustive()
    }
}

/// What a store call waits with: the ready service, the request, and what
/// the fail mode, the block cache and a refund need afterwards.
pub(super) struct Pending<S, B> {
    pub inner: S,
    pub request: Request<B>,
    pub counted: Counted,
    /// When the store was asked.
    pub asked: tokio::time::Instant,
}

/// What an allowed request counted, to give back if a layer inside refuses
/// the request after all.
pub(super) struct Counted {
    pub key: KeyBuffer,
    pub cost: u64,
    /// Lease mode: the slice it was admitted from, which a refund goes
    /// back to.
    pub lease: Option<u64>,
}

/// What a boxed lease decision is.
type LeaseTake = Pin<Box<dyn Future<Output = Result<Taken, Error>> + Send>>;

pin_project! {
    /// A decision the request waits for: the store's check, or lease mode's
    /// grant (or the grant in flight it waits for).
    #[project = CheckProj]
    pub(super) enum Check<F> {
        Store {
            #[pin]
            future: F,
        },
        Lease {
            future: LeaseTake,
        },
    }
}

impl<F> Check<F> {
    pub(super) fn store(future: F) -> Self {
        Self::Store { future }
    }

    pub(super) fn lease(
        future: impl Future<Output = Result<Taken, Error>> + Send + 'static,
    ) -> Self {
        Self::Lease {
            future: Box::pin(future),
        }
    }
}

impl<F: Future<Output = Result<Decision, Error>>> Future for Check<F> {
    type Output = Result<Taken, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CheckProj::Store { future } => future.poll(cx).map(|answer| {
                answer.map(|decision| Taken {
                    decision,
                    generation: None,
                    asked: true,
                })
            }),
            CheckProj::Lease { future } => future.as_mut().poll(cx),
        }
    }
}

/// Marks the responses a rate-limit layer makes itself (429, 503, 400, 413),
/// so that the layers outside it give back what they counted: a request
/// refused by one policy spends nothing of another's.
#[derive(Clone, Copy, Debug)]
struct Refused;

fn refused(mut response: Response) -> Response {
    response.extensions_mut().insert(Refused);
    response
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, St: Store, B> {
        Checking {
            #[pin]
            check: Timeout<Check<St::Future>>,
            pending: Option<Pending<S, B>>,
        },
        // Waiting for the inner service; the decision goes into the headers.
        Calling {
            #[pin]
            future: F,
            decision: Option<Decision>,
            counted: Option<Counted>,
        },
        // An inner layer refused the request: giving back what it counted
        // before answering.
        Refunding {
            #[pin]
            refund: Timeout<St::Refund>,
            response: Option<Response>,
        },
        // Answered by the layer itself.
        Done {
            response: Option<Response>,
        },
    }
}

impl<S, St, B> ResponseFuture<S, St, B>
where
    S: Service<Request<B>>,
    St: Store,
{
    pub(super) fn forward(
        future: S::Future,
        decision: Option<Decision>,
        shared: &Arc<Shared<St>>,
    ) -> Self {
        let state = State::Calling {
            future,
            decision,
            counted: None,
        };
        Self::with(state, shared)
    }

    /// Forwards a request admitted in process that a refund would give
    /// back to (lease mode's slice).
    pub(super) fn forward_counted(
        future: S::Future,
        decision: Option<Decision>,
        counted: Counted,
        shared: &Arc<Shared<St>>,
    ) -> Self {
        let state = State::Calling {
            future,
            decision,
            counted: Some(counted),
        };
        Self::with(state, shared)
    }

    pub(super) fn respond(response: Response, shared: &Arc<Shared<St>>) -> Self {
        Self::with(
            State::Done {
                response: Some(refused(response)),
            },
            shared,
        )
    }

    pub(super) fn check(
        check: Timeout<Check<St::Future>>,
        pending: Pending<S, B>,
        shared: &Arc<Shared<St>>,
    ) -> Self {
        Self::with(
            State::Checking {
                check,
                pending: Some(pending),
            },
            shared,
        )
    }

    fn with(state: State<S, S::Future, St, B>, shared: &Arc<Shared<St>>) -> Self {
        Self {
            state,
            shared: shared.clone(),
        }
    }
}

impl<S, St, B> Future for ResponseFuture<S, St, B>
where
    S: Service<Request<B>>,
    S::Response: IntoResponse,
    St: Store,
{
    type Output = Result<Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared: &Shared<St> = this.shared;
        let policy = &shared.policy;
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking { check, pending } => {
                    let answer = ready!(check.poll(cx))
                        .unwrap_or(Err(Error::Timeout(policy.settings.timeout)));
                    let Pending {
                        mut inner,
                        mut request,
                        mut counted,
                        asked,
                    } = pending.take().expect("polled after completion");
                    let latency = asked.elapsed();
                    let (key, cost) = (&counted.key, counted.cost);
                    let noted = Noted {
                        store: Some(latency),
                        ..Noted::new(key, cost)
                    };
                    let (step, allowed) = match answer {
                        Ok(Taken {
                            decision,
                            generation,
                            asked,
                        }) => {
                            // Lease mode: a request served by another's
                            // grant called no store.
                            let source = match asked {
                                true => {
                                    shared.record_decision(key, cost, &decision, latency);
                                    Source::Store
                                }
                                false => Source::Lease,
                            };
                            let step = shared.outcome(decision, source, &mut request, noted);
                            counted.lease = generation;
                            (step, decision.allowed)
                        }
                        Err(error) => {
                            shared.store_failed(&error, latency);
                            (shared.fail_mode(&mut request, noted), false)
                        }
                    };
                    match step {
                        Step::Respond(response) => return Poll::Ready(Ok(refused(response))),
                        Step::Forward(decision) => {
                            let future = inner.call(request);
                            let counted = allowed.then_some(counted);
                            this.state.set(State::Calling {
                                future,
                                decision,
                                counted,
                            });
                        }
                    }
                }
                StateProj::Calling {
                    future,
                    decision,
                    counted,
                } => {
                    let mut response = ready!(future.poll(cx))?.into_response();
                    let refund = counted
                        .take()
                        .filter(|_| response.extensions().get::<Refused>().is_some());
                    if let Some(mut decision) = *decision {
                        if let Some(counted) = &refund {
                            decision.remaining = decision.remaining.saturating_add(counted.cost);
                        }
                        headers::insert(
                            response.headers_mut(),
                            &policy.items,
                            policy.settings.legacy_headers,
                            &decision,
                        );
                    }
                    let Some(counted) = refund else {
                        return Poll::Ready(Ok(response));
                    };
                    if let Some(leases) = &shared.leases {
                        // Back into the slice it came from, if still held;
                        // never to the store, whose window may have rolled.
                        leases.refund(&counted.key, counted.cost, counted.lease);
                        return Poll::Ready(Ok(response));
                    }
                    let refund = shared.store.refund(Charge {
                        key: &counted.key,
                        limits: &policy.limits,
                        algorithm: policy.settings.algorithm,
                        cost: counted.cost,
                        now_us: policy.now_us(),
                    });
                    this.state.set(State::Refunding {
                        refund: tokio::time::timeout(policy.settings.timeout, refund),
                        response: Some(response),
                    });
                }
                StateProj::Refunding { refund, response } => {
                    // Best effort: a refund lost to an outage only leaves the
                    // quota as spent as it was.
                    if let Ok(Err(error)) | Err(error) =
                        ready!(refund.poll(cx)).map_err(|_| Error::Timeout(policy.settings.timeout))
                    {
                        tracing::debug!(policy = %policy.name, %error, "refund not made");
                    }
                    return Poll::Ready(Ok(response.take().expect("polled after completion")));
                }
                StateProj::Done { response } => {
                    return Poll::Ready(Ok(response.take().expect("polled after completion")));
                }
            }
        }
    }
}
