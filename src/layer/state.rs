//! What every clone of a layer's service shares: the checked policy with
//! what the hot path needs precomputed (key head, header values, block
//! cache, fallback limiter), its counters, and the rules that turn a
//! decision into a response.

use std::sync::Arc;

use axum::response::Response;
use http::{Method, Request, header::RETRY_AFTER, request::Parts};
use tokio::time::Instant;

use super::{
    breaker::{Admit, CircuitBreaker},
    stats::Stats,
};
use crate::{
    Algorithm, Clock, Cost, Decision, Error, FailMode, Key, MemoryStore, Mode, OnMissingKey,
    Policy,
    algorithm::Limit,
    block_cache::BlockCache,
    config::PolicyConfig,
    headers::{self, PolicyHeader},
    key::{KeyBuffer, KeyError, layout},
    policy::{Checked, RejectionHook},
    response::{RateLimitInfo, RateLimitStatus, Rejection, STORE_RETRY_AFTER_SECS},
    store::Charge,
};

/// What every clone of the service shares: the policy, its counters, its
/// circuit breaker and its store.
pub(crate) struct Shared<St> {
    pub policy: Compiled,
    pub stats: Arc<Stats>,
    pub breaker: CircuitBreaker,
    pub store: St,
}

/// A checked policy: its settings, and what the hot path needs precomputed.
pub(crate) struct Compiled {
    pub settings: PolicyConfig,
    pub name: Arc<str>,
    pub limits: Vec<Limit>,
    /// The largest cost any request can be allowed.
    pub capacity: u64,
    pub methods: Option<Vec<Method>>,
    pub key: Key,
    pub cost: Cost,
    pub on_rejected: Option<RejectionHook>,
    /// `rl:telemetry:{`: the key up to the client's part.
    pub key_head: String,
    pub items: PolicyHeader,
    pub block_cache: Option<BlockCache>,
    pub fallback: Option<Fallback>,
}

/// The in-process limiter of [`FailMode::Fallback`].
pub(crate) struct Fallback {
    pub store: MemoryStore,
    pub limits: Vec<Limit>,
}

impl Fallback {
    /// Decides in-process. `capacity` is the shared limits' smallest: a cost
    /// within it may exceed the divided limits, and is then counted as
    /// their capacity rather than denied for good; a cost above it (forwarded
    /// in annotate mode) stays denied.
    pub(crate) fn decide(
        &self,
        key: &str,
        cost: u64,
        capacity: u64,
        algorithm: Algorithm,
    ) -> Option<Decision> {
        let divided = self.limits.iter().map(|l| l.capacity(algorithm)).min();
        let check = Charge {
            key,
            limits: &self.limits,
            algorithm,
            cost: match divided {
                Some(divided) if cost <= capacity => cost.min(divided),
                _ => cost,
            },
            now_us: None,
        };
        self.store.decide(check).ok()
    }
}

impl Compiled {
    /// Checks `policy` and precomputes what the hot path needs.
    pub(crate) fn new(policy: Policy) -> Result<Self, Error> {
        let Checked { limits, methods } = policy.check()?;
        let Policy {
            settings,
            key,
            cost,
            on_rejected,
        } = policy;
        let algorithm = settings.algorithm;
        let capacity = limits.iter().map(|l| l.capacity(algorithm)).min();
        let fallback = (settings.on_store_error == FailMode::Fallback).then(|| Fallback {
            store: MemoryStore::new(),
            limits: limits
                .iter()
                .map(|l| l.divided_by(settings.fallback_divisor))
                .collect(),
        });
        Ok(Self {
            block_cache: settings
                .block_cache
                .map(|capacity| BlockCache::new(capacity, algorithm, &limits)),
            fallback,
            key_head: layout::head(&settings.prefix, &settings.name),
            items: PolicyHeader::new(&settings.name, &limits),
            capacity: capacity.unwrap_or(1),
            name: settings.name.as_str().into(),
            limits,
            methods,
            key: key.expect("check() requires a key"),
            cost,
            on_rejected,
            settings,
        })
    }

    /// The time to send with a check: the app's for [`Clock::App`], else
    /// none (the store reads its own).
    pub fn now_us(&self) -> Option<u64> {
        match self.settings.clock {
            Clock::Store => None,
            Clock::App => Some(crate::algorithm::unix_now_us()),
        }
    }

    /// Whether requests with `method` are limited. A `GET` filter covers
    /// `HEAD` as well, since axum answers `HEAD` with the `GET` handler.
    pub fn applies_to(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| {
            m.contains(method) || (method == Method::HEAD && m.contains(&Method::GET))
        })
    }
}

/// Where a request goes before any store is asked.
pub(super) enum Route {
    /// Not limited by this policy (switched off, another method, no key and
    /// `OnMissingKey::Allow`): forwarded untouched.
    Pass,
    /// Refused by the layer itself: no key, a repeated key, a bad cost.
    Refuse(Rejection),
    /// To be counted: the client's key and the request's cost.
    Ask { key: KeyBuffer, cost: u64 },
}

/// Where a request goes once its decision (if any) is known.
pub(super) enum Outcome {
    Respond(Response),
    Forward(Option<Decision>),
}

impl<St> Shared<St> {
    /// Block mode answers a denial here; annotate mode records the decision
    /// for the handler; everything else is forwarded.
    pub(super) fn outcome<B>(
        &self,
        decision: Option<Decision>,
        request: &mut Request<B>,
    ) -> Outcome {
        let policy = &self.policy;
        let Some(decision) = decision else {
            return Outcome::Forward(None);
        };
        let info = || RateLimitInfo {
            policy: policy.name.clone(),
            decision,
        };
        match policy.settings.mode {
            Mode::Block if !decision.allowed => {
                return Outcome::Respond(self.reject(Rejection::TooManyRequests(info())));
            }
            Mode::Block => {}
            Mode::Annotate => RateLimitStatus::record(request.extensions_mut(), info()),
        }
        Outcome::Forward(Some(decision))
    }

    /// The store failed, timed out or is skipped by the breaker: the fail
    /// mode decides.
    pub(super) fn fail_mode<B>(&self, key: &str, cost: u64, request: &mut Request<B>) -> Outcome {
        let mode = self.policy.settings.on_store_error;
        self.stats.record_fail_mode(mode);
        let decision = match (mode, &self.policy.fallback) {
            (FailMode::Closed, _) => {
                let policy = self.policy.name.clone();
                return Outcome::Respond(self.reject(Rejection::StoreUnavailable { policy }));
            }
            (FailMode::Fallback, Some(fallback)) => fallback.decide(
                key,
                cost,
                self.policy.capacity,
                self.policy.settings.algorithm,
            ),
            _ => None,
        };
        self.outcome(decision, request)
    }

    /// Reads what the policy needs from the request head: whether it is
    /// limited at all, its key and its cost.
    pub(super) fn route(&self, parts: &Parts) -> Route {
        let policy = &self.policy;
        if !policy.settings.enabled || !policy.applies_to(&parts.method) {
            return Route::Pass;
        }
        let name = || policy.name.clone();
        let mut key = KeyBuffer::take();
        if let Err(error) = layout::client_key(&policy.key_head, &policy.key, parts, &mut key) {
            return match (error, policy.settings.on_missing_key) {
                (KeyError::Missing(_), OnMissingKey::Allow) => Route::Pass,
                (KeyError::Missing(label), OnMissingKey::Reject(status)) => {
                    Route::Refuse(Rejection::MissingKey {
                        policy: name(),
                        label,
                        status,
                    })
                }
                (KeyError::Repeated(label), _) => Route::Refuse(Rejection::RepeatedKey {
                    policy: name(),
                    label,
                }),
            };
        }
        match policy.cost.of(parts) {
            // Annotate mode forwards it too, as a denial the store reports.
            Ok(cost) if cost <= policy.capacity || policy.settings.mode == Mode::Annotate => {
                Route::Ask { key, cost }
            }
            Ok(cost) => Route::Refuse(Rejection::CostTooLarge {
                policy: name(),
                cost,
                capacity: policy.capacity,
            }),
            Err(reason) => Route::Refuse(Rejection::BadCost {
                policy: name(),
                reason,
            }),
        }
    }

    /// Decides without the store where that is possible: a denial the block
    /// cache still holds, or the fail mode while the breaker is open.
    pub(super) fn decide_in_process<B>(
        &self,
        key: &str,
        cost: u64,
        request: &mut Request<B>,
    ) -> Option<Outcome> {
        let cache = self.policy.block_cache.as_ref();
        if let Some(decision) = cache.and_then(|c| c.get(key, cost, Instant::now())) {
            self.stats.record_block_cache_hit();
            return Some(self.outcome(Some(decision), request));
        }
        (!self.may_call_store()).then(|| self.fail_mode(key, cost, request))
    }

    /// The response to a request the layer refuses: the policy's hook or
    /// the default, with the fields that go with the refusal.
    pub(super) fn reject(&self, rejection: Rejection) -> Response {
        let policy = &self.policy;
        let mut response = match &policy.on_rejected {
            Some(hook) => hook(&rejection),
            None => rejection.default_response(),
        };
        let fields = response.headers_mut();
        match &rejection {
            Rejection::TooManyRequests(info) => {
                let decision = &info.decision;
                headers::insert(
                    fields,
                    &policy.items,
                    policy.settings.legacy_headers,
                    decision,
                );
                headers::insert_retry_after(fields, decision);
            }
            Rejection::StoreUnavailable { .. } => {
                fields.insert(RETRY_AFTER, STORE_RETRY_AFTER_SECS.into());
            }
            _ => {}
        }
        response
    }

    /// Whether to call the store now: not while the breaker is open, but
    /// for its probes.
    pub(super) fn may_call_store(&self) -> bool {
        let admit = self.breaker.admit();
        if admit == Admit::Skip {
            self.stats.record_short_circuit();
        }
        admit == Admit::Call
    }

    /// Records a store call that failed or timed out.
    pub(super) fn store_failed(&self, error: &Error) {
        self.breaker.failure();
        let policy = &self.policy;
        self.stats
            .record_error(&policy.name, error, policy.settings.on_store_error);
    }

    /// Records a store decision (breaker, counters, block cache).
    pub(super) fn record_decision(&self, key: &str, cost: u64, decision: &Decision) {
        self.breaker.success();
        self.stats.record_success(&self.policy.name);
        if let Some(cache) = &self.policy.block_cache {
            cache.record(key, cost, decision, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rate;

    #[test]
    fn the_fallback_caps_a_cost_the_shared_limit_admits_but_not_one_it_never_would() {
        let fallback = Fallback {
            store: MemoryStore::new(),
            limits: vec![Limit::new(Rate::per_minute(10)).divided_by(4)],
        };
        // 5 fits the shared 10/m but never the divided 2/m: counted as 2.
        let capped = fallback.decide("a", 5, 10, Algorithm::FixedWindow).unwrap();
        assert_eq!((capped.allowed, capped.remaining), (true, 0));
        // 11 fits no limit: denied, not capped into an admission.
        let over = fallback
            .decide("b", 11, 10, Algorithm::FixedWindow)
            .unwrap();
        assert!(!over.allowed);
    }

    #[test]
    fn keys_are_precomputed_around_the_client_part() {
        let policy = Policy::new("telemetry")
            .rate(Rate::per_minute(1000))
            .key(Key::global());
        let compiled = Compiled::new(policy).unwrap();
        assert_eq!(compiled.key_head, "rl:telemetry:{");
    }
}
