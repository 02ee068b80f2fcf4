//! What became of a request a policy looked at ([`Outcome`]), and where the
//! layer's log lines go.

/// Log target of one span and event per decision, at `debug`: the policy,
/// the key's label, a hash of the client's key (never its value), the cost,
/// the [`Outcome`] and the store's time to answer. Shadow mode's would-be
/// denials are also logged at `info`, at most one a second per policy.
pub const DECISION_TARGET: &str = "axum_redis_ratelimit::decision";

/// Log target of a store's outages: a `warn` when one starts, an `info`
/// when it ends, once each, not per request.
pub const STORE_TARGET: &str = "axum_redis_ratelimit::store";

/// What became of one request a policy looked at: the `outcome` label of
/// the `ratelimit_decisions_total` metric, and
/// [`Stats::decisions`](crate::layer::Stats::decisions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The store had room: forwarded and counted.
    Allowed,
    /// The store had no room: answered `429` (or, in annotate mode,
    /// forwarded with the denial for the handler).
    Denied,
    /// Answered `429` from the block cache, without the store.
    DeniedCached,
    /// Shadow mode: the store (or the block cache) had no room, but the
    /// request was forwarded.
    ShadowDenied,
    /// The store failed: forwarded unlimited.
    FailedOpen,
    /// The store failed: answered `503`.
    FailedClosed,
    /// The store failed: the in-process fallback limiter had room.
    FallbackAllowed,
    /// The store failed: the in-process fallback limiter had no room.
    FallbackDenied,
    /// The request had no key (refused, or forwarded with
    /// [`OnMissingKey::Allow`](crate::OnMissingKey::Allow)).
    MissingKey,
    /// The key's header came more than once: refused.
    RepeatedKey,
    /// The cost header was not a whole number of at least 1: refused.
    BadCost,
    /// The cost was more than any limit admits: refused with `413`.
    CostTooLarge,
    /// An exemption matched: forwarded, not counted.
    Exempt,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: [Self; 13] = [
        Self::Allowed,
        Self::Denied,
        Self::DeniedCached,
        Self::ShadowDenied,
        Self::FailedOpen,
        Self::FailedClosed,
        Self::FallbackAllowed,
        Self::FallbackDenied,
        Self::MissingKey,
        Self::RepeatedKey,
        Self::BadCost,
        Self::CostTooLarge,
        Self::Exempt,
    ];

    /// Its label value: `allowed`, `denied_cached`, `shadow_denied`…
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::DeniedCached => "denied_cached",
            Self::ShadowDenied => "shadow_denied",
            Self::FailedOpen => "failed_open",
            Self::FailedClosed => "failed_closed",
            Self::FallbackAllowed => "fallback_allowed",
            Self::FallbackDenied => "fallback_denied",
            Self::MissingKey => "missing_key",
            Self::RepeatedKey => "repeated_key",
            Self::BadCost => "bad_cost",
            Self::CostTooLarge => "cost_too_large",
            Self::Exempt => "exempt",
        }
    }

    /// Its place in [`Outcome::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
