//! [`Policy`]: what is limited, how, and what happens at the edges.

use std::{fmt, num::NonZeroU64, sync::Arc, time::Duration};

use axum::response::Response;
use http::Method;

use crate::{
    Algorithm, Cost, Error, ForwardedHeader, Key, Rate,
    algorithm::{Limit, MAX_LIMITS, Script},
    config::{
        Breaker, Clock, CostConfig, ExemptHeader, FailMode, KeyConfig, LeaseConfig, LimitConfig,
        Mode, OnMissingKey, PolicyConfig,
    },
    exempt::Exemptions,
    key::{encode, layout},
    response::Rejection,
};

pub use crate::exempt::ExemptPredicate;

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
    /// Every plain setting, as a file writes it.
    pub(crate) settings: PolicyConfig,
    /// What only code can say: a key or a cost of its own, a response hook.
    pub(crate) key: Option<Key>,
    pub(crate) cost: Cost,
    pub(crate) on_rejected: Option<RejectionHook>,
    pub(crate) exempt_if: Option<ExemptPredicate>,
}

impl Policy {
    /// A policy called `name`; the name is part of every counter key and of
    /// the `RateLimit` headers, so two policies never share counters. It may
    /// hold letters, digits, `-`, `_` and `.`.
    pub fn new(name: impl Into<String>) -> Self {
        PolicyConfig::new(name).into_policy()
    }

    /// Adds a rate to enforce (at least one is required). Several rates,
    /// such as `10/s` and `1000/m`, are all checked in one store call; a
    /// request must fit all of them and is counted by all or none.
    pub fn rate(mut self, rate: Rate) -> Self {
        self.settings.rate.push(rate);
        self
    }

    /// Adds a limit with a burst size of its own (GCRA). Limits are
    /// counted in the order of the rates, then of these.
    pub fn limit(mut self, limit: Limit) -> Self {
        let (rate, burst) = (limit.rate(), limit.burst);
        self.settings.limits.push(LimitConfig { rate, burst });
        self
    }

    /// For [`Algorithm::Gcra`]: the burst size of every limit that has none
    /// of its own (default: each limit's rate limit).
    pub fn burst(mut self, burst: NonZeroU64) -> Self {
        self.settings.burst = Some(burst);
        self
    }

    /// How to count (default [`Algorithm::FixedWindow`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.settings.algorithm = algorithm;
        self
    }

    /// Whose clock to use (default [`Clock::Store`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.settings.clock = clock;
        self
    }

    /// How many requests each request counts as (default 1).
    pub fn cost(mut self, cost: Cost) -> Self {
        self.settings.cost = None;
        self.cost = cost;
        self
    }

    /// Whom to count (required).
    pub fn key(mut self, key: Key) -> Self {
        // A file's key, if any, no longer describes the policy.
        self.settings.key = None;
        self.key = Some(key);
        self
    }

    /// What to do when the key is missing (default: reject with 400).
    pub fn on_missing_key(mut self, action: OnMissingKey) -> Self {
        self.settings.on_missing_key = action;
        self
    }

    /// Block (default) or annotate.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.settings.mode = mode;
        self
    }

    /// What to do when the store fails (default [`FailMode::Open`]).
    pub fn on_store_error(mut self, mode: FailMode) -> Self {
        self.settings.on_store_error = mode;
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
        self.settings.fallback_divisor = divisor;
        self
    }

    /// Remember denials in-process and answer `429` for a denied key until
    /// its `Retry-After` has passed, without asking the store (see
    /// [`block_cache`](crate::block_cache)); at most `capacity` keys
    /// (default off).
    pub fn block_cache(mut self, capacity: usize) -> Self {
        self.settings.block_cache = Some(capacity);
        self
    }

    /// Lease mode: each app server takes a slice of a key's remaining quota
    /// from the store in one call, at most `max_slice` requests' worth, and
    /// admits locally until the slice is spent or its window ends; unspent
    /// slices go back when idle, when evicted and at
    /// [`release_leases`](crate::RateLimitLayer::release_leases). Across
    /// every app server, no window ever admits more than its limit; what a
    /// crashed server held is lost for its window. For keys that see many
    /// requests per window (telemetry agents), not for login limits of
    /// `10/h`. Fixed and sliding windows on the store's clock only; see
    /// [`lease`](crate::lease) for the rules and their bounds.
    ///
    /// ```
    /// use axum_redis_ratelimit::{Key, Policy, Rate};
    /// use std::time::Duration;
    ///
    /// let telemetry = Policy::new("telemetry")
    ///     .rate(Rate::per_minute(1000))
    ///     .key(Key::header("X-Agent-Token").secret())
    ///     .lease(64)
    ///     .lease_instances(4)
    ///     .lease_idle_return(Duration::from_millis(250));
    /// telemetry.validate().unwrap();
    /// ```
    pub fn lease(mut self, max_slice: u64) -> Self {
        self.lease_settings().max_slice = max_slice;
        self
    }

    /// For [`lease`](Self::lease): how many app servers share the keys
    /// (default 1); a slice is at most what a key has left divided by it.
    pub fn lease_instances(mut self, instances: u64) -> Self {
        self.lease_settings().instances = instances;
        self
    }

    /// For [`lease`](Self::lease): give a slice back once no request has
    /// used it for this long (default 250 ms, whole milliseconds).
    pub fn lease_idle_return(mut self, idle: Duration) -> Self {
        self.lease_settings().idle_return = idle;
        self
    }

    /// For [`lease`](Self::lease): keys holding a slice in this process, at
    /// most (default 10,000); a new key in a full table evicts one, whose
    /// slice is given back first.
    pub fn lease_capacity(mut self, capacity: usize) -> Self {
        self.lease_settings().capacity = capacity;
        self
    }

    /// The lease settings, created (with no slice size yet) if absent.
    fn lease_settings(&mut self) -> &mut LeaseConfig {
        self.settings.lease.get_or_insert(LeaseConfig::new(0))
    }

    /// When to stop calling a failing store (default: after 3 failures in a
    /// row, probing every 500 ms).
    pub fn breaker(mut self, breaker: Breaker) -> Self {
        self.settings.breaker = breaker;
        self
    }

    /// The longest a request waits for the store (default 100 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// Limit only requests with these methods; others pass untouched.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings.methods = Some(methods.into_iter().map(|m| m.to_string()).collect());
        self
    }

    /// The start of every Redis key (default `rl:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = prefix.into();
        self
    }

    /// Also send `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` (seconds until reset), for older clients.
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.settings.legacy_headers = on;
        self
    }

    /// Whether the policy limits anything (default `true`): `false` lets
    /// every request through untouched, to switch a policy off from its
    /// configuration without removing its layer.
    pub fn enabled(mut self, on: bool) -> Self {
        self.settings.enabled = on;
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

    /// Lets requests from these networks (`10.20.0.0/16`) or addresses
    /// through uncounted. The client is the socket peer unless
    /// [`exempt_trusted_proxies`](Self::exempt_trusted_proxies) says
    /// otherwise; a bad entry is reported when the layer is built, as
    /// `exempt.ips`.
    pub fn exempt_ips<I, S>(mut self, networks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings
            .exempt
            .ips
            .extend(networks.into_iter().map(Into::into));
        self
    }

    /// For [`exempt_ips`](Self::exempt_ips): proxies whose `header` names
    /// the client, as [`ClientIp::trust_proxies`](crate::ClientIp::trust_proxies).
    pub fn exempt_trusted_proxies<I, S>(mut self, proxies: I, header: ForwardedHeader) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let exempt = &mut self.settings.exempt;
        exempt
            .trusted_proxies
            .extend(proxies.into_iter().map(Into::into));
        exempt.forwarded_header = header;
        self
    }

    /// Lets requests through uncounted whose `header` came once, set to one
    /// of `values` (compared in constant time: they are usually tokens).
    ///
    /// ```
    /// use axum_redis_ratelimit::{Key, Policy, Rate};
    ///
    /// let telemetry = Policy::new("telemetry")
    ///     .rate(Rate::per_minute(1000))
    ///     .key(Key::header("X-Agent-Token").secret())
    ///     .exempt_header("X-Agent-Token", ["internal-health-agent"]);
    /// ```
    pub fn exempt_header<I, S>(mut self, header: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let header = ExemptHeader::new(header, values);
        self.settings.exempt.headers.push(header);
        self
    }

    /// Lets requests through uncounted for which `predicate` says so, given
    /// the request head; with the exemptions above, any one suffices.
    ///
    /// ```
    /// use axum_redis_ratelimit::{Key, Policy, Rate};
    ///
    /// let api = Policy::new("api")
    ///     .rate(Rate::per_minute(60))
    ///     .key(Key::client_ip())
    ///     .exempt_if(|parts| parts.uri.path() == "/api/v1/status");
    /// ```
    pub fn exempt_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    {
        self.exempt_if = Some(Arc::new(predicate));
        self
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Its limits as they will be counted: its rates, then the limits with
    /// a burst of their own, each with its own burst or else the policy's.
    pub fn limits(&self) -> impl Iterator<Item = Limit> + '_ {
        let s = &self.settings;
        let rates = s.rate.iter().map(|&rate| LimitConfig { rate, burst: None });
        rates.chain(s.limits.iter().copied()).map(|l| Limit {
            rate: l.rate,
            burst: l.burst.or(s.burst),
        })
    }

    /// Its settings, as a file would write them (a key or a cost given in
    /// code is not among them).
    pub fn settings(&self) -> &PolicyConfig {
        &self.settings
    }

    /// The Redis key of one client of this policy, exactly as the layer
    /// writes it for a request whose value for the key labelled `label` is
    /// `value`: hashed when the key is secret or the value unsafe in a key,
    /// an address grouped by the key's IPv6 prefix. `label` picks a key of
    /// the [`Key::or`] chain (`x-agent-token`, `ip`, `user`, `global`…);
    /// `None` is the first. A `client_ip` key takes an address; a `global`
    /// key takes no value (`b""`). Operators find a client's counters with
    /// it; the `ratelimit` tool (feature `cli`) does.
    ///
    /// ```
    /// use axum_redis_ratelimit::{Key, Policy, Rate};
    ///
    /// # fn main() -> Result<(), axum_redis_ratelimit::Error> {
    /// let policy = Policy::new("telemetry")
    ///     .rate(Rate::per_minute(1000))
    ///     .key(Key::header("X-Agent-Token").or(Key::client_ip()));
    /// assert_eq!(
    ///     policy.client_key(None, b"AGENT-1")?,
    ///     "rl:telemetry:{x-agent-token:AGENT-1}"
    /// );
    /// assert_eq!(
    ///     policy.client_key(Some("ip"), b"203.0.113.9")?,
    ///     "rl:telemetry:{ip:203.0.113.9}"
    /// );
    /// // A value that could break the key's shape is hashed, as the layer does.
    /// assert!(policy.client_key(None, b"a}b")?.starts_with("rl:telemetry:{x-agent-token:#"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] naming the policy's first wrong setting, as
    /// [`validate`](Self::validate); `key` for a label the chain does not
    /// have; `value` for a value the key cannot hold (empty, not an IP
    /// address, any value for a `global` key).
    pub fn client_key(&self, label: Option<&str>, value: &[u8]) -> Result<String, Error> {
        self.validate()?;
        let chain = self.key.as_ref().expect("a checked policy has a key");
        let key = match label {
            None => chain,
            Some(label) => chain.chain().find(|k| k.label() == label).ok_or_else(|| {
                let labels: Vec<&str> = chain.chain().map(Key::label).collect();
                Error::config(
                    "key",
                    format!(
                        "policy {:?} has no key labelled {label:?}; its keys are {}",
                        self.settings.name,
                        labels.join(", ")
                    ),
                )
            })?,
        };
        let head = layout::head(&self.settings.prefix, &self.settings.name);
        let mut out = String::new();
        layout::client_key_of_value(&head, key, value, &mut out)?;
        Ok(out)
    }

    /// The `SCAN MATCH` pattern of every counter of this policy, e.g.
    /// `rl:telemetry:{*` (prefixes and names hold no glob characters).
    pub fn counter_pattern(&self) -> String {
        let mut pattern = layout::head(&self.settings.prefix, &self.settings.name);
        pattern.push('*');
        pattern
    }

    /// The client key that `counter`, a key found in Redis, belongs to, if
    /// it is one of this policy's counters as its limits and algorithm
    /// name them now: `rl:telemetry:{x-agent-token:#3f…}` of
    /// `rl:telemetry:{x-agent-token:#3f…}:60:gcra`. `None` for another
    /// policy's key, or a counter of a window or algorithm the policy no
    /// longer has.
    ///
    /// ```
    /// use axum_redis_ratelimit::{Algorithm, Key, Policy, Rate};
    ///
    /// let policy = Policy::new("telemetry")
    ///     .rate(Rate::per_minute(1000))
    ///     .algorithm(Algorithm::Gcra)
    ///     .key(Key::header("X-Agent-Token"));
    /// let counter = "rl:telemetry:{x-agent-token:AGENT-1}:60:gcra";
    /// assert_eq!(
    ///     policy.client_of_counter(counter),
    ///     Some("rl:telemetry:{x-agent-token:AGENT-1}")
    /// );
    /// assert_eq!(policy.client_of_counter("rl:telemetry:{x-agent-token:AGENT-1}:60"), None);
    /// ```
    pub fn client_of_counter<'a>(&self, counter: &'a str) -> Option<&'a str> {
        let s = &self.settings;
        let head = layout::head(&s.prefix, &s.name);
        let client = layout::client_of_counter(&head, counter)?;
        let mut own = String::new();
        self.limits()
            .any(|limit| {
                let script = Script::of(s.algorithm, s.clock == Clock::App);
                layout::counter_key(client, &limit, script, &mut own);
                own == counter
            })
            .then_some(client)
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

    /// Checks every setting and gives the limits as they will be counted
    /// and the methods limited; the error names the first setting that is
    /// wrong.
    pub(crate) fn check(&self) -> Result<Checked, Error> {
        self.check_settings()
            .map_err(|error| error.in_policy(&self.settings.name))
    }

    fn check_settings(&self) -> Result<Checked, Error> {
        let s = &self.settings;
        if !encode::is_valid_name(&s.name) {
            return Err(Error::config(
                "name",
                format!(
                    "{:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                    s.name
                ),
            ));
        }
        if !encode::is_valid_prefix(&s.prefix) {
            return Err(Error::config(
                "prefix",
                format!(
                    "{:?} must be 1 to 64 letters, digits, '-', '_', '.' or ':'",
                    s.prefix
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
        if s.timeout.is_zero() {
            return Err(Error::config("timeout_ms", "must be above zero"));
        }
        if let OnMissingKey::Reject(status) = s.on_missing_key
            && !(status.is_client_error() || status.is_server_error())
        {
            return Err(Error::config(
                "on_missing_key",
                format!("{status} is not an error status; use `allow` to let requests pass"),
            ));
        }
        if s.fallback_divisor == 0 {
            return Err(Error::config("fallback_divisor", "must be at least 1"));
        }
        if s.block_cache == Some(0) {
            return Err(Error::config("block_cache", "must hold at least 1 key"));
        }
        if s.breaker.failures == 0 || s.breaker.cooldown_ms == 0 {
            return Err(Error::config(
                "breaker",
                "failures and cooldown_ms must be at least 1",
            ));
        }
        let methods = match &s.methods {
            None => None,
            Some(names) if names.is_empty() => {
                return Err(Error::config(
                    "methods",
                    "is empty, so nothing would be limited",
                ));
            }
            Some(names) => Some(
                names
                    .iter()
                    .map(|name| {
                        Method::from_bytes(name.to_ascii_uppercase().as_bytes()).map_err(|_| {
                            Error::config("methods", format!("{name:?} is not an HTTP method"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let capacity = limits.iter().map(|l| l.capacity(s.algorithm)).min();
        if let (Some(cost), Some(capacity)) = (self.cost.fixed_value(), capacity)
            && cost > capacity
        {
            return Err(Error::config(
                "cost",
                format!("{cost} is above {capacity}, the most one request can be allowed"),
            ));
        }
        if let Some(lease) = &s.lease {
            check_lease(lease, s)?;
        }
        let exemptions = Exemptions::new(&s.exempt, self.exempt_if.clone())?;
        Ok(Checked {
            limits,
            methods,
            exemptions,
        })
    }

    /// The limits with the policy's burst applied, checked for the bounds
    /// within which both stores compute exactly (integers below 2^53).
    fn checked_limits(&self) -> Result<Vec<Limit>, Error> {
        let s = &self.settings;
        let limits: Vec<Limit> = self.limits().collect();
        if limits.is_empty() {
            return Err(Error::config("rate", "is required, e.g. \"1000/m\""));
        }
        if limits.len() > MAX_LIMITS {
            return Err(Error::config(
                "limits",
                format!(
                    "at most {MAX_LIMITS} limits per policy, not {}",
                    limits.len()
                ),
            ));
        }
        let bursts = s.burst.is_some() || s.limits.iter().any(|l| l.burst.is_some());
        if bursts && s.algorithm != Algorithm::Gcra {
            return Err(Error::config("burst", "applies only to the gcra algorithm"));
        }
        for (i, limit) in limits.iter().enumerate() {
            let rate = limit.rate;
            limit.validate("")?;
            if limits[..i].iter().any(|l| l.rate.window() == rate.window()) {
                return Err(Error::config(
                    "rate",
                    format!("two limits share the window of {rate}"),
                ));
            }
        }
        Ok(limits)
    }
}

/// Lease mode's settings, and whether the policy can lease at all.
fn check_lease(lease: &LeaseConfig, s: &PolicyConfig) -> Result<(), Error> {
    if lease.max_slice == 0 {
        return Err(Error::config(
            "lease.max_slice",
            "must be at least 1: the largest slice of a key's quota one app server takes \
             (leave lease out to ask the store for every request)",
        ));
    }
    if lease.instances == 0 {
        return Err(Error::config(
            "lease.instances",
            "must be at least 1: the app servers sharing the keys",
        ));
    }
    if lease.idle_return.as_millis() == 0 {
        return Err(Error::config(
            "lease.idle_return_ms",
            "must be at least 1 ms: how long a slice may go unused before it is given back",
        ));
    }
    if lease.capacity == 0 {
        return Err(Error::config("lease.capacity", "must hold at least 1 key"));
    }
    if s.algorithm == Algorithm::Gcra {
        return Err(Error::config(
            "lease",
            "is not available with the gcra algorithm: a GCRA bucket has no window, so \
             nothing bounds when a slice taken from it is spent, and a slice spent late is a \
             burst the bucket never allowed; use fixed_window or sliding_window",
        ));
    }
    if s.clock == Clock::App {
        return Err(Error::config(
            "lease",
            "needs clock = \"store\": a slice must end with its window, which lease mode \
             times on the store's clock from when the slice was asked for, with no clock of \
             the app's involved",
        ));
    }
    Ok(())
}

/// What [`Policy::check`] derives from the settings.
#[derive(Debug)]
pub(crate) struct Checked {
    pub limits: Vec<Limit>,
    pub methods: Option<Vec<Method>>,
    pub exemptions: Option<Exemptions>,
}

impl From<PolicyConfig> for Policy {
    /// The policy these settings describe, with the file's key and cost.
    /// [`RateLimitLayer::new`](crate::RateLimitLayer::new) checks it.
    fn from(settings: PolicyConfig) -> Self {
        let cost = match &settings.cost {
            Some(CostConfig::Fixed(cost)) => Cost::fixed(*cost),
            Some(CostConfig::Header { header }) => Cost::header(header),
            None => Cost::default(),
        };
        Self {
            key: settings.key.clone().map(KeyConfig::into_key),
            cost,
            settings,
            on_rejected: None,
            exempt_if: None,
        }
    }
}

impl PolicyConfig {
    /// The policy this describes, as `Policy::from`; a setting that cannot
    /// work is reported when the policy is checked, naming its field.
    pub fn into_policy(self) -> Policy {
        self.into()
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("settings", &self.settings)
            .field("key", &self.key)
            .field("cost", &self.cost)
            .field("on_rejected", &self.on_rejected.as_ref().map(|_| "custom"))
            .field("exempt_if", &self.exempt_if.as_ref().map(|_| "custom"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    fn error(policy: Policy) -> String {
        policy.check().expect_err("should be rejected").to_string()
    }

    #[test]
    fn config_errors_carry_their_path() {
        let err = Policy::new("p")
            .rate(Rate::per_minute(1))
            .key(Key::global())
            .burst(nz(2))
            .check()
            .unwrap_err();
        assert_eq!(err.config_path().as_deref(), Some("policies.p.burst"));
        assert!(matches!(err, Error::Config { ref field, .. } if field == "burst"));
        // A policy without a name is not `policies..name`.
        let unnamed = Policy::new("").check().unwrap_err();
        assert_eq!(unnamed.config_path().as_deref(), Some("name"));
        assert!(
            unnamed.to_string().starts_with("invalid `name`"),
            "{unnamed}"
        );
        let timeout = Error::Timeout(Duration::from_millis(1));
        assert_eq!(timeout.config_path(), None);
    }

    #[test]
    fn the_client_key_of_a_value_is_the_layers_for_a_request_carrying_it() {
        use std::net::SocketAddr;

        use axum::extract::ConnectInfo;

        let ip = crate::ClientIp::new().ipv6_prefix(56);
        let policy = Policy::new("telemetry")
            .rate(Rate::per_minute(10))
            .prefix("app:rl:")
            .key(
                Key::header("X-Agent-Token")
                    .secret()
                    .or(Key::client_ip_with(ip)),
            );
        let layer = |token: Option<&str>| {
            let mut request = http::Request::new(());
            if let Some(token) = token {
                request
                    .headers_mut()
                    .insert("x-agent-token", token.parse().unwrap());
            }
            let peer: SocketAddr = "[2001:db8:1:2ff::9]:443".parse().unwrap();
            request.extensions_mut().insert(ConnectInfo(peer));
            let head = layout::head("app:rl:", "telemetry");
            let mut key = String::new();
            let chain = policy.key.as_ref().unwrap();
            layout::client_key(&head, chain, &request.into_parts().0, &mut key).unwrap();
            key
        };
        let token = "AGENT 1 {x}";
        assert_eq!(
            policy.client_key(None, token.as_bytes()).unwrap(),
            layer(Some(token))
        );
        assert_eq!(
            policy
                .client_key(Some("x-agent-token"), token.as_bytes())
                .unwrap(),
            layer(Some(token))
        );
        let by_ip = policy.client_key(Some("ip"), b"2001:db8:1:2ff::9").unwrap();
        assert_eq!(by_ip, layer(None));
        assert_eq!(by_ip, "app:rl:telemetry:{ip:2001:db8:1:200::/56}");
        let unknown = policy.client_key(Some("user"), b"u").unwrap_err();
        assert_eq!(unknown.config_path().as_deref(), Some("key"));
        assert!(
            unknown
                .to_string()
                .contains("its keys are x-agent-token, ip"),
            "{unknown}"
        );
        let unchecked = Policy::new("p").key(Key::global()).client_key(None, b"");
        assert!(
            unchecked
                .unwrap_err()
                .to_string()
                .contains("policies.p.rate")
        );
        assert_eq!(policy.counter_pattern(), "app:rl:telemetry:{*");
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
        assert_eq!(
            Breaker::new(3, Duration::from_millis(500)),
            Breaker::default()
        );
        let no_failures = Breaker::new(0, Duration::from_millis(1));
        assert!(error(ok().breaker(no_failures)).contains("policies.p.breaker"));
        assert!(error(ok().burst(nz(5))).contains("policies.p.burst"));
        let gcra = || ok().algorithm(Algorithm::Gcra);
        assert!(gcra().burst(nz(5)).check().is_ok());
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
            .burst(nz(2))
            .cost(Cost::fixed(3));
        assert!(error(above_burst).contains("policies.p.cost"));
        let huge = Policy::new("p")
            .rate(Rate::per_day(1 << 40))
            .key(Key::global());
        assert!(error(huge).contains("too large"));
        assert!(error(ok().key(Key::header("x y"))).contains("policies.p.key.header"));
        let proxies = crate::ClientIp::new().trust_proxies(["10.0.0.0/8", "x"]);
        let bad_proxy = ok().key(Key::client_ip_with(proxies));
        assert!(error(bad_proxy).contains("policies.p.key.trusted_proxies"));
        let bad_prefix = ok().key(Key::client_ip_with(crate::ClientIp::new().ipv6_prefix(0)));
        assert!(error(bad_prefix).contains("policies.p.key.ipv6_prefix"));
        let ok_status = OnMissingKey::Reject(StatusCode::OK);
        assert!(error(ok().on_missing_key(ok_status)).contains("policies.p.on_missing_key"));
    }
}
