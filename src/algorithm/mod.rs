//! The decision logic, kept apart from where counters live.
//!
//! Each algorithm is a Lua script that Redis runs atomically and, beside it,
//! an in-memory twin written against the same operations (read a counter and
//! its time to live, add, set an expiry), so the two stores decide alike. The
//! conformance tests hold them to it.

pub(crate) mod fixed_window;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The counting algorithm of a policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Algorithm {
    /// A counter per key that starts with the key's first request and
    /// expires one window later; at most `limit` requests are admitted per
    /// window. Memory: one integer per key. Across the boundary of two
    /// windows a client can send up to twice the limit in a short span.
    #[default]
    FixedWindow,
}

/// What a store answered for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is within the limit (and was counted).
    pub allowed: bool,
    /// Requests allowed per window.
    pub limit: u64,
    /// Requests still allowed in the current window.
    pub remaining: u64,
    /// Time until the window resets and the full limit is available again.
    pub reset_after: Duration,
}

impl Decision {
    /// For a denied request, how long until the same request would be
    /// allowed; `None` when it was allowed.
    pub fn retry_after(&self) -> Option<Duration> {
        (!self.allowed).then_some(self.reset_after)
    }
}

/// A counter as both stores keep it: an integer and when it expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counter {
    pub value: u64,
    pub expires_at_ms: u64,
}

/// What a script returns and its twin computes: `{allowed, count, ttl_ms}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub allowed: bool,
    pub count: u64,
    pub ttl_ms: u64,
}

impl Reply {
    pub(crate) fn into_decision(self, limit: u64) -> Decision {
        Decision {
            allowed: self.allowed,
            limit,
            remaining: limit.saturating_sub(self.count),
            reset_after: Duration::from_millis(self.ttl_ms),
        }
    }
}

/// Seconds as the HTTP headers carry them: rounded up, so that a client that
/// waits that long is never early, and at least 1.
pub(crate) fn whole_seconds(duration: Duration) -> u64 {
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up_and_are_never_zero() {
        for (ms, secs) in [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (59_999, 60)] {
            assert_eq!(whole_seconds(Duration::from_millis(ms)), secs, "{ms}");
        }
    }
}
