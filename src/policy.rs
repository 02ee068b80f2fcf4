//! [`Policy`]: what is limited, how, and what happens at the edges.

use std::{fmt, sync::Arc, time::Duration};

use axum::response::Response;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::{
    Algorithm, Cost, Error, Key, Rate,
    algorithm::{Limit, MAX_LIMITS},
    key::encode,
    response::Rejection,
};

/// What the layer does with a request over the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Answer `429 Too Many Requests`.
    #[default]
    Block,
    /// Forward every request; handlers read the decision with the
    /// [`RateLimitStatus`](crate::RateLimitStatus) extractor and decide.
    Annotate,
}

/// What the layer does when the store fails or does not answer in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Forward the request unlimited, log the outage once and count it.
    /// The default: a limiter should not turn a Redis outage into an
    /// outage of the whole API.
    #[default]
    Open,
    /// Answer `503 Service Unavailable` with `Retry-After: 1`: for endpoints
    /// such as login, where an unlimited window is worse than downtime.
    Closed,
    /// Keep limiting in this process with an in-memory store and the same
    /// limits, each divided by [`Policy::fallback_divisor`] (say, the
    /// number of app servers), until the store answers again.
    Fallback,
}

/// What the layer does with a request whose key cannot be found (no agent
/// token, no user). To try another key first, use [`Key::or`].
///
/// In a file: `"allow"`, or `{ reject = 401 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMissingKey {
    /// Answer with this status (default `400 Bad Request`), so that
    /// omitting the key never escapes the limit.
    Reject(StatusCode),
    /// Forward the request without limiting it.
    Allow,
}

impl Default for OnMissingKey {
    fn default() -> Self {
        Self::Reject(StatusCode::BAD_REQUEST)
    }
}

/// Whose clock decides when windows open and close.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// The store's: Redis `TIME`, read inside the script, so every app
    /// server counts on one clock whatever their own drift.
    #[default]
    Store,
    /// The application's system clock, sent with each call: for managed
    /// Redis offerings that refuse `TIME` in scripts. App servers' clocks
    /// must then agree (NTP); skew between them shifts windows by as much.
    App,
}

/// When to stop calling a failing store, and how often to try it again.
///
/// After `failures` store calls in a row fail or time out, the breaker
/// opens: requests get the policy's fail mode at once, without waiting for
/// the store. Every `cooldown` one request is let through as a probe; when it
/// succeeds, the breaker closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures: u32,
    /// Time between probes while open, in milliseconds.
    pub cooldown_ms: u64,
}

impl Default for Breaker {
    /// Three failures; a probe every 500 ms, so limiting resumes within
    /// about half a second of the store returning.
    fn default() -> Self {
        Self {
            failures: 3,
            cooldown_ms: 500,
        }
    }
}

/// Builds the response to a request the layer refuses.
pub type RejectionHook = Arc<dyn Fn(&Rejection) -> Response + Send + Sync>;

/// A named rate-limit policy. Build one, then hand it to
/// [`RateLimitLayer::new`](crate::RateLimitLayer::new), which checks it.
///
/// ```
/// use axum_redis_ratelimit::{Key, OnMissingKey, Policy, Rate};
/// use http::{Method, StatusCode};
/// use std::time::Duration;
///
/// let telemetry = Policy::new("telemetry")
///     .rate(Rate::per_second(10))
///     .rate(Rate::per_minute(1000))
///     .key(Key::header("X-Agent-Token").secret())
///     .on_missing_key(OnMissingKey::Reject(StatusCode::UNAUTHORIZED))
///     .methods([Method::POST])
///     .timeout(Duration::from_millis(50))
///     .fail_open();
/// ```
#[derive(Clone)]
pub struct Policy {
    pub(crate) name: String,
    pub(crate) limits: Vec<Limit>,
    pub(crate) burst: Option<u64>,
    pub(crate) algorithm: Algorithm,
    pub(crate) clock: Clock,
    pub(crate) key: Option<Key>,
    pub(crate) cost: Cost,
    pub(crate) on_missing_key: OnMissingKey,
    pub(crate) mode: Mode,
    pub(crate) on_store_error: FailMode,
    pub(crate) timeout: Duration,
    pub(crate) methods: Option<Vec<Method>>,
    pub(crate) prefix: String,
    pub(crate) legacy_headers: bool,
    pub(crate) on_rejected: Option<RejectionHook>,
    pub(crate) block_cache: Option<usize>,
    pub(crate) fallback_divisor: u64,
    pub(crate) breaker: Breaker,
}

/// Default bound on a store call: well above a healthy Redis round trip
/// (well under 1 ms on a LAN), well below what a client notices.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// Default start of every Redis key.
pub const DEFAULT_PREFIX: &str = "rl:";

impl Policy {
    /// A policy called `name`; the name is part of every counter key and of
    /// the `RateLimit` headers, so two policies never share counters. It may
    /// hold letters, digits, `-`, `_` and `.`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            limits: Vec::new(),
            burst: None,
            algorithm: Algorithm::default(),
            clock: Clock::default(),
            key: None,
            cost: Cost::default(),
            on_missing_key: OnMissingKey::default(),
            mode: Mode::default(),
            on_store_error: FailMode::default(),
            timeout: DEFAULT_TIMEOUT,
            methods: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            legacy_headers: false,
            on_rejected: None,
            block_cache: None,
            fallback_divisor: 1,
            breaker: Breaker::default(),
        }
    }

    /// Adds a rate to enforce (at least one is required). Several rates,
    /// such as `10/s` and `1000/m`, are all checked in one store call; a
    /// request must fit all of them and is counted by all or none.
    pub fn rate(self, rate: Rate) -> Self {
        self.limit(Limit::new(rate))
    }

    /// Adds a limit with a burst size of its own (GCRA).
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// For [`Algorithm::Gcra`]: the burst size of every limit that has none
    /// of its own (default: each limit's rate limit).
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// How to count (default [`Algorithm::FixedWindow`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Whose clock to use (default [`Clock::Store`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How many requests each request counts as (default 1).
    pub fn cost(mut self, cost: Cost) -> Self {
        self.cost = cost;
        self
    }

    /// Whom to count (required).
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// What to do when the key is missing (default: reject with 400).
    pub fn on_missing_key(mut self, action: OnMissingKey) -> Self {
        self.on_missing_key = action;
        self
    }

    /// Block (default) or annotate.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// What to do when the store fails (default [`FailMode::Open`]).
    pub fn on_store_error(mut self, mode: FailMode) -> Self {
        self.on_store_error = mode;
        self
    }

    /// Shorthand for `on_store_error(FailMode::Open)`.
    pub fn fail_open(self) -> Self {
        self.on_store_error(FailMode::Open)
    }

    /// Shorthand for `on_store_error(FailMode::Closed)`.
    pub fn fail_closed(self) -> Self {
        self.on_store_error(FailMode::Closed)
    }

    /// For [`FailMode::Fallback`]: divide each limit by this while limiting
    /// in-process (default 1), so that `n` app servers together stay near
    /// the shared limit. Limits never drop below 1.
    pub fn fallback_divisor(mut self, divisor: u64) -> Self {
        self.fallback_divisor = divisor;
        self
    }

    /// Remember denials in-process and answer `429` for a denied key until
    /// its `Retry-After` has passed, without asking the store (see
    /// [`block_cache`](crate::block_cache)); at most `capacity` keys
    /// (default off).
    pub fn block_cache(mut self, capacity: usize) -> Self {
        self.block_cache = Some(capacity);
        self
    }

    /// When to stop calling a failing store (default: after 3 failures in a
    /// row, probing every 500 ms).
    pub fn breaker(mut self, breaker: Breaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// The longest a request waits for the store (default 100 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Limit only requests with these methods; others pass untouched.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// The start of every Redis key (default `rl:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Also send `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` (seconds until reset), for older clients.
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.legacy_headers = on;
        self
    }

    /// Builds the response to every request the layer refuses (over the
    /// limit, no key, a bad cost, the store unavailable…) instead of the
    /// default JSON bodies, which [`Rejection::default_response`] gives.
    /// The layer adds `Retry-After` and the `RateLimit` fields to it.
    ///
    /// ```
    /// use axum::response::IntoResponse;
    /// use axum_redis_ratelimit::{Key, Policy, Rate, response::Rejection};
    ///
    /// let policy = Policy::new("api")
    ///     .rate(Rate::per_minute(60))
    ///     .key(Key::client_ip())
    ///     .on_rejected(|rejection| match rejection {
    ///         Rejection::TooManyRequests(_) => (rejection.status(), "slow down").into_response(),
    ///         other => other.default_response(),
    ///     });
    /// ```
    pub fn on_rejected<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Rejection) -> Response + Send + Sync + 'static,
    {
        self.on_rejected = Some(Arc::new(hook));
        self
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its limits as they will be counted: in the order added, each with
    /// its own burst or else the policy's.
    pub fn limits(&self) -> impl Iterator<Item = Limit> + '_ {
        self.limits.iter().map(|limit| Limit {
            burst: limit.burst.or(self.burst),
            ..*limit
        })
    }

    /// Its algorithm.
    pub fn algorithm_kind(&self) -> Algorithm {
        self.algorithm
    }

    /// Checks every setting as [`RateLimitLayer::new`](crate::RateLimitLayer::new)
    /// will, for applications that check their configuration before
    /// connecting to anything.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first setting that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        self.check().map(drop)
    }

    /// Checks every setting and gives the limits as they will be counted;
    /// the error names the first setting that is wrong.
    pub(crate) fn check(&self) -> Result<Vec<Limit>, Error> {
        self.check_settings()
            .map_err(|error| error.in_policy(&self.name))
    }

    fn check_settings(&self) -> Result<Vec<Limit>, Error> {
        if !encode::is_valid_name(&self.name, false) {
            return Err(Error::config(
                "name",
                format!(
                    "{:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                    self.name
                ),
            ));
        }
        if !encode::is_valid_name(&self.prefix, true) {
            return Err(Error::config(
                "prefix",
                format!(
                    "{:?} must be 1 to 64 letters, digits, '-', '_', '.' or ':'",
                    self.prefix
                ),
            ));
        }
        let limits = self.checked_limits()?;
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| Error::config("key", "is required, e.g. a header or the client IP"))?;
        key.validate()?;
        self.cost.validate("cost")?;
        if self.timeout.is_zero() {
            return Err(Error::config("timeout", "must be above zero"));
        }
        if let OnMissingKey::Reject(status) = self.on_missing_key
            && !(status.is_client_error() || status.is_server_error())
        {
            return Err(Error::config(
                "on_missing_key",
                format!("{status} is not an error status; use `allow` to let requests pass"),
            ));
        }
        if self.fallback_divisor == 0 {
            return Err(Error::config("fallback_divisor", "must be at least 1"));
        }
        if self.block_cache == Some(0) {
            return Err(Error::config("block_cache", "must hold at least 1 key"));
        }
        if self.breaker.failures == 0 || self.breaker.cooldown_ms == 0 {
            return Err(Error::config(
                "breaker",
                "failures and cooldown_ms must be at least 1",
            ));
        }
        if self.methods.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::config(
                "methods",
                "is empty, so nothing would be limited",
            ));
        }
        let capacity = limits.iter().map(|l| l.capacity(self.algorithm)).min();
        if let (Some(cost), Some(capacity)) = (self.cost.fixed_value(), capacity)
            && cost > capacity
        {
            return Err(Error::config(
                "cost",
                format!("{cost} is above {capacity}, the most one request can be allowed"),
            ));
        }
        Ok(limits)
    }

    /// The limits with the policy's burst applied, checked for the bounds
    /// within which both stores compute exactly (integers below 2^53).
    fn checked_limits(&self) -> Result<Vec<Limit>, Error> {
        if self.limits.is_empty() {
            return Err(Error::config("rate", "is required, e.g. \"1000/m\""));
        }
        if self.limits.len() > MAX_LIMITS {
            return Err(Error::config(
                "limits",
                format!(
                    "at most {MAX_LIMITS} limits per policy, not {}",
                    self.limits.len()
                ),
            ));
        }
        let bursts = self.burst.is_some() || self.limits.iter().any(|l| l.burst.is_some());
        if bursts && self.algorithm != Algorithm::Gcra {
            return Err(Error::config("burst", "applies only to the gcra algorithm"));
        }
        let limits: Vec<Limit> = self.limits().collect();
        for (i, limit) in limits.iter().enumerate() {
            let rate = limit.rate;
            limit.validate("")?;
            if self.limits[..i]
                .iter()
                .any(|l| l.rate.window() == rate.window())
            {
                return Err(Error::config(
                    "rate",
                    format!("two limits share the window of {rate}"),
                ));
            }
        }
        Ok(limits)
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .field("burst", &self.burst)
            .field("algorithm", &self.algorithm)
            .field("clock", &self.clock)
            .field("key", &self.key)
            .field("cost", &self.cost)
            .field("on_missing_key", &self.on_missing_key)
            .field("mode", &self.mode)
            .field("on_store_error", &self.on_store_error)
            .field("timeout", &self.timeout)
            .field("methods", &self.methods)
            .field("prefix", &self.prefix)
            .field("legacy_headers", &self.legacy_headers)
            .field("block_cache", &self.block_cache)
            .field("fallback_divisor", &self.fallback_divisor)
            .field("breaker", &self.breaker)
            .field("on_rejected", &self.on_rejected.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// By hand rather than derived: serde's enum forms differ between formats
/// (YAML wants tags), while a string or a one-entry map reads the same in all.
impl Serialize for OnMissingKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Self::Allow => s.serialize_str("allow"),
            Self::Reject(status) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("reject", &status.as_u16())?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for OnMissingKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};

        struct OnMissing;

        impl<'de> Visitor<'de> for OnMissing {
            type Value = OnMissingKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""allow" or { reject = <HTTP status> }"#)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                match text {
                    "allow" => Ok(OnMissingKey::Allow),
                    _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (key, code): (String, u16) = map
                    .next_entry()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                if key != "reject" || map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom(
                        r#"expected only { reject = <HTTP status> }"#,
                    ));
                }
                StatusCode::from_u16(code)
                    .map(OnMissingKey::Reject)
                    .map_err(|_| de::Error::custom(format!("{code} is not an HTTP status")))
            }
        }

        d.deserialize_any(OnMissing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(policy: Policy) -> String {
        policy.check().expect_err("should be rejected").to_string()
    }

    #[test]
    fn misconfigurations_name_the_field() {
        let ok = || {
            Policy::new("p")
                .rate(Rate::per_minute(1))
                .key(Key::global())
        };
        assert!(ok().check().is_ok());
        assert!(error(Policy::new("a b")).contains("policies.a b.name"));
        assert!(error(Policy::new("p").key(Key::global())).contains("policies.p.rate"));
        assert!(error(Policy::new("p").rate(Rate::per_minute(1))).contains("policies.p.key"));
        assert!(error(ok().prefix("r{l}")).contains("policies.p.prefix"));
        assert!(error(ok().timeout(Duration::ZERO)).contains("policies.p.timeout"));
        assert!(error(ok().methods([])).contains("policies.p.methods"));
        assert!(error(ok().fallback_divisor(0)).contains("policies.p.fallback_divisor"));
        assert!(error(ok().block_cache(0)).contains("policies.p.block_cache"));
        let no_failures = Breaker {
            failures: 0,
            cooldown_ms: 1,
        };
        assert!(error(ok().breaker(no_failures)).contains("policies.p.breaker"));
        assert!(error(ok().burst(5)).contains("policies.p.burst"));
        let gcra = || ok().algorithm(Algorithm::Gcra);
        assert!(gcra().burst(5).check().is_ok());
        assert!(error(gcra().burst(0)).contains("policies.p.burst"));
        assert!(error(ok().rate(Rate::per_minute(5))).contains("share the window"));
        assert!(error(ok().cost(Cost::fixed(0))).contains("policies.p.cost"));
        assert!(ok().cost(Cost::fixed(1)).check().is_ok());
        let above = Policy::new("p")
            .rate(Rate::per_minute(3))
            .key(Key::global())
            .cost(Cost::fixed(4));
        assert!(error(above).contains("policies.p.cost"));
        let above_burst = gcra()
            .rate(Rate::per_second(10))
            .burst(2)
            .cost(Cost::fixed(3));
        assert!(error(above_burst).contains("policies.p.cost"));
        let huge = Policy::new("p")
            .rate(Rate::per_day(1 << 40))
            .key(Key::global());
        assert!(error(huge).contains("too large"));
        assert!(error(ok().key(Key::header("x y"))).contains("policies.p.key.header"));
        let ok_status = OnMissingKey::Reject(StatusCode::OK);
        assert!(error(ok().on_missing_key(ok_status)).contains("policies.p.on_missing_key"));
    }
}
