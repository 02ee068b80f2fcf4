//! A policy's settings, as plain data that serde reads from a file.
//!
//! [`PolicyConfig`] holds every plain setting of a
//! [`Policy`](crate::Policy): a file writes it, and the builder writes into
//! it. What needs a closure (a custom key or cost, the rejection hook) stays
//! in code.
//!
//! ```
//! use axum_redis_ratelimit::config::PolicyConfig;
//!
//! let json = r#"{
//!     "name": "telemetry",
//!     "rate": ["10/s", "1000/m"],
//!     "algorithm": "gcra",
//!     "burst": 20,
//!     "key": { "type": "header", "name": "X-Agent-Token", "secret": true },
//!     "cost": { "header": "X-Event-Count" },
//!     "on_missing_key": { "reject": 401 },
//!     "on_store_error": "open",
//!     "methods": ["POST"],
//!     "timeout_ms": 50
//! }"#;
//! let config: PolicyConfig = serde_json::from_str(json).unwrap();
//! let policy = config.into_policy();
//! policy.validate().unwrap();
//! ```
//!
//! [`PolicyFile`] holds several, as `[[policies]]` tables in TOML.

use std::{fmt, num::NonZeroU64, time::Duration};

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::{Algorithm, ClientIp, ForwardedHeader, Key, Rate};

/// What the layer does with a request over the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// Answer `429 Too Many Requests`.
    #[default]
    Block,
    /// Forward every request; handlers read the decision with the
    /// [`RateLimitStatus`](crate::RateLimitStatus) extractor and decide.
    Annotate,
    /// Decide and count as usual, but block nothing and send no rate-limit
    /// headers: the would-be denials show only in the metrics
    /// ([`Outcome::ShadowDenied`](crate::Outcome::ShadowDenied)) and the
    /// logs. How a new limit is tried on real traffic before it blocks. A
    /// store outage forwards the request whatever the fail mode, and a
    /// request the layer would refuse (no key, a bad cost) is forwarded and
    /// counted.
    Shadow,
}

/// What the layer does when the store fails or does not answer in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
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
    /// limits, each divided by
    /// [`Policy::fallback_divisor`](crate::Policy::fallback_divisor) (say, the
    /// number of app servers), until the store answers again.
    Fallback,
}

/// What the layer does with a request whose key cannot be found (no agent
/// token, no user). To try another key first, use [`Key::or`].
///
/// In a file: `"allow"`, or `{ reject = 401 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
pub enum Clock {
    /// The store's: each counter's Redis expiry is its clock, so every app
    /// server counts on one clock whatever their own drift, and no script
    /// reads `TIME`.
    #[default]
    Store,
    /// The application's system clock, sent with each call, for
    /// deployments that want windows on the app servers' time. Their
    /// clocks must then agree (NTP); skew between them shifts windows by as
    /// much, and never lifts a limit.
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
#[non_exhaustive]
pub struct Breaker {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures: u32,
    /// Time between probes while open, in milliseconds.
    pub cooldown_ms: u64,
}

impl Breaker {
    /// Open after `failures` store calls in a row fail (at least 1); while
    /// open, probe every `cooldown` (whole milliseconds, at least 1).
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures,
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
        }
    }
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

/// Default bound on a store call: well above a healthy Redis round trip
/// (well under 1 ms on a LAN), well below what a client notices.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// Default start of every Redis key.
pub const DEFAULT_PREFIX: &str = "rl:";

/// Several policies, e.g. a TOML file of `[[policies]]` tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicyFile {
    /// The policies, each with a distinct name.
    pub policies: Vec<PolicyConfig>,
}

impl PolicyFile {
    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<&PolicyConfig> {
        self.policies.iter().find(|p| p.name == name)
    }
}

/// Every plain setting of a policy: what a configuration file writes, and
/// what the [`Policy`](crate::Policy) builder writes into. A new setting is
/// one field here, one builder method, and the code that uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// See [`Policy::new`](crate::Policy::new).
    pub name: String,
    /// See [`Policy::rate`](crate::Policy::rate): one rate (`"1000/m"`) or
    /// several (`["10/s", "1000/m"]`).
    #[serde(with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub rate: Vec<Rate>,
    /// See [`Policy::limit`](crate::Policy::limit): limits with a burst of
    /// their own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitConfig>,
    /// See [`Policy::burst`](crate::Policy::burst).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<NonZeroU64>,
    /// See [`Policy::algorithm`](crate::Policy::algorithm).
    pub algorithm: Algorithm,
    /// See [`Policy::clock`](crate::Policy::clock).
    pub clock: Clock,
    /// See [`Policy::key`](crate::Policy::key); required in a file, left out
    /// when the builder is given a [`Key`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyConfig>,
    /// See [`Policy::cost`](crate::Policy::cost); 1 when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostConfig>,
    /// See [`Policy::on_missing_key`](crate::Policy::on_missing_key).
    pub on_missing_key: OnMissingKey,
    /// See [`Policy::mode`](crate::Policy::mode).
    pub mode: Mode,
    /// See [`Policy::on_store_error`](crate::Policy::on_store_error).
    pub on_store_error: FailMode,
    /// See [`Policy::timeout`](crate::Policy::timeout); whole milliseconds
    /// in a file, as `timeout_ms`.
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// See [`Policy::methods`](crate::Policy::methods); absent: all methods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// See [`Policy::prefix`](crate::Policy::prefix).
    pub prefix: String,
    /// See [`Policy::legacy_headers`](crate::Policy::legacy_headers).
    pub legacy_headers: bool,
    /// See [`Policy::block_cache`](crate::Policy::block_cache): how many
    /// denied keys to remember.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_cache: Option<usize>,
    /// See [`Policy::fallback_divisor`](crate::Policy::fallback_divisor).
    pub fallback_divisor: u64,
    /// See [`Policy::breaker`](crate::Policy::breaker).
    pub breaker: Breaker,
    /// See [`Policy::enabled`](crate::Policy::enabled).
    pub enabled: bool,
    /// Requests let through uncounted; see [`ExemptConfig`].
    #[serde(skip_serializing_if = "ExemptConfig::is_empty")]
    pub exempt: ExemptConfig,
    /// Lease mode (see [`LeaseConfig`] and [`lease`](crate::lease)); absent:
    /// every request asks the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseConfig>,
}

impl PolicyConfig {
    /// A policy called `name` with every setting at its default.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

impl Default for PolicyConfig {
    /// Every setting's default, in one place: what a file leaves out and
    /// what a new builder starts from.
    fn default() -> Self {
        Self {
            name: String::new(),
            rate: Vec::new(),
            limits: Vec::new(),
            burst: None,
            algorithm: Algorithm::default(),
            clock: Clock::default(),
            key: None,
            cost: None,
            on_missing_key: OnMissingKey::default(),
            mode: Mode::default(),
            on_store_error: FailMode::default(),
            timeout: DEFAULT_TIMEOUT,
            methods: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            legacy_headers: false,
            block_cache: None,
            fallback_divisor: 1,
            breaker: Breaker::default(),
            enabled: true,
            exempt: ExemptConfig::default(),
            lease: None,
        }
    }
}

/// Lease mode's settings: each app server takes a slice of a key's
/// remaining quota from the store in one call and decides locally until the
/// slice is spent or its window ends (see [`lease`](crate::lease)). In a
/// file, `max_slice` is required and the rest default:
///
/// ```toml
/// [policies.lease]
/// max_slice = 64        # the largest slice one app server takes
/// instances = 4         # app servers sharing the keys: a slice is at most 1/4 of what is left
/// idle_return_ms = 250  # give back a slice unused for this long
/// capacity = 10000      # keys holding a slice in this process, at most
/// ```
///
/// The builder writes the same fields: [`Policy::lease`](crate::Policy::lease),
/// [`lease_instances`](crate::Policy::lease_instances),
/// [`lease_idle_return`](crate::Policy::lease_idle_return),
/// [`lease_capacity`](crate::Policy::lease_capacity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// The largest slice of a key's quota one app server takes in one call
    /// (at least 1). A request costing more takes exactly its cost.
    pub max_slice: u64,
    /// How many app servers share the keys (at least 1): a slice is at most
    /// what the key has left divided by this, so that each can still get
    /// some. Default 1.
    #[serde(default = "LeaseConfig::default_instances")]
    pub instances: u64,
    /// Give a slice back once no request has used it for this long
    /// (`idle_return_ms` in a file; at least 1 ms). Default 250 ms.
    #[serde(
        rename = "idle_return_ms",
        with = "millis",
        default = "LeaseConfig::default_idle_return"
    )]
    pub idle_return: Duration,
    /// Keys holding a slice in this process, at most (at least 1): a new key
    /// in a full table evicts one, whose slice is given back first. Default
    /// 10,000.
    #[serde(default = "LeaseConfig::default_capacity")]
    pub capacity: usize,
}

/// Default of [`LeaseConfig::idle_return`].
pub const DEFAULT_LEASE_IDLE_RETURN: Duration = Duration::from_millis(250);

/// Default of [`LeaseConfig::capacity`].
pub const DEFAULT_LEASE_CAPACITY: usize = 10_000;

impl LeaseConfig {
    /// Slices of at most `max_slice`, every other setting at its default.
    pub fn new(max_slice: u64) -> Self {
        Self {
            max_slice,
            instances: Self::default_instances(),
            idle_return: Self::default_idle_return(),
            capacity: Self::default_capacity(),
        }
    }

    fn default_instances() -> u64 {
        1
    }

    fn default_idle_return() -> Duration {
        DEFAULT_LEASE_IDLE_RETURN
    }

    fn default_capacity() -> usize {
        DEFAULT_LEASE_CAPACITY
    }
}

/// Requests a policy lets through without counting them (and counts as
/// [`Outcome::Exempt`](crate::Outcome::Exempt)): from these addresses, or
/// carrying one of these header values. In a file:
///
/// ```toml
/// [policies.exempt]
/// ips = ["10.20.0.0/16", "192.0.2.7"]
/// trusted_proxies = ["10.0.0.0/8"]
/// headers = [{ name = "x-agent-token", values = ["health-agent-token"] }]
/// ```
///
/// The builder writes the same fields ([`Policy::exempt_ips`],
/// [`Policy::exempt_header`](crate::Policy::exempt_header)) and adds a
/// predicate of its own ([`Policy::exempt_if`](crate::Policy::exempt_if)).
///
/// [`Policy::exempt_ips`]: crate::Policy::exempt_ips
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ExemptConfig {
    /// Client networks (`10.20.0.0/16`) or addresses whose requests are
    /// exempt. The client is the socket peer unless it is one of
    /// `trusted_proxies`, as for a `client_ip` key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Proxies whose forwarding header names the client, for `ips`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// The header those proxies set.
    pub forwarded_header: ForwardedHeader,
    /// Header values that exempt a request carrying exactly one line of
    /// that header with one of them, compared in constant time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ExemptHeader>,
}

impl ExemptConfig {
    /// Whether nothing is exempt.
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.headers.is_empty()
    }
}

/// A header whose values exempt a request: `{ name = "x-agent-token",
/// values = ["…"] }`. The values are secrets (tokens): `Debug` hides them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ExemptHeader {
    /// The header's name.
    pub name: String,
    /// The values that exempt.
    pub values: Vec<String>,
}

impl ExemptHeader {
    /// Requests with `name` set to one of `values` are exempt.
    pub fn new<I, S>(name: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            name: name.into(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }
}

impl fmt::Debug for ExemptHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExemptHeader")
            .field("name", &self.name)
            .field("values", &format_args!("[{} hidden]", self.values.len()))
            .finish()
    }
}

/// A duration as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A [`Limit`](crate::Limit) as a configuration file writes it: `{ rate = "10/s", burst = 20 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitConfig {
    /// The rate.
    pub rate: Rate,
    /// Its GCRA burst size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<NonZeroU64>,
}

/// A [`Cost`](crate::Cost) as a configuration file writes it: a number, or
/// `{ header = "X-Event-Count" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum CostConfig {
    /// See [`Cost::fixed`](crate::Cost::fixed).
    Fixed(u64),
    /// See [`Cost::header`](crate::Cost::header).
    Header {
        /// The header's name.
        header: String,
    },
}

/// A [`Key`] as a configuration file writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeyConfig {
    /// Where the value comes from.
    #[serde(flatten)]
    pub source: KeySource,
    /// See [`Key::secret`].
    #[serde(default)]
    pub secret: bool,
    /// See [`Key::or`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or: Option<Box<KeyConfig>>,
}

/// The built-in keys, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeySource {
    /// See [`Key::header`].
    Header {
        /// The header's name.
        name: String,
    },
    /// See [`Key::client_ip_with`].
    ClientIp {
        /// CIDRs of proxies whose forwarding header is believed.
        #[serde(default)]
        trusted_proxies: Vec<String>,
        /// The header they set.
        #[serde(default)]
        header: ForwardedHeader,
        /// Group IPv6 clients by this prefix length.
        #[serde(default)]
        ipv6_prefix: Option<u8>,
    },
    /// See [`Key::user`].
    User,
    /// See [`Key::global`].
    Global,
}

impl KeyConfig {
    /// The key this describes; a bad proxy CIDR or IPv6 prefix is reported
    /// when the policy is checked, as `policies.<name>.key.<field>`.
    pub fn into_key(self) -> Key {
        let mut key = match self.source {
            KeySource::Header { name } => Key::header(&name),
            KeySource::ClientIp {
                trusted_proxies,
                header,
                ipv6_prefix,
            } => {
                let mut ip = ClientIp::new()
                    .trust_proxies(trusted_proxies)
                    .header(header);
                if let Some(prefix) = ipv6_prefix {
                    ip = ip.ipv6_prefix(prefix);
                }
                Key::client_ip_with(ip)
            }
            KeySource::User => Key::user(),
            KeySource::Global => Key::global(),
        };
        if self.secret {
            key = key.secret();
        }
        if let Some(fallback) = self.or {
            key = key.or(fallback.into_key());
        }
        key
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

/// A rate or a list of rates; a bad rate's error quotes it.
mod one_or_many {
    use std::fmt;

    use serde::{
        Deserializer, Serialize, Serializer,
        de::{self, SeqAccess, Visitor},
    };

    use crate::Rate;

    pub fn serialize<S: Serializer>(rates: &[Rate], s: S) -> Result<S::Ok, S::Error> {
        match rates {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Rate>, D::Error> {
        struct Rates;

        impl<'de> Visitor<'de> for Rates {
            type Value = Vec<Rate>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate such as \"1000/m\" or a list of rates")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                text.parse().map(|rate| vec![rate]).map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut rates = Vec::new();
                while let Some(rate) = seq.next_element()? {
                    rates.push(rate);
                }
                Ok(rates)
            }
        }

        d.deserialize_any(Rates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_policy_round_trips() {
        let json = r#"{
            "name": "login",
            "rate": "10/h",
            "key": { "type": "client_ip", "trusted_proxies": ["10.0.0.0/8"], "ipv6_prefix": 64,
                     "or": { "type": "global" } },
            "on_missing_key": "allow",
            "mode": "annotate",
            "on_store_error": "closed",
            "timeout_ms": 20,
            "methods": ["post"],
            "prefix": "app:rl:",
            "legacy_headers": true
        }"#;
        let config: PolicyConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.rate, [Rate::per_hour(10)]);
        let again: PolicyConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
        let policy = config.clone().into_policy();
        policy.validate().unwrap();
        assert_eq!(policy.settings(), &config);
        assert_eq!(config.methods, Some(vec!["post".to_owned()]));
        assert_eq!(config.on_store_error, FailMode::Closed);
        assert_eq!(config.timeout, Duration::from_millis(20));
    }

    #[test]
    fn defaults_are_the_builders() {
        let json = r#"{"name": "p", "rate": "5/s", "key": {"type": "user"}}"#;
        let config: PolicyConfig = serde_json::from_str(json).unwrap();
        let policy = config.into_policy();
        let built = crate::Policy::new("p").rate(Rate::per_second(5));
        // The same settings, but for the key, which the file gives.
        let file = PolicyConfig {
            key: None,
            ..policy.settings().clone()
        };
        assert_eq!(&file, built.settings());
    }

    #[test]
    fn bad_values_name_their_field() {
        let bad = |json: &str| {
            serde_json::from_str::<PolicyConfig>(json)
                .unwrap_err()
                .to_string()
        };
        assert!(bad(r#"{"name":"p","rate":"5/w","key":{"type":"user"}}"#).contains("\"5/w\""));
        assert!(
            bad(r#"{"name":"p","rate":["1/s","0/m"],"key":{"type":"user"}}"#).contains("\"0/m\"")
        );
        assert!(
            bad(r#"{"name":"p","rate":"5/s","key":{"type":"user"},"typo":1}"#).contains("typo")
        );
        let config: PolicyConfig = serde_json::from_str(
            r#"{"name":"p","rate":"5/s","key":{"type":"client_ip","trusted_proxies":["x"]}}"#,
        )
        .unwrap();
        assert!(
            config
                .into_policy()
                .validate()
                .unwrap_err()
                .to_string()
                .contains("policies.p.key.trusted_proxies")
        );
        let config: PolicyConfig = serde_json::from_str(
            r#"{"name":"p","rate":"5/s","key":{"type":"user"},"methods":["GE T"]}"#,
        )
        .unwrap();
        assert!(
            config
                .into_policy()
                .validate()
                .unwrap_err()
                .to_string()
                .contains("policies.p.methods")
        );
    }
}
