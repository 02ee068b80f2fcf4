//! What every clone of a layer's service shares: the checked policy with
//! what the hot path needs precomputed (key head, header values, block
//! cache, fallback limiter), its counters, and the rules that turn a
//! decision into a response.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use axum::response::Response;
use http::{Method, Request, header::RETRY_AFTER, request::Parts};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::Level;

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
    exempt::Exemptions,
    headers::{self, PolicyHeader},
    key::{KeyBuffer, KeyError, layout},
    outcome::{DECISION_TARGET, Outcome},
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
    /// Lease mode's slices, if the policy leases.
    pub leases: Option<Arc<crate::lease::Table<St>>>,
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
    pub exemptions: Option<Exemptions>,
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
        let Checked {
            limits,
            methods,
            exemptions,
        } = policy.check()?;
        let Policy {
            settings,
            key,
            cost,
            on_rejected,
            exempt_if: _,
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
            exemptions,
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
    /// Not limited by this policy (switched off, another method, exempt, no
    /// key and `OnMissingKey::Allow`, or anything shadow mode would refuse):
    /// forwarded untouched.
    Pass,
    /// Refused by the layer itself: no key, a repeated key, a bad cost.
    Refuse(Rejection),
    /// To be counted: the client's key and the request's cost.
    Ask { key: KeyBuffer, cost: u64 },
}

/// Where a request goes once its decision (if any) is known.
pub(super) enum Step {
    Respond(Response),
    /// Forwarded, with the decision for the response's headers.
    Forward(Option<Decision>),
}

/// Who decided a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Store,
    BlockCache,
    Fallback,
    /// A slice of lease mode, held in process.
    Lease,
}

impl<St> Shared<St> {
    /// Block mode answers a denial here; annotate mode records the decision
    /// for the handler; shadow mode forwards everything without a trace for
    /// the client; everything is counted.
    pub(super) fn outcome<B>(
        &self,
        decision: Decision,
        source: Source,
        request: &mut Request<B>,
        noted: Noted<'_>,
    ) -> Step {
        let policy = &self.policy;
        let mode = policy.settings.mode;
        let outcome = match (source, decision.allowed) {
            (Source::Fallback, true) => Outcome::FallbackAllowed,
            (Source::Fallback, false) => Outcome::FallbackDenied,
            (_, true) => Outcome::Allowed,
            (_, false) if mode == Mode::Shadow => Outcome::ShadowDenied,
            (Source::BlockCache, false) => Outcome::DeniedCached,
            (Source::Store | Source::Lease, false) => Outcome::Denied,
        };
        self.note(outcome, noted);
        let info = || RateLimitInfo {
            policy: policy.name.clone(),
            decision,
        };
        match mode {
            Mode::Block if !decision.allowed => {
                return Step::Respond(self.reject(Rejection::TooManyRequests(info())));
            }
            Mode::Shadow => return Step::Forward(None),
            Mode::Block => {}
            Mode::Annotate => RateLimitStatus::record(request.extensions_mut(), info()),
        }
        Step::Forward(Some(decision))
    }

    /// The store failed, timed out or is skipped by the breaker: the fail
    /// mode decides (shadow mode forwards whatever it says).
    pub(super) fn fail_mode<B>(&self, request: &mut Request<B>, noted: Noted<'_>) -> Step {
        let policy = &self.policy;
        let shadow = policy.settings.mode == Mode::Shadow;
        let fallback = match (policy.settings.on_store_error, &policy.fallback) {
            (FailMode::Closed, _) if !shadow => {
                self.note(Outcome::FailedClosed, noted);
                let policy = policy.name.clone();
                return Step::Respond(self.reject(Rejection::StoreUnavailable { policy }));
            }
            (FailMode::Fallback, Some(fallback)) => fallback.decide(
                noted.key,
                noted.cost,
                policy.capacity,
                policy.settings.algorithm,
            ),
            _ => None,
        };
        match fallback {
            Some(decision) => self.outcome(decision, Source::Fallback, request, noted),
            None => {
                self.note(Outcome::FailedOpen, noted);
                Step::Forward(None)
            }
        }
    }

    /// Reads what the policy needs from the request head: whether it is
    /// limited at all, its key and its cost. Requests that end here are
    /// counted here.
    pub(super) fn route(&self, parts: &Parts) -> Route {
        let policy = &self.policy;
        if !policy.settings.enabled || !policy.applies_to(&parts.method) {
            return Route::Pass;
        }
        let unkeyed = || Noted::new("", 0);
        if policy.exemptions.as_ref().is_some_and(|e| e.matches(parts)) {
            self.note(Outcome::Exempt, unkeyed());
            return Route::Pass;
        }
        let shadow = policy.settings.mode == Mode::Shadow;
        // Shadow mode refuses nothing: what it would refuse is only counted.
        let refuse = |outcome: Outcome, noted: Noted<'_>, rejection: Rejection| {
            self.note(outcome, noted);
            if shadow {
                Route::Pass
            } else {
                Route::Refuse(rejection)
            }
        };
        let name = || policy.name.clone();
        let mut key = KeyBuffer::take();
        if let Err(error) = layout::client_key(&policy.key_head, &policy.key, parts, &mut key) {
            return match (error, policy.settings.on_missing_key) {
                (KeyError::Missing(_), OnMissingKey::Allow) => {
                    self.note(Outcome::MissingKey, unkeyed());
                    Route::Pass
                }
                (KeyError::Missing(label), OnMissingKey::Reject(status)) => refuse(
                    Outcome::MissingKey,
                    unkeyed(),
                    Rejection::MissingKey {
                        policy: name(),
                        label,
                        status,
                    },
                ),
                (KeyError::Repeated(label), _) => refuse(
                    Outcome::RepeatedKey,
                    unkeyed(),
                    Rejection::RepeatedKey {
                        policy: name(),
                        label,
                    },
                ),
            };
        }
        match policy.cost.of(parts) {
            // Annotate and shadow mode ask anyway: the store reports a
            // denial, which they forward.
            Ok(cost) if cost <= policy.capacity || policy.settings.mode != Mode::Block => {
                Route::Ask { key, cost }
            }
            Ok(cost) => refuse(
                Outcome::CostTooLarge,
                Noted::new(&key, cost),
                Rejection::CostTooLarge {
                    policy: name(),
                    cost,
                    capacity: policy.capacity,
                },
            ),
            Err(reason) => refuse(
                Outcome::BadCost,
                Noted::new(&key, 0),
                Rejection::BadCost {
                    policy: name(),
                    reason,
                },
            ),
        }
    }

    /// Decides without the store where that is possible: a denial the block
    /// cache still holds, or the fail mode while the breaker is open.
    pub(super) fn decide_in_process<B>(
        &self,
        key: &str,
        cost: u64,
        request: &mut Request<B>,
    ) -> Option<Step> {
        let cache = self.policy.block_cache.as_ref();
        let noted = Noted::new(key, cost);
        if let Some(decision) = cache.and_then(|c| c.get(key, cost, Instant::now())) {
            return Some(self.outcome(decision, Source::BlockCache, request, noted));
        }
        (!self.may_call_store()).then(|| self.fail_mode(request, noted))
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
    pub(super) fn store_failed(&self, error: &Error, latency: Duration) {
        if self.breaker.failure() {
            self.stats.record_breaker(true);
        }
        let policy = &self.policy;
        self.stats.record_store_latency(latency);
        self.stats
            .record_error(&policy.name, error, policy.settings.on_store_error);
    }

    /// Records a store decision (breaker, counters, block cache).
    pub(super) fn record_decision(
        &self,
        key: &str,
        cost: u64,
        decision: &Decision,
        latency: Duration,
    ) {
        if self.breaker.success() {
            self.stats.record_breaker(false);
        }
        self.stats.record_success(&self.policy.name);
        self.stats.record_store_latency(latency);
        if let Some(cache) = &self.policy.block_cache
            && let Some(entries) = cache.record(key, cost, decision, Instant::now())
        {
            self.stats.record_block_cache_len(entries);
        }
    }

    /// Counts a request's outcome and, at `debug`, logs it: one span per
    /// decision under [`DECISION_TARGET`], carrying a hash of the client's
    /// key, never the key itself. Shadow mode's would-be denials also go to
    /// `info`, at most one a second per policy.
    pub(super) fn note(&self, outcome: Outcome, noted: Noted<'_>) {
        self.stats.record(outcome);
        let policy = &*self.policy.name;
        if tracing::enabled!(target: DECISION_TARGET, Level::DEBUG) {
            let span = tracing::debug_span!(
                target: DECISION_TARGET,
                "rate_limit",
                policy,
                key = noted.label(),
                key_hash = %noted.key_hash(),
                cost = noted.cost,
                outcome = outcome.as_str(),
                store_us = noted.store.map(|d| d.as_micros() as u64),
            );
            tracing::debug!(target: DECISION_TARGET, parent: &span, "rate-limit decision");
        }
        if outcome == Outcome::ShadowDenied
            && self
                .stats
                .shadow_log_due(crate::algorithm::unix_now_us() / 1000)
        {
            tracing::info!(
                target: DECISION_TARGET,
                policy,
                key = noted.label(),
                key_hash = %noted.key_hash(),
                cost = noted.cost,
                "shadow mode: this request would have been denied"
            );
        }
    }
}

/// What the log line of a decision may say about its request.
#[derive(Clone, Copy, Debug)]
pub(super) struct Noted<'a> {
    /// The client's key (`rl:p:{label:value}`), or empty before it is known.
    pub key: &'a str,
    pub cost: u64,
    /// How long the store took, when it was asked.
    pub store: Option<Duration>,
}

impl<'a> Noted<'a> {
    pub(super) fn new(key: &'a str, cost: u64) -> Self {
        Self {
            key,
            cost,
            store: None,
        }
    }

    /// The key's label, from between the hash tag's brace and the value.
    fn label(&self) -> &'a str {
        let tag = self.key.split_once('{').map_or("", |(_, tag)| tag);
        tag.split([':', '}']).next().unwrap_or("")
    }

    /// 64 bits of the key's SHA-256, in hex: enough to follow one client
    /// through the logs, nothing to read its token from.
    fn key_hash(&self) -> String {
        if self.key.is_empty() {
            return String::new();
        }
        let digest = Sha256::digest(self.key.as_bytes());
        let mut hex = String::with_capacity(16);
        for byte in &digest[..8] {
            let _ = write!(hex, "{byte:02x}");
        }
        hex
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
